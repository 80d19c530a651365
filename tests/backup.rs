//! Backup and restore: an online backup of a loaded host, restored into an
//! isolated environment where the running instances continue and finish,
//! with their outbound effects recorded there, while the primary is untouched.

use cairn_tests::{Host, TempDir};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(60);

#[test]
fn a_backup_restored_into_an_isolated_environment_finishes_the_running_instances_there() {
    let primary_dir = TempDir::new("primary");
    let primary = Host::start(primary_dir.path(), &["--quiet-guests"], &[]);
    primary.deploy("t_recorder", Some("recorder"));
    primary.deploy("t_crash", None);
    let keys: Vec<String> = (0..10).map(|i| format!("b{i}")).collect();
    let mut ids = Vec::new();
    for k in &keys {
        let (_, v) = primary.send("crash-start", json!({ "key": k }), None);
        ids.push(v["instance"].as_str().unwrap().to_string());
    }
    for id in &ids {
        let deadline = Instant::now() + WAIT;
        while primary.instance(id)["position"] != "main/finish" {
            assert!(Instant::now() < deadline, "instance {id} did not reach its receive");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    // A backup goes under the server's backup root, DATA/backups by default.
    let backup = primary.data.join("store").join("backups").join("b");
    let out = primary.ok_json(&["backup", "b"]);
    assert_eq!(out["name"], "b");
    assert_eq!(Some(std::path::PathBuf::from(out["dir"].as_str().unwrap())), backup.canonicalize().ok(), "{out}");
    let again = primary.cairn(&["backup", "b"]);
    assert_eq!(again.code, 1, "a backup never overwrites");

    let restored_dir = TempDir::new("restored");
    let restored = Host::restore(&backup, restored_dir.path());
    assert!(restored.server_log().contains("ISOLATED"), "{}", restored.server_log());
    for k in &keys {
        let (status, v) = restored.send("crash-finish", json!({ "key": k }), None);
        assert_eq!(status, 202, "{v}");
    }
    for id in &ids {
        restored.wait_status(id, "completed", WAIT);
    }
    // Their one-way completion calls are recorded as effects of the isolated environment.
    let effects_file = restored_dir.path().join("store").join("isolated-effects.jsonl");
    let deadline = Instant::now() + WAIT;
    loop {
        let effects: Vec<Value> = std::fs::read_to_string(&effects_file)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        let completions = effects.iter().filter(|e| e["detail"]["input"].as_str().unwrap_or("").contains("completed")).count();
        if completions == keys.len() {
            break;
        }
        assert!(Instant::now() < deadline, "{completions} completion effects recorded");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The primary is untouched: its instances still wait, and its world saw nothing.
    for id in &ids {
        assert_eq!(primary.instance(id)["status"], "waiting");
    }
    let primary_completions = primary.guest_log().iter().filter(|r| r["fields"]["what"] == "completed").count();
    assert_eq!(primary_completions, 0);
}
