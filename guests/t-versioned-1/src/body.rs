// Shared body of the "versioned" test process; `VERSION` differs per crate.
use cairn_guest::{Activity, Process};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Default)]
struct Vars {
    key: String,
    started_on: u32,
    finished_on: u32,
}

#[derive(Deserialize)]
struct Key {
    key: String,
}

fn define(p: &mut Process<Vars>) -> Activity {
    p.correlation_set("key", &[("key", "/key")]);
    let start = p
        .receive("start", "versioned-start", |v: &mut Vars, k: Key| {
            v.key = k.key;
            v.started_on = VERSION;
            Ok(())
        })
        .creates_instance()
        .correlate("key");
    let go = p.receive_any("go", "versioned-go").correlate("key");
    let finish = p.snippet("finish", |v| {
        v.finished_on = VERSION;
        Ok(())
    });
    p.sequence("main", vec![start, go, finish])
}

cairn_guest::export_process!("versioned", Vars, define);
