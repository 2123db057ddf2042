#!/usr/bin/env bash
# The engine microbenchmarks (filter/engine/benches/engine.rs), natively under
# criterion and built for wasm32-wasip1 and run in Node's V8, with a JSON
# summary for `make bench` (tests/bench/bench.py) written to $1.
#   scripts/bench-engine.sh [out.json]      BENCH_QUICK=1 for a short run
# Profile one workload with callgrind (instruction counts, reproducible):
#   scripts/bench-engine.sh --callgrind "inspect_json: 8 KB"
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

native_bench() {
    # The bench executable criterion runs, built with the bench profile (release).
    native_cargo bench -p warden-engine --bench engine --no-run --message-format=json 2>/dev/null \
        | "$VENV/bin/python" -c 'import json,sys
for l in sys.stdin:
    d = json.loads(l)
    if d.get("reason") == "compiler-artifact" and d["target"]["name"] == "engine" and d.get("executable"):
        print(d["executable"])' | tail -1
}

if [ "${1:-}" = "--callgrind" ]; then
    filter="${2:?usage: --callgrind NAME [ITERATIONS]}"
    iters="${3:-200}"
    exe="$(native_bench)"
    out="$ROOT/target/callgrind.out"
    step "callgrind: $iters iterations of '$filter' (setup not counted)"
    valgrind --tool=callgrind --toggle-collect='*profile_loop*' --callgrind-out-file="$out" \
        "$exe" --iters "$iters" "$filter"
    callgrind_annotate --inclusive=yes "$out" | head -70
    callgrind_annotate --inclusive=no "$out" | head -45
    exit 0
fi

out="${1:-$ROOT/target/bench-engine.json}"
mkdir -p "$ROOT/target"
step "bench: engine natively (criterion)"
native_cargo bench -p warden-engine --bench engine 2>&1 | tee "$ROOT/target/bench-engine-native.txt"

step "bench: engine in wasm32-wasip1 under Node's V8"
wasm_cargo wasm32-wasip1 build --release -p warden-engine --bench engine
wasm="$(ls -t "$(wasm_target_dir)"/wasm32-wasip1/release/deps/engine-*.wasm | head -1)"
info "$wasm"
node tests/bench/wasi.mjs "$wasm" 2> >(grep -v ExperimentalWarning >&2) | tee "$ROOT/target/bench-engine-wasm.txt"

"$VENV/bin/python" tests/bench/engine_summary.py "$ROOT/target/bench-engine-native.txt" \
    "$ROOT/target/bench-engine-wasm.txt" > "$out"
info "summary: $out"
