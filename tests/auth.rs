//! Authentication (issue 9): bearer tokens with roles, stored hashed. A
//! host beyond loopback refuses to start without a token; once a token
//! exists, every route but `GET /v1/health` needs one of the route's role.
//! Tokens are made offline (`cairn token create --data DIR`) and through the
//! API.

use cairn_tests::{cairn_bin, guest, postgres_store, Host, Out, TempDir};
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// `cairn ARGS --data DATA/store [--store URL]`: offline, no server.
fn offline(data: &Path, args: &[&str]) -> Out {
    let store = data.join("store");
    let mut cmd = Command::new(cairn_bin());
    cmd.args(args).arg("--data").arg(&store);
    if let Some(url) = postgres_store(&store) {
        cmd.arg("--store").arg(url);
    }
    let out = cmd.env_remove("CAIRN_TOKEN").output().expect("run cairn");
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `cairn token create --role ROLE --json` through `h` (with its token).
fn create(h: &Host, role: &str) -> Value {
    h.ok_json(&["token", "create", "--role", role, "--note", &format!("{role} of the test")])
}

fn error_of(v: &(u16, Value)) -> String {
    v.1["error"].as_str().unwrap_or_else(|| panic!("not a JSON error: {}", v.1)).to_string()
}

#[test]
fn a_host_beyond_loopback_without_a_token_refuses_to_start_before_listening() {
    let dir = TempDir::new("auth-refuse");
    let store = dir.path().join("store");
    let mut cmd = Command::new(cairn_bin());
    cmd.args(["serve", "--data"]).arg(&store);
    if let Some(url) = postgres_store(&store) {
        cmd.arg("--store").arg(url);
    }
    // Never listens: the check comes before binding, and the test waits for the exit.
    let mut child = cmd
        .args(["--listen", "0.0.0.0:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("serve.err")).unwrap())
        .spawn()
        .expect("spawn cairn serve");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("cairn serve --listen 0.0.0.0:0 without a token did not exit");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stderr = std::fs::read_to_string(dir.path().join("serve.err")).unwrap();
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains("refusing to listen on 0.0.0.0:0"), "{stderr}");
    assert!(stderr.contains("cairn token create --role admin --data"), "{stderr}");
    assert!(!stderr.contains("cairn: serving"), "{stderr}");
}

#[test]
fn tokens_and_roles() {
    let dir = TempDir::new("auth");
    std::fs::create_dir_all(dir.path().join("store")).unwrap();

    // The first token, offline, before the host starts.
    let out = offline(dir.path(), &["token", "create", "--role", "admin", "--note", "bootstrap", "--json"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let first = out.json();
    assert_eq!(first["role"], "admin");
    let admin_token = first["token"].as_str().unwrap().to_string();
    assert!(admin_token.len() >= 64, "{admin_token}");
    let out = offline(dir.path(), &["token", "ls", "--json"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let listed = out.json();
    assert_eq!(listed["tokens"].as_array().unwrap().len(), 1);
    assert!(!out.stdout.contains(&admin_token), "the token itself is never listed");

    let mut h = Host::start(dir.path(), &["--quiet-guests"], &[]);

    // No token: health answers, everything else is 401.
    assert_eq!(h.get("/v1/health").0, 200);
    let missing = h.get("/v1/instances");
    assert_eq!(missing.0, 401, "{}", missing.1);
    assert!(error_of(&missing).contains("bearer token is required"), "{}", missing.1);
    let out = h.cairn(&["ls"]);
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("bearer token is required"), "{}", out.stderr);

    // A wrong token: 401.
    h.token = Some("cairn_not-a-token".into());
    let wrong = h.get("/v1/instances");
    assert_eq!(wrong.0, 401, "{}", wrong.1);
    assert!(error_of(&wrong).contains("not valid"), "{}", wrong.1);

    // The admin makes a reader and an operator through the API.
    h.token = Some(admin_token.clone());
    let reader = create(&h, "reader");
    let operator = create(&h, "operator");
    assert_eq!(reader["role"], "reader");
    let reader_token = reader["token"].as_str().unwrap().to_string();
    let operator_token = operator["token"].as_str().unwrap().to_string();
    let listed = h.ok_json(&["token", "ls"]);
    assert_eq!(listed["tokens"].as_array().unwrap().len(), 3, "{listed}");

    // A reader lists and shows, but does not deploy (403 naming the role).
    h.token = Some(reader_token.clone());
    h.ok_json(&["ls"]);
    h.ok_json(&["definitions"]);
    let hello = guest("hello");
    let out = h.cairn(&["deploy", hello.to_str().unwrap()]);
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("role operator"), "{}", out.stderr);
    let denied = h.post("/v1/instances", br#"{"process":"hello"}"#);
    assert_eq!(denied.0, 403, "{}", denied.1);
    assert!(error_of(&denied).contains("operator"), "{}", denied.1);

    // An operator deploys and starts, but neither backs up nor manages tokens.
    h.token = Some(operator_token.clone());
    h.deploy("hello", None);
    let out = h.cairn(&["start", "hello", "--input", r#"{"name":"Ada"}"#, "--wait"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let denied = h.post("/v1/backup", br#"{"name":"b1"}"#);
    assert_eq!(denied.0, 403, "{}", denied.1);
    assert!(error_of(&denied).contains("admin"), "{}", denied.1);
    let out = h.cairn(&["token", "ls"]);
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("role admin"), "{}", out.stderr);

    // An admin backs up, and revokes the reader: its token is refused at once.
    h.token = Some(admin_token.clone());
    let b = h.ok_json(&["backup", "b1"]);
    assert_eq!(b["name"], "b1");
    let id = reader["id"].as_str().unwrap();
    let revoked = h.ok_json(&["token", "revoke", id]);
    assert_eq!(revoked["revoked"], true);
    h.token = Some(reader_token);
    let gone = h.get("/v1/instances");
    assert_eq!(gone.0, 401, "{}", gone.1);
    h.token = Some(admin_token);
    let listed = h.ok_json(&["token", "ls"]);
    assert_eq!(listed["tokens"].as_array().unwrap().len(), 2, "{listed}");
    h.terminate();
}
