//! The HTTP API (JSON over HTTP/1.1; bearer tokens with roles, see `auth`
//! and `require_role`). API Boundary: the CLI speaks only this; the README
//! documents every route.
//!
//! Request bodies are parsed here, so that malformed JSON gets an error that
//! says where it is malformed; everything else is the service's. Responses
//! are the types of `types`, never engine or store types.

pub mod auth;
mod forward;
pub mod openapi;
mod tasks;
/// The API's request and response types live in the client crate (`cairn-client`), which the CLI and clients share.
pub use cairn_client::types;

use cairn_engine::{Control, Snapshot, Status};
use types::*;
use openapi as doc;
use utoipa::ToSchema;
use crate::service::{BackupTarget, Error, ErrorKind, MessageIn, Service};
use auth::TokenCache;
use cairn_store::{InTransitState, InstanceFilter, Role, Write, WriteBatch};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Extension, FromRequestParts, Path, RawQuery, Request, State};
use axum::http::{header, request::Parts, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::handler::Handler;
use axum::routing::{MethodFilter, MethodRouter};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// The largest component `POST /v1/definitions` takes by default (`cairn serve --max-component-bytes`).
pub const DEFAULT_MAX_COMPONENT_BYTES: usize = 64 << 20;
/// The largest request body of every other route by default (`cairn serve --max-body-bytes`).
pub const DEFAULT_MAX_BODY_BYTES: usize = 4 << 20;
/// The longest message id, process name, operation name and definition name, in bytes.
pub const MAX_NAME_BYTES: usize = 256;

/// What `cairn serve` configures of the API.
#[derive(Clone, Debug)]
pub struct ApiConfig {
    pub max_component_bytes: usize,
    pub max_body_bytes: usize,
    /// Where `POST /v1/backup` writes (None: DATA/backups).
    pub backup_dir: Option<PathBuf>,
    /// Require a bearer token on every route but `GET /v1/health` even while
    /// the store holds no token (a listener beyond loopback). Otherwise
    /// tokens are required once at least one exists.
    pub require_token: bool,
}

impl Default for ApiConfig {
    fn default() -> ApiConfig {
        ApiConfig { max_component_bytes: DEFAULT_MAX_COMPONENT_BYTES, max_body_bytes: DEFAULT_MAX_BODY_BYTES, backup_dir: None, require_token: false }
    }
}

pub fn router(svc: Service) -> Router {
    router_with(svc, ApiConfig::default())
}

/// One route of the API: its method, its path (axum's syntax, `{param}`,
/// which is OpenAPI's too) and what serves it.
pub struct Route {
    pub method: Method,
    pub path: &'static str,
    service: MethodRouter<Service>,
}

impl Route {
    fn new<H: Handler<T, Service>, T: 'static>(method: Method, path: &'static str, handler: H) -> Route {
        let filter = MethodFilter::try_from(method.clone()).expect("a method axum routes");
        Route { method, path, service: axum::routing::on(filter, handler) }
    }

    /// A request body limit of its own (deploy's component).
    fn body_limit(mut self, bytes: usize) -> Route {
        self.service = self.service.layer(DefaultBodyLimit::max(bytes));
        self
    }
}

/// Every route the host serves, in one list: `router_with` builds the router
/// from it, and the contract test (`openapi::tests`) checks that the OpenAPI
/// document has exactly these methods and paths.
pub fn routes(config: &ApiConfig) -> Vec<Route> {
    let mut routes = vec![
        Route::new(Method::GET, "/v1/health", health),
        Route::new(Method::GET, "/v1/openapi.json", openapi::document),
        Route::new(Method::GET, "/metrics", metrics),
        Route::new(Method::GET, "/v1/cluster", cluster_status),
        Route::new(Method::POST, "/v1/definitions", deploy).body_limit(config.max_component_bytes),
        Route::new(Method::GET, "/v1/definitions", list_definitions),
        Route::new(Method::POST, "/v1/definitions/external", tasks::deploy_external),
        Route::new(Method::GET, "/v1/tasks", tasks::list_tasks),
        Route::new(Method::POST, "/v1/tasks/poll", tasks::poll),
        Route::new(Method::POST, "/v1/tasks/{id}/{verb}", tasks::finish),
        Route::new(Method::POST, "/v1/instances", start),
        Route::new(Method::GET, "/v1/instances", list_instances),
        Route::new(Method::GET, "/v1/instances/{id}", show_instance),
        Route::new(Method::GET, "/v1/instances/{id}/history", instance_history),
        Route::new(Method::PUT, "/v1/instances/{id}/variables", set_variables),
        Route::new(Method::POST, "/v1/instances/{id}/retry", retry_instance),
        Route::new(Method::POST, "/v1/retry", retry_faulted),
        Route::new(Method::POST, "/v1/instances/{id}/migrate", migrate_instance),
        Route::new(Method::POST, "/v1/migrate", migrate_version),
        Route::new(Method::POST, "/v1/instances/{id}/{verb}", control_instance),
        Route::new(Method::POST, "/v1/messages", send_message),
        Route::new(Method::POST, "/v1/backup", backup),
        Route::new(Method::GET, "/v1/breakpoints", list_breakpoints),
        Route::new(Method::POST, "/v1/breakpoints", set_breakpoint),
        Route::new(Method::DELETE, "/v1/breakpoints", clear_breakpoint),
        Route::new(Method::GET, "/v1/resources", list_resources),
        Route::new(Method::POST, "/v1/resources", create_resource),
        Route::new(Method::GET, "/v1/resources/{name}", scan_resource),
        Route::new(Method::GET, "/v1/resources/{name}/keys/{key}", get_resource_key),
        Route::new(Method::GET, "/v1/in-transit", list_in_transit),
        Route::new(Method::POST, "/v1/in-transit/{id}/{verb}", resolve_in_transit),
        Route::new(Method::GET, "/v1/tokens", list_tokens),
        Route::new(Method::POST, "/v1/tokens", create_token),
        Route::new(Method::DELETE, "/v1/tokens/{id}", revoke_token),
    ];
    routes.extend(crate::console::routes().into_iter().map(|(method, path, service)| Route { method, path, service }));
    routes
}

