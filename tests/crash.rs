//! Crash and restart: `kill -9` under load, named fail points, and a
//! controlled shutdown. Every instance resumes from its last persistence
//! point; no accepted message is lost; activity effects are observed as often
//! as the semantics promise (idempotent invokes: at least once, always with
//! the same idempotency key).

use cairn_tests::{Host, TempDir};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(60);

fn deploy_crashy(h: &Host) {
    h.deploy_effectful("t_recorder", "recorder");
    h.deploy("t_crash", None);
}

/// Recorder calls per key: (what, idempotency keys seen).
fn recorded(h: &Host) -> BTreeMap<(String, String), Vec<String>> {
    let mut out: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for r in h.guest_log().into_iter().filter(|r| r["message"] == "recorded") {
        let key = r["fields"]["key"].as_str().unwrap().to_string();
        let what = r["fields"]["what"].as_str().unwrap().to_string();
        out.entry((key, what)).or_default().push(r["at"].as_str().unwrap().to_string());
    }
    out
}

#[test]
fn kill_9_in_the_middle_of_200_instances_loses_nothing() {
    let dir = TempDir::new("kill9");
    let mut h = Host::start(dir.path(), &["--quiet-guests"], &[]);
    deploy_crashy(&h);
    let n = 200;
    let keys: Vec<String> = (0..n).map(|i| format!("k{i:03}")).collect();
    let mut accepted_before_kill = BTreeSet::new();
    for k in &keys {
        let (status, v) = h.send("crash-start", json!({"key": k}), Some(&format!("start-{k}")));
        assert_eq!(status, 202, "{v}");
    }
    // Finish messages for half of the instances, then kill -9 while the
    // rest are mid-flight (invoking, waiting, receiving).
    for k in &keys[..n / 2] {
        let (status, _) = h.send("crash-finish", json!({"key": k}), Some(&format!("finish-{k}")));
        if status == 202 || status == 200 {
            accepted_before_kill.insert(k.clone());
        }
    }
    h.kill9();

    let h = Host::start(dir.path(), &["--quiet-guests"], &[]);
    // Resend every finish message with the same id: the ones accepted before
    // the crash are duplicates (exactly once by id), the rest are new.
    for k in &keys {
        let (status, v) = h.send("crash-finish", json!({"key": k}), Some(&format!("finish-{k}")));
        assert!(status == 202 || status == 200, "{k}: {status} {v}");
        if accepted_before_kill.contains(k) {
            assert_eq!(v["duplicate"], true, "{k} was accepted before the crash: {v}");
        }
    }
    let all = h.wait_all_completed("crashy", n, WAIT);
    let finished_keys: BTreeSet<String> = all
        .iter()
        .map(|i| h.instance(i["id"].as_str().unwrap()))
        .inspect(|v| {
            assert_eq!(v["variables"]["finished"], true);
            assert_eq!(v["variables"]["recorded"], true);
            assert_eq!(v["inbox"], 0, "every accepted message was consumed");
        })
        .map(|v| v["variables"]["key"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(finished_keys.len(), n, "one instance per key, each completed once");

    // The one-way "completed" calls leave after the final commit; wait for them.
    let deadline = Instant::now() + WAIT;
    loop {
        let rec = recorded(&h);
        let completed = keys.iter().filter(|k| rec.contains_key(&((*k).clone(), "completed".into()))).count();
        if completed == n {
            for k in &keys {
                let calls = &rec[&(k.clone(), "record".to_string())];
                assert!(!calls.is_empty(), "{k}: the invoke never ran");
                let distinct: BTreeSet<&String> = calls.iter().collect();
                assert_eq!(distinct.len(), 1, "{k}: a resent invoke keeps its idempotency key: {calls:?}");
            }
            break;
        }
        assert!(Instant::now() < deadline, "{completed}/{n} completion notices observed");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_crash_after_an_activity_ran_resends_it_with_the_same_idempotency_key() {
    let dir = TempDir::new("mid-dispatch");
    let mut h = Host::start(dir.path(), &["--quiet-guests"], &[("CAIRN_FAILPOINT", "mid-dispatch")]);
    deploy_crashy(&h);
    h.send("crash-start", json!({"key": "solo"}), None);
    // The host aborts at the fail point right after the activity ran.
    h.wait_down();
    h.kill9();
    assert_eq!(recorded(&h)[&("solo".to_string(), "record".to_string())].len(), 1);

    let h = Host::start(dir.path(), &["--quiet-guests"], &[]);
    h.send("crash-finish", json!({"key": "solo"}), None);
    h.wait_all_completed("crashy", 1, WAIT);
    let calls = &recorded(&h)[&("solo".to_string(), "record".to_string())];
    assert_eq!(calls.len(), 2, "performed before the crash and again after it");
    assert_eq!(calls[0], calls[1], "with the same idempotency key");
}

#[test]
fn a_crash_before_a_new_instances_first_point_accepts_nothing_and_a_resend_creates_it_once() {
    let dir = TempDir::new("before-first-commit");
    // The new instance's first persistence point (the intake and its
    // receive's commit-after, one batch) never lands: the message was never
    // accepted, and the sender got no answer.
    let mut h = Host::start(dir.path(), &["--quiet-guests"], &[("CAIRN_FAILPOINT", "before-commit")]);
    deploy_crashy(&h);
    let send = |h: &Host| h.cairn(&["send", "crash-start", "--body", r#"{"key": "first"}"#, "--id", "m-first", "--json"]);
    let out = send(&h);
    assert_ne!(out.code, 0, "no answer while the host dies: {}{}", out.stdout, out.stderr);
    h.wait_down();
    h.kill9();

    let h = Host::start(dir.path(), &["--quiet-guests"], &[]);
    assert!(h.instances("crashy").is_empty(), "nothing of the unaccepted message was stored");
    let out = send(&h);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let again = send(&h);
    assert_eq!(again.json()["duplicate"], true, "{}", again.stdout);
    assert_eq!(h.instances("crashy").len(), 1, "created once");
}

#[test]
fn a_crash_before_a_persistence_point_resumes_from_the_previous_one() {
    let dir = TempDir::new("before-commit");
    // The instance's second persistence point (its call's dispatch) never
    // lands; the first (the intake and its receive, one batch) did: the
    // driver waits a moment before the second, longer than it holds the
    // first, which is written alone meanwhile.
    let env = [("CAIRN_FAILPOINT", "before-commit:2"), ("CAIRN_PAUSE", "pipelined:200")];
    let mut h = Host::start(dir.path(), &["--quiet-guests"], &env);
    deploy_crashy(&h);
    // The host may die before its answer leaves: the instance id comes from the listing.
    let _ = h.cairn(&["send", "crash-start", "--body", r#"{"key": "again"}"#]);
    h.wait_down();
    h.kill9();

    let h = Host::start(dir.path(), &["--quiet-guests"], &[]);
    let listed = h.instances("crashy");
    assert_eq!(listed.len(), 1, "{listed:?}");
    let id = listed[0]["id"].as_str().unwrap().to_string();
    let v = h.instance(&id);
    assert!(!v["history"].as_array().unwrap().is_empty());
    h.send("crash-finish", json!({"key": "again"}), None);
    let v = h.wait_status(&id, "completed", WAIT);
    assert_eq!(v["variables"]["key"], "again", "the start message was consumed in the first point");
}

#[test]
fn a_controlled_shutdown_persists_live_instances_and_a_restart_resumes_them() {
    let dir = TempDir::new("sigterm");
    let mut h = Host::start(dir.path(), &["--quiet-guests"], &[]);
    deploy_crashy(&h);
    for i in 0..20 {
        h.send("crash-start", json!({"key": format!("s{i}")}), None);
    }
    let status = h.terminate();
    assert!(status.success(), "SIGTERM exits cleanly: {status}\n{}", h.server_log());
    assert!(h.server_log().contains("cairn: stopped"));

    let h = Host::start(dir.path(), &["--quiet-guests"], &[]);
    for i in 0..20 {
        let (status, v) = h.send("crash-finish", json!({"key": format!("s{i}")}), None);
        assert!(status == 202, "{v}");
    }
    h.wait_all_completed("crashy", 20, WAIT);
}

#[test]
fn a_pick_waiting_through_a_crash_fires_its_due_timers_after_the_restart() {
    let dir = TempDir::new("pick-crash");
    let mut h = Host::start(dir.path(), &["--quiet-guests"], &[]);
    h.deploy("t_pick", None);
    let (_, a) = h.send("pick-start", json!({"key": "first"}), None);
    let (_, b) = h.send("pick-start", json!({"key": "second"}), None);
    let a = a["instance"].as_str().unwrap().to_string();
    let b = b["instance"].as_str().unwrap().to_string();
    h.wait_status(&a, "waiting", WAIT);
    h.wait_status(&b, "waiting", WAIT);
    h.kill9();
    // Down past the timers' due time: they fire at once after the restart.
    std::thread::sleep(Duration::from_millis(1600));
    let h = Host::start(dir.path(), &["--quiet-guests"], &[]);
    let vb = h.wait_status(&b, "completed", WAIT);
    assert_eq!(vb["variables"]["outcome"], "expired");
    let va = h.wait_status(&a, "completed", WAIT);
    assert_eq!(va["variables"]["outcome"], "expired", "each pick resumed from its persistence point");
}

#[test]
fn a_flow_with_branches_at_different_points_survives_kill_9() {
    let dir = TempDir::new("flow-crash");
    let mut h = Host::start(dir.path(), &["--quiet-guests"], &[]);
    h.deploy("t_recorder", Some("recorder"));
    h.deploy("t_flow", None);
    let (_, v) = h.send("flow-start", json!({"key": "fc"}), None);
    let id = v["instance"].as_str().unwrap().to_string();
    // Wait until the call branch is done: the others wait for a message and a timer.
    let deadline = Instant::now() + WAIT;
    loop {
        let v = h.instance(&id);
        if v["status"] == "waiting" && v["variables"]["done"].as_array().is_some_and(|d| d.contains(&json!("call"))) {
            break;
        }
        assert!(Instant::now() < deadline, "the flow did not reach its waits: {v:#}");
        std::thread::sleep(Duration::from_millis(20));
    }
    h.kill9();
    let h = Host::start(dir.path(), &["--quiet-guests"], &[]);
    h.send("flow-message", json!({"key": "fc"}), None);
    let v = h.wait_status(&id, "completed", WAIT);
    let mut done: Vec<String> = v["variables"]["done"].as_array().unwrap().iter().map(|d| d.as_str().unwrap().to_string()).collect();
    done.sort();
    assert_eq!(done, ["call", "message", "timer"], "each branch finished exactly once");
    assert_eq!(v["variables"]["joined"], true);
}

#[test]
fn deferred_recovery_parks_in_flight_instances_after_a_crash_until_released() {
    let dir = TempDir::new("deferred");
    let mut h = Host::start(dir.path(), &["--quiet-guests"], &[("CAIRN_FAILPOINT", "mid-dispatch")]);
    h.deploy_effectful("t_recorder", "recorder");
    h.deploy("t_deferred", None);
    let (_, v) = h.send("deferred-start", json!({"key": "d1"}), None);
    let id = v["instance"].as_str().unwrap().to_string();
    h.wait_down();
    h.kill9();

    let h = Host::start(dir.path(), &["--quiet-guests"], &[]);
    // Messages are still accepted for it, but it is not loaded.
    let (status, _) = h.send("deferred-finish", json!({"key": "d1"}), None);
    assert_eq!(status, 202);
    std::thread::sleep(Duration::from_millis(400));
    let v = h.instance(&id);
    assert_eq!((v["status"].clone(), v["parked"].clone(), v["in_memory"].clone()), (json!("running"), json!(true), json!(false)));
    assert_eq!(recorded(&h)[&("d1".to_string(), "record".to_string())].len(), 1, "nothing resent while parked");
    let shown = h.cairn(&["show", &id]);
    assert!(shown.stdout.contains("parked"), "{}", shown.stdout);

    h.ok_json(&["release", &id]);
    let v = h.wait_status(&id, "completed", WAIT);
    assert_eq!(v["parked"], false);
    assert_eq!(recorded(&h)[&("d1".to_string(), "record".to_string())].len(), 2, "resumed from its last persistence point");
    // `resubmit`, the verb's older name, still answers: the instance is no longer parked.
    let again = h.cairn(&["resubmit", &id]);
    assert_eq!(again.code, 1);
    assert!(again.stderr.contains("not parked"), "{}", again.stderr);
}

/// Deploys the three-step workflow of the benchmarks: a creating
/// request-response receive, three invokes of a pure activity (each one
/// commits its result: pipelined persistence points), a reply.
fn deploy_three_steps(h: &Host) {
    h.deploy("bench_steps_activity", Some("bench-steps"));
    h.deploy("bench_order", None);
}

/// Sends the three-step workflow's order `key` with message id `id` and waits for its reply.
fn order(h: &Host, key: &str, id: &str) -> cairn_tests::Out {
    h.cairn(&["send", "bench-order", "--body", &json!({ "key": key }).to_string(), "--id", id, "--wait-reply", "--json"])
}

/// The instance's persistence points, one per fence, oldest first.
fn fences(h: &Host, id: &str) -> Vec<u64> {
    let (status, v) = h.get(&format!("/v1/instances/{id}/history"));
    assert_eq!(status, 200, "{v}");
    v["history"].as_array().unwrap().iter().map(|e| e["fence"].as_u64().unwrap()).collect()
}

/// After a restart: the one instance of the three-step workflow completes,
/// every step's result in its variables, its history one point per fence,
/// and its reply is there for the sender who asks again.
fn completes_once(h: &Host, key: &str, message_id: &str) {
    let listed = h.instances("bench-order");
    assert_eq!(listed.len(), 1, "{listed:?}");
    let id = listed[0]["id"].as_str().unwrap().to_string();
    let v = h.wait_status(&id, "completed", WAIT);
    assert_eq!(v["variables"]["key"], key);
    assert_eq!(v["variables"]["ok"], true, "validate's result: {v}");
    assert!(!v["variables"]["charge_id"].as_str().unwrap_or("").is_empty(), "charge's result: {v}");
    assert!(!v["variables"]["shipment"].is_null(), "ship's result: {v}");
    let fences = fences(h, &id);
    assert!(fences.windows(2).all(|w| w[1] == w[0] + 1), "one history entry per fence, none twice: {fences:?}");
    let again = order(h, key, message_id);
    assert_eq!(again.code, 0, "{}{}", again.stdout, again.stderr);
    let v = again.json();
    assert_eq!(v["duplicate"], true, "{v}");
    assert!(v["reply"]["body"].is_object(), "the reply of the completed instance: {v}");
    assert_eq!(h.instances("bench-order").len(), 1, "created once");
}

#[test]
fn a_crash_between_pipelined_points_resumes_from_the_last_durable_one() {
    let dir = TempDir::new("pipelined");
    // The driver makes the workflow's second pipelined point (charge's
    // result) without waiting for the points before it, and the host dies
    // there: the points before it, each written alone because the driver
    // waits a moment before each point it pipelines (longer than it holds
    // a point), are written; nothing after them.
    let env = [("CAIRN_FAILPOINT", "pipelined:2"), ("CAIRN_PAUSE", "pipelined:200")];
    let mut h = Host::start(dir.path(), &["--quiet-guests"], &env);
    deploy_three_steps(&h);
    let out = order(&h, "p1", "m-p1");
    assert_ne!(out.code, 0, "no reply can leave before the reply's point is written: {}{}", out.stdout, out.stderr);
    h.wait_down();
    h.kill9();

    let h = Host::start(dir.path(), &["--quiet-guests"], &[]);
    completes_once(&h, "p1", "m-p1");
}

#[test]
fn a_new_instances_message_is_acknowledged_only_once_its_first_point_is_written() {
    let dir = TempDir::new("before-first-write");
    // The new instance's first point (the intake and its receive) goes
    // with the points the driver computes after it, but the committer dies
    // before writing them: the message is never acknowledged, and nothing
    // of it stays.
    let mut h = Host::start(dir.path(), &["--quiet-guests"], &[("CAIRN_FAILPOINT", "before-write:1")]);
    deploy_three_steps(&h);
    let out = h.cairn(&["send", "bench-order", "--body", &json!({ "key": "f1" }).to_string(), "--id", "m-f1", "--json"]);
    assert_ne!(out.code, 0, "acknowledged before its first point was written: {}{}", out.stdout, out.stderr);
    h.wait_down();
    h.kill9();

    let h = Host::start(dir.path(), &["--quiet-guests"], &[]);
    assert!(h.instances("bench-order").is_empty(), "nothing was accepted, so nothing was created");
    let out = order(&h, "f1", "m-f1");
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert_eq!(out.json()["duplicate"], false, "the message id was never stored: {}", out.stdout);
    completes_once(&h, "f1", "m-f1");
}

#[test]
fn a_crash_with_pipelined_points_unwritten_loses_only_what_never_left() {
    let dir = TempDir::new("before-write");
    // The committer dies before writing the second group that holds a
    // persistence point: the new instance's first point (the intake and its
    // receive) is written; validate's point and every point the driver
    // pipelined behind it are lost. The reply was decided but never left.
    // (The driver waits a moment before each point it pipelines, so that
    // the first is written alone, whatever the store.)
    let env = [("CAIRN_FAILPOINT", "before-write:2"), ("CAIRN_PAUSE", "pipelined:200")];
    let mut h = Host::start(dir.path(), &["--quiet-guests"], &env);
    deploy_three_steps(&h);
    let out = order(&h, "w1", "m-w1");
    assert_ne!(out.code, 0, "the reply's point was never written, so no reply left: {}{}", out.stdout, out.stderr);
    h.wait_down();
    h.kill9();

    let h = Host::start(dir.path(), &["--quiet-guests"], &[]);
    completes_once(&h, "w1", "m-w1");
}
