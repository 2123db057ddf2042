#!/usr/bin/env bash
# Runs Warden's tests; with no argument, all of them (what `make test` and CI run):
#   provenance  every system tool the project calls comes from the bootstrap's packages
#   unit      native unit and integration tests of every crate
#   wasm      the engine's tests compiled to wasm and run in Node's V8 (wasm-bindgen-test)
#   detect    the detectors' quality report on a labelled corpus (fails under 98% recall
#             or over 3% false alarms in any family)
#   lint      no import circles; clippy -D warnings for the native and the wasm target
#   validate  `envoy --mode validate` on every Envoy configuration in the repository
#   emulated  the compiled filter (dist/warden-filter.wasm) in an emulated proxy-wasm host (wasmtime)
#   manifests the mesh manifests in examples/ (istio, envoy-gateway, kubernetes): schemas,
#             the embedded filter configurations compiled by the filter, references
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

provenance() {
    step "test: provenance of every tool the project calls (tests/provenance.py)"
    "$VENV/bin/python" tests/provenance.py
}

unit() {
    postgres
    step "test: native unit tests"
    native_cargo test --locked --profile "$NATIVE_PROFILE"
    # The adapter is not a default member (it is built for wasm); its pure
    # parts (audit queue, shared-data leases and CAS) are tested natively.
    native_cargo test --locked --profile "$NATIVE_PROFILE" -p warden-filter
}

wasm() {
    step "test: engine tests inside wasm (wasm-bindgen-test under Node)"
    CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner \
        wasm_cargo wasm32-unknown-unknown test --locked --release -p warden-engine
}

detect() {
    step "test: detection quality on the labelled corpus (filter/engine/examples/detect_report.rs)"
    native_cargo run --locked --quiet --profile "$NATIVE_PROFILE" -p warden-engine --example detect_report
}

lint() {
    step "test: no import circle among the files of a crate (tests/import_cycles.py)"
    "$VENV/bin/python" tests/import_cycles.py filter/engine/src filter/wasm/src control-plane/src
    step "test: clippy (native)"
    native_cargo clippy --locked --profile "$NATIVE_PROFILE" --workspace --all-targets -- -D warnings
    step "test: clippy (wasm32-wasip1)"
    wasm_cargo wasm32-wasip1 clippy --locked --profile "$WASM_PROFILE" -p warden-filter -p warden-engine -p warden-bench-noop-filter -- -D warnings
}

validate() {
    step "test: envoy --mode validate on every Envoy configuration"
    "$VENV/bin/python" tests/validate_envoy.py
}

emulated() {
    step "test: the compiled filter in an emulated proxy-wasm host (wasmtime)"
    "$VENV/bin/python" -m pytest -q tests/emulated "$@"
}

# The filter with the test-only trap (filter/wasm's feature `test-trap`), for
# the test that a trapping VM is refused and reloaded. Same profile, so only
# the adapter crate is rebuilt; dist/warden-filter.wasm is not touched.
trap_filter() {
    step "build: the test-only trapping filter -> dist/test/warden-filter-test-trap.wasm"
    wasm_cargo wasm32-wasip1 build --locked --profile "$WASM_PROFILE" -p warden-filter --features test-trap
    mkdir -p "$ROOT/dist/test"
    cp "$(wasm_target_dir)/wasm32-wasip1/$WASM_PROFILE/warden_filter.wasm" "$ROOT/dist/test/warden-filter-test-trap.wasm"
}

manifests() {
    step "test: deployment manifests in examples/ (tests/manifests)"
    "$VENV/bin/python" -m pytest -q tests/manifests "$@"
}

e2e() {
    trap_filter
    postgres
    # Packed again: `cargo test` (the unit step) rebuilds target/<profile>/warden
    # with the test build's features, so the image packed by `make build`
    # would no longer hold the binary the tests run.
    step "build: OCI images again, from the binaries the tests run (scripts/oci.py)"
    "$VENV/bin/python" scripts/oci.py all >/dev/null
    step "test: end to end (real Envoy, control plane, stand-in provider, SDKs)"
    "$VENV/bin/python" -m pytest -q tests/e2e "$@"
}

if [ $# -eq 0 ]; then
    provenance; unit; wasm; detect; lint; validate; emulated; manifests; e2e
else
    what="$1"; shift
    "$what" "$@"
fi
