//! `cairn partner`: a small local HTTP partner for demos and tests, the
//! other end of an activity's outbound requests.
//!
//! It records every request it receives (but its own `/_requests`) as one
//! JSON object, appended and flushed as one line to `--log FILE` if given,
//! and prints a one-line summary to stdout:
//! `POST /notify idempotency-key=<key or -> 123 bytes -> 200`. The first
//! line it prints is `listening on http://ADDR` (with the real port when
//! `--listen` asks for port 0).
//!
//! A record: `{"method", "path", "query" (text or null), "headers" (object,
//! names in lower case, repeated values joined by ", "), "idempotency_key"
//! (or null), "body" (text; bytes that are not UTF-8 become U+FFFD),
//! "received_ms" (ms since the Unix epoch), "status" (what it answered)}`.
//!
//! Routes, any method:
//! - `/status/{code}`: answers `code` with `{"status":code}`.
//! - `/slow/{ms}`: waits `ms` milliseconds (at most 10 minutes), then 200.
//! - `/big/{bytes}`: 200 with a body of `bytes` bytes of `x` (at most 256 MiB).
//! - `/redirect?to=URL`: 302 with `Location: URL`.
//! - `/fail-first/{n}/...`: 503 for the first `n` requests of a call, then
//!   200. A call is the `Idempotency-Key` without its last segment when
//!   that is a number (Cairn's keys end with the attempt number, so the
//!   attempts of one call count together; a request sent again with the same
//!   key counts too), counted per path.
//! - `GET /_requests`: every recorded request, oldest first, as a JSON array.
//! - anything else: 200 with `{"ok":true,"received":N}`, N the number of
//!   requests recorded so far, this one included.
//!
//! A malformed route parameter (`/status/abc`, `/redirect` without `to`)
//! answers 400 and is recorded like any other request.

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};

/// The longest `/slow/{ms}` waits.
const MAX_SLOW: Duration = Duration::from_secs(600);
/// The largest `/big/{bytes}` body.
const MAX_BIG: u64 = 256 << 20;
/// The largest request body the partner reads.
const MAX_REQUEST_BODY: usize = 64 << 20;

/// `cairn partner`: serve the local test partner.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Address to listen on (port 0: any free port, printed at start).
    #[arg(long, default_value = "127.0.0.1:7702")]
    pub listen: String,
    /// Append each received request as one JSON line to FILE (default:
    /// stdout summaries only).
    #[arg(long, value_name = "FILE")]
    pub log: Option<PathBuf>,
}

/// What the partner has seen, shared by its handlers.
struct Partner {
    /// Every recorded request, oldest first.
    records: Mutex<Vec<serde_json::Value>>,
    /// `/fail-first` requests seen per (path, call).
    failures: Mutex<HashMap<(String, String), u64>>,
    /// The `--log` file, written one line per request.
    log: Option<Mutex<File>>,
}

/// Serves until SIGINT or SIGTERM; returns the process exit code (0 after a
/// signal, 1 if it cannot listen or handle signals, 2 if the log file
/// cannot be opened).
///
/// ```no_run
/// let code = cairn::partner::run(cairn::partner::Args { listen: "127.0.0.1:0".into(), log: None });
/// ```
pub fn run(args: Args) -> i32 {
    let log = match &args.log {
        None => None,
        Some(path) => match std::fs::OpenOptions::new().create(true).append(true).open(path) {
            Ok(file) => Some(Mutex::new(file)),
            Err(e) => {
                eprintln!("error: cannot open the log file {}: {e}", path.display());
                return 2;
            }
        },
    };
    let partner = Arc::new(Partner { records: Mutex::new(Vec::new()), failures: Mutex::new(HashMap::new()), log });
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return 1;
        }
    };
    runtime.block_on(serve(args.listen, partner))
}