pub fn router_with(svc: Service, config: ApiConfig) -> Router {
    let config = Arc::new(config);
    let tokens = Arc::new(TokenCache::default());
    let auth = Arc::new(AuthState {
        svc: svc.clone(),
        tokens: tokens.clone(),
        require_token: config.require_token,
        max_body: config.max_component_bytes.max(config.max_body_bytes),
    });
    // Routes of one path with different methods merge into one method router.
    let mut router = Router::new();
    for route in routes(&config) {
        router = router.route(route.path, route.service);
    }
    router
        .fallback(|| async { error(Error::new(ErrorKind::NotFound, "no such route; see the README's HTTP reference")) })
        .layer(DefaultBodyLimit::max(config.max_body_bytes))
        .layer(Extension(config.clone()))
        .layer(Extension(tokens))
        .layer(axum::middleware::from_fn_with_state(svc.clone(), forward::to_owner))
        .layer(axum::middleware::from_fn_with_state(auth, require_role))
        .layer(axum::middleware::from_fn_with_state(config, json_errors))
        .with_state(svc)
}

/// `GET /metrics`: Prometheus text (OpenMetrics 1.0.0), see `crate::metrics`.
/// Like every GET it needs a reader token once a token exists or the host
/// listens beyond loopback (Prometheus sends one with `authorization`).
#[utoipa::path(
    get, path = "/metrics", tag = "host",
    responses((status = 200, description = "Prometheus text (OpenMetrics 1.0.0)", body = String, content_type = "application/openmetrics-text"))
)]
async fn metrics(State(svc): State<Service>) -> Response {
    match svc.metrics_text().await {
        Ok(text) => ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text).into_response(),
        Err(e) => error(e),
    }
}

/// Every error is `{"error": "…"}`: this turns axum's own plain-text
/// rejections (405, 413, a bad query string or path) into that form.
async fn json_errors(State(config): State<Arc<ApiConfig>>, req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let response = next.run(req).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let allow = response.headers().get(header::ALLOW).cloned();
    let message = match status {
        StatusCode::PAYLOAD_TOO_LARGE => {
            let (limit, what, flag) = if method == Method::POST && path == "/v1/definitions" {
                (config.max_component_bytes, "a component", "--max-component-bytes")
            } else {
                (config.max_body_bytes, "a request body", "--max-body-bytes")
            };
            format!("the request body is too large: {what} may be at most {limit} bytes (cairn serve {flag})")
        }
        // axum adds the Allow header, naming the methods the route takes, after this layer.
        StatusCode::METHOD_NOT_ALLOWED => {
            format!("method {method} is not allowed on {path}: the Allow header lists the methods it takes (see the README's HTTP reference)")
        }
        _ => {
            let body = axum::body::to_bytes(response.into_body(), 64 << 10).await.unwrap_or_default();
            let text = String::from_utf8_lossy(&body).trim().to_string();
            match text.strip_prefix("Failed to deserialize query string: ") {
                Some(rest) => format!("the query string is not valid: {rest}"),
                None if text.is_empty() => status.canonical_reason().unwrap_or("error").to_string(),
                None => text,
            }
        }
    };
    let mut out = (status, Json(json!({ "error": message }))).into_response();
    if let Some(allow) = allow {
        out.headers_mut().insert(header::ALLOW, allow);
    }
    out
}

/// What the authentication middleware needs.
struct AuthState {
    svc: Service,
    tokens: Arc<TokenCache>,
    require_token: bool,
    /// The largest body any route takes: what a refused request's body is read up to.
    max_body: usize,
}

/// Answers a refused request after reading its body (up to `limit`), so that
/// a client still sending it (a component, say) gets the answer rather than
/// a broken pipe.
async fn refuse(req: Request, limit: usize, response: Response) -> Response {
    let _ = axum::body::to_bytes(req.into_body(), limit).await;
    response
}

fn unauthorized(message: String) -> Response {
    let mut r = (StatusCode::UNAUTHORIZED, Json(json!({ "error": message }))).into_response();
    r.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
    r
}

/// Bearer tokens: every route but `GET /v1/health` needs a token of the
/// route's role (`auth::required_role`) once a token exists or the host
/// listens beyond loopback. Missing or unknown token: 401; too low a role: 403.
async fn require_role(State(auth): State<Arc<AuthState>>, req: Request, next: Next) -> Response {
    let Some(needed) = auth::required_role(req.method(), req.uri().path()) else {
        return next.run(req).await;
    };
    let header_value = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let token = header_value.and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer "))).map(str::trim);
    let (any, role) = match auth.tokens.lookup(&auth.svc.store, token).await {
        Ok(found) => found,
        Err(e) => return error(e.into()),
    };
    if !any && !auth.require_token {
        return next.run(req).await;
    }
    let Some(role) = role else {
        let response = unauthorized(match (header_value, token) {
            (None, _) => "a bearer token is required: send `Authorization: Bearer TOKEN` (cairn --token / CAIRN_TOKEN)".to_string(),
            (Some(_), None) => "the Authorization header is not `Bearer TOKEN`: a bearer token is required".to_string(),
            (Some(_), Some(_)) => "the bearer token is not valid (unknown or revoked)".to_string(),
        });
        return refuse(req, auth.max_body, response).await;
    };
    // A worker token only takes and completes tasks; operators and admins may too.
    let allowed = match needed {
        Role::Worker => role == Role::Worker || role >= Role::Operator,
        _ => role >= needed,
    };
    if !allowed {
        let message = match needed {
            Role::Worker => format!("this needs a token of role worker, operator or admin; the token given has role {}", role.name()),
            _ => format!("this needs a token of role {} or higher; the token given has role {}", needed.name(), role.name()),
        };
        let response = (StatusCode::FORBIDDEN, Json(json!({ "error": message }))).into_response();
        return refuse(req, auth.max_body, response).await;
    }
    next.run(req).await
}

