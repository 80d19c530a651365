//! Child processes, the suspend activity and breakpoints through the real
//! binary: start-process with a report back, a child that outlives its
//! terminated parent, a crash during start-process, and operator stops.

use cairn_tests::{Host, TempDir};
use serde_json::{json, Value};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);

fn host(dir: &TempDir, env: &[(&str, &str)]) -> Host {
    let h = Host::start(dir.path(), &["--quiet-guests"], env);
    h.deploy("t_child", None);
    h.deploy("t_parent", None);
    h
}

fn start_parent(h: &Host, key: &str, mode: &str) -> String {
    let (status, v) = h.send("parent-start", json!({ "key": key, "mode": mode }), None);
    assert_eq!(status, 202, "{v}");
    v["instance"].as_str().unwrap().to_string()
}

fn children(h: &Host) -> Vec<Value> {
    h.instances("child")
}

fn eventually(what: &str, f: impl Fn() -> bool) {
    cairn_tests::eventually(what, WAIT, f)
}

#[test]
fn a_started_child_runs_on_its_own_and_reports_back_to_its_parent() {
    let dir = TempDir::new("children");
    let h = host(&dir, &[]);
    let parent = start_parent(&h, "p1", "");
    let v = h.wait_status(&parent, "completed", WAIT);
    assert_eq!(v["variables"]["reported"], true);
    let reasons: Vec<&str> = v["history"].as_array().unwrap().iter().map(|e| e["reason"].as_str().unwrap()).collect();
    assert!(reasons.contains(&"dispatch"), "starting the child is a persistence point of the parent: {reasons:?}");
    let kids = children(&h);
    assert_eq!(kids.len(), 1);
    assert_eq!(kids[0]["status"], "completed");
}

#[test]
fn a_child_outlives_a_parent_terminated_while_it_runs() {
    let dir = TempDir::new("orphan");
    let h = host(&dir, &[]);
    let parent = start_parent(&h, "p2", "");
    eventually("the child started", || children(&h).len() == 1);
    h.ok_json(&["terminate", &parent]);
    let kid = children(&h)[0]["id"].as_str().unwrap().to_string();
    let v = h.wait_status(&kid, "completed", WAIT);
    assert_eq!(v["variables"]["worked"], true, "the child finished its work; its report found no parent");
    assert_eq!(h.instance(&parent)["status"], "terminated");
}

#[test]
fn a_crash_right_after_start_process_commits_still_starts_the_child_exactly_once() {
    let dir = TempDir::new("start-crash");
    let mut h = host(&dir, &[("CAIRN_FAILPOINT", "after-commit-dispatch")]);
    let parent = start_parent(&h, "p3", "");
    h.wait_down();
    h.kill9();
    let h = Host::start(dir.path(), &["--quiet-guests"], &[]);
    let v = h.wait_status(&parent, "completed", WAIT);
    assert_eq!(v["variables"]["reported"], true);
    assert_eq!(children(&h).len(), 1, "the child exists exactly once");
}

#[test]
fn a_suspend_activity_stops_the_instance_until_an_operator_resumes_it() {
    let dir = TempDir::new("suspend-activity");
    let h = host(&dir, &[]);
    let parent = start_parent(&h, "p4", "suspend");
    let v = h.wait_status(&parent, "suspended", WAIT);
    assert_eq!(v["history"].as_array().unwrap().last().unwrap()["path"], "main/review?/review");
    eventually("a suspended instance leaves memory", || h.instance(&parent)["in_memory"] == false);
    h.ok_json(&["resume", &parent]);
    let v = h.wait_status(&parent, "completed", WAIT);
    assert_eq!(v["variables"]["reported"], true, "the child's report waited in the inbox");
}

#[test]
fn a_breakpoint_persists_and_suspends_the_instance_before_the_activity() {
    let dir = TempDir::new("breakpoint");
    let h = host(&dir, &[]);
    let bad = h.cairn(&["break", "set", "parent", "main/nowhere"]);
    assert_eq!(bad.code, 1);
    assert!(bad.stderr.contains("has no activity at 'main/nowhere'") && bad.stderr.contains("main/spawn"), "{}", bad.stderr);
    let set = h.cairn(&["break", "set", "parent", "main/spawn"]);
    assert_eq!(set.code, 0, "{}", set.stderr);
    assert_eq!(h.ok_json(&["break", "ls"])["breakpoints"], json!([{ "process": "parent", "path": "main/spawn" }]));

    let parent = start_parent(&h, "p5", "");
    let v = h.wait_status(&parent, "suspended", WAIT);
    assert_eq!(v["position"], "main/spawn");
    assert_eq!(v["history"].as_array().unwrap().last().unwrap()["reason"], "breakpoint");
    assert!(children(&h).is_empty(), "stopped before the activity ran");
    let set = h.ok_json(&["vars", "set", &parent, r#"{"key":"p5","mode":"","reported":false,"note":"checked"}"#]);
    assert_eq!(set["variables"]["note"], "checked");
    h.cairn(&["break", "clear", "parent", "main/spawn"]);
    h.ok_json(&["resume", &parent]);
    let v = h.wait_status(&parent, "completed", WAIT);
    assert_eq!(v["variables"]["note"], "checked");
    assert_eq!(children(&h).len(), 1);
}
