//! External activities and their workers (issue 15), through the real
//! binary: workers in Rust (`cairn-worker`) and in Python (standard library,
//! `tests/workers/worker.py`) take tasks by long polling under leases.
//! Competing workers, a worker killed mid-task, heartbeats, late
//! completions, a non-idempotent task held, `kill -9` of the host with tasks
//! waiting and leased, the worker role, and the reference scenario's account
//! service as a Python worker.
//!
//! The process is `t-invoker`; its activity `recorder` is deployed external
//! with the operations `record` (mode "non-idempotent"), `fail` (mode
//! "retry": idempotent, three attempts) and `spin` (mode "timeout").

use cairn_tests::{eventually, Host, TempDir};
use cairn_worker::{Error, Failure, Task, Worker};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(60);

fn setup(tag: &str) -> (TempDir, Host) {
    let dir = TempDir::new(tag);
    let h = Host::start(dir.path(), &["--quiet-guests"], &[]);
    deploy(&h);
    (dir, h)
}

fn deploy(h: &Host) {
    let v = h.ok_json(&["deploy", "--external", "recorder", "--operation", "record", "--operation", "fail", "--operation", "spin"]);
    assert_eq!(v["external"], json!(["record", "fail", "spin"]), "{v}");
    h.deploy("t_invoker", None);
}

fn start(h: &Host, mode: &str, key: &str) -> String {
    let input = json!({ "mode": mode, "key": key }).to_string();
    let v = h.ok_json(&["start", "invoker", "--input", &input]);
    v["id"].as_str().expect("an id").to_string()
}

fn worker(h: &Host, name: &str) -> Worker {
    Worker::new(&h.url, "recorder", name)
}

/// Polls until a task comes (or panics after `within`).
fn take_one(w: &Worker, within: Duration) -> Task {
    let deadline = Instant::now() + within;
    loop {
        if let Some(t) = w.poll(1, Duration::from_millis(500)).expect("poll").pop() {
            return t;
        }
        assert!(Instant::now() < deadline, "no task came within {within:?}");
    }
}

fn tasks(h: &Host) -> Vec<Value> {
    h.ok_json(&["tasks", "ls"])["tasks"].as_array().cloned().unwrap_or_default()
}

fn python_worker(h: &Host, activity: &str, name: &str, mode: &str, extra: &[&str]) -> Child {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("workers").join("worker.py");
    let mut cmd = Command::new("python3");
    cmd.arg(script).args(["--server", &h.url, "--activity", activity, "--worker", name, "--mode", mode]).args(extra);
    if let Some(t) = &h.token {
        cmd.args(["--token", t]);
    }
    cmd.stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().expect("python3 runs")
}

/// The JSON lines a Python worker printed so far, read on a thread.
fn events_of(child: &mut Child) -> Arc<Mutex<Vec<Value>>> {
    use std::io::BufRead;
    let out = Arc::new(Mutex::new(Vec::new()));
    let stdout = child.stdout.take().expect("piped");
    let sink = out.clone();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                sink.lock().unwrap().push(v);
            }
        }
    });
    out
}