async fn serve(listen: String, partner: Arc<Partner>) -> i32 {
    // Registered before anything else, so that a signal sent as soon as the
    // first line is printed already stops the partner cleanly.
    let signals = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()));
    let (mut term, mut interrupt) = match signals {
        (Ok(term), Ok(interrupt)) => (term, interrupt),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("error: cannot handle SIGTERM and SIGINT: {e}");
            return 1;
        }
    };
    let stopped = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = interrupt.recv() => {}
        }
    };
    let listener = match tokio::net::TcpListener::bind(&listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: cannot listen on {listen}: {e}");
            return 1;
        }
    };
    let bound = listener.local_addr().map(|a| a.to_string()).unwrap_or(listen);
    say(&format!("listening on http://{bound}"));
    let app = Router::new().fallback(answer).layer(DefaultBodyLimit::max(MAX_REQUEST_BODY)).with_state(partner);
    match axum::serve(listener, app).with_graceful_shutdown(stopped).await {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: serving on {bound}: {e}");
            1
        }
    }
}

/// Prints one line to stdout and flushes it (stdout may be a pipe).
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// What a route answers, decided before the request is recorded.
enum Answer {
    Status(StatusCode, serde_json::Value),
    Slow(Duration),
    Big(u64),
    Redirect(String),
    /// 200 `{"ok":true,"received":N}`, N filled in when recorded.
    Received,
    BadRequest(String),
}

impl Answer {
    fn status(&self) -> StatusCode {
        match self {
            Answer::Status(code, _) => *code,
            Answer::Redirect(_) => StatusCode::FOUND,
            Answer::BadRequest(_) => StatusCode::BAD_REQUEST,
            Answer::Slow(_) | Answer::Big(_) | Answer::Received => StatusCode::OK,
        }
    }
}

