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

pub(crate) mod views;

use crate::service::{InstanceEvent, Service};
use axum::http::{header, HeaderValue, Method};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, MethodRouter};
use axum::extract::State;
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

/// The console's routes (method, path, handler); `api::routes` lists them
/// with the rest, so that authentication and JSON errors apply to them as
/// to every route, and the OpenAPI document describes them.
pub fn routes() -> Vec<(Method, &'static str, MethodRouter<Service>)> {
    vec![
        (Method::GET, "/", get(index_html)),
        (Method::GET, "/console/app.js", get(app_js)),
        (Method::GET, "/console/diagram.js", get(diagram_js)),
        (Method::GET, "/console/app.css", get(app_css)),
        (Method::GET, "/console/icon.svg", get(icon_svg)),
        (Method::GET, "/v1/definitions/{version}/tree", get(views::tree)),
        (Method::GET, "/v1/definitions/{version}/heat", get(views::heat)),
        (Method::GET, "/v1/instances/search", get(views::search)),
        (Method::GET, "/v1/instances/{id}/positions", get(views::positions)),
        (Method::GET, "/v1/events", get(events)),
    ]
}

/// `GET /`: the console's page.
#[utoipa::path(get, path = "/", tag = "console", responses((status = 200, description = "The web console's page", body = String, content_type = "text/html")))]
pub(crate) async fn index_html() -> Response {
    asset(INDEX_HTML, "text/html; charset=utf-8")
}

#[utoipa::path(get, path = "/console/app.js", tag = "console", responses((status = 200, description = "The console's script", body = String, content_type = "text/javascript")))]
pub(crate) async fn app_js() -> Response {
    asset(APP_JS, "text/javascript; charset=utf-8")
}

#[utoipa::path(get, path = "/console/diagram.js", tag = "console", responses((status = 200, description = "The console's diagram script", body = String, content_type = "text/javascript")))]
pub(crate) async fn diagram_js() -> Response {
    asset(DIAGRAM_JS, "text/javascript; charset=utf-8")
}

#[utoipa::path(get, path = "/console/app.css", tag = "console", responses((status = 200, description = "The console's style sheet", body = String, content_type = "text/css")))]
pub(crate) async fn app_css() -> Response {
    asset(APP_CSS, "text/css; charset=utf-8")
}

#[utoipa::path(get, path = "/console/icon.svg", tag = "console", responses((status = 200, description = "The console's icon", body = String, content_type = "image/svg+xml")))]
pub(crate) async fn icon_svg() -> Response {
    asset(ICON_SVG, "image/svg+xml")
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
#[utoipa::path(
    get,
    path = "/v1/events",
    tag = "console",
    responses((
        status = 200,
        description = "A stream of server-sent events: `open` first, then `instance` (data: an `InstanceEvent` as JSON) after each persistence point, `lagged` (data: how many events were missed) when the stream fell behind. It lasts until the client goes or the host stops.",
        body = String,
        content_type = "text/event-stream"
    ))
)]
pub(crate) async fn events(State(svc): State<Service>) -> Response {
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
