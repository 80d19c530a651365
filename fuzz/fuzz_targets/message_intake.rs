//! Message intake: the body of `POST /v1/messages` as the host takes it in
//! and routes it, minus the store. The input is the HTTP request body.
//!
//! The host's path (`host/src/api/mod.rs` `send_message`, then
//! `host/src/service/intake.rs` `accept_message` and `route`) is serde_json
//! plus one engine function: the envelope is parsed into `SendRequest` (its
//! shape is mirrored below), the message body (a JSON value) is written back
//! to text, intake checks that text is JSON, and routing takes the values of
//! correlation sets from it with `cairn_engine::correlation_values`: for
//! each receive or pick branch on the message's operation of every real
//! definition in `fuzz/definitions/`, and for an instance-creating receive.
//! Here also for a set made of the pointers the input names in an extra
//! `"pointers"` field (which the host ignores).
//!
//! Besides never panicking, correlation values must be canonical: the
//! values intake computes from the re-serialized body equal those of the
//! original text and of the text serialized once more (an instance's
//! correlation, taken by the engine from a delivered body, must match the
//! key a later message is routed by), and they are a JSON array with one
//! non-null value per property.
#![no_main]

use cairn_engine::definition::Property;
use cairn_engine::{correlation_values, Activity, CorrelationSet};
use libfuzzer_sys::fuzz_target;
use serde::Deserialize;
use serde_json::Value;

/// The host's `SendRequest` (`host/src/api/mod.rs`), field for field, plus
/// the fuzz-only `pointers`.
#[derive(Deserialize)]
#[allow(dead_code)]
struct SendRequest {
    operation: String,
    body: Value,
    id: Option<String>,
    #[serde(default)]
    wait_reply: bool,
    timeout_ms: Option<u64>,
    #[serde(default)]
    pointers: Vec<String>,
}

fuzz_target!(|data: &[u8]| {
    let Ok(req) = serde_json::from_slice::<SendRequest>(data) else { return };
    // send_message: the body leaves the API as JSON text.
    let body = req.body.to_string();
    // accept_message: the text must be JSON (it is: the API wrote it).
    assert!(serde_json::from_str::<Value>(&body).is_ok(), "the API's body text is not JSON: {body}");
    let raw = raw_body(data);

    let mut sets: Vec<CorrelationSet> = Vec::new();
    for def in cairn_fuzz::definitions() {
        // route, step 1: receives and pick branches that correlate on this operation.
        for sub in def.subscriptions() {
            if sub.operation != req.operation || sub.creates_instance {
                continue;
            }
            if let Some(name) = &sub.correlation {
                sets.push(def.correlation_set(name).expect("validated definitions declare their sets").clone());
            }
        }
        // route, step 2: an instance-creating receive of this operation.
        if let Some((_, node)) = def.creating_receive() {
            if let Activity::Receive { operation, correlation: Some(name), .. } = &node.activity {
                if *operation == req.operation {
                    sets.push(def.correlation_set(name).expect("validated definitions declare their sets").clone());
                }
            }
        }
    }
    if !req.pointers.is_empty() {
        let properties = req.pointers.iter().enumerate().map(|(i, p)| Property { name: format!("p{i}"), pointer: p.clone() }).collect();
        sets.push(CorrelationSet { name: "fuzz".into(), properties });
    }

    for set in &sets {
        let values = correlation_values(set, &body);
        if let Ok(v) = &values {
            let array: Vec<Value> = serde_json::from_str(v).expect("correlation values are JSON");
            assert_eq!(array.len(), set.properties.len());
            assert!(array.iter().all(|v| !v.is_null()), "a correlation value is null: {v}");
            // Serialized once more, the body correlates the same.
            let again = serde_json::from_str::<Value>(&body).unwrap().to_string();
            assert_eq!(correlation_values(set, &again).as_ref(), Ok(v), "correlation values change when the body is re-serialized");
        }
        // The body as the client wrote it (as a send between instances
        // delivers it, unserialized) correlates as the API's text does.
        if let Some(raw) = raw {
            let direct = correlation_values(set, raw);
            match (&values, &direct) {
                (Ok(a), Ok(b)) => assert_eq!(a, b, "the body's own text and its re-serialization correlate differently"),
                (Ok(_), Err(e)) | (Err(e), Ok(_)) => panic!("only one of the body's text and its re-serialization correlates: {e}"),
                (Err(_), Err(_)) => {}
            }
        }
    }
});

/// The body's own text in the request, if the request is an object whose
/// `body` field can be cut out of it.
fn raw_body(data: &[u8]) -> Option<&str> {
    #[derive(Deserialize)]
    struct Raw<'a> {
        #[serde(borrow)]
        body: &'a serde_json::value::RawValue,
    }
    let raw: Raw = serde_json::from_slice(data).ok()?;
    Some(raw.body.get())
}