async fn answer(State(partner): State<Arc<Partner>>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let path = uri.path().to_string();
    if method == Method::GET && path == "/_requests" {
        let records = partner.records.lock().unwrap_or_else(|e| e.into_inner()).clone();
        return axum::Json(records).into_response();
    }
    let key = headers.get("idempotency-key").map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let decided = route(&partner, &path, &uri, key.as_deref());
    let received = record(&partner, &method, &uri, &headers, key.as_deref(), &body, decided.status());
    match decided {
        Answer::Status(code, body) => (code, axum::Json(body)).into_response(),
        Answer::Slow(wait) => {
            tokio::time::sleep(wait).await;
            axum::Json(serde_json::json!({ "ok": true, "slept_ms": wait.as_millis() as u64 })).into_response()
        }
        Answer::Big(bytes) => (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain")], vec![b'x'; bytes as usize]).into_response(),
        Answer::Redirect(to) => match header::HeaderValue::from_str(&to) {
            Ok(location) => (StatusCode::FOUND, [(header::LOCATION, location)]).into_response(),
            Err(_) => (StatusCode::BAD_REQUEST, axum::Json(serde_json::json!({ "error": "`to` is not a header value" }))).into_response(),
        },
        Answer::Received => axum::Json(serde_json::json!({ "ok": true, "received": received })).into_response(),
        Answer::BadRequest(why) => (StatusCode::BAD_REQUEST, axum::Json(serde_json::json!({ "error": why }))).into_response(),
    }
}

/// Decides the answer by path (see the module doc).
fn route(partner: &Partner, path: &str, uri: &Uri, key: Option<&str>) -> Answer {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let number = |s: Option<&&str>| s.and_then(|s| s.parse::<u64>().ok());
    match segments.first().copied() {
        Some("status") => match number(segments.get(1)).and_then(|c| StatusCode::from_u16(c as u16).ok().filter(|_| c <= 999)) {
            Some(code) => Answer::Status(code, serde_json::json!({ "status": code.as_u16() })),
            None => Answer::BadRequest("/status/{code}: code is a status from 100 to 999".into()),
        },
        Some("slow") => match number(segments.get(1)) {
            Some(ms) => Answer::Slow(Duration::from_millis(ms).min(MAX_SLOW)),
            None => Answer::BadRequest("/slow/{ms}: ms is a number".into()),
        },
        Some("big") => match number(segments.get(1)) {
            Some(bytes) => Answer::Big(bytes.min(MAX_BIG)),
            None => Answer::BadRequest("/big/{bytes}: bytes is a number".into()),
        },
        Some("redirect") => {
            let query: Option<Query<HashMap<String, String>>> = Query::try_from_uri(uri).ok();
            match query.and_then(|Query(q)| q.get("to").cloned()) {
                Some(to) => Answer::Redirect(to),
                None => Answer::BadRequest("/redirect?to=URL: `to` is missing".into()),
            }
        }
        Some("fail-first") => match number(segments.get(1)) {
            Some(n) => {
                let call = key.map(call_of_key).unwrap_or_default().to_string();
                let mut failures = partner.failures.lock().unwrap_or_else(|e| e.into_inner());
                let seen = failures.entry((path.to_string(), call)).or_default();
                *seen += 1;
                if *seen <= n {
                    Answer::Status(StatusCode::SERVICE_UNAVAILABLE, serde_json::json!({ "ok": false, "failing": *seen, "of": n }))
                } else {
                    Answer::Status(StatusCode::OK, serde_json::json!({ "ok": true, "after_failures": n }))
                }
            }
            None => Answer::BadRequest("/fail-first/{n}/...: n is a number".into()),
        },
        _ => Answer::Received,
    }
}

/// The call an idempotency key belongs to: the key without its last
/// segment if that is a number (Cairn's attempt number), else the key.
fn call_of_key(key: &str) -> &str {
    match key.rsplit_once('/') {
        Some((call, attempt)) if !attempt.is_empty() && attempt.bytes().all(|b| b.is_ascii_digit()) => call,
        _ => key,
    }
}

/// Records a request (memory, log file, stdout summary); returns how many
/// are recorded, this one included.
fn record(partner: &Partner, method: &Method, uri: &Uri, headers: &HeaderMap, key: Option<&str>, body: &Bytes, status: StatusCode) -> usize {
    let mut header_map = serde_json::Map::new();
    for (name, value) in headers {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        match header_map.get_mut(name.as_str()) {
            Some(serde_json::Value::String(previous)) => {
                previous.push_str(", ");
                previous.push_str(&value);
            }
            _ => {
                header_map.insert(name.as_str().to_string(), serde_json::Value::String(value));
            }
        }
    }
    let entry = serde_json::json!({
        "method": method.as_str(),
        "path": uri.path(),
        "query": uri.query(),
        "headers": header_map,
        "idempotency_key": key,
        "body": String::from_utf8_lossy(body),
        "received_ms": crate::now_ms(),
        "status": status.as_u16(),
    });
    let line = entry.to_string();
    let count = {
        let mut records = partner.records.lock().unwrap_or_else(|e| e.into_inner());
        records.push(entry);
        records.len()
    };
    if let Some(log) = &partner.log {
        let mut file = log.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = writeln!(file, "{line}").and_then(|()| file.flush()) {
            eprintln!("error: writing the partner log: {e}");
        }
    }
    let target = match uri.query() {
        Some(q) => format!("{}?{q}", uri.path()),
        None => uri.path().to_string(),
    };
    say(&format!("{method} {target} idempotency-key={} {} bytes -> {}", key.unwrap_or("-"), body.len(), status.as_u16()));
    count
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_attempts_of_one_call_count_as_one_call() {
        assert_eq!(call_of_key("0193/main/notify/2/1"), "0193/main/notify/2");
        assert_eq!(call_of_key("0193/main/notify/2/2"), "0193/main/notify/2");
        assert_eq!(call_of_key("abc"), "abc");
        assert_eq!(call_of_key("abc/x"), "abc/x");
    }
}
