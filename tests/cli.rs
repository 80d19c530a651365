//! The CLI as people and scripts meet it, through the real binary and real
//! components: a closed pipe, errors as JSON with their exit codes, paging
//! with a total and the next command, "did you mean", `show` explaining a
//! wait and a fault, a data directory another host holds, and the server
//! flags only where a server is talked to. The typed client (`cairn-client`,
//! `Host::client`) sets the scenes up.

use cairn_client::{Error, ListInstances, SendMessage};
use cairn_tests::{cairn_bin, guest, store_kind, Host, TempDir};
use serde_json::{json, Value};
use std::process::{Command, Stdio};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

fn host(tag: &str) -> (TempDir, Host) {
    let dir = TempDir::new(tag);
    let host = Host::start(dir.path(), &["--quiet-guests"], &[]);
    (dir, host)
}

/// Deploys a guest through the typed client.
fn deploy(h: &Host, file: &str) {
    let bytes = std::fs::read(guest(file)).unwrap();
    let d = h.client().deploy(&bytes, None, &[], &[]).unwrap();
    assert_eq!(d.kind, "process", "{d:?}");
}

/// A "versioned" instance waiting for `versioned-go` with correlation key `key`.
fn waiting_instance(h: &Host, key: &str) -> String {
    let message = SendMessage { operation: "versioned-start".into(), body: json!({ "key": key }), id: None, wait_reply: false, timeout_ms: None };
    let accepted = h.client().send(&message).unwrap();
    assert!(accepted.created, "{accepted:?}");
    h.wait_status(&accepted.instance, "waiting", WAIT);
    accepted.instance
}

#[test]
fn a_closed_pipe_ends_the_cli_quietly() {
    let (_d, h) = host("cli-pipe");
    deploy(&h, "t_versioned_1");
    for n in 0..3 {
        waiting_instance(&h, &format!("pipe-{n}"));
    }
    // A pipe whose reading end is closed before the CLI writes a byte.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(cairn_bin())
        .args(["ls", "--server", &h.url])
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked") && !stderr.contains("Broken pipe"), "{stderr}");
    assert_ne!(out.status.code(), Some(101), "a panic's exit code: {stderr}");
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(out.status.signal(), Some(libc::SIGPIPE), "ends as Unix tools do on a closed pipe: {:?} {stderr}", out.status);
    }
}

