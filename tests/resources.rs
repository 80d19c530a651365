//! Resources through the real binary: an activity's writes commit in the
//! batch of its instance's persistence point and only then; concurrent
//! increments lose nothing across `kill -9`; grants are enforced; a restore
//! mid-flight gives resources that agree with the instances.

use cairn_tests::{Host, TempDir};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(120);

/// Creates `counters`, deploys `t-counter` granted it and the counter-flow process.
fn setup(h: &Host) {
    h.ok_json(&["resource", "create", "counters"]);
    let t_counter = cairn_tests::guest("t_counter");
    let out = h.cairn(&["deploy", t_counter.to_str().unwrap(), "--resource", "counters", "--json"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert_eq!(out.json()["resources"], json!(["counters"]));
    h.deploy("t_counter_flow", None);
}

fn start(h: &Host, key: &str, mode: &str) -> String {
    let (status, v) = h.send("counter-start", json!({ "key": key, "mode": mode }), None);
    assert_eq!(status, 202, "{v}");
    v["instance"].as_str().unwrap().to_string()
}

fn run(h: &Host, key: &str, mode: &str) -> Value {
    let req = json!({ "operation": "counter-start", "body": { "key": key, "mode": mode }, "wait_reply": true, "timeout_ms": 60000 });
    let (status, v) = h.post("/v1/messages", req.to_string().as_bytes());
    assert_eq!(status, 202, "{v}");
    v["reply"].clone()
}

/// The counter stored under `key`: its value, or None while absent.
fn counter(h: &Host, key: &str) -> Option<u64> {
    let (status, v) = h.get(&format!("/v1/resources/counters/keys/{key}"));
    match status {
        200 => Some(v["value"]["value"].as_u64().expect("a counter document")),
        404 => None,
        other => panic!("reading counter {key}: {other} {v}"),
    }
}

fn serve(dir: &TempDir, env: &[(&str, &str)]) -> Host {
    Host::start(dir.path(), &["--quiet-guests"], env)
}

#[test]
fn a_write_commits_with_the_persistence_point_that_records_the_call_and_only_then() {
    let dir = TempDir::new("res-commit");
    let mut h = serve(&dir, &[]);
    setup(&h);
    h.terminate();

    // Aborted before the batch that holds the call's result: the write is absent, and the call runs again.
    // Commits of the driver: receive (1), dispatch (2), the invoke's commit-after with the write (3).
    let mut h = serve(&dir, &[("CAIRN_FAILPOINT", "before-commit:3")]);
    let id = start(&h, "a", "one");
    h.wait_down();
    h.kill9();
    let h = serve(&dir, &[]);
    // (While the host restarts nothing is written without the instance's progress.)
    let v = h.wait_status(&id, "completed", WAIT);
    assert_eq!(v["variables"]["value"], 1, "{v:#}");
    assert_eq!(counter(&h, "a"), Some(1), "written once, with the progress");
    let mut h = h;
    h.terminate();

    // Aborted right after that batch: the write and the progress are both there; the call does not run again.
    // Points of the driver written: receive (1), dispatch (2), commit-after (3).
    // (The store's groups are no count: pipelined points may share one.)
    let mut h = serve(&dir, &[("CAIRN_FAILPOINT", "after-point:3")]);
    let id = start(&h, "b", "one");
    h.wait_down();
    h.kill9();
    let h = serve(&dir, &[]);
    let v = h.wait_status(&id, "completed", WAIT);
    assert_eq!(v["variables"]["value"], 1, "{v:#}");
    assert_eq!(counter(&h, "b"), Some(1), "present with the progress, and not written twice");
}

#[test]
fn a_failed_call_writes_nothing_and_an_atomic_scope_commits_both_writes() {
    let dir = TempDir::new("res-atomic");
    let h = serve(&dir, &[]);
    setup(&h);
    let reply = run(&h, "f", "fail");
    assert_eq!(reply["body"]["fault"], "counter-failed", "{reply:#}");
    assert_eq!(counter(&h, "f"), None, "the failed call's write was dropped");

    let reply = run(&h, "t", "atomic-two");
    assert_eq!(reply["body"]["value"], 2, "{reply:#}");
    assert_eq!(counter(&h, "t"), Some(2));
    let reply = run(&h, "t", "read");
    assert_eq!(reply["body"]["value"], 2, "{reply:#}");

    // The CLI shows them.
    let got = h.ok_json(&["resource", "get", "counters", "t"]);
    assert_eq!(got["value"]["value"], 2);
    assert_eq!(got["version"], 2, "two writes, two versions");
    let scan = h.ok_json(&["resource", "scan", "counters"]);
    let keys: Vec<&str> = scan["rows"].as_array().unwrap().iter().map(|r| r["key"].as_str().unwrap()).collect();
    assert_eq!(keys, ["t"], "the failed call left no row");
    assert_eq!(h.ok_json(&["resource", "ls"])["resources"][0]["name"], "counters");
}

#[test]
fn an_ungranted_activity_is_refused() {
    let dir = TempDir::new("res-denied");
    let h = serve(&dir, &[]);
    h.ok_json(&["resource", "create", "counters"]);
    h.deploy("t_counter", None);
    h.deploy("t_counter_flow", None);
    let reply = run(&h, "d", "one");
    assert_eq!(reply["fault"]["name"], "cairn.resource-denied", "{reply:#}");
    assert!(reply["fault"]["message"].as_str().unwrap().contains("counters"), "{reply:#}");
    assert_eq!(counter(&h, "d"), None);
    // A grant of a resource that does not exist is refused at deploy.
    let t_counter = cairn_tests::guest("t_counter");
    let out = h.cairn(&["deploy", t_counter.to_str().unwrap(), "--resource", "nowhere"]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("no resource named 'nowhere'"), "{}", out.stderr);
    // A read-only grant refuses writes.
    let out = h.cairn(&["deploy", t_counter.to_str().unwrap(), "--resource", "counters:read"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let reply = run(&h, "r", "one");
    assert_eq!(reply["fault"]["name"], "cairn.resource-denied", "{reply:#}");
}

/// Completed counter-flow instances by key.
fn completed_by_key(h: &Host) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for i in h.instances("counter-flow") {
        if i["status"] == "completed" {
            let v = h.instance(i["id"].as_str().unwrap());
            *out.entry(v["variables"]["key"].as_str().unwrap().to_string()).or_default() += 1;
        }
    }
    out
}

/// Sends `n` counter-start messages for keys `k0..k{keys}` from 8 threads at once.
fn load(h: &Host, from: usize, n: usize, keys: usize) {
    std::thread::scope(|scope| {
        for t in 0..8 {
            scope.spawn(move || {
                for i in (from + t..from + n).step_by(8) {
                    start(h, &format!("k{}", i % keys), "one");
                }
            });
        }
    });
}

fn wait_completed(h: &Host, n: usize) {
    let deadline = Instant::now() + WAIT;
    loop {
        let done = h.instances("counter-flow").iter().filter(|i| i["status"] == "completed").count();
        if done == n {
            return;
        }
        assert!(Instant::now() < deadline, "{done}/{n} completed\n{}", h.server_log());
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn kill_9_under_load_loses_no_increment_and_doubles_none() {
    const N: usize = 1000;
    const KEYS: usize = 10;
    let dir = TempDir::new("res-load");
    let mut h = serve(&dir, &[]);
    setup(&h);
    load(&h, 0, N / 2, KEYS);
    // Half accepted, many running: kill -9 mid-flight, then the other half.
    h.kill9();
    let h = serve(&dir, &[]);
    load(&h, N / 2, N / 2, KEYS);
    wait_completed(&h, N);
    let by_key = completed_by_key(&h);
    assert_eq!(by_key.values().sum::<u64>(), N as u64);
    for k in 0..KEYS {
        let key = format!("k{k}");
        assert_eq!(counter(&h, &key), Some(by_key[&key]), "counter {key} equals the instances that incremented it");
    }
}

#[test]
fn concurrent_increments_of_one_key_conflict_run_again_and_lose_nothing() {
    const N: usize = 200;
    let dir = TempDir::new("res-conflict");
    let h = serve(&dir, &[]);
    setup(&h);
    load(&h, 0, N, 1);
    wait_completed(&h, N);
    assert_eq!(counter(&h, "k0"), Some(N as u64), "no lost update");
    let retries: u64 = h
        .instances("counter-flow")
        .iter()
        .flat_map(|i| h.instance(i["id"].as_str().unwrap())["history"].as_array().cloned().unwrap_or_default())
        .map(|e| e["resource_conflicts"].as_u64().unwrap_or(0))
        .sum();
    assert!(retries > 0, "eight senders on one key: some persistence points lost a conflict, and their history says so");
    eprintln!("{retries} conflict retries for {N} increments of one key");
}

#[test]
fn a_restore_mid_flight_has_resources_that_agree_with_its_instances() {
    const N: usize = 300;
    let dir = TempDir::new("res-restore");
    let h = serve(&dir, &[]);
    setup(&h);
    for i in 0..N {
        start(&h, &format!("k{}", i % 5), "one");
        if i == N / 2 {
            h.ok_json(&["backup", "backup"]);
        }
    }
    let agree = |h: &Host, n: usize| {
        let deadline = Instant::now() + WAIT;
        loop {
            let done = h.instances("counter-flow").iter().filter(|i| i["status"] == "completed").count();
            let all = h.instances("counter-flow").len();
            if done == all && all >= n {
                break;
            }
            assert!(Instant::now() < deadline, "{done}/{all} completed");
            std::thread::sleep(Duration::from_millis(200));
        }
        let by_key = completed_by_key(h);
        for (key, n) in &by_key {
            assert_eq!(counter(h, key), Some(*n), "counter {key} agrees with its instances");
        }
        by_key.values().sum::<u64>()
    };
    assert_eq!(agree(&h, N), N as u64);

    let restored = TempDir::new("res-restored");
    let r = Host::restore(&h.data.join("store").join("backups").join("backup"), restored.path());
    let in_backup = agree(&r, 1);
    assert!(in_backup <= N as u64 && in_backup > 0, "the backup held part of the load: {in_backup}");
}
