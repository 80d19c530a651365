#!/usr/bin/env bash
# Builds the cargo-fuzz targets (fuzz/, see FUZZING.md) and runs each for a
# bounded time: scripts/fuzz.sh [SECONDS] [TARGET...]
#   SECONDS  per target (default 60); TARGET  one or more (default: all).
# Installs cargo-fuzz if it is missing. The toolchain is stable: cargo-fuzz's
# nightly flags are let through with RUSTC_BOOTSTRAP=1. Builds go to a target
# directory of their own outside the clone ($CAIRN_FUZZ_TARGET_DIR, default
# ~/.cache/cairn-fuzz-target); each target's working corpus grows in
# $CAIRN_FUZZ_WORK/corpus/TARGET (default ~/.cache/cairn-fuzz), with the
# checked-in seeds of fuzz/corpus/TARGET read beside it; crashes are written to
# fuzz/artifacts/TARGET/ (ignored by git) and a failed run's libFuzzer log is
# kept in $CAIRN_FUZZ_WORK/logs. Prints one line per target and a
# closing `test result:` line that scripts/test.sh counts; the exit status is
# non-zero if any target found a crash, a timeout or ran out of memory.
# Environment: CAIRN_FUZZ_SANITIZER (default none: cairn's crates deny unsafe
# code; `address` works too, at half the speed), CAIRN_FUZZ_FLAGS
# (more libFuzzer flags), CAIRN_CARGO_LOCK (a file to flock around cargo
# install and build, for machines where several builds share the cores).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-60}"
shift || true
export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR="${CAIRN_FUZZ_TARGET_DIR:-$HOME/.cache/cairn-fuzz-target}"
export CARGO_TERM_PROGRESS_WHEN=never
work="${CAIRN_FUZZ_WORK:-$HOME/.cache/cairn-fuzz}"
sanitizer="${CAIRN_FUZZ_SANITIZER:-none}"
triple="$(rustc -vV | sed -n 's/^host: //p')"

locked() {
    if [ -n "${CAIRN_CARGO_LOCK:-}" ]; then
        flock "$CAIRN_CARGO_LOCK" "$@"
    else
        "$@"
    fi
}

cd fuzz
if [ $# -gt 0 ]; then
    targets=("$@")
else
    targets=()
    for f in fuzz_targets/*.rs; do targets+=("$(basename "$f" .rs)"); done
fi

# A target that does not build (or no cargo-fuzz) fails them all.
not_built() {
    echo "fuzz: $1"
    echo "test result: FAILED. 0 passed; ${#targets[@]} failed; 0 ignored; 0 measured; 0 filtered out (fuzz targets)"
    exit 1
}
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "==> cargo install cargo-fuzz --locked" >&2
    locked cargo install cargo-fuzz --version 0.13.2 --locked || not_built "cargo-fuzz could not be installed"
fi
echo "==> cargo fuzz build --sanitizer $sanitizer (${targets[*]})" >&2
locked cargo fuzz build --sanitizer "$sanitizer" || not_built "the fuzz targets do not build"

passed=0
failed=0
mkdir -p "$work/logs"
for t in "${targets[@]}"; do
    mkdir -p "$work/corpus/$t" "artifacts/$t"
    log=$(mktemp "$work/logs/$t.XXXXXX.log")
    echo "==> $t for ${seconds}s" >&2
    rc=0
    # shellcheck disable=SC2086
    nice -n 10 "$CARGO_TARGET_DIR/$triple/release/$t" "$work/corpus/$t" "corpus/$t" \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        -artifact_prefix="artifacts/$t/" ${CAIRN_FUZZ_FLAGS:-} >"$log" 2>&1 || rc=$?
    # The last status line: "#RUNS DONE cov: N ft: N corp: N/SIZE ...".
    stats=$(grep -E '^#[0-9]+' "$log" | tail -1 | sed -E 's/^#([0-9]+)[[:space:]]+[A-Z]+[[:space:]]+/\1 runs, /; s/ lim: [0-9]+//; s/ exec\/s: [0-9]+//; s/ rss: .*//')
    if [ "$rc" -eq 0 ]; then
        passed=$((passed + 1))
        echo "fuzz $t: ok, $stats"
        rm -f "$log"
    else
        failed=$((failed + 1))
        echo "fuzz $t: FAILED (exit $rc), $stats"
        grep -E -A12 "panicked at|ERROR: libFuzzer|SUMMARY|Test unit written" "$log" | head -40 || true
        echo "(full log: $log; reproduce: cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run --sanitizer $sanitizer $t ARTIFACT)"
    fi
done

result=ok
[ "$failed" -eq 0 ] || result=FAILED
echo "test result: $result. $passed passed; $failed failed; 0 ignored; 0 measured; 0 filtered out (fuzz targets, ${seconds}s each)"
[ "$failed" -eq 0 ]