#[test]
fn json_errors_go_to_stderr_with_the_documented_exit_code() {
    let (_d, h) = host("cli-json-errors");
    // Refused by the server: 1, with the API's status and code.
    let out = h.cairn(&["show", "no-such-instance", "--json"]);
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.is_empty(), "{}", out.stdout);
    let e: Value = serde_json::from_str(out.stderr.trim()).unwrap_or_else(|e| panic!("stderr is not one JSON object ({e}): {}", out.stderr));
    assert_eq!(e["exit_code"], 1, "{e}");
    assert_eq!(e["status"], 404, "{e}");
    assert_eq!(e["code"], "not-found", "{e}");
    assert_eq!(e["kind"], "api", "{e}");
    assert!(e["error"].as_str().unwrap().contains("no instance with id 'no-such-instance'"), "{e}");

    // A usage error: 2.
    let out = h.cairn(&["ls", "--no-such-flag", "--json"]);
    assert_eq!(out.code, 2, "{}{}", out.stdout, out.stderr);
    let e: Value = serde_json::from_str(out.stderr.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {}", out.stderr));
    assert_eq!((e["exit_code"].clone(), e["kind"].clone()), (json!(2), json!("usage")), "{e}");
    assert!(e["error"].as_str().unwrap().contains("--no-such-flag"), "{e}");

    // Invalid JSON given to a flag: 2.
    let out = h.cairn(&["start", "x", "--input", "{bad", "--json"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    let e: Value = serde_json::from_str(out.stderr.trim()).unwrap();
    assert!(e["error"].as_str().unwrap().contains("--input is not valid JSON"), "{e}");

    // No server there: 3.
    let out = Command::new(cairn_bin()).args(["ls", "--json", "--server", "http://127.0.0.1:9"]).output().unwrap();
    assert_eq!(out.status.code(), Some(3));
    let e: Value = serde_json::from_slice(&out.stderr).unwrap();
    assert_eq!((e["exit_code"].clone(), e["kind"].clone()), (json!(3), json!("unreachable")), "{e}");

    // Without --json the same error is a line of text.
    let out = h.cairn(&["show", "no-such-instance"]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.starts_with("error: no instance with id"), "{}", out.stderr);

    // The typed client carries the same error.
    match h.client().instance("no-such-instance") {
        Err(Error::Api { status: 404, code: Some(code), message }) => {
            assert_eq!(code, "not-found");
            assert!(message.contains("no-such-instance"), "{message}");
        }
        other => panic!("expected a 404 from the API: {other:?}"),
    }
}

#[test]
fn ls_pages_with_a_total_the_next_command_and_newest_first() {
    let (_d, h) = host("cli-pages");
    deploy(&h, "t_versioned_1");
    let mut ids: Vec<String> = (0..7).map(|n| waiting_instance(&h, &format!("page-{n}"))).collect();
    ids.sort();

    let first = h.cairn(&["ls", "--limit", "3"]);
    assert_eq!(first.code, 0, "{}", first.stderr);
    assert!(first.stderr.contains("showing 1-3 of 7; next: cairn ls --limit 3 --page 2"), "{}", first.stderr);
    let rows: Vec<&str> = first.stdout.lines().skip(1).collect();
    assert_eq!(rows.len(), 3, "{}", first.stdout);
    assert!(rows[0].starts_with(&ids[0]), "oldest first: {}", first.stdout);
    assert!(first.stdout.lines().next().unwrap().starts_with("ID"), "{}", first.stdout);
    // Human times: the UTC time and how long ago.
    assert!(rows[0].contains(" UTC") || first.stdout.contains("UPDATED (UTC)"), "{}", first.stdout);
    assert!(rows[0].contains(" ago)") || rows[0].contains("(just now)"), "{}", first.stdout);
    // Columns line up: every row's status starts where the header's does.
    let column = first.stdout.lines().next().unwrap().find("STATUS").unwrap();
    for row in &rows {
        assert_eq!(&row[column..column + "waiting".len()], "waiting", "{}", first.stdout);
    }

    let third = h.cairn(&["ls", "--limit", "3", "--page", "3"]);
    assert!(third.stderr.contains("showing 7-7 of 7") && !third.stderr.contains("next:"), "{}", third.stderr);
    assert!(third.stdout.contains(&ids[6]), "{}", third.stdout);

    let newest = h.ok_json(&["ls", "--limit", "2", "--newest-first"]);
    let page: Vec<&str> = newest["instances"].as_array().unwrap().iter().map(|i| i["id"].as_str().unwrap()).collect();
    assert_eq!(page, [ids[6].as_str(), ids[5].as_str()], "{newest:#}");
    assert_eq!(newest["total"], 7, "{newest:#}");

    // The typed client pages the same way.
    let second = h.client().instances(&ListInstances { limit: Some(3), offset: Some(3), ..Default::default() }).unwrap();
    let page: Vec<&str> = second.instances.iter().map(|i| i.id.as_str()).collect();
    assert_eq!(page, [ids[3].as_str(), ids[4].as_str(), ids[5].as_str()]);
    assert_eq!(second.total, Some(7));
}

#[test]
fn a_typo_in_a_process_or_operation_gets_a_suggestion() {
    let (_d, h) = host("cli-typo");
    deploy(&h, "t_versioned_1");
    let out = h.cairn(&["start", "versiond"]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("no process named 'versiond' is deployed (did you mean 'versioned'?)"), "{}", out.stderr);
    let out = h.cairn(&["send", "versioned-strat", "--body", r#"{"key":"k"}"#]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("(did you mean 'versioned-start'?)"), "{}", out.stderr);
    // Nothing close: no suggestion.
    let out = h.cairn(&["start", "zzzzzzzzzz"]);
    assert!(!out.stderr.contains("did you mean"), "{}", out.stderr);
    // The hint is the API's, so every client gets it.
    let e = h.client().start("versiond", None).unwrap_err();
    assert!(e.message().contains("did you mean 'versioned'?"), "{e:?}");
}

#[test]
fn show_says_what_a_waiting_instance_waits_for_and_where_a_faulted_one_stopped() {
    let (_d, h) = host("cli-show");
    deploy(&h, "t_versioned_1");
    deploy(&h, "t_basics");
    let id = waiting_instance(&h, "order-42");
    let out = h.cairn(&["show", &id]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("waits for  a message 'versioned-go' with correlation key = "), "{}", out.stdout);
    assert!(out.stdout.contains("order-42"), "the correlation values: {}", out.stdout);
    assert!(out.stdout.contains("(at main/go)"), "{}", out.stdout);
    assert!(out.stdout.contains("created    ") && out.stdout.contains(" UTC ("), "{}", out.stdout);

    let out = h.cairn(&["start", "basics", "--input", r#"{"mode":"throw"}"#, "--wait"]);
    assert_eq!(out.code, 4, "{}{}", out.stdout, out.stderr);
    let id = out.stdout.split_whitespace().next().unwrap().to_string();
    let v = h.client().instance(&id).unwrap();
    let fault = v.fault.expect("a faulted instance has its fault");
    let path = fault.path.expect("and where it was raised");
    let out = h.cairn(&["show", &id]);
    assert!(
        out.stdout.contains(&format!("faulted at {path}: requested-fault: the input asked for a fault")),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains(&format!("cairn retry {id}")), "{}", out.stdout);
    assert!(!out.stdout.contains("waits for"), "{}", out.stdout);
    let history = h.cairn(&["history", &id]);
    assert!(history.stdout.starts_with("FENCE") && history.stdout.contains("faulted"), "{}", history.stdout);
}

#[test]
fn a_data_directory_in_use_is_named_with_its_own_exit_code() {
    if store_kind() != "rocksdb" {
        return;
    }
    let (dir, h) = host("cli-lock");
    let out = Command::new(cairn_bin())
        .args(["serve", "--store", "rocksdb", "--quiet-guests", "--listen", "127.0.0.1:0", "--data"])
        .arg(dir.path().join("store"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{stderr}");
    assert!(stderr.contains("is in use by another cairn process"), "{stderr}");
    assert!(stderr.contains(&format!("(pid {})", h.pid())), "names the host holding it: {stderr}");
    // The host holding it is unharmed.
    assert_eq!(h.get("/v1/health").0, 200);
}

#[test]
fn server_flags_belong_to_commands_that_talk_to_a_server() {
    let tmp = TempDir::new("cli-flags");
    for args in [
        vec!["serve", "--server", "http://127.0.0.1:9"],
        vec!["new", "x", "--server", "http://127.0.0.1:9"],
        vec!["check", "d", "--token", "t"],
        vec!["completions", "bash", "--ca-cert", "c.pem"],
    ] {
        let out = Command::new(cairn_bin()).args(&args).current_dir(tmp.path()).env_remove("CAIRN_SERVER").output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains("unexpected argument"), "{args:?}: {stderr}");
    }
    assert!(!tmp.path().join("x").exists(), "`new` refused did nothing");
    // The help names the exit codes.
    let out = Command::new(cairn_bin()).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("Exit codes:") && help.contains("3  the server could not be reached"), "{help}");
}
