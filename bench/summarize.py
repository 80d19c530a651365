#!/usr/bin/env python3
"""Summarize a bench/side-by-side.sh run: the medians (and ranges) over its
rounds of Cairn (`cairn bench --only http-api`, the `json:` line of
cairn-R.md) and Restate (the peer harness's results in restate-R/), the
ratios Cairn/Restate, and how far each figure is from issue 10's goals.

usage: bench/summarize.py OUT_DIR
"""
import glob
import json
import os
import statistics
import sys

out = sys.argv[1]


def cairn_runs():
    runs = []
    for path in sorted(glob.glob(os.path.join(out, "cairn-*.md"))):
        for line in open(path):
            if line.startswith("json: "):
                runs.append(json.loads(line[6:]))
    return runs


def restate_runs():
    runs = []
    for d in sorted(glob.glob(os.path.join(out, "restate-*/"))):
        r = {"loads": {}, "cpu": {}}
        try:
            r["summary"] = json.load(open(os.path.join(d, "summary.json")))
            r["crash"] = json.load(open(os.path.join(d, "crash.json")))
        except (OSError, ValueError):
            continue
        for p in glob.glob(os.path.join(d, "load-*.json")):
            x = json.load(open(p))
            r["loads"][(x["target"], x["concurrency"])] = x
        for line in open(os.path.join(d, "rss.jsonl")):
            x = json.loads(line)
            r["cpu"][x["after"]] = x
        runs.append(r)
    return runs


C, R = cairn_runs(), restate_runs()


def med(values):
    v = [x for x in values if x is not None]
    if not v:
        return None, None, None
    return statistics.median(v), min(v), max(v)


def fmt(m, unit, digits):
    med_, lo, hi = m
    if med_ is None:
        return "n/a"
    s = f"{med_:,.{digits}f}{unit}"
    if lo != hi:
        s += f" ({lo:,.{digits}f}–{hi:,.{digits}f})"
    return s


def ratio(a, b, digits=2):
    if a[0] is None or b[0] is None or b[0] == 0:
        return "n/a"
    return f"{a[0] / b[0]:.{digits}f}"


def cload(c, target, conc):
    for x in c["loads"]:
        if x["target"] == target and x["concurrency"] == conc:
            return x
    return None


rows = []


def row(name, cm, rm, unit, digits, goal=""):
    rows.append(f"| {name} | {fmt(cm, unit, digits)} | {fmt(rm, unit, digits)} | {ratio(cm, rm)} | {goal} |")


n_restate = lambda r, t, c: r["loads"][(t, c)]["n_requested"] + 50  # load.mjs's CPU window includes the 50 warm-up calls

for target, label in (("order", "three-step workflow"), ("single", "one-step workflow")):
    for conc in (1, 32):
        ct = med([cload(c, target, conc)["throughput_per_s"] for c in C])
        rt = med([r["loads"][(target, conc)]["throughput_per_s"] for r in R])
        goal = ""
        if ct[0] and rt[0]:
            goal = f"≥ 10× Restate: {ct[0] / rt[0]:.1f}×"
        row(f"{label}, C={conc}: throughput", ct, rt, "/s", 1, goal)
        cp50 = med([cload(c, target, conc)["p50_ms"] for c in C])
        rp50 = med([r["loads"][(target, conc)]["p50_ms"] for r in R])
        goal = f"≤ 1 ms: {cp50[0]:.2f} ms ({cp50[0]:.1f}×)" if conc == 1 and cp50[0] else ""
        row(f"{label}, C={conc}: p50 latency", cp50, rp50, " ms", 2, goal)
        row(f"{label}, C={conc}: p99 latency", med([cload(c, target, conc)["p99_ms"] for c in C]),
            med([r["loads"][(target, conc)]["p99_ms"] for r in R]), " ms", 2)
        ccpu = med([cload(c, target, conc)["server_cpu_ms_per_workflow"] for c in C])
        rcpu = med([1000 * r["cpu"][f"{target}-c{conc}"]["server_cpu_s"] / n_restate(r, target, conc) for r in R])
        goal = f"≤ 0.2 ms: {ccpu[0]:.2f} ms ({ccpu[0] / 0.2:.1f}×)" if conc == 32 and ccpu[0] else ""
        row(f"{label}, C={conc}: server CPU per workflow", ccpu, rcpu, " ms", 3, goal)
        # Cairn's server runs the steps itself; Restate's run in its service (Node).
        rall = med([1000 * (r["cpu"][f"{target}-c{conc}"]["server_cpu_s"] + r["cpu"][f"{target}-c{conc}"]["service_cpu_s"])
                    / n_restate(r, target, conc) for r in R])
        row(f"{label}, C={conc}: CPU per workflow, Restate server + service", ccpu, rall, " ms", 3)