/// axum's `Query`, with its rejection an API error (400, JSON).
struct Query<T>(T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(Query(v)),
            Err(e) => Err(error(Error::new(ErrorKind::BadInput, format!("the query string is not valid: {}", e.body_text().trim_start_matches("Failed to deserialize query string: "))))),
        }
    }
}

/// Refuses a name or id longer than `MAX_NAME_BYTES`.
fn check_len(what: &str, value: &str) -> Result<(), Error> {
    if value.len() > MAX_NAME_BYTES {
        return Err(Error::new(ErrorKind::BadInput, format!("{what} is {} bytes long: at most {MAX_NAME_BYTES} bytes are allowed", value.len())));
    }
    Ok(())
}

fn error(e: Error) -> Response {
    let status = match e.kind {
        ErrorKind::BadInput => StatusCode::BAD_REQUEST,
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::Conflict => StatusCode::CONFLICT,
        ErrorKind::Invalid => StatusCode::UNPROCESSABLE_ENTITY,
        ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::NoSpace => StatusCode::INSUFFICIENT_STORAGE,
        ErrorKind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let code = match e.kind {
        ErrorKind::BadInput => "bad-input",
        ErrorKind::NotFound => "not-found",
        ErrorKind::Conflict => "conflict",
        ErrorKind::Invalid => "invalid",
        ErrorKind::Unavailable => "unavailable",
        ErrorKind::NoSpace => "no-space",
        ErrorKind::TooLarge => "too-large",
        ErrorKind::Internal => "internal",
    };
    (status, Json(json!({ "error": e.message, "code": code }))).into_response()
}

/// A not-found error whose message has `marker` gets the closest deployed
/// name appended: "… (did you mean 'hello'?)" (`service::suggest`).
fn did_you_mean(mut e: Error, marker: &str, suggest: impl FnOnce() -> String) -> Error {
    if e.kind == ErrorKind::NotFound && e.message.contains(marker) {
        e.message.push_str(&suggest());
    }
    e
}

fn respond(r: Result<(StatusCode, Value), Error>) -> Response {
    match r {
        Ok((status, body)) => (status, Json(body)).into_response(),
        Err(e) => error(e),
    }
}

fn parse_json<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, Error> {
    serde_json::from_slice(body).map_err(|e| Error::new(ErrorKind::BadInput, format!("request body is not valid: {e}")))
}

/// `ok`, or `degraded` with the reasons: writes failing, damaged records
/// met. Degraded is still 200: the host serves what it can.
#[utoipa::path(
    get, path = "/v1/health", tag = "host",
    responses((status = 200, description = "`ok`, or `degraded` with the reasons (still 200: the host serves what it can)", body = doc::Health))
)]
async fn health(State(svc): State<Service>) -> Response {
    let health = svc.store.health();
    let mut reasons = Vec::new();
    let mut body = json!({ "live_instances": svc.drivers.count() });
    if let Some((reason, since)) = health.writes.failing() {
        let since_ms = since.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        reasons.push(format!("writes to the store are failing (retrying in the background): {reason}"));
        body["writes_failing_since_ms"] = json!(since_ms);
    }
    let (damage, damaged) = health.damage.reports();
    if damaged > 0 {
        reasons.push(format!(
            "{damaged} damaged record(s) met and skipped; stop the host and run `cairn check` (then `cairn repair`) on its data directory"
        ));
        body["damaged_records"] = json!(damaged);
        body["damage"] = json!(damage);
    }
    body["ok"] = json!(reasons.is_empty());
    body["status"] = json!(if reasons.is_empty() { "ok" } else { "degraded" });
    body["reasons"] = json!(reasons);
    Json(body).into_response()
}

/// Cluster mode (`serve --node`): nodes, partitions, owners, epochs and
/// lease ages, as the shared store holds them; any host answers.
#[utoipa::path(
    get, path = "/v1/cluster", tag = "host",
    responses(
        (status = 200, description = "The cluster's nodes and partitions", body = doc::ClusterStatus),
        (status = 404, description = "This host is not part of a cluster (serve --node)", body = doc::ErrorBody),
    )
)]
async fn cluster_status(State(svc): State<Service>) -> Response {
    match svc.cluster_status().await {
        None => error(Error::new(
            ErrorKind::NotFound,
            "this host is not part of a cluster: start it with serve --store postgres://… --node NAME",
        )),
        Some(Ok(status)) => Json(status).into_response(),
        Some(Err(e)) => error(e),
    }
}

/// `?name=NAME&allow_http=PREFIX&allow_http=…` (`allow_http` repeats).
#[utoipa::path(
    post, path = "/v1/definitions", tag = "definitions",
    params(
        ("name" = Option<String>, Query, description = "The name to deploy under (default: the component's own)"),
        ("allow_http" = Option<Vec<String>>, Query, explode = true, description = "URL prefixes an activity component may call over HTTP (repeats)"),
        ("resource" = Option<Vec<String>>, Query, explode = true, description = "Resources the component may use (repeats)"),
    ),
    request_body(
        content((doc::ComponentBytes = "application/wasm"), (doc::ComponentBytes = "application/octet-stream")),
        description = "The component's bytes (a WebAssembly component; the host reads the bytes whatever the content type)"
    ),
    responses(
        (status = 201, description = "Deployed", body = doc::Deployed),
        (status = 200, description = "This version was deployed already", body = doc::Deployed),
        (status = 404, description = "A resource named in `resource` does not exist (create it first: `POST /v1/resources`)", body = doc::ErrorBody),
        (status = 409, description = "The name is taken by a component of another kind", body = doc::ErrorBody),
        (status = 422, description = "Not a component Cairn can run (the message says why)", body = doc::ErrorBody),
    )
)]
async fn deploy(State(svc): State<Service>, RawQuery(query): RawQuery, body: Bytes) -> Response {
    respond(async {
        if body.is_empty() {
            return Err(Error::new(ErrorKind::BadInput, "the request body is empty: send the component's bytes"));
        }
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query.as_deref().unwrap_or(""))
            .map_err(|e| Error::new(ErrorKind::BadInput, format!("the query string is not valid: {e}")))?;
        let mut name = None;
        let mut allow_http = Vec::new();
        let mut resources = Vec::new();
        for (key, value) in pairs {
            match key.as_str() {
                "name" => name = Some(value),
                "allow_http" => allow_http.push(value),
                "resource" => resources.push(value),
                other => {
                    return Err(Error::new(ErrorKind::BadInput, format!("unknown query parameter '{other}': use name, allow_http and resource")))
                }
            }
        }
        if let Some(name) = &name {
            check_len("the definition name", name)?;
        }
        let (record, created) = svc.deploy(body.to_vec(), name, allow_http, resources).await?;
        let status = if created { StatusCode::CREATED } else { StatusCode::OK };
        Ok((
            status,
            json!({ "name": record.name, "version": record.version, "kind": kind_name(record.kind), "created": created, "allow_http": record.allow_http, "resources": record.resources }),
        ))
    }
    .await)
}

