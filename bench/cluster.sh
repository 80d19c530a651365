#!/usr/bin/env bash
# Cluster mode on one PostgreSQL (BENCHMARKS.md, "Cluster mode"):
#
#   bench/cluster.sh      completed instances per second with one, two and
#                         three `cairn serve --node` hosts over one throwaway
#                         PostgreSQL cluster (scripts/env.sh start_postgres),
#                         then the failover time from `kill -9` of one of
#                         three hosts to the first of its instances resumed
#                         on another.
#
# The load: a closed loop of CONCURRENCY clients per host, each sending
# `bench-single` (a creating request-response receive, one invoke of the
# pure `bench-steps` activity, the reply) with wait_reply to the hosts in
# turn, for SECONDS seconds. Every host serves the API; each instance runs
# on the owner of its partition.
#
# Needs the binary and the guests built (`source scripts/env.sh; build_all`)
# in CARGO_TARGET_DIR. Env: SECONDS_PER_RUN (20), CONCURRENCY (8 per host),
# LEASE_MS (3000), PARTITIONS (64).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/cairn-target}"
CAIRN="$CARGO_TARGET_DIR/release/cairn"
GUESTS="$CARGO_TARGET_DIR/wasm32-wasip2/release"
SECONDS_PER_RUN="${SECONDS_PER_RUN:-20}"
CONCURRENCY="${CONCURRENCY:-8}"
LEASE_MS="${LEASE_MS:-3000}"
PARTITIONS="${PARTITIONS:-64}"
# shellcheck source=scripts/env.sh
source "$ROOT/scripts/env.sh"
ensure_postgres
start_postgres

WORK=$(mktemp -d /tmp/cairn-cluster-bench.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    rm -rf "$WORK"
}
on_exit cleanup

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# start_host NAME DB -> prints its URL; its pid goes to $WORK/NAME.pid
start_host() {
    local name=$1 db=$2 port
    port=$(free_port)
    mkdir -p "$WORK/$name"
    "$CAIRN" serve --data "$WORK/$name/data" --store "$db" --node "$name" --listen "127.0.0.1:$port" \
        --quiet-guests --lease-ms "$LEASE_MS" --partitions "$PARTITIONS" >"$WORK/$name/serve.log" 2>&1 &
    echo $! >"$WORK/$name.pid"
    echo "http://127.0.0.1:$port"
}

run() {
    python3 - "$@" <<'EOF'
import json, sys, threading, time, urllib.parse, urllib.request, urllib.error

cmd, args = sys.argv[1], sys.argv[2:]

def call(method, url, body=None, ctype="application/json", timeout=60):
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"content-type": ctype})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")

def wait_until(what, f, limit=120):
    end = time.time() + limit
    while time.time() < end:
        try:
            if f():
                return
        except Exception:
            pass
        time.sleep(0.05)
    sys.exit(f"timed out: {what}")

