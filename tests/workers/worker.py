#!/usr/bin/env python3
"""A Cairn worker in Python, on the HTTP API only (standard library).

Takes tasks of one external activity by long polling and carries them out:
  standing  the account service of the reference scenario: {"ok": customer does not start with "bad"}
  echo      answers {"echoed": INPUT, "worker": NAME}
  hang      takes one task and never answers (to be killed)
Prints one JSON line per event on stdout: {"event": "took"|"completed"|"refused", ...}.
Exits after --max-tasks tasks, or after --idle-exit seconds without a task.
"""
import argparse
import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request


def call(args, path, body):
    req = urllib.request.Request(args.server.rstrip("/") + path, data=json.dumps(body).encode(), method="POST")
    req.add_header("content-type", "application/json")
    if args.token:
        req.add_header("authorization", "Bearer " + args.token)
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def say(**event):
    print(json.dumps(event), flush=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--server", required=True)
    p.add_argument("--activity", required=True)
    p.add_argument("--worker", required=True)
    p.add_argument("--token")
    p.add_argument("--mode", default="echo", choices=["standing", "echo", "hang"])
    p.add_argument("--lease-ms", type=int, default=30000)
    p.add_argument("--max-tasks", type=int, default=0)
    p.add_argument("--idle-exit", type=float, default=0)
    args = p.parse_args()
    done = 0
    idle_since = time.time()
    while True:
        status, answer = call(args, "/v1/tasks/poll", {
            "activity": args.activity, "worker": args.worker, "max": 1,
            "wait_ms": 1000, "lease_ms": args.lease_ms,
        })
        if status != 200:
            say(event="poll-error", status=status, answer=answer)
            time.sleep(0.2)
            continue
        tasks = answer["tasks"]
        if not tasks:
            if args.idle_exit and time.time() - idle_since > args.idle_exit:
                return
            continue
        idle_since = time.time()
        for task in tasks:
            say(event="took", id=task["id"], attempt=task["attempt"], key=task["idempotency_key"], operation=task["operation"])
            if args.mode == "hang":
                while True:
                    time.sleep(3600)
            if args.mode == "standing":
                customer = (task["input"] or {}).get("customer", "")
                output = {"ok": not customer.startswith("bad")}
            else:
                output = {"echoed": task["input"], "worker": args.worker}
            path = "/v1/tasks/%s/complete" % urllib.parse.quote(task["id"], safe="")
            status, answer = call(args, path, {"attempt": task["attempt"], "worker": args.worker, "lease": task["lease"], "output": output})
            say(event="completed" if status == 200 else "refused", id=task["id"], attempt=task["attempt"], key=task["idempotency_key"], status=status)
            done += 1
            if args.max_tasks and done >= args.max_tasks:
                return


if __name__ == "__main__":
    sys.exit(main())
