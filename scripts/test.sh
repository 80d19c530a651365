#!/usr/bin/env bash
# Runs every test: engine unit tests, then end-to-end, bad-input and crash
# tests against the real cairn binary and real guest components.
cd "$(dirname "$0")/.."
source scripts/env.sh
build_all
echo "==> running tests" >&2
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --release -p cairn -p cairn-tests -- --test-threads "${CAIRN_TEST_THREADS:-2}" 2>&1 | tee "$log" || status=$?
# One closing line for the whole run, summed over the test binaries.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "%d passed, %d failed\n", p, f }' "$log"
exit $status
