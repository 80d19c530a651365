//! Real partners through the real binary: activities call a local HTTP
//! partner (`cairn partner`) under granted capabilities, with the call's
//! idempotency key on every request; crashes resend or hold calls as their
//! semantics say; partners that hang or fail give named faults; an isolated
//! environment sends nothing and answers from a stand-in.

use cairn_tests::{Host, Partner, TempDir};
use serde_json::{json, Value};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);

fn eventually(what: &str, f: impl Fn() -> bool) {
    cairn_tests::eventually(what, WAIT, f)
}

/// A host allowed to reach `partner`, with `t-http` granted `grant` and the http-flow process deployed.
fn host_for(dir: &TempDir, partner: &Partner, grant: &str, env: &[(&str, &str)], extra: &[&str]) -> Host {
    let mut flags = vec!["--quiet-guests", "--allow-http", partner.url.as_str()];
    flags.extend_from_slice(extra);
    let h = Host::start(dir.path(), &flags, env);
    deploy_guests(&h, &[grant]);
    h
}

fn deploy_guests(h: &Host, grants: &[&str]) {
    let t_http = cairn_tests::guest("t_http");
    let mut args = vec!["deploy", t_http.to_str().unwrap(), "--json"];
    for g in grants {
        args.extend(["--allow-http", g]);
    }
    let out = h.cairn(&args);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert_eq!(out.json()["allow_http"], json!(grants));
    h.deploy("t_http_flow", None);
}

/// Starts an http-flow instance and waits for its reply.
fn run(h: &Host, key: &str, url: &str, mode: &str) -> Value {
    let req = json!({ "operation": "http-start", "body": { "key": key, "url": url, "mode": mode }, "wait_reply": true, "timeout_ms": 60000 });
    let (status, v) = h.post("/v1/messages", req.to_string().as_bytes());
    assert_eq!(status, 202, "{v}");
    v
}

fn start(h: &Host, key: &str, url: &str, mode: &str) -> String {
    let (status, v) = h.send("http-start", json!({ "key": key, "url": url, "mode": mode }), None);
    assert_eq!(status, 202, "{v}");
    v["instance"].as_str().unwrap().to_string()
}

#[test]
fn a_granted_call_carries_the_idempotency_key_and_an_ungranted_one_is_denied() {
    let dir = TempDir::new("http-grant");
    let partner = Partner::start(dir.path());
    let h = host_for(&dir, &partner, &format!("{}/ok", partner.url), &[], &[]);

    let v = run(&h, "g1", &format!("{}/ok/orders", partner.url), "idempotent");
    assert_eq!(v["reply"]["body"]["fault"], Value::Null, "{v:#}");
    assert_eq!(v["reply"]["body"]["results"][0]["status"], 200, "{v:#}");
    let keys = partner.keys("/ok/orders");
    assert_eq!(keys.len(), 1, "{:#?}", partner.requests());
    let instance = v["instance"].as_str().unwrap();
    assert!(keys[0].starts_with(&format!("{instance}/")) && keys[0].ends_with("/1"), "the call's idempotency key: {}", keys[0]);

    // Outside the deployment's grant (the host would allow it): denied, and nothing reaches the partner.
    let v = run(&h, "g2", &format!("{}/elsewhere", partner.url), "non-idempotent");
    assert_eq!(v["reply"]["body"]["fault"]["name"], "cairn.capability-denied", "{v:#}");
    let message = v["reply"]["body"]["fault"]["message"].as_str().unwrap();
    assert!(message.contains("/elsewhere") && message.contains("/ok"), "names the URL and the grant: {message}");
    assert!(partner.keys("/elsewhere").is_empty());

    // Outside the host's ceiling: denied too.
    let v = run(&h, "g3", "http://127.0.0.2:9/ok", "non-idempotent");
    assert_eq!(v["reply"]["body"]["fault"]["name"], "cairn.capability-denied", "{v:#}");

    // The grant is shown with the definition.
    let defs = h.ok_json(&["definitions"]);
    let t_http = defs["definitions"].as_array().unwrap().iter().find(|d| d["name"] == "t-http").unwrap().clone();
    assert_eq!(t_http["allow_http"], json!([format!("{}/ok", partner.url)]));
}

