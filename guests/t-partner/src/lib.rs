//! Test guest "partner": answers a request with double its input.

use cairn_guest::{Activity, Process};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Default)]
struct Vars {
    x: i64,
}

#[derive(Deserialize)]
struct Ask {
    x: i64,
}

fn define(p: &mut Process<Vars>) -> Activity {
    let ask = p
        .receive("ask", "partner-ask", |v: &mut Vars, a: Ask| {
            v.x = a.x;
            Ok(())
        })
        .creates_instance()
        .request_response();
    let double = p.snippet("double", |v| {
        v.x *= 2;
        Ok(())
    });
    let answer = p.reply("answer", "partner-ask", |v| Ok(serde_json::json!({ "doubled": v.x })));
    p.sequence("main", vec![ask, double, answer])
}

cairn_guest::export_process!("partner", Vars, define);
