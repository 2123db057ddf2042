#!/usr/bin/env bash
# Runs Warden's tests; with no argument, all of them (what `make test` and CI run):
#   unit      native unit and integration tests of every crate
#   wasm      the engine's tests compiled to wasm and run in Node's V8 (wasm-bindgen-test)
#   lint      clippy -D warnings for the native and the wasm target
#   validate  `envoy --mode validate` on every Envoy configuration in the repository
#   e2e       end-to-end tests: real Envoy + filter, control plane, stand-in provider, real SDKs
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

unit() {
    step "test: native unit tests"
    cargo test --locked --release
}

wasm() {
    step "test: engine tests inside wasm (wasm-bindgen-test under Node)"
    CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner \
        wasm_cargo wasm32-unknown-unknown test --locked --release -p warden-engine
}

lint() {
    step "test: clippy (native)"
    cargo clippy --locked --release --workspace --all-targets -- -D warnings
    step "test: clippy (wasm32-wasip1)"
    wasm_cargo wasm32-wasip1 clippy --locked --profile wasm -p warden-filter -p warden-engine -- -D warnings
}

validate() {
    step "test: envoy --mode validate on every Envoy configuration"
    "$VENV/bin/python" tests/validate_envoy.py
}

e2e() {
    step "test: end to end (real Envoy, control plane, stand-in provider, SDKs)"
    "$VENV/bin/python" -m pytest -q tests/e2e "$@"
}

if [ $# -eq 0 ]; then
    unit; wasm; lint; validate; e2e
else
    what="$1"; shift
    "$what" "$@"
fi
