"""Merges the engine microbenchmarks' outputs into one JSON document (for bench.py):

    engine_summary.py <criterion stdout> <wasm runner stdout>  ->  {"benches": [{name, native_ns, wasm_ns, target}]}

Native numbers are criterion's point estimates (the middle of its `time: [lo est hi]`); wasm
numbers are the median batch of the runner's own timing loop (benches/engine.rs).
"""

import json
import re
import sys

UNITS = {"ps": 1e-3, "ns": 1, "µs": 1e3, "us": 1e3, "ms": 1e6, "s": 1e9}
TARGETS = {
    "inspect_json: 8 KB chat request, masked": "<= 100 µs added in Envoy (scenario 2)",
    "inspect_json: 64 KB chat request, masked": "linear in size (scenario 5)",
    "inspect_json: models response, nothing to mask": "<= 15 µs added (scenario 1)",
    "inspect_json: 16 KB prose request, nothing to mask": "the common case: no worse than before",
    "stream rewriter: ~500 events, emails split": "<= 20 µs per event (scenario 3)",
    "stream rewriter: ~500 events, 4 tool calls, calls not judged": "the baseline of the next row",
    "stream rewriter: ~500 events, 4 tool calls held and judged": "small against the row above (issue 19)",
    "verify cold RS256": "<= 1.2 ms (scenario 4)",
    "verify cold ES256": "< RS256 (scenario 4)",
    "verify cold EdDSA": "< RS256 (scenario 4)",
    "token cache hit": "<= 5 µs (scenario 4)",
}


def native(text: str) -> dict[str, float]:
    out = {}
    for m in re.finditer(r"^(\S[^\n]*?)\s*\n?\s+time:\s+\[\S+ \S+ (\S+) (\S+) \S+ \S+\]", text, re.M):
        out[m.group(1).strip()] = float(m.group(2)) * UNITS[m.group(3)]
    return out


def wasm(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line.startswith("{"):
            d = json.loads(line)
            out[d["name"]] = d["ns"]
    return out


def main() -> None:
    n = native(open(sys.argv[1], encoding="utf-8").read())
    w = wasm(open(sys.argv[2], encoding="utf-8").read()) if len(sys.argv) > 2 else {}
    names = list(dict.fromkeys([*n, *w]))
    print(json.dumps({"benches": [{"name": k, "native_ns": n.get(k), "wasm_ns": w.get(k),
                                   "target": TARGETS.get(k, "-")} for k in names]}, indent=1))


if __name__ == "__main__":
    main()