#[utoipa::path(
    get, path = "/v1/definitions", tag = "definitions",
    responses((status = 200, description = "Every deployed version", body = doc::DefinitionList))
)]
async fn list_definitions(State(svc): State<Service>) -> Response {
    let defs: Vec<DefinitionView> = svc.registry.definitions().iter().map(|(r, latest)| DefinitionView::new(r, *latest)).collect();
    Json(json!({ "definitions": defs })).into_response()
}

#[derive(Deserialize, ToSchema)]
struct StartRequest {
    /// The process to start (its latest version).
    process: String,
    /// The instance's input (JSON).
    input: Option<Value>,
}

#[utoipa::path(
    post, path = "/v1/instances", tag = "instances",
    request_body = StartRequest,
    responses(
        (status = 201, description = "Started", body = doc::Started),
        (status = 404, description = "No process of that name is deployed", body = doc::ErrorBody),
        (status = 409, description = "The start conflicts with an existing instance", body = doc::ErrorBody),
        (status = 422, description = "The input does not fit the process", body = doc::ErrorBody),
    )
)]
async fn start(State(svc): State<Service>, body: Bytes) -> Response {
    respond(async {
        let req: StartRequest = parse_json(&body)?;
        check_len("the process name", &req.process)?;
        let a = svc.start_instance(&req.process, req.input).await.map_err(|e| did_you_mean(e, "no process named", || svc.suggest_process(&req.process)))?;
        let version = svc.load_snapshot(&a.instance).await?.map(|s| s.version).unwrap_or_default();
        Ok((StatusCode::CREATED, json!({ "id": a.instance, "process": req.process, "version": version })))
    }
    .await)
}

#[derive(Deserialize)]
struct ListQuery {
    status: Option<String>,
    process: Option<String>,
    limit: Option<usize>,
    after: Option<String>,
    offset: Option<usize>,
    order: Option<String>,
}

/// The most instances `GET /v1/instances?offset=` skips.
const MAX_LIST_OFFSET: usize = 1_000_000;

fn summary(s: &Snapshot, svc: &Service) -> InstanceSummary {
    let deployed = svc.registry.deployed(&s.version);
    InstanceSummary::new(s, deployed.as_ref().and_then(|d| d.definition()))
}

fn summary_json(s: &Snapshot, svc: &Service) -> Value {
    json!(summary(s, svc))
}

#[utoipa::path(
    get, path = "/v1/instances", tag = "instances",
    params(
        ("status" = Option<InstanceStatus>, Query, description = "Only instances of this status"),
        ("process" = Option<String>, Query, description = "Only instances of this process"),
        ("limit" = Option<u64>, Query, description = "At most this many (default 1000, at most 10000)"),
        ("after" = Option<String>, Query, description = "After this id (`next_after` of the page before); with `order=newest-first`, before it"),
        ("offset" = Option<u64>, Query, description = "Skip this many first (page N of size L: offset (N-1)·L; at most 1000000)"),
        ("order" = Option<String>, Query, description = "`oldest-first` (the default: id order, ids are time-ordered) or `newest-first`"),
    ),
    responses((status = 200, description = "A page of instances in id order (or its reverse), with the total where it is known", body = doc::InstanceList))
)]
async fn list_instances(State(svc): State<Service>, Query(q): Query<ListQuery>) -> Response {
    respond(async {
        let status = match q.status.as_deref() {
            None | Some("") => None,
            Some(s) => Some(serde_json::from_value::<Status>(json!(s)).map_err(|_| {
                Error::new(
                    ErrorKind::BadInput,
                    format!("unknown status '{s}'; use running, waiting, suspended, completed, faulted or terminated"),
                )
            })?),
        };
        // A page at a time: at most `limit` (1000 by default, 10000 at most)
        // in id order (ids are time-ordered; newest first on asking), after
        // the id `after` in that order, past `offset` more; `next_after`
        // names the next page. The store reads no more than the page.
        let limit = q.limit.unwrap_or(1000).min(10_000);
        let offset = q.offset.unwrap_or(0);
        if offset > MAX_LIST_OFFSET {
            return Err(Error::new(ErrorKind::BadInput, format!("offset {offset} is too large: at most {MAX_LIST_OFFSET} (page with `after` instead)")));
        }
        let newest_first = match q.order.as_deref() {
            None | Some("") | Some("oldest-first") => false,
            Some("newest-first") => true,
            Some(other) => return Err(Error::new(ErrorKind::BadInput, format!("unknown order '{other}': use oldest-first or newest-first"))),
        };
        let after = q.after.clone().filter(|a| !a.is_empty());
        let filter = InstanceFilter { status, process: q.process.clone(), after, newest_first };
        let list: Vec<Snapshot> = svc.store.instances(&filter, limit.saturating_add(offset)).await?.into_iter().skip(offset).collect();
        let items: Vec<InstanceSummary> = list.iter().map(|s| summary(s, &svc)).collect();
        let mut body = json!({ "instances": items, "count": items.len() });
        if items.len() == limit && limit > 0 {
            body["next_after"] = json!(list.last().map(|s| s.id.clone()));
        }
        // The total needs no listing (an index, or the status column): of
        // the status asked for, or of every status.
        if q.process.is_none() {
            let total = match status {
                Some(status) => svc.store.count_instances(status).await?,
                None => svc.store.count_all_instances().await?,
            };
            body["total"] = json!(total);
        }
        Ok((StatusCode::OK, body))
    }
    .await)
}

