//! A process component as components were built before the later language
//! constructs (event handlers, repeat-until, switch, for-each completion,
//! fault conditions, creating picks): wit-bindgen directly on the first
//! release of the process world, `wit/process-legacy`, without the SDK
//! (which follows the current world). The host must keep deploying and
//! running such components.
//!
//! Process "legacy": doubles `n`, waits 10 ms, and sets `big` if `n > 3`.

wit_bindgen::generate!({
    world: "cairn:process/process",
    path: "../../wit/process-legacy",
    generate_all,
});

use cairn::process::types::{self as wit, Activity, IfNode, Node, ProcessKind, Transaction, WaitNode};
use serde_json::{json, Value};

const DOUBLE: u32 = 0;
const IS_BIG: u32 = 1;
const MARK: u32 = 2;

struct Legacy;

impl Guest for Legacy {
    fn describe() -> wit::Definition {
        let node = |name: &str, activity| Node { name: name.into(), activity, transaction: Transaction::Default };
        wit::Definition {
            name: "legacy".into(),
            kind: ProcessKind::LongRunning,
            keep_final_state: false,
            deferred_recovery: false,
            initial_variables: json!({ "n": 0, "big": false }).to_string(),
            correlation_sets: vec![],
            nodes: vec![
                node("main", Activity::Sequence(vec![1, 2, 3])),
                node("double", Activity::Snippet(DOUBLE)),
                node("pause", Activity::Wait(WaitNode::DurationMs(10))),
                node("check", Activity::IfElse(IfNode { condition: IS_BIG, then_branch: 4, else_branch: None })),
                node("mark", Activity::Snippet(MARK)),
            ],
            root: 0,
            handler_count: 3,
        }
    }

    fn call(handler: u32, variables: String, _message: Option<String>, _item: Option<String>) -> Result<wit::CallOutput, wit::Fault> {
        let fault = |name: &str, message: String| wit::Fault { name: name.into(), message, data: "null".into() };
        let mut v: Value = serde_json::from_str(&variables).map_err(|e| fault("legacy.bad-variables", e.to_string()))?;
        let n = v["n"].as_i64().unwrap_or(0);
        let output = match handler {
            DOUBLE => {
                v["n"] = json!(n * 2);
                None
            }
            IS_BIG => Some(json!(n > 3).to_string()),
            MARK => {
                v["big"] = json!(true);
                None
            }
            other => return Err(fault("legacy.no-such-handler", format!("handler {other}"))),
        };
        Ok(wit::CallOutput { variables: v.to_string(), output })
    }
}

export!(Legacy);
