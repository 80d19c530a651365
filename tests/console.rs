//! The web console (issue 13) in a real browser: Debian's headless
//! Chromium driven by Playwright (`tests/console/console.mjs`, with
//! `playwright-core` from `tests/console/node_modules`), against the real
//! `cairn serve` with the order-approval example deployed and tokens
//! required. The browser finds an instance by its correlation value, sees
//! its position on the diagram, sets a breakpoint by clicking an activity
//! and watches a new instance stop there, edits its variables and resumes
//! it, watches another instance complete without a reload, suspends and
//! resumes a selection, and is refused an operator action with a reader
//! token, showing the reason; a faulted instance shows where and why.
//! Screenshots of each page are written under
//! `$CARGO_TARGET_DIR/console-screenshots/` (the test prints the path).

use cairn_tests::{eventually, target_dir, Host, TempDir};
use serde_json::{json, Value};
use std::io::BufRead;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);

const CHROMIUM: &str = "/usr/bin/chromium";

/// The browser tools this test needs; missing, the test fails saying how to get them.
fn browser_tools() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("console");
    let setup = "run scripts/test.sh, whose ensure_browser_tools (scripts/env.sh) installs Debian's chromium and runs `npm ci` in tests/console";
    assert!(std::path::Path::new(CHROMIUM).exists(), "{CHROMIUM} is missing: {setup}");
    assert!(dir.join("node_modules/playwright-core").exists(), "{} is missing: {setup}", dir.join("node_modules/playwright-core").display());
    let node = Command::new("node").arg("--version").output();
    assert!(node.is_ok_and(|o| o.status.success()), "node is missing: {setup}");
    dir
}

fn token(h: &Host, role: &str) -> String {
    let v = h.ok_json(&["token", "create", "--role", role, "--note", &format!("console test {role}")]);
    v["token"].as_str().unwrap_or_else(|| panic!("no token in {v}")).to_string()
}

fn submit(h: &Host, order: &str, qty: u32) -> String {
    let body = json!({ "order_id": order, "customer": format!("customer of {order}"), "lines": [{ "sku": "widget", "qty": qty }] });
    let (code, v) = h.post("/v1/messages", json!({ "operation": "submit-order", "body": body, "wait_reply": true }).to_string().as_bytes());
    assert_eq!(code, 202, "submit {order}: {v}");
    v["instance"].as_str().unwrap().to_string()
}

