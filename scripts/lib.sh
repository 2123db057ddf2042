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
# The project's own tools come first: .tools/ (the wasm test runner) and the
# venv (Envoy, Node.js, the SDKs; see tests/requirements*.txt).
export PATH="$TOOLS/bin:$VENV/bin:$PATH"

# Each step says how long its script has run so far: where a first run's
# time goes, read off its output.
step() { printf '\n\033[1m==> %s\033[0m  [%ds]\n' "$*" "$SECONDS"; }
info() { printf '    %s\n' "$*"; }
die() { printf '\nerror: %s\n' "$*" >&2; exit 1; }

is_root() { [ "$(id -u)" = 0 ]; }
have() { command -v "$1" >/dev/null 2>&1; }

# Run as root on Debian, the bootstrap installs every system tool the project
# calls, and the scripts call those: Debian's directories come first on PATH,
# before anything a user or an image put in /usr/local or ~/.cargo, so the
# project runs here exactly as on a fresh machine (tests/provenance.py checks).
if have apt-get && is_root; then
    export PATH="$TOOLS/bin:$VENV/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH"
fi

# What each use of the project installs from Debian (when run as root on
# Debian). One list per purpose, so `make demo` installs only what it uses;
# tests/provenance.py checks that every tool the project calls from the
# system comes from one of these packages (or their dependencies).
#   DEMO_PACKAGES   build the filter and the binaries, `make run`, `make demo`
#   TEST_PACKAGES   `make test` on top of those
#   BENCH_PACKAGES  `make bench` on top of those
#   FUZZ_PACKAGES   `make fuzz` on top of DEMO_PACKAGES and the Rust toolchain
# The Cargo profile of the native binaries (target/<profile>/): `local`
# (mostly unoptimized: half the first build, and these are not the data path) for
# build, run, demo and test; `make bench` builds and measures `release`.
NATIVE_PROFILE="${WARDEN_NATIVE_PROFILE:-local}"
export WARDEN_NATIVE_PROFILE="$NATIVE_PROFILE"
# The filter's: `wasm` (thin LTO, quicker to build) for build, run, demo and
# test; `make bench` builds and measures `wasm-release`, what ships.
WASM_PROFILE="${WARDEN_WASM_PROFILE:-wasm}"
export WARDEN_WASM_PROFILE="$WASM_PROFILE"

DEMO_PACKAGES=(ca-certificates curl git make gcc libc6-dev pkg-config python3 python3-venv)
# Debian's wasm-capable Rust (1.96): rustc and cargo, the standard library's
# source for -Zbuild-std, rust-lld (the linker rustc calls for wasm targets:
# only a Recommends of rustc-web, so it is named here), the libc for
# wasm32-wasip1. Also the native toolchain on such machines: one compiler.
DEBIAN_RUST_PACKAGES=(rustc-web cargo-web rust-web-src rust-web-llvm lld-22 wasi-libc)
# docker-registry (the CNCF distribution server), runc and crun: the OCI
# images of dist/oci/ pushed, pulled and run (tests/e2e/test_oci.py).
TEST_PACKAGES=(rust-web-clippy postgresql chromium docker-registry crun runc)
BENCH_PACKAGES=(wrk valgrind)
# libFuzzer is C++: libfuzzer-sys compiles it with the system's C++ compiler.
FUZZ_PACKAGES=(g++)
# cargo-fuzz, installed into .tools/ by `scripts/bootstrap.sh fuzz`.
CARGO_FUZZ_VERSION=0.13.2

# How this machine builds Rust, chosen by what it has:
#   rustup   - rustup's toolchain already has the wasm targets (a laptop after
#              `rustup target add wasm32-wasip1 wasm32-unknown-unknown`);
#   debian   - Debian's rustc-web + rust-web-src build the standard library
#              for the target with -Zbuild-std (machines where rustup cannot
#              download targets); native builds use the same compiler, so a
#              Debian machine builds with exactly the packages the bootstrap
#              installed, whatever else is on PATH.
toolchain() {
    if have rustup && rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip1 \
        && rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown; then
        echo rustup
    elif debian_rust_ready; then
        echo debian
    else
        echo none
    fi
}

