//! Cluster mode: any host serves the whole API. Reads are served from the
//! shared store wherever they land, and messages are taken in anywhere; a
//! request that changes one instance (an operator verb, a variables edit, a
//! retry or a migration: a non-GET under `/v1/instances/{id}/…`) needs the
//! instance's driver, and a worker's completion of a task (`POST
//! /v1/tasks/{INSTANCE:CALL}/{verb}`) the task's lease, both of which live on
//! the host holding the instance's partition's lease.
//! Such a request is forwarded, as it came (method, path, query, body,
//! `authorization`), to that host's advertised address (`serve
//! --advertise`), and its answer returned as it is.
//!
//! A forwarded request carries `x-cairn-forwarded-by`; a host that gets one
//! for an instance it does not own (the partition moved meanwhile) answers
//! 503 "try again" instead of forwarding it further, so a request hops at
//! most once. Owns no state.

use crate::service::{Error, ErrorKind, Service};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::time::Duration;

/// The header a forwarded request carries: the forwarding host's node name.
pub const FORWARDED_BY: &str = "x-cairn-forwarded-by";

/// How long a forwarded request may take: above the longest verb's own
/// wait (a control waits up to 30 s for the instance's next transition).
const FORWARD_TIMEOUT: Duration = Duration::from_secs(60);

/// The largest body forwarded: variables and migration maps, far below it
/// (the body limit of the API applies before, on this host).
const MAX_FORWARDED_BODY: usize = 64 << 20;

/// The instance a request changes, if it is one that must run where the
/// instance runs: a non-GET under `/v1/instances/{id}/…`, or a task's
/// completion under `/v1/tasks/{id}:{call}/…`.
fn changed_instance(method: &Method, path: &str) -> Option<String> {
    if method == Method::GET || method == Method::HEAD {
        return None;
    }
    if let Some(rest) = path.strip_prefix("/v1/instances/") {
        let (id, verb) = rest.split_once('/')?;
        return (!id.is_empty() && !verb.is_empty()).then(|| id.to_string());
    }
    // A worker's completion of task `INSTANCE:CALL`: its lease lives on the
    // instance's owner.
    let rest = path.strip_prefix("/v1/tasks/")?;
    let (task, verb) = rest.split_once('/')?;
    // Clients may send the ':' percent-encoded.
    let task = task.replace("%3A", ":").replace("%3a", ":");
    let (id, _call) = task.split_once(':')?;
    (!id.is_empty() && !verb.is_empty()).then(|| id.to_string())
}

pub async fn to_owner(State(svc): State<Service>, req: Request, next: Next) -> Response {
    let Some(id) = changed_instance(req.method(), req.uri().path()) else { return next.run(req).await };
    let forwarded = req.headers().get(FORWARDED_BY).map(|by| by.to_str().unwrap_or("another host").to_string());
    // A request forwarded here is checked against the database's word, not
    // a status read up to a third of a lease ago.
    let owner = match svc.owner_elsewhere(&id, forwarded.is_some()).await {
        Ok(None) => return next.run(req).await,
        Ok(Some(owner)) => owner,
        Err(e) => return super::error(e),
    };
    if let Some(by) = forwarded {
        return super::error(Error::new(
            ErrorKind::Unavailable,
            format!("instance {id} moved to host '{}' while {by} forwarded this request here: send it again", owner.0),
        ));
    }
    let (parts, body) = req.into_parts();
    let body = match axum::body::to_bytes(body, MAX_FORWARDED_BODY).await {
        Ok(b) => b,
        Err(e) => return super::error(Error::new(ErrorKind::BadInput, format!("reading the request body: {e}"))),
    };
    let response = forward(&svc, &parts, &body, owner.clone()).await;
    // The owner was read from the status the lease loop keeps: if the
    // instance moved since, that host says so (503), and the request goes,
    // once, to the owner the database names now.
    if response.status() == StatusCode::SERVICE_UNAVAILABLE {
        if let Ok(Some(now)) = svc.owner_elsewhere(&id, true).await {
            if now.0 != owner.0 {
                return forward(&svc, &parts, &body, now).await;
            }
        }
    }
    response
}

async fn forward(svc: &Service, parts: &axum::http::request::Parts, body: &axum::body::Bytes, (node, advertise): (String, String)) -> Response {
    let body = body.clone();
    let path_and_query = parts.uri.path_and_query().map(|p| p.as_str().to_string()).unwrap_or_default();
    let url = format!("{}{path_and_query}", advertise.trim_end_matches('/'));
    let header = |name: header::HeaderName| parts.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    let (authorization, content_type) = (header(header::AUTHORIZATION), header(header::CONTENT_TYPE));
    let me = svc.node_name().unwrap_or_default();
    let method = parts.method.clone();
    let answer = tokio::task::spawn_blocking(move || {
        // One agent for every forward: it keeps connections to the other hosts alive.
        static AGENT: std::sync::OnceLock<ureq::Agent> = std::sync::OnceLock::new();
        let agent = AGENT.get_or_init(|| {
            ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(FORWARD_TIMEOUT)).build().into()
        });
        call_peer(agent, &Peer { method: method.as_str(), url: &url, me: &me, authorization: authorization.as_deref(), content_type: content_type.as_deref() }, body.to_vec())
    })
    .await
    .unwrap_or_else(|e| Err(format!("the forwarding task failed: {e}")));
    match answer {
        Ok((status, content_type, text)) => {
            let mut response = Response::new(Body::from(text));
            *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
            if let Some(c) = content_type.and_then(|c| HeaderValue::from_str(&c).ok()) {
                response.headers_mut().insert(header::CONTENT_TYPE, c);
            }
            response
        }
        Err(why) => (
            StatusCode::BAD_GATEWAY,
            axum::Json(serde_json::json!({
                "error": format!("this instance runs on host '{node}' ({advertise}), and forwarding the request there failed: {why}"),
                "code": "unavailable",
            })),
        )
            .into_response(),
    }
}

