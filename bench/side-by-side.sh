#!/usr/bin/env bash
# Cairn and Restate side by side on this machine, the same workloads from one
# session (BENCHMARKS.md, "Cairn and Restate side by side"):
#
#   bench/side-by-side.sh            ROUNDS rounds, each `cairn bench --only http-api`
#                                    then the Restate peer harness (bench/restate/run.sh bench),
#                                    then bench/summarize.py over all of them.
#
# Before each measured run it waits (up to 10 minutes) until the 1-minute load
# average is below LOAD_MAX, and it holds the Cargo lock /tmp/cairn-cargo.lock
# while measuring, so that no build of this repository runs meanwhile.
#
# Needs: Rust (it builds this tree first: `source scripts/env.sh; build_all`;
# SKIP_BUILD=1 takes the build already in CARGO_TARGET_DIR), and
# `bench/restate/run.sh install` once (npm; or RESTATE_DIR pointing to an
# installed copy of bench/restate). The Restate harness runs in a private
# network namespace (root, `unshare --net`); NO_NETNS=1 runs it without.
#
# Env: ROUNDS (3), N (2000 requests per load run), LOAD_MAX (0.5),
#      RESTATE_DIR (bench/restate), OUT (bench/results/<UTC timestamp>),
#      PEER_LOADGEN (node: Restate driven by load.mjs, not by Cairn's generator).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/cairn-target}"
CAIRN="$CARGO_TARGET_DIR/release/cairn"
ROUNDS="${ROUNDS:-3}"
N="${N:-2000}"
LOAD_MAX="${LOAD_MAX:-0.5}"
RESTATE_DIR="${RESTATE_DIR:-$ROOT/bench/restate}"
OUT="${OUT:-$ROOT/bench/results/$(date -u +%Y%m%dT%H%M%SZ)}"
LOCK=/tmp/cairn-cargo.lock
mkdir -p "$OUT"
# Both systems are driven by the same closed-loop generator (host/src/loadgen.rs):
# Restate's ingress through `cairn bench --only peer-load`. PEER_LOADGEN=node
# drives Restate with the peer harness's own load.mjs instead.
if [ "${PEER_LOADGEN:-}" = node ]; then PEER_LOADGEN=""; else PEER_LOADGEN="$OUT/bin/cairn bench --only peer-load"; fi

log() { echo "[$(date -u +%H:%M:%S)] $*" >&2; }

# This tree is built (unless SKIP_BUILD=1) and the binary and the guests are
# copied in the same hold of the lock, so that every round measures this
# tree's build even if the shared target directory is rebuilt meanwhile.
mkdir -p "$OUT/bin" "$OUT/guests"
flock "$LOCK" bash -c '
  if [ "${SKIP_BUILD:-0}" != 1 ]; then (cd "$4" && source scripts/env.sh && build_all) || exit 1; fi
  cp "$1" "$2/bin/cairn" && cp "$3"/bench_*.wasm "$2/guests/"' _ "$CAIRN" "$OUT" "$CARGO_TARGET_DIR/wasm32-wasip2/release" "$ROOT"
echo "{\"commit\":\"$(git -C "$ROOT" rev-parse --short HEAD)\",\"uncommitted_files\":$(git -C "$ROOT" status --porcelain | wc -l),\"cpu\":\"$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')\",\"nproc\":$(nproc)}" >"$OUT/meta.json"

# quiet: wait up to 10 minutes for the 1-minute load average to fall below LOAD_MAX.
quiet() {
  local i load
  for i in $(seq 1 120); do
    load=$(cut -d' ' -f1 /proc/loadavg)
    if awk -v l="$load" -v m="$LOAD_MAX" 'BEGIN{exit !(l < m)}'; then
      log "load average $load"; return 0
    fi
    sleep 5
  done
  log "load average still $load after 10 minutes: measuring anyway"
}

# measured SYSTEM ROUND COMMAND...: once quiet, under the Cargo lock; the load
# averages at the start and the end go to runs.jsonl.
measured() {
  local system=$1 round=$2; shift 2
  quiet
  flock "$LOCK" bash -c '
    out=$1 system=$2 round=$3; shift 3
    start=$(cut -d" " -f1-3 /proc/loadavg) t=$(date -u +%Y-%m-%dT%H:%M:%SZ)
    "$@"; rc=$?
    echo "{\"round\":$round,\"system\":\"$system\",\"date_utc\":\"$t\",\"loadavg_start\":\"$start\",\"loadavg_end\":\"$(cut -d" " -f1-3 /proc/loadavg)\",\"rc\":$rc}" >>"$out/runs.jsonl"
    exit $rc' _ "$OUT" "$system" "$round" "$@"
}

for round in $(seq 1 "$ROUNDS"); do
  log "round $round/$ROUNDS: cairn"
  measured cairn "$round" "$OUT/bin/cairn" bench --only http-api --requests "$N" --guests "$OUT/guests" | tee "$OUT/cairn-$round.md" || log "cairn round $round failed"

  log "round $round/$ROUNDS: restate"
  N="$N" LOADGEN="$PEER_LOADGEN" measured restate "$round" "$RESTATE_DIR/run.sh" bench 2>&1 | tee "$OUT/restate-$round.log" || log "restate round $round failed"
  mkdir -p "$OUT/restate-$round"
  cp "$RESTATE_DIR"/results/* "$OUT/restate-$round/"
done
python3 "$ROOT/bench/summarize.py" "$OUT" | tee "$OUT/summary.md"
