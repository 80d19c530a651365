//! Microflows through the real binary: one transaction with effects at the
//! end only, called synchronously, the keep-final-state switch, waits
//! rejected at deploy, and a rerun from the start after a crash.

use cairn_tests::{Host, TempDir};
use serde_json::{json, Value};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);

fn host(tag: &str, env: &[(&str, &str)]) -> (TempDir, Host) {
    let dir = TempDir::new(tag);
    let h = Host::start(dir.path(), &["--quiet-guests"], env);
    h.deploy("t_recorder", Some("recorder"));
    h.deploy("t_microflow", None);
    h.deploy("t_microflow_discard", None);
    (dir, h)
}

fn records(h: &Host, key: &str, what: &str) -> usize {
    h.guest_log().iter().filter(|r| r["message"] == "recorded" && r["fields"]["key"] == key && r["fields"]["what"] == what).count()
}

fn eventually(what: &str, f: impl Fn() -> bool) {
    cairn_tests::eventually(what, WAIT, f)
}

fn call(h: &Host, operation: &str, body: Value) -> Value {
    h.ok_json(&["send", operation, "--body", &body.to_string(), "--wait-reply"])
}

#[test]
fn a_microflow_runs_as_one_transaction_and_replies() {
    let (_d, h) = host("micro-ok", &[]);
    let out = call(&h, "micro-start", json!({"key": "m1"}));
    assert_eq!(out["reply"]["body"], json!({"key": "m1", "recorded": true}));
    let v = h.wait_status(out["instance"].as_str().unwrap(), "completed", WAIT);
    let reasons: Vec<&str> = v["history"].as_array().unwrap().iter().map(|e| e["reason"].as_str().unwrap()).collect();
    assert_eq!(reasons, ["created", "completed"], "persisted at its end only");
    eventually("the buffered send left at the end", || records(&h, "m1", "sent") == 1);
}

#[test]
fn a_failing_microflow_sends_nothing() {
    let (_d, h) = host("micro-fail", &[]);
    let out = call(&h, "micro-start", json!({"key": "m2", "fail": true}));
    assert_eq!(out["reply"]["fault"]["name"], "micro-failed");
    let v = h.wait_status(out["instance"].as_str().unwrap(), "faulted", WAIT);
    assert_eq!(v["fault"]["path"], "main/check");
    assert_eq!(records(&h, "m2", "record"), 1, "its call ran: calls are how a microflow gets answers");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(records(&h, "m2", "sent"), 0, "all or nothing: the send never left");
}

#[test]
fn a_microflow_can_discard_its_final_state() {
    let (_d, h) = host("micro-discard", &[]);
    let out = call(&h, "micro-discard-start", json!({"key": "m3"}));
    assert_eq!(out["reply"]["body"]["recorded"], true);
    eventually("the completed microflow leaves no state", || h.instances("microflow-discard").is_empty());
    let started = h.cairn(&["start", "microflow-discard", "--input", r#"{"key":"m4"}"#, "--wait"]);
    assert_eq!(started.code, 0, "{}{}", started.stdout, started.stderr);
    assert!(started.stdout.contains("completed (its final state is not kept)"), "{}", started.stdout);
    eventually("its send still left", || records(&h, "m4", "sent") == 1);
    // The same microflow that keeps its state is listed.
    call(&h, "micro-start", json!({"key": "m5"}));
    assert_eq!(h.instances("microflow").len(), 1);
}

#[test]
fn a_microflow_that_waits_is_rejected_at_deploy() {
    let (_d, h) = host("micro-wait", &[]);
    let before = h.ok_json(&["definitions"]);
    let out = h.cairn(&["deploy", cairn_tests::guest("t_microflow_wait").to_str().unwrap()]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("activity 'main/pause' (wait): a microflow cannot wait"), "{}", out.stderr);
    assert_eq!(h.ok_json(&["definitions"]), before);
}

#[test]
fn a_crash_before_a_microflow_ends_runs_it_again_from_the_start() {
    let (dir, mut h) = host("micro-crash", &[("CAIRN_FAILPOINT", "inline-call")]);
    let (status, v) = h.send("micro-start", json!({"key": "m6"}), None);
    assert_eq!(status, 202, "{v}");
    let id = v["instance"].as_str().unwrap().to_string();
    h.wait_down();
    h.kill9();
    assert_eq!(records(&h, "m6", "record"), 1);
    assert_eq!(records(&h, "m6", "sent"), 0);

    let h = Host::start(dir.path(), &["--quiet-guests"], &[]);
    let v = h.wait_status(&id, "completed", WAIT);
    assert_eq!(v["variables"]["recorded"], true);
    assert_eq!(records(&h, "m6", "record"), 2, "the whole microflow ran again, from its persisted message");
    eventually("the send left once", || records(&h, "m6", "sent") == 1);
}

#[test]
fn a_process_can_invoke_a_microflow_and_wait_for_its_answer() {
    let (_d, h) = host("micro-invoked", &[]);
    h.deploy("t_invoker", None);
    let out = h.cairn(&["start", "invoker", "--input", r#"{"mode":"micro","key":"m7"}"#, "--wait", "--json"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert_eq!(out.json()["variables"]["done"], true);
    let micro = h.instances("microflow");
    assert_eq!(micro.len(), 1);
    assert_eq!(micro[0]["status"], "completed");
}
