//! Cluster mode: three real `cairn serve --node` processes over one real
//! PostgreSQL database (`CAIRN_TEST_PG`, started by scripts/test.sh; without
//! it each test says it was skipped). Partitions move under leases; fencing
//! keeps a host that lost its lease from writing; any host serves the API.
//!
//! - `kill -9` of one host under load: its partitions move once their leases
//!   expire, no accepted message is lost, no instance completes twice, and
//!   each activity call keeps one idempotency key.
//! - A message sent to host A for an instance that host B runs is
//!   delivered, and a `--wait-reply` on A gets B's reply.
//! - A rolling restart of all three hosts under load loses and duplicates nothing.
//! - Orders with the same correlation values sent to two hosts at once
//!   create one instance; the other submission is refused as a conflict.
//! - A backup from a cluster host whose read transaction stays idle for
//!   longer than a lease is not cut by the sessions' idle timeout.
//! - Workers polling host A only get the tasks of instances that B and C
//!   run (A asks them), each task handed to one poll, completions sent to A.
//! - A host cut off from the database (a TCP relay between it and the
//!   database that stops carrying bytes, as a lost network does, and
//!   delivers what it held back once it carries them again) stops its
//!   instances before its leases lapse; the others take its partitions;
//!   after it comes back none of its old writes lands.
//! - The same with the host in a network namespace of its own, joined to the
//!   others by a veth pair whose link is taken down (packets dropped), then
//!   up again; skipped with a message where namespaces cannot be made.

use cairn_tests::{cluster_database, eventually, Host, TempDir};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

const PARTITIONS: u32 = 16;
const WAIT: Duration = Duration::from_secs(90);

/// The serve flags of every node: short leases, so that tests move fast.
const FLAGS: &[&str] = &["--quiet-guests", "--lease-ms", "1500", "--partitions", "16"];

/// A scratch directory and a fresh database, or None (skipped) without a server.
fn setup(test: &str) -> Option<(TempDir, String)> {
    let dir = TempDir::new(test);
    match cluster_database(dir.path()) {
        Some(url) => Some((dir, url)),
        None => {
            eprintln!("{test}: skipped (set CAIRN_TEST_PG=postgres://USER@HOST:PORT to run it; scripts/test.sh does)");
            None
        }
    }
}

fn node(dir: &Path, store: &str, name: &str) -> Host {
    Host::start_node(&dir.join(name), store, name, FLAGS)
}

fn status(h: &Host) -> Value {
    let (code, v) = h.get("/v1/cluster");
    assert_eq!(code, 200, "GET /v1/cluster: {v}");
    v
}

/// The partition of an instance, as the host computes it (FNV-1a, 64 bits).
fn partition_of(id: &str) -> u64 {
    let hash = id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    hash % u64::from(PARTITIONS)
}

/// The node holding `id`'s partition under an unexpired lease.
fn owner_of(status: &Value, id: &str) -> Option<String> {
    let p = &status["owners"][partition_of(id) as usize];
    (p["lease_remaining_ms"].as_i64().unwrap_or(0) > 0).then(|| p["owner"].as_str().unwrap_or("").to_string())
}