#[test]
fn an_activity_deployed_without_a_grant_deploys_and_faults_only_when_it_calls() {
    let dir = TempDir::new("http-nogrant");
    let partner = Partner::start(dir.path());
    let h = Host::start(dir.path(), &["--quiet-guests", "--allow-http", &partner.url], &[]);
    h.deploy("t_http", None);
    h.deploy("t_http_flow", None);
    let v = run(&h, "n1", &format!("{}/x", partner.url), "non-idempotent");
    assert_eq!(v["reply"]["body"]["fault"]["name"], "cairn.capability-denied", "{v:#}");
    assert!(partner.requests().is_empty());
    // A process cannot be granted outbound HTTP.
    let flow = cairn_tests::guest("t_http_flow");
    let out = h.cairn(&["deploy", flow.to_str().unwrap(), "--allow-http", &partner.url]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("activities act"), "{}", out.stderr);
    // A grant that is not a URL prefix is refused and nothing is stored.
    let t_http = cairn_tests::guest("t_http");
    let out = h.cairn(&["deploy", t_http.to_str().unwrap(), "--allow-http", "not a url"]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("not a url"), "{}", out.stderr);
}

#[test]
fn an_idempotent_call_cut_by_a_crash_is_sent_again_with_the_same_key() {
    let dir = TempDir::new("http-crash-idem");
    let partner = Partner::start(dir.path());
    let grant = partner.url.clone();
    let mut h = host_for(&dir, &partner, &grant, &[("CAIRN_FAILPOINT", "mid-dispatch")], &[]);
    let id = start(&h, "c1", &format!("{}/orders", partner.url), "idempotent");
    h.wait_down();
    h.kill9();
    assert_eq!(partner.keys("/orders").len(), 1);

    let h = Host::start(dir.path(), &["--quiet-guests", "--allow-http", &partner.url], &[]);
    let v = h.wait_status(&id, "completed", WAIT);
    assert_eq!(v["variables"]["fault"], Value::Null, "{v:#}");
    let keys = partner.keys("/orders");
    assert_eq!(keys.len(), 2, "sent again after the crash");
    assert_eq!(keys[0], keys[1], "with the same Idempotency-Key: the partner never sees a second key for one call");
}

#[test]
fn a_non_idempotent_call_cut_by_a_crash_is_held_and_held_again_after_a_resubmit_is_cut() {
    let dir = TempDir::new("http-crash-held");
    let partner = Partner::start(dir.path());
    let grant = partner.url.clone();
    let held = |h: &Host| h.ok_json(&["in-transit", "ls"])["calls"].as_array().cloned().unwrap_or_default();
    let serve = |env: &[(&str, &str)]| Host::start(dir.path(), &["--quiet-guests", "--allow-http", &partner.url], env);

    let mut h = host_for(&dir, &partner, &grant, &[("CAIRN_FAILPOINT", "mid-dispatch")], &[]);
    let id = start(&h, "h1", &format!("{}/pay", partner.url), "non-idempotent");
    h.wait_down();
    h.kill9();
    assert_eq!(partner.keys("/pay").len(), 1);

    // Held after the crash: the partner sees nothing more.
    let mut h = serve(&[("CAIRN_FAILPOINT", "mid-dispatch")]);
    eventually("the call is held", || held(&h).len() == 1);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(partner.keys("/pay").len(), 1, "not sent again on its own");

    // Resubmitted: sent once more, and a crash cuts it again.
    let call = held(&h)[0]["id"].as_str().unwrap().to_string();
    h.ok_json(&["in-transit", "resubmit", &call]);
    h.wait_down();
    h.kill9();
    assert_eq!(partner.keys("/pay").len(), 2);

    // Held again: one resubmit, one more execution, not two.
    let h = serve(&[]);
    eventually("the call is held again", || held(&h).first().is_some_and(|c| c["state"] == "held"));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(partner.keys("/pay").len(), 2, "not sent again after the second crash");
    h.ok_json(&["in-transit", "resubmit", &call]);
    let v = h.wait_status(&id, "completed", WAIT);
    assert_eq!(v["variables"]["fault"], Value::Null, "{v:#}");
    assert_eq!(partner.keys("/pay").len(), 3);
}

