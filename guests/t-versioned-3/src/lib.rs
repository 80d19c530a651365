//! Test guest "versioned", version 3, for migration: the receive `go` is
//! renamed `await-go`, and the variables gain `region`, which has no
//! default (variables of version 1 without it do not decode).

use cairn_guest::{Activity, Process};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Default)]
struct Vars {
    key: String,
    started_on: u32,
    finished_on: u32,
    region: String,
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
            v.started_on = 3;
            Ok(())
        })
        .creates_instance()
        .correlate("key");
    let go = p.receive_any("await-go", "versioned-go").correlate("key");
    let finish = p.snippet("finish", |v| {
        v.finished_on = 3;
        Ok(())
    });
    p.sequence("main", vec![start, go, finish])
}

cairn_guest::export_process!("versioned", Vars, define);
