//! The API's edges: every error is `{"error": "…"}` with the right status,
//! even axum's own rejections (405, 413, a bad query string); request sizes
//! and name lengths have documented, configurable limits; backups go only
//! under the backup root.

use cairn_tests::{Host, TempDir};
use serde_json::{json, Value};
use std::time::Duration;

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(Duration::from_secs(60))).build().into()
}

/// A request with any method; the status, the content type and the body as JSON.
fn call(h: &Host, method: &str, path: &str, body: &[u8]) -> (u16, String, Value) {
    let url = format!("{}{path}", h.url);
    let a = agent();
    let r = match method {
        "GET" => a.get(&url).call(),
        "DELETE" => a.delete(&url).call(),
        "PUT" => a.put(&url).header("content-type", "application/json").send(body),
        "POST" => a.post(&url).header("content-type", "application/json").send(body),
        other => panic!("no method {other} here"),
    };
    let mut r = r.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let status = r.status().as_u16();
    let ctype = r.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let text = r.body_mut().read_to_string().unwrap_or_default();
    let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{method} {path}: {status} not JSON ({e}): {text:?}"));
    (status, ctype, v)
}

/// Asserts a JSON error with `status` whose message contains every one of `words`.
fn assert_error(got: (u16, String, Value), status: u16, words: &[&str]) {
    let (s, ctype, v) = got;
    assert_eq!(s, status, "{v}");
    assert!(ctype.starts_with("application/json"), "content type {ctype}");
    let message = v["error"].as_str().unwrap_or_else(|| panic!("no error message: {v}"));
    for w in words {
        assert!(message.contains(w), "'{w}' not in: {message}");
    }
}

#[test]
fn axums_own_rejections_are_json_errors() {
    let dir = TempDir::new("limits-json");
    let h = Host::start(dir.path(), &["--quiet-guests"], &[]);
    assert_error(call(&h, "GET", "/v1/nowhere", b""), 404, &["no such route"]);
    assert_error(call(&h, "DELETE", "/v1/health", b""), 405, &["DELETE", "/v1/health", "Allow"]);
    assert_error(call(&h, "GET", "/v1/messages", b""), 405, &["GET"]);
    let r = agent().get(format!("{}/v1/messages", h.url)).call().unwrap();
    let allow = r.headers().get("allow").and_then(|v| v.to_str().ok()).unwrap_or("");
    assert!(allow.contains("POST"), "Allow: {allow}");
    assert_error(call(&h, "PUT", "/v1/instances", b"{}"), 405, &["PUT"]);
    assert_error(call(&h, "GET", "/v1/instances?limit=abc", b""), 400, &["query string", "limit"]);
    assert_error(call(&h, "GET", "/v1/resources/r?limit=-1", b""), 400, &["query string"]);
    // The default component limit is 64 MiB: 3 MiB of bytes that are no
    // component are refused for what they are, not for their size.
    let (status, _, v) = call(&h, "POST", "/v1/definitions", &vec![b'x'; 3 << 20]);
    assert!(status == 400 || status == 422, "{status} {v}");
    assert!(!v["error"].as_str().unwrap().contains("too large"), "{v}");
    // Still serving.
    assert_eq!(h.get("/v1/health").0, 200);
}

#[test]
fn request_sizes_have_configurable_limits_named_in_the_error() {
    let dir = TempDir::new("limits-size");
    let h = Host::start(dir.path(), &["--quiet-guests", "--max-body-bytes", "1000", "--max-component-bytes", "4096"], &[]);
    let big = json!({ "operation": "op", "body": "x".repeat(5000) }).to_string();
    assert_error(call(&h, "POST", "/v1/messages", big.as_bytes()), 413, &["1000 bytes", "--max-body-bytes"]);
    assert_error(call(&h, "POST", "/v1/definitions", &[0u8; 10_000]), 413, &["4096 bytes", "--max-component-bytes"]);
    // Under the limits: refused for what they are, not for their size.
    let (status, _, v) = call(&h, "POST", "/v1/definitions", &[0u8; 3000]);
    assert!(status == 400 || status == 422, "{status} {v}");
    let (status, _, v) = call(&h, "POST", "/v1/messages", json!({ "operation": "nothing-handles-this", "body": {} }).to_string().as_bytes());
    assert_ne!(status, 413, "{v}");
}

