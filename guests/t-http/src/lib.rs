//! Test guest "t-http": an activity that makes outbound HTTP requests with
//! `cairn_activity::http`, so tests can watch the host's grants, the
//! `Idempotency-Key` header it adds, and its limits.
//!
//! - `call`, input `{"method":"GET"|"POST","url":"…","body":any?,
//!   "timeout_ms":N?}`: one request (a `body` is sent as JSON; `timeout_ms`
//!   is the guest's own connect and response timeout); output `{"status":N,"body":"<text>",
//!   "idempotency_key_sent":null}` for any status (the host adds the key, the
//!   guest never sees it: ask the partner what it received).
//! - `three`, input `{"base":"http://127.0.0.1:PORT"}`: three POSTs in a row
//!   to `{base}/step/1`, `/step/2`, `/step/3` within one call; output
//!   `{"statuses":[N,N,N]}`.
//!
//! A transport error or a denial is the fault `http-failed` with the error's
//! message (`cairn.capability-denied: …` for a denial).

use cairn_activity::http::{self, Request};
use cairn_activity::{Fault, Operations};
use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Deserialize)]
struct Call {
    method: String,
    url: String,
    #[serde(default)]
    body: Option<serde_json::Value>,
    #[serde(default)]
    timeout_ms: Option<u64>,
}

#[derive(Serialize)]
struct CallResult {
    status: u16,
    body: String,
    idempotency_key_sent: Option<String>,
}

#[derive(Deserialize)]
struct Three {
    base: String,
}

#[derive(Serialize)]
struct ThreeResult {
    statuses: Vec<u16>,
}

fn call(c: Call) -> Result<CallResult, Fault> {
    let mut request = Request::new(&c.method, &c.url);
    if let Some(body) = c.body.filter(|b| !b.is_null()) {
        request = request.json(&body)?;
    }
    if let Some(ms) = c.timeout_ms {
        request = request.timeout(Duration::from_millis(ms));
    }
    let response = request.send()?;
    Ok(CallResult { status: response.status, body: response.text(), idempotency_key_sent: None })
}

fn three(t: Three) -> Result<ThreeResult, Fault> {
    let base = t.base.trim_end_matches('/');
    let mut statuses = Vec::new();
    for step in 1..=3 {
        let response = http::post_json(&format!("{base}/step/{step}"), &serde_json::json!({ "step": step }))?;
        statuses.push(response.status);
    }
    Ok(ThreeResult { statuses })
}

fn operations(ops: &mut Operations) {
    ops.operation("call", call);
    ops.operation("three", three);
}

cairn_activity::export_activity!(operations);
