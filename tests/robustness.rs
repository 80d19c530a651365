//! Robustness of the host against damage and greedy guests: a damaged
//! compiled cache is never executed (it is compiled again), variables past
//! `--max-variables-bytes` fault the call with `cairn.too-large`, and a call's
//! guest log is bounded by `--guest-log-max-bytes-per-call`, and guests
//! that spin or sleep hold up no other instance.

use cairn_tests::{Host, TempDir};
use serde_json::json;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);

/// The compiled cache files of a host's data directory.
fn cache_files(dir: &TempDir) -> Vec<std::path::PathBuf> {
    let compiled = dir.path().join("store").join("compiled");
    let mut files: Vec<_> = std::fs::read_dir(&compiled)
        .unwrap_or_else(|e| panic!("{}: {e}", compiled.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "cwasm"))
        .collect();
    files.sort();
    files
}

#[test]
fn a_damaged_compiled_cache_is_compiled_again_not_executed() {
    let dir = TempDir::new("cwasm-damage");
    let mut h = Host::start(dir.path(), &["--quiet-guests"], &[]);
    h.deploy("t_robust", None);
    let v = h.ok_json(&["start", "robust", "--input", r#"{"mode":"ok"}"#, "--wait"]);
    assert_eq!(v["status"], "completed", "{v:#}");
    h.terminate();

    let files = cache_files(&dir);
    assert!(!files.is_empty(), "no compiled cache was written");
    let mut damaged = Vec::new();
    for f in &files {
        let mut bytes = std::fs::read(f).unwrap();
        let mid = bytes.len() / 2;
        for b in &mut bytes[mid..mid + 64] {
            *b ^= 0xa5;
        }
        std::fs::write(f, &bytes).unwrap();
        damaged.push(bytes);
    }

    let h = Host::start(dir.path(), &["--quiet-guests"], &[]);
    let v = h.ok_json(&["start", "robust", "--input", r#"{"mode":"ok"}"#, "--wait"]);
    assert_eq!(v["status"], "completed", "{v:#}");
    assert_eq!(v["variables"]["step"], 2, "{v:#}");
    assert_eq!(h.get("/v1/health").0, 200, "the host is down:\n{}", h.server_log());
    assert!(h.server_log().contains("compiling again"), "the damage went unnoticed:\n{}", h.server_log());
    // The cache was written again, whole.
    for (f, bad) in files.iter().zip(&damaged) {
        assert_ne!(&std::fs::read(f).unwrap(), bad, "{} was not rewritten", f.display());
    }
}

#[test]
fn variables_past_the_cap_fault_the_call_and_keep_the_last_persistence_point() {
    let dir = TempDir::new("too-large");
    let h = Host::start(dir.path(), &["--quiet-guests", "--max-variables-bytes", "100000"], &[]);
    h.deploy("t_robust", None);
    let v = h.ok_json(&["start", "robust", "--input", &json!({"mode": "grow", "size": 200_000}).to_string()]);
    let id = v["id"].as_str().unwrap().to_string();
    let v = h.wait_status(&id, "faulted", WAIT);
    assert_eq!(v["fault"]["name"], "cairn.too-large", "{v:#}");
    let message = v["fault"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("100000"), "the message names the cap: {message}");
    assert!(message.contains("bytes"), "the message names the size: {message}");
    assert_eq!(v["fault"]["path"], "main/act", "{v:#}");
    // The variables of the last persistence point, without the blob.
    assert_eq!(v["variables"]["step"], 1, "{v:#}");
    assert_eq!(v["variables"]["blob"], "", "{v:#}");

    // Under the cap, the same guest completes.
    let ok = h.ok_json(&["start", "robust", "--input", &json!({"mode": "grow", "size": 50_000}).to_string(), "--wait"]);
    assert_eq!(ok["status"], "completed", "{ok:#}");
}

#[test]
fn a_calls_guest_log_is_bounded_with_one_notice() {
    const QUOTA: usize = 10_000;
    const COUNT: usize = 1000;
    let dir = TempDir::new("log-quota");
    let h = Host::start(dir.path(), &["--quiet-guests", "--guest-log-max-bytes-per-call", &QUOTA.to_string()], &[]);
    h.deploy("t_robust", None);
    let v = h.ok_json(&["start", "robust", "--input", &json!({"mode": "log", "size": 100, "count": COUNT}).to_string(), "--wait"]);
    assert_eq!(v["status"], "completed", "{v:#}");
    let id = v["id"].as_str().unwrap();

    let text = std::fs::read_to_string(dir.path().join("store").join("guest-log.jsonl")).unwrap();
    let lines: Vec<&str> = text.lines().filter(|l| l.contains(id)).collect();
    let (notices, records): (Vec<&str>, Vec<&str>) = lines.iter().partition(|l| l.contains("guest log quota exceeded"));
    assert_eq!(notices.len(), 1, "one notice: {notices:#?}");
    let kept_bytes: usize = records.iter().map(|l| l.len() + 1).sum();
    assert!(kept_bytes <= QUOTA, "{kept_bytes} bytes of guest log past the quota of {QUOTA}");
    assert!(!records.is_empty(), "records within the quota are kept");
    let notice: serde_json::Value = serde_json::from_str(notices[0]).unwrap();
    let expected = format!("guest log quota exceeded: {} records dropped (per call", COUNT - records.len());
    assert!(notice["message"].as_str().unwrap().starts_with(&expected), "{notice:#}");
    assert_eq!(notice["at"], "main/act", "{notice:#}");
}

#[test]
fn the_call_deadline_bounds_a_wasi_sleep() {
    let dir = TempDir::new("sleep-deadline");
    let h = Host::start(dir.path(), &["--quiet-guests", "--call-timeout-ms", "2000"], &[]);
    h.deploy("t_robust", None);
    let started = std::time::Instant::now();
    let v = h.ok_json(&["start", "robust", "--input", &json!({"mode": "sleep", "ms": 20_000}).to_string()]);
    let id = v["id"].as_str().unwrap().to_string();
    let v = h.wait_status(&id, "faulted", WAIT);
    let took = started.elapsed();
    assert_eq!(v["fault"]["name"], "cairn.timeout", "{v:#}");
    assert!(took < Duration::from_secs(10), "the sleep was not cut at the deadline: {took:?}");
    assert!(took >= Duration::from_millis(1900), "faulted before the deadline: {took:?}");

    // A short sleep within the deadline completes.
    let ok = h.ok_json(&["start", "robust", "--input", &json!({"mode": "sleep", "ms": 100}).to_string(), "--wait"]);
    assert_eq!(ok["status"], "completed", "{ok:#}");
}

/// Guest code runs on the runtime's worker threads, on fibers that yield at
/// every epoch tick, and a WASI sleep is a timer the worker does not wait on:
/// guests that spin or sleep for their whole call deadline hold up no other
/// instance. More spinners than the host has worker threads, and a sleeper,
/// are all still in their calls when an instance started after them has
/// completed.
#[test]
fn spinning_and_sleeping_guests_hold_up_no_other_instance() {
    let dir = TempDir::new("no-hold-up");
    let h = Host::start(dir.path(), &["--quiet-guests", "--call-timeout-ms", "30000"], &[]);
    h.deploy("t_misbehave", None);
    h.deploy("t_robust", None);
    h.deploy("t_basics", None);
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut busy = Vec::new();
    for _ in 0..workers + 2 {
        busy.push(h.ok_json(&["start", "misbehave", "--input", r#"{"mode":"loop"}"#])["id"].as_str().unwrap().to_string());
    }
    busy.push(h.ok_json(&["start", "robust", "--input", &json!({"mode": "sleep", "ms": 60_000}).to_string()])["id"].as_str().unwrap().to_string());

    for _ in 0..3 {
        let ok = h.ok_json(&["start", "basics", "--input", r#"{"mode":"ok"}"#, "--wait"]);
        assert_eq!(ok["status"], "completed", "{ok:#}");
    }
    for id in &busy {
        let v = h.instance(id);
        assert_eq!(v["status"], "running", "still in its call, not yet past its deadline: {v:#}");
    }
}