# Ready means ready for what the build calls, not that some file exists: the
# compiler answers, the standard library's source is there, wasi's libc is
# there, and the linker that rustc's own target spec names for wasm32-wasip1
# (rust-lld, resolved on the PATH the build uses) answers as a wasm linker.
debian_rust_ready() {
    [ -x /usr/bin/cargo ] && /usr/bin/rustc --version >/dev/null 2>&1 \
        && [ -f /usr/lib/rustlib/src/rust/library/std/Cargo.toml ] \
        && [ -f /usr/lib/wasm32-wasi/libc.a ] || return 1
    local linker
    linker="$(wasm_linker)" && [ -n "$linker" ] || return 1
    PATH="/usr/bin:$PATH" "$linker" -flavor wasm --version >/dev/null 2>&1
}

# The linker Debian's rustc calls for wasm32-wasip1, from its target spec.
wasm_linker() {
    RUSTC_BOOTSTRAP=1 /usr/bin/rustc -Z unstable-options --print target-spec-json --target wasm32-wasip1 2>/dev/null \
        | sed -n 's/^ *"linker": "\(.*\)",*$/\1/p' | head -1
}

# Debian's cargo finds its subcommands (cargo-clippy) and rustc's linker in
# /usr/bin before rustup's proxies; the project's own tools stay first.
DEBIAN_RUST_PATH="$TOOLS/bin:$VENV/bin:/usr/bin:$PATH"

# Native cargo, from the chosen toolchain.
native_cargo() {
    case "$(toolchain)" in
        debian) env PATH="$DEBIAN_RUST_PATH" RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc /usr/bin/cargo "$@" ;;
        *) cargo "$@" ;;
    esac
}

# Runs cargo for a wasm target with whichever toolchain the machine has.
# Debian's builds the standard library too; for the filter (wasm32-wasip1)
# without its default features (backtrace symbolization: object, gimli,
# addr2line, miniz_oxide), which a filter that aborts on panic never uses:
# less to compile on a first build.
# Usage: wasm_cargo <target> <subcommand> <cargo args...> [-- <tool args>]
# (the target flags go right after the subcommand, before any `--`).
wasm_cargo() {
    local target="$1" sub="$2"; shift 2
    case "$(toolchain)" in
        rustup)
            cargo "$sub" --target "$target" "$@"
            ;;
        debian)
            local upper="${target//-/_}"; upper="${upper^^}"
            local features=()
            [ "$target" = wasm32-wasip1 ] && features=(-Zbuild-std-features=)
            env PATH="$DEBIAN_RUST_PATH" RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc \
                RUSTC_BOOTSTRAP=1 CARGO_TARGET_DIR="$WASM_TARGET_DIR" \
                "CARGO_TARGET_${upper}_RUSTFLAGS=-L native=/usr/lib/wasm32-wasi" \
                /usr/bin/cargo "$sub" --target "$target" -Zbuild-std=std,panic_abort \
                ${features[@]+"${features[@]}"} "$@"
            ;;
        *)
            die "no Rust toolchain that can build wasm32-wasip1; run 'make bootstrap'"
            ;;
    esac
}

# The target dir a wasm build landed in.
wasm_target_dir() {
    case "$(toolchain)" in
        debian) echo "$WASM_TARGET_DIR" ;;
        *) echo "${CARGO_TARGET_DIR:-$ROOT/target}" ;;
    esac
}

# The wasm-bindgen version in Cargo.lock: the test runner must match it.
locked_wasm_bindgen_version() {
    awk '/^name = "wasm-bindgen"$/ { getline; gsub(/version = |"/, ""); print; exit }' "$ROOT/Cargo.lock"
}
