//! The routes of external activities and their workers: deploy an external
//! activity, long-poll for tasks, complete, fail, heartbeat, list tasks.

use super::{check_len, error, parse_json, respond, Query};
use crate::service::{Error, ErrorKind, Holder, Outcome, PollRequest, Polled, Service, TaskInfo, DEFAULT_LEASE_MS, MAX_POLL_WAIT_MS};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use cairn_engine::Fault;
use cairn_store::InTransitState;
use serde::Deserialize;
use serde_json::{json, Value};

/// At most this many tasks per poll.
const MAX_TASKS_PER_POLL: usize = 1000;
/// The longest lease a poll or heartbeat may ask for (an hour).
const MAX_LEASE_MS: u64 = 3_600_000;

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct DeployExternal {
    name: String,
    #[serde(default)]
    operations: Vec<String>,
}

/// `POST /v1/definitions/external`: an external activity by name with its operations.
#[utoipa::path(
    post, path = "/v1/definitions/external", tag = "definitions",
    request_body = DeployExternal,
    responses(
        (status = 201, description = "Deployed", body = super::openapi::DeployedExternal),
        (status = 200, description = "Deployed already with these operations", body = super::openapi::DeployedExternal),
        (status = 409, description = "The name is taken by a component of another kind", body = super::openapi::ErrorBody),
    )
)]
pub(super) async fn deploy_external(State(svc): State<Service>, body: Bytes) -> Response {
    respond(async {
        let req: DeployExternal = parse_json(&body)?;
        check_len("the definition name", &req.name)?;
        let (record, created) = svc.deploy_external(&req.name, req.operations).await?;
        let status = if created { StatusCode::CREATED } else { StatusCode::OK };
        Ok((
            status,
            json!({ "name": record.name, "version": record.version, "kind": "activity", "external": record.external, "created": created }),
        ))
    }
    .await)
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct Poll {
    activity: String,
    #[serde(default)]
    operations: Vec<String>,
    worker: String,
    #[serde(default)]
    max: Option<usize>,
    #[serde(default)]
    wait_ms: Option<u64>,
    #[serde(default)]
    lease_ms: Option<u64>,
}

fn task_json(t: &TaskInfo) -> Value {
    let input = serde_json::from_str::<Value>(&t.input).unwrap_or(Value::String(t.input.clone()));
    json!({
        "id": t.id,
        "instance": t.instance,
        "activity": t.activity,
        "operation": t.operation,
        "input": input,
        "idempotency_key": t.idempotency_key,
        "attempt": t.attempt,
        "lease_deadline_ms": t.lease.as_ref().map(|l| l.deadline_ms),
        "lease": t.lease.as_ref().map(|l| l.token.clone()),
        "worker": t.lease.as_ref().map(|l| l.worker.clone()),
    })
}

/// `POST /v1/tasks/poll`: waits up to `wait_ms` for tasks of `activity`
/// (of `operations`, if given) and leases up to `max` to `worker`. In
/// cluster mode, when this host offers none, the poll also asks the other
/// live hosts (`forward::poll_elsewhere`), unless it was itself sent by one.
#[utoipa::path(
    post, path = "/v1/tasks/poll", tag = "tasks",
    request_body = Poll,
    responses(
        (status = 200, description = "The tasks leased to the worker (none when `wait_ms` passed without one)", body = super::openapi::TaskBatch),
        (status = 404, description = "No external activity of that name is deployed", body = super::openapi::ErrorBody),
    )
)]
pub(super) async fn poll(State(svc): State<Service>, headers: HeaderMap, body: Bytes) -> Response {
    respond(async {
        let req: Poll = parse_json(&body)?;
        check_len("the activity name", &req.activity)?;
        check_len("the worker name", &req.worker)?;
        if req.worker.is_empty() {
            return Err(Error::new(ErrorKind::BadInput, "a poll names its worker (\"worker\": NAME)"));
        }
        let lease_ms = req.lease_ms.unwrap_or(DEFAULT_LEASE_MS);
        if lease_ms == 0 || lease_ms > MAX_LEASE_MS {
            return Err(Error::new(ErrorKind::BadInput, format!("lease_ms must be between 1 and {MAX_LEASE_MS}")));
        }
        let r = PollRequest {
            activity: req.activity,
            operations: req.operations,
            worker: req.worker,
            max: req.max.unwrap_or(1).clamp(1, MAX_TASKS_PER_POLL),
            wait_ms: req.wait_ms.unwrap_or(0).min(MAX_POLL_WAIT_MS),
            lease_ms,
        };
        // Cluster mode: the other hosts' tasks, by a poll that does not wait,
        // sent one hop (a poll another host sent is answered from here only).
        let forwarded = headers.contains_key(super::forward::FORWARDED_BY);
        let elsewhere = (svc.cluster.is_some() && !forwarded).then(|| {
            let authorization = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).map(str::to_string);
            let (svc, r) = (svc.clone(), r.clone());
            move |max: usize| super::forward::poll_elsewhere(svc.clone(), r.clone(), max, authorization.clone())
        });
        let tasks: Vec<Value> = match svc.poll_tasks(r, elsewhere).await? {
            Polled::Here(tasks) => tasks.iter().map(task_json).collect(),
            Polled::Elsewhere(tasks) => tasks,
        };
        Ok((StatusCode::OK, json!({ "count": tasks.len(), "tasks": tasks })))
    }
    .await)
}

