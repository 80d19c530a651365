//! Account service: an activity that tells whether a customer's account is in
//! good standing (customers whose name starts with "bad" are not).

use cairn_activity::{log, Operations};

fn operations(ops: &mut Operations) {
    ops.operation("standing", |input: serde_json::Value| {
        let customer = input["customer"].as_str().unwrap_or("").to_string();
        let order = input["order_id"].as_str().unwrap_or("").to_string();
        let ok = !customer.starts_with("bad");
        log::info("account looked up", &[("order", &order), ("customer", &customer), ("ok", &ok.to_string())]);
        Ok(serde_json::json!({ "ok": ok }))
    });
}

cairn_activity::export_activity!(operations);
