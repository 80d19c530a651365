//! Benchmark guest "bench-order": the three-step workflow of the side-by-side
//! harness (`cairn bench --only http-api`), the counterpart of the `order`
//! workflow of the Restate peer harness (bench/restate/service.mjs). A
//! request-response receive creates the instance; three invokes of the
//! "bench-steps" activity (validate, charge, ship) each commit their result,
//! as each `ctx.run` journals its own; the reply leaves with the final
//! persistence point.

use cairn_guest::{Activity, Process};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

#[derive(Serialize, Deserialize, Default)]
struct Vars {
    key: String,
    amount: i64,
    ok: bool,
    checksum: u64,
    charge_id: String,
    shipment: Value,
}

#[derive(Deserialize)]
struct Order {
    key: String,
    amount: Option<i64>,
}

#[derive(Deserialize)]
struct Validated {
    ok: bool,
    checksum: u64,
}

fn define(p: &mut Process<Vars>) -> Activity {
    let start = p
        .receive("start", "bench-order", |v: &mut Vars, o: Order| {
            v.key = o.key;
            v.amount = o.amount.unwrap_or(42);
            Ok(())
        })
        .creates_instance()
        .request_response();
    let validate = p.invoke_activity(
        "validate",
        "bench-steps",
        "validate",
        |v| Ok(json!({ "key": v.key, "amount": v.amount })),
        |v, out: Validated| {
            v.ok = out.ok;
            v.checksum = out.checksum;
            Ok(())
        },
    );
    let charge = p.invoke_activity(
        "charge",
        "bench-steps",
        "charge",
        |v| Ok(json!({ "key": v.key, "checksum": v.checksum })),
        |v, id: String| {
            v.charge_id = id;
            Ok(())
        },
    );
    let ship = p.invoke_activity(
        "ship",
        "bench-steps",
        "ship",
        |v| Ok(json!({ "charge_id": v.charge_id })),
        |v, shipment: Value| {
            v.shipment = shipment;
            Ok(())
        },
    );
    let reply = p.reply("reply", "bench-order", |v| {
        Ok(json!({ "key": v.key, "chargeId": v.charge_id, "shipment": v.shipment }))
    });
    p.sequence("main", vec![start, validate, charge, ship, reply])
}

cairn_guest::export_process!("bench-order", Vars, define);