/// Waits until every partition is held under an unexpired lease by one of
/// `names`, each holding its fair share or one less; returns the status.
fn wait_balanced(h: &Host, names: &[&str]) -> Value {
    let deadline = Instant::now() + WAIT;
    let share = PARTITIONS as usize / names.len();
    loop {
        let v = status(h);
        let mut held: BTreeMap<String, usize> = BTreeMap::new();
        let mut all = true;
        for p in v["owners"].as_array().unwrap() {
            let owner = p["owner"].as_str().unwrap_or("");
            if p["lease_remaining_ms"].as_i64().unwrap_or(0) > 0 && names.contains(&owner) {
                *held.entry(owner.to_string()).or_default() += 1;
            } else {
                all = false;
            }
        }
        if all && names.iter().all(|n| held.get(*n).copied().unwrap_or(0) >= share.saturating_sub(1).max(1)) {
            return v;
        }
        assert!(Instant::now() < deadline, "the partitions did not settle on {names:?}: {v:#}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn deploy_crashy(h: &Host, others: &[&Host]) {
    h.deploy_effectful("t_recorder", "recorder");
    h.deploy("t_crash", None);
    // Every host learns of the versions from the store.
    for o in others {
        eventually("every host lists the deployed versions", WAIT, || {
            let (_, v) = o.get("/v1/definitions");
            v["definitions"].as_array().is_some_and(|d| d.len() >= 2)
        });
    }
}

/// Sends a message to the first host that accepts it (the same id every
/// time, so a retry after an error is exactly once); returns the answer.
fn send_any(hosts: &[&Host], operation: &str, body: Value, id: &str) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        for h in hosts {
            let (status, v) = h.send(operation, body.clone(), Some(id));
            if status == 200 || status == 202 {
                return v;
            }
            assert!(status >= 500 || status == 409, "{operation} {id}: {status} {v}");
        }
        assert!(Instant::now() < deadline, "no host accepted {operation} {id}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Recorder calls per (key, what) over the guest logs of every host: the
/// idempotency keys seen (one entry per execution).
fn recorded(dir: &Path, names: &[&str]) -> BTreeMap<(String, String), Vec<String>> {
    let mut out: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for name in names {
        let log = std::fs::read_to_string(dir.join(name).join("store").join("guest-log.jsonl")).unwrap_or_default();
        for r in log.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()).filter(|r| r["message"] == "recorded") {
            let key = r["fields"]["key"].as_str().unwrap().to_string();
            let what = r["fields"]["what"].as_str().unwrap().to_string();
            out.entry((key, what)).or_default().push(r["at"].as_str().unwrap().to_string());
        }
    }
    out
}

/// Every instance completed once, consumed its messages, and each key's
/// activity calls kept one idempotency key; every completion notice arrived.
fn check_exactly_once(h: &Host, dir: &Path, names: &[&str], keys: &[String]) {
    let all = h.wait_all_completed("crashy", keys.len(), WAIT);
    let mut seen = BTreeSet::new();
    for i in &all {
        let id = i["id"].as_str().unwrap();
        let v = h.instance(id);
        assert_eq!(v["variables"]["finished"], true, "{v}");
        assert_eq!(v["variables"]["recorded"], true, "{v}");
        assert_eq!(v["inbox"], 0, "every accepted message was consumed: {v}");
        assert!(seen.insert(v["variables"]["key"].as_str().unwrap().to_string()), "one instance per key: {v}");
        let (_, hist) = h.get(&format!("/v1/instances/{id}/history"));
        let entries = hist["history"].as_array().unwrap();
        let completed = entries.iter().filter(|e| e["reason"] == "completed").count();
        assert_eq!(completed, 1, "instance {id} completed once: {hist:#}");
        let fences: Vec<u64> = entries.iter().map(|e| e["fence"].as_u64().unwrap()).collect();
        assert!(fences.windows(2).all(|w| w[0] < w[1]), "one history, fences rising: {fences:?}");
    }
    assert_eq!(seen.len(), keys.len());
    let deadline = Instant::now() + WAIT;
    loop {
        let rec = recorded(dir, names);
        let notices = keys.iter().filter(|k| rec.contains_key(&((*k).clone(), "completed".into()))).count();
        if notices == keys.len() {
            for k in keys {
                let calls = &rec[&(k.clone(), "record".to_string())];
                let distinct: BTreeSet<&String> = calls.iter().collect();
                assert_eq!(distinct.len(), 1, "{k}: a call run again keeps its idempotency key: {calls:?}");
            }
            return;
        }
        assert!(Instant::now() < deadline, "{notices}/{} completion notices observed", keys.len());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// With host c cut off: a and b finish the instances of `keys[unfinished..]`
/// and all `keys.len()` "crashy" instances complete; then `rejoin` brings c back, and whatever c
/// wrote while cut off must not land: c rejoins under new epochs, and every
/// instance is as a and b left it.
fn finish_on_the_others_then_rejoin_without_stale_writes(a: &Host, b: &Host, keys: &[String], unfinished: usize, rejoin: impl FnOnce()) {
    for k in &keys[unfinished..] {
        send_any(&[a, b], "crash-finish", json!({"key": k}), &format!("finish-{k}"));
    }
    a.wait_all_completed("crashy", keys.len(), WAIT);
    let snapshot: BTreeMap<String, Value> =
        a.instances("crashy").into_iter().map(|i| (i["id"].as_str().unwrap().to_string(), a.instance(i["id"].as_str().unwrap()))).collect();
    rejoin();
    wait_balanced(a, &["a", "b", "c"]);
    for (id, before) in &snapshot {
        let now = a.instance(id);
        assert_eq!(now["status"], "completed");
        assert_eq!(now["fence"], before["fence"], "instance {id} was written after it completed: {now:#}");
    }
}

#[test]
fn kill_9_of_one_host_moves_its_partitions_and_loses_nothing() {
    let Some((dir, store)) = setup("cluster-kill9") else { return };
    let a = node(dir.path(), &store, "a");
    let b = node(dir.path(), &store, "b");
    let mut c = node(dir.path(), &store, "c");
    wait_balanced(&a, &["a", "b", "c"]);
    deploy_crashy(&a, &[&b, &c]);
    let n = 60;
    let keys: Vec<String> = (0..n).map(|i| format!("k{i:03}")).collect();
    let hosts = [&a, &b, &c];
    for (i, k) in keys.iter().enumerate() {
        let (status, v) = hosts[i % 3].send("crash-start", json!({"key": k}), Some(&format!("start-{k}")));
        assert_eq!(status, 202, "{v}");
    }
    let mut accepted = BTreeSet::new();
    for (i, k) in keys[..n / 2].iter().enumerate() {
        let (status, _) = hosts[i % 3].send("crash-finish", json!({"key": k}), Some(&format!("finish-{k}")));
        if status == 202 || status == 200 {
            accepted.insert(k.clone());
        }
    }
    let before = status(&a);
    let had: Vec<u64> = (0..PARTITIONS as u64).filter(|p| before["owners"][*p as usize]["owner"] == "c").collect();
    assert!(!had.is_empty(), "c held partitions: {before:#}");
    let killed = Instant::now();
    c.kill9();

    // Messages for c's instances are accepted by the others at once; they
    // run once c's partitions have moved.
    for k in &keys {
        let v = send_any(&[&a, &b], "crash-finish", json!({"key": k}), &format!("finish-{k}"));
        if accepted.contains(k) {
            assert_eq!(v["duplicate"], true, "{k} was accepted before the kill: {v}");
        }
    }
    let after = wait_balanced(&a, &["a", "b"]);
    eprintln!("failover: c's {} partitions held by a and b {} ms after kill -9 (lease 1500 ms)", had.len(), killed.elapsed().as_millis());
    for p in had {
        let epoch = after["owners"][p as usize]["epoch"].as_u64().unwrap();
        assert!(epoch > before["owners"][p as usize]["epoch"].as_u64().unwrap(), "partition {p} moved under a new epoch");
    }
    check_exactly_once(&a, dir.path(), &["a", "b", "c"], &keys);
}

#[test]
fn a_message_sent_to_one_host_reaches_an_instance_another_runs_and_the_reply_comes_back_and_verbs_sent_there_apply() {
    let Some((dir, store)) = setup("cluster-reply") else { return };
    let a = node(dir.path(), &store, "a");
    let b = node(dir.path(), &store, "b");
    let c = node(dir.path(), &store, "c");
    wait_balanced(&a, &["a", "b", "c"]);
    a.deploy("pricing", None);
    a.deploy("notifier", None);
    a.deploy("order_approval", None);
    // Large orders wait for a correlated approval: the reply to the
    // submission comes first, the approval goes to the instance's owner.
    let mut elsewhere = None;
    for i in 0..40 {
        let order = format!("o-{i}");
        let body = json!({"order_id": order, "customer": "ada", "lines": [{"sku": "gizmo", "qty": 4}]});
        let out = a.ok_json(&["send", "submit-order", "--body", &body.to_string(), "--wait-reply"]);
        assert_eq!(out["reply"]["body"]["needs_approval"], true, "{out}");
        let id = out["instance"].as_str().unwrap().to_string();
        let owner = owner_of(&status(&a), &id);
        if owner.as_deref().is_some_and(|o| o != "a") {
            elsewhere = Some((id, order, owner.unwrap()));
            break;
        }
    }
    let (id, order, owner) = elsewhere.expect("of 40 new instances, one landed in a partition another host owns");
    eprintln!("instance {id} of order {order} runs on {owner}; its reply came back through a");
    // Operator verbs sent to a are forwarded to the owner, which applies them.
    let suspended = a.ok_json(&["suspend", &id]);
    assert_eq!(suspended["status"], "suspended", "{suspended}");
    assert_eq!(b.instance(&id)["status"], "suspended", "the owner's write, read on another host");
    let edited = a.cairn(&["vars", "set", &id, &json!({"bogus": 1}).to_string()]);
    assert_ne!(edited.code, 0, "the owner's guest refuses variables that do not decode: {}", edited.stdout);
    let resumed = a.ok_json(&["resume", &id]);
    assert_ne!(resumed["status"], "suspended", "{resumed}");
    // The approval, sent to a, reaches the instance on its owner.
    let approval = json!({"order_id": order, "approver": "grace", "approved": true});
    let out = a.ok_json(&["send", "approve", "--body", &approval.to_string()]);
    assert_eq!(out["instance"], id.as_str(), "{out}");
    let v = a.wait_status(&id, "completed", WAIT);
    assert_eq!(v["variables"]["status"], "confirmed", "{v}");
    assert_eq!(v["variables"]["approver"], "grace", "{v}");
    // Reads are served anywhere.
    for h in [&b, &c] {
        assert_eq!(h.instance(&id)["status"], "completed");
    }
}

#[test]
fn a_rolling_restart_of_all_three_hosts_under_load_loses_and_duplicates_nothing() {
    let Some((dir, store)) = setup("cluster-rolling") else { return };
    let names = ["a", "b", "c"];
    let mut hosts: Vec<Host> = names.iter().map(|n| node(dir.path(), &store, n)).collect();
    wait_balanced(&hosts[0], &names);
    deploy_crashy(&hosts[0], &[&hosts[1], &hosts[2]]);
    let mut keys = Vec::new();
    let mut finished = 0;
    for round in 0..3 {
        // Load: new instances, and finish messages for earlier ones, sent to every host.
        for i in 0..20 {
            let k = format!("r{round}-{i:02}");
            let live: Vec<&Host> = hosts.iter().collect();
            send_any(&live[i % 3..], "crash-start", json!({"key": k}), &format!("start-{k}"));
            keys.push(k);
        }
        while finished + 5 < keys.len() {
            let k = keys[finished].clone();
            let live: Vec<&Host> = hosts.iter().collect();
            send_any(&live[finished % 3..], "crash-finish", json!({"key": k}), &format!("finish-{k}"));
            finished += 1;
        }
        // Restart one host under control while its instances are mid-flight.
        let i = round;
        let stopped = hosts[i].terminate();
        assert!(stopped.success(), "{} stopped under control: {stopped}", names[i]);
        hosts[i] = node(dir.path(), &store, names[i]);
        wait_balanced(&hosts[(i + 1) % 3], &names);
    }
    while finished < keys.len() {
        let k = keys[finished].clone();
        let live: Vec<&Host> = hosts.iter().collect();
        send_any(&live, "crash-finish", json!({"key": k}), &format!("finish-{k}"));
        finished += 1;
    }
    check_exactly_once(&hosts[0], dir.path(), &names, &keys);
}

#[test]
fn a_worker_polling_one_host_gets_the_tasks_of_instances_the_other_hosts_run_each_once() {
    let Some((dir, store)) = setup("cluster-workers") else { return };
    let a = node(dir.path(), &store, "a");
    let b = node(dir.path(), &store, "b");
    let c = node(dir.path(), &store, "c");
    wait_balanced(&a, &["a", "b", "c"]);
    // The external activity is deployed through b; a learns of it from the store.
    let v = b.ok_json(&["deploy", "--external", "recorder", "--operation", "record", "--operation", "fail", "--operation", "spin"]);
    assert_eq!(v["external"], json!(["record", "fail", "spin"]), "{v}");
    b.deploy("t_invoker", None);
    for h in [&a, &c] {
        eventually("every host lists the deployed versions", WAIT, || {
            let (_, v) = h.get("/v1/definitions");
            v["definitions"].as_array().is_some_and(|d| d.len() >= 2)
        });
    }
    // Instances started through every host until 12 run on b or c; a third
    // are non-idempotent (their lease is recorded before a worker has them).
    let hosts = [&a, &b, &c];
    let mut ids: Vec<String> = Vec::new();
    let mut elsewhere = 0;
    while elsewhere < 12 {
        assert!(ids.len() < 200, "of {} new instances, {elsewhere} landed on b or c", ids.len());
        let mode = if ids.len().is_multiple_of(3) { "non-idempotent" } else { "retry" };
        let input = json!({ "mode": mode, "key": format!("k-{}", ids.len()) }).to_string();
        let v = hosts[ids.len() % 3].ok_json(&["start", "invoker", "--input", &input]);
        let id = v["id"].as_str().expect("an id").to_string();
        if owner_of(&status(&a), &id).is_some_and(|o| o != "a") {
            elsewhere += 1;
        }
        ids.push(id);
    }
    // Workers poll a only, and complete there (forwarded to the owner).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let handed = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(String, u32, String)>::new()));
    let mut threads = Vec::new();
    for n in 0..4 {
        let w = cairn_worker::Worker::new(&a.url, "recorder", &format!("w-{n}"));
        let (stop, handed) = (stop.clone(), handed.clone());
        threads.push(std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                for t in w.poll(3, Duration::from_millis(500)).expect("poll") {
                    handed.lock().unwrap().push((t.id.clone(), t.attempt, w.name().to_string()));
                    if let Err(e) = w.complete(&t, &json!({ "by": w.name() })) {
                        panic!("completion of {} sent to a refused: {e}", t.id);
                    }
                }
            }
        }));
    }
    for id in &ids {
        let v = a.wait_status(id, "completed", WAIT);
        assert_eq!(v["variables"]["done"], true, "{v}");
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for t in threads {
        t.join().unwrap();
    }
    let handed = handed.lock().unwrap();
    let mut by_task: BTreeMap<String, Vec<(u32, String)>> = BTreeMap::new();
    for (id, attempt, worker) in handed.iter() {
        by_task.entry(id.clone()).or_default().push((*attempt, worker.clone()));
    }
    let instances: BTreeSet<&str> = by_task.keys().map(|t| t.split_once(':').unwrap().0).collect();
    assert_eq!(instances, ids.iter().map(String::as_str).collect(), "one task per instance, each handed through a");
    assert!(by_task.values().all(|polls| polls.len() == 1), "each task handed to exactly one poll: {by_task:?}");
    for h in hosts {
        let (_, v) = h.get("/v1/tasks");
        assert_eq!(v["count"], 0, "no task left: {v}");
    }
    eprintln!("{} tasks, {elsewhere} of instances run by b or c, all taken through a", by_task.len());
}

#[test]
fn orders_with_the_same_correlation_values_sent_to_two_hosts_at_once_create_one_instance() {
    let Some((dir, store)) = setup("cluster-correlation") else { return };
    let a = node(dir.path(), &store, "a");
    let b = node(dir.path(), &store, "b");
    wait_balanced(&a, &["a", "b"]);
    a.deploy("pricing", None);
    a.deploy("notifier", None);
    a.deploy("order_approval", None);
    eventually("b lists the deployed versions", WAIT, || {
        let (_, v) = b.get("/v1/definitions");
        v["definitions"].as_array().is_some_and(|d| d.len() >= 3)
    });
    // Large orders wait for an approval: each keeps its correlation values.
    let rounds = 30;
    let barrier = std::sync::Barrier::new(2);
    let answers: Vec<[(u16, Value); 2]> = (0..rounds)
        .map(|i| {
            let body = json!({"order_id": format!("same-{i}"), "customer": "ada", "lines": [{"sku": "gizmo", "qty": 4}]});
            std::thread::scope(|s| {
                let (barrier, a, b) = (&barrier, &a, &b);
                let (body_a, body_b) = (body.clone(), body.clone());
                let x = s.spawn(move || {
                    barrier.wait();
                    a.send("submit-order", body_a, Some(&format!("submit-{i}-a")))
                });
                let y = s.spawn(move || {
                    barrier.wait();
                    b.send("submit-order", body_b, Some(&format!("submit-{i}-b")))
                });
                [x.join().unwrap(), y.join().unwrap()]
            })
        })
        .collect();
    for (i, [x, y]) in answers.iter().enumerate() {
        let accepted = [x, y].iter().filter(|(status, _)| *status == 202 || *status == 200).count();
        assert_eq!(accepted, 1, "order same-{i}: one of the two submissions creates the instance: {x:?} {y:?}");
        let refused = [x, y].into_iter().find(|(status, _)| *status != 202 && *status != 200).unwrap();
        assert_eq!(refused.0, 409, "order same-{i}: the other is refused as a conflict: {refused:?}");
        assert!(refused.1["error"].as_str().unwrap_or("").contains("already belongs to instance"), "{refused:?}");
    }
    let instances = a.instances("order-approval");
    assert_eq!(instances.len(), rounds, "one instance per order: {instances:?}");
    let raced = answers.iter().flatten().filter(|(_, v)| v["error"].as_str().is_some_and(|e| e.contains("through another host"))).count();
    eprintln!("{rounds} orders sent to both hosts at once: {raced} refused by the store's check (both hosts had routed them), the rest by the intake's");
}

#[test]
fn a_backup_from_a_cluster_host_may_take_longer_than_a_lease() {
    let Some((dir, store)) = setup("cluster-backup") else { return };
    // The backup's read transaction stays open, idle, for longer than a
    // lease (1.5 s), which is the idle-in-transaction timeout of the host's sessions.
    let a = Host::start_node_with(&dir.path().join("a"), &store, "a", FLAGS, &[("CAIRN_PAUSE", "backup-begun:2500")]);
    wait_balanced(&a, &["a"]);
    a.deploy("t_crash", None);
    let out = a.ok_json(&["backup", "b"]);
    assert_eq!(out["name"], "b", "{out}");
    let copy = std::path::PathBuf::from(out["dir"].as_str().unwrap());
    assert!(copy.join("db").join("CURRENT").exists(), "the backup is a data directory of the embedded store: {out}");
}

/// A TCP relay between one host and the database that can stop carrying
/// bytes (both ways, on every connection, new ones included) and carry them
/// again later, delivering what it held back: a network that is lost, then found.
mod relay {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    pub struct Relay {
        pub port: u16,
        cut: Arc<AtomicBool>,
        stop: Arc<AtomicBool>,
    }

    impl Relay {
        pub fn start(upstream: String) -> Relay {
            Relay::start_on("127.0.0.1:0", upstream)
        }

        /// A relay listening on `bind` (an address and port, 0 for any port).
        pub fn start_on(bind: &str, upstream: String) -> Relay {
            let listener = TcpListener::bind(bind).unwrap();
            let port = listener.local_addr().unwrap().port();
            listener.set_nonblocking(true).unwrap();
            let cut = Arc::new(AtomicBool::new(false));
            let stop = Arc::new(AtomicBool::new(false));
            let (c, s) = (cut.clone(), stop.clone());
            std::thread::spawn(move || {
                while !s.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((down, _)) => {
                            let (c, s, upstream) = (c.clone(), s.clone(), upstream.clone());
                            std::thread::spawn(move || {
                                // A new connection waits while the network is cut.
                                while c.load(Ordering::SeqCst) && !s.load(Ordering::SeqCst) {
                                    std::thread::sleep(Duration::from_millis(20));
                                }
                                let Ok(up) = TcpStream::connect(&upstream) else { return };
                                down.set_nonblocking(false).unwrap();
                                pump(down.try_clone().unwrap(), up.try_clone().unwrap(), c.clone(), s.clone());
                                pump(up, down, c, s);
                            });
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            });
            Relay { port, cut, stop }
        }

        pub fn cut(&self) {
            self.cut.store(true, Ordering::SeqCst);
        }

        pub fn restore(&self) {
            self.cut.store(false, Ordering::SeqCst);
        }
    }

    impl Drop for Relay {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::SeqCst);
            self.cut.store(false, Ordering::SeqCst);
        }
    }

    /// Carries bytes from `from` to `to`; while cut, reads nothing (what the
    /// peer sends waits in the kernel's buffers, as in a lost network).
    fn pump(mut from: TcpStream, mut to: TcpStream, cut: Arc<AtomicBool>, stop: Arc<AtomicBool>) {
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            from.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
            loop {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                if cut.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
                match from.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        // Read before a cut began: held back until it ends.
                        while cut.load(Ordering::SeqCst) && !stop.load(Ordering::SeqCst) {
                            std::thread::sleep(Duration::from_millis(20));
                        }
                        if to.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                    Err(_) => break,
                }
            }
            let _ = to.shutdown(std::net::Shutdown::Both);
            let _ = from.shutdown(std::net::Shutdown::Both);
        });
    }
}

