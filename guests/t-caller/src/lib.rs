//! Test guest "caller": invokes the "partner" process synchronously, sends a
//! one-way message that creates a "listener" instance, then takes a "poke"
//! message correlated by key (which may have arrived long before).

use cairn_guest::{Activity, Process};
use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Serialize, Deserialize, Default)]
struct Vars {
    key: String,
    doubled: i64,
    poke: String,
}

#[derive(Deserialize)]
struct Start {
    key: String,
}

#[derive(Deserialize)]
struct Answer {
    doubled: i64,
}

#[derive(Deserialize)]
struct Poke {
    text: String,
}

fn define(p: &mut Process<Vars>) -> Activity {
    p.correlation_set("key", &[("key", "/key")]);
    let start = p
        .receive("start", "call-start", |v: &mut Vars, s: Start| {
            v.key = s.key;
            Ok(())
        })
        .creates_instance()
        .correlate("key");
    let pause = p.wait_for("pause", Duration::from_millis(300));
    let ask = p.invoke_process(
        "ask",
        "partner",
        "partner-ask",
        |_| Ok(serde_json::json!({ "x": 21 })),
        |v, a: Answer| {
            v.doubled = a.doubled;
            Ok(())
        },
    );
    let tell = p.send_message("tell", "listener", "note", |v| Ok(serde_json::json!({ "key": v.key })));
    let poke = p
        .receive("poke", "poke", |v: &mut Vars, m: Poke| {
            v.poke = m.text;
            Ok(())
        })
        .correlate("key");
    p.sequence("main", vec![start, pause, ask, tell, poke])
}

cairn_guest::export_process!("caller", Vars, define);
