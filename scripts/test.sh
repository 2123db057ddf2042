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

# A real PostgreSQL server (Debian's, a throwaway cluster under target/) for the
# control plane's PostgreSQL tests, unit and end to end; SQLite needs nothing.
# Started once, stopped when the tests end; WARDEN_TEST_DATABASE_URL names it.
postgres() {
    if [ -z "${WARDEN_TEST_DATABASE_URL:-}" ]; then
        WARDEN_TEST_DATABASE_URL="$(scripts/postgres.sh start "$ROOT/target/pg")"
        export WARDEN_TEST_DATABASE_URL
        trap 'scripts/postgres.sh stop "$ROOT/target/pg" >/dev/null 2>&1 || true' EXIT
    fi
    # Tests that need it fail (not skip) without it under `make test`.
    export WARDEN_REQUIRE_POSTGRES=1
}

unit() {
    postgres
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
    wasm_cargo wasm32-wasip1 clippy --locked --profile wasm -p warden-filter -p warden-engine -p warden-bench-noop-filter -- -D warnings
}

validate() {
    step "test: envoy --mode validate on every Envoy configuration"
    "$VENV/bin/python" tests/validate_envoy.py
}

e2e() {
    postgres
    step "test: end to end (real Envoy, control plane, stand-in provider, SDKs)"
    "$VENV/bin/python" -m pytest -q tests/e2e "$@"
}

if [ $# -eq 0 ]; then
    unit; wasm; lint; validate; e2e
else
    what="$1"; shift
    "$what" "$@"
fi