#[utoipa::path(
    get, path = "/v1/instances/{id}", tag = "instances",
    params(("id" = String, Path, description = "The instance id")),
    responses((status = 200, description = "The instance in full", body = InstanceDetail), (status = 404, description = "No such instance", body = doc::ErrorBody))
)]
async fn show_instance(State(svc): State<Service>, Path(id): Path<String>) -> Response {
    respond(async {
        let s = svc
            .load_snapshot(&id)
            .await?
            .ok_or_else(|| Error::new(ErrorKind::NotFound, format!("no instance with id '{id}'")))?;
        let detail = InstanceDetail {
            summary: summary(&s, &svc),
            variables: variables(&s),
            fault: s.fault.as_ref().map(FaultView::from),
            correlations: s.correlations.clone(),
            in_memory: svc.drivers.in_memory(&id),
            parked: svc.operator.is_parked(&id),
            wait: s.stack.last().map(|f| WaitView::from(&f.phase)),
            inbox: svc.store.inbox(&id).await?.len(),
            pending_calls: svc.store.outbox(&id).await?.iter().filter_map(PendingCallView::new).collect(),
            in_transit: svc.in_transit(Some(&id)).await?.iter().map(HeldCallView::from).collect(),
            history: svc.store.history(&id).await?.iter().map(HistoryView::from).collect(),
            fence: s.fence,
        };
        Ok((StatusCode::OK, json!(detail)))
    }
    .await)
}

#[derive(Deserialize, ToSchema)]
struct SendRequest {
    /// The operation the message is for.
    operation: String,
    /// The message body (JSON).
    body: Value,
    /// The message id: a message of an id seen before is a duplicate (default: a new id).
    id: Option<String>,
    /// Wait for the reply of a request-response operation.
    #[serde(default)]
    wait_reply: bool,
    /// How long to wait for the reply (default 30000).
    timeout_ms: Option<u64>,
}

#[utoipa::path(
    post, path = "/v1/messages", tag = "messages",
    request_body = SendRequest,
    responses(
        (status = 202, description = "Accepted", body = doc::MessageAccepted),
        (status = 200, description = "A message of this id was accepted before (`duplicate`)", body = doc::MessageAccepted),
        (status = 404, description = "No process takes this operation, or no instance matches its correlation", body = doc::ErrorBody),
        (status = 409, description = "The message conflicts with an instance or an earlier message", body = doc::ErrorBody),
        (status = 422, description = "The body does not fit the operation", body = doc::ErrorBody),
    )
)]
async fn send_message(State(svc): State<Service>, body: Bytes) -> Response {
    respond(async {
        let req: SendRequest = parse_json(&body)?;
        check_len("the operation name", &req.operation)?;
        if let Some(id) = &req.id {
            check_len("the message id", id)?;
        }
        let operation = req.operation.clone();
        let m = MessageIn { id: req.id, ..MessageIn::new(req.operation, req.body.to_string()) };
        let unknown = |e| did_you_mean(e, "no process creates instances on operation", || svc.suggest_operation(&operation));
        let (accepted, reply) = if req.wait_reply {
            let timeout = Duration::from_millis(req.timeout_ms.unwrap_or(30_000));
            let (accepted, reply) = svc.accept_and_await_reply(m, timeout).await.map_err(unknown)?;
            (accepted, Some(reply))
        } else {
            (svc.accept_message(m, None).await.map_err(unknown)?, None)
        };
        let mut out = json!(accepted);
        if let Some(reply) = reply {
            out["reply"] = json!(ReplyView::from(&reply));
        }
        let status = if accepted.duplicate { StatusCode::OK } else { StatusCode::ACCEPTED };
        Ok((status, out))
    }
    .await)
}

#[utoipa::path(
    get, path = "/v1/in-transit", tag = "operator",
    responses((status = 200, description = "Calls held after a crash, and what became of them", body = doc::HeldCallList))
)]
async fn list_in_transit(State(svc): State<Service>) -> Response {
    respond(async {
        let calls: Vec<HeldCallView> = svc.in_transit(None).await?.iter().map(HeldCallView::from).collect();
        Ok((StatusCode::OK, json!({ "calls": calls, "count": calls.len() })))
    }
    .await)
}

#[utoipa::path(
    post, path = "/v1/in-transit/{id}/{verb}", tag = "operator",
    params(
        ("id" = String, Path, description = "`INSTANCE:CALL`"),
        ("verb" = doc::InTransitVerb, Path, description = "`resubmit` (send the call again) or `abandon` (give it up)"),
    ),
    responses(
        (status = 200, description = "The call, resolved", body = HeldCallView),
        (status = 404, description = "No such held call, or an unknown verb", body = doc::ErrorBody),
        (status = 409, description = "The call is not held", body = doc::ErrorBody),
    )
)]
async fn resolve_in_transit(State(svc): State<Service>, Path((id, verb)): Path<(String, String)>) -> Response {
    respond(async {
        let state = match verb.as_str() {
            "resubmit" => InTransitState::Resubmitted,
            "abandon" => InTransitState::Abandoned,
            other => return Err(Error::new(ErrorKind::NotFound, format!("unknown verb '{other}': use resubmit or abandon"))),
        };
        let record = svc.resolve_in_transit(&id, state).await?;
        Ok((StatusCode::OK, json!(HeldCallView::from(&record))))
    }
    .await)
}

