//! The HTTP API (JSON over HTTP/1.1 on loopback). API Boundary: the CLI
//! speaks only this; the README documents every route.
//!
//! Request bodies are parsed here, so that malformed JSON gets an error that
//! says where it is malformed; everything else is the service's. Responses
//! are the types of `types`, never engine or store types.

pub mod types;

use cairn_engine::{Control, Snapshot, Status};
use types::*;
use crate::service::{Error, ErrorKind, MessageIn, Service};
use cairn_store::{InTransitState, InstanceFilter};
use axum::body::Bytes;
use axum::extract::{Path, Query, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use std::time::Duration;

pub fn router(svc: Service) -> Router {
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/definitions", post(deploy).get(list_definitions))
        .route("/v1/instances", post(start).get(list_instances))
        .route("/v1/instances/{id}", get(show_instance))
        .route("/v1/instances/{id}/history", get(instance_history))
        .route("/v1/instances/{id}/variables", axum::routing::put(set_variables))
        .route("/v1/instances/{id}/{verb}", post(control_instance))
        .route("/v1/messages", post(send_message))
        .route("/v1/backup", post(backup))
        .route("/v1/breakpoints", get(list_breakpoints).post(set_breakpoint).delete(clear_breakpoint))
        .route("/v1/resources", get(list_resources).post(create_resource))
        .route("/v1/resources/{name}", get(scan_resource))
        .route("/v1/resources/{name}/keys/{key}", get(get_resource_key))
        .route("/v1/in-transit", get(list_in_transit))
        .route("/v1/in-transit/{id}/{verb}", post(resolve_in_transit))
        .fallback(|| async { error(Error::new(ErrorKind::NotFound, "no such route; see the README's HTTP reference")) })
        .with_state(svc)
}

fn error(e: Error) -> Response {
    let status = match e.kind {
        ErrorKind::BadInput => StatusCode::BAD_REQUEST,
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::Conflict => StatusCode::CONFLICT,
        ErrorKind::Invalid => StatusCode::UNPROCESSABLE_ENTITY,
        ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    };
    (status, Json(json!({ "error": e.message }))).into_response()
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

async fn health(State(svc): State<Service>) -> Response {
    Json(json!({ "ok": true, "live_instances": svc.drivers.count() })).into_response()
}

/// `?name=NAME&allow_http=PREFIX&allow_http=…` (`allow_http` repeats).
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
        let (record, created) = svc.deploy(body.to_vec(), name, allow_http, resources).await?;
        let status = if created { StatusCode::CREATED } else { StatusCode::OK };
        Ok((
            status,
            json!({ "name": record.name, "version": record.version, "kind": kind_name(record.kind), "created": created, "allow_http": record.allow_http, "resources": record.resources }),
        ))
    }
    .await)
}

async fn list_definitions(State(svc): State<Service>) -> Response {
    let defs: Vec<DefinitionView> = svc.registry.definitions().iter().map(|(r, latest)| DefinitionView::new(r, *latest)).collect();
    Json(json!({ "definitions": defs })).into_response()
}

#[derive(Deserialize)]
struct StartRequest {
    process: String,
    input: Option<Value>,
}

async fn start(State(svc): State<Service>, body: Bytes) -> Response {
    respond(async {
        let req: StartRequest = parse_json(&body)?;
        let a = svc.start_instance(&req.process, req.input).await?;
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
}

fn summary(s: &Snapshot, svc: &Service) -> InstanceSummary {
    let deployed = svc.registry.deployed(&s.version);
    InstanceSummary::new(s, deployed.as_ref().and_then(|d| d.definition()))
}

fn summary_json(s: &Snapshot, svc: &Service) -> Value {
    json!(summary(s, svc))
}

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
        let limit = q.limit.unwrap_or(1000);
        let filter = InstanceFilter { status, process: q.process.clone() };
        let list = svc.store.instances(&filter, limit).await?;
        let items: Vec<InstanceSummary> = list.iter().map(|s| summary(s, &svc)).collect();
        Ok((StatusCode::OK, json!({ "instances": items, "count": items.len() })))
    }
    .await)
}

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

#[derive(Deserialize)]
struct SendRequest {
    operation: String,
    body: Value,
    id: Option<String>,
    #[serde(default)]
    wait_reply: bool,
    timeout_ms: Option<u64>,
}

