//! Test guest "picker": a pick between an approval message and a 1500 ms
//! timer; whichever comes first decides the outcome.

use cairn_guest::{Activity, Process};
use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Serialize, Deserialize, Default)]
struct Vars {
    key: String,
    outcome: String,
    by: String,
}

#[derive(Deserialize)]
struct Start {
    key: String,
}

#[derive(Deserialize)]
struct Approval {
    by: String,
}

fn define(p: &mut Process<Vars>) -> Activity {
    p.correlation_set("key", &[("key", "/key")]);
    let start = p
        .receive("start", "pick-start", |v: &mut Vars, s: Start| {
            v.key = s.key;
            Ok(())
        })
        .creates_instance()
        .correlate("key");
    let approval = p.on_message("pick-approve", "key", |v: &mut Vars, a: Approval| {
        v.by = a.by;
        Ok(())
    });
    let approved = p.snippet("approved", |v| {
        v.outcome = "approved".into();
        Ok(())
    });
    let window = p.after(Duration::from_millis(1500));
    let expired = p.snippet("expired", |v| {
        v.outcome = "expired".into();
        Ok(())
    });
    let decide = p.pick("decide", vec![(approval, approved), (window, expired)]);
    p.sequence("main", vec![start, decide])
}

cairn_guest::export_process!("picker", Vars, define);
