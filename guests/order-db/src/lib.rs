//! Order database: an activity that "writes" orders by logging each write.

use cairn_activity::{log, Operations};

fn operations(ops: &mut Operations) {
    ops.operation("upsert", |row: serde_json::Value| {
        let order = row["order_id"].as_str().unwrap_or("").to_string();
        log::info("order row written", &[("order", &order), ("row", &row.to_string())]);
        Ok(serde_json::json!({ "ok": true }))
    });
    ops.operation("cancel", |row: serde_json::Value| {
        let order = row["order_id"].as_str().unwrap_or("").to_string();
        log::info("order row cancelled", &[("order", &order)]);
        Ok(serde_json::json!({ "ok": true }))
    });
}

cairn_activity::export_activity!(operations);
