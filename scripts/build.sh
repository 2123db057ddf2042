#!/usr/bin/env bash
# Builds the filter for wasm32-wasip1 (profile `wasm`: release, LTO,
# panic=abort, stripped) into dist/warden-filter.wasm, and the native
# binaries (warden, warden-stand-in-provider) in release mode.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

step "build: filter -> dist/warden-filter.wasm ($(wasm_toolchain) toolchain)"
wasm_cargo wasm32-wasip1 build --locked --profile wasm -p warden-filter
mkdir -p "$ROOT/dist"
cp "$(wasm_target_dir)/wasm32-wasip1/wasm/warden_filter.wasm" "$WASM_OUT.tmp"
mv "$WASM_OUT.tmp" "$WASM_OUT"
info "$(du -h "$WASM_OUT" | cut -f1) $WASM_OUT"

step "build: native binaries (target/release/warden, target/release/warden-stand-in-provider)"
cargo build --locked --release -p warden-control-plane -p warden-stand-in-provider
