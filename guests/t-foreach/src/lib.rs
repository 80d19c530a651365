//! Test guest "each": a sequential for-each that notes each line in order,
//! then a parallel for-each that calls the recorder for every line.

use cairn_guest::{item, Activity, Process};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Default)]
struct Vars {
    lines: Vec<String>,
    in_order: Vec<String>,
    called: Vec<String>,
}

fn define(p: &mut Process<Vars>) -> Activity {
    let note = p.snippet("note", |v| {
        v.in_order.extend(item::<String>());
        Ok(())
    });
    let sequential = p.for_each("in-order", "/lines", note);
    let call = p.invoke_activity(
        "record",
        "recorder",
        "record",
        |_| Ok(serde_json::json!({ "key": item::<String>(), "what": "line" })),
        |v, _: serde_json::Value| {
            v.called.extend(item::<String>());
            Ok(())
        },
    );
    let parallel = p.for_each_parallel("all-at-once", "/lines", call);
    p.sequence("main", vec![sequential, parallel])
}

cairn_guest::export_process!("each", Vars, define);