#[test]
fn competing_workers_complete_each_task_once() {
    let (_dir, h) = setup("workers-compete");
    const N: usize = 60;
    let ids: Vec<String> = (0..N).map(|i| start(&h, "retry", &format!("k-{i}"))).collect();
    let stop = Arc::new(AtomicBool::new(false));
    // Accepted completions: (task id, attempt, worker).
    let accepted = Arc::new(Mutex::new(Vec::<(String, u32, String)>::new()));
    let mut threads = Vec::new();
    for n in 0..8 {
        let (w, stop, accepted) = (worker(&h, &format!("rust-{n}")), stop.clone(), accepted.clone());
        threads.push(std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                for t in w.poll(4, Duration::from_millis(300)).expect("poll") {
                    assert_eq!(t.operation, "fail");
                    assert_eq!(t.input["what"], "record");
                    match w.complete(&t, &json!({ "by": w.name() })) {
                        Ok(()) => accepted.lock().unwrap().push((t.id.clone(), t.attempt, w.name().to_string())),
                        Err(e) => panic!("completion of {} refused: {e}", t.id),
                    }
                }
            }
        }));
    }
    // A Python worker competes too.
    let mut py = python_worker(&h, "recorder", "python-1", "echo", &[]);
    let py_events = events_of(&mut py);
    for id in &ids {
        let v = h.wait_status(id, "completed", WAIT);
        assert_eq!(v["variables"]["done"], true);
    }
    stop.store(true, Ordering::SeqCst);
    for t in threads {
        t.join().unwrap();
    }
    py.kill().unwrap();
    py.wait().unwrap();
    let mut by_task: BTreeMap<String, usize> = BTreeMap::new();
    for (id, _, _) in accepted.lock().unwrap().iter() {
        *by_task.entry(id.clone()).or_default() += 1;
    }
    for e in py_events.lock().unwrap().iter().filter(|e| e["event"] == "completed") {
        *by_task.entry(e["id"].as_str().unwrap().to_string()).or_default() += 1;
    }
    assert_eq!(by_task.len(), N, "one task per instance: {by_task:?}");
    assert!(by_task.values().all(|n| *n == 1), "each task completed once: {by_task:?}");
    assert!(tasks(&h).is_empty(), "no task left: {:?}", tasks(&h));
}

#[test]
fn a_killed_worker_s_task_goes_to_another_worker_with_the_same_key() {
    let (_dir, h) = setup("workers-killed");
    let id = start(&h, "retry", "k-killed");
    // A Python worker takes the task with a 1 s lease and hangs; it is killed.
    let mut py = python_worker(&h, "recorder", "doomed", "hang", &["--lease-ms", "1000"]);
    let events = events_of(&mut py);
    eventually("the Python worker takes the task", WAIT, || events.lock().unwrap().iter().any(|e| e["event"] == "took"));
    let took = events.lock().unwrap()[0].clone();
    let listed = tasks(&h);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["state"], "leased");
    assert_eq!(listed[0]["worker"], "doomed");
    assert_eq!(listed[0]["attempt"], 1);
    let text = h.cairn(&["tasks", "ls"]);
    assert!(text.code == 0 && text.stdout.contains("leased") && text.stdout.contains("doomed") && text.stdout.contains("fail on recorder"), "{}", text.stdout);
    py.kill().unwrap();
    py.wait().unwrap();
    // The lease expires; another worker gets the same task, same key, next attempt.
    let w = worker(&h, "survivor");
    let t = take_one(&w, WAIT);
    assert_eq!(t.id, took["id"].as_str().unwrap());
    assert_eq!(t.idempotency_key, took["key"].as_str().unwrap());
    assert_eq!(t.attempt, 2);
    w.complete(&t, &json!({})).unwrap();
    h.wait_status(&id, "completed", WAIT);
}

#[test]
fn a_slow_worker_that_heartbeats_keeps_its_task() {
    let (_dir, h) = setup("workers-heartbeat");
    let id = start(&h, "retry", "k-slow");
    let slow = worker(&h, "slow").with_lease(Duration::from_millis(400));
    let t = take_one(&slow, WAIT);
    let other = worker(&h, "other");
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(2000) {
        std::thread::sleep(Duration::from_millis(150));
        slow.heartbeat(&t).expect("the lease is still ours");
        assert!(other.poll(1, Duration::ZERO).unwrap().is_empty(), "the task was offered again despite heartbeats");
    }
    slow.complete(&t, &json!({ "slow": true })).unwrap();
    h.wait_status(&id, "completed", WAIT);
    assert_eq!(t.attempt, 1);

    // `Worker::run` heartbeats by itself while a slow handler works.
    let id = start(&h, "retry", "k-run");
    let stop = Arc::new(AtomicBool::new(false));
    let attempts = Arc::new(Mutex::new(Vec::new()));
    let runner = {
        let (w, stop, attempts) = (worker(&h, "runner").with_lease(Duration::from_millis(300)), stop.clone(), attempts.clone());
        std::thread::spawn(move || {
            w.run(&stop, |t| {
                attempts.lock().unwrap().push(t.attempt);
                std::thread::sleep(Duration::from_millis(1500));
                Ok(json!({ "ran": true }))
            })
        })
    };
    h.wait_status(&id, "completed", WAIT);
    stop.store(true, Ordering::SeqCst);
    runner.join().unwrap();
    assert_eq!(*attempts.lock().unwrap(), [1], "one attempt, its lease kept for five times its length");
}

