//! Benchmark guest "bench-flow": a request-response receive that creates the
//! instance, a snippet, an invoke of the "recorder" activity's `echo`, and a
//! reply, which leaves with the instance's final persistence point.

use cairn_guest::{Activity, Process};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Default)]
struct Vars {
    n: u64,
    echoed: u64,
}

#[derive(Deserialize)]
struct Start {
    n: u64,
}

fn define(p: &mut Process<Vars>) -> Activity {
    let start = p
        .receive("start", "bench-start", |v: &mut Vars, s: Start| {
            v.n = s.n;
            Ok(())
        })
        .creates_instance()
        .request_response();
    let work = p.snippet("work", |v| {
        v.n = v.n.wrapping_mul(31).wrapping_add(7);
        Ok(())
    });
    let echo = p.invoke_activity(
        "echo",
        "recorder",
        "echo",
        |v| Ok(serde_json::json!({ "n": v.n })),
        |v, out: serde_json::Value| {
            v.echoed = out["n"].as_u64().unwrap_or(0);
            Ok(())
        },
    );
    let reply = p.reply("reply", "bench-start", |v| Ok(serde_json::json!({ "echoed": v.echoed })));
    p.sequence("main", vec![start, work, echo, reply])
}

cairn_guest::export_process!("bench-flow", Vars, define);
