//! Observability of the real host: `GET /metrics` after a workload, log
//! lines as JSON with instance ids, `RUST_LOG` filters, `cairn.toml`
//! (`serve --config`) and shell completions.

use cairn_tests::{cairn_bin, Host, TempDir};
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// One scrape: series (name with labels, as written) to value. Every line
/// must be a comment or `SERIES VALUE`, and the text must end with `# EOF`.
fn scrape(h: &Host, token: Option<&str>) -> (u16, BTreeMap<String, f64>) {
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let mut req = agent.get(format!("{}/metrics", h.url));
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let mut r = req.call().expect("GET /metrics");
    let status = r.status().as_u16();
    let text = r.body_mut().read_to_string().unwrap();
    if status != 200 {
        return (status, BTreeMap::new());
    }
    assert!(text.trim_end().ends_with("# EOF"), "an OpenMetrics text ends with # EOF:\n{text}");
    let mut series = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let (name, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("not `SERIES VALUE`: {line:?}"));
        let value: f64 = value.parse().unwrap_or_else(|e| panic!("the value of {line:?} is not a number: {e}"));
        assert!(name.starts_with("cairn_"), "every series is cairn_…: {line:?}");
        series.insert(name.to_string(), value);
    }
    (status, series)
}

fn value(series: &BTreeMap<String, f64>, name: &str) -> f64 {
    *series.get(name).unwrap_or_else(|| panic!("no series {name} in:\n{}", series.keys().cloned().collect::<Vec<_>>().join("\n")))
}

