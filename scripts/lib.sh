# Shared by the project's scripts: progress lines, the toolchain choice, and
# the paths everything agrees on. Source it; do not run it.
# shellcheck shell=bash

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
TOOLS="$ROOT/.tools"
WASM_OUT="$ROOT/dist/warden-filter.wasm"
# Debian's wasm-capable Rust (rustc-web) builds into its own target dir so its
# artifacts never invalidate those of the native toolchain.
WASM_TARGET_DIR="$ROOT/target/wasm"
export PATH="$TOOLS/bin:$PATH"

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
info() { printf '    %s\n' "$*"; }
die() { printf '\nerror: %s\n' "$*" >&2; exit 1; }

is_root() { [ "$(id -u)" = 0 ]; }
have() { command -v "$1" >/dev/null 2>&1; }

# How this machine builds wasm, chosen by what it has:
#   rustup   - rustup's toolchain already has the wasm targets (a laptop after
#              `rustup target add wasm32-wasip1 wasm32-unknown-unknown`);
#   debian   - Debian's rustc-web + rust-web-src build the standard library
#              for the target with -Zbuild-std (machines where rustup cannot
#              download targets).
wasm_toolchain() {
    if have rustup && rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip1 \
        && rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown; then
        echo rustup
    elif debian_wasm_ready; then
        echo debian
    else
        echo none
    fi
}

debian_wasm_ready() {
    [ -x /usr/bin/cargo ] && [ -x /usr/bin/rustc ] \
        && /usr/bin/rustc --version 2>/dev/null | grep -q . \
        && [ -d /usr/lib/rustlib/src/rust/library ] \
        && [ -f /usr/lib/wasm32-wasi/libc.a ] \
        && { have rust-lld || [ -x /usr/bin/rust-lld ] || ls /usr/lib/llvm-*/bin/lld >/dev/null 2>&1; }
}

# Runs cargo for a wasm target with whichever toolchain the machine has.
# Usage: wasm_cargo <target> <subcommand> <cargo args...> [-- <tool args>]
# (the target flags go right after the subcommand, before any `--`).
wasm_cargo() {
    local target="$1" sub="$2"; shift 2
    case "$(wasm_toolchain)" in
        rustup)
            cargo "$sub" --target "$target" "$@"
            ;;
        debian)
            local upper="${target//-/_}"; upper="${upper^^}"
            env PATH="/usr/bin:$PATH" RUSTC_BOOTSTRAP=1 CARGO_TARGET_DIR="$WASM_TARGET_DIR" \
                "CARGO_TARGET_${upper}_RUSTFLAGS=-L native=/usr/lib/wasm32-wasi" \
                /usr/bin/cargo "$sub" --target "$target" -Zbuild-std=std,panic_abort "$@"
            ;;
        *)
            die "no Rust toolchain that can build wasm32-wasip1; run 'make bootstrap'"
            ;;
    esac
}

# The target dir a wasm build landed in.
wasm_target_dir() {
    case "$(wasm_toolchain)" in
        debian) echo "$WASM_TARGET_DIR" ;;
        *) echo "${CARGO_TARGET_DIR:-$ROOT/target}" ;;
    esac
}

# The wasm-bindgen version in Cargo.lock: the test runner must match it.
locked_wasm_bindgen_version() {
    awk '/^name = "wasm-bindgen"$/ { getline; gsub(/version = |"/, ""); print; exit }' "$ROOT/Cargo.lock"
}