crss = med([c["rss_after_load"]["rss_mib"] for c in C])
row("server RSS after the load runs", crss, med([r["summary"]["server_rss_after_load"]["rss_mib"] for r in R]), " MiB", 1,
    f"≤ 64 MiB: {crss[0]:.0f} MiB" if crss[0] else "")
row("RSS after the load runs, Restate server + service", crss,
    med([r["summary"]["server_rss_after_load"]["rss_mib"] + r["cpu"]["single-c32"]["service"]["rss_mib"] for r in R]), " MiB", 1)
row("server RSS after listing every instance", med([c["rss_after_listing"]["rss_mib"] for c in C]), (None, None, None), " MiB", 1)
later = [c["rss_after_listing"]["rss_6s_later_mib"] for c in C if "rss_6s_later_mib" in c["rss_after_listing"]]
if later:
    row("server RSS 6 s after the listing (one trim later)", med(later), (None, None, None), " MiB", 1)
row("data directory after the load runs", med([c["data_dir_bytes_after_load"] / 1e6 for c in C]),
    med([r["summary"]["data_dir_bytes_after_load"] / 1e6 for r in R]), " MB", 1)
row("cold start, empty data directory (spawn → health)", med([c["cold_start_ms"] for c in C]),
    med([r["summary"]["server_cold_start_ms"] for r in R]), " ms", 0)
row("server idle CPU", med([c["idle_cpu_cores"] for c in C]), med([r["summary"]["server_idle_cpu_cores"] for r in R]), " cores", 3)
k = C[0]["crash"]["k"] if C else "K"
ch = med([c["crash"]["kill_to_health_ms"] for c in C])
row(f"kill -9 ({k} waiting on a 60 s timer) → health 200", ch,
    med([max(r["crash"]["kill_to_admin_health_ms"] or 0, r["crash"]["kill_to_ingress_health_ms"] or 0) for r in R]), " ms", 0,
    f"≤ 100 ms: {ch[0]:.0f} ms" if ch[0] else "")
row("kill -9 → first message accepted", med([c["crash"]["kill_to_first_accepted_ms"] for c in C]), (None, None, None), " ms", 0)
cs = med([c["crash"]["kill_to_first_workflow_ok_ms"] for c in C])
row("kill -9 → first workflow served", cs, med([r["crash"]["kill_to_first_invocation_ok_ms"] for r in R]), " ms", 0,
    f"≤ 100 ms: {cs[0]:.0f} ms" if cs[0] else "")
row("kill -9 → 200 concurrent workflows all served", med([c["crash"]["kill_to_200_burst_ok_ms"] for c in C]),
    med([r["crash"]["kill_to_200_probe_burst_ok_ms"] for r in R]), " ms", 0)
row("sleepers present after the restart", med([c["crash"]["sleepers_waiting_after_restart"] for c in C]),
    med([r["crash"]["sleepers_present_after_restart"] for r in R]), "", 0)
row("sleepers completed", med([c["crash"]["sleepers_completed"] for c in C]), med([r["crash"]["sleepers_completed"] for r in R]), "", 0)
if C:
    for i, point in enumerate(C[0]["restarts"]):
        n = point["completed_instances"]
        h = med([c["restarts"][i]["start_to_health_ms"] for c in C])
        row(f"restart after {n:,} completed instances: start → health", h, (None, None, None), " ms", 0,
            f"≤ 100 ms: {h[0]:.0f} ms" if h[0] else "")
        w = med([c["restarts"][i]["start_to_first_workflow_ok_ms"] for c in C])
        row(f"restart after {n:,} completed instances: start → first workflow", w, (None, None, None), " ms", 0)

print(f"rounds: Cairn {len(C)}, Restate {len(R)}; medians, (min–max) over the rounds\n")
print("| measure | Cairn | Restate | Cairn/Restate | issue 10 goal: Cairn now |")
print("|---|---|---|---|---|")
print("\n".join(rows))
