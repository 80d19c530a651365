//! Test guest "recorder": an activity whose every call is an observable
//! effect, written to the guest log (with the caller's idempotency key).

use cairn_activity::{log, Fault, Operations};

fn operations(ops: &mut Operations) {
    ops.operation("record", |input: serde_json::Value| {
        let key = input["key"].as_str().unwrap_or("").to_string();
        let what = input["what"].as_str().unwrap_or("record").to_string();
        log::info("recorded", &[("key", &key), ("what", &what)]);
        Ok(serde_json::json!({ "ok": true }))
    });
    ops.operation("echo", |input: serde_json::Value| Ok(input));
    ops.operation("fail", |input: serde_json::Value| -> Result<serde_json::Value, Fault> {
        Err(Fault::new("recorder-failed", "asked to fail").with_data(input))
    });
}

cairn_activity::export_activity!(operations);
