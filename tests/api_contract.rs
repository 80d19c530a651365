//! The API contract (issue 14): the OpenAPI 3.1 document the host serves at
//! `GET /v1/openapi.json` is checked by a real client. Schemathesis (from
//! PyPI, a pinned version, installed by this test into a virtualenv in the
//! Cargo target directory) generates requests for every documented
//! operation against a live `cairn serve` with a token, and fails on any
//! 5xx, any status code the document does not list, and any response that
//! breaks its schema (body, content type or headers).
//!
//! That every route of the router is in the document and the other way
//! round is a unit test of the host (`api::openapi::tests`).

use cairn_tests::{target_dir, Host, TempDir};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The schemathesis release the test installs (pinned: a new release may
/// add checks, and a contract test should change only when we change it).
const SCHEMATHESIS: &str = "4.32.5";
/// The longest the schemathesis run may take; it stops by itself at
/// `--max-time`, a little before.
const RUN_LIMIT: Duration = Duration::from_secs(240);
const WAIT: Duration = Duration::from_secs(60);

/// The schemathesis command, installed on first use with `python3 -m venv`
/// and pip into TARGET/schemathesis-venv (a fresh machine needs only
/// python3 with pip and a package index).
fn schemathesis() -> PathBuf {
    let venv = target_dir().join("schemathesis-venv");
    let bin = venv.join("bin").join("schemathesis");
    let stamp = venv.join(format!("schemathesis-{SCHEMATHESIS}.installed"));
    if stamp.exists() && bin.exists() {
        return bin;
    }
    let run = |cmd: &mut Command, what: &str| {
        let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(
            out.status.success(),
            "{what} failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(Command::new("python3").args(["-m", "venv"]).arg(&venv), "python3 -m venv (the contract test needs python3 with venv)");
    run(
        Command::new(venv.join("bin").join("pip")).args(["install", "--quiet", &format!("schemathesis=={SCHEMATHESIS}")]),
        "pip install schemathesis",
    );
    std::fs::write(&stamp, "").unwrap();
    bin
}

/// An order for the approval process (see tests/console.rs): large orders wait.
fn submit(h: &Host, order: &str, qty: u32) -> String {
    let body = json!({ "order_id": order, "customer": format!("customer of {order}"), "lines": [{ "sku": "widget", "qty": qty }] });
    let (code, v) = h.post("/v1/messages", json!({ "operation": "submit-order", "body": body, "wait_reply": true }).to_string().as_bytes());
    assert_eq!(code, 202, "submit {order}: {v}");
    v["instance"].as_str().unwrap().to_string()
}

/// Gives path parameters named `param` under `prefix` a real value as their
/// example, so that schemathesis's example and coverage phases reach what
/// lies behind an existing instance or version, not only 404s.
fn example(doc: &mut Value, prefix: &str, param: &str, value: &str) {
    for (path, item) in doc["paths"].as_object_mut().unwrap() {
        if !path.starts_with(prefix) {
            continue;
        }
        for op in item.as_object_mut().unwrap().values_mut() {
            for p in op.get_mut("parameters").and_then(Value::as_array_mut).into_iter().flatten() {
                if p["name"] == param && p["in"] == "path" {
                    p["example"] = json!(value);
                }
            }
        }
    }
}

fn get_text(url: &str) -> (u16, String, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let mut r = agent.get(url).call().unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let content_type = r.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    (r.status().as_u16(), content_type, r.body_mut().read_to_string().unwrap())
}

#[test]
fn schemathesis_finds_no_server_error_and_no_response_outside_the_document() {
    let bin = schemathesis();
    let dir = TempDir::new("api-contract");
    let mut h = Host::start(dir.path(), &["--quiet-guests"], &[]);
    // The first token is made through the open API; from then on every route but the public ones needs one.
    let (code, v) = h.post("/v1/tokens", br#"{"role": "admin", "note": "schemathesis"}"#);
    assert_eq!(code, 201, "{v}");
    let admin = v["token"].as_str().unwrap().to_string();
    h.token = Some(admin.clone());

    // Something to look at: a process with waiting, completed and faulted instances, a breakpoint, a resource.
    let deployed = h.deploy("order_approval", None);
    h.deploy("pricing", None);
    h.deploy("notifier", None);
    let version = deployed["version"].as_str().unwrap().to_string();
    let waiting = submit(&h, "A-200", 100);
    let done = submit(&h, "A-100", 1);
    h.wait_status(&done, "completed", WAIT);
    h.wait_status(&waiting, "waiting", WAIT);
    let empty = json!({ "order_id": "A-000", "customer": "nobody", "lines": [] });
    let (code, v) = h.post("/v1/messages", json!({ "operation": "submit-order", "body": empty, "wait_reply": true }).to_string().as_bytes());
    assert_eq!(code, 202, "{v}");
    h.wait_status(v["instance"].as_str().unwrap(), "faulted", WAIT);
    let (code, v) = h.post("/v1/resources", br#"{"name": "stock"}"#);
    assert_eq!(code, 201, "{v}");

    // The document is public, OpenAPI 3.1, and says how to authenticate.
    let (code, content_type, text) = get_text(&format!("{}/v1/openapi.json", h.url));
    assert_eq!(code, 200, "{text}");
    assert!(content_type.starts_with("application/json"), "{content_type}");
    let mut doc: Value = serde_json::from_str(&text).unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1."), "{}", doc["openapi"]);
    assert_eq!(doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");

    example(&mut doc, "/v1/instances/", "id", &waiting);
    example(&mut doc, "/v1/definitions/", "version", &version);
    example(&mut doc, "/v1/resources/", "name", "stock");
    let schema = dir.path().join("openapi.json");
    std::fs::write(&schema, serde_json::to_string_pretty(&doc).unwrap()).unwrap();

    let report = dir.path().join("schemathesis");
    let started = Instant::now();
    let mut child = Command::new(&bin)
        .arg("run")
        .arg(&schema)
        .args(["--url", &h.url])
        .args(["--header", &format!("Authorization: Bearer {admin}")])
        // A 5xx, a status the document does not list, a body, content type or header outside it.
        .args(["--checks", "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance"])
        .args(["--phases", "examples,coverage,fuzzing"])
        // One worker: hypothesis's lambda descriptions call ast.parse, which
        // CPython 3.11 does not always survive from two threads at once.
        .args(["--max-examples", "10", "--seed", "14", "--workers", "1"])
        // A poll of tasks may wait up to 60 s by design (`wait_ms`, a long poll).
        .args(["--request-timeout", "70", "--max-time", "110"])
        .args(["--suppress-health-check", "all"])
        // An endless stream of server-sent events: its contract is the content type, checked below.
        .args(["--exclude-path", "/v1/events"])
        // Schemathesis learns token ids from GET /v1/tokens and would revoke
        // the one it runs with (every later request a 401): checked below instead.
        .args(["--exclude-operation-id", "revoke_token"])
        .args(["--report", "junit", "--report-dir"])
        .arg(&report)
        .args(["--no-color"])
        .current_dir(dir.path())
        .stdout(std::fs::File::create(dir.path().join("schemathesis.out")).unwrap())
        .stderr(std::fs::File::create(dir.path().join("schemathesis.err")).unwrap())
        .spawn()
        .expect("run schemathesis");
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > RUN_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("schemathesis ran longer than {RUN_LIMIT:?}:\n{}", output(dir.path()));
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let out = output(dir.path());
    println!("{out}");
    println!("schemathesis took {:.1}s", started.elapsed().as_secs_f64());
    assert!(status.success(), "schemathesis found responses outside the contract ({status}):\n{out}\nserver log (tail):\n{}", tail(&h.server_log(), 60));

    // The event stream answers with its documented content type and opens.
    let head = event_stream_head(&h.url, &admin);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.to_ascii_lowercase().contains("content-type: text/event-stream"), "{head}");
    assert!(head.contains("event: open"), "{head}");
    // Revoking a token answers as documented: `{"id", "revoked": true}`, then 404.
    let (code, v) = h.post("/v1/tokens", br#"{"role": "reader"}"#);
    assert_eq!(code, 201, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    assert_eq!(delete(&h, &format!("/v1/tokens/{id}"), &admin), (200, json!({ "id": id, "revoked": true })));
    let (code, v) = delete(&h, &format!("/v1/tokens/{id}x"), &admin);
    assert!(code == 404 && v["error"].is_string(), "{code} {v}");

    let (code, v) = h.get("/v1/health");
    assert_eq!((code, &v["status"]), (200, &json!("ok")), "the host is still healthy after the run: {v}");
    h.terminate();
}

/// The start of `GET /v1/events`: its head and first event (the stream
/// itself never ends, so it is read raw, up to the `open` event).
fn event_stream_head(url: &str, token: &str) -> String {
    use std::io::{Read, Write};
    let addr = url.strip_prefix("http://").unwrap();
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET /v1/events HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\r\n").unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("event: open") {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&seen).into_owned()
}

fn delete(h: &Host, path: &str, token: &str) -> (u16, Value) {
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let mut r = agent.delete(format!("{}{path}", h.url)).header("authorization", format!("Bearer {token}")).call().unwrap();
    (r.status().as_u16(), r.body_mut().read_json().unwrap_or(Value::Null))
}

fn output(dir: &Path) -> String {
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap_or_default();
    format!("{}{}", read("schemathesis.out"), read("schemathesis.err"))
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