#[utoipa::path(
    get, path = "/v1/instances/{id}/history", tag = "instances",
    params(("id" = String, Path, description = "The instance id")),
    responses((status = 200, description = "Its persistence points, oldest first", body = doc::InstanceHistory), (status = 404, description = "No such instance", body = doc::ErrorBody))
)]
async fn instance_history(State(svc): State<Service>, Path(id): Path<String>) -> Response {
    respond(async {
        svc.load_snapshot(&id).await?.ok_or_else(|| Error::new(ErrorKind::NotFound, format!("no instance with id '{id}'")))?;
        let history: Vec<HistoryView> = svc.store.history(&id).await?.iter().map(HistoryView::from).collect();
        Ok((StatusCode::OK, json!({ "id": id, "history": history })))
    }
    .await)
}

#[utoipa::path(
    post, path = "/v1/instances/{id}/{verb}", tag = "instances",
    params(("id" = String, Path, description = "The instance id"), ("verb" = doc::InstanceVerb, Path, description = "What to do: `release` lets an instance parked by deferred recovery go on (`resubmit` is its older name)")),
    responses(
        (status = 200, description = "The instance after the control", body = InstanceSummary),
        (status = 404, description = "No such instance, or an unknown verb", body = doc::ErrorBody),
        (status = 409, description = "The instance's status does not allow it (a completed instance cannot be suspended, say)", body = doc::ErrorBody),
    )
)]
async fn control_instance(State(svc): State<Service>, Path((id, verb)): Path<(String, String)>) -> Response {
    respond(async {
        let control = match verb.as_str() {
            "suspend" => Control::Suspend,
            "resume" => Control::Resume,
            "terminate" => Control::Terminate,
            "cancel" => Control::Cancel,
            // `resubmit` is the older name of `release`, kept so existing scripts work.
            "release" | "resubmit" => {
                svc.release(&id).await?;
                let s = svc.load_snapshot(&id).await?.ok_or_else(|| Error::new(ErrorKind::NotFound, format!("no instance with id '{id}'")))?;
                return Ok((StatusCode::OK, summary_json(&s, &svc)));
            }
            other => {
                return Err(Error::new(ErrorKind::NotFound, format!("unknown verb '{other}': use suspend, resume, terminate, cancel, retry or release")))
            }
        };
        let s = svc.control(&id, control).await?;
        Ok((StatusCode::OK, summary_json(&s, &svc)))
    }
    .await)
}

#[utoipa::path(
    put, path = "/v1/instances/{id}/variables", tag = "instances",
    params(("id" = String, Path, description = "The instance id")),
    request_body(content = Object, description = "The new variables (JSON)"),
    responses(
        (status = 200, description = "The instance with its new variables", body = doc::WithVariables),
        (status = 404, description = "No such instance", body = doc::ErrorBody),
        (status = 409, description = "The instance's status does not allow it", body = doc::ErrorBody),
        (status = 422, description = "The variables do not fit the process", body = doc::ErrorBody),
    )
)]
async fn set_variables(State(svc): State<Service>, Path(id): Path<String>, body: Bytes) -> Response {
    respond(async {
        let new_variables: Value = parse_json(&body)?;
        let s = svc.control(&id, Control::SetVariables(new_variables.to_string())).await?;
        let mut v = summary_json(&s, &svc);
        v["variables"] = variables(&s);
        Ok((StatusCode::OK, v))
    }
    .await)
}

/// `POST /v1/instances/{id}/retry`, optionally with `{"variables": …}`.
#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
struct RetryRequest {
    /// Variables to retry with (JSON; default: those it has).
    variables: Option<Value>,
}

#[utoipa::path(
    post, path = "/v1/instances/{id}/retry", tag = "instances",
    params(("id" = String, Path, description = "The instance id")),
    request_body(content = RetryRequest, description = "Optional: new variables to retry with (an empty body retries as it is)"),
    responses(
        (status = 200, description = "The instance, running again from where it faulted", body = InstanceSummary),
        (status = 404, description = "No such instance", body = doc::ErrorBody),
        (status = 409, description = "The instance is not faulted", body = doc::ErrorBody),
        (status = 422, description = "The variables do not fit the process", body = doc::ErrorBody),
    )
)]
async fn retry_instance(State(svc): State<Service>, Path(id): Path<String>, body: Bytes) -> Response {
    respond(async {
        let request: RetryRequest = if body.iter().all(u8::is_ascii_whitespace) { RetryRequest::default() } else { parse_json(&body)? };
        let s = svc.retry(&id, request.variables.map(|v| v.to_string())).await?;
        Ok((StatusCode::OK, summary_json(&s, &svc)))
    }
    .await)
}

/// `POST /v1/retry` with `{"process": P, "fault": NAME}` (fault optional).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct BulkRetryRequest {
    /// Retry the faulted instances of this process.
    process: String,
    /// Only those faulted with this fault name.
    fault: Option<String>,
}

#[utoipa::path(
    post, path = "/v1/retry", tag = "instances",
    request_body = BulkRetryRequest,
    responses((status = 200, description = "The instances retried and those refused", body = doc::RetryReport))
)]
async fn retry_faulted(State(svc): State<Service>, body: Bytes) -> Response {
    respond(async {
        let request: BulkRetryRequest = parse_json(&body)?;
        let report = svc.retry_faulted(&request.process, request.fault.as_deref()).await?;
        Ok((StatusCode::OK, json!(report)))
    }
    .await)
}

/// `POST /v1/instances/{id}/migrate`: `{"to": VERSION, "map"?: {OLD_PATH: NEW_PATH}}`;
/// `POST /v1/migrate` also names `"from": VERSION`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct MigrateRequest {
    /// The version to move instances from (`POST /v1/migrate` only).
    from: Option<String>,
    /// The version to move to.
    to: String,
    /// Old activity path -> new path, for activities that moved.
    #[serde(default)]
    map: std::collections::BTreeMap<String, String>,
}

