//! End to end through the real binary and real components: the demo process,
//! every activity kind, correlation (including a message that arrives before
//! its receive), duplicate message ids, version pinning, and hidden state.

use cairn_tests::{Host, TempDir};
use serde_json::{json, Value};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

fn host(tag: &str) -> (TempDir, Host) {
    let dir = TempDir::new(tag);
    let host = Host::start(dir.path(), &["--quiet-guests"], &[]);
    (dir, host)
}

fn deploy_order_approval(h: &Host) {
    h.deploy("pricing", None);
    h.deploy("notifier", None);
    let d = h.deploy("order_approval", None);
    assert_eq!(d["name"], "order-approval");
    assert_eq!(d["kind"], "process");
}

fn send_reply(h: &Host, operation: &str, body: Value) -> Value {
    let out = h.ok_json(&["send", operation, "--body", &body.to_string(), "--wait-reply"]);
    assert_eq!(out["created"], true, "{out}");
    out
}

#[test]
fn demo_small_order_is_priced_replied_and_auto_approved() {
    let (_d, h) = host("demo-small");
    deploy_order_approval(&h);
    let out = send_reply(&h, "submit-order", json!({"order_id": "o-1", "customer": "ada", "lines": [{"sku": "widget", "qty": 4}]}));
    assert_eq!(out["reply"]["body"], json!({"order_id": "o-1", "total": 50.0, "needs_approval": false}));
    let v = h.wait_status(out["instance"].as_str().unwrap(), "completed", WAIT);
    assert_eq!(v["variables"]["status"], "confirmed");
    assert_eq!(v["variables"]["approver"], "auto");
    let priced: Vec<Value> = h.guest_log().into_iter().filter(|r| r["message"] == "priced order").collect();
    assert_eq!(priced.len(), 1, "the pricing activity ran once");
}