#[derive(Deserialize, utoipa::ToSchema)]
struct FaultBody {
    name: String,
    #[serde(default)]
    message: String,
    #[serde(default)]
    data: Value,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct Finish {
    attempt: u32,
    #[serde(default)]
    worker: Option<String>,
    /// The lease token the poll gave (optional; refused unless current).
    #[serde(default)]
    lease: Option<String>,
    #[serde(default)]
    output: Option<Value>,
    #[serde(default)]
    fault: Option<FaultBody>,
    #[serde(default)]
    retryable: bool,
    #[serde(default)]
    lease_ms: Option<u64>,
}

/// `POST /v1/tasks/{id}/complete` (`output`), `/fail` (`fault`,
/// `retryable`), `/heartbeat` (`lease_ms`?): each names its `attempt`.
#[utoipa::path(
    post, path = "/v1/tasks/{id}/{verb}", tag = "tasks",
    params(
        ("id" = String, Path, description = "The task's id (`INSTANCE:CALL`)"),
        ("verb" = super::openapi::TaskVerb, Path, description = "`complete` (with `output`), `fail` (with `fault`, `retryable`) or `heartbeat` (`lease_ms`?)"),
    ),
    request_body = Finish,
    responses(
        (status = 200, description = "Completed or failed (`TaskFinished`), or, for a heartbeat, the task with its lease extended (`Task`)", body = super::openapi::TaskOrFinished),
        (status = 404, description = "No such task, or an unknown verb", body = super::openapi::ErrorBody),
        (status = 409, description = "The attempt, worker or lease is not the task's current one", body = super::openapi::ErrorBody),
    )
)]
pub(super) async fn finish(State(svc): State<Service>, Path((id, verb)): Path<(String, String)>, body: Bytes) -> Response {
    let req: Finish = match parse_json(&body) {
        Ok(r) => r,
        Err(e) => return error(e),
    };
    respond(async {
        check_len("the task id", &id)?;
        let holder = Holder { attempt: req.attempt, worker: req.worker.as_deref(), lease: req.lease.as_deref() };
        let outcome = match verb.as_str() {
            "heartbeat" => {
                if req.lease_ms.is_some_and(|ms| ms == 0 || ms > MAX_LEASE_MS) {
                    return Err(Error::new(ErrorKind::BadInput, format!("lease_ms must be between 1 and {MAX_LEASE_MS}")));
                }
                let t = svc.heartbeat_task(&id, &holder, req.lease_ms)?;
                return Ok((StatusCode::OK, task_json(&t)));
            }
            "complete" => Outcome::Completed(req.output.unwrap_or(Value::Null).to_string()),
            "fail" => {
                let f = req.fault.ok_or_else(|| Error::new(ErrorKind::BadInput, "a failure names its fault: {\"fault\": {\"name\", \"message\"}}"))?;
                if f.name.is_empty() || f.name.starts_with("cairn.") {
                    return Err(Error::new(ErrorKind::BadInput, format!("fault name '{}' is empty or in the host's namespace cairn.*", f.name)));
                }
                Outcome::Failed { fault: Fault { name: f.name, message: f.message, data: f.data.to_string() }, retryable: req.retryable }
            }
            other => return Err(Error::new(ErrorKind::NotFound, format!("unknown verb '{other}': use complete, fail or heartbeat"))),
        };
        let ack = svc.finish_task(&id, &holder, outcome).await?;
        Ok((StatusCode::OK, json!({ "id": id, "attempt": req.attempt, "duplicate": ack.duplicate, "retrying": ack.retrying })))
    }
    .await)
}

#[derive(Deserialize)]
pub(super) struct ListTasks {
    activity: Option<String>,
}

/// `GET /v1/tasks?activity=NAME`: waiting and leased tasks, and held ones.
#[utoipa::path(
    get, path = "/v1/tasks", tag = "tasks",
    params(("activity" = Option<String>, Query, description = "Only tasks of this external activity")),
    responses((status = 200, description = "Waiting, leased and held tasks", body = super::openapi::TaskList))
)]
pub(super) async fn list_tasks(State(svc): State<Service>, Query(q): Query<ListTasks>) -> Response {
    respond(async {
        let wanted = |a: &str| q.activity.as_deref().is_none_or(|w| w == a);
        let mut out: Vec<Value> = Vec::new();
        for t in svc.tasks.list().iter().filter(|t| wanted(&t.activity)) {
            let mut v = task_json(t);
            v["state"] = json!(if t.lease.is_some() { "leased" } else { "waiting" });
            v["since_ms"] = json!(t.since_ms);
            out.push(v);
        }
        for h in svc.in_transit(None).await? {
            let cairn_engine::Target::Activity(name) = &h.target else { continue };
            if h.state != InTransitState::Held || svc.registry.external(name).is_none() || !wanted(name) {
                continue;
            }
            out.push(json!({
                "id": format!("{}:{}", h.instance, h.call_id),
                "instance": h.instance,
                "activity": name,
                "operation": h.operation,
                "idempotency_key": h.idempotency_key,
                "state": "held",
                "since_ms": h.since_ms,
                "attempt": null,
                "worker": null,
                "lease_deadline_ms": null,
            }));
        }
        Ok((StatusCode::OK, json!({ "count": out.len(), "tasks": out })))
    }
    .await)
}