/// Polls `f` until it holds (at most a minute).
fn eventually(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !f() {
        assert!(Instant::now() < deadline, "{what}: not within a minute");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn metrics_count_persistence_points_fsyncs_commit_groups_and_call_latencies() {
    let dir = TempDir::new("metrics");
    let h = Host::start(dir.path(), &["--quiet-guests"], &[]);
    eventually("recovery reported done", || scrape(&h, None).1.get("cairn_recovery_done") == Some(&1.0));
    let (_, before) = scrape(&h, None);
    h.deploy("hello", None);
    h.deploy("t_recorder", Some("recorder"));
    h.deploy("t_invoker", None);
    for name in ["Ada", "Grace"] {
        let input = format!(r#"{{"name":"{name}"}}"#);
        h.ok_json(&["start", "hello", "--input", &input, "--wait"]);
    }
    let out = h.cairn(&["start", "invoker", "--input", r#"{"mode":"retry","key":"m1"}"#, "--wait", "--json"]);
    assert_eq!(out.code, 4, "the invoker faults after three attempts: {}{}", out.stdout, out.stderr);
    let (status, after) = scrape(&h, None);
    assert_eq!(status, 200);

    // Persistence points by process, and instances started and ended.
    assert!(value(&after, r#"cairn_persistence_points_total{process="hello"}"#) >= 6.0, "{after:?}");
    assert_eq!(value(&after, r#"cairn_instances_started_total{process="hello"}"#), 2.0);
    assert_eq!(value(&after, r#"cairn_instances_ended_total{process="hello",status="completed"}"#), 2.0);
    assert_eq!(value(&after, r#"cairn_instances_ended_total{process="invoker",status="faulted"}"#), 1.0);
    for status in ["running", "waiting", "suspended"] {
        value(&after, &format!(r#"cairn_instances{{status="{status}"}}"#));
    }
    // The store: batches, writes, fsyncs moved; the group-size histogram holds every write.
    for counter in ["cairn_store_batches_total", "cairn_store_writes_total", "cairn_store_fsyncs_total"] {
        assert!(value(&after, counter) > value(&before, counter), "{counter} moved");
    }
    let writes = value(&after, "cairn_store_writes_total");
    assert_eq!(value(&after, "cairn_store_group_commit_batches_count"), writes);
    if cairn_tests::store_kind() == "rocksdb" {
        assert!(value(&after, "cairn_store_memtable_bytes") > 0.0, "the writes sit in the memtables");
    }
    assert!(value(&after, "cairn_process_resident_bytes") > 1e6, "the host's resident memory");
    assert_eq!(value(&after, r#"cairn_store_group_commit_batches_bucket{le="+Inf"}"#), writes);
    assert_eq!(value(&after, "cairn_store_group_commit_batches_sum"), value(&after, "cairn_store_batches_total"));
    assert!(value(&after, r#"cairn_store_group_commit_batches_bucket{le="1.0"}"#) >= 1.0);
    // Latency histograms: handler calls by process, activity calls (each attempt) by activity.
    assert!(value(&after, r#"cairn_handler_call_seconds_count{process="hello"}"#) >= 4.0);
    assert!(value(&after, r#"cairn_handler_call_seconds_sum{process="hello"}"#) > 0.0);
    assert_eq!(value(&after, r#"cairn_activity_call_seconds_count{activity="recorder"}"#), 3.0);
    value(&after, r#"cairn_activity_call_seconds_bucket{le="+Inf",activity="recorder"}"#);
    // Queues and timers (hello waited on a timer twice) and recovery.
    assert_eq!(value(&after, "cairn_timers_fired_total"), 2.0);
    for gauge in ["cairn_timers_pending", "cairn_timers_due", "cairn_dispatch_queue_depth", "cairn_instances_in_memory", "cairn_recovery_instances_found", "cairn_recovery_instances_resumed", "cairn_recovery_instances_parked"] {
        assert!(value(&after, gauge) >= 0.0);
    }
}

#[test]
fn a_workflow_of_pure_calls_takes_one_store_batch_for_its_five_persistence_points() {
    // The three-step workflow of the benchmarks: a creating receive, three
    // invokes of a pure activity (each commits its result), a reply. The
    // creation's point and the three commit-afters are held by the driver
    // and go with the final point, in one batch (the message is accepted
    // once that batch is durable).
    let dir = TempDir::new("held-points");
    let h = Host::start(dir.path(), &["--quiet-guests"], &[]);
    h.deploy("bench_steps_activity", Some("bench-steps"));
    h.deploy("bench_order", None);
    let order = |key: &str| {
        let out = h.cairn(&["send", "bench-order", "--body", &format!(r#"{{"key":"{key}"}}"#), "--wait-reply", "--json"]);
        assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
        out.json()
    };
    order("warm");
    let (_, before) = scrape(&h, None);
    let reply = order("o1");
    assert!(reply["reply"]["body"]["shipment"]["shipped"] == true, "every step ran: {reply}");
    let (_, after) = scrape(&h, None);
    let moved = |name: &str| value(&after, name) - value(&before, name);
    assert_eq!(moved(r#"cairn_persistence_points_total{process="bench-order"}"#), 5.0, "each point is still counted");
    assert_eq!(moved("cairn_store_batches_total"), 1.0, "the five points in one batch");
    // The creation's entry (fence 1), then each point's own, one per fence.
    let id = reply["instance"].as_str().expect("the instance the message created");
    let (status, history) = h.get(&format!("/v1/instances/{id}/history"));
    assert_eq!(status, 200, "{history}");
    let fences: Vec<u64> = history["history"].as_array().unwrap().iter().map(|e| e["fence"].as_u64().unwrap()).collect();
    assert_eq!(fences, (1..=6).collect::<Vec<u64>>(), "one history entry per fence");
}

#[test]
fn metrics_need_a_reader_token_once_a_token_exists() {
    let dir = TempDir::new("metrics-token");
    let mut h = Host::start(dir.path(), &["--quiet-guests"], &[]);
    assert_eq!(scrape(&h, None).0, 200, "no token yet, on loopback: open as every route");
    let admin = h.ok_json(&["token", "create", "--role", "admin"])["token"].as_str().unwrap().to_string();
    h.token = Some(admin);
    let reader = h.ok_json(&["token", "create", "--role", "reader"])["token"].as_str().unwrap().to_string();
    assert_eq!(scrape(&h, None).0, 401);
    assert_eq!(scrape(&h, Some("not-a-token")).0, 401);
    let (status, series) = scrape(&h, Some(&reader));
    assert_eq!(status, 200);
    value(&series, "cairn_store_writes_total");
}

/// The lines of the host's log that are JSON objects; panics on any other.
fn json_lines(h: &Host) -> Vec<Value> {
    h.server_log()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("a log line is not JSON ({e}): {l:?}")))
        .collect()
}

#[test]
fn json_logs_are_one_object_per_line_with_instance_ids() {
    let dir = TempDir::new("log-json");
    let mut h = Host::start(dir.path(), &["--log-format", "json"], &[("RUST_LOG", "info,cairn::service=debug")]);
    h.deploy("hello", None);
    let id = h.ok_json(&["start", "hello", "--input", r#"{"name":"Ada"}"#, "--wait"])["id"].as_str().unwrap().to_string();
    h.terminate();
    let lines = json_lines(&h);
    assert!(lines.iter().any(|l| l["fields"]["message"].as_str().is_some_and(|m| m.starts_with("serving http://"))), "{lines:?}");
    // The guest's record, as an event of target `guest` with the instance id.
    let guest = lines.iter().find(|l| l["target"] == "guest").unwrap_or_else(|| panic!("no guest record: {lines:?}"));
    assert_eq!(guest["fields"]["message"], "greeted");
    assert_eq!(guest["fields"]["instance"], id.as_str());
    assert_eq!(guest["fields"]["at"], "main/greet");
    // The host's own events inside the instance's span carry its id.
    let in_span: Vec<&Value> = lines.iter().filter(|l| l["span"]["instance"] == id.as_str()).collect();
    assert!(
        in_span.iter().any(|l| l["fields"]["message"] == "persistence point"),
        "persistence points logged in the instance's span: {lines:?}"
    );
    assert!(lines.iter().any(|l| l["fields"]["message"] == "stopped"));
}

#[test]
fn rust_log_filters_the_host_and_the_guests_apart() {
    let dir = TempDir::new("log-filter");
    let mut quiet = Host::start(dir.path(), &[], &[("RUST_LOG", "warn")]);
    quiet.deploy("hello", None);
    quiet.ok_json(&["start", "hello", "--input", r#"{"name":"Ada"}"#, "--wait"]);
    quiet.terminate();
    let log = quiet.server_log();
    assert!(!log.contains("serving"), "info is filtered out under RUST_LOG=warn: {log}");
    assert!(!log.contains("greeted"), "{log}");

    let dir = TempDir::new("log-filter-guest");
    let mut h = Host::start(dir.path(), &[], &[("RUST_LOG", "info,guest=off")]);
    h.deploy("hello", None);
    h.ok_json(&["start", "hello", "--input", r#"{"name":"Ada"}"#, "--wait"]);
    h.terminate();
    let log = h.server_log();
    assert!(log.contains("cairn: serving http://"), "{log}");
    assert!(!log.contains("greeted"), "guest=off drops guest records from stderr: {log}");
    let guest_log = std::fs::read_to_string(dir.path().join("store/guest-log.jsonl")).unwrap();
    assert!(guest_log.contains("greeted"), "the guest log file keeps them");

    let out = std::process::Command::new(cairn_bin()).args(["serve", "--data"]).arg(dir.path().join("other")).env("RUST_LOG", "cairn=loud").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("RUST_LOG 'cairn=loud' is not a valid filter"), "{stderr}");
}

#[test]
fn serve_takes_its_options_from_cairn_toml_and_flags_win() {
    let dir = TempDir::new("config");
    let config = dir.path().join("cairn.toml");
    std::fs::write(&config, "# serve options\nlog-format = \"json\"\nquiet-guests = true\nidle-ms = 20\nallow-http = [\"http://127.0.0.1:9/\"]\n").unwrap();
    let config = config.to_str().unwrap();
    let mut h = Host::start(dir.path(), &["--config", config], &[]);
    h.deploy("hello", None);
    h.ok_json(&["start", "hello", "--input", r#"{"name":"Ada"}"#, "--wait"]);
    h.terminate();
    let lines = json_lines(&h);
    assert!(!lines.iter().any(|l| l["target"] == "guest"), "quiet-guests = true from the file");
    assert!(lines.iter().any(|l| l["fields"]["message"] == "stopped"));

    // A flag wins over the file.
    let dir2 = TempDir::new("config-flag");
    let mut h = Host::start(dir2.path(), &["--config", config, "--log-format", "text"], &[]);
    h.terminate();
    assert!(h.server_log().contains("cairn: serving http://"), "{}", h.server_log());
}

#[test]
fn an_unknown_or_bad_key_in_cairn_toml_is_refused_with_its_line() {
    let dir = TempDir::new("config-bad");
    let config = dir.path().join("cairn.toml");
    let run = |text: &str| {
        std::fs::write(&config, text).unwrap();
        let out = std::process::Command::new(cairn_bin()).arg("serve").arg("--config").arg(&config).arg("--data").arg(dir.path().join("data")).output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (code, stderr) = run("listen = \"127.0.0.1:0\"\n\nidle_ms = 5\n");
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains(&format!("{}, line 3: unknown key 'idle_ms' (did you mean 'idle-ms'?)", config.display())), "{stderr}");
    let (code, stderr) = run("idle-ms = \"soon\"\n");
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("line 1: 'idle-ms' = soon"), "{stderr}");
    let (code, stderr) = run("idle-ms = \n");
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("is not valid TOML, line 1"), "{stderr}");
    assert!(!dir.path().join("data").exists(), "nothing started");
}

#[test]
fn completions_are_printed_for_each_shell() {
    for (shell, mark) in [("bash", "_cairn()"), ("zsh", "#compdef cairn"), ("fish", "complete -c cairn")] {
        let out = std::process::Command::new(cairn_bin()).args(["completions", shell]).output().unwrap();
        assert!(out.status.success(), "{shell}: {}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(mark), "{shell}: {text}");
        assert!(text.contains("serve") && text.contains("log-format"), "{shell} completes commands and flags");
    }
}
