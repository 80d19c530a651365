//! Test guest "http-flow": a process that calls the `t-http` activity
//! (operation `call`) in one of three ways, chosen by `mode`, and replies
//! with what came back.
//!
//! The instance-creating, request-response receive `http-start` takes
//! `{"key":"…","url":"…","mode":"…"?}`; then, by `mode`:
//! - `"idempotent"` (the default): one POST of `{"key":…}` to `url`, an
//!   idempotent invoke retried up to 3 attempts on any fault;
//! - `"non-idempotent"`: the same POST as a non-idempotent invoke, no retry;
//! - `"three"`: three invokes one after the other, POSTing
//!   `{"key":…,"step":N}` to `{url}/step/1`, `/step/2`, `/step/3`.
//!
//! A fault of the calls is caught and kept in `fault`; the reply to
//! `http-start` is `{"key":…,"mode":…,"results":[<call output>…],
//! "fault":null|{"name":…,"message":…,"data":…}}` (for a fault the host
//! named, `data.guest` is the fault `t-http` itself returned).

use cairn_guest::{Activity, Process, RetryPolicy};
use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Serialize, Deserialize, Default)]
struct Vars {
    key: String,
    url: String,
    mode: String,
    /// The output of each `call`, in order.
    results: Vec<serde_json::Value>,
    /// The fault that ended the calls, if one did.
    fault: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct Start {
    key: String,
    url: String,
    #[serde(default)]
    mode: Option<String>,
}

/// An invoke of `t-http` `call` POSTing the key (and the step, if any) to
/// `url`, or to `{url}/step/N`.
fn post(p: &mut Process<Vars>, name: &str, step: Option<u32>) -> Activity {
    p.invoke_activity(
        name,
        "t-http",
        "call",
        move |v| {
            let (url, body) = match step {
                Some(n) => (format!("{}/step/{n}", v.url.trim_end_matches('/')), serde_json::json!({ "key": v.key, "step": n })),
                None => (v.url.clone(), serde_json::json!({ "key": v.key })),
            };
            Ok(serde_json::json!({ "method": "POST", "url": url, "body": body }))
        },
        |v, out: serde_json::Value| {
            v.results.push(out);
            Ok(())
        },
    )
}

fn define(p: &mut Process<Vars>) -> Activity {
    let start = p
        .receive("start", "http-start", |v: &mut Vars, m: Start| {
            v.key = m.key;
            v.url = m.url;
            v.mode = m.mode.unwrap_or_else(|| "idempotent".into());
            Ok(())
        })
        .creates_instance()
        .request_response();

    let idempotent = post(p, "post", None).retry(RetryPolicy {
        attempts: 3,
        initial_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(200),
        faults: vec![],
    });
    let non_idempotent = post(p, "post-once", None).non_idempotent();
    let steps = vec![post(p, "step-1", Some(1)), post(p, "step-2", Some(2)), post(p, "step-3", Some(3))];
    let three = p.sequence("three", steps);

    let pick_three = p.if_else("three?", |v| v.mode == "three", three, Some(idempotent));
    let choose = p.if_else("non-idempotent?", |v| v.mode == "non-idempotent", non_idempotent, Some(pick_three));
    let calls = p.scope("calls", choose);
    let calls = p.on_fault(
        calls,
        None,
        |v, fault| {
            v.fault = Some(serde_json::json!({ "name": fault.name, "message": fault.message, "data": fault.data }));
            Ok(())
        },
        None,
    );

    let answer = p.reply("answer", "http-start", |v| {
        Ok(serde_json::json!({ "key": v.key, "mode": v.mode, "results": v.results, "fault": v.fault }))
    });
    p.sequence("main", vec![start, calls, answer])
}

cairn_guest::export_process!("http-flow", Vars, define);
