//! Test guest "child": started by a parent, works a little, and reports back
//! to the parent by a message correlated by key.

use cairn_guest::{Activity, Process};
use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Serialize, Deserialize, Default)]
struct Vars {
    key: String,
    worked: bool,
}

#[derive(Deserialize)]
struct Start {
    key: String,
}

fn define(p: &mut Process<Vars>) -> Activity {
    p.correlation_set("key", &[("key", "/key")]);
    let start = p
        .receive("start", "child-start", |v: &mut Vars, s: Start| {
            v.key = s.key;
            Ok(())
        })
        .creates_instance()
        .correlate("key");
    let work = p.wait_for("work", Duration::from_millis(300));
    let done = p.snippet("done", |v| {
        v.worked = true;
        Ok(())
    });
    let report = p.send_message("report", "parent", "child-done", |v| Ok(serde_json::json!({ "key": v.key })));
    p.sequence("main", vec![start, work, done, report])
}

cairn_guest::export_process!("child", Vars, define);
