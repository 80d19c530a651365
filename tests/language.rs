//! The definition language through the real binary: repeat-until, switch,
//! for-each with a completion condition (sequential and parallel), fault
//! handlers matching on data, the process scope's fault and compensation
//! handlers, event handlers on a scope and on the process, several ways to
//! create an instance, and correlation violations at deploy and run time;
//! and components built against the first release of the process world
//! still deploy and run.

use cairn_tests::{eventually, history_steps, quiet_host, Host};
use serde_json::{json, Value};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);

/// Starts process "language" with these variables and waits for its end.
fn start(h: &Host, input: Value) -> (i32, Value) {
    let out = h.cairn(&["start", "language", "--input", &input.to_string(), "--wait", "--json"]);
    (out.code, out.json())
}

fn send(h: &Host, operation: &str, body: Value) -> Value {
    let (status, v) = h.send(operation, body, None);
    assert_eq!(status, 202, "{operation}: {v}");
    v
}

#[test]
fn repeat_until_runs_its_body_at_least_once_and_switch_takes_the_first_case_that_holds() {
    let (_d, h) = quiet_host("repeat-switch", &[]);
    h.deploy("t_language", None);

    let (code, v) = start(&h, json!({ "mode": "repeat", "goal": 3 }));
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(v["variables"]["tries"], 3);
    let (code, v) = start(&h, json!({ "mode": "repeat", "goal": 0 }));
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(v["variables"]["tries"], 1, "the body runs once even when the condition holds from the start");

    for (total, route) in [(200_000, "board"), (5000, "manager"), (10, "auto")] {
        let (code, v) = start(&h, json!({ "mode": "switch", "total": total }));
        assert_eq!(code, 0, "{v:#}");
        assert_eq!(v["variables"]["route"], route, "total {total}");
    }
}

#[test]
fn a_for_each_ends_once_its_completion_condition_holds_and_a_parallel_one_cancels_the_rest() {
    let (_d, h) = quiet_host("for-each-until", &[]);
    h.deploy("t_language", None);

    let (code, v) = start(&h, json!({ "mode": "each", "items": [1, 2, 3, 4, 5] }));
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(v["variables"]["visited"], json!([1, 2, 3]), "1 + 2 + 3 = 6: no iteration runs after the condition holds");

    // Two items wait 100 and 200 ms, the third an hour: once two are
    // visited, the third is cancelled and the instance completes.
    let (code, v) = start(&h, json!({ "mode": "each-parallel", "items": [36000, 1, 2] }));
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(v["status"], "completed", "completed without waiting the hour of the cancelled iteration");
    assert_eq!(v["variables"]["visited"], json!([1, 2]));
}

#[test]
fn the_most_specific_fault_handler_catches_by_name_and_data_then_name_then_catch_all() {
    let (_d, h) = quiet_host("fault-data", &[]);
    h.deploy("t_language", None);
    for (fault, code, caught) in [
        ("declined", 51, "declined:51"),
        ("declined", 52, "declined"),
        ("other", 7, "any:other:7"),
        ("other", 8, "any:other"),
    ] {
        let (exit, v) = start(&h, json!({ "mode": "fault-data", "fault": fault, "code": code }));
        assert_eq!(exit, 0, "{v:#}");
        assert_eq!(v["variables"]["caught"], caught, "fault {fault} with code {code}");
    }
}

#[test]
fn the_process_scope_catches_what_no_scope_caught_and_otherwise_compensates_the_process() {
    let (_d, h) = quiet_host("process-scope", &[]);
    h.deploy("t_language", None);

    let (code, v) = start(&h, json!({ "mode": "process", "fault": "fatal" }));
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(v["status"], "completed");
    assert_eq!(v["variables"]["caught"], "process:fatal", "the process's own fault handler caught it");
    assert_eq!(v["variables"]["trace"], json!(["booked"]), "a handled fault compensates nothing");

    let (code, v) = start(&h, json!({ "mode": "process", "fault": "unexpected" }));
    assert_eq!(code, 4, "{v:#}");
    assert_eq!(v["status"], "faulted");
    assert_eq!(v["fault"]["name"], "unexpected");
    assert_eq!(v["fault"]["path"], "process/main/mode/escalate/fail");
    assert_eq!(
        v["variables"]["trace"],
        json!(["booked", "undo booking", "undo process"]),
        "the completed scope is compensated, then the process as a whole"
    );
    let compensated: Vec<String> =
        history_steps(&v).into_iter().filter(|(r, _)| r == "compensated").map(|(_, p)| p).collect();
    assert_eq!(compensated.len(), 2, "one persistence point per compensation step: {v:#}");
}

