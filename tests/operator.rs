//! Operator verbs through the real binary: suspend, resume, terminate,
//! setting the variables of a suspended instance, and its history.

use cairn_tests::{Host, TempDir};
use serde_json::json;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);

fn waiting_instance(h: &Host, key: &str) -> String {
    let (_, v) = h.send("versioned-start", json!({ "key": key }), None);
    let id = v["instance"].as_str().unwrap().to_string();
    h.wait_status(&id, "waiting", WAIT);
    id
}

#[test]
fn a_suspended_instance_queues_messages_takes_new_variables_and_resumes() {
    let dir = TempDir::new("suspend");
    let h = Host::start(dir.path(), &["--quiet-guests"], &[]);
    h.deploy("t_versioned_1", None);
    let id = waiting_instance(&h, "s1");

    let v = h.ok_json(&["suspend", &id]);
    assert_eq!(v["status"], "suspended");
    assert_eq!(h.ok_json(&["ls", "--status", "suspended"])["count"], 1);
    let again = h.cairn(&["suspend", &id]);
    assert_eq!(again.code, 1);
    assert!(again.stderr.contains("already suspended"), "{}", again.stderr);

    // The message is accepted and waits: a suspended instance does nothing.
    let (status, _) = h.send("versioned-go", json!({ "key": "s1" }), None);
    assert_eq!(status, 202);
    std::thread::sleep(Duration::from_millis(300));
    let v = h.instance(&id);
    assert_eq!(v["status"], "suspended");
    assert_eq!(v["inbox"], 1);

    let set = h.ok_json(&["vars", "set", &id, r#"{"key":"s1","started_on":99,"finished_on":0}"#]);
    assert_eq!(set["variables"]["started_on"], 99);
    h.ok_json(&["resume", &id]);
    let v = h.wait_status(&id, "completed", WAIT);
    assert_eq!(v["variables"]["started_on"], 99, "the operator's variables were kept");
    assert_eq!(v["variables"]["finished_on"], 1);

    let history = h.cairn(&["history", &id]);
    assert_eq!(history.code, 0);
    for reason in ["suspended", "variables-set", "resumed", "completed"] {
        assert!(history.stdout.contains(reason), "{reason} missing from:\n{}", history.stdout);
    }
}

#[test]
fn verbs_that_do_not_fit_the_instance_are_refused() {
    let dir = TempDir::new("verbs-refused");
    let h = Host::start(dir.path(), &["--quiet-guests"], &[]);
    h.deploy("t_versioned_1", None);
    let id = waiting_instance(&h, "r1");
    let out = h.cairn(&["resume", &id]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("is waiting, not suspended"), "{}", out.stderr);
    let out = h.cairn(&["vars", "set", &id, "{}"]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("suspend it before setting its variables"), "{}", out.stderr);
    let out = h.cairn(&["vars", "set", &id, "{nope"]);
    assert_eq!(out.code, 2);
    let out = h.cairn(&["suspend", "no-such-instance"]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("no instance with id"), "{}", out.stderr);
}

#[test]
fn terminate_ends_a_waiting_instance_and_releases_its_correlation() {
    let dir = TempDir::new("terminate");
    let h = Host::start(dir.path(), &["--quiet-guests"], &[]);
    h.deploy("t_versioned_1", None);
    let id = waiting_instance(&h, "t1");
    let v = h.ok_json(&["terminate", &id]);
    assert_eq!(v["status"], "terminated");
    let (status, v) = h.send("versioned-go", json!({ "key": "t1" }), None);
    assert_eq!(status, 404, "nothing correlates with a terminated instance: {v}");
    let out = h.cairn(&["terminate", &id]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("already terminated"), "{}", out.stderr);
}
