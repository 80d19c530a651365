//! `cairn check` and `cairn repair` on a stopped host's embedded store,
//! through the real binary: a clean store checks clean; a record that does
//! not decode and a flipped byte in a table file are found and named; repair
//! drops what it must, says so line by line, and a host started afterwards
//! serves every other instance.

use cairn_tests::{cairn_bin, Host, Out, TempDir};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);

/// Runs `cairn ARGS` (no server involved).
fn cairn(args: &[&str]) -> Out {
    let out = Command::new(cairn_bin()).args(args).output().expect("run cairn");
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// An embedded host with the order-approval example deployed and `n`
/// orders waiting for approval (each with a timer and a correlation); their
/// instance ids.
fn host_with_waiting_orders(dir: &Path, n: usize) -> (Host, Vec<String>) {
    let h = Host::start_embedded(dir, &["--quiet-guests"], &[]);
    h.deploy("pricing", None);
    h.deploy("notifier", None);
    h.deploy("order_approval", None);
    let mut ids = Vec::new();
    for i in 0..n {
        let body = json!({"order_id": format!("o-{i:04}"), "customer": "bob", "lines": [{"sku": "gizmo", "qty": 4}], "approval_window_ms": 3_600_000});
        let (status, v) = h.post("/v1/messages", json!({"operation": "submit-order", "body": body, "wait_reply": true}).to_string().as_bytes());
        assert!(status < 300, "{status} {v}");
        ids.push(v["instance"].as_str().unwrap().to_string());
    }
    for id in &ids {
        h.wait_status(id, "waiting", WAIT);
    }
    (h, ids)
}

fn data(dir: &Path) -> PathBuf {
    dir.join("store")
}

/// Opens the stopped store's RocksDB directly, every column family.
fn open_db(data: &Path) -> rocksdb::DB {
    let path = data.join("db");
    let families = rocksdb::DB::list_cf(&rocksdb::Options::default(), &path).unwrap();
    rocksdb::DB::open_cf(&rocksdb::Options::default(), &path, families).unwrap()
}

fn problems(out: &Out) -> Vec<Value> {
    out.json()["problems"].as_array().cloned().unwrap_or_default()
}

#[test]
fn an_undecodable_record_is_reported_by_key_and_repair_drops_it_and_what_refers_to_it() {
    let dir = TempDir::new("check-undecodable");
    let (mut h, ids) = host_with_waiting_orders(dir.path(), 6);
    let store = data(dir.path());
    let store = store.to_str().unwrap();

    // A host holds the store: refused, with what to do.
    let out = cairn(&["check", store]);
    assert_eq!(out.code, 2, "{}{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("is serving") && out.stderr.contains("Stop it first"), "{}", out.stderr);

    assert!(h.terminate().success(), "{}", h.server_log());
    let out = cairn(&["check", store]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("clean"), "{}", out.stdout);
    let out = cairn(&["check", store, "--json"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let report = out.json();
    assert_eq!(report["clean"], true);
    let instances = report["tables"].as_array().unwrap().iter().find(|t| t["table"] == "instances").unwrap().clone();
    assert_eq!(instances["records"], 6, "{report:#}");

    // One snapshot damaged: it no longer decodes.
    let victim = ids[2].clone();
    {
        let db = open_db(Path::new(store));
        db.put_cf(db.cf_handle("instances").unwrap(), victim.as_bytes(), b"\x01{\"id\": 12, \"broken").unwrap();
    }
    let out = cairn(&["check", store]);
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.lines().any(|l| l.starts_with("problem  instances  ") && l.contains(&victim) && l.contains("does not decode")), "{}", out.stdout);
    let out = cairn(&["check", store, "--json"]);
    assert_eq!(out.code, 1);
    let found = problems(&out);
    let p = found.iter().find(|p| p["table"] == "instances").unwrap_or_else(|| panic!("{}", out.stdout));
    assert_eq!((p["key"].as_str().unwrap(), p["kind"].as_str().unwrap(), p["repair"].as_str().unwrap()), (victim.as_str(), "decode", "drop"));
    // What refers to it: its timer, correlation and history at least.
    for table in ["timers", "correlations", "history"] {
        assert!(found.iter().any(|p| p["table"] == table && p["what"].as_str().unwrap().contains(&victim)), "{table}: {}", out.stdout);
    }

    // Without --yes: what it would do, nothing changed.
    let out = cairn(&["repair", store]);
    assert_eq!(out.code, 2, "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("would drop  instances  ") && out.stderr.contains("--yes"), "{}{}", out.stdout, out.stderr);
    assert_eq!(cairn(&["check", store]).code, 1);

    let out = cairn(&["repair", store, "--yes"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let dropped: Vec<&str> = out.stdout.lines().filter(|l| l.starts_with("dropped  ")).collect();
    assert!(dropped.iter().any(|l| l.starts_with(&format!("dropped  instances  {victim}  "))), "{}", out.stdout);
    assert!(dropped.iter().all(|l| l.contains(&victim)), "only the victim and what refers to it: {}", out.stdout);
    assert!(dropped.len() >= 4, "{}", out.stdout);
    assert!(out.stdout.contains("original store is kept in"), "{}", out.stdout);
    let out = cairn(&["check", store]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);

    // A host on the repaired store serves every other instance, which goes on.
    let h = Host::start_embedded(dir.path(), &["--quiet-guests"], &[]);
    assert_eq!(h.get(&format!("/v1/instances/{victim}")).0, 404);
    for id in ids.iter().filter(|id| **id != victim) {
        assert_eq!(h.instance(id)["status"], "waiting");
    }
    let (status, v) = h.send("approve", json!({"order_id": "o-0000", "approved": true, "approver": "ann"}), None);
    assert!(status < 300, "{status} {v}");
    h.wait_status(&ids[0], "completed", WAIT);
}

/// The live table file of `family` with the most entries.
fn table_file(data: &Path, family: &str) -> (PathBuf, u64) {
    let path = data.join("db");
    let families = rocksdb::DB::list_cf(&rocksdb::Options::default(), &path).unwrap();
    let db = rocksdb::DB::open_cf_for_read_only(&rocksdb::Options::default(), &path, families, false).unwrap();
    let f = db
        .live_files()
        .unwrap()
        .into_iter()
        .filter(|f| f.column_family_name == family)
        .max_by_key(|f| f.num_entries)
        .unwrap_or_else(|| panic!("no table file of {family}: the controlled shutdown flushes every family"));
    (path.join(f.name.trim_start_matches('/')), f.num_entries)
}

#[test]
fn a_flipped_byte_in_a_table_file_is_found_and_repair_loses_only_what_it_held() {
    let dir = TempDir::new("check-flipped");
    let n = 150;
    let (mut h, ids) = host_with_waiting_orders(dir.path(), n);
    assert!(h.terminate().success(), "{}", h.server_log());
    let store = data(dir.path());
    let (sst, entries) = table_file(&store, "instances");
    assert_eq!(entries, n as u64);
    let mut bytes = std::fs::read(&sst).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x20;
    std::fs::write(&sst, &bytes).unwrap();
    let name = sst.file_name().unwrap().to_string_lossy().into_owned();
    let store = store.to_str().unwrap();

    let out = cairn(&["check", store]);
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    let line = out.stdout.lines().find(|l| l.starts_with("problem  instances  ")).unwrap_or_else(|| panic!("{}", out.stdout));
    assert!(line.contains(&name) && line.contains("cannot be read"), "{line}");
    let report = cairn(&["check", store, "--json"]).json();
    let read = report["tables"].as_array().unwrap().iter().find(|t| t["table"] == "instances").unwrap()["records"].as_u64().unwrap();
    assert!(read > 0 && read < n as u64, "check reads on past the damaged block: {read} of {n}\n{report:#}");

    let out = cairn(&["repair", store, "--yes"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    // Records lost one by one are named; a compressed block that does not
    // even decompress is named as the range of keys it held.
    let lost_lines: Vec<&str> = out.stdout.lines().filter_map(|l| l.strip_prefix("lost  instances  ")).collect();
    assert!(!lost_lines.is_empty(), "repair says what it lost: {}", out.stdout);
    let named: Vec<String> = lost_lines.iter().filter(|l| !l.starts_with("after ")).map(|l| l.split("  ").next().unwrap().to_string()).collect();
    assert_eq!(cairn(&["check", store]).code, 0);

    let h = Host::start_embedded(dir.path(), &["--quiet-guests"], &[]);
    let mut kept = 0;
    for id in &ids {
        let (status, v) = h.get(&format!("/v1/instances/{id}"));
        match status {
            404 => {}
            200 => {
                assert!(!named.contains(id), "{id} was named lost, yet it is here: {v}");
                assert_eq!(v["status"].as_str(), Some("waiting"), "{id}: {v}");
                kept += 1;
            }
            other => panic!("{id}: {other} {v}"),
        }
    }
    assert_eq!(kept, read, "repair kept every instance check could read, and only those:\n{}", out.stdout);
}
