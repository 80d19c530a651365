//! CancelOrderAndSendNotification: a microflow that marks the order cancelled
//! in the order database and notifies the customer with a one-way call.

use cairn_guest::{Activity, Process};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Default)]
struct Cancel {
    order_id: String,
    customer: String,
}

#[derive(Deserialize)]
struct Incoming {
    order_id: String,
    customer: String,
}

fn define(p: &mut Process<Cancel>) -> Activity {
    p.microflow();
    let take = p
        .receive("take", "cancel-order", |v: &mut Cancel, m: Incoming| {
            v.order_id = m.order_id;
            v.customer = m.customer;
            Ok(())
        })
        .creates_instance();
    let cancel = p.invoke_activity(
        "cancel-in-database",
        "order-db",
        "cancel",
        |v| Ok(serde_json::json!({ "order_id": v.order_id })),
        |_, _: serde_json::Value| Ok(()),
    );
    let notify = p.send_activity("notify", "notifier", "order-rejected", |v| {
        Ok(serde_json::json!({ "order_id": v.order_id, "customer": v.customer, "by": "account check" }))
    });
    p.sequence("main", vec![take, cancel, notify])
}

cairn_guest::export_process!("cancel-order-and-send-notification", Cancel, define);
