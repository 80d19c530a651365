//! Benchmark guest "bench-steps": the activity whose operations are the steps
//! of the side-by-side workflows of `cairn bench --only http-api`, the same
//! work as the `ctx.run` closures of the Restate peer harness
//! (bench/restate/service.mjs): `validate` computes a checksum, `charge`
//! returns a payment id, `ship` returns a shipment, `only` echoes its input
//! (the one-step workflow) and `after-sleep` marks a sleeper as woken.

use cairn_activity::Operations;
use serde_json::{json, Value};

/// The checksum of `key:amount`, as service.mjs computes it: h = h * 31 + c
/// over UTF-16 code units, in 32-bit wrapping arithmetic, read unsigned.
fn checksum(key: &str, amount: i64) -> u32 {
    let s = format!("{key}:{amount}");
    let mut h: i32 = 0;
    for c in s.encode_utf16() {
        h = h.wrapping_mul(31).wrapping_add(c as i32);
    }
    h as u32
}

fn operations(ops: &mut Operations) {
    ops.operation("validate", |input: Value| {
        let key = input["key"].as_str().unwrap_or("");
        let amount = input["amount"].as_i64().unwrap_or(42);
        Ok(json!({ "ok": amount > 0, "checksum": checksum(key, amount) }))
    });
    ops.operation("charge", |input: Value| {
        let key = input["key"].as_str().unwrap_or("");
        let checksum = input["checksum"].as_u64().unwrap_or(0);
        Ok(json!(format!("ch_{key}_{checksum:x}")))
    });
    ops.operation("ship", |input: Value| {
        let charge = input["charge_id"].as_str().unwrap_or("");
        Ok(json!({ "shipped": true, "ref": format!("sh_{charge}") }))
    });
    ops.operation("only", |input: Value| Ok(json!({ "echo": input, "t": 1 })));
    ops.operation("after-sleep", |input: Value| Ok(json!({ "id": input["id"], "woke": true })));
}

cairn_activity::export_activity!(operations);
