//! The web console: a single-page app served by `cairn serve` at `/`, and
//! the read routes it needs beyond the rest of the API.
//!
//! The page, its script, its style sheet and its icon are embedded in the
//! binary (`assets/`, `include_str!`): no CDN, no build step, works
//! offline. They are public (`auth::required_role` answers `None` for
//! them); everything they show comes from the API with the token the page
//! asks for when the API answers 401 (kept in the tab's sessionStorage), so
//! the console never sees more than its token may.
//!
//! Routes added here (reader role, like every GET; documented in README):
//! - `GET /v1/definitions/{version}/tree`: the activity tree with paths,
//!   kinds and what each activity does, for the diagram (`views::tree`).
//! - `GET /v1/definitions/{version}/heat`: instances of that version by
//!   activity path and status: where they wait, where they faulted.
//! - `GET /v1/instances/search`: instances filtered by process, version,
//!   status, correlation value and creation time, a page at a time with the
//!   total of matches.
//! - `GET /v1/instances/{id}/positions`: every branch's position, what each
//!   waits for, where and why the instance stopped, parent and children.
//! - `GET /v1/events`: server-sent events, one per persistence point
//!   (`service::Events`); the page reads them with `fetch` so that the
//!   bearer token travels in the `Authorization` header as for every route.

mod views;

use crate::service::{InstanceEvent, Service};
use axum::http::{header, HeaderValue};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::extract::State;
use axum::Router;
use std::convert::Infallible;
use std::time::Duration;

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const DIAGRAM_JS: &str = include_str!("assets/diagram.js");
const APP_CSS: &str = include_str!("assets/app.css");
const ICON_SVG: &str = include_str!("assets/icon.svg");

/// Whether `path` is one of the console's static assets, which need no token.
pub fn is_public_asset(path: &str) -> bool {
    path == "/" || path.starts_with("/console/")
}

/// The console's routes; `api::router_with` merges them before its layers,
/// so that authentication and JSON errors apply to them as to every route.
pub fn routes() -> Router<Service> {
    Router::new()
        .route("/", get(|| async { asset(INDEX_HTML, "text/html; charset=utf-8") }))
        .route("/console/app.js", get(|| async { asset(APP_JS, "text/javascript; charset=utf-8") }))
        .route("/console/diagram.js", get(|| async { asset(DIAGRAM_JS, "text/javascript; charset=utf-8") }))
        .route("/console/app.css", get(|| async { asset(APP_CSS, "text/css; charset=utf-8") }))
        .route("/console/icon.svg", get(|| async { asset(ICON_SVG, "image/svg+xml") }))
        .route("/v1/definitions/{version}/tree", get(views::tree))
        .route("/v1/definitions/{version}/heat", get(views::heat))
        .route("/v1/instances/search", get(views::search))
        .route("/v1/instances/{id}/positions", get(views::positions))
        .route("/v1/events", get(events))
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut r = body.into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

/// `GET /v1/events`: `event: instance` with the instance's id, process,
/// version, status, path, reason, fence and time after each persistence
/// point; `event: lagged` when this stream fell behind (look again at
/// everything). Ends when the host shuts down.
async fn events(State(svc): State<Service>) -> Response {
    // Dropped with the stream when the client goes: the count goes down.
    let subscription = svc.events.subscribe();
    let stream = futures_util::stream::unfold(subscription, |mut sub| async move {
        use tokio::sync::broadcast::error::RecvError;
        if *sub.closed.borrow() {
            return None;
        }
        let event = tokio::select! {
            r = sub.events.recv() => match r {
                Ok(e) => instance_event(&e),
                Err(RecvError::Lagged(n)) => Event::default().event("lagged").data(n.to_string()),
                Err(RecvError::Closed) => return None,
            },
            _ = sub.closed.wait_for(|c| *c) => return None,
        };
        Some((Ok::<Event, Infallible>(event), sub))
    });
    let opened = futures_util::stream::once(async { Ok::<Event, Infallible>(Event::default().event("open").data("{}")) });
    let sse = Sse::new(futures_util::StreamExt::chain(opened, stream)).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)));
    let mut r = sse.into_response();
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

fn instance_event(e: &InstanceEvent) -> Event {
    let data = serde_json::json!({
        "id": e.id,
        "process": e.process,
        "version": e.version,
        "status": crate::api::types::InstanceStatus::from(e.status),
        "path": e.path,
        "reason": crate::api::types::reason_name(e.reason),
        "fence": e.fence,
        "at_ms": e.at_ms,
    });
    Event::default().event("instance").data(data.to_string())
}
