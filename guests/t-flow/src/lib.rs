//! Test guest "flower": a flow of three branches that wait at different
//! points (a correlated message, a timer, an activity call), joined before a
//! final snippet. Mode "fail" makes the timer branch fail after its wait.

use cairn_guest::{Activity, Fault, Process};
use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Serialize, Deserialize, Default)]
struct Vars {
    key: String,
    mode: String,
    done: Vec<String>,
    joined: bool,
}

#[derive(Deserialize)]
struct Start {
    key: String,
    #[serde(default)]
    mode: String,
}

fn define(p: &mut Process<Vars>) -> Activity {
    p.correlation_set("key", &[("key", "/key")]);
    let start = p
        .receive("start", "flow-start", |v: &mut Vars, s: Start| {
            v.key = s.key;
            v.mode = s.mode;
            Ok(())
        })
        .creates_instance()
        .correlate("key");
    let got = p.receive("message", "flow-message", |v: &mut Vars, _: serde_json::Value| {
        v.done.push("message".into());
        Ok(())
    });
    let got = got.correlate("key");
    let pause = p.wait_for("pause", Duration::from_millis(400));
    let waited = p.snippet("waited", |v| {
        if v.mode == "fail" {
            return Err(Fault::new("branch-failed", "the timer branch failed"));
        }
        v.done.push("timer".into());
        Ok(())
    });
    let timer_branch = p.sequence("timer", vec![pause, waited]);
    let call = p.invoke_activity(
        "call",
        "recorder",
        "record",
        |v| Ok(serde_json::json!({ "key": v.key, "what": "flow" })),
        |v, _: serde_json::Value| {
            v.done.push("call".into());
            Ok(())
        },
    );
    let all = p.flow("all", vec![got, timer_branch, call]);
    let join = p.snippet("join", |v| {
        v.joined = true;
        Ok(())
    });
    p.sequence("main", vec![start, all, join])
}

cairn_guest::export_process!("flower", Vars, define);