/// A request to another host of the cluster: marked as coming from this
/// host (`me`), with the caller's credentials and content type.
struct Peer<'a> {
    method: &'a str,
    url: &'a str,
    me: &'a str,
    authorization: Option<&'a str>,
    content_type: Option<&'a str>,
}

/// Sends `body` to another host and reads its whole answer (at most
/// `MAX_FORWARDED_BODY`): its status, content type and body. Blocking.
fn call_peer(agent: &ureq::Agent, peer: &Peer, body: Vec<u8>) -> Result<(u16, Option<String>, Vec<u8>), String> {
    let mut request = ureq::http::Request::builder().method(peer.method).uri(peer.url).header(FORWARDED_BY, peer.me);
    if let Some(a) = peer.authorization {
        request = request.header("authorization", a);
    }
    if let Some(c) = peer.content_type {
        request = request.header("content-type", c);
    }
    let request = request.body(body).map_err(|e| e.to_string())?;
    let mut response = agent.run(request).map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let content_type = response.headers().get("content-type").and_then(|v| v.to_str().ok()).map(str::to_string);
    let text = response.body_mut().with_config().limit(MAX_FORWARDED_BODY as u64).read_to_vec().map_err(|e| format!("reading the answer: {e}"))?;
    Ok((status, content_type, text))
}

/// How long asking another host for tasks may take (a poll that does not
/// wait, so far less), and connecting to it.
const PEER_POLL_TIMEOUT: Duration = Duration::from_secs(10);
const PEER_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Cluster mode: asks the other live hosts, one after the other, for up to
/// `max` tasks of the poll's activity in all, each by a poll that does not
/// wait (`wait_ms` 0), marked `x-cairn-forwarded-by` so that it is answered
/// from that host's own tasks only. Each host leases what it hands out (the
/// lease lives with the instance); the tasks come back as that host's API
/// wrote them. A host that fails or refuses is skipped: its tasks wait for
/// the next ask, or for a worker polling it.
pub async fn poll_elsewhere(svc: Service, r: crate::service::PollRequest, max: usize, authorization: Option<String>) -> Vec<serde_json::Value> {
    let peers = svc.peers().await;
    if peers.is_empty() {
        return Vec::new();
    }
    let me = svc.node_name().unwrap_or_default();
    let asked = tokio::task::spawn_blocking(move || {
        static AGENT: std::sync::OnceLock<ureq::Agent> = std::sync::OnceLock::new();
        let agent = AGENT.get_or_init(|| {
            ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(PEER_POLL_TIMEOUT))
                .timeout_connect(Some(PEER_CONNECT_TIMEOUT))
                .build()
                .into()
        });
        let mut out: Vec<serde_json::Value> = Vec::new();
        for (node, advertise) in peers {
            if out.len() >= max {
                break;
            }
            let body = serde_json::json!({
                "activity": r.activity,
                "operations": r.operations,
                "worker": r.worker,
                "max": max - out.len(),
                "wait_ms": 0,
                "lease_ms": r.lease_ms,
            });
            let url = format!("{}/v1/tasks/poll", advertise.trim_end_matches('/'));
            let peer = Peer { method: "POST", url: &url, me: &me, authorization: authorization.as_deref(), content_type: Some("application/json") };
            let answer = call_peer(agent, &peer, body.to_string().into_bytes());
            match answer {
                Ok((200, _, text)) => match serde_json::from_slice::<serde_json::Value>(&text) {
                    Ok(mut v) => out.extend(v["tasks"].as_array_mut().map(std::mem::take).unwrap_or_default()),
                    // Leased there and not understood here: their leases expire, and they are offered again.
                    Err(e) => tracing::warn!("host '{node}' answered a poll with what is not JSON: {e}"),
                },
                Ok((status, _, text)) => {
                    tracing::debug!("host '{node}' refused a poll for tasks ({status}): {}", String::from_utf8_lossy(&text));
                }
                Err(e) => tracing::debug!("asking host '{node}' ({advertise}) for tasks: {e}"),
            }
        }
        out
    })
    .await;
    asked.unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_changes_to_one_instance_are_forwarded() {
        assert_eq!(changed_instance(&Method::POST, "/v1/instances/abc/suspend").as_deref(), Some("abc"));
        assert_eq!(changed_instance(&Method::PUT, "/v1/instances/abc/variables").as_deref(), Some("abc"));
        assert_eq!(changed_instance(&Method::GET, "/v1/instances/abc/history"), None);
        assert_eq!(changed_instance(&Method::POST, "/v1/instances"), None);
        assert_eq!(changed_instance(&Method::POST, "/v1/instances/abc"), None);
        assert_eq!(changed_instance(&Method::POST, "/v1/messages"), None);
        assert_eq!(changed_instance(&Method::POST, "/v1/tasks/abc:7/complete").as_deref(), Some("abc"));
        assert_eq!(changed_instance(&Method::POST, "/v1/tasks/abc%3A7/fail").as_deref(), Some("abc"));
        assert_eq!(changed_instance(&Method::POST, "/v1/tasks/poll"), None);
    }
}
