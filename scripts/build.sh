#!/usr/bin/env bash
# Builds the filter for wasm32-wasip1 (profile $WARDEN_WASM_PROFILE, default
# `wasm`: release, thin LTO, panic=abort, stripped; see Cargo.toml) into
# dist/warden-filter.wasm, and the native
# binaries (warden, warden-stand-in-provider) with the profile
# $WARDEN_NATIVE_PROFILE (default `local`, see scripts/lib.sh) into
# target/<profile>/, and packs both as OCI images in dist/oci/ (scripts/oci.py).
#
# The two builds run side by side: the wasm build ends in an LTO step that
# keeps one or two cores busy, and a first build is mostly waiting for the compiler, so on a
# 2-core machine the pair finishes sooner together than one after the other.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

mkdir -p "$ROOT/target"
wasm_log="$ROOT/target/build-wasm.log"
step "build: filter -> dist/warden-filter.wasm ($(toolchain) toolchain; output in target/build-wasm.log)"
wasm_cargo wasm32-wasip1 build --locked --profile "$WASM_PROFILE" -p warden-filter >"$wasm_log" 2>&1 &
wasm_pid=$!
trap 'kill "$wasm_pid" 2>/dev/null || true' EXIT

step "build: native binaries (target/$NATIVE_PROFILE/warden, target/$NATIVE_PROFILE/warden-stand-in-provider)"
native_cargo build --locked --profile "$NATIVE_PROFILE" -p warden-control-plane -p warden-stand-in-provider

step "build: waiting for the filter's wasm build"
if ! wait "$wasm_pid"; then
    trap - EXIT
    tail -60 "$wasm_log"
    die "the filter's wasm build failed (whole output: $wasm_log)"
fi
trap - EXIT
grep -E '^(warning|error)' "$wasm_log" >/dev/null && cat "$wasm_log"
mkdir -p "$ROOT/dist"
cp "$(wasm_target_dir)/wasm32-wasip1/$WASM_PROFILE/warden_filter.wasm" "$WASM_OUT.tmp"
mv "$WASM_OUT.tmp" "$WASM_OUT"
info "$(du -h "$WASM_OUT" | cut -f1) $WASM_OUT"
# The same filter, and the control plane, as OCI image layouts under dist/oci/
# (no container engine: scripts/oci.py only packs files, in a second or two):
# what a mesh pulls (Istio's WasmPlugin, Envoy Gateway's EnvoyExtensionPolicy)
# and what a cluster runs. Also dist/warden-filter.wasm.sha256 and the manifest
# digests (dist/oci/*.digest), for pinning.
step "build: OCI images -> dist/oci/warden-filter/, dist/oci/warden-control-plane/ (scripts/oci.py)"
"$VENV/bin/python" "$ROOT/scripts/oci.py" all | while read -r layout digest; do info "$digest ${layout#"$ROOT/"}"; done
step "build: done"
