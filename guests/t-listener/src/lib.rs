//! Test guest "listener": created by a one-way "note" message.

use cairn_guest::{log, Activity, Process};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Default)]
struct Vars {
    key: String,
}

#[derive(Deserialize)]
struct Note {
    key: String,
}

fn define(p: &mut Process<Vars>) -> Activity {
    p.correlation_set("key", &[("key", "/key")]);
    let note = p
        .receive("note", "note", |v: &mut Vars, n: Note| {
            v.key = n.key;
            Ok(())
        })
        .creates_instance()
        .correlate("key");
    let heard = p.snippet("heard", |v| {
        log::info("listener heard", &[("key", &v.key)]);
        Ok(())
    });
    p.sequence("main", vec![note, heard])
}

cairn_guest::export_process!("listener", Vars, define);
