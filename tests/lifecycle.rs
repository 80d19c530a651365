//! The instance lifecycle through the real binary: retrying a faulted
//! instance (one, or in bulk by process and fault name), cancel running the
//! handlers, variables checked by the guest before they are stored, and
//! each transactional behaviour override visible in the history.

use cairn_tests::{history_steps, quiet_host, Host, TempDir};
use serde_json::{json, Value};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);

fn host(tag: &str) -> (TempDir, Host) {
    let (dir, h) = quiet_host(tag, &[]);
    h.deploy("t_lifecycle", None);
    (dir, h)
}

/// Starts an instance for `key` and waits until it is `status`.
fn start(h: &Host, key: &str, allow: bool, status: &str) -> (String, Value) {
    let (code, v) = h.send("lifecycle-start", json!({ "key": key, "allow": allow }), None);
    assert_eq!(code, 202, "{v}");
    let id = v["instance"].as_str().unwrap().to_string();
    let v = h.wait_status(&id, status, WAIT);
    (id, v)
}

/// The instance's history as (reason, path) pairs.
fn history(h: &Host, id: &str) -> Vec<(String, String)> {
    history_steps(&h.ok_json(&["history", id]))
}

fn steps(v: &Value) -> Vec<String> {
    v["variables"]["steps"].as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect()
}