#[test]
fn partners_that_hang_refuse_or_overflow_give_named_faults() {
    let dir = TempDir::new("http-faults");
    let partner = Partner::start(dir.path());
    // Nothing listens on a port we hold bound but never accept on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_port = closed.local_addr().unwrap().port();
    drop(closed);
    let refused = format!("http://127.0.0.1:{closed_port}");
    let h = Host::start(
        dir.path(),
        &["--quiet-guests", "--allow-http", &partner.url, "--allow-http", &refused, "--http-timeout-ms", "500", "--http-max-response-bytes", "100000"],
        &[],
    );
    deploy_guests(&h, &[&partner.url, &refused]);

    let fault = |v: &Value| v["reply"]["body"]["fault"]["name"].as_str().unwrap_or("").to_string();
    let v = run(&h, "f1", &format!("{}/slow/5000", partner.url), "non-idempotent");
    assert_eq!(fault(&v), "cairn.http-timeout", "{v:#}");
    let v = run(&h, "f2", &format!("{refused}/x"), "non-idempotent");
    assert_eq!(fault(&v), "cairn.http-unreachable", "{v:#}");
    let v = run(&h, "f3", &format!("{}/big/1000000", partner.url), "non-idempotent");
    assert_eq!(fault(&v), "cairn.http-limit", "{v:#}");
    // A 5xx is an answer: the activity judges it.
    let v = run(&h, "f4", &format!("{}/status/503", partner.url), "non-idempotent");
    assert_eq!(v["reply"]["body"]["results"][0]["status"], 503, "{v:#}");
    // The retry policy applies to these faults as to any: three attempts, each its own key.
    let v = run(&h, "f5", &format!("{}/slow/5000", partner.url), "idempotent");
    assert_eq!(fault(&v), "cairn.http-timeout", "{v:#}");
    eventually("three attempts reached the partner", || partner.keys("/slow").len() == 4);
    // The host is unaffected.
    assert_eq!(h.get("/v1/health").0, 200);
}

#[test]
fn an_isolated_environment_sends_nothing_and_the_stand_in_answers() {
    let dir = TempDir::new("http-isolated");
    let partner = Partner::start(dir.path());
    let stand_in = Partner::start(dir.path());
    let h = host_for(&dir, &partner, &partner.url, &[], &[]);
    // A call in flight (the partner takes 3 s) while the backup is taken.
    let id = start(&h, "i1", &format!("{}/slow/3000", partner.url), "idempotent");
    eventually("the call reached the partner", || partner.keys("/slow").len() == 1);
    h.ok_json(&["backup", "backup"]);
    let backup = h.data.join("store").join("backups").join("backup");
    h.wait_status(&id, "completed", WAIT);
    let sent = partner.requests().len();

    let restored = TempDir::new("http-isolated-restored");
    let stand_in_flag = format!("{}={}", partner.url, stand_in.url);
    let r = Host::restore_with(&backup, restored.path(), &["--allow-http", &partner.url, "--stand-in", &stand_in_flag]);
    let v = r.wait_status(&id, "completed", WAIT);
    assert_eq!(v["variables"]["fault"], Value::Null, "{v:#}");
    assert_eq!(partner.requests().len(), sent, "the isolated environment sent nothing to the partner");
    let keys = stand_in.keys("/slow");
    assert_eq!(keys.len(), 1, "the stand-in answered: {:#?}", stand_in.requests());
    assert_eq!(keys[0], partner.keys("/slow")[0], "with the call's own idempotency key");
    let effects = std::fs::read_to_string(restored.path().join("store").join("isolated-effects.jsonl")).unwrap();
    assert!(effects.lines().any(|l| l.contains("\"http\"") && l.contains("/slow/3000")), "{effects}");

    // Without a stand-in, a synthetic answer; the store stays isolated whatever the flags.
    drop(r);
    let r = Host::start_embedded(restored.path(), &["--quiet-guests", "--allow-http", &partner.url], &[]);
    assert!(r.server_log().contains("ISOLATED"), "{}", r.server_log());
    let v = run(&r, "i2", &format!("{}/orders", partner.url), "idempotent");
    assert_eq!(v["reply"]["body"]["results"][0]["status"], 200, "{v:#}");
    assert!(v["reply"]["body"]["results"][0]["body"].as_str().unwrap_or("").contains("isolated"), "{v:#}");
    assert_eq!(partner.requests().len(), sent);

    // Promote ends isolation.
    let mut r = r;
    r.terminate();
    let data = restored.path().join("store");
    let out = std::process::Command::new(cairn_tests::cairn_bin()).args(["promote", data.to_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "refused without --yes");
    let out = std::process::Command::new(cairn_tests::cairn_bin()).args(["promote", data.to_str().unwrap(), "--yes"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r = Host::start_embedded(restored.path(), &["--quiet-guests", "--allow-http", &partner.url], &[]);
    let v = run(&r, "i3", &format!("{}/orders", partner.url), "idempotent");
    assert_eq!(v["reply"]["body"]["fault"], Value::Null, "{v:#}");
    assert_eq!(partner.keys("/orders").len(), 1, "a promoted environment reaches the partner");
}