#[test]
fn event_handlers_fire_on_messages_and_alarms_beside_the_scope_body_and_end_with_it() {
    let (_d, h) = quiet_host("events", &[]);
    h.deploy("t_events", None);
    let id = send(&h, "open", json!({ "case": "c1" }))["instance"].as_str().unwrap().to_string();

    // The alarms fire while "work" waits for "close": once after 100 ms, at
    // the deadline (150 ms after opening), and every 100 ms.
    let vars = |h: &Host| h.instance(&id)["variables"].clone();
    eventually("the alarms fire", WAIT, || {
        let v = vars(&h);
        v["once"] == 1 && v["at_deadline"] == 1 && v["ticks"].as_u64().unwrap_or(0) >= 3
    });
    // Messages fire the "note" handler as often as they come, and the
    // process's own "ping" handler.
    send(&h, "note", json!({ "case": "c1", "text": "first" }));
    send(&h, "note", json!({ "case": "c1", "text": "second" }));
    send(&h, "ping", json!({ "case": "c1" }));
    eventually("the notes and the ping are handled", WAIT, || {
        let v = vars(&h);
        v["handled"] == 2 && v["pings"] == 1
    });
    assert_eq!(vars(&h)["notes"], json!(["first", "second"]));

    // "close" completes the body: the scope's handlers end with it.
    send(&h, "close", json!({ "case": "c1" }));
    eventually("the scope completes and the instance waits for 'finish'", WAIT, || {
        let v = h.instance(&id);
        v["variables"]["closed"] == true && v["status"] == "waiting"
    });
    // A note is still accepted (the instance correlates), but no handler
    // takes it now: it stays in the inbox.
    send(&h, "note", json!({ "case": "c1", "text": "late" }));
    // The process's handler still listens until the instance ends.
    send(&h, "ping", json!({ "case": "c1" }));
    eventually("the second ping is handled", WAIT, || vars(&h)["pings"] == 2);
    assert_eq!(h.instance(&id)["inbox"], 1, "the late note waits in the inbox, unhandled");
    send(&h, "finish", json!({ "case": "c1" }));
    let v = h.wait_status(&id, "completed", WAIT);
    assert_eq!(v["variables"]["once"], 1, "a one-time alarm fires once");
    assert_eq!(v["variables"]["at_deadline"], 1);
    assert_eq!(v["variables"]["handled"], 2, "no note handler after its scope ended");
    assert_eq!(v["variables"]["ticks"], v["variables"]["ticks_at_close"], "no tick after its scope ended");
    let r = history_steps(&v);
    assert!(r.iter().any(|(reason, path)| reason == "commit-after" && path == "process/main/work/close"), "{r:?}");
}

#[test]
fn two_instance_creating_receives_the_first_message_creates_and_the_other_routes_to_it() {
    let (_d, h) = quiet_host("creation", &[]);
    h.deploy("t_creation", None);
    for (first, second, deal) in [("order", "payment", "d1"), ("payment", "order", "d2")] {
        let a = send(&h, first, json!({ "deal": deal }));
        assert_eq!(a["created"], true, "{a}");
        let id = a["instance"].as_str().unwrap().to_string();
        let b = send(&h, second, json!({ "deal": deal }));
        assert_eq!(b["created"], false, "the second message routes to the instance the first created: {b}");
        assert_eq!(b["instance"], id.as_str());
        let v = h.wait_status(&id, "completed", WAIT);
        assert_eq!(v["variables"]["arrived"], json!([first, second]));
        assert_eq!(v["variables"]["done"], true);
    }
    assert_eq!(h.instances("creation").len(), 2);
}

#[test]
fn an_instance_creating_pick_takes_either_message_and_an_uninitialised_set_is_a_correlation_violation() {
    let (_d, h) = quiet_host("creating-pick", &[]);
    h.deploy("t_creating_pick", None);

    let order = send(&h, "order", json!({ "order_id": "o1" }));
    assert_eq!(order["created"], true, "{order}");
    let id = order["instance"].as_str().unwrap().to_string();
    h.wait_status(&id, "waiting", WAIT);
    send(&h, "confirm", json!({ "order_id": "o1" }));
    let v = h.wait_status(&id, "completed", WAIT);
    assert_eq!(v["variables"]["kind"], "order");
    assert_eq!(v["variables"]["confirmed"], true);

    // A quote creates it too; its confirm waits on the order id, which the
    // quote never gave: a correlation violation, not a wait forever.
    let quote = send(&h, "quote", json!({ "quote_id": "q1" }));
    assert_eq!(quote["created"], true, "{quote}");
    let id = quote["instance"].as_str().unwrap().to_string();
    let v = h.wait_status(&id, "faulted", WAIT);
    assert_eq!(v["variables"]["kind"], "quote");
    assert_eq!(v["fault"]["name"], "cairn.correlation-violation");
    assert_eq!(v["fault"]["path"], "main/confirm");
    assert!(v["fault"]["message"].as_str().unwrap().contains("correlation set 'order'"), "{v:#}");
}

#[test]
fn a_component_built_against_the_first_release_of_the_process_world_deploys_starts_and_completes() {
    // t-legacy-world uses wit-bindgen directly on wit/process-legacy, the
    // world before event handlers, switch and the other later constructs.
    let (_d, h) = quiet_host("legacy-world", &[]);
    let deployed = h.deploy("t_legacy_world", None);
    assert_eq!(deployed["name"], "legacy", "{deployed:#}");

    for (n, doubled, big) in [(1, 2, false), (3, 6, true)] {
        let out = h.cairn(&["start", "legacy", "--input", &json!({ "n": n }).to_string(), "--wait", "--json"]);
        let v = out.json();
        assert_eq!(out.code, 0, "{v:#}");
        assert_eq!(v["status"], "completed", "{v:#}");
        assert_eq!(v["variables"]["n"], doubled);
        assert_eq!(v["variables"]["big"], big, "the if's condition handler ran through the old world's call");
        assert!(history_steps(&v).contains(&("waiting".to_string(), "main/pause".to_string())), "the wait is a persistence point: {v:#}");
    }
}