#[test]
fn a_faulted_instance_is_retried_from_the_activity_that_faulted_after_its_variables_are_edited() {
    let (_dir, h) = host("retry");
    let (id, v) = start(&h, "r1", false, "faulted");
    assert_eq!(v["fault"]["name"], "not-allowed");
    assert_eq!(v["fault"]["path"], "main/check");

    // Retried as it is, it faults again at the same activity.
    h.ok_json(&["retry", &id]);
    let v = h.wait_status(&id, "faulted", WAIT);
    assert_eq!(v["fault"]["path"], "main/check");

    // Variables that do not decode are refused, naming the field, and nothing changes.
    let out = h.cairn(&["retry", &id, "--variables", r#"{"bogus":1}"#]);
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("missing field `key`"), "{}", out.stderr);
    assert_eq!(h.instance(&id)["status"], "faulted");
    let (status, body) = h.post(&format!("/v1/instances/{id}/retry"), br#"{"variables": {"key": 7}}"#);
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("invalid type"), "{body}");

    // With variables that let it pass, it goes on from `check`: the activities
    // before it do not run again, and its correlation routes the next message.
    let vars = json!({ "key": "r1", "allow": true, "steps": ["book", "before", "after", "own", "part"] }).to_string();
    h.ok_json(&["retry", &id, "--variables", &vars]);
    h.wait_status(&id, "waiting", WAIT);
    let (code, routed) = h.send("lifecycle-go", json!({ "key": "r1" }), None);
    assert_eq!(code, 202, "{routed}");
    assert_eq!(routed["instance"], id.as_str());
    let v = h.wait_status(&id, "completed", WAIT);
    assert_eq!(steps(&v), ["book", "before", "after", "own", "part", "check", "done"]);

    let reasons: Vec<_> = history(&h, &id).into_iter().filter(|(r, _)| r == "retried" || r == "faulted").collect();
    let at_check = |r: &str| (r.to_string(), "main/check".to_string());
    assert_eq!(reasons, [at_check("faulted"), at_check("retried"), at_check("faulted"), at_check("retried")]);
}

#[test]
fn only_a_faulted_instance_is_retried() {
    let (_dir, h) = host("retry-refused");
    let (id, _) = start(&h, "n1", true, "waiting");
    let out = h.cairn(&["retry", &id]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("is waiting, not faulted"), "{}", out.stderr);
    let out = h.cairn(&["retry", "no-such-instance"]);
    assert!(out.stderr.contains("no instance with id"), "{}", out.stderr);
}

#[test]
fn a_bulk_retry_takes_the_faulted_instances_of_a_process_with_that_fault_and_reports_them() {
    let (_dir, h) = host("retry-bulk");
    let (a, _) = start(&h, "b1", false, "faulted");
    let (b, _) = start(&h, "b2", false, "faulted");
    let (waiting, _) = start(&h, "b3", true, "waiting");

    let none = h.ok_json(&["retry", "--process", "t-lifecycle", "--fault", "another-fault"]);
    assert_eq!(none["retried"], json!([]));

    let report = h.ok_json(&["retry", "--process", "t-lifecycle", "--fault", "not-allowed"]);
    let mut retried: Vec<String> = report["retried"].as_array().unwrap().iter().map(|i| i.as_str().unwrap().to_string()).collect();
    retried.sort();
    let mut expected = vec![a.clone(), b.clone()];
    expected.sort();
    assert_eq!(retried, expected, "{report}");
    assert_eq!(report["refused"], json!([]));
    assert!(!retried.contains(&waiting));
    for id in [&a, &b] {
        h.wait_status(id, "faulted", WAIT);
        assert_eq!(history(&h, id).iter().filter(|(r, _)| r == "retried").count(), 1);
    }
    let text = h.cairn(&["retry", "--process", "t-lifecycle"]);
    assert!(text.stdout.contains("2 retried, 0 refused"), "{}", text.stdout);
}

#[test]
fn cancel_runs_the_fault_handler_of_the_waiting_scope_and_compensates_the_completed_one() {
    let (_dir, h) = host("cancel");
    let (id, _) = start(&h, "c1", true, "waiting");
    h.ok_json(&["cancel", &id]);
    let v = h.wait_status(&id, "terminated", WAIT);
    assert_eq!(v["fault"]["name"], "cairn.cancelled");
    let s = steps(&v);
    assert_eq!(&s[s.len() - 2..], ["handled", "undo-book"], "the handler ran, then the compensation: {s:?}");
    let reasons: Vec<String> = history(&h, &id).into_iter().map(|(r, _)| r).collect();
    assert_eq!(&reasons[reasons.len() - 2..], ["compensated", "cancelled"], "{reasons:?}");
    // The correlation was released with the instance.
    let (code, _) = h.send("lifecycle-go", json!({ "key": "c1" }), None);
    assert_eq!(code, 404);
    let out = h.cairn(&["cancel", &id]);
    assert!(out.stderr.contains("already terminated"), "{}", out.stderr);
}

#[test]
fn variables_an_operator_sets_are_checked_by_the_guest_before_they_are_stored() {
    let (_dir, h) = host("vars-checked");
    let (id, before) = start(&h, "v1", true, "waiting");
    h.ok_json(&["suspend", &id]);
    let out = h.cairn(&["vars", "set", &id, r#"{"bogus":1}"#]);
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("do not decode as the variables of process 't-lifecycle'"), "{}", out.stderr);
    assert!(out.stderr.contains("missing field `key`"), "{}", out.stderr);
    let out = h.cairn(&["vars", "set", &id, r#"{"key": 7}"#]);
    assert!(out.stderr.contains("invalid type: integer `7`"), "{}", out.stderr);
    assert_eq!(h.instance(&id)["variables"], before["variables"], "nothing was stored");
    assert!(!history(&h, &id).iter().any(|(r, _)| r == "variables-set"));

    // Variables that decode are stored, and the instance goes on with them.
    h.ok_json(&["vars", "set", &id, r#"{"key":"v1","allow":true,"steps":["edited"]}"#]);
    h.ok_json(&["resume", &id]);
    h.send("lifecycle-go", json!({ "key": "v1" }), None);
    let v = h.wait_status(&id, "completed", WAIT);
    assert_eq!(steps(&v), ["edited", "done"]);
}

#[test]
fn each_transactional_behaviour_override_shows_in_the_history() {
    let (_dir, h) = host("transactions");
    let (id, _) = start(&h, "t1", true, "waiting");
    let entries = history(&h, &id);
    let at = |path: &str| -> Vec<String> { entries.iter().filter(|(_, p)| p == path).map(|(r, _)| r.clone()).collect() };
    assert_eq!(at("main/before"), ["commit-before"], "{entries:?}");
    assert_eq!(at("main/after"), ["commit-after"], "{entries:?}");
    assert_eq!(at("main/own"), ["commit-before", "commit-after"], "{entries:?}");
    assert_eq!(at("main/part"), Vec::<String>::new(), "{entries:?}");
    // A snippet by default participates: no point of its own either.
    assert_eq!(at("main/check"), Vec::<String>::new(), "{entries:?}");
    assert_eq!(at("main/book"), ["scope-completed"], "{entries:?}");
}

/// Starts an instance of "versioned" (its newest version) for `key`, and
/// waits until it waits at `main/go`.
fn versioned(h: &Host, key: &str) -> String {
    let (code, v) = h.send("versioned-start", json!({ "key": key }), None);
    assert_eq!(code, 202, "{v}");
    let id = v["instance"].as_str().unwrap().to_string();
    h.wait_status(&id, "waiting", WAIT);
    id
}

#[test]
fn a_waiting_instance_migrates_to_another_version_mapped_by_activity_path() {
    let dir = TempDir::new("migrate");
    let h = Host::start(dir.path(), &["--quiet-guests"], &[]);
    let v1 = h.deploy("t_versioned_1", None)["version"].as_str().unwrap().to_string();
    let a = versioned(&h, "m1");
    let b = versioned(&h, "m2");
    let v2 = h.deploy("t_versioned_2", None)["version"].as_str().unwrap().to_string();
    let v3 = h.deploy("t_versioned_3", None)["version"].as_str().unwrap().to_string();
    let other = h.deploy("t_lifecycle", None)["version"].as_str().unwrap().to_string();

    // Same paths: it moves, and the target version's code runs from there on.
    let v = h.ok_json(&["migrate", &a, "--to", &v2]);
    assert_eq!(v["version"], v2.as_str());
    assert_eq!(v["position"], "main/go");
    h.send("versioned-go", json!({ "key": "m1" }), None);
    let v = h.wait_status(&a, "completed", WAIT);
    assert_eq!((v["variables"]["started_on"].as_u64(), v["variables"]["finished_on"].as_u64()), (Some(1), Some(2)));
    let history = h.ok_json(&["history", &a])["history"].as_array().unwrap().clone();
    assert!(history.iter().any(|e| e["reason"] == "migrated" && e["path"] == "main/go"), "{history:?}");

    // Refusals name the frame, the field or the process; nothing changes.
    let out = h.cairn(&["migrate", &b, "--to", &v3]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("frame 1 at 'main/go' has no activity at 'main/go'"), "{}", out.stderr);
    let out = h.cairn(&["migrate", &b, "--to", &v3, "--map", "main/go=main/await-go"]);
    assert!(out.stderr.contains("missing field `region`"), "{}", out.stderr);
    let out = h.cairn(&["migrate", &b, "--to", &other]);
    assert!(out.stderr.contains("cannot take an instance of process 'versioned'"), "{}", out.stderr);
    assert_eq!(h.instance(&b)["version"], v1.as_str());

    // Given the new variable while suspended, it moves, renamed activity and all.
    h.ok_json(&["suspend", &b]);
    h.ok_json(&["vars", "set", &b, r#"{"key":"m2","started_on":1,"finished_on":0,"region":"eu"}"#]);
    let v = h.ok_json(&["migrate", &b, "--to", &v3, "--map", "main/go=main/await-go"]);
    assert_eq!((v["status"].as_str(), v["position"].as_str()), (Some("suspended"), Some("main/await-go")));
    h.ok_json(&["resume", &b]);
    h.send("versioned-go", json!({ "key": "m2" }), None);
    let v = h.wait_status(&b, "completed", WAIT);
    assert_eq!(v["variables"]["finished_on"], 3);
}

#[test]
fn a_bulk_migration_moves_what_can_move_and_reports_the_rest() {
    let dir = TempDir::new("migrate-bulk");
    let h = Host::start(dir.path(), &["--quiet-guests"], &[]);
    let v1 = h.deploy("t_versioned_1", None)["version"].as_str().unwrap().to_string();
    let ready = versioned(&h, "k1");
    let lacking = versioned(&h, "k2");
    h.ok_json(&["suspend", &ready]);
    h.ok_json(&["vars", "set", &ready, r#"{"key":"k1","started_on":1,"finished_on":0,"region":"eu"}"#]);
    let v3 = h.deploy("t_versioned_3", None)["version"].as_str().unwrap().to_string();
    let report = h.ok_json(&["migrate", "--from", &v1, "--to", &v3, "--map", "main/go=main/await-go"]);
    assert_eq!(report["migrated"], json!([ready]), "{report}");
    let refused = report["refused"].as_array().unwrap();
    assert_eq!(refused.len(), 1, "{report}");
    assert_eq!(refused[0]["id"], lacking.as_str());
    assert!(refused[0]["error"].as_str().unwrap().contains("missing field `region`"), "{report}");
    assert_eq!(h.instance(&ready)["version"], v3.as_str());
    assert_eq!(h.instance(&lacking)["version"], v1.as_str());
}