#[utoipa::path(
    post, path = "/v1/instances/{id}/migrate", tag = "instances",
    params(("id" = String, Path, description = "The instance id")),
    request_body = MigrateRequest,
    responses(
        (status = 200, description = "The instance on its new version", body = InstanceSummary),
        (status = 404, description = "No such instance or version", body = doc::ErrorBody),
        (status = 409, description = "The instance is not waiting or suspended, or the version is of another process", body = doc::ErrorBody),
        (status = 422, description = "Its position or variables do not fit the new version", body = doc::ErrorBody),
    )
)]
async fn migrate_instance(State(svc): State<Service>, Path(id): Path<String>, body: Bytes) -> Response {
    respond(async {
        let request: MigrateRequest = parse_json(&body)?;
        let s = svc.migrate(&id, &request.to, &request.map).await?;
        Ok((StatusCode::OK, summary_json(&s, &svc)))
    }
    .await)
}

#[utoipa::path(
    post, path = "/v1/migrate", tag = "instances",
    request_body = MigrateRequest,
    responses(
        (status = 200, description = "The instances migrated and those refused", body = doc::MigrateReport),
        (status = 404, description = "No such version", body = doc::ErrorBody),
        (status = 409, description = "The versions are of different processes", body = doc::ErrorBody),
        (status = 422, description = "The new version cannot take these instances", body = doc::ErrorBody),
    )
)]
async fn migrate_version(State(svc): State<Service>, body: Bytes) -> Response {
    respond(async {
        let request: MigrateRequest = parse_json(&body)?;
        let from = request.from.ok_or_else(|| Error::new(ErrorKind::BadInput, "name the version to migrate from: \"from\""))?;
        let report = svc.migrate_version(&from, &request.to, &request.map).await?;
        Ok((StatusCode::OK, json!(report)))
    }
    .await)
}

#[derive(Deserialize, ToSchema)]
struct BreakpointRequest {
    /// The process name.
    process: String,
    /// The activity path to stop before.
    path: String,
}

#[utoipa::path(
    get, path = "/v1/breakpoints", tag = "operator",
    responses((status = 200, description = "Every breakpoint", body = doc::BreakpointList))
)]
async fn list_breakpoints(State(svc): State<Service>) -> Response {
    let list: Vec<Value> = svc.operator.breakpoints().into_iter().map(|(process, path)| json!({ "process": process, "path": path })).collect();
    Json(json!({ "breakpoints": list })).into_response()
}

#[utoipa::path(
    post, path = "/v1/breakpoints", tag = "operator",
    request_body = BreakpointRequest,
    responses((status = 200, description = "Set", body = doc::BreakpointChanged), (status = 404, description = "No such process or activity path", body = doc::ErrorBody))
)]
async fn set_breakpoint(State(svc): State<Service>, body: Bytes) -> Response {
    respond(async {
        let req: BreakpointRequest = parse_json(&body)?;
        svc.set_breakpoint(&req.process, &req.path, true).await?;
        Ok((StatusCode::OK, json!({ "process": req.process, "path": req.path, "set": true })))
    }
    .await)
}

#[utoipa::path(
    delete, path = "/v1/breakpoints", tag = "operator",
    request_body = BreakpointRequest,
    responses((status = 200, description = "Cleared", body = doc::BreakpointChanged), (status = 404, description = "No such process or activity path", body = doc::ErrorBody))
)]
async fn clear_breakpoint(State(svc): State<Service>, body: Bytes) -> Response {
    respond(async {
        let req: BreakpointRequest = parse_json(&body)?;
        svc.set_breakpoint(&req.process, &req.path, false).await?;
        Ok((StatusCode::OK, json!({ "process": req.process, "path": req.path, "set": false })))
    }
    .await)
}

/// `{"name": NAME}`: a backup in BACKUP_ROOT/NAME. `{"dir": DIR}` (the older
/// form) is taken only when DIR resolves inside the backup root.
#[derive(Deserialize, ToSchema)]
struct BackupRequest {
    /// The backup's name: one plain name under the backup root.
    name: Option<String>,
    /// The older form: a directory inside the backup root.
    dir: Option<String>,
}

#[utoipa::path(
    post, path = "/v1/backup", tag = "operator",
    request_body = BackupRequest,
    responses(
        (status = 201, description = "The backup, made", body = doc::BackupMade),
        (status = 409, description = "A backup of that name exists", body = doc::ErrorBody),
    )
)]
async fn backup(State(svc): State<Service>, Extension(config): Extension<Arc<ApiConfig>>, body: Bytes) -> Response {
    respond(async {
        let req: BackupRequest = parse_json(&body)?;
        let target = match (&req.name, &req.dir) {
            (Some(name), None) => BackupTarget::Name(name),
            (None, Some(dir)) => BackupTarget::Dir(dir),
            _ => return Err(Error::new(ErrorKind::BadInput, "give {\"name\": NAME}: the backup goes into NAME under the backup root")),
        };
        let dir = svc.backup(config.backup_dir.as_deref(), target).await?;
        let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        Ok((StatusCode::CREATED, json!({ "name": name, "dir": dir.display().to_string() })))
    }
    .await)
}

#[derive(Deserialize, ToSchema)]
struct CreateResource {
    /// The resource's name.
    name: String,
}

#[utoipa::path(
    post, path = "/v1/resources", tag = "operator",
    request_body = CreateResource,
    responses(
        (status = 201, description = "Created", body = doc::ResourceCreated),
        (status = 200, description = "It existed already", body = doc::ResourceCreated),
    )
)]
async fn create_resource(State(svc): State<Service>, body: Bytes) -> Response {
    respond(async {
        let req: CreateResource = parse_json(&body)?;
        let (info, created) = svc.create_resource(&req.name).await?;
        let status = if created { StatusCode::CREATED } else { StatusCode::OK };
        Ok((status, json!({ "name": info.name, "created_ms": info.created_ms, "created": created })))
    }
    .await)
}

