//! Bad input: each gets a clear error that says what was wrong, and nothing
//! already stored is lost or changed. Misbehaving guests fault their own
//! instance and nothing else.

use cairn_tests::{Host, TempDir};
use serde_json::{json, Value};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);

/// What the store holds, as the API shows it.
fn stored(h: &Host) -> (Value, Value) {
    let defs = h.ok_json(&["definitions"]);
    let insts = h.ok_json(&["ls"]);
    (defs, insts)
}

fn setup(tag: &str, flags: &[&str]) -> (TempDir, Host) {
    let dir = TempDir::new(tag);
    let h = Host::start(dir.path(), flags, &[]);
    h.deploy("t_basics", None);
    h.ok_json(&["start", "basics", "--input", r#"{"mode":"ok"}"#, "--wait"]);
    (dir, h)
}

#[test]
fn bad_deploys_are_rejected_with_a_clear_error_and_change_nothing() {
    let (dir, h) = setup("bad-deploy", &["--quiet-guests"]);
    let before = stored(&h);

    let not_wasm = dir.path().join("notes.wasm");
    std::fs::write(&not_wasm, "this is not wasm").unwrap();
    let out = h.cairn(&["deploy", not_wasm.to_str().unwrap()]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("not a WebAssembly file"), "{}", out.stderr);

    let truncated = dir.path().join("truncated.wasm");
    let bytes = std::fs::read(cairn_tests::guest("t_basics")).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let out = h.cairn(&["deploy", truncated.to_str().unwrap()]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("not a valid WebAssembly component"), "{}", out.stderr);

    let out = h.cairn(&["deploy", cairn_tests::guest("t-wrong-world").to_str().unwrap()]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("implements neither world cairn:process/process"), "{}", out.stderr);

    let out = h.cairn(&["deploy", cairn_tests::guest("t_invalid").to_str().unwrap()]);
    assert_eq!(out.code, 1);
    for expected in [
        "invalid definition of process 'invalid'",
        "activity 'main/unreachable' (receive): operation 'nobody-sends-this' has no correlation set and does not create instances",
        "activity 'main/late-start' (receive): an instance-creating receive must be the first activity",
        "activity 'main/answer' (reply): no request-response receive of operation 'never-asked'",
        "activity 'main/tx/pause' (wait): an atomic scope cannot wait",
        "activity 'main/undo' (compensate): there is no scope named 'no-such-scope'",
        "activity 'main/orphan' (receive): waits on correlation set 'never-set', which nothing before it can have initialised",
    ] {
        assert!(out.stderr.contains(expected), "missing «{expected}» in: {}", out.stderr);
    }

    let out = h.cairn(&["deploy", dir.path().join("missing.wasm").to_str().unwrap()]);
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("cannot read"), "{}", out.stderr);

    assert_eq!(stored(&h), before, "bad deploys stored nothing");
}

#[test]
fn malformed_json_unknown_names_and_unroutable_messages_are_refused() {
    let (_dir, h) = setup("bad-requests", &["--quiet-guests"]);
    let before = stored(&h);

    let (status, v) = h.post("/v1/messages", br#"{"operation": "x", "body": {"#);
    assert_eq!(status, 400);
    assert!(v["error"].as_str().unwrap().contains("line 1 column"), "{v}");
    let (status, v) = h.post("/v1/instances", b"[1,2");
    assert_eq!(status, 400, "{v}");
    let (status, v) = h.post("/v1/instances", br#"{"input": {}}"#);
    assert_eq!(status, 400);
    assert!(v["error"].as_str().unwrap().contains("missing field `process`"), "{v}");

    let out = h.cairn(&["send", "x", "--body", "{bad"]);
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("--body is not valid JSON"), "{}", out.stderr);

    let out = h.cairn(&["start", "nope"]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("no process named 'nope' is deployed"), "{}", out.stderr);

    let out = h.cairn(&["show", "no-such-instance"]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("no instance with id 'no-such-instance'"), "{}", out.stderr);

    let out = h.cairn(&["ls", "--status", "sleeping"]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("unknown status 'sleeping'"), "{}", out.stderr);

    let out = h.cairn(&["start", "basics", "--input", "[1]"]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("must be a JSON object"), "{}", out.stderr);

    // A message that routes nowhere is rejected and leaves no trace: the same
    // id is not a duplicate afterwards.
    let (status, v) = h.send("approve", json!({"order_id": "zzz"}), Some("m-unroutable"));
    assert_eq!(status, 404);
    assert!(v["error"].as_str().unwrap().contains("no process creates instances on operation 'approve'"), "{v}");

    assert_eq!(stored(&h), before, "refused requests stored nothing");
}

#[test]
fn the_cli_says_when_the_server_cannot_be_reached() {
    let out = std::process::Command::new(cairn_tests::cairn_bin())
        .args(["ls"])
        .env("CAIRN_SERVER", "http://127.0.0.1:9")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the Cairn server"));
}

#[test]
fn trapping_looping_and_hoarding_guests_fault_only_their_instance() {
    let (_dir, h) = setup("misbehave", &["--quiet-guests", "--call-timeout-ms", "2000", "--memory-limit-mb", "256"]);
    h.deploy("t_misbehave", None);
    let mut ids = Vec::new();
    for mode in ["trap", "loop", "alloc"] {
        let v = h.ok_json(&["start", "misbehave", "--input", &json!({"mode": mode}).to_string()]);
        ids.push((mode, v["id"].as_str().unwrap().to_string()));
    }
    for (mode, id) in &ids {
        let v = h.wait_status(id, "faulted", WAIT);
        let expected = match *mode {
            "trap" => "cairn.trap",
            "loop" => "cairn.timeout",
            _ => "cairn.memory-limit",
        };
        assert_eq!(v["fault"]["name"], expected, "{mode}: {v:#}");
        assert_eq!(v["fault"]["path"], "main/act");
    }
    // The host is unharmed: other instances still run.
    let ok = h.ok_json(&["start", "misbehave", "--input", r#"{"mode":"ok"}"#, "--wait"]);
    assert_eq!(ok["variables"]["survived"], true);
    let basics = h.ok_json(&["start", "basics", "--input", r#"{"mode":"ok"}"#, "--wait"]);
    assert_eq!(basics["status"], "completed");
}

/// Components compile in a child process of the host (`cairn
/// compile-component`): a compiler that dies on a component refuses that
/// component with the reason and leaves the host serving, with nothing stored
/// and no half-written compiled file; the same deploy succeeds once the
/// compiler runs to its end.
#[test]
fn a_compiler_that_crashes_refuses_the_component_and_the_host_goes_on() {
    let dir = TempDir::new("compiler-crash");
    let mut h = Host::start(dir.path(), &["--quiet-guests"], &[("CAIRN_FAILPOINT", "compile-component")]);
    let out = h.cairn(&["deploy", cairn_tests::guest("t_basics").to_str().unwrap()]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("killed the compiler's process (signal 6)"), "{}", out.stderr);
    let (code, health) = h.get("/v1/health");
    assert_eq!((code, health["status"].as_str()), (200, Some("ok")), "{health}");
    assert_eq!(h.ok_json(&["definitions"])["definitions"], json!([]), "nothing deployed");
    let compiled: Vec<_> = std::fs::read_dir(dir.path().join("store/compiled")).map(|d| d.flatten().map(|e| e.file_name()).collect()).unwrap_or_default();
    assert!(compiled.is_empty(), "no compiled file was left behind: {compiled:?}");
    h.terminate();

    let h = Host::start(dir.path(), &["--quiet-guests"], &[]);
    h.deploy("t_basics", None);
    let v = h.ok_json(&["start", "basics", "--input", r#"{"mode":"ok"}"#, "--wait"]);
    assert_eq!(v["status"], "completed", "{v}");
}
