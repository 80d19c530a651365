//! Notifier: an activity component that notifies a customer of a rejected
//! order. It always logs the notification (`notified customer of
//! rejection`); if its input carries a `"webhook"` URL (the process passes
//! one when the demo runs a partner), it also POSTs the input there as JSON
//! through `wasi:http`, which the deployment must be granted
//! (`cairn deploy notifier.wasm --allow-http PREFIX`).
//!
//! Operation `order-rejected`, input `{"order_id":…,"customer":…,"by":…,
//! "webhook":"http://…"?}`; output `{"sent":true}`, plus `"webhook_status":N`
//! when it posted. A request that fails, or a partner answering other than
//! 2xx, is a fault (`http-failed`, or `notification-refused` with the status
//! and body as data) so that the caller's retry policy may send it again.
//! The host adds the call's `Idempotency-Key` (`instance/path/call/attempt`)
//! to the request, so the partner can tell an attempt sent again.

use cairn_activity::{http, log, Fault, Operations};

fn order_rejected(body: serde_json::Value) -> Result<serde_json::Value, Fault> {
    let order = body["order_id"].as_str().unwrap_or("?").to_string();
    let Some(webhook) = body["webhook"].as_str().filter(|url| !url.is_empty()) else {
        log::info("notified customer of rejection", &[("order", &order), ("body", &body.to_string())]);
        return Ok(serde_json::json!({ "sent": true }));
    };
    let response = http::post_json(webhook, &body)?;
    if !response.is_success() {
        return Err(Fault::new(
            "notification-refused",
            format!("the partner at {webhook} answered {} to the notification of order {order}", response.status),
        )
        .with_data(serde_json::json!({ "status": response.status, "body": response.text() })));
    }
    let status = response.status.to_string();
    log::info(
        "notified customer of rejection",
        &[("order", &order), ("body", &body.to_string()), ("webhook", webhook), ("status", &status)],
    );
    Ok(serde_json::json!({ "sent": true, "webhook_status": response.status }))
}

fn operations(ops: &mut Operations) {
    ops.operation("order-rejected", order_rejected);
}

cairn_activity::export_activity!(operations);
