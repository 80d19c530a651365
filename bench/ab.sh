#!/usr/bin/env bash
# A/B of two builds on the three-step workflow through the HTTP API:
#
#   bench/ab.sh BINARY [BINARY...]
#
# For each binary: a fresh `cairn serve` on a temporary data directory, the
# bench guests deployed, 100 warm-up workflows, then 1,500 one at a time
# (C=1) and 4,000 from 32 concurrent Python clients (C=32). Prints per load
# the throughput, p50 and p99, the server's CPU (utime + stime) per workflow,
# and its threads and resident memory right after. Needs the bench guests
# built (`source scripts/env.sh; build_all`) in CARGO_TARGET_DIR.
set -euo pipefail
GUESTS="${CARGO_TARGET_DIR:-$HOME/.cache/cairn-target}/wasm32-wasip2/release"
PORT="${PORT:-7815}"
for BIN in "$@"; do
  DATA=$(mktemp -d /tmp/cairn-ab.XXXX)
  "$BIN" serve --data "$DATA" --listen "127.0.0.1:$PORT" --quiet-guests >"$DATA.log" 2>&1 &
  PID=$!
  for _ in $(seq 50); do curl -sf "http://127.0.0.1:$PORT/v1/health" >/dev/null && break; sleep 0.1; done
  curl -sf -XPOST -H 'content-type: application/wasm' --data-binary @"$GUESTS/bench_steps_activity.wasm" "http://127.0.0.1:$PORT/v1/definitions?name=bench-steps" >/dev/null
  curl -sf -XPOST -H 'content-type: application/wasm' --data-binary @"$GUESTS/bench_order.wasm" "http://127.0.0.1:$PORT/v1/definitions" >/dev/null
  echo "$BIN"
  PID=$PID PORT=$PORT python3 - <<'P' || true
import http.client, json, os, threading, time
pid, port = os.environ["PID"], int(os.environ["PORT"])
tick = os.sysconf("SC_CLK_TCK")
def cpu():
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / tick
def run(tag, n, lat):
    c = http.client.HTTPConnection("127.0.0.1", port)
    for i in range(n):
        key = "%s-%d" % (tag, i)
        s = time.perf_counter()
        c.request("POST", "/v1/messages", json.dumps({"operation": "bench-order", "id": key, "wait_reply": True, "body": {"key": key, "amount": 5}}), {"content-type": "application/json"})
        r = c.getresponse(); r.read()
        assert r.status in (200, 202), r.status
        lat.append(time.perf_counter() - s)
run("warm", 100, [])
for conc, n in ((1, 1500), (32, 125)):
    lat = []; c0 = cpu(); t0 = time.perf_counter()
    ts = [threading.Thread(target=run, args=("c%d-%d" % (conc, t), n, lat)) for t in range(conc)]
    [t.start() for t in ts]; [t.join() for t in ts]
    took = time.perf_counter() - t0; c1 = cpu(); lat.sort(); N = len(lat)
    status = dict(l.split(":", 1) for l in open(f"/proc/{pid}/status").read().splitlines() if ":" in l)
    print("  C=%-2d n=%d %5.0f/s p50 %.3f ms p99 %.2f ms cpu %.3f ms/workflow threads %s rss %s" % (
        conc, N, N / took, lat[N // 2] * 1000, lat[int(N * .99)] * 1000, (c1 - c0) * 1000 / N,
        status["Threads"].strip(), status["VmRSS"].strip()))
P
  kill "$PID"; wait "$PID" || true
  rm -rf "$DATA" "$DATA.log"
done