def balanced(url, names):
    _, v = call("GET", url + "/v1/cluster")
    owners = [p["owner"] for p in v["owners"] if p["lease_remaining_ms"] > 0]
    return len(owners) == len(v["owners"]) and all(owners.count(n) >= len(owners) // len(names) - 1 for n in names)

if cmd == "settle":
    # settle URL NAME...: every partition held, spread over NAMEs
    wait_until("partitions settle", lambda: balanced(args[0], args[1:]))
elif cmd == "deploy":
    # deploy GUESTS URL NAME:FILE[:ALLOW_HTTP]...
    guests, url = args[0], args[1]
    for spec in args[2:]:
        name, f, *allow = spec.split(":", 2)
        q = f"?name={name}" if name else ""
        if allow:
            q += "&allow_http=" + urllib.parse.quote(allow[0], safe="")
        s, v = call("POST", url + "/v1/definitions" + q, open(f"{guests}/{f}.wasm", "rb").read(), "application/wasm", 300)
        assert s in (200, 201), v
elif cmd == "load":
    # load SECONDS CONCURRENCY TAG URL...: completed instances per second
    seconds, concurrency, tag, urls = float(args[0]), int(args[1]), args[2], args[3:]
    for u in urls:
        wait_until("every host knows the versions", lambda: len(call("GET", u + "/v1/definitions")[1]["definitions"]) >= 2)
    done, failed, stop = [0], [0], time.time() + seconds
    lock = threading.Lock()
    def client(c):
        i = 0
        while time.time() < stop:
            u = urls[(c + i) % len(urls)]
            key = f"{tag}-{c}-{i}"
            s, v = call("POST", u + "/v1/messages", {"operation": "bench-single", "id": key, "wait_reply": True, "body": {"i": i, "key": key}})
            with lock:
                if s == 202 and isinstance(v, dict) and v.get("reply"):
                    done[0] += 1
                else:
                    failed[0] += 1
            i += 1
    threads = [threading.Thread(target=client, args=(c,)) for c in range(concurrency * len(urls))]
    t0 = time.time()
    for t in threads: t.start()
    for t in threads: t.join()
    wall = time.time() - t0
    print(f"| {len(urls)} | {concurrency * len(urls)} | {done[0]} | {failed[0]} | {done[0] / wall:.0f}/s |")
elif cmd == "failover":
    # failover VICTIM_NAME VICTIM_PID URL_OF_SURVIVOR...: ms from kill -9 to the first resumed instance
    import os, signal, hashlib
    victim, pid, urls = args[0], int(args[1]), args[2:]
    _, st = call("GET", urls[0] + "/v1/cluster")
    count = st["partitions"]
    mine = {p["partition"] for p in st["owners"] if p["owner"] == victim}
    def part(i):
        h = 0xcbf29ce484222325
        for b in i.encode():
            h = ((h ^ b) * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
        return h % count
    # Instances waiting for a message, some on the victim's partitions.
    ids = {}
    k = 0
    while sum(1 for i in ids.values() if part(i) in mine) < 20:
        s, v = call("POST", urls[0] + "/v1/messages", {"operation": "crash-start", "id": f"s{k}", "body": {"key": f"f{k}"}})
        assert s == 202, v
        ids[f"f{k}"] = v["instance"]
        k += 1
    on_victim = [key for key, i in ids.items() if part(i) in mine]
    time.sleep(1)
    os.kill(pid, signal.SIGKILL)
    t0 = time.time()
    for key in on_victim:
        s, v = call("POST", urls[0] + "/v1/messages", {"operation": "crash-finish", "id": f"e-{key}", "body": {"key": key}})
        assert s == 202, v
    def resumed():
        for key in on_victim:
            _, v = call("GET", urls[0] + "/v1/instances/" + ids[key])
            if v.get("variables", {}).get("finished"):
                return True
        return False
    wait_until("an instance of the victim resumes", resumed, 120)
    print(f"| kill -9 to first resumed instance | {(time.time() - t0) * 1000:.0f} ms | lease {os.environ.get('LEASE_MS', '3000')} ms |")
EOF
}

echo "| hosts | clients | completed | failed | completed instances per second |"
echo "|---|---|---|---|---|"
for n in 1 2 3; do
    db="${CAIRN_TEST_PG}/cluster_bench_$n"
    createdb -h 127.0.0.1 -p "${CAIRN_TEST_PG##*:}" -U postgres "cluster_bench_$n"
    urls=()
    names=()
    for i in $(seq 1 "$n"); do
        urls+=("$(start_host "n$i" "$db")")
        names+=("n$i")
        PIDS+=("$(cat "$WORK/n$i.pid")")
    done
    for u in "${urls[@]}"; do
        until curl -sf "$u/v1/health" >/dev/null; do sleep 0.1; done
    done
    run settle "${urls[0]}" "${names[@]}"
    run deploy "$GUESTS" "${urls[0]}" "bench-steps:bench_steps_activity" ":bench_single"
    run load "$SECONDS_PER_RUN" "$CONCURRENCY" "run$n" "${urls[@]}"
    for i in $(seq 1 "$n"); do kill -TERM "$(cat "$WORK/n$i.pid")" 2>/dev/null || true; done
    wait 2>/dev/null || true
done

echo
echo "| failover | time | |"
echo "|---|---|---|"
db="${CAIRN_TEST_PG}/cluster_bench_failover"
createdb -h 127.0.0.1 -p "${CAIRN_TEST_PG##*:}" -U postgres cluster_bench_failover
urls=()
for i in 1 2 3; do
    urls+=("$(start_host "f$i" "$db")")
    PIDS+=("$(cat "$WORK/f$i.pid")")
done
for u in "${urls[@]}"; do
    until curl -sf "$u/v1/health" >/dev/null; do sleep 0.1; done
done
run settle "${urls[0]}" f1 f2 f3
run deploy "$GUESTS" "${urls[0]}" "recorder:t_recorder:http://127.0.0.1:9/" ":t_crash"
LEASE_MS=$LEASE_MS run failover f3 "$(cat "$WORK/f3.pid")" "${urls[0]}" "${urls[1]}"
