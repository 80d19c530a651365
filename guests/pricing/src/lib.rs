//! Pricing: an activity component that quotes an order from a price list.

use cairn_activity::{log, Fault, Operations};
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
struct QuoteRequest {
    order_id: String,
    lines: Vec<Line>,
}

#[derive(Deserialize)]
struct Line {
    sku: String,
    qty: u32,
}

#[derive(Serialize)]
struct Quote {
    total: f64,
}

fn unit_price(sku: &str) -> Option<f64> {
    match sku {
        "widget" => Some(12.5),
        "gadget" => Some(99.0),
        "gizmo" => Some(450.0),
        _ => None,
    }
}

fn operations(ops: &mut Operations) {
    ops.operation("quote", |r: QuoteRequest| {
        let mut total = 0.0;
        for line in &r.lines {
            let price = unit_price(&line.sku)
                .ok_or_else(|| Fault::new("unknown-sku", format!("no price for '{}'", line.sku)).with_data(&line.sku))?;
            total += price * line.qty as f64;
        }
        log::info("priced order", &[("order", &r.order_id), ("total", &format!("{total:.2}"))]);
        Ok(Quote { total })
    });
}

cairn_activity::export_activity!(operations);
