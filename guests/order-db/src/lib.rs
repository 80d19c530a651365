//! Order database: an activity that keeps the reference scenario's order
//! rows in the resource `orders` (granted at deploy: `--resource orders`),
//! so that every row commits with the persistence point of the instance
//! whose call wrote it, and a backup holds rows and instances consistently.
//!
//! A row is `{"order_id","customer","amount","status"}` by order id, where
//! `status` is `recorded` or `cancelled`. A cancel is final: an upsert that
//! arrives after it (the two come from separate one-way sends) keeps it.
//! - `upsert` `{"order_id","customer","amount"}` → `{"ok":true}`
//! - `cancel` `{"order_id"}` → `{"ok":true}`
//! - `lookup` `{"order_id"}` → the row, or `null`

use cairn_activity::resource::Table;
use cairn_activity::{log, Fault, Operations};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Clone, Default)]
struct OrderRow {
    order_id: String,
    #[serde(default)]
    customer: String,
    #[serde(default)]
    amount: f64,
    status: String,
}

#[derive(Deserialize)]
struct Key {
    order_id: String,
}

fn orders() -> Table<OrderRow> {
    Table::open("orders")
}

fn upsert(row: OrderRow) -> Result<serde_json::Value, Fault> {
    let table = orders();
    let status = match table.get(&row.order_id)? {
        Some(existing) if existing.status == "cancelled" => existing.status,
        _ => "recorded".to_string(),
    };
    let row = OrderRow { status, ..row };
    table.put(&row.order_id, &row)?;
    log::info("order row written", &[("order", &row.order_id), ("row", &serde_json::to_string(&row).unwrap_or_default())]);
    Ok(serde_json::json!({ "ok": true }))
}

fn cancel(key: Key) -> Result<serde_json::Value, Fault> {
    let table = orders();
    let row = table.get(&key.order_id)?.unwrap_or_else(|| OrderRow { order_id: key.order_id.clone(), ..OrderRow::default() });
    table.put(&key.order_id, &OrderRow { status: "cancelled".into(), ..row })?;
    log::info("order row cancelled", &[("order", &key.order_id)]);
    Ok(serde_json::json!({ "ok": true }))
}

fn lookup(key: Key) -> Result<Option<OrderRow>, Fault> {
    Ok(orders().get(&key.order_id)?)
}

fn operations(ops: &mut Operations) {
    ops.operation("upsert", |row: serde_json::Value| {
        let row: OrderRow = serde_json::from_value(serde_json::json!({
            "order_id": row["order_id"], "customer": row["customer"], "amount": row["amount"], "status": "recorded"
        }))
        .map_err(|e| Fault::new("bad-row", e.to_string()))?;
        upsert(row)
    });
    ops.operation("cancel", cancel);
    ops.operation("lookup", lookup);
}

cairn_activity::export_activity!(operations);
