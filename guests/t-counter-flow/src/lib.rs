//! Test guest "counter-flow": a process that calls the `t-counter` activity
//! (table `counters`) in one of four ways, chosen by `mode`, and replies
//! with what came back.
//!
//! The instance-creating, request-response receive `counter-start` takes
//! `{"key":"…","mode":"…"}`; then, by `mode`:
//! - `"one"`: one idempotent invoke of `increment` (default policy); reply
//!   `{"value":N}`;
//! - `"atomic-two"`: an atomic scope (one attempt) holding two invokes of
//!   `increment` of the same key; reply `{"value":N}`, the second's value;
//! - `"fail"`: an invoke of `put-then-fail` in a scope whose catch-all fault
//!   handler keeps the fault's name; reply `{"fault":"<name>"}`;
//! - `"read"` (or any other mode): one invoke of `read`; reply
//!   `{"value":N}`.

use cairn_guest::{Activity, Process, Retry};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Default)]
struct Vars {
    key: String,
    mode: String,
    /// The value the last call returned.
    value: Option<u64>,
    /// The name of the fault the calls ended with, if one did.
    fault: Option<String>,
}

#[derive(Deserialize)]
struct Start {
    key: String,
    mode: String,
}

#[derive(Deserialize)]
struct Counter {
    value: u64,
}

/// An invoke of `t-counter` `operation` on the instance's key.
fn counter(p: &mut Process<Vars>, name: &str, operation: &str) -> Activity {
    p.invoke_activity(
        name,
        "t-counter",
        operation,
        |v| Ok(serde_json::json!({ "table": "counters", "key": v.key })),
        |v, out: Counter| {
            v.value = Some(out.value);
            Ok(())
        },
    )
}

fn define(p: &mut Process<Vars>) -> Activity {
    let start = p
        .receive("start", "counter-start", |v: &mut Vars, m: Start| {
            v.key = m.key;
            v.mode = m.mode;
            Ok(())
        })
        .creates_instance()
        .request_response();

    let one = counter(p, "increment", "increment");

    let first = counter(p, "first", "increment");
    let second = counter(p, "second", "increment");
    let both = p.sequence("both", vec![first, second]);
    let atomic_two = p.atomic_scope("two", both, Retry::none());

    let put_then_fail = counter(p, "put-then-fail", "put-then-fail");
    let failing = p.scope("failing", put_then_fail);
    let failing = p.on_fault(
        failing,
        None,
        |v, fault| {
            v.fault = Some(fault.name.clone());
            Ok(())
        },
        None,
    );

    let read = counter(p, "read", "read");

    let pick_read = p.if_else("fail?", |v| v.mode == "fail", failing, Some(read));
    let pick_two = p.if_else("atomic-two?", |v| v.mode == "atomic-two", atomic_two, Some(pick_read));
    let calls = p.if_else("one?", |v| v.mode == "one", one, Some(pick_two));

    let answer = p.reply("answer", "counter-start", |v| {
        Ok(match &v.fault {
            Some(name) => serde_json::json!({ "fault": name }),
            None => serde_json::json!({ "value": v.value }),
        })
    });
    p.sequence("main", vec![start, calls, answer])
}

cairn_guest::export_process!("counter-flow", Vars, define);
