#!/usr/bin/env bash
# Runs every check: clippy on the host-side packages, then the engine and
# store unit tests and every test against the real cairn binary and real
# guest components on the RocksDB store, then the end-to-end, crash,
# bad-input, partner, resource and worker tests and the store specification
# again on PostgreSQL, with the language and lifecycle tests (a throwaway
# cluster, see env.sh), and at last a short
# run of every fuzz target (scripts/fuzz.sh 20: each builds and runs 20 s clean).
# The web console's test runs in headless Chromium (ensure_browser_tools).
# Every step runs even if an earlier one failed; the exit status is non-zero
# if any failed.
cd "$(dirname "$0")/.."
source scripts/env.sh
build_all
# The console test (tests/console.rs) drives Debian's chromium with playwright-core.
status=0
ensure_browser_tools || { echo "==> could not install the browser tools (chromium, node, playwright-core)" >&2; status=1; }
log=$(mktemp)
trap 'rm -f "$log"' EXIT
threads="${CAIRN_TEST_THREADS:-2}"

# The host-side packages (the guests only build for wasm32-wasip2, except
# order-approval, whose tests run it natively with cairn-testkit). --release
# so the build scripts' outputs (rocksdb's C++ above all) are the ones
# build_all already made.
host_packages="-p cairn-engine -p cairn -p cairn-client -p cairn-tests -p cairn-worker -p cairn-testkit -p order-approval"
if [ -f store/Cargo.toml ]; then
    host_packages="$host_packages -p cairn-store"
fi
echo "==> cargo clippy $host_packages" >&2
# shellcheck disable=SC2086
cargo clippy --release --keep-going $host_packages --all-targets -- -D warnings || status=$?

# The OpenTelemetry export (feature `otel`, off by default) still compiles.
echo "==> cargo check -p cairn --features otel" >&2
cargo check --release -p cairn --features otel || status=$?

echo "==> running tests (store: RocksDB)" >&2
# shellcheck disable=SC2086
cargo test --release $host_packages -- --test-threads "$threads" 2>&1 | tee -a "$log" || status=$?

# The guest SDK's Rust docs: their examples compile (and run, where they need no host).
echo "==> cargo test -p cairn-guest --doc" >&2
cargo test --release -p cairn-guest --doc 2>&1 | tee -a "$log" || status=$?

echo "==> running the end-to-end, crash, bad-input, partner, resource, worker, language and lifecycle tests again (store: PostgreSQL)" >&2
if ensure_postgres && start_postgres; then
    CAIRN_TEST_STORE=postgres cargo test --release -p cairn-tests --test e2e --test crash --test bad_input --test partners --test resources --test workers \
        --test language --test lifecycle \
        -- --test-threads "$threads" 2>&1 | tee -a "$log" || status=$?
    # The store's table specification, on PostgreSQL (CAIRN_TEST_PG is set).
    cargo test --release -p cairn-store --test postgres 2>&1 | tee -a "$log" || status=$?
    # Cluster mode: three hosts over one database, one test at a time.
    echo "==> cluster tests (three hosts over one PostgreSQL)" >&2
    cargo test --release -p cairn-tests --test cluster -- --test-threads 1 2>&1 | tee -a "$log" || status=$?
    stop_postgres
else
    echo "==> could not start PostgreSQL" >&2
    status=1
fi

# The fuzz targets (fuzz/, FUZZING.md) still build and run: 20 s each. Its
# `test result:` line counts one test per target.
echo "==> a short run of every fuzz target (scripts/fuzz.sh 20)" >&2
scripts/fuzz.sh 20 2>&1 | tee -a "$log" || status=$?

# One closing line for the whole run, summed over the test binaries.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "%d passed, %d failed\n", p, f }' "$log"
exit $status
