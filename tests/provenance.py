"""Every tool the project calls from the system comes from what the bootstrap installs.

A green CI once hid a missing install step: the wasm linker was on the machine
only because someone had installed it by hand, so a fresh machine could not
build. This check makes that class of hole fail on any machine: each tool and
library that the build, `make run`, `make demo`, the tests, the benchmarks
and `make fuzz` call is resolved exactly as the scripts resolve it (the
scripts' PATH, the toolchain scripts/lib.sh chooses), and must be either the
project's own (`.venv/`, `.tools/`) or a file of a Debian package that the
bootstrap installs (scripts/lib.sh's lists), of a package those depend on, or
of an essential package every Debian system has.

Run by `scripts/test.sh provenance` (part of `make test`), from the scripts'
environment. Exit status 1 names each tool that breaks the rule.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROJECT_DIRS = [ROOT / ".venv", ROOT / ".tools"]


def sh(script: str) -> str:
    out = subprocess.run(["bash", "-c", f"source {ROOT}/scripts/lib.sh; {script}"],
                         capture_output=True, text=True, check=True)
    return out.stdout.strip()


def bootstrap_packages() -> set[str]:
    lists = ["DEMO_PACKAGES", "DEBIAN_RUST_PACKAGES", "TEST_PACKAGES", "BENCH_PACKAGES", "FUZZ_PACKAGES"]
    return set(sh("; ".join(f'echo "${{{name}[@]}}"' for name in lists)).split())


def installed_packages() -> dict[str, dict[str, str]]:
    """Installed packages (names without the architecture) and their fields."""
    fmt = "${Package}\\t${Status}\\t${Essential}\\t${Priority}\\t${Depends}\\t${Pre-Depends}\\t${Provides}\\n"
    out = subprocess.run(["dpkg-query", "-W", "-f", fmt], capture_output=True, text=True, check=True).stdout
    packages = {}
    for line in out.splitlines():
        name, status, essential, priority, depends, pre, provides = (line.split("\t") + [""] * 7)[:7]
        if status.endswith(" installed"):
            packages[name] = {"essential": essential, "priority": priority,
                              "depends": f"{depends}, {pre}", "provides": provides}
    return packages


def names(field: str) -> list[str]:
    """Package names in a Depends-style field (every alternative, no versions)."""
    return [re.split(r"[\s:(]", alt.strip())[0]
            for part in field.split(",") for alt in part.split("|") if alt.strip()]


def allowed_packages(roots: set[str], packages: dict[str, dict[str, str]]) -> set[str]:
    """The bootstrap's packages, what they depend on (hard dependencies only:
    Recommends are not installed), and the essential and required packages."""
    providers: dict[str, list[str]] = {}
    for name, fields in packages.items():
        for virtual in names(fields["provides"]):
            providers.setdefault(virtual, []).append(name)
    allowed = {n for n, f in packages.items() if f["essential"] == "yes" or f["priority"] == "required"}
    todo = [r for r in roots]
    while todo:
        name = todo.pop()
        for real in [name, *providers.get(name, [])]:
            if real in packages and real not in allowed:
                allowed.add(real)
                todo.extend(names(packages[real]["depends"]))
    return allowed


def owner(path: str) -> str | None:
    """The installed package that has this file, trying the path as called and
    then the file it resolves to (a link from another package)."""
    for candidate in dict.fromkeys([path, os.path.realpath(path)]):
        out = subprocess.run(["dpkg-query", "-S", candidate], capture_output=True, text=True)
        if out.returncode == 0:
            return out.stdout.split(":")[0].split(",")[0].strip()
    # /bin and /lib are links to /usr on bookworm: dpkg may know the other name.
    for a, b in (("/usr/bin/", "/bin/"), ("/usr/lib/", "/lib/"), ("/usr/sbin/", "/sbin/")):
        if path.startswith(a):
            return owner_exact(b + path[len(a):])
    return None


def owner_exact(path: str) -> str | None:
    out = subprocess.run(["dpkg-query", "-S", path], capture_output=True, text=True)
    return out.stdout.split(":")[0].strip() if out.returncode == 0 else None


def tools() -> list[tuple[str, str, str | None]]:
    """(what, used by, resolved path or None) for everything called from the system."""
    which = shutil.which
    toolchain = sh("toolchain")
    found: list[tuple[str, str, str | None]] = []

    def add(what: str, used_by: str, path: str | None) -> None:
        found.append((what, used_by, path))

    if toolchain == "debian":
        debian_path = "/usr/bin:" + os.environ.get("PATH", "")
        linker = sh("wasm_linker")
        add("cargo (native and wasm)", "build", "/usr/bin/cargo")
        add("rustc (native and wasm)", "build", "/usr/bin/rustc")
        add(f"the wasm linker rustc calls ({linker})", "build", shutil.which(linker, path=debian_path))
        add("the standard library's source (-Zbuild-std)", "build", "/usr/lib/rustlib/src/rust/library/std/Cargo.toml")
        add("wasi libc", "build", "/usr/lib/wasm32-wasi/libc.a")
        add("cargo-clippy", "test", "/usr/bin/cargo-clippy")
        add("clippy-driver", "test", which("clippy-driver", path=debian_path))
    else:
        # rustup's own toolchain (a developer's laptop): not Debian's to check.
        print(f"note: toolchain is {toolchain}: cargo and rustc come from rustup, not checked")
    for tool, used_by in [("cc", "build (C parts of crates)"), ("ar", "build (C parts of crates)"),
                          ("pkg-config", "build"), ("curl", "demo"), ("git", "build"), ("make", "build"),
                          ("node", "test (wasm tests in V8, the test IdP)"), ("npm", "test (the test IdP)"),
                          ("runuser", "test (PostgreSQL as its user)")]:
        add(tool, used_by, which(tool))
    # scripts/oci.py: the libraries the control plane's image must carry.
    add("ldd", "build (scripts/oci.py)", which("ldd"))
    # tests/e2e/test_oci.py: a registry to push to and Envoy to fetch from, and
    # the OCI runtimes that run the control plane's image.
    for tool in ("docker-registry", "crun", "runc"):
        add(tool, "test (OCI images)", which(tool))
    pyvenv = ROOT / ".venv" / "pyvenv.cfg"
    home = next((line.split("=", 1)[1].strip() for line in pyvenv.read_text().splitlines()
                 if line.startswith("home")), None) if pyvenv.exists() else None
    add("python3 (the venv's base)", "demo, test", str(Path(home) / "python3") if home else None)
    pg_bindir = sh("ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1")
    for tool in ("initdb", "pg_ctl", "postgres"):
        add(tool, "test (PostgreSQL)", f"{pg_bindir}/{tool}" if pg_bindir else None)
    add("chromium", "test (the web page)", os.environ.get("WARDEN_CHROMIUM") or which("chromium"))
    add("envoy", "demo, test", str(ROOT / ".venv" / "bin" / "envoy"))
    add("schemathesis", "test (the API against its OpenAPI description)", str(ROOT / ".venv" / "bin" / "schemathesis"))
    add("wasm-bindgen-test-runner", "test", which("wasm-bindgen-test-runner"))
    for tool in ("wrk", "valgrind"):
        add(tool, "bench", which(tool))
    # `make fuzz` (scripts/bootstrap.sh fuzz): libFuzzer's C++, cargo-fuzz.
    add("c++ (libFuzzer, built by libfuzzer-sys)", "fuzz", which("c++"))
    add("cargo-fuzz", "fuzz", which("cargo-fuzz"))
    return found


def main() -> int:
    if not shutil.which("dpkg-query"):
        print("provenance: not a Debian system; nothing to check")
        return 0
    packages = installed_packages()
    roots = bootstrap_packages()
    allowed = allowed_packages(roots, packages)
    bad = 0
    for what, used_by, path in tools():
        if path is None or not os.path.exists(path):
            if used_by in ("bench", "fuzz"):
                print(f"  -    {what:<48} not installed ({used_by} only: make {used_by} installs it)")
                continue
            print(f"  FAIL {what:<48} not found ({used_by})")
            bad += 1
            continue
        real = os.path.realpath(path)
        if any(real.startswith(str(d) + os.sep) or path.startswith(str(d) + os.sep) for d in PROJECT_DIRS):
            print(f"  ok   {what:<48} {path} (the project's own)")
            continue
        pkg = owner(path)
        if pkg is None:
            print(f"  FAIL {what:<48} {path}: no Debian package has it (installed by hand?)")
            bad += 1
        elif pkg.split(":")[0] not in allowed:
            print(f"  FAIL {what:<48} {path}: from package {pkg}, which the bootstrap does not install")
            bad += 1
        else:
            how = "listed" if pkg in roots else "a dependency of a listed one"
            print(f"  ok   {what:<48} {path} ({pkg}, {how})")
    if bad:
        print(f"provenance: {bad} tool(s) the bootstrap does not install; add their packages to the "
              "lists in scripts/lib.sh (or make the scripts call the installed ones)")
        return 1
    print("provenance: every tool comes from the bootstrap's packages or the project's own directories")
    return 0


if __name__ == "__main__":
    sys.exit(main())