#[test]
fn a_host_cut_off_from_the_database_stops_writing_and_none_of_its_old_writes_lands() {
    let Some((dir, store)) = setup("cluster-cut") else { return };
    // c reaches the database through the relay.
    let (base, database) = store.rsplit_once('/').unwrap();
    let (_, addr) = base.rsplit_once('@').unwrap();
    let relay = relay::Relay::start(addr.to_string());
    let user = base.rsplit_once('@').unwrap().0;
    let relayed = format!("{user}@127.0.0.1:{}/{database}", relay.port);
    let a = node(dir.path(), &store, "a");
    let b = node(dir.path(), &store, "b");
    let c = node(dir.path(), &relayed, "c");
    wait_balanced(&a, &["a", "b", "c"]);
    deploy_crashy(&a, &[&b, &c]);
    let keys: Vec<String> = (0..45).map(|i| format!("c{i:02}")).collect();
    for k in &keys {
        send_any(&[&a, &b], "crash-start", json!({"key": k}), &format!("start-{k}"));
    }
    // Some of them are finishing on every host when c is cut off.
    for k in &keys[..15] {
        send_any(&[&a, &b], "crash-finish", json!({"key": k}), &format!("finish-{k}"));
    }
    relay.cut();
    let cut_at = Instant::now();
    // c stops its instances (it cannot renew); a and b take its partitions
    // once the leases lapse.
    eventually("c stops every instance it ran", WAIT, || c.get("/v1/health").1["live_instances"] == 0);
    wait_balanced(&a, &["a", "b"]);
    eprintln!("cut off: c's partitions moved to a and b {} ms after the cut", cut_at.elapsed().as_millis());
    // The network comes back: whatever c sent meanwhile is delivered now.
    finish_on_the_others_then_rejoin_without_stale_writes(&a, &b, &keys, 15, || relay.restore());
    check_exactly_once(&a, dir.path(), &["a", "b", "c"], &keys);
    drop(c);
}

