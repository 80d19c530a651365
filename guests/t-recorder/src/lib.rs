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
        let key = input["key"].as_str().unwrap_or("").to_string();
        log::info("failing", &[("key", &key)]);
        Err(Fault::new("recorder-failed", "asked to fail").with_data(input))
    });
    ops.operation("spin", |_: serde_json::Value| -> Result<serde_json::Value, Fault> {
        let mut i: u64 = 0;
        loop {
            i = std::hint::black_box(i.wrapping_add(1));
        }
    });
}

cairn_activity::export_activity!(operations);
