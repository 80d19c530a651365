//! The host under storage faults and greedy input, through the real binary:
//! a full disk answers 507 and reports `degraded`, and once space is freed
//! the host takes writes again and the instance that was stopped goes on,
//! without a restart; an undecodable record is reported by key (health
//! `degraded`) while every other instance goes on; a message body over the
//! cap is refused with `cairn.too-large`; fuel metering stops a spinning
//! guest with `cairn.out-of-fuel`.

use cairn_tests::{eventually, store_kind, Host, TempDir};
use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);

/// A tmpfs of `mib` MiB mounted at `at`, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, mib: u32) -> Option<Tmpfs> {
        std::fs::create_dir_all(at).unwrap();
        let out = Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"]).arg(at).output().ok()?;
        if !out.status.success() {
            eprintln!("SKIPPED: cannot mount a tmpfs here ({}): the full-disk test needs root", String::from_utf8_lossy(&out.stderr).trim());
            return None;
        }
        Some(Tmpfs(at.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Writes `path` until the file system is full.
fn fill(path: &Path) {
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0x5au8; 64 << 10];
    while f.write_all(&chunk).is_ok() {}
    let _ = f.sync_all();
}

fn health(h: &Host) -> Value {
    let (status, v) = h.get("/v1/health");
    assert_eq!(status, 200, "{v}");
    v
}

#[test]
fn a_full_disk_answers_507_then_the_host_resumes_when_space_is_freed() {
    if store_kind() != "rocksdb" {
        return;
    }
    let dir = TempDir::new("full-disk");
    let Some(_tmpfs) = Tmpfs::mount(&dir.path().join("store"), 48) else { return };
    let h = Host::start(dir.path(), &["--quiet-guests", "--call-timeout-ms", "20000"], &[]);
    h.deploy("t_robust", None);

    // An instance in the middle of a long call when the disk fills up: its
    // first step is committed, the next persistence point comes after it.
    let v = h.ok_json(&["start", "robust", "--input", r#"{"mode":"sleep","ms":4000}"#]);
    let id = v["id"].as_str().unwrap().to_string();
    eventually("the first step is committed", WAIT, || h.instance(&id)["variables"]["step"] == 1);
    let ballast = dir.path().join("store").join("ballast");
    fill(&ballast);

    // New work is refused with 507 and a JSON error; nothing is half-written.
    let start = |input: Value| h.post("/v1/instances", json!({ "process": "robust", "input": input }).to_string().as_bytes());
    let refused = std::cell::RefCell::new((0, Value::Null));
    eventually("a start is refused for the full disk", WAIT, || {
        *refused.borrow_mut() = start(json!({"mode": "ok"}));
        refused.borrow().0 == 507
    });
    let refused = refused.into_inner();
    let message = refused.1["error"].as_str().unwrap_or_default().to_string();
    assert!(message.contains("No space left on device"), "the error says why: {}", refused.1);
    let v = health(&h);
    assert_eq!(v["status"], "degraded", "{v:#}");
    assert!(v["reasons"][0].as_str().unwrap().contains("failing"), "{v:#}");
    // The stopped instance has not moved past its last persistence point.
    assert_eq!(h.instance(&id)["variables"]["step"], 1);

    // Space comes back: without a restart, writes succeed, health is ok and
    // the instance that was stopped completes.
    std::fs::remove_file(&ballast).unwrap();
    eventually("health is ok again", WAIT, || health(&h)["status"] == "ok");
    h.wait_status(&id, "completed", WAIT);
    assert_eq!(h.instance(&id)["variables"]["step"], 2);
    let (status, v) = start(json!({"mode": "ok"}));
    assert_eq!(status, 201, "{v}");
    let new = v["id"].as_str().unwrap().to_string();
    h.wait_status(&new, "completed", WAIT);
    assert!(h.server_log().contains("writes to the store succeed again"), "{}", h.server_log());
}

#[test]
fn a_message_body_over_the_cap_is_refused_with_too_large() {
    let dir = TempDir::new("message-cap");
    let h = Host::start(dir.path(), &["--quiet-guests", "--max-variables-bytes", "10000"], &[]);
    h.deploy("t_robust", None);
    let (status, v) = h.send("start", json!({ "blob": "z".repeat(20_000) }), None);
    assert_eq!(status, 413, "{v}");
    let message = v["error"].as_str().unwrap_or_default();
    assert!(message.contains("cairn.too-large") && message.contains("10000"), "names the fault and the cap: {message}");
    // Under the cap, the same send is taken.
    let (status, v) = h.send("nothing-listens", json!({ "blob": "z".repeat(100) }), None);
    assert_ne!(status, 413, "{v}");
}

#[test]
fn fuel_metering_stops_a_spinning_guest_with_out_of_fuel() {
    let dir = TempDir::new("fuel");
    let h = Host::start(dir.path(), &["--quiet-guests", "--fuel-per-call", "50000000"], &[]);
    h.deploy("t_robust", None);
    // A little work fits in the fuel.
    let v = h.ok_json(&["start", "robust", "--input", r#"{"mode":"spin","count":1}"#, "--wait"]);
    assert_eq!(v["status"], "completed", "{v:#}");
    // A billion rounds do not: the call faults, the first step stays.
    let v = h.ok_json(&["start", "robust", "--input", r#"{"mode":"spin","count":1000}"#]);
    let id = v["id"].as_str().unwrap().to_string();
    let v = h.wait_status(&id, "faulted", WAIT);
    assert_eq!(v["fault"]["name"], "cairn.out-of-fuel", "{v:#}");
    assert_eq!(v["variables"]["step"], 1, "{v:#}");
}

/// Overwrites the snapshot of `instance` in a stopped host's embedded store
/// with bytes that do not decode.
fn damage_snapshot(data: &Path, instance: &str) {
    let path = data.join("db");
    let families = rocksdb::DB::list_cf(&rocksdb::Options::default(), &path).unwrap();
    let db = rocksdb::DB::open_cf(&rocksdb::Options::default(), &path, &families).unwrap();
    let instances = db.cf_handle("instances").unwrap();
    assert!(db.get_cf(instances, instance).unwrap().is_some(), "no snapshot of {instance}");
    db.put_cf(instances, instance, b"\x01{\"this is\": not a snapshot").unwrap();
    db.flush_cf(instances).unwrap();
}

#[test]
fn an_undecodable_snapshot_is_reported_by_key_and_every_other_instance_goes_on() {
    if store_kind() != "rocksdb" {
        return;
    }
    let dir = TempDir::new("damaged-record");
    let mut h = Host::start(dir.path(), &["--quiet-guests"], &[]);
    h.deploy("t_robust", None);
    // Three instances in the middle of a call when the host dies.
    let ids: Vec<String> = (0..3)
        .map(|_| h.ok_json(&["start", "robust", "--input", r#"{"mode":"sleep","ms":3000}"#])["id"].as_str().unwrap().to_string())
        .collect();
    for id in &ids {
        eventually("the first step is committed", WAIT, || h.instance(id)["variables"]["step"] == 1);
    }
    h.kill9();
    damage_snapshot(&dir.path().join("store"), &ids[1]);

    let h = Host::start(dir.path(), &["--quiet-guests"], &[]);
    // The others are recovered and complete.
    h.wait_status(&ids[0], "completed", WAIT);
    h.wait_status(&ids[2], "completed", WAIT);
    // The damaged one is reported by table and key, and health says so.
    let v = health(&h);
    assert_eq!(v["status"], "degraded", "{v:#}");
    assert_eq!(v["damage"][0]["table"], "instances", "{v:#}");
    assert_eq!(v["damage"][0]["key"], ids[1].as_str(), "{v:#}");
    assert!(v["reasons"][0].as_str().unwrap().contains("cairn check"), "{v:#}");
    let log = h.server_log();
    assert!(log.contains("DAMAGED DATA") && log.contains(&ids[1]), "{log}");
    let (status, v) = h.get(&format!("/v1/instances/{}", ids[1]));
    assert_eq!(status, 500, "{v}");
    assert!(v["error"].as_str().unwrap().contains(&ids[1]), "the error names the key: {v}");
    // Listing skips it (it was reported) and shows the rest.
    let listed: Vec<Value> = h.instances("robust");
    assert_eq!(listed.len(), 2, "{listed:?}");
}
