"""No import circles among the files of a Rust crate (issue 14's rule).

Reads every `crate::a::b` and `super::x` path in each file of the given source
folders (comments and `#[cfg(test)]` modules left out), resolves it to the
file that defines the module, and looks for strongly connected components in
that graph (Tarjan). A file may use its own submodules and its parents; what
must not happen is a file importing one that imports it back, directly or
through others. Exits 1 naming each circle.

    .venv/bin/python tests/import_cycles.py filter/engine/src control-plane/src
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

PATH = re.compile(r"\b(crate|super)::((?:\w+::)*\w+)")
TEST_MODULE = re.compile(r"#\[cfg\(test\)\]\s*(?:#\[[^\]]*\]\s*)*mod\s+\w+\s*\{")


def module_of(root: Path, file: Path) -> tuple[str, ...]:
    parts = file.relative_to(root).with_suffix("").parts
    return parts[:-1] if parts[-1] in ("mod", "lib", "main") else parts


def strip(text: str) -> str:
    """The text without line comments and without its inline test module."""
    test = TEST_MODULE.search(text)
    if test:
        text = text[: test.start()]
    return "\n".join(line.split("//", 1)[0] for line in text.splitlines())


def graph(root: Path) -> dict[tuple[str, ...], set[tuple[str, ...]]]:
    files = {module_of(root, f): f for f in root.rglob("*.rs")}
    edges: dict[tuple[str, ...], set[tuple[str, ...]]] = {}
    for module, file in files.items():
        if module and module[-1].startswith("tests"):
            continue
        deps: set[tuple[str, ...]] = set()
        for anchor, path in PATH.findall(strip(file.read_text())):
            # `super` is the parent of the file's module (a.rs and a/mod.rs alike).
            base: tuple[str, ...] = () if anchor == "crate" else module[:-1]
            target = base + tuple(path.split("::"))
            while target and target not in files:
                target = target[:-1]
            if target and target != module and target != ():
                deps.add(target)
        edges[module] = {d for d in deps if d in files}
    return edges


def circles(edges: dict) -> list[list[tuple[str, ...]]]:
    index: dict = {}
    low: dict = {}
    stack: list = []
    on_stack: set = set()
    found: list = []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(component)

    sys.setrecursionlimit(10_000)
    for v in list(edges):
        if v not in index:
            visit(v)
    return found


def main(folders: list[str]) -> int:
    bad = 0
    for folder in folders:
        edges = graph(Path(folder))
        found = circles(edges)
        for component in found:
            names = sorted("::".join(m) or "lib" for m in component)
            print(f"FAIL {folder}: import circle among {', '.join(names)}")
        if not found:
            print(f"ok   {folder}: {len(edges)} files, no import circle")
        bad += len(found)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
