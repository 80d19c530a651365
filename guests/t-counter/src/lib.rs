//! Test guest "t-counter": an activity that keeps counters in a resource
//! table with `cairn_activity::resource`, so tests can watch grants, the
//! buffered writes and their commit with the calling instance.
//!
//! Every operation takes `{"table":"…"?,"key":"…"}` (`table` defaults to
//! `counters`); a counter is stored as the document `{"value":N}`, and an
//! absent one reads as 0.
//! - `increment`: reads the counter, writes it plus one; output `{"value":N}`,
//!   the new value.
//! - `read`: output `{"value":N}`, the current value.
//! - `put-then-fail`: writes the counter plus one, then fails with the fault
//!   `counter-failed`, so the write must be dropped.
//!
//! A resource error is the fault `resource-failed` with the host's message
//! (which the host replaces with `cairn.resource-denied` for a denial).

use cairn_activity::resource::Table;
use cairn_activity::{Fault, Operations};
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
struct Target {
    #[serde(default = "counters")]
    table: String,
    key: String,
}

fn counters() -> String {
    "counters".to_string()
}

/// The stored document, and every operation's output.
#[derive(Serialize, Deserialize, Default)]
struct Counter {
    value: u64,
}

fn read(t: &Target) -> Result<(Table<Counter>, Counter), Fault> {
    let table = Table::<Counter>::open(&t.table);
    let counter = table.get(&t.key)?.unwrap_or_default();
    Ok((table, counter))
}

fn increment(t: Target) -> Result<Counter, Fault> {
    let (table, counter) = read(&t)?;
    let next = Counter { value: counter.value + 1 };
    table.put(&t.key, &next)?;
    Ok(next)
}

fn put_then_fail(t: Target) -> Result<Counter, Fault> {
    let next = increment(t)?;
    Err(Fault::new("counter-failed", format!("wrote {} and then failed", next.value)).with_data(next.value))
}

fn operations(ops: &mut Operations) {
    ops.operation("increment", increment);
    ops.operation("read", |t: Target| read(&t).map(|(_, counter)| counter));
    ops.operation("put-then-fail", put_then_fail);
}

cairn_activity::export_activity!(operations);
