//! Test guest "basics": sequence, snippet, if/else, while, wait, throw and
//! terminate, chosen by the `mode` variable. Every snippet also bumps a
//! static counter and records what it saw: since each handler runs in a
//! fresh instance, it must always see 1.

use cairn_guest::{Activity, Process};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

static CALLS_IN_THIS_INSTANCE: AtomicU32 = AtomicU32::new(0);

#[derive(Serialize, Deserialize, Default)]
struct Vars {
    mode: String,
    n: u32,
    log: Vec<String>,
    /// The static counter as each snippet saw it.
    counter_seen: Vec<u32>,
}

fn note(v: &mut Vars, what: &str) {
    let seen = CALLS_IN_THIS_INSTANCE.fetch_add(1, Ordering::SeqCst) + 1;
    v.counter_seen.push(seen);
    v.log.push(what.to_string());
}

fn define(p: &mut Process<Vars>) -> Activity {
    let init = p.snippet("init", |v| {
        note(v, "init");
        Ok(())
    });
    let step = p.snippet("step", |v| {
        v.n += 1;
        note(v, &format!("step {}", v.n));
        Ok(())
    });
    let looped = p.while_loop("loop", |v| v.n < 3, step);
    let fail = p.throw_with("fail", "requested-fault", "the input asked for a fault", |v| serde_json::json!({ "n": v.n }));
    let stop = p.terminate("stop");
    let skip = p.snippet("skip", |v| {
        note(v, "skip");
        Ok(())
    });
    let terminate_or_skip = p.if_else("terminate?", |v| v.mode == "terminate", stop, Some(skip));
    let branch = p.if_else("throw?", |v| v.mode == "throw", fail, Some(terminate_or_skip));
    let pause = p.wait_for("pause", Duration::from_millis(300));
    let done = p.snippet("done", |v| {
        note(v, "done");
        Ok(())
    });
    p.sequence("main", vec![init, looped, branch, pause, done])
}

cairn_guest::export_process!("basics", Vars, define);