#[test]
fn a_late_completion_after_the_lease_moved_is_refused() {
    let (_dir, h) = setup("workers-late");
    let id = start(&h, "retry", "k-late");
    let late = worker(&h, "late").with_lease(Duration::from_millis(300));
    let first = take_one(&late, WAIT);
    let prompt = worker(&h, "prompt");
    let second = take_one(&prompt, WAIT);
    assert_eq!((second.id.as_str(), second.attempt), (first.id.as_str(), 2));
    // The lease moved: the late worker's completion and heartbeat are refused.
    assert!(matches!(late.complete(&first, &json!({ "late": true })), Err(Error::Refused(_))));
    assert!(matches!(late.heartbeat(&first), Err(Error::Refused(_))));
    prompt.complete(&second, &json!({ "prompt": true })).unwrap();
    // The same completion again is accepted again (idempotent by task and attempt) ...
    prompt.complete(&second, &json!({ "prompt": true })).unwrap();
    // ... a completion of another attempt of a completed task is refused.
    let (status, v) = h.post(&format!("/v1/tasks/{}/complete", second.id), json!({ "attempt": 1, "output": 1 }).to_string().as_bytes());
    assert_eq!(status, 409, "{v}");
    h.wait_status(&id, "completed", WAIT);
    let log = h.server_log();
    assert!(!log.contains("late\":true"), "the late output never reached the instance");
}

#[test]
fn a_non_idempotent_task_whose_lease_expires_is_held_until_resubmitted() {
    let (_dir, h) = setup("workers-held");
    let id = start(&h, "non-idempotent", "k-held");
    let w = worker(&h, "lost").with_lease(Duration::from_millis(300));
    let t = take_one(&w, WAIT);
    assert_eq!(t.operation, "record");
    eventually("the task is held", WAIT, || tasks(&h).iter().any(|t| t["state"] == "held"));
    let held = h.ok_json(&["in-transit", "ls"]);
    assert_eq!(held["count"], 1, "{held}");
    assert_eq!(held["calls"][0]["state"], "held");
    // Nothing is offered while it is held; a late completion is refused.
    let other = worker(&h, "other");
    assert!(other.poll(1, Duration::from_millis(500)).unwrap().is_empty());
    assert!(matches!(w.complete(&t, &json!({})), Err(Error::Refused(_))));
    assert_eq!(h.instance(&id)["status"], "running");
    h.ok_json(&["in-transit", "resubmit", &t.id]);
    let again = take_one(&other, WAIT);
    assert_eq!(again.id, t.id);
    assert_eq!(again.idempotency_key, t.idempotency_key);
    assert!(again.attempt > t.attempt);
    other.complete(&again, &json!({ "resubmitted": true })).unwrap();
    h.wait_status(&id, "completed", WAIT);
    assert_eq!(h.ok_json(&["in-transit", "ls"])["count"], 0);
}

#[test]
fn a_retryable_failure_is_offered_again_and_a_permanent_one_faults_the_instance() {
    let (_dir, h) = setup("workers-fail");
    let retried = start(&h, "retry", "k-retry");
    let w = worker(&h, "w");
    let t = take_one(&w, WAIT);
    w.fail(&t, &Failure::retryable("recorder-failed", "try again")).unwrap();
    let t2 = take_one(&w, WAIT);
    assert_eq!((t2.id.as_str(), t2.attempt, t2.idempotency_key.as_str()), (t.id.as_str(), 2, t.idempotency_key.as_str()));
    w.complete(&t2, &json!({})).unwrap();
    h.wait_status(&retried, "completed", WAIT);
    let failed = start(&h, "retry", "k-fail");
    let t = take_one(&w, WAIT);
    w.fail(&t, &Failure::permanent("recorder-failed", "no")).unwrap();
    let v = h.wait_status(&failed, "faulted", WAIT);
    assert_eq!(v["fault"]["name"], "recorder-failed", "{v}");
}

