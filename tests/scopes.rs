//! Long-running scopes through the real binary: compensation order and data,
//! compensation of one named scope, fault handlers (by name, catch-all,
//! rethrow, fault data), and a crash in the middle of compensation.

use cairn_tests::{history_steps, quiet_host, Host, TempDir};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(60);

fn start(h: &Host, process: &str, mode: &str) -> (i32, Value) {
    let out = h.cairn(&["start", process, "--input", &json!({ "mode": mode }).to_string(), "--wait", "--json"]);
    (out.code, out.json())
}

const UNDO_TRACE: [&str; 3] = ["undo b1 at step 2", "undo b at step 3", "undo a at step 1"];

#[test]
fn a_failing_last_scope_compensates_the_completed_ones_in_reverse_with_their_own_variables() {
    let (_d, h) = quiet_host("compensate-order", &[]);
    h.deploy("t_compensation", None);
    let (code, v) = start(&h, "compensation", "fail");
    assert_eq!(code, 4, "{v:#}");
    assert_eq!(v["status"], "faulted");
    assert_eq!(v["variables"]["trace"], json!(UNDO_TRACE), "newest first, inner scopes before their outer one");
    assert_eq!(v["fault"]["name"], "boom");
    assert_eq!(v["fault"]["path"], "main/mode/outer/outer-body/c/c-body/boom");
    let r = history_steps(&v);
    let completed: Vec<&str> = r.iter().filter(|(reason, _)| reason == "scope-completed").map(|(_, p)| p.as_str()).collect();
    assert_eq!(
        completed,
        ["main/mode/outer/outer-body/a", "main/mode/outer/outer-body/b/b-body/b1", "main/mode/outer/outer-body/b"],
        "each long-running scope persists at its end"
    );
    assert_eq!(r.iter().filter(|(reason, _)| reason == "compensated").count(), 3, "one persistence point per compensation step");
}

#[test]
fn a_fault_handler_can_compensate_one_named_scope_and_continue() {
    let (_d, h) = quiet_host("compensate-named", &[]);
    h.deploy("t_compensation", None);
    let (code, v) = start(&h, "compensation", "refund");
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(v["variables"]["trace"], json!(["undo reserve at step 5"]));
    assert_eq!(v["variables"]["noted"], true);
}

#[test]
fn fault_handlers_catch_by_name_or_catch_all_and_see_the_fault_data() {
    let (_d, h) = quiet_host("fault-handlers", &[]);
    h.deploy("t_faults", None);

    let (code, v) = start(&h, "faults", "known");
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(v["variables"]["caught"], "known");
    assert_eq!(v["variables"]["caught_data"], json!({ "x": 1 }), "fault data reaches the handler");
    assert_eq!(v["variables"]["recovered"], true);
    assert_eq!(v["variables"]["after"], true, "after a handled fault the process goes on after the scope");

    let (code, v) = start(&h, "faults", "other");
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(v["variables"]["caught"], "any:other");
    assert_eq!(v["variables"]["after"], true);

    let (code, v) = start(&h, "faults", "none");
    assert_eq!(code, 0);
    assert_eq!(v["variables"]["caught"], Value::Null);
}

#[test]
fn a_rethrown_fault_leaves_the_process_with_its_original_path_and_data() {
    let (_d, h) = quiet_host("rethrow", &[]);
    h.deploy("t_faults", None);
    let (code, v) = start(&h, "faults", "fatal");
    assert_eq!(code, 4, "{v:#}");
    assert_eq!(v["status"], "faulted");
    assert_eq!(v["variables"]["caught"], "fatal", "the handler ran before rethrowing");
    assert_eq!(v["variables"]["after"], false);
    assert_eq!(v["fault"]["name"], "fatal");
    assert_eq!(v["fault"]["path"], "main/work/act");
    assert_eq!(v["fault"]["data"], "\"why\"");
}

