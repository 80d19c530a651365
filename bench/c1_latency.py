#!/usr/bin/env python3
"""Three-step workflows one at a time through the HTTP API: p50 and p90.

Usage: c1_latency.py N [TAG] [PORT]. The server (default 127.0.0.1:7811)
must have `bench-steps` (bench_steps_activity.wasm, deployed with
?name=bench-steps) and `bench-order` deployed; see BENCHMARKS.md.
"""
import http.client
import json
import sys
import time

n = int(sys.argv[1])
tag = sys.argv[2] if len(sys.argv) > 2 else "c1-%d" % int(time.time())
port = int(sys.argv[3]) if len(sys.argv) > 3 else 7811
conn = http.client.HTTPConnection("127.0.0.1", port)
latencies = []
for i in range(n):
    key = "%s-%d" % (tag, i)
    body = json.dumps({"operation": "bench-order", "id": key, "wait_reply": True,
                       "body": {"key": key, "amount": i % 100 + 1}})
    started = time.perf_counter()
    conn.request("POST", "/v1/messages", body, {"content-type": "application/json"})
    response = conn.getresponse()
    answer = response.read()
    latencies.append(time.perf_counter() - started)
    if response.status not in (200, 202):
        sys.exit("request %d: %d %s" % (i, response.status, answer[:300]))
latencies.sort()
print("n=%d p50=%.2fms p90=%.2fms" % (n, latencies[n // 2] * 1000, latencies[int(n * 0.9)] * 1000))
