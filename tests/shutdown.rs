//! Slow clients cannot hold a controlled shutdown: on SIGTERM the host stops
//! accepting, gives requests in flight `--shutdown-grace-ms`, closes what is
//! still open, persists live instances and exits.

use cairn_tests::{Host, TempDir};
use serde_json::json;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);

fn address(h: &Host) -> String {
    h.url.trim_start_matches("http://").to_string()
}

#[test]
fn sigterm_exits_despite_slow_clients_and_a_restart_resumes_the_waiting_instance() {
    let dir = TempDir::new("slow-clients");
    let flags = ["--quiet-guests", "--shutdown-grace-ms", "1000"];
    let mut h = Host::start(dir.path(), &flags, &[]);
    h.deploy("pricing", None);
    h.deploy("notifier", None);
    h.deploy("order_approval", None);
    let out = h.ok_json(&[
        "send",
        "submit-order",
        "--body",
        r#"{"order_id":"o-slow","customer":"bob","lines":[{"sku":"gizmo","qty":4}]}"#,
        "--wait-reply",
    ]);
    let id = out["instance"].as_str().unwrap().to_string();
    assert_eq!(out["reply"]["body"]["needs_approval"], true, "{out}");
    h.wait_status(&id, "waiting", WAIT);

    // A client that sends part of a header and then nothing.
    let mut partial = TcpStream::connect(address(&h)).unwrap();
    partial.write_all(b"GET /v1/health HTTP/1.1\r\nHost: cairn\r\n").unwrap();

    // A client waiting (for up to ten minutes) for a reply that never comes:
    // an approval for an order no instance is waiting for.
    let body = json!({"operation": "approve", "body": {"order_id": "o-nobody", "approved": true, "approver": "x"}, "wait_reply": true, "timeout_ms": 600_000}).to_string();
    let mut waiting = TcpStream::connect(address(&h)).unwrap();
    write!(waiting, "POST /v1/messages HTTP/1.1\r\nHost: cairn\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
    let waiter = std::thread::spawn(move || {
        let mut answer = Vec::new();
        let _ = waiting.read_to_end(&mut answer);
        answer
    });
    std::thread::sleep(Duration::from_millis(300));

    let started = Instant::now();
    let status = h.terminate_within(Duration::from_secs(30));
    let status = status.unwrap_or_else(|| panic!("the host did not exit within 30 s of SIGTERM:\n{}", h.server_log()));
    let log = h.server_log();
    assert!(status.success(), "SIGTERM exits cleanly: {status}\n{log}");
    assert!(log.contains("cairn: stopped"), "{log}");
    assert!(log.contains("still open after the grace period were closed"), "{log}");
    eprintln!("the host exited {:?} after SIGTERM", started.elapsed());
    drop(partial);
    let _ = waiter.join();

    let h = Host::start(dir.path(), &flags, &[]);
    let v = h.instance(&id);
    assert_eq!(v["status"], "waiting", "{v}");
    let approve = h.ok_json(&["send", "approve", "--body", r#"{"order_id":"o-slow","approved":true,"approver":"carol"}"#]);
    assert_eq!(approve["instance"], id.as_str(), "{approve}");
    let v = h.wait_status(&id, "completed", WAIT);
    assert_eq!(v["variables"]["status"], "confirmed");
    assert_eq!(v["variables"]["approver"], "carol");
}
