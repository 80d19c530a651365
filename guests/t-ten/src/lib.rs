//! Benchmark guest "ten": ten snippets, either inside one atomic scope (one
//! persistence point) or each committing after itself (ten), by `mode`.

use cairn_guest::{Activity, Process, Retry, Transaction};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Default)]
struct Vars {
    atomic: bool,
    n: u32,
}

#[derive(Deserialize)]
struct Start {
    atomic: bool,
}

fn ten(p: &mut Process<Vars>, prefix: &str, commit_each: bool) -> Vec<Activity> {
    (0..10)
        .map(|i| {
            let s = p.snippet(&format!("{prefix}{i}"), |v| {
                v.n += 1;
                Ok(())
            });
            if commit_each {
                s.transaction(Transaction::CommitAfter)
            } else {
                s
            }
        })
        .collect()
}

fn define(p: &mut Process<Vars>) -> Activity {
    let start = p
        .receive("start", "ten-start", |v: &mut Vars, s: Start| {
            v.atomic = s.atomic;
            Ok(())
        })
        .creates_instance()
        .request_response();
    let inside = ten(p, "in-", false);
    let body = p.sequence("body", inside);
    let atomic = p.atomic_scope("tx", body, Retry::none());
    let separate = ten(p, "own-", true);
    let separate = p.sequence("separate", separate);
    let choose = p.if_else("atomic?", |v| v.atomic, atomic, Some(separate));
    let reply = p.reply("reply", "ten-start", |v| Ok(v.n));
    p.sequence("main", vec![start, choose, reply])
}

cairn_guest::export_process!("ten", Vars, define);