#[utoipa::path(
    get, path = "/v1/resources", tag = "operator",
    responses((status = 200, description = "Every resource", body = doc::ResourceList))
)]
async fn list_resources(State(svc): State<Service>) -> Response {
    respond(async {
        let list: Vec<Value> = svc.store.resources().await?.iter().map(|r| json!({ "name": r.name, "created_ms": r.created_ms })).collect();
        Ok((StatusCode::OK, json!({ "resources": list })))
    }
    .await)
}

#[derive(Deserialize)]
struct ScanQuery {
    prefix: Option<String>,
    after: Option<String>,
    limit: Option<usize>,
}

#[utoipa::path(
    get, path = "/v1/resources/{name}", tag = "operator",
    params(
        ("name" = String, Path, description = "The resource"),
        ("prefix" = Option<String>, Query, description = "Only keys with this prefix"),
        ("after" = Option<String>, Query, description = "Keys after this one (`next_after` of the page before)"),
        ("limit" = Option<u64>, Query, description = "At most this many (default 100, at most 1000)"),
    ),
    responses((status = 200, description = "A page of keys in order", body = doc::ResourceScan), (status = 404, description = "No such resource", body = doc::ErrorBody))
)]
async fn scan_resource(State(svc): State<Service>, Path(name): Path<String>, Query(q): Query<ScanQuery>) -> Response {
    respond(async {
        svc.resource(&name).await?;
        let limit = q.limit.unwrap_or(100).min(1000);
        let rows = svc.store.resource_scan(&name, q.prefix.as_deref().unwrap_or(""), q.after.as_deref(), limit).await?;
        let next_after = (rows.len() == limit).then(|| rows.last().map(|r| r.key.clone())).flatten();
        let rows: Vec<Value> = rows
            .iter()
            .map(|r| json!({ "key": r.key, "version": r.version, "value": serde_json::from_str::<Value>(&r.value).unwrap_or(Value::Null) }))
            .collect();
        Ok((StatusCode::OK, json!({ "name": name, "count": rows.len(), "rows": rows, "next_after": next_after })))
    }
    .await)
}

#[utoipa::path(
    get, path = "/v1/resources/{name}/keys/{key}", tag = "operator",
    params(("name" = String, Path, description = "The resource"), ("key" = String, Path, description = "The key")),
    responses((status = 200, description = "The key's value and version", body = doc::ResourceKey), (status = 404, description = "No such resource or key", body = doc::ErrorBody))
)]
async fn get_resource_key(State(svc): State<Service>, Path((name, key)): Path<(String, String)>) -> Response {
    respond(async {
        svc.resource(&name).await?;
        match svc.store.resource_get(&name, &key).await? {
            (version, Some(value)) => {
                let value = serde_json::from_str::<Value>(&value).unwrap_or(Value::Null);
                Ok((StatusCode::OK, json!({ "name": name, "key": key, "version": version, "value": value })))
            }
            (_, None) => Err(Error::new(ErrorKind::NotFound, format!("resource '{name}' has no key '{key}'"))),
        }
    }
    .await)
}

#[derive(Deserialize, ToSchema)]
struct CreateToken {
    /// `worker`, `reader`, `operator` or `admin`.
    role: String,
    /// What the token is for.
    #[serde(default)]
    note: String,
}

fn token_json(t: &cairn_store::TokenRecord) -> Value {
    json!({ "id": t.id, "role": t.role.name(), "created_ms": t.created_ms, "note": t.note })
}

#[utoipa::path(
    post, path = "/v1/tokens", tag = "tokens",
    request_body = CreateToken,
    responses((status = 201, description = "The token, shown this once", body = doc::TokenCreated))
)]
async fn create_token(State(svc): State<Service>, Extension(tokens): Extension<Arc<TokenCache>>, body: Bytes) -> Response {
    respond(async {
        let req: CreateToken = parse_json(&body)?;
        let role = Role::parse(&req.role)
            .ok_or_else(|| Error::new(ErrorKind::BadInput, format!("unknown role '{}': use worker, reader, operator or admin", req.role)))?;
        check_len("the note", &req.note)?;
        let (token, record) = auth::new_token(role, &req.note, crate::now_ms());
        let mut b = WriteBatch::new();
        b.push(Write::Token(record.clone()));
        svc.store.commit(b).await?;
        tokens.refresh(&svc.store).await?;
        let mut v = token_json(&record);
        v["token"] = json!(token);
        Ok((StatusCode::CREATED, v))
    }
    .await)
}

#[utoipa::path(
    get, path = "/v1/tokens", tag = "tokens",
    responses((status = 200, description = "Every token (never its secret)", body = doc::TokenList))
)]
async fn list_tokens(State(svc): State<Service>) -> Response {
    respond(async {
        let list: Vec<Value> = svc.store.tokens().await?.iter().map(token_json).collect();
        Ok((StatusCode::OK, json!({ "tokens": list })))
    }
    .await)
}

#[utoipa::path(
    delete, path = "/v1/tokens/{id}", tag = "tokens",
    params(("id" = String, Path, description = "The token's id (`tok-…`)")),
    responses((status = 200, description = "Revoked", body = doc::TokenRevoked), (status = 404, description = "No such token", body = doc::ErrorBody))
)]
async fn revoke_token(State(svc): State<Service>, Extension(tokens): Extension<Arc<TokenCache>>, Path(id): Path<String>) -> Response {
    respond(async {
        if !svc.store.tokens().await?.iter().any(|t| t.id == id) {
            return Err(Error::new(ErrorKind::NotFound, format!("no token with id '{id}'")));
        }
        let mut b = WriteBatch::new();
        b.push(Write::TokenRevoke { id: id.clone() });
        svc.store.commit(b).await?;
        tokens.refresh(&svc.store).await?;
        Ok((StatusCode::OK, json!({ "id": id, "revoked": true })))
    }
    .await)
}