#[test]
fn the_console_shows_and_operates_instances_in_a_real_browser() {
    let dir_console = browser_tools();
    let dir = TempDir::new("console");
    let mut h = Host::start(dir.path(), &["--quiet-guests"], &[]);
    // No token exists yet, so the first is made through the open API; then every route needs one.
    let admin = token(&h, "admin");
    h.token = Some(admin);
    let operator = token(&h, "operator");
    let reader = token(&h, "reader");
    h.token = Some(operator.clone());
    h.deploy("pricing", None);
    h.deploy("notifier", None);
    h.deploy("order_approval", None);
    // Two more, for the diagram's other kinds: switch, loops, scopes with handlers, pick.
    h.deploy("t_language", None);
    h.deploy("t_pick", None);

    // Two orders wait for approval (large), one completes at once (small).
    let waiting = submit(&h, "A-200", 100);
    let other = submit(&h, "A-300", 120);
    let done = submit(&h, "A-100", 1);
    h.wait_status(&done, "completed", WAIT);
    // One faults in its validation: an order needs a line.
    let empty = json!({ "order_id": "A-000", "customer": "nobody", "lines": [] });
    let (code, v) = h.post("/v1/messages", json!({ "operation": "submit-order", "body": empty, "wait_reply": true }).to_string().as_bytes());
    assert_eq!(code, 202, "{v}");
    let faulted = v["instance"].as_str().unwrap().to_string();
    h.wait_status(&faulted, "faulted", WAIT);
    for id in [&waiting, &other] {
        h.wait_status(id, "waiting", WAIT);
    }

    let shots = target_dir().join("console-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let out = Command::new("node")
        .arg(dir_console.join("console.mjs"))
        .env("CAIRN_URL", &h.url)
        .env("CAIRN_OPERATOR_TOKEN", &operator)
        .env("CAIRN_READER_TOKEN", &reader)
        .env("CAIRN_CHROMIUM", CHROMIUM)
        .env("CAIRN_SCREENSHOTS", &shots)
        .env("CAIRN_WAITING", &waiting)
        .env("CAIRN_OTHER", &other)
        .env("CAIRN_FAULTED", &faulted)
        .current_dir(&dir_console)
        .output()
        .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(out.status.success(), "the browser scenario failed ({}):\n{stdout}\n{stderr}\nserver log:\n{}", out.status, h.server_log());
    println!("console screenshots: {}", shots.display());

    // What the browser did is what the host holds.
    let a200 = h.instance(&waiting);
    assert_eq!(a200["status"], "completed", "{a200}");
    assert_eq!(a200["variables"]["status"], "confirmed", "{a200}");
    let stopped_id = stdout.lines().find_map(|l| l.strip_prefix("stopped instance: ")).expect("the script names the instance that stopped").trim().to_string();
    let stopped = h.instance(&stopped_id);
    assert_eq!(stopped["status"], "completed", "{stopped}");
    assert_eq!(stopped["variables"]["customer"], "edited in the console", "{stopped}");
    let history: Vec<&str> = stopped["history"].as_array().unwrap().iter().map(|e| e["reason"].as_str().unwrap()).collect();
    for reason in ["breakpoint", "variables-set", "resumed"] {
        assert!(history.contains(&reason), "no {reason} in {history:?}");
    }
    let (_, bps) = h.get("/v1/breakpoints");
    assert_eq!(bps["breakpoints"], json!([]), "the second click cleared the breakpoint");
    let a300: Value = h.instance(&other);
    assert_eq!(a300["status"], "waiting", "the reader's suspend was refused, the bulk resume undid the bulk suspend: {a300}");
    h.terminate();
}

/// The read routes the console adds, through the real host without a
/// browser: a flow's waiting branch with its correlation values, the heat
/// map, instance search by correlation value and version, the activity tree,
/// parent and children of a start-process, what moved an instance in its
/// history, and the event stream behind authentication.
#[test]
fn the_console_routes_show_positions_heat_search_tree_family_and_events() {
    let dir = TempDir::new("console-api");
    // A grace period far longer than the test waits: an open event stream must not hold it.
    let mut h = Host::start(dir.path(), &["--quiet-guests", "--shutdown-grace-ms", "600000"], &[]);
    h.deploy("t_recorder", Some("recorder"));
    h.deploy("t_flow", None);
    h.deploy("t_child", None);
    h.deploy("t_parent", None);

    // A flow whose message branch waits (the timer and call branches finish).
    let (_, v) = h.send("flow-start", json!({ "key": "f-77" }), None);
    let flow = v["instance"].as_str().unwrap().to_string();
    let positions = |id: &str| h.get(&format!("/v1/instances/{id}/positions")).1;
    eventually("the flow's only position is its message branch", WAIT, || {
        let p = positions(&flow);
        p["positions"].as_array().is_some_and(|l| l.len() == 1 && l[0]["path"] == "main/all/message")
    });
    let p = positions(&flow);
    let wait = &p["positions"][0]["waits"];
    assert_eq!(wait["what"], "message", "{p}");
    assert_eq!(wait["operation"], "flow-message", "{p}");
    assert_eq!(wait["correlation"]["set"], "key", "{p}");
    assert!(wait["correlation"]["values"].as_str().unwrap().contains("f-77"), "{p}");
    assert_eq!(p["positions"][0]["state"], "waiting", "a set-aside branch: {p}");
    let moved: Vec<&Value> = p["history"].as_array().unwrap().iter().flat_map(|e| e["moved_by"].as_array().into_iter().flatten()).collect();
    assert!(
        moved.iter().any(|m| m["kind"] == "message" && m["operation"] == "flow-start" && m["body"].as_str().unwrap().contains("f-77")),
        "the history names the message that moved it: {p}"
    );
    assert!(moved.iter().any(|m| m["kind"] == "call-result" && m["output"].is_string()), "and the call result it took: {p}");

    let version = h.instance(&flow)["version"].as_str().unwrap().to_string();
    let (_, tree) = h.get(&format!("/v1/definitions/{version}/tree"));
    assert_eq!(tree["root"]["kind"], "sequence", "{tree}");
    let all = &tree["root"]["children"][1];
    assert_eq!((all["kind"].as_str(), all["path"].as_str()), (Some("flow"), Some("main/all")), "{tree}");
    assert_eq!(all["children"].as_array().unwrap().len(), 3, "three branches side by side: {tree}");
    let (_, heat) = h.get(&format!("/v1/definitions/{version}/heat"));
    assert_eq!(heat["activities"]["main/all/message"]["waiting"], 1, "{heat}");
    assert_eq!(heat["by_status"]["waiting"], 1, "{heat}");

    let (_, found) = h.get("/v1/instances/search?correlation=f-77");
    assert_eq!((found["total"].as_u64(), found["instances"][0]["id"].as_str()), (Some(1), Some(flow.as_str())), "{found}");
    let (_, none) = h.get(&format!("/v1/instances/search?correlation=f-77&version={}", "0".repeat(12)));
    assert_eq!(none["total"], 0, "{none}");
    let (code, bad) = h.get("/v1/instances/search?status=sleeping");
    assert_eq!(code, 400, "{bad}");

    // A parent starts a child: each links to the other.
    let (_, v) = h.send("parent-start", json!({ "key": "p-1", "mode": "" }), None);
    let parent = v["instance"].as_str().unwrap().to_string();
    h.wait_status(&parent, "completed", WAIT);
    let p = positions(&parent);
    let child = p["children"][0]["id"].as_str().unwrap_or_else(|| panic!("no child: {p}")).to_string();
    assert_eq!(p["children"][0]["process"], "child", "{p}");
    assert_eq!(positions(&child)["parent"]["id"], parent.as_str());

    // The event stream: behind authentication like every GET.
    h.token = Some(h.ok_json(&["token", "create", "--role", "admin"])["token"].as_str().unwrap().to_string());
    let reader = h.ok_json(&["token", "create", "--role", "reader"])["token"].as_str().unwrap().to_string();
    let refused = ureq::get(format!("{}/v1/events", h.url)).config().http_status_as_error(false).build().call().unwrap();
    assert_eq!(refused.status(), 401);
    let page = ureq::get(format!("{}/", h.url)).call().unwrap();
    assert_eq!(page.status(), 200, "the page itself is public: it holds no data");
    let stream = ureq::get(format!("{}/v1/events", h.url)).header("authorization", format!("Bearer {reader}")).call().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stream.into_body().into_reader()).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    assert_eq!(rx.recv_timeout(WAIT).unwrap(), "event: open");
    h.send("flow-message", json!({ "key": "f-77" }), None);
    let seen = loop {
        let line = rx.recv_timeout(WAIT).expect("an event after the message");
        if let Some(data) = line.strip_prefix("data: ") {
            let e: Value = serde_json::from_str(data).unwrap();
            if e["id"] == flow.as_str() && e["status"] == "completed" {
                break e;
            }
        }
    };
    assert_eq!(seen["process"], "flower", "{seen}");
    // Shutdown ends the stream rather than waiting for its grace period.
    let status = h.terminate_within(WAIT).expect("the host shut down without waiting out the grace period for the event stream");
    assert!(status.success(), "{status}");
    while rx.recv_timeout(WAIT).is_ok() {}
}
