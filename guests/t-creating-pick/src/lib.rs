//! Test guest "quote-or-order": an instance-creating pick. A "quote"
//! (correlated by its quote id) or an "order" (by its order id) creates the
//! instance, whichever comes. Then it waits for a "confirm" correlated by
//! the order id: after a quote, that set was never initialised, so the
//! receive faults with `cairn.correlation-violation` instead of waiting.

use cairn_guest::{Activity, Process};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Default)]
struct Vars {
    kind: String,
    confirmed: bool,
}

fn define(p: &mut Process<Vars>) -> Activity {
    p.correlation_set("quote", &[("quote_id", "/quote_id")]);
    p.correlation_set("order", &[("order_id", "/order_id")]);
    let quoted = p.snippet("quoted", |v| {
        v.kind = "quote".into();
        Ok(())
    });
    let ordered = p.snippet("ordered", |v| {
        v.kind = "order".into();
        Ok(())
    });
    let quote = p.on_message("quote", "quote", |_: &mut Vars, _: serde_json::Value| Ok(()));
    let order = p.on_message("order", "order", |_: &mut Vars, _: serde_json::Value| Ok(()));
    let start = p.pick("start", vec![(quote, quoted), (order, ordered)]).creates_instance();
    let confirm = p
        .receive("confirm", "confirm", |v: &mut Vars, _: serde_json::Value| {
            v.confirmed = true;
            Ok(())
        })
        .correlate("order");
    p.sequence("main", vec![start, confirm])
}

cairn_guest::export_process!("quote-or-order", Vars, define);
