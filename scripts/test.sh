#!/usr/bin/env bash
# Runs every test: engine unit tests, then end-to-end, bad-input and crash
# tests against the real cairn binary and real guest components.
cd "$(dirname "$0")/.."
source scripts/env.sh
build_all
echo "==> running tests" >&2
cargo test --release -p cairn -p cairn-tests -- --test-threads "${CAIRN_TEST_THREADS:-2}"