#[test]
fn kill_9_with_tasks_waiting_and_leased_loses_nothing_and_completes_nothing_twice() {
    let dir = TempDir::new("workers-kill9");
    let mut h = Host::start(dir.path(), &["--quiet-guests"], &[]);
    deploy(&h);
    const N: usize = 20;
    let ids: Vec<String> = (0..N).map(|i| start(&h, "retry", &format!("k-{i}"))).collect();
    let held_id = start(&h, "non-idempotent", "k-non-idempotent");
    eventually("every task is offered", WAIT, || tasks(&h).len() == N + 1);
    let w = worker(&h, "before");
    // Five idempotent tasks leased, two of them completed (acknowledged),
    // and the non-idempotent one leased.
    let mut leased = Vec::new();
    while leased.len() < 5 {
        leased.extend(w.poll(5 - leased.len(), Duration::from_millis(500)).unwrap().into_iter().filter(|t| t.operation == "fail"));
    }
    let nonidem = Worker::new(&h.url, "recorder", "before-ni").with_operations(&["record"]);
    let ni = take_one(&nonidem, WAIT);
    let mut acknowledged = BTreeSet::new();
    for t in &leased[..2] {
        w.complete(t, &json!({ "before": true })).unwrap();
        acknowledged.insert(t.id.clone());
    }
    h.kill9();
    let h = Host::start(dir.path(), &["--quiet-guests"], &[]);
    let w = worker(&h, "before");
    // Every lease is void: the three leased tasks are waiting again; the
    // acknowledged ones are not offered; the non-idempotent one is held.
    for t in &leased[2..] {
        assert!(matches!(w.complete(t, &json!({})), Err(Error::Refused(_))), "a lease from before the crash is void");
    }
    eventually("the non-idempotent task is held", WAIT, || tasks(&h).iter().any(|t| t["state"] == "held" && t["id"] == ni.id));
    let mut completed: BTreeMap<String, usize> = acknowledged.iter().map(|id| (id.clone(), 1)).collect();
    // Attempts start at 1 again, but a lease from before the crash never
    // matches one given since, even to the same worker name.
    let again = w.poll(1, Duration::from_millis(500)).unwrap().pop().expect("a task");
    assert!(!acknowledged.contains(&again.id));
    let stale = Task { lease: "a-lease-from-before".into(), ..again.clone() };
    assert!(matches!(w.complete(&stale, &json!({})), Err(Error::Refused(_))));
    w.complete(&again, &json!({ "again": true })).unwrap();
    completed.insert(again.id.clone(), 1);
    let after = worker(&h, "after");
    let deadline = Instant::now() + WAIT;
    while completed.len() < N {
        for t in after.poll(8, Duration::from_millis(300)).unwrap() {
            assert!(!acknowledged.contains(&t.id), "an acknowledged completion was lost: {} offered again", t.id);
            assert_eq!(t.operation, "fail", "the held task is not offered");
            after.complete(&t, &json!({ "after": true })).unwrap();
            *completed.entry(t.id.clone()).or_default() += 1;
        }
        assert!(Instant::now() < deadline, "tasks missing after the crash: {} of {N} completed", completed.len());
    }
    assert!(completed.values().all(|n| *n == 1), "no task completed twice: {completed:?}");
    for id in &ids {
        h.wait_status(id, "completed", WAIT);
    }
    assert_eq!(h.instance(&held_id)["status"], "running");
    h.ok_json(&["in-transit", "abandon", &ni.id]);
    let v = h.wait_status(&held_id, "faulted", WAIT);
    assert_eq!(v["fault"]["name"], "cairn.abandoned");
}

