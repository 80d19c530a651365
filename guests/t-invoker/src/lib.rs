//! Test guest "invoker": one invoke of the "recorder" activity per `mode`:
//! "non-idempotent", "recover" (non-idempotent but retry_on_recovery),
//! "retry" (fails, three attempts), "timeout" (spins past 300 ms), "micro"
//! (calls the "microflow" process synchronously).

use cairn_guest::{Activity, Process, RetryPolicy};
use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Serialize, Deserialize, Default)]
struct Vars {
    mode: String,
    key: String,
    done: bool,
}

fn record(p: &mut Process<Vars>, name: &str, operation: &str) -> Activity {
    p.invoke_activity(
        name,
        "recorder",
        operation,
        |v| Ok(serde_json::json!({ "key": v.key, "what": "record" })),
        |v, _: serde_json::Value| {
            v.done = true;
            Ok(())
        },
    )
}

fn define(p: &mut Process<Vars>) -> Activity {
    let non_idempotent = record(p, "pay", "record").non_idempotent();
    let recover = record(p, "pay-again", "record").non_idempotent().retry_on_recovery();
    let retry = record(p, "flaky", "fail").retry(RetryPolicy {
        attempts: 3,
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(40),
        faults: vec!["recorder-failed".into()],
    });
    let timeout = record(p, "slow", "spin").timeout(Duration::from_millis(300));
    let micro = p.invoke_process(
        "call-micro",
        "microflow",
        "micro-start",
        |v| Ok(serde_json::json!({ "key": v.key })),
        |v, answer: serde_json::Value| {
            v.done = answer["recorded"] == true;
            Ok(())
        },
    );
    let m = p.if_else("micro?", |v| v.mode == "micro", micro, None);
    let t = p.if_else("timeout?", |v| v.mode == "timeout", timeout, Some(m));
    let r = p.if_else("retry?", |v| v.mode == "retry", retry, Some(t));
    let rec = p.if_else("recover?", |v| v.mode == "recover", recover, Some(r));
    let choose = p.if_else("non-idempotent?", |v| v.mode == "non-idempotent", non_idempotent, Some(rec));
    p.sequence("main", vec![choose])
}

cairn_guest::export_process!("invoker", Vars, define);
