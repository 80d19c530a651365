//! The HTTP API (JSON over HTTP/1.1 on loopback). API Boundary: the CLI
//! speaks only this; the README documents every route.
//!
//! Request bodies are parsed here, so that malformed JSON gets an error that
//! says where it is malformed; everything else is the service's.

use cairn_engine::{Control, Snapshot, Status};
use crate::service::{Error, ErrorKind, InTransit, InTransitState, MessageIn, Service};
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
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
    Json(json!({ "ok": true, "live_instances": svc.live_count() })).into_response()
}

#[derive(Deserialize)]
struct DeployQuery {
    name: Option<String>,
}

async fn deploy(State(svc): State<Service>, Query(q): Query<DeployQuery>, body: Bytes) -> Response {
    respond(async {
        if body.is_empty() {
            return Err(Error::new(ErrorKind::BadInput, "the request body is empty: send the component's bytes"));
        }
        let (record, created) = svc.deploy(body.to_vec(), q.name).await?;
        let status = if created { StatusCode::CREATED } else { StatusCode::OK };
        Ok((
            status,
            json!({ "name": record.name, "version": record.version, "kind": record.kind, "created": created }),
        ))
    }
    .await)
}

async fn list_definitions(State(svc): State<Service>) -> Response {
    let defs: Vec<Value> = svc
        .definitions()
        .into_iter()
        .map(|(r, latest)| {
            json!({
                "name": r.name,
                "version": r.version,
                "kind": r.kind,
                "latest": latest,
                "deployed_ms": r.deployed_ms,
                "size": r.size,
                "process_kind": r.definition.as_ref().map(|d| d.kind),
            })
        })
        .collect();
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
        let version = svc.load_snapshot(&a.instance)?.map(|s| s.version).unwrap_or_default();
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

fn summary(s: &Snapshot, svc: &Service) -> Value {
    let def = svc.deployed(&s.version).and_then(|d| d.record.definition.clone());
    json!({
        "id": s.id,
        "process": s.process,
        "version": s.version,
        "status": s.status,
        "position": def.map(|d| s.path(&d)).unwrap_or_default(),
        "created_ms": s.created_ms,
        "updated_ms": s.updated_ms,
    })
}

async fn list_instances(State(svc): State<Service>, Query(q): Query<ListQuery>) -> Response {
    respond((|| {
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
        let list = svc.list_instances(status, q.process.as_deref(), limit)?;
        let items: Vec<Value> = list.iter().map(|s| summary(s, &svc)).collect();
        Ok((StatusCode::OK, json!({ "instances": items, "count": items.len() })))
    })())
}

async fn show_instance(State(svc): State<Service>, Path(id): Path<String>) -> Response {
    respond((|| {
        let s = svc
            .load_snapshot(&id)?
            .ok_or_else(|| Error::new(ErrorKind::NotFound, format!("no instance with id '{id}'")))?;
        let mut v = summary(&s, &svc);
        let variables: Value = serde_json::from_str(&s.variables).unwrap_or(Value::String(s.variables.clone()));
        v["variables"] = variables;
        v["fault"] = json!(s.fault);
        v["correlations"] = json!(s.correlations);
        v["in_memory"] = json!(svc.in_memory(&id));
        v["parked"] = json!(svc.is_parked(&id));
        v["wait"] = json!(s.stack.last().map(|f| &f.phase));
        v["inbox"] = json!(svc.inbox(&id)?.len());
        v["pending_calls"] = json!(svc.outbox(&id)?);
        v["in_transit"] = json!(svc.in_transit(Some(&id))?.iter().map(in_transit_json).collect::<Vec<_>>());
        v["history"] = json!(svc.history(&id)?);
        v["fence"] = json!(s.fence);
        Ok((StatusCode::OK, v))
    })())
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
        let m = MessageIn { id: req.id, operation: req.operation, body: req.body.to_string(), create_only: false };
        let accepted = svc.accept_message(m, None, Default::default()).await?;
        let mut out = json!(accepted);
        if req.wait_reply {
            let timeout = Duration::from_millis(req.timeout_ms.unwrap_or(30_000));
            let reply = svc.await_reply(&accepted.message_id, timeout).await?;
            out["reply"] = json!(reply);
        }
        let status = if accepted.duplicate { StatusCode::OK } else { StatusCode::ACCEPTED };
        Ok((status, out))
    }
    .await)
}

fn in_transit_json(t: &InTransit) -> Value {
    let mut v = json!(t);
    v["id"] = json!(format!("{}:{}", t.instance, t.call_id));
    v
}

async fn list_in_transit(State(svc): State<Service>) -> Response {
    respond((|| {
        let calls: Vec<Value> = svc.in_transit(None)?.iter().map(in_transit_json).collect();
        Ok((StatusCode::OK, json!({ "calls": calls, "count": calls.len() })))
    })())
}

async fn resolve_in_transit(State(svc): State<Service>, Path((id, verb)): Path<(String, String)>) -> Response {
    respond(async {
        let state = match verb.as_str() {
            "resubmit" => InTransitState::Resubmitted,
            "abandon" => InTransitState::Abandoned,
            other => return Err(Error::new(ErrorKind::NotFound, format!("unknown verb '{other}': use resubmit or abandon"))),
        };
        let record = svc.resolve_in_transit(&id, state).await?;
        Ok((StatusCode::OK, in_transit_json(&record)))
    }
    .await)
}

async fn instance_history(State(svc): State<Service>, Path(id): Path<String>) -> Response {
    respond((|| {
        svc.load_snapshot(&id)?.ok_or_else(|| Error::new(ErrorKind::NotFound, format!("no instance with id '{id}'")))?;
        let history = svc.history(&id)?;
        Ok((StatusCode::OK, json!({ "id": id, "history": history })))
    })())
}

async fn control_instance(State(svc): State<Service>, Path((id, verb)): Path<(String, String)>) -> Response {
    respond(async {
        let control = match verb.as_str() {
            "suspend" => Control::Suspend,
            "resume" => Control::Resume,
            "terminate" => Control::Terminate,
            "resubmit" => {
                svc.resubmit(&id).await?;
                let s = svc.load_snapshot(&id)?.ok_or_else(|| Error::new(ErrorKind::NotFound, format!("no instance with id '{id}'")))?;
                return Ok((StatusCode::OK, summary(&s, &svc)));
            }
            other => {
                return Err(Error::new(ErrorKind::NotFound, format!("unknown verb '{other}': use suspend, resume, terminate or resubmit")))
            }
        };
        let s = svc.control(&id, control).await?;
        Ok((StatusCode::OK, summary(&s, &svc)))
    }
    .await)
}

async fn set_variables(State(svc): State<Service>, Path(id): Path<String>, body: Bytes) -> Response {
    respond(async {
        let variables: Value = parse_json(&body)?;
        let s = svc.control(&id, Control::SetVariables(variables.to_string())).await?;
        let mut v = summary(&s, &svc);
        v["variables"] = serde_json::from_str(&s.variables).unwrap_or(Value::Null);
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
    let list: Vec<Value> = svc.breakpoints().into_iter().map(|(process, path)| json!({ "process": process, "path": path })).collect();
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
        svc.backup(std::path::Path::new(&req.dir))?;
        Ok((StatusCode::CREATED, json!({ "dir": req.dir })))
    }
    .await)
}
