//! OrderHandling, the main process of the reference scenario (docs/semantics.md
//! section 8). Long-running. It takes an order (an instance-creating receive
//! correlated by order id), starts CheckCustomerAccountStatus asynchronously,
//! sends the order to UpdateOrderDatabase one way, and waits for the account
//! report. On a bad account it sends CancelOrderAndSendNotification one way.
//! First it looks the order up in the order database (the `orders`
//! resource, through the `order-db` activity): an order id seen before is
//! noted in `previous_status`.

use cairn_guest::{log, Activity, Process};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Default)]
struct Order {
    order_id: String,
    customer: String,
    amount: f64,
    account_ok: Option<bool>,
    status: String,
    /// The order database's row status for this order id when it arrived (None: a new order).
    previous_status: Option<String>,
}

#[derive(Deserialize)]
struct Incoming {
    order_id: String,
    customer: String,
    amount: f64,
}

#[derive(Deserialize)]
struct AccountReport {
    ok: bool,
}

fn define(p: &mut Process<Order>) -> Activity {
    p.correlation_set("order", &[("order_id", "/order_id")]);
    let take = p
        .receive("take-order", "order", |v: &mut Order, m: Incoming| {
            v.order_id = m.order_id;
            v.customer = m.customer;
            v.amount = m.amount;
            v.status = "received".into();
            Ok(())
        })
        .creates_instance()
        .correlate("order");
    let lookup = p.invoke_activity(
        "look-up",
        "order-db",
        "lookup",
        |v| Ok(serde_json::json!({ "order_id": v.order_id })),
        |v, row: serde_json::Value| {
            v.previous_status = row["status"].as_str().map(str::to_string);
            Ok(())
        },
    );
    let check = p.start_process("check-account", "check-customer-account-status", "check-account", |v| {
        Ok(serde_json::json!({ "order_id": v.order_id, "customer": v.customer }))
    });
    let record = p.send_message("update-database", "update-order-database", "record-order", |v| {
        Ok(serde_json::json!({ "order_id": v.order_id, "customer": v.customer, "amount": v.amount }))
    });
    let report = p
        .receive("account-report", "account-status", |v: &mut Order, r: AccountReport| {
            v.account_ok = Some(r.ok);
            Ok(())
        })
        .correlate("order");
    let accept = p.snippet("accept", |v| {
        v.status = "accepted".into();
        log::info("order accepted", &[("order", &v.order_id)]);
        Ok(())
    });
    let cancel_mark = p.snippet("mark-cancelled", |v| {
        v.status = "cancelled".into();
        log::info("order cancelled: bad account", &[("order", &v.order_id), ("customer", &v.customer)]);
        Ok(())
    });
    let cancel = p.send_message("cancel", "cancel-order-and-send-notification", "cancel-order", |v| {
        Ok(serde_json::json!({ "order_id": v.order_id, "customer": v.customer }))
    });
    let cancelled = p.sequence("cancelled", vec![cancel_mark, cancel]);
    let decide = p.if_else("account-ok", |v| v.account_ok == Some(true), accept, Some(cancelled));
    p.sequence("main", vec![take, lookup, check, record, report, decide])
}

cairn_guest::export_process!("order-handling", Order, define);
