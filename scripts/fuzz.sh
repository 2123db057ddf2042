#!/usr/bin/env bash
# Runs the engine's fuzz targets (fuzz/: cargo-fuzz, libFuzzer), each for a
# bounded time, and says what each did (what `make fuzz` runs):
#   scripts/fuzz.sh [target...]    default: every target in fuzz/Cargo.toml
#
#   FUZZ_SECONDS    seconds per target (default 30)
#   FUZZ_TIMEOUT    seconds one input may take before it counts as a hang (10)
#   FUZZ_SANITIZER  none | address (default: address where the compiler
#                   ships AddressSanitizer's runtime, else none; Debian's
#                   rustc does not ship it)
#   FUZZ_ARGS       more libFuzzer flags (e.g. -max_len=65536)
#
# Each target starts from its committed seeds (fuzz/corpus/<target>) and
# the inputs earlier runs found (target/fuzz/corpus/<target>, not
# committed). A failing input is kept in fuzz/artifacts/<target>/; replay
# it with `scripts/fuzz.sh replay <target> <file>`. Toolchain: the project's
# native one (scripts/lib.sh): on Debian, its rustc-web, stable, with
# cargo-fuzz's flags (SanitizerCoverage through -Cpasses=sancov-module and
# -Cllvm-args, --cfg fuzzing, -Cdebug-assertions), which stable rustc takes;
# only -Zsanitizer needs RUSTC_BOOTSTRAP=1.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

SECONDS_PER_TARGET="${FUZZ_SECONDS:-30}"
TIMEOUT="${FUZZ_TIMEOUT:-10}"
# Found inputs and logs; the builds, one target dir per sanitizer (the
# flags differ: switching would rebuild everything).
FUZZ_TARGET_DIR="$ROOT/target/fuzz"

# The native compiler (scripts/lib.sh's choice).
fuzz_rustc() {
    case "$(toolchain)" in
        debian) /usr/bin/rustc "$@" ;;
        *) rustc "$@" ;;
    esac
}

# The sanitizer the native compiler can link: AddressSanitizer needs the
# runtime rustup's toolchains ship (librustc-<channel>_rt.asan.a), which
# Debian's rustc-web does not.
sanitizer() {
    if [ -n "${FUZZ_SANITIZER:-}" ]; then
        echo "$FUZZ_SANITIZER"
        return
    fi
    local sysroot
    sysroot="$(fuzz_rustc --print sysroot 2>/dev/null || true)"
    if [ -n "$sysroot" ] && compgen -G "$sysroot/lib/rustlib/x86_64-unknown-linux-gnu/lib/librustc-*_rt.asan.a" >/dev/null; then
        echo address
    else
        echo none
    fi
}

# `cargo fuzz <subcommand>` in fuzz/, with the native toolchain, the chosen
# sanitizer and the project's target dir; then the subcommand's arguments.
# RUSTC_BOOTSTRAP=1 only for a sanitizer (-Zsanitizer is unstable).
fuzz_cargo() {
    local sub="$1"; shift
    if [ "$SANITIZER" != none ]; then export RUSTC_BOOTSTRAP=1; fi
    local build="$FUZZ_TARGET_DIR"
    [ "$SANITIZER" = none ] || build="$ROOT/target/fuzz-$SANITIZER"
    (cd "$ROOT/fuzz" && native_cargo fuzz "$sub" --sanitizer "$SANITIZER" --target-dir "$build" "$@")
}

all_targets() {
    sed -n 's/^name = "\(.*\)"$/\1/p' "$ROOT/fuzz/Cargo.toml" | grep -v '^warden-engine-fuzz$'
}

have cargo-fuzz || die "cargo-fuzz is missing from $TOOLS; run 'make fuzz' (scripts/bootstrap.sh fuzz installs it)"
SANITIZER="$(sanitizer)"

if [ "${1:-}" = replay ]; then
    [ $# -eq 3 ] || die "usage: scripts/fuzz.sh replay <target> <file>"
    # libFuzzer runs in fuzz/: a path relative to here would not be found.
    input="$(realpath -e "$3")" || die "no such input: $3"
    step "fuzz: replaying $input on $2"
    fuzz_cargo run "$2" "$input"
    exit
fi

targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(all_targets)

step "fuzz: building ${#targets[@]} targets ($(fuzz_rustc --version), sanitizer $SANITIZER)"
fuzz_cargo build

declare -A result
failed=()
for t in "${targets[@]}"; do
    step "fuzz: $t for ${SECONDS_PER_TARGET}s"
    mkdir -p "$FUZZ_TARGET_DIR/corpus/$t" "$ROOT/fuzz/corpus/$t"
    log="$FUZZ_TARGET_DIR/$t.log"
    # New inputs go to the first corpus directory (not committed); the
    # committed seeds are read only.
    # shellcheck disable=SC2086
    if fuzz_cargo run "$t" "$FUZZ_TARGET_DIR/corpus/$t" "$ROOT/fuzz/corpus/$t" -- \
        -max_total_time="$SECONDS_PER_TARGET" -timeout="$TIMEOUT" -print_final_stats=1 \
        ${FUZZ_ARGS:-} >"$log" 2>&1; then
        status=ok
    else
        status=FAILED
        failed+=("$t")
        grep -E 'panicked at|^==[0-9]+==|SUMMARY|Test unit written|ERROR: libFuzzer' "$log" | head -12 | sed 's/^/    /' || true
    fi
    runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)"
    rate="$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)"
    cov="$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2 || true)"
    corpus="$(find "$FUZZ_TARGET_DIR/corpus/$t" "$ROOT/fuzz/corpus/$t" -type f | wc -l)"
    result[$t]="$(printf '%-12s %-7s %10s runs %7s/s  coverage %6s  corpus %5s' "$t" "$status" "${runs:-?}" "${rate:-?}" "${cov:-?}" "$corpus")"
    info "${result[$t]}  (log: ${log#"$ROOT"/})"
done

step "fuzz: summary (${SECONDS_PER_TARGET}s per target, sanitizer $SANITIZER)"
for t in "${targets[@]}"; do info "${result[$t]}"; done
if [ ${#failed[@]} -gt 0 ]; then
    info "failing inputs are in fuzz/artifacts/<target>/; replay one with: scripts/fuzz.sh replay <target> <file>"
    die "fuzz targets failed: ${failed[*]}"
fi
