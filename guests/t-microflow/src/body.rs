// Shared body of the microflow test guests: takes a request, calls the
// recorder (inline), sends it a one-way call (buffered to the end), may fail,
// and replies.
use cairn_guest::{Activity, Fault, Process};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Default)]
struct Vars {
    key: String,
    fail: bool,
    recorded: bool,
}

#[derive(Deserialize)]
struct Start {
    key: String,
    #[serde(default)]
    fail: bool,
}

fn define(p: &mut Process<Vars>) -> Activity {
    p.microflow();
    if !KEEP_FINAL_STATE {
        p.discard_final_state();
    }
    let start = p
        .receive("start", OPERATION, |v: &mut Vars, s: Start| {
            v.key = s.key;
            v.fail = s.fail;
            Ok(())
        })
        .creates_instance()
        .request_response();
    let record = p.invoke_activity(
        "record",
        "recorder",
        "record",
        |v| Ok(serde_json::json!({ "key": v.key, "what": "record" })),
        |v, _: serde_json::Value| {
            v.recorded = true;
            Ok(())
        },
    );
    let tell = p.send_activity("tell", "recorder", "record", |v| Ok(serde_json::json!({ "key": v.key, "what": "sent" })));
    let check = p.snippet("check", |v| if v.fail { Err(Fault::new("micro-failed", "asked to fail")) } else { Ok(()) });
    let reply = p.reply("reply", OPERATION, |v| Ok(serde_json::json!({ "key": v.key, "recorded": v.recorded })));
    p.sequence("main", vec![start, record, tell, check, reply])
}

cairn_guest::export_process!(NAME, Vars, define);