#[test]
fn a_crash_in_the_middle_of_compensation_runs_each_handler_exactly_once() {
    let dir = TempDir::new("compensate-crash");
    // Abort right after the first compensation step is committed.
    let mut h = Host::start(dir.path(), &["--quiet-guests"], &[("CAIRN_FAILPOINT", "after-compensation-step")]);
    h.deploy("t_compensation", None);
    let started = h.ok_json(&["start", "compensation", "--input", r#"{"mode":"fail"}"#]);
    let id = started["id"].as_str().unwrap().to_string();
    h.wait_down();
    h.kill9();

    let h = Host::start(dir.path(), &["--quiet-guests"], &[]);
    let v = h.wait_status(&id, "faulted", WAIT);
    assert_eq!(v["variables"]["trace"], json!(UNDO_TRACE), "the step done before the crash is not run again");
    assert_eq!(history_steps(&v).iter().filter(|(reason, _)| reason == "compensated").count(), 3);
}

fn guest_records(h: &Host, message: &str, key: &str) -> usize {
    h.guest_log().iter().filter(|r| r["message"] == message && r["fields"]["key"] == key).count()
}

fn deploy_atomic(h: &Host) {
    h.deploy("t_recorder", Some("recorder"));
    h.deploy("t_atomic", None);
}

#[test]
fn an_atomic_scope_shares_a_non_serializable_object_and_persists_once() {
    let (_d, h) = quiet_host("atomic-ok", &[]);
    deploy_atomic(&h);
    let out = h.cairn(&["start", "atomic", "--input", r#"{"mode":"ok","key":"a1"}"#, "--wait", "--json"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let v = out.json();
    assert_eq!(v["variables"]["total"], 10);
    assert_eq!(v["variables"]["opened_by"], "a1", "the second handler saw the object the first made");
    assert_eq!(v["variables"]["uses_seen"], json!([1, 2, 0]), "shared within the scope, gone after it");
    let r = history_steps(&v);
    let r: Vec<(&str, &str)> = r.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    assert_eq!(r, [("created", ""), ("scope-completed", "main/batch"), ("completed", "")], "no persistence point inside");
    let deadline = Instant::now() + WAIT;
    while guest_records(&h, "recorded", "a1") == 0 {
        assert!(Instant::now() < deadline, "the buffered call never left");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_failing_atomic_scope_rolls_back_retries_and_drops_its_buffered_sends() {
    let (_d, h) = quiet_host("atomic-fail", &[]);
    deploy_atomic(&h);
    let out = h.cairn(&["start", "atomic", "--input", r#"{"mode":"fail","key":"f1"}"#, "--wait", "--json"]);
    assert_eq!(out.code, 4, "{}{}", out.stdout, out.stderr);
    let v = out.json();
    assert_eq!(v["fault"]["name"], "flaky");
    assert_eq!(v["variables"]["total"], 0, "variables rolled back to the scope's start");
    assert_eq!(v["variables"]["uses_seen"], json!([]));
    assert_eq!(guest_records(&h, "atomic attempt", "f1"), 3, "three attempts by the retry policy");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(guest_records(&h, "recorded", "f1"), 0, "buffered sends of failed attempts never leave");
}

#[test]
fn a_crash_inside_an_atomic_scope_leaves_nothing_of_it_and_it_runs_again() {
    let dir = TempDir::new("atomic-crash");
    // Abort at the scope's second handler call, after the first one ran.
    let mut h = Host::start(dir.path(), &["--quiet-guests"], &[("CAIRN_FAILPOINT", "atomic-call:2")]);
    deploy_atomic(&h);
    let started = h.ok_json(&["start", "atomic", "--input", r#"{"mode":"ok","key":"c1"}"#]);
    let id = started["id"].as_str().unwrap().to_string();
    h.wait_down();
    h.kill9();
    assert_eq!(guest_records(&h, "atomic attempt", "c1"), 1);

    let h = Host::start(dir.path(), &["--quiet-guests"], &[]);
    let v = h.wait_status(&id, "completed", WAIT);
    assert_eq!(v["variables"]["total"], 10, "the scope ran again from its start, once");
    assert_eq!(guest_records(&h, "atomic attempt", "c1"), 2);
    let r = history_steps(&v);
    assert_eq!(r.iter().filter(|(reason, _)| reason == "scope-completed").count(), 1);
    let deadline = Instant::now() + WAIT;
    while guest_records(&h, "recorded", "c1") == 0 {
        assert!(Instant::now() < deadline, "the buffered call never left");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(guest_records(&h, "recorded", "c1"), 1, "the buffered call left once");
}

#[test]
fn a_scope_whose_deadline_passes_while_waiting_faults_with_a_timeout_its_handler_can_catch() {
    let (_d, h) = quiet_host("scope-timeout", &[]);
    h.deploy("t_faults", None);
    let (code, v) = start(&h, "faults", "slow");
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(v["variables"]["timed_out"], true);
    assert_eq!(v["variables"]["after"], true);
    let r = history_steps(&v);
    assert!(r.iter().any(|(reason, path)| reason == "waiting" && path == "main/slow?/window/never"), "{r:?}");
}
