//! Benchmark guest "bench-sleeper": the process of the kill -9 test of the
//! side-by-side harness (`cairn bench --only http-api`), the counterpart of
//! the `sleeper` service of the Restate peer harness: a receive that creates
//! the instance (fire and forget, no reply), a durable timer of `ms`
//! milliseconds (default 60 s) from the moment the message is read, then one
//! invoke of the "bench-steps" activity.

use cairn_guest::{Activity, Process};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Serialize, Deserialize, Default)]
struct Vars {
    id: Value,
    due_ms: u64,
    woke: bool,
}

#[derive(Deserialize)]
struct Nap {
    id: Option<Value>,
    ms: Option<u64>,
}

fn define(p: &mut Process<Vars>) -> Activity {
    let start = p
        .receive("start", "bench-nap", |v: &mut Vars, n: Nap| {
            let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
            v.id = n.id.unwrap_or(Value::Null);
            v.due_ms = now + n.ms.unwrap_or(60_000);
            Ok(())
        })
        .creates_instance();
    let nap = p.wait_until("nap", |v| UNIX_EPOCH + Duration::from_millis(v.due_ms));
    let after = p.invoke_activity(
        "after-sleep",
        "bench-steps",
        "after-sleep",
        |v| Ok(json!({ "id": v.id })),
        |v, out: Value| {
            v.woke = out["woke"].as_bool().unwrap_or(false);
            Ok(())
        },
    );
    p.sequence("main", vec![start, nap, after])
}

cairn_guest::export_process!("bench-sleeper", Vars, define);
