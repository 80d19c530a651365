//! Invoke policies through the real binary: non-idempotent calls held in
//! transit after a crash and resolved by an operator, retry on recovery,
//! retry policies and per-call timeouts.

use cairn_tests::{Host, TempDir};
use serde_json::Value;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);

fn eventually(what: &str, f: impl Fn() -> bool) {
    cairn_tests::eventually(what, WAIT, f)
}

fn keys(h: &Host, message: &str, key: &str) -> Vec<String> {
    h.guest_log()
        .iter()
        .filter(|r| r["message"] == message && r["fields"]["key"] == key)
        .map(|r| r["at"].as_str().unwrap().to_string())
        .collect()
}

/// Starts an invoker in `mode` on a host that aborts once its activity ran,
/// and restarts the host. Returns the restarted host and the instance id.
fn crash_mid_call(dir: &TempDir, mode: &str, key: &str) -> (Host, String) {
    let mut h = Host::start(dir.path(), &["--quiet-guests"], &[("CAIRN_FAILPOINT", "mid-dispatch")]);
    // A call that reaches the world (here: may) goes through the outbox.
    h.deploy_effectful("t_recorder", "recorder");
    h.deploy("t_invoker", None);
    let input = serde_json::json!({ "mode": mode, "key": key }).to_string();
    let id = h.ok_json(&["start", "invoker", "--input", &input])["id"].as_str().unwrap().to_string();
    h.wait_down();
    h.kill9();
    assert_eq!(keys(&h, "recorded", key).len(), 1);
    (Host::start(dir.path(), &["--quiet-guests"], &[]), id)
}

fn held(h: &Host) -> Vec<Value> {
    h.ok_json(&["in-transit", "ls"])["calls"].as_array().cloned().unwrap_or_default()
}

#[test]
fn a_non_idempotent_call_in_flight_at_a_crash_is_held_until_resubmitted() {
    let dir = TempDir::new("in-transit-resubmit");
    let (h, id) = crash_mid_call(&dir, "non-idempotent", "n1");
    eventually("the call is held", || held(&h).len() == 1);
    let call = &held(&h)[0];
    assert_eq!(call["state"], "held");
    assert_eq!(call["instance"], id.as_str());
    let shown = h.instance(&id);
    assert_eq!(shown["in_transit"][0]["state"], "held", "cairn show tells");
    assert_eq!(shown["status"], "running");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(keys(&h, "recorded", "n1").len(), 1, "not sent again on its own");

    let out = h.ok_json(&["in-transit", "resubmit", call["id"].as_str().unwrap()]);
    assert_eq!(out["state"], "resubmitted");
    let v = h.wait_status(&id, "completed", WAIT);
    assert_eq!(v["variables"]["done"], true);
    let sent = keys(&h, "recorded", "n1");
    assert_eq!(sent.len(), 2);
    assert!(sent[0].ends_with("/1") && sent[1].ends_with("/2"), "the resubmission is a new attempt: {sent:?}");
    assert_eq!(sent[0].rsplit_once('/').unwrap().0, sent[1].rsplit_once('/').unwrap().0);
    assert!(held(&h).is_empty());
    let again = h.cairn(&["in-transit", "resubmit", call["id"].as_str().unwrap()]);
    assert_eq!(again.code, 1, "a resolved call cannot be resolved twice");
}

#[test]
fn abandoning_a_held_call_raises_a_named_fault_in_the_instance() {
    let dir = TempDir::new("in-transit-abandon");
    let (h, id) = crash_mid_call(&dir, "non-idempotent", "n2");
    eventually("the call is held", || held(&h).len() == 1);
    let call_id = held(&h)[0]["id"].as_str().unwrap().to_string();
    h.ok_json(&["in-transit", "abandon", &call_id]);
    let v = h.wait_status(&id, "faulted", WAIT);
    assert_eq!(v["fault"]["name"], "cairn.abandoned");
    assert_eq!(v["fault"]["path"], "main/non-idempotent?/pay");
    assert_eq!(keys(&h, "recorded", "n2").len(), 1);
    assert!(held(&h).is_empty());
}

#[test]
fn a_non_idempotent_call_with_retry_on_recovery_is_sent_again_after_a_crash() {
    let dir = TempDir::new("in-transit-recover");
    let (h, id) = crash_mid_call(&dir, "recover", "n3");
    h.wait_status(&id, "completed", WAIT);
    assert_eq!(keys(&h, "recorded", "n3").len(), 2);
    assert!(held(&h).is_empty());
}

#[test]
fn an_invoke_retries_its_listed_faults_then_faults_the_instance() {
    let dir = TempDir::new("invoke-retry");
    let h = Host::start(dir.path(), &["--quiet-guests"], &[]);
    h.deploy("t_recorder", Some("recorder"));
    h.deploy("t_invoker", None);
    let out = h.cairn(&["start", "invoker", "--input", r#"{"mode":"retry","key":"r1"}"#, "--wait", "--json"]);
    assert_eq!(out.code, 4, "{}{}", out.stdout, out.stderr);
    assert_eq!(out.json()["fault"]["name"], "recorder-failed");
    let attempts = keys(&h, "failing", "r1");
    assert_eq!(attempts.len(), 3, "three attempts in all: {attempts:?}");
    assert!(attempts[2].ends_with("/3"), "each attempt numbered in its idempotency key: {attempts:?}");
}

#[test]
fn an_invoke_past_its_timeout_faults_with_cairn_timeout() {
    let dir = TempDir::new("invoke-timeout");
    // The host's own call limit is a minute: the invoke's 300 ms is what ends it.
    let h = Host::start(dir.path(), &["--quiet-guests", "--call-timeout-ms", "60000"], &[]);
    h.deploy("t_recorder", Some("recorder"));
    h.deploy("t_invoker", None);
    let out = h.cairn(&["start", "invoker", "--input", r#"{"mode":"timeout","key":"t1"}"#, "--wait", "--json"]);
    assert_eq!(out.code, 4, "{}{}", out.stdout, out.stderr);
    let v = out.json();
    assert_eq!(v["fault"]["name"], "cairn.timeout");
    assert_eq!(v["fault"]["path"], "main/non-idempotent?/recover?/retry?/timeout?/slow");
    let history = v["history"].as_array().unwrap();
    let took = history.last().unwrap()["at_ms"].as_u64().unwrap() - history[0]["at_ms"].as_u64().unwrap();
    assert!(took < 30_000, "ended by the invoke's own limit, not the host's minute ({took} ms)");
}
