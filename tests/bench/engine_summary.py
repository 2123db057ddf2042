"""Merges the engine microbenchmarks' outputs into one JSON document (for bench.py):

    engine_summary.py <criterion stdout> <wasm runner stdout>  ->  {"benches": [{name, native_ns, wasm_ns, target}]}

Native numbers are criterion's point estimates (the middle of its `time: [lo est hi]`); wasm
numbers are the median batch of the runner's own timing loop (benches/engine.rs), which also
prints each workload's target: the workloads in benches/engine.rs are their one definition.
"""

import json
import re
import sys

UNITS = {"ps": 1e-3, "ns": 1, "µs": 1e3, "us": 1e3, "ms": 1e6, "s": 1e9}


def native(text: str) -> dict[str, float]:
    out = {}
    for m in re.finditer(r"^(\S[^\n]*?)\s*\n?\s+time:\s+\[\S+ \S+ (\S+) (\S+) \S+ \S+\]", text, re.M):
        out[m.group(1).strip()] = float(m.group(2)) * UNITS[m.group(3)]
    return out


def wasm(text: str) -> dict[str, dict]:
    out = {}
    for line in text.splitlines():
        if line.startswith("{"):
            d = json.loads(line)
            out[d["name"]] = d
    return out


def main() -> None:
    n = native(open(sys.argv[1], encoding="utf-8").read())
    w = wasm(open(sys.argv[2], encoding="utf-8").read()) if len(sys.argv) > 2 else {}
    names = list(dict.fromkeys([*n, *w]))
    print(json.dumps({"benches": [{"name": k, "native_ns": n.get(k), "wasm_ns": w.get(k, {}).get("ns"),
                                   "target": w.get(k, {}).get("target", "-")} for k in names]}, indent=1))


if __name__ == "__main__":
    main()
