//! Data integrity of the embedded store: a write-ahead log damaged before
//! its tail stops `cairn serve` with a message that names the file, instead
//! of silently dropping acknowledged writes; `--salvage-wal` opens it anyway.

use cairn_tests::{cairn_bin, Host, TempDir};
use serde_json::json;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// `cairn serve` on DATA/store (embedded) with `flags`, expected to exit by
/// itself within 60 s: its output.
fn serve_until_exit(data: &Path, flags: &[&str]) -> Output {
    let mut child = Command::new(cairn_bin())
        .args(["serve", "--store", "rocksdb", "--listen", "127.0.0.1:0", "--data"])
        .arg(data.join("store"))
        .args(flags)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn cairn serve");
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!("cairn serve did not exit within 60s:\n{}", String::from_utf8_lossy(&out.stderr));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn a_damaged_write_ahead_log_stops_the_host_with_a_message_naming_it() {
    let dir = TempDir::new("integrity-wal");
    let mut h = Host::start_embedded(dir.path(), &["--quiet-guests"], &[]);
    h.deploy("t_recorder", Some("recorder"));
    h.deploy("t_crash", None);
    for i in 0..100 {
        let (status, v) = h.send("crash-start", json!({"key": format!("k{i:03}")}), None);
        assert!(status < 300, "{status} {v}");
    }
    h.kill9();

    let db = dir.path().join("store").join("db");
    let mut logs: Vec<_> = std::fs::read_dir(&db)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    logs.sort();
    let log = logs.pop().expect("a write-ahead log file");
    let mut bytes = std::fs::read(&log).unwrap();
    assert!(bytes.len() > 10_000, "the write-ahead log holds the instances ({} bytes)", bytes.len());
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..mid + 32] {
        *b ^= 0xff;
    }
    std::fs::write(&log, &bytes).unwrap();
    let name = log.file_name().unwrap().to_string_lossy().into_owned();

    let out = serve_until_exit(dir.path(), &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("write-ahead log") && stderr.contains(&name) && stderr.contains("--salvage-wal"), "{stderr}");

    let h = Host::start_embedded(dir.path(), &["--quiet-guests", "--salvage-wal"], &[]);
    let log = h.server_log();
    assert!(log.contains("write-ahead log") && log.contains(&name), "{log}");
}