/// A network namespace joined to this one by a veth pair: `HOST` is this
/// side's address, `PEER` the namespace's; `cut` takes the link down.
mod netns {
    use std::process::Command;

    pub struct Net {
        pub name: String,
        root_if: String,
        pub host: String,
    }

    fn ip(args: &[&str]) -> Result<(), String> {
        let out = Command::new("ip").args(args).output().map_err(|e| format!("ip {args:?}: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
        }
    }

    impl Net {
        /// A namespace and its link, or why they cannot be made here.
        pub fn make() -> Result<Net, String> {
            let n = std::process::id() % 250 + 1;
            let name = format!("cairn-t{n}");
            let (root_if, ns_if) = (format!("cr{n}"), format!("cn{n}"));
            let (host, peer) = (format!("10.213.{n}.1"), format!("10.213.{n}.2"));
            ip(&["netns", "add", &name])?;
            let net = Net { name: name.clone(), root_if: root_if.clone(), host: host.clone() };
            ip(&["link", "add", &root_if, "type", "veth", "peer", "name", &ns_if])?;
            ip(&["link", "set", &ns_if, "netns", &name])?;
            ip(&["addr", "add", &format!("{host}/24"), "dev", &root_if])?;
            ip(&["link", "set", &root_if, "up"])?;
            ip(&["netns", "exec", &name, "ip", "addr", "add", &format!("{peer}/24"), "dev", &ns_if])?;
            ip(&["netns", "exec", &name, "ip", "link", "set", &ns_if, "up"])?;
            ip(&["netns", "exec", &name, "ip", "link", "set", "lo", "up"])?;
            Ok(net)
        }

        pub fn cut(&self) {
            ip(&["link", "set", &self.root_if, "down"]).unwrap();
        }

        pub fn restore(&self) {
            ip(&["link", "set", &self.root_if, "up"]).unwrap();
        }
    }

    impl Drop for Net {
        fn drop(&mut self) {
            let _ = ip(&["link", "del", &self.root_if]);
            let _ = ip(&["netns", "del", &self.name]);
        }
    }
}

#[test]
fn a_host_in_a_network_namespace_whose_link_goes_down_stops_writing_and_none_of_its_old_writes_lands() {
    let test = "a_host_in_a_network_namespace_whose_link_goes_down_stops_writing_and_none_of_its_old_writes_lands";
    let Some((dir, store)) = setup("cluster-netns") else { return };
    let net = match netns::Net::make() {
        Ok(net) => net,
        Err(e) => {
            eprintln!("{test}: skipped (no network namespace can be made here: {e})");
            return;
        }
    };
    // c runs in the namespace and reaches the database through this side's
    // end of the link (a relay there carries it on to the server on loopback).
    let (base, database) = store.rsplit_once('/').unwrap();
    let (user, addr) = base.rsplit_once('@').unwrap();
    let bridge = relay::Relay::start_on(&format!("{}:0", net.host), addr.to_string());
    let through = format!("{user}@{}:{}/{database}", net.host, bridge.port);
    let a = node(dir.path(), &store, "a");
    let b = node(dir.path(), &store, "b");
    let c_dir = dir.path().join("c");
    std::fs::create_dir_all(&c_dir).unwrap();
    let log = std::fs::File::create(c_dir.join("serve.log")).unwrap();
    let c = Killed(std::process::Command::new("ip")
        .args(["netns", "exec", &net.name])
        .arg(cairn_tests::cairn_bin())
        .args(["serve", "--data"])
        .arg(c_dir.join("store"))
        .args(["--store", &through, "--node", "c", "--listen", "127.0.0.1:7700"])
        .args(FLAGS)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("ip netns exec cairn serve"));
    let c_log = || std::fs::read_to_string(c_dir.join("serve.log")).unwrap_or_default();
    let balanced = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| wait_balanced(&a, &["a", "b", "c"])));
    if balanced.is_err() {
        panic!("c did not join from its namespace:\n{}", c_log());
    }
    a.deploy_effectful("t_recorder", "recorder");
    a.deploy("t_crash", None);
    eventually("b lists the deployed versions", WAIT, || b.get("/v1/definitions").1["definitions"].as_array().is_some_and(|d| d.len() >= 2));
    let keys: Vec<String> = (0..45).map(|i| format!("n{i:02}")).collect();
    for k in &keys {
        send_any(&[&a, &b], "crash-start", json!({"key": k}), &format!("start-{k}"));
    }
    for k in &keys[..15] {
        send_any(&[&a, &b], "crash-finish", json!({"key": k}), &format!("finish-{k}"));
    }
    net.cut();
    let cut_at = Instant::now();
    eventually("c notices it cannot renew and stops its instances", WAIT, || c_log().contains("no lease renewed"));
    wait_balanced(&a, &["a", "b"]);
    eprintln!("link down: c's partitions moved to a and b {} ms after the cut", cut_at.elapsed().as_millis());
    finish_on_the_others_then_rejoin_without_stale_writes(&a, &b, &keys, 15, || net.restore());
    check_exactly_once(&a, dir.path(), &["a", "b", "c"], &keys);
    drop(c);
}

/// A child process killed (and reaped) when dropped, whatever the test did.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