#[test]
fn ids_and_names_are_at_most_256_bytes() {
    let dir = TempDir::new("limits-names");
    let h = Host::start(dir.path(), &["--quiet-guests"], &[]);
    let long = "m".repeat(257);
    let send = |body: Value| call(&h, "POST", "/v1/messages", body.to_string().as_bytes());
    assert_error(send(json!({ "operation": "op", "body": {}, "id": long })), 400, &["message id", "256"]);
    assert_error(send(json!({ "operation": long, "body": {} })), 400, &["operation name", "256"]);
    let (status, _, v) = send(json!({ "operation": "op", "body": {}, "id": "m".repeat(256) }));
    assert!(!v["error"].as_str().unwrap_or("").contains("256"), "{status} {v}");
    assert_error(call(&h, "POST", "/v1/instances", json!({ "process": long }).to_string().as_bytes()), 400, &["process name", "256"]);
    let (status, _, v) = call(&h, "POST", &format!("/v1/definitions?name={long}"), b"\0asm");
    assert_eq!(status, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("256"), "{v}");
}

#[test]
fn backups_go_only_under_the_backup_root() {
    let dir = TempDir::new("limits-backup");
    let h = Host::start(dir.path(), &["--quiet-guests"], &[]);
    let root = h.data.join("store").join("backups");
    let backup = |body: Value| call(&h, "POST", "/v1/backup", body.to_string().as_bytes());

    let (status, _, v) = backup(json!({ "name": "first" }));
    assert_eq!(status, 201, "{v}");
    let first = root.join("first").canonicalize().expect("the backup is under DATA/backups");
    assert_eq!(v["dir"], first.to_str().unwrap());
    assert!(first.join("db").is_dir() || first.read_dir().unwrap().next().is_some());

    let outside = dir.path().join("outside");
    for name in ["../escape", "..", ".", "", "a/b", "a\\b", outside.to_str().unwrap(), "/tmp/x"] {
        assert_error(backup(json!({ "name": name })), 400, &["backup root"]);
    }
    assert!(!outside.exists() && !dir.path().join("escape").exists());

    // A symlink under the root is no way out.
    std::fs::create_dir_all(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, root.join("link")).unwrap();
    assert_error(backup(json!({ "name": "link" })), 400, &["symlink"]);
    std::os::unix::fs::symlink(&outside, root.join("linkdir")).unwrap();
    let through = root.join("linkdir").join("x");
    assert_error(backup(json!({ "dir": through.to_str().unwrap() })), 400, &["backup root"]);
    assert!(!outside.join("x").exists());

    // The older `{"dir": …}`: only inside the root.
    assert_error(backup(json!({ "dir": dir.path().join("elsewhere").to_str().unwrap() })), 400, &["backup root", "name"]);
    assert_error(backup(json!({ "dir": root.join("..").join("up").to_str().unwrap() })), 400, &["backup root"]);
    let (status, _, v) = backup(json!({ "dir": root.join("old-form").to_str().unwrap() }));
    assert_eq!(status, 201, "{v}");
    assert!(root.join("old-form").is_dir());
    assert_error(backup(json!({})), 400, &["name"]);
    // A backup never overwrites.
    assert_eq!(backup(json!({ "name": "first" })).0, 400);

    // The CLI takes a name and says where the backup went.
    let out = h.cairn(&["backup", "by-cli"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let by_cli = root.join("by-cli").canonicalize().unwrap();
    assert!(out.stdout.contains(by_cli.to_str().unwrap()), "{}", out.stdout);
    let out = h.cairn(&["backup", "../nope"]);
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("backup root"), "{}", out.stderr);
}

#[test]
fn the_backup_root_is_configurable() {
    let dir = TempDir::new("limits-backup-dir");
    let root = dir.path().join("my-backups").join("nested");
    let h = Host::start(dir.path(), &["--quiet-guests", "--backup-dir", root.to_str().unwrap()], &[]);
    let v = h.ok_json(&["backup", "b1"]);
    assert_eq!(v["dir"], root.join("b1").canonicalize().unwrap().to_str().unwrap());
    assert!(!h.data.join("store").join("backups").join("b1").exists());
}
