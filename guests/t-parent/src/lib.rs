//! Test guest "parent": starts a "child" instance asynchronously, may
//! suspend itself for review (mode "suspend"), and waits for the child's
//! report, correlated by key.

use cairn_guest::{Activity, Process};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Default)]
struct Vars {
    key: String,
    mode: String,
    reported: bool,
    note: String,
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
        .receive("start", "parent-start", |v: &mut Vars, s: Start| {
            v.key = s.key;
            v.mode = s.mode;
            Ok(())
        })
        .creates_instance()
        .correlate("key");
    let spawn = p.start_process("spawn", "child", "child-start", |v| Ok(serde_json::json!({ "key": v.key })));
    let review = p.suspend("review", "mode asked for a review");
    let maybe_review = p.if_else("review?", |v| v.mode == "suspend", review, None);
    let report = p
        .receive("report", "child-done", |v: &mut Vars, _: serde_json::Value| {
            v.reported = true;
            Ok(())
        })
        .correlate("key");
    p.sequence("main", vec![start, spawn, maybe_review, report])
}

cairn_guest::export_process!("parent", Vars, define);
