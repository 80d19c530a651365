//! Test guest "deferred": deferred recovery. It calls the recorder and then
//! waits for a correlated "deferred-finish" message.

use cairn_guest::{Activity, Process};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Default)]
struct Vars {
    key: String,
    recorded: bool,
}

#[derive(Deserialize)]
struct Key {
    key: String,
}

fn define(p: &mut Process<Vars>) -> Activity {
    p.deferred_recovery();
    p.correlation_set("key", &[("key", "/key")]);
    let start = p
        .receive("start", "deferred-start", |v: &mut Vars, k: Key| {
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
    let finish = p.receive_any("finish", "deferred-finish").correlate("key");
    p.sequence("main", vec![start, record, finish])
}

cairn_guest::export_process!("deferred", Vars, define);
