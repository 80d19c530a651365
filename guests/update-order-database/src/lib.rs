//! UpdateOrderDatabase: a short-running partner (a microflow) that records
//! the order through the order-db activity.

use cairn_guest::{Activity, Process};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Default)]
struct Row {
    order_id: String,
    customer: String,
    amount: f64,
    stored: bool,
}

#[derive(Deserialize)]
struct Incoming {
    order_id: String,
    customer: String,
    amount: f64,
}

fn define(p: &mut Process<Row>) -> Activity {
    p.microflow();
    p.discard_final_state();
    let take = p
        .receive("take", "record-order", |v: &mut Row, m: Incoming| {
            v.order_id = m.order_id;
            v.customer = m.customer;
            v.amount = m.amount;
            Ok(())
        })
        .creates_instance();
    let store = p.invoke_activity(
        "store",
        "order-db",
        "upsert",
        |v| Ok(serde_json::json!({ "order_id": v.order_id, "customer": v.customer, "amount": v.amount })),
        |v, _: serde_json::Value| {
            v.stored = true;
            Ok(())
        },
    );
    p.sequence("main", vec![take, store])
}

cairn_guest::export_process!("update-order-database", Row, define);
