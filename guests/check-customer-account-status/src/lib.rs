//! CheckCustomerAccountStatus: a long-running partner with its own
//! transaction context. Its receive commits after, its snippet participates,
//! its invoke of the account service commits after; it reports back to
//! OrderHandling by a message correlated by order id.

use cairn_guest::{log, Activity, Process, Transaction};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Default)]
struct Check {
    order_id: String,
    customer: String,
    normalized: String,
    ok: bool,
}

#[derive(Deserialize)]
struct Request {
    order_id: String,
    customer: String,
}

#[derive(Deserialize)]
struct Standing {
    ok: bool,
}

fn define(p: &mut Process<Check>) -> Activity {
    p.correlation_set("order", &[("order_id", "/order_id")]);
    let take = p
        .receive("take-request", "check-account", |v: &mut Check, r: Request| {
            v.order_id = r.order_id;
            v.customer = r.customer;
            Ok(())
        })
        .creates_instance()
        .correlate("order")
        .transaction(Transaction::CommitAfter);
    let normalize = p
        .snippet("normalize", |v| {
            v.normalized = v.customer.trim().to_lowercase();
            log::info("checking account", &[("order", &v.order_id), ("customer", &v.normalized)]);
            Ok(())
        })
        .transaction(Transaction::Participates);
    let lookup = p
        .invoke_activity(
            "lookup",
            "account-service",
            "standing",
            |v| Ok(serde_json::json!({ "customer": v.normalized, "order_id": v.order_id })),
            |v, s: Standing| {
                v.ok = s.ok;
                Ok(())
            },
        )
        .transaction(Transaction::CommitAfter);
    let report = p.send_message("report", "order-handling", "account-status", |v| {
        Ok(serde_json::json!({ "order_id": v.order_id, "ok": v.ok }))
    });
    p.sequence("main", vec![take, normalize, lookup, report])
}

cairn_guest::export_process!("check-customer-account-status", Check, define);
