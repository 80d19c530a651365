//! Benchmark guest "bench-single": the one-step workflow of the side-by-side
//! harness (`cairn bench --only http-api`), the counterpart of the `single`
//! service of the Restate peer harness (bench/restate/service.mjs): a
//! request-response receive that creates the instance, one invoke of the
//! "bench-steps" activity, and the reply with its result.

use cairn_guest::{Activity, Process};
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Serialize, Deserialize, Default)]
struct Vars {
    input: Value,
    result: Value,
}

fn define(p: &mut Process<Vars>) -> Activity {
    let start = p
        .receive("start", "bench-single", |v: &mut Vars, input: Value| {
            v.input = input;
            Ok(())
        })
        .creates_instance()
        .request_response();
    let only = p.invoke_activity(
        "only",
        "bench-steps",
        "only",
        |v| Ok(v.input.clone()),
        |v, out: Value| {
            v.result = out;
            Ok(())
        },
    );
    let reply = p.reply("reply", "bench-single", |v| Ok(v.result.clone()));
    p.sequence("main", vec![start, only, reply])
}

cairn_guest::export_process!("bench-single", Vars, define);
