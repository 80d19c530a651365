//! Order approval: the README's example process.
//!
//! An order arrives and creates the instance (correlated by `order_id`). A
//! snippet validates it, the `pricing` activity prices it, and the submitter
//! gets the quote as the reply. Orders above the approval limit then wait for
//! an `approve` message for the same order id, for at most the order's
//! approval window; an approved order is confirmed, anything else is rejected
//! and the `notifier` activity is told, one way. An order that names a
//! `webhook` URL has the notifier POST the rejection there over HTTP.

use cairn_guest::{log, Activity, Fault, Process};
use serde::{Deserialize, Serialize};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const APPROVAL_LIMIT: f64 = 1000.0;

/// The variables of an order-approval instance.
#[derive(Serialize, Deserialize, Default)]
pub struct Order {
    pub order_id: String,
    pub customer: String,
    pub lines: Vec<Line>,
    pub total: f64,
    /// Deadline of the approval wait, ms since the Unix epoch.
    pub approval_due_ms: u64,
    pub approved: Option<bool>,
    pub approver: Option<String>,
    pub status: String,
    /// Where the notifier posts a rejection (a partner's URL), if anywhere.
    #[serde(default)]
    pub webhook: Option<String>,
}

#[derive(Serialize, Deserialize, Clone)]
pub struct Line {
    pub sku: String,
    pub qty: u32,
}

#[derive(Deserialize)]
struct Submit {
    order_id: String,
    customer: String,
    lines: Vec<Line>,
    #[serde(default = "default_window_ms")]
    approval_window_ms: u64,
    #[serde(default)]
    webhook: Option<String>,
}

fn default_window_ms() -> u64 {
    60_000
}

#[derive(Deserialize)]
struct Approval {
    approved: bool,
    approver: String,
}

#[derive(Deserialize)]
struct Quote {
    total: f64,
}

/// Builds the process (public so that its tests run it natively with `cairn-testkit`).
pub fn define(p: &mut Process<Order>) -> Activity {
    p.correlation_set("order", &[("order_id", "/order_id")]);

    let submit = p
        .receive("submit", "submit-order", |v: &mut Order, m: Submit| {
            let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
            v.order_id = m.order_id;
            v.customer = m.customer;
            v.lines = m.lines;
            v.webhook = m.webhook;
            v.approval_due_ms = (now + Duration::from_millis(m.approval_window_ms)).as_millis() as u64;
            v.status = "received".into();
            Ok(())
        })
        .creates_instance()
        .correlate("order")
        .request_response();

    let validate = p.snippet("validate", |v| {
        if v.lines.is_empty() {
            return Err(Fault::new("invalid-order", "an order needs at least one line").with_data(&v.order_id));
        }
        if let Some(line) = v.lines.iter().find(|l| l.qty == 0) {
            return Err(Fault::new("invalid-order", format!("line {} has quantity 0", line.sku)));
        }
        log::info("validated order", &[("order", &v.order_id), ("lines", &v.lines.len().to_string())]);
        v.status = "validated".into();
        Ok(())
    });

    let price = p.invoke_activity(
        "price",
        "pricing",
        "quote",
        |v| Ok(serde_json::json!({ "order_id": v.order_id, "lines": v.lines })),
        |v, q: Quote| {
            v.total = q.total;
            v.status = "priced".into();
            Ok(())
        },
    );

    let quote = p.reply("quote", "submit-order", |v| {
        let needs_approval = v.total > APPROVAL_LIMIT;
        Ok(serde_json::json!({ "order_id": v.order_id, "total": v.total, "needs_approval": needs_approval }))
    });

    let approval = p
        .receive("await-approval", "approve", |v: &mut Order, a: Approval| {
            v.approved = Some(a.approved);
            v.approver = Some(a.approver);
            Ok(())
        })
        .correlate("order");
    let approval = p.with_timeout(
        approval,
        |v| UNIX_EPOCH + Duration::from_millis(v.approval_due_ms),
        |v| {
            log::warn("approval window passed", &[("order", &v.order_id)]);
            v.approved = Some(false);
            v.approver = Some("timeout".into());
            Ok(())
        },
    );
    let auto = p.snippet("auto-approve", |v| {
        v.approved = Some(true);
        v.approver = Some("auto".into());
        Ok(())
    });
    let decide = p.if_else("needs-approval", |v| v.total > APPROVAL_LIMIT, approval, Some(auto));

    let confirm = p.snippet("confirm", |v| {
        v.status = "confirmed".into();
        log::info("order confirmed", &[("order", &v.order_id), ("total", &format!("{:.2}", v.total))]);
        Ok(())
    });
    let mark_rejected = p.snippet("mark-rejected", |v| {
        v.status = "rejected".into();
        Ok(())
    });
    let notify = p.send_activity("notify-rejection", "notifier", "order-rejected", |v| {
        Ok(serde_json::json!({ "order_id": v.order_id, "customer": v.customer, "by": v.approver, "webhook": v.webhook }))
    });
    let rejected = p.sequence("rejected", vec![mark_rejected, notify]);
    let outcome = p.if_else("approved", |v| v.approved == Some(true), confirm, Some(rejected));

    p.sequence("main", vec![submit, validate, price, quote, decide, outcome])
}

cairn_guest::export_process!("order-approval", Order, define);