async fn send_message(State(svc): State<Service>, body: Bytes) -> Response {
    respond(async {
        let req: SendRequest = parse_json(&body)?;
        let m = MessageIn { id: req.id, ..MessageIn::new(req.operation, req.body.to_string()) };
        let accepted = svc.accept_message(m, None).await?;
        let mut out = json!(accepted);
        if req.wait_reply {
            let timeout = Duration::from_millis(req.timeout_ms.unwrap_or(30_000));
            let reply = svc.await_reply(&accepted.message_id, timeout).await?;
            out["reply"] = json!(ReplyView::from(&reply));
        }
        let status = if accepted.duplicate { StatusCode::OK } else { StatusCode::ACCEPTED };
        Ok((status, out))
    }
    .await)
}

async fn list_in_transit(State(svc): State<Service>) -> Response {
    respond(async {
        let calls: Vec<HeldCallView> = svc.in_transit(None).await?.iter().map(HeldCallView::from).collect();
        Ok((StatusCode::OK, json!({ "calls": calls, "count": calls.len() })))
    }
    .await)
}

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

async fn instance_history(State(svc): State<Service>, Path(id): Path<String>) -> Response {
    respond(async {
        svc.load_snapshot(&id).await?.ok_or_else(|| Error::new(ErrorKind::NotFound, format!("no instance with id '{id}'")))?;
        let history: Vec<HistoryView> = svc.store.history(&id).await?.iter().map(HistoryView::from).collect();
        Ok((StatusCode::OK, json!({ "id": id, "history": history })))
    }
    .await)
}

async fn control_instance(State(svc): State<Service>, Path((id, verb)): Path<(String, String)>) -> Response {
    respond(async {
        let control = match verb.as_str() {
            "suspend" => Control::Suspend,
            "resume" => Control::Resume,
            "terminate" => Control::Terminate,
            // `resubmit` is the older name of `release`, kept so existing scripts work.
            "release" | "resubmit" => {
                svc.release(&id).await?;
                let s = svc.load_snapshot(&id).await?.ok_or_else(|| Error::new(ErrorKind::NotFound, format!("no instance with id '{id}'")))?;
                return Ok((StatusCode::OK, summary_json(&s, &svc)));
            }
            other => {
                return Err(Error::new(ErrorKind::NotFound, format!("unknown verb '{other}': use suspend, resume, terminate or release")))
            }
        };
        let s = svc.control(&id, control).await?;
        Ok((StatusCode::OK, summary_json(&s, &svc)))
    }
    .await)
}

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

#[derive(Deserialize)]
struct BreakpointRequest {
    process: String,
    path: String,
}

async fn list_breakpoints(State(svc): State<Service>) -> Response {
    let list: Vec<Value> = svc.operator.breakpoints().into_iter().map(|(process, path)| json!({ "process": process, "path": path })).collect();
    Json(json!({ "breakpoints": list })).into_response()
}

async fn set_breakpoint(State(svc): State<Service>, body: Bytes) -> Response {
    respond(async {
        let req: BreakpointRequest = parse_json(&body)?;
        svc.set_breakpoint(&req.process, &req.path, true).await?;
        Ok((StatusCode::OK, json!({ "process": req.process, "path": req.path, "set": true })))
    }
    .await)
}

async fn clear_breakpoint(State(svc): State<Service>, body: Bytes) -> Response {
    respond(async {
        let req: BreakpointRequest = parse_json(&body)?;
        svc.set_breakpoint(&req.process, &req.path, false).await?;
        Ok((StatusCode::OK, json!({ "process": req.process, "path": req.path, "set": false })))
    }
    .await)
}

#[derive(Deserialize)]
struct BackupRequest {
    dir: String,
}

async fn backup(State(svc): State<Service>, body: Bytes) -> Response {
    respond(async {
        let req: BackupRequest = parse_json(&body)?;
        svc.backup(std::path::Path::new(&req.dir)).await?;
        Ok((StatusCode::CREATED, json!({ "dir": req.dir })))
    }
    .await)
}

#[derive(Deserialize)]
struct CreateResource {
    name: String,
}

async fn create_resource(State(svc): State<Service>, body: Bytes) -> Response {
    respond(async {
        let req: CreateResource = parse_json(&body)?;
        let (info, created) = svc.create_resource(&req.name).await?;
        let status = if created { StatusCode::CREATED } else { StatusCode::OK };
        Ok((status, json!({ "name": info.name, "created_ms": info.created_ms, "created": created })))
    }
    .await)
}

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
