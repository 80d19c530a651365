//! Notifier: an activity component that "sends" notifications by logging them.

use cairn_activity::{log, Operations};

fn operations(ops: &mut Operations) {
    ops.operation("order-rejected", |body: serde_json::Value| {
        let order = body["order_id"].as_str().unwrap_or("?").to_string();
        log::info("notified customer of rejection", &[("order", &order), ("body", &body.to_string())]);
        Ok(serde_json::json!({ "sent": true }))
    });
}

cairn_activity::export_activity!(operations);