#[test]
fn a_worker_token_may_only_poll_and_complete() {
    let (_dir, mut h) = setup("workers-auth");
    let admin = h.ok_json(&["token", "create", "--role", "admin"])["token"].as_str().unwrap().to_string();
    h.token = Some(admin.clone());
    let worker_token = h.ok_json(&["token", "create", "--role", "worker"])["token"].as_str().unwrap().to_string();
    let id = start(&h, "retry", "k-auth");
    h.token = Some(worker_token.clone());
    assert_eq!(h.get("/v1/instances").0, 403, "a worker token does not read");
    assert_eq!(h.post("/v1/instances", br#"{"process":"invoker"}"#).0, 403, "nor start");
    assert_eq!(worker(&h, "anonymous").poll(1, Duration::ZERO).map_err(|e| e.to_string()).unwrap_err(), "HTTP 401: a bearer token is required: send `Authorization: Bearer TOKEN` (cairn --token / CAIRN_TOKEN)");
    let w = worker(&h, "w").with_token(&worker_token);
    let t = take_one(&w, WAIT);
    w.complete(&t, &json!({})).unwrap();
    h.token = Some(admin);
    h.wait_status(&id, "completed", WAIT);
}

/// The reference scenario with its account service as an external activity,
/// carried out by the Python worker.
#[test]
fn the_reference_scenario_s_account_service_runs_as_a_python_worker() {
    let dir = TempDir::new("workers-reference");
    let h = Host::start(dir.path(), &["--quiet-guests"], &[]);
    h.ok_json(&["resource", "create", "orders"]);
    let order_db = cairn_tests::guest("order_db");
    let out = h.cairn(&["deploy", order_db.to_str().unwrap(), "--name", "order-db", "--resource", "orders"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    h.ok_json(&["deploy", "--external", "account-service", "--operation", "standing"]);
    h.deploy("notifier", Some("notifier"));
    for file in ["check_customer_account_status", "update_order_database", "cancel_order_and_send_notification", "order_handling"] {
        h.deploy(file, None);
    }
    let mut py = python_worker(&h, "account-service", "accounts-py", "standing", &[]);
    let events = events_of(&mut py);
    const ORDERS: usize = 12;
    for i in 0..ORDERS {
        let customer = if i.is_multiple_of(3) { format!("bad-customer-{i}") } else { format!("customer-{i}") };
        let body = json!({ "order_id": format!("o-{i:03}"), "customer": customer, "amount": 10.0 });
        let (status, v) = h.send("order", body, Some(&format!("order-{i}")));
        assert_eq!(status, 202, "{v}");
    }
    let deadline = Instant::now() + WAIT;
    let orders = loop {
        let all = h.instances("order-handling");
        if all.len() == ORDERS && all.iter().all(|o| o["status"] == "completed") {
            break all;
        }
        assert!(Instant::now() < deadline, "orders did not all complete: {all:#?}\n{}", h.server_log());
        std::thread::sleep(Duration::from_millis(100));
    };
    for o in &orders {
        let v = h.instance(o["id"].as_str().unwrap());
        let i: usize = v["variables"]["order_id"].as_str().unwrap()[2..].parse().unwrap();
        let expected = if i.is_multiple_of(3) { "cancelled" } else { "accepted" };
        assert_eq!(v["variables"]["status"], expected, "order {i}");
    }
    py.kill().unwrap();
    py.wait().unwrap();
    let completed: Vec<Value> = events.lock().unwrap().iter().filter(|e| e["event"] == "completed").cloned().collect();
    assert_eq!(completed.len(), ORDERS, "one account lookup per order, by the Python worker: {completed:?}");
    let keys: BTreeSet<&str> = completed.iter().map(|e| e["key"].as_str().unwrap()).collect();
    assert_eq!(keys.len(), ORDERS);
}

#[test]
fn a_completion_made_durable_just_before_a_crash_is_not_lost_and_tasks_survive_a_controlled_restart() {
    let dir = TempDir::new("workers-durable");
    let mut h = Host::start(dir.path(), &["--quiet-guests"], &[("CAIRN_FAILPOINT", "task-completed")]);
    deploy(&h);
    let id = start(&h, "retry", "k-durable");
    let w = worker(&h, "w");
    let t = take_one(&w, WAIT);
    // The host aborts once the completion is durable, before it answers.
    assert!(w.complete(&t, &json!({ "durable": true })).is_err());
    h.wait_down();
    h.kill9();
    let mut h = Host::start(dir.path(), &["--quiet-guests", "--shutdown-grace-ms", "2000"], &[]);
    h.wait_status(&id, "completed", WAIT);
    let w = worker(&h, "w");
    assert!(w.poll(1, Duration::from_millis(500)).unwrap().is_empty(), "the completed task is not offered again");
    // A controlled restart with a task waiting and a poll in flight: the
    // poll ends at once, the task is offered again after the restart.
    let waiting = start(&h, "retry", "k-restart");
    eventually("the task is offered", WAIT, || tasks(&h).len() == 1);
    let poller = {
        let w = worker(&h, "poller").with_operations(&["spin"]);
        std::thread::spawn(move || w.poll(1, Duration::from_secs(50)))
    };
    std::thread::sleep(Duration::from_millis(200));
    let stopped = Instant::now();
    assert!(h.terminate().success());
    assert!(stopped.elapsed() < Duration::from_secs(5), "a long poll held the shutdown for {:?}", stopped.elapsed());
    let _ = poller.join().unwrap();
    let mut h = Host::start(dir.path(), &["--quiet-guests"], &[]);
    let w = worker(&h, "w2");
    let t = take_one(&w, WAIT);
    assert_eq!((t.attempt, t.operation.as_str()), (1, "fail"));
    w.complete(&t, &json!({})).unwrap();
    h.wait_status(&waiting, "completed", WAIT);
    // `cairn check` takes an external activity (no component bytes) as sound.
    assert!(h.terminate().success());
    if cairn_tests::store_kind() == "rocksdb" {
        let store = dir.path().join("store");
        let out = Command::new(cairn_tests::cairn_bin()).args(["check", store.to_str().unwrap()]).output().unwrap();
        assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    }
}

/// Completed instances per second and the mean time per instance, with
/// `clients` threads each starting an instance (mode "recover": one
/// idempotent-on-recovery invoke of `record`) and waiting for it to complete.
fn drive(h: &Host, clients: usize, total: usize) -> (f64, Duration) {
    let started = Instant::now();
    let per = total / clients;
    let threads: Vec<_> = (0..clients)
        .map(|c| {
            let url = h.url.clone();
            std::thread::spawn(move || {
                let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
                let mut spent = Duration::ZERO;
                for i in 0..per {
                    let t0 = Instant::now();
                    let body = json!({ "process": "invoker", "input": { "mode": "recover", "key": format!("b-{c}-{i}") } }).to_string();
                    let v: Value = agent.post(format!("{url}/v1/instances")).header("content-type", "application/json").send(body.as_bytes()).unwrap().body_mut().read_json().unwrap();
                    let id = v["id"].as_str().unwrap().to_string();
                    loop {
                        let v: Value = agent.get(format!("{url}/v1/instances/{id}")).call().unwrap().body_mut().read_json().unwrap();
                        if v["status"] == "completed" {
                            break;
                        }
                        assert_ne!(v["status"], "faulted", "{v}");
                        std::thread::sleep(Duration::from_micros(500));
                    }
                    spent += t0.elapsed();
                }
                spent
            })
        })
        .collect();
    let spent: Duration = threads.into_iter().map(|t| t.join().unwrap()).sum();
    let n = per * clients;
    (n as f64 / started.elapsed().as_secs_f64(), spent / n as u32)
}

/// BENCHMARKS.md: `cargo test --release -p cairn-tests --test workers -- --ignored --nocapture bench`.
#[test]
#[ignore]
fn bench_external_workers_against_a_component() {
    for (clients, total) in [(1, 300), (32, 3200)] {
        let dir = TempDir::new("workers-bench");
        let h = Host::start(dir.path(), &["--quiet-guests"], &[]);
        deploy(&h);
        let stop = Arc::new(AtomicBool::new(false));
        let workers: Vec<_> = (0..clients)
            .map(|n| {
                let (w, stop) = (worker(&h, &format!("bench-{n}")), stop.clone());
                std::thread::spawn(move || w.run(&stop, |_| Ok(json!({ "ok": true }))))
            })
            .collect();
        drive(&h, clients, clients.min(4) * 10); // warm-up
        let (rate, each) = drive(&h, clients, total);
        stop.store(true, Ordering::SeqCst);
        for w in workers {
            w.join().unwrap();
        }
        println!("external worker, concurrency {clients}: {rate:.0} instances (tasks)/s, {:.2} ms per instance", each.as_secs_f64() * 1e3);
        let dir = TempDir::new("workers-bench-component");
        let h = Host::start(dir.path(), &["--quiet-guests"], &[]);
        h.deploy_effectful("t_recorder", "recorder");
        h.deploy("t_invoker", None);
        drive(&h, clients, clients.min(4) * 10);
        let (rate, each) = drive(&h, clients, total);
        println!("component call, concurrency {clients}: {rate:.0} instances/s, {:.2} ms per instance", each.as_secs_f64() * 1e3);
    }
}

#[test]
fn a_one_way_send_to_an_external_activity_is_a_task_too() {
    let dir = TempDir::new("workers-send");
    let h = Host::start(dir.path(), &["--quiet-guests"], &[]);
    h.ok_json(&["deploy", "--external", "recorder"]);
    h.deploy("t_crash", None);
    let (status, v) = h.send("crash-start", json!({ "key": "s1" }), None);
    assert_eq!(status, 202, "{v}");
    let id = v["instance"].as_str().unwrap().to_string();
    let w = worker(&h, "w");
    let invoke = take_one(&w, WAIT);
    assert_eq!(invoke.input["what"], "record");
    w.complete(&invoke, &json!({ "ok": true })).unwrap();
    eventually("the instance waits for crash-finish", WAIT, || h.instance(&id)["variables"]["recorded"] == true);
    let (status, v) = h.send("crash-finish", json!({ "key": "s1" }), None);
    assert_eq!(status, 202, "{v}");
    let send = take_one(&w, WAIT);
    assert_eq!(send.input["what"], "completed");
    assert!(send.idempotency_key.contains("/send/"), "{}", send.idempotency_key);
    assert_eq!(h.instance(&id)["pending_calls"].as_array().map(Vec::len), Some(1), "the send waits in the outbox");
    w.complete(&send, &json!(null)).unwrap();
    h.wait_status(&id, "completed", WAIT);
    assert_eq!(h.instance(&id)["pending_calls"].as_array().map(Vec::len), Some(0), "its completion removed the outbox entry");
    assert!(tasks(&h).is_empty());
}

#[test]
fn the_invoke_s_timeout_covers_the_whole_task() {
    let (_dir, h) = setup("workers-timeout");
    // Mode "timeout": `spin` with a 300 ms timeout. Nobody takes it in time.
    let waited = start(&h, "timeout", "k-waited");
    let v = h.wait_status(&waited, "faulted", WAIT);
    assert_eq!(v["fault"]["name"], "cairn.timeout", "{v}");
    // Taken, but not completed in time: the late completion is refused.
    let slow = start(&h, "timeout", "k-slow");
    let w = worker(&h, "w");
    let t = take_one(&w, WAIT);
    let v = h.wait_status(&slow, "faulted", WAIT);
    assert_eq!(v["fault"]["name"], "cairn.timeout", "{v}");
    assert!(matches!(w.complete(&t, &json!({})), Err(Error::Refused(_))));
    assert!(tasks(&h).is_empty());
}