#[test]
fn demo_large_order_waits_for_a_correlated_approval() {
    let (_d, h) = host("demo-approve");
    deploy_order_approval(&h);
    let out = send_reply(&h, "submit-order", json!({"order_id": "o-2", "customer": "bob", "lines": [{"sku": "gizmo", "qty": 4}]}));
    let id = out["instance"].as_str().unwrap();
    assert_eq!(out["reply"]["body"]["needs_approval"], true);
    let v = h.wait_status(id, "waiting", WAIT);
    assert_eq!(v["position"], "main/needs-approval/await-approval");
    let deadline = std::time::Instant::now() + WAIT;
    while h.instance(id)["in_memory"] != false {
        assert!(std::time::Instant::now() < deadline, "a waiting instance is dehydrated");
        std::thread::sleep(Duration::from_millis(10));
    }
    let approve = h.ok_json(&["send", "approve", "--body", r#"{"order_id":"o-2","approved":true,"approver":"carol"}"#]);
    assert_eq!(approve["instance"], id, "the approval is routed by order id");
    let v = h.wait_status(id, "completed", WAIT);
    assert_eq!(v["variables"]["status"], "confirmed");
    assert_eq!(v["variables"]["approver"], "carol");
}

#[test]
fn demo_approval_timeout_rejects_and_notifies_one_way() {
    let (_d, h) = host("demo-timeout");
    deploy_order_approval(&h);
    let body = json!({"order_id": "o-3", "customer": "eve", "lines": [{"sku": "gizmo", "qty": 3}], "approval_window_ms": 300});
    let out = send_reply(&h, "submit-order", body);
    let v = h.wait_status(out["instance"].as_str().unwrap(), "completed", WAIT);
    assert_eq!(v["variables"]["status"], "rejected");
    assert_eq!(v["variables"]["approver"], "timeout");
    // The one-way send leaves after its persistence point; give it a moment.
    let deadline = std::time::Instant::now() + WAIT;
    while !h.guest_log().iter().any(|r| r["message"] == "notified customer of rejection") {
        assert!(std::time::Instant::now() < deadline, "the notifier was never called");
        std::thread::sleep(Duration::from_millis(25));
    }
}

#[test]
fn an_activity_fault_faults_the_instance_and_answers_the_waiting_request() {
    let (_d, h) = host("activity-fault");
    deploy_order_approval(&h);
    let out = h.ok_json(&[
        "send",
        "submit-order",
        "--body",
        r#"{"order_id":"o-4","customer":"x","lines":[{"sku":"unobtainium","qty":1}]}"#,
        "--wait-reply",
    ]);
    assert_eq!(out["reply"]["fault"]["name"], "unknown-sku");
    let v = h.wait_status(out["instance"].as_str().unwrap(), "faulted", WAIT);
    assert_eq!(v["fault"]["name"], "unknown-sku");
    assert_eq!(v["fault"]["path"], "main/price");
    assert_eq!(v["fault"]["data"], "\"unobtainium\"");
}

#[test]
fn sequence_snippet_while_if_and_wait_run_in_order_with_persistence_points() {
    let (_d, h) = host("basics");
    h.deploy("t_basics", None);
    let v = h.ok_json(&["start", "basics", "--input", r#"{"mode":"ok"}"#, "--wait"]);
    assert_eq!(v["status"], "completed");
    assert_eq!(v["variables"]["n"], 3);
    assert_eq!(v["variables"]["log"], json!(["init", "step 1", "step 2", "step 3", "skip", "done"]));
    let reasons: Vec<(String, String)> = v["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["reason"].as_str().unwrap().to_string(), e["path"].as_str().unwrap().to_string()))
        .collect();
    let pairs: Vec<(&str, &str)> = reasons.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    assert_eq!(
        pairs,
        [("created", ""), ("commit-before", "main/pause"), ("waiting", "main/pause"), ("completed", "")],
        "participating snippets take no persistence point; the wait commits before and while it waits"
    );
}

#[test]
fn a_static_counter_resets_at_every_handler_call() {
    // Hidden state: each handler runs in a fresh instance, so a static
    // counter bumped by every snippet is always seen at 1, also across the
    // wait (a persistence point) and the dehydration it causes.
    let (_d, h) = host("hidden-state");
    h.deploy("t_basics", None);
    let v = h.ok_json(&["start", "basics", "--input", r#"{"mode":"ok"}"#, "--wait"]);
    assert_eq!(v["variables"]["counter_seen"], json!([1, 1, 1, 1, 1, 1]));
}

#[test]
fn throw_faults_the_instance_with_name_path_and_data() {
    let (_d, h) = host("throw");
    h.deploy("t_basics", None);
    let out = h.cairn(&["start", "basics", "--input", r#"{"mode":"throw"}"#, "--wait", "--json"]);
    assert_eq!(out.code, 4, "--wait exits 4 when the instance faults");
    let v = out.json();
    assert_eq!(v["status"], "faulted");
    assert_eq!(v["fault"]["name"], "requested-fault");
    assert_eq!(v["fault"]["path"], "main/throw?/fail");
    assert_eq!(v["fault"]["data"], r#"{"n":3}"#);
}

#[test]
fn terminate_ends_the_instance_at_once() {
    let (_d, h) = host("terminate");
    h.deploy("t_basics", None);
    let out = h.cairn(&["start", "basics", "--input", r#"{"mode":"terminate"}"#, "--wait", "--json"]);
    assert_eq!(out.code, 4);
    let v = out.json();
    assert_eq!(v["status"], "terminated");
    assert!(!v["variables"]["log"].as_array().unwrap().iter().any(|l| l == "done"));
}

#[test]
fn invoke_process_send_and_a_message_that_arrives_before_its_receive() {
    let (_d, h) = host("conversation");
    h.deploy("t_partner", None);
    h.deploy("t_listener", None);
    h.deploy("t_caller", None);
    let (status, started) = h.send("call-start", json!({"key": "k1"}), None);
    assert_eq!(status, 202, "{started}");
    let id = started["instance"].as_str().unwrap().to_string();
    // The caller is still in its wait: this message is queued in its inbox.
    let (status, early) = h.send("poke", json!({"key": "k1", "text": "early"}), None);
    assert_eq!(status, 202, "{early}");
    assert_eq!(early["instance"], id.as_str());
    assert_eq!(early["created"], false);
    let v = h.wait_status(&id, "completed", WAIT);
    assert_eq!(v["variables"]["doubled"], 42, "the partner process answered the synchronous invoke");
    assert_eq!(v["variables"]["poke"], "early");
    assert_eq!(v["inbox"], 0);
    let partners = h.instances("partner");
    assert_eq!(partners.len(), 1);
    assert_eq!(partners[0]["status"], "completed");
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let listeners = h.instances("listener");
        if listeners.len() == 1 && listeners[0]["status"] == "completed" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the one-way send did not create a listener: {listeners:?}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

#[test]
fn a_duplicate_message_id_is_acknowledged_and_delivered_once() {
    let (_d, h) = host("dedupe");
    h.deploy("t_partner", None);
    h.deploy("t_listener", None);
    h.deploy("t_caller", None);
    let first = h.ok_json(&["send", "call-start", "--body", r#"{"key":"k2"}"#, "--id", "start-k2"]);
    let again = h.ok_json(&["send", "call-start", "--body", r#"{"key":"k2"}"#, "--id", "start-k2"]);
    assert_eq!(first["duplicate"], false);
    assert_eq!(again["duplicate"], true);
    assert_eq!(again["instance"], first["instance"]);
    let p1 = h.ok_json(&["send", "poke", "--body", r#"{"key":"k2","text":"one"}"#, "--id", "poke-k2"]);
    let p2 = h.ok_json(&["send", "poke", "--body", r#"{"key":"k2","text":"two"}"#, "--id", "poke-k2"]);
    assert_eq!(p2["duplicate"], true);
    assert_eq!(p1["instance"], first["instance"]);
    let v = h.wait_status(first["instance"].as_str().unwrap(), "completed", WAIT);
    assert_eq!(v["variables"]["poke"], "one");
    assert_eq!(h.instances("caller").len(), 1, "the duplicate start created nothing");
}

#[test]
fn running_instances_stay_on_their_version_and_new_ones_take_the_newest() {
    let (_d, h) = host("versions");
    let v1 = h.deploy("t_versioned_1", None);
    let (_, a) = h.send("versioned-start", json!({"key": "a"}), None);
    let a = a["instance"].as_str().unwrap().to_string();
    h.wait_status(&a, "waiting", WAIT);
    let v2 = h.deploy("t_versioned_2", None);
    assert_ne!(v1["version"], v2["version"]);
    let (_, b) = h.send("versioned-start", json!({"key": "b"}), None);
    let b = b["instance"].as_str().unwrap().to_string();
    h.wait_status(&b, "waiting", WAIT);
    h.send("versioned-go", json!({"key": "a"}), None);
    h.send("versioned-go", json!({"key": "b"}), None);
    let va = h.wait_status(&a, "completed", WAIT);
    let vb = h.wait_status(&b, "completed", WAIT);
    assert_eq!((va["variables"]["started_on"].clone(), va["variables"]["finished_on"].clone()), (json!(1), json!(1)));
    assert_eq!((vb["variables"]["started_on"].clone(), vb["variables"]["finished_on"].clone()), (json!(2), json!(2)));
    assert_eq!(va["version"], v1["version"]);
    let defs = h.ok_json(&["definitions"]);
    let versioned: Vec<&Value> = defs["definitions"].as_array().unwrap().iter().filter(|d| d["name"] == "versioned").collect();
    assert_eq!(versioned.len(), 2);
    assert!(versioned.iter().any(|d| d["version"] == v2["version"] && d["latest"] == true));
    // Deploying the same bytes again changes nothing.
    let again = h.deploy("t_versioned_2", None);
    assert_eq!(again["created"], false);
}

#[test]
fn ls_filters_by_status_and_process() {
    let (_d, h) = host("ls");
    h.deploy("t_versioned_1", None);
    h.deploy("t_basics", None);
    let (_, a) = h.send("versioned-start", json!({"key": "x"}), None);
    h.wait_status(a["instance"].as_str().unwrap(), "waiting", WAIT);
    h.ok_json(&["start", "basics", "--input", r#"{"mode":"ok"}"#, "--wait"]);
    let waiting = h.ok_json(&["ls", "--status", "waiting"]);
    assert_eq!(waiting["count"], 1);
    assert_eq!(waiting["instances"][0]["process"], "versioned");
    let basics = h.ok_json(&["ls", "--process", "basics"]);
    assert_eq!(basics["count"], 1);
    assert_eq!(basics["instances"][0]["status"], "completed");
    let human = h.cairn(&["ls"]);
    assert!(human.stdout.contains("versioned") && human.stdout.contains("basics"), "{}", human.stdout);
    let show = h.cairn(&["show", a["instance"].as_str().unwrap()]);
    assert!(show.stdout.contains("main/go") && show.stdout.contains("history"), "{}", show.stdout);
}

#[test]
fn ls_pages_through_instances_with_a_total_and_a_hint() {
    let (_d, h) = host("ls-pages");
    h.deploy("t_versioned_1", None);
    let mut ids: Vec<String> = (0..5)
        .map(|n| {
            let (_, a) = h.send("versioned-start", json!({"key": format!("p{n}")}), None);
            let id = a["instance"].as_str().unwrap().to_string();
            h.wait_status(&id, "waiting", WAIT);
            id
        })
        .collect();
    ids.sort();
    let first = h.ok_json(&["ls", "--status", "waiting", "--limit", "2"]);
    assert_eq!((first["count"].clone(), first["total"].clone()), (json!(2), json!(5)), "{first:#}");
    let next = first["next_after"].as_str().unwrap().to_string();
    assert_eq!(next, ids[1]);
    let second = h.ok_json(&["ls", "--status", "waiting", "--limit", "2", "--after", &next]);
    let page: Vec<&str> = second["instances"].as_array().unwrap().iter().map(|i| i["id"].as_str().unwrap()).collect();
    assert_eq!(page, [ids[2].as_str(), ids[3].as_str()]);
    let last = h.ok_json(&["ls", "--status", "waiting", "--limit", "2", "--after", second["next_after"].as_str().unwrap()]);
    assert_eq!(last["count"], 1);
    assert!(last["next_after"].is_null(), "the last page names no next one: {last:#}");
    // People get a hint on stderr.
    let human = h.cairn(&["ls", "--status", "waiting", "--limit", "2"]);
    assert!(human.stderr.contains("showing 1-2 of 5") && human.stderr.contains("--page 2") && human.stderr.contains(&format!("--after {next}")), "{}", human.stderr);
}

#[test]
fn the_tutorial_process_runs_as_the_readme_says() {
    let (_d, h) = host("tutorial");
    let d = h.deploy("hello", None);
    assert_eq!(d["name"], "hello");
    let out = h.cairn(&["start", "hello", "--input", r#"{"name":"Ada"}"#, "--wait"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains(r#""text": "Hello, Ada!""#), "{}", out.stdout);
}

#[test]
fn a_waiting_instance_stays_in_memory_for_the_idle_time_then_is_dehydrated() {
    let dir = TempDir::new("idle");
    let h = Host::start(dir.path(), &["--quiet-guests", "--idle-ms", "1500"], &[]);
    h.deploy("t_versioned_1", None);
    let (_, v) = h.send("versioned-start", json!({"key": "idle"}), None);
    let id = v["instance"].as_str().unwrap().to_string();
    let v = h.wait_status(&id, "waiting", WAIT);
    assert_eq!(v["in_memory"], true, "within its idle time");
    let deadline = std::time::Instant::now() + WAIT;
    while h.instance(&id)["in_memory"] == true {
        assert!(std::time::Instant::now() < deadline, "never dehydrated");
        std::thread::sleep(Duration::from_millis(50));
    }
    h.send("versioned-go", json!({"key": "idle"}), None);
    h.wait_status(&id, "completed", WAIT);
}

#[test]
fn pick_takes_the_message_that_comes_first_and_withdraws_the_timer() {
    let (_d, h) = host("pick-message");
    h.deploy("t_pick", None);
    let (_, v) = h.send("pick-start", json!({"key": "p1"}), None);
    let id = v["instance"].as_str().unwrap().to_string();
    let (status, _) = h.send("pick-approve", json!({"key": "p1", "by": "carol"}), None);
    assert_eq!(status, 202);
    let v = h.wait_status(&id, "completed", WAIT);
    assert_eq!(v["variables"]["outcome"], "approved");
    assert_eq!(v["variables"]["by"], "carol");
    std::thread::sleep(Duration::from_millis(700));
    let v = h.instance(&id);
    assert_eq!(v["history"].as_array().unwrap().last().unwrap()["reason"], "completed", "the withdrawn timer never fired anything");
}

#[test]
fn pick_takes_the_timer_when_no_message_comes_in_time() {
    let (_d, h) = host("pick-timer");
    h.deploy("t_pick", None);
    let (_, v) = h.send("pick-start", json!({"key": "p2"}), None);
    let id = v["instance"].as_str().unwrap().to_string();
    let v = h.wait_status(&id, "completed", WAIT);
    assert_eq!(v["variables"]["outcome"], "expired");
    let (status, _) = h.send("pick-approve", json!({"key": "p2", "by": "late"}), None);
    assert_eq!(status, 404, "the approval branch was withdrawn with the instance's end");
}

#[test]
fn a_flow_joins_branches_that_wait_for_a_message_a_timer_and_a_call() {
    let (_d, h) = host("flow");
    h.deploy("t_recorder", Some("recorder"));
    h.deploy("t_flow", None);
    let (_, v) = h.send("flow-start", json!({"key": "f1"}), None);
    let id = v["instance"].as_str().unwrap().to_string();
    let (status, _) = h.send("flow-message", json!({"key": "f1"}), None);
    assert_eq!(status, 202);
    let v = h.wait_status(&id, "completed", WAIT);
    let mut done: Vec<String> = v["variables"]["done"].as_array().unwrap().iter().map(|d| d.as_str().unwrap().to_string()).collect();
    done.sort();
    assert_eq!(done, ["call", "message", "timer"]);
    assert_eq!(v["variables"]["joined"], true);
}

#[test]
fn a_fault_in_one_flow_branch_cancels_the_others() {
    let (_d, h) = host("flow-fault");
    h.deploy("t_recorder", Some("recorder"));
    h.deploy("t_flow", None);
    let (_, v) = h.send("flow-start", json!({"key": "f2", "mode": "fail"}), None);
    let id = v["instance"].as_str().unwrap().to_string();
    let v = h.wait_status(&id, "faulted", WAIT);
    assert_eq!(v["fault"]["name"], "branch-failed");
    assert_eq!(v["fault"]["path"], "main/all/timer/waited");
    assert!(!v["variables"]["done"].as_array().unwrap().iter().any(|d| d == "message"), "the message branch was cancelled");
    let (status, _) = h.send("flow-message", json!({"key": "f2"}), None);
    assert_eq!(status, 404, "nothing waits for it any more");
}

#[test]
fn for_each_runs_in_order_or_in_parallel_over_an_array_of_the_variables() {
    let (_d, h) = host("for-each");
    h.deploy("t_recorder", Some("recorder"));
    h.deploy("t_foreach", None);
    let v = h.ok_json(&["start", "each", "--input", r#"{"lines":["w","x","y","z"]}"#, "--wait"]);
    assert_eq!(v["status"], "completed");
    assert_eq!(v["variables"]["in_order"], json!(["w", "x", "y", "z"]));
    let mut called: Vec<String> = v["variables"]["called"].as_array().unwrap().iter().map(|c| c.as_str().unwrap().to_string()).collect();
    called.sort();
    assert_eq!(called, ["w", "x", "y", "z"], "each parallel iteration called once, with its own item");
    let recorded = h.guest_log().iter().filter(|r| r["message"] == "recorded" && r["fields"]["what"] == "line").count();
    assert_eq!(recorded, 4);
}

#[test]
fn a_thousand_instances_wait_at_a_receive_out_of_memory_and_all_complete_on_their_messages() {
    // The 100,000-instance run is `cairn bench --only memory` (BENCHMARKS.md).
    let (_d, h) = host("many");
    h.deploy("t_versioned_1", None);
    let n = 1000;
    for i in 0..n {
        let (status, v) = h.send("versioned-start", json!({"key": format!("m{i}")}), None);
        assert_eq!(status, 202, "{v}");
    }
    let deadline = std::time::Instant::now() + WAIT;
    while h.ok_json(&["ls", "--status", "waiting", "--limit", "100000"])["count"] != n {
        assert!(std::time::Instant::now() < deadline, "not all {n} reached their receive");
        std::thread::sleep(Duration::from_millis(100));
    }
    while h.get("/v1/health").1["live_instances"] != 0 {
        assert!(std::time::Instant::now() < deadline, "waiting instances are not in memory");
        std::thread::sleep(Duration::from_millis(20));
    }
    for i in 0..n {
        h.send("versioned-go", json!({"key": format!("m{i}")}), None);
    }
    while h.ok_json(&["ls", "--status", "completed", "--limit", "100000"])["count"] != n {
        assert!(std::time::Instant::now() < deadline, "not all {n} completed");
        std::thread::sleep(Duration::from_millis(100));
    }
}
