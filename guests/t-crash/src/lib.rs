//! Test guest "crashy": receives a start message (creating the instance,
//! correlated by key), invokes the "recorder" activity, waits, takes a
//! correlated "crash-finish" message, and tells the recorder it completed.

use cairn_guest::{Activity, Process};
use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Serialize, Deserialize, Default)]
struct Vars {
    key: String,
    recorded: bool,
    finished: bool,
}

#[derive(Deserialize)]
struct Key {
    key: String,
}

fn define(p: &mut Process<Vars>) -> Activity {
    p.correlation_set("key", &[("key", "/key")]);
    let start = p
        .receive("start", "crash-start", |v: &mut Vars, k: Key| {
            v.key = k.key;
            Ok(())
        })
        .creates_instance()
        .correlate("key");
    let record = p.invoke_activity(
        "record",
        "recorder",
        "record",
        |v| Ok(serde_json::json!({ "key": v.key, "what": "record" })),
        |v, _: serde_json::Value| {
            v.recorded = true;
            Ok(())
        },
    );
    let pause = p.wait_for("pause", Duration::from_millis(200));
    let finish = p
        .receive("finish", "crash-finish", |v: &mut Vars, _: serde_json::Value| {
            v.finished = true;
            Ok(())
        })
        .correlate("key");
    let done = p.send_activity("done", "recorder", "record", |v| {
        Ok(serde_json::json!({ "key": v.key, "what": "completed" }))
    });
    p.sequence("main", vec![start, record, pause, finish, done])
}

cairn_guest::export_process!("crashy", Vars, define);
