//! The console's read routes: a definition's activity tree and heat map,
//! instance search, and one instance's positions (see `console`).
//!
//! Like the rest of the API they answer with JSON built here, never engine
//! or store types, so that renaming either never changes what the page reads.

use crate::api::types::{FaultView, HistoryView, InstanceStatus, InstanceSummary, TargetView};
use crate::service::{Error, ErrorKind, Service};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use cairn_engine::definition::{Activity, Definition, EventTrigger, NodeId, PickTrigger, Target, WaitFor};
use cairn_engine::snapshot::BranchState;
use cairn_engine::{Effect, Frame, Phase, Reason, Snapshot, Status};
use cairn_store::{InstanceFilter, Moved};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

/// Most instances one search or heat map reads; past it the answer says
/// `"partial": true`.
const MAX_SCAN: usize = 200_000;
/// Instances read from the store at a time while scanning.
const SCAN_PAGE: usize = 1000;
/// Most children one instance page lists.
const MAX_CHILDREN: usize = 200;

fn respond(r: Result<Value, Error>) -> Response {
    match r {
        Ok(v) => Json(v).into_response(),
        Err(e) => {
            let status = match e.kind {
                ErrorKind::BadInput => StatusCode::BAD_REQUEST,
                ErrorKind::NotFound => StatusCode::NOT_FOUND,
                ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
                ErrorKind::NoSpace => StatusCode::INSUFFICIENT_STORAGE,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            };
            (status, Json(json!({ "error": e.message }))).into_response()
        }
    }
}

fn definition_of(svc: &Service, version: &str) -> Result<(String, Definition), Error> {
    let deployed = svc
        .registry
        .deployed(version)
        .ok_or_else(|| Error::new(ErrorKind::NotFound, format!("no definition version '{version}' is deployed (see GET /v1/definitions)")))?;
    let def = deployed
        .definition()
        .ok_or_else(|| Error::new(ErrorKind::NotFound, format!("version '{version}' is an activity ('{}'), not a process", deployed.record.name)))?;
    Ok((deployed.record.name.clone(), def.clone()))
}

/// `GET /v1/definitions/{version}/tree`.
#[utoipa::path(
    get, path = "/v1/definitions/{version}/tree", tag = "console",
    params(("version" = String, Path, description = "A deployed process version")),
    responses((status = 200, description = "The process's activity tree", body = crate::api::openapi::ActivityTree), (status = 404, description = "No such version, or it is an activity", body = crate::api::openapi::ErrorBody))
)]
pub async fn tree(State(svc): State<Service>, Path(version): Path<String>) -> Response {
    respond((|| -> Result<Value, Error> {
        let (name, def) = definition_of(&svc, &version)?;
        let latest = svc.registry.latest(cairn_store::ComponentKind::Process, &name).is_some_and(|l| l.record.version == version);
        Ok(json!({
            "name": name,
            "version": version,
            "latest": latest,
            "root": node_json(&def, def.root, ""),
            "breakpoints": svc.operator.breakpoints_of(&name),
        }))
    })())
}

fn ms(n: u64) -> String {
    if n.is_multiple_of(1000) && n >= 1000 {
        format!("{} s", n / 1000)
    } else {
        format!("{n} ms")
    }
}

fn target_name(t: &Target) -> String {
    match t {
        Target::Activity(n) => format!("activity {n}"),
        Target::Process(n) => format!("process {n}"),
    }
}

/// One activity as the diagram draws it: `kind`, `path`, a line of
/// `detail`, its `children` (with a `label` each where the kind names its
/// arms: if, switch, pick), and for a scope its fault and event `handlers`
/// and `compensation`.
fn node_json(def: &Definition, id: NodeId, parent: &str) -> Value {
    let node = def.node(id);
    let path = if parent.is_empty() { node.name.clone() } else { format!("{parent}/{}", node.name) };
    let child = |c: NodeId| node_json(def, c, &path);
    let labelled = |c: NodeId, label: String| {
        let mut v = child(c);
        v["label"] = json!(label);
        v
    };
    let mut v = json!({ "name": node.name, "path": path, "kind": node.activity.kind_name() });
    let commits = node.commits();
    v["commit_before"] = json!(commits.before);
    v["commit_after"] = json!(commits.after);
    let (detail, children): (String, Vec<Value>) = match &node.activity {
        Activity::Sequence { children } => (String::new(), children.iter().map(|c| child(*c)).collect()),
        Activity::Snippet { .. } => (String::new(), Vec::new()),
        Activity::IfElse { then_branch, else_branch, .. } => {
            let mut c = vec![labelled(*then_branch, "then".into())];
            c.extend(else_branch.map(|e| labelled(e, "else".into())));
            (String::new(), c)
        }
        Activity::While { body, .. } => ("loop while the condition holds".into(), vec![child(*body)]),
        Activity::Receive { operation, correlation, creates_instance, .. } => {
            let mut d = format!("message {operation}");
            if let Some(set) = correlation {
                d.push_str(&format!(" by {set}"));
            }
            if *creates_instance {
                d.push_str(" (creates)");
            }
            (d, Vec::new())
        }
        Activity::Reply { operation, .. } => (format!("reply to {operation}"), Vec::new()),
        Activity::Invoke { target, operation, .. } => (format!("{} · {operation}", target_name(target)), Vec::new()),
        Activity::Send { target, operation, .. } => (format!("to {} · {operation}", target_name(target)), Vec::new()),
        Activity::Wait { wait } => (
            match wait {
                WaitFor::DurationMs(n) => format!("for {}", ms(*n)),
                WaitFor::Deadline(_) => "until a deadline".into(),
            },
            Vec::new(),
        ),
        Activity::Throw { fault, .. } => (format!("fault {fault}"), Vec::new()),
        Activity::Terminate | Activity::Rethrow => (String::new(), Vec::new()),
        Activity::Scope { body, atomic, handlers, compensation, timeout_ms, events } => {
            let mut handlers: Vec<Value> = handlers
                .iter()
                .map(|h| {
                    let mut label = h.fault.as_ref().map_or("on any fault".to_string(), |f| format!("on fault {f}"));
                    if h.condition.is_some() {
                        label.push_str(" where its data match");
                    }
                    json!({
                        "fault": h.fault,
                        "label": label,
                        "body": h.body.map(child),
                    })
                })
                .collect();
            // Event handlers are drawn beside the fault handlers, by their trigger.
            handlers.extend(events.iter().map(|e| {
                let label = match &e.trigger {
                    EventTrigger::Message { operation, .. } => format!("on event {operation}"),
                    EventTrigger::AfterMs(n) => format!("on alarm after {}", ms(*n)),
                    EventTrigger::Deadline(_) => "on alarm at a deadline".to_string(),
                    EventTrigger::EveryMs(n) => format!("on alarm every {}", ms(*n)),
                };
                json!({ "event": true, "label": label, "body": child(e.body) })
            }));
            v["handlers"] = json!(handlers);
            v["compensation"] = json!(compensation.is_some());
            v["atomic"] = json!(atomic.is_some());
            let mut d = if atomic.is_some() { "atomic".to_string() } else { String::new() };
            if let Some(t) = timeout_ms {
                d.push_str(&format!("{}timeout {}", if d.is_empty() { "" } else { " · " }, ms(*t)));
            }
            (d, vec![child(*body)])
        }
        Activity::Compensate { scope } => (scope.as_ref().map_or("every completed scope".into(), |s| format!("scope {s}")), Vec::new()),
        Activity::Suspend { reason } => (reason.clone(), Vec::new()),
        Activity::StartProcess { process, operation, .. } => (format!("process {process} · {operation}"), Vec::new()),
        Activity::Pick { branches, creates_instance } => (
            if *creates_instance { "(creates)".to_string() } else { String::new() },
            branches
                .iter()
                .map(|b| {
                    let label = match &b.trigger {
                        PickTrigger::Message { operation, .. } => format!("on message {operation}"),
                        PickTrigger::AfterMs(n) => format!("after {}", ms(*n)),
                    };
                    labelled(b.body, label)
                })
                .collect(),
        ),
        Activity::Flow { branches } => (String::new(), branches.iter().map(|c| child(*c)).collect()),
        Activity::ForEach { items, parallel, body, completion } => {
            v["parallel"] = json!(parallel);
            let until = if completion.is_some() { ", until the condition holds" } else { "" };
            (format!("{} over {items}{until}", if *parallel { "in parallel" } else { "each" }), vec![child(*body)])
        }
        Activity::RepeatUntil { body, .. } => ("repeat until the condition holds".into(), vec![child(*body)]),
        Activity::Switch { cases, otherwise } => {
            let mut c: Vec<Value> = cases.iter().enumerate().map(|(i, case)| labelled(case.body, format!("case {}", i + 1))).collect();
            c.extend(otherwise.map(|o| labelled(o, "otherwise".into())));
            (String::new(), c)
        }
    };
    v["detail"] = json!(detail);
    v["children"] = json!(children);
    v
}

/// Pages through the instances the filter selects, at most `MAX_SCAN`;
/// `keep` sees each. Returns whether the scan stopped early.
async fn scan(svc: &Service, mut filter: InstanceFilter, mut keep: impl FnMut(&Snapshot)) -> Result<bool, Error> {
    let mut seen = 0;
    loop {
        let page = svc.store.instances(&filter, SCAN_PAGE).await?;
        for s in &page {
            keep(s);
        }
        seen += page.len();
        if page.len() < SCAN_PAGE {
            return Ok(false);
        }
        if seen >= MAX_SCAN {
            return Ok(true);
        }
        filter.after = page.last().map(|s| s.id.clone());
    }
}

/// `GET /v1/definitions/{version}/heat`: for every activity path, how many
/// instances of the version are there by status (every branch of a flow
/// counts), and how many faulted there (the path the fault was raised at).
#[utoipa::path(
    get, path = "/v1/definitions/{version}/heat", tag = "console",
    params(("version" = String, Path, description = "A deployed process version")),
    responses((status = 200, description = "Instances of the version by activity path and status", body = crate::api::openapi::Heat), (status = 404, description = "No such version, or it is an activity", body = crate::api::openapi::ErrorBody))
)]
pub async fn heat(State(svc): State<Service>, Path(version): Path<String>) -> Response {
    respond(
        async {
            let (name, def) = definition_of(&svc, &version)?;
            let mut activities: BTreeMap<String, BTreeMap<&'static str, u64>> = BTreeMap::new();
            let mut by_status: BTreeMap<&'static str, u64> = BTreeMap::new();
            let filter = InstanceFilter { process: Some(name), ..InstanceFilter::default() };
            let partial = scan(&svc, filter, |s| {
                if s.version != version {
                    return;
                }
                *by_status.entry(s.status.as_str()).or_default() += 1;
                match s.status {
                    Status::Faulted => {
                        if let Some(f) = &s.fault {
                            *activities.entry(f.path.clone()).or_default().entry("faulted").or_default() += 1;
                        }
                    }
                    Status::Completed | Status::Terminated => {}
                    status => {
                        for p in positions_of(&def, s) {
                            *activities.entry(p.path).or_default().entry(status.as_str()).or_default() += 1;
                        }
                    }
                }
            })
            .await?;
            Ok(json!({ "version": version, "activities": activities, "by_status": by_status, "partial": partial }))
        }
        .await,
    )
}

#[derive(Deserialize)]
pub struct SearchQuery {
    process: Option<String>,
    /// A version, or its first characters (the console shows 12).
    version: Option<String>,
    status: Option<String>,
    /// A text every matching instance has in one of its correlation values.
    correlation: Option<String>,
    /// Created at or after (ms since the Unix epoch).
    from_ms: Option<u64>,
    /// Created before (ms since the Unix epoch).
    to_ms: Option<u64>,
    limit: Option<usize>,
    after: Option<String>,
}

/// `GET /v1/instances/search`: the matches in id order, a page at a time
/// (`limit`, default 50, at most 1000, after the id `after`), with `total`
/// matches and `next_after` when more follow.
#[utoipa::path(
    get, path = "/v1/instances/search", tag = "console",
    params(
        ("process" = Option<String>, Query, description = "Only instances of this process"),
        ("version" = Option<String>, Query, description = "A version, or its first characters"),
        ("status" = Option<InstanceStatus>, Query, description = "Only instances of this status"),
        ("correlation" = Option<String>, Query, description = "A text one of the instance's correlation values contains"),
        ("from_ms" = Option<u64>, Query, description = "Created at or after (ms since the Unix epoch)"),
        ("to_ms" = Option<u64>, Query, description = "Created before (ms since the Unix epoch)"),
        ("limit" = Option<u64>, Query, description = "At most this many (default 50, 1 to 1000)"),
        ("after" = Option<String>, Query, description = "After this id (`next_after` of the page before)"),
    ),
    responses((status = 200, description = "A page of matches in id order, with the total", body = crate::api::openapi::SearchPage))
)]
pub async fn search(State(svc): State<Service>, Query(q): Query<SearchQuery>) -> Response {
    respond(
        async {
            let some = |o: &Option<String>| o.clone().filter(|s| !s.is_empty());
            let status = match some(&q.status) {
                None => None,
                Some(s) => Some(serde_json::from_value::<Status>(json!(s)).map_err(|_| {
                    Error::new(ErrorKind::BadInput, format!("unknown status '{s}'; use running, waiting, suspended, completed, faulted or terminated"))
                })?),
            };
            let limit = q.limit.unwrap_or(50).clamp(1, 1000);
            let (version, correlation, after) = (some(&q.version), some(&q.correlation), some(&q.after));
            let filter = InstanceFilter { status, process: some(&q.process), after: None, newest_first: false };
            let mut total = 0u64;
            let mut page: Vec<InstanceSummary> = Vec::new();
            let mut more = false;
            let partial = scan(&svc, filter, |s| {
                let fits = version.as_deref().is_none_or(|v| s.version.starts_with(v))
                    && correlation.as_deref().is_none_or(|c| s.correlations.values().any(|v| v.contains(c)))
                    && q.from_ms.is_none_or(|t| s.created_ms >= t)
                    && q.to_ms.is_none_or(|t| s.created_ms < t);
                if !fits {
                    return;
                }
                total += 1;
                if after.as_deref().is_some_and(|a| s.id.as_str() <= a) {
                    return;
                }
                if page.len() < limit {
                    let deployed = svc.registry.deployed(&s.version);
                    page.push(InstanceSummary::new(s, deployed.as_ref().and_then(|d| d.definition())));
                } else {
                    more = true;
                }
            })
            .await?;
            let mut body = json!({ "instances": page, "count": page.len(), "total": total, "partial": partial });
            if more {
                body["next_after"] = json!(page.last().map(|s| s.id.clone()));
            }
            Ok(body)
        }
        .await,
    )
}

/// Where one stack of frames stands: its innermost activity.
struct Position<'a> {
    path: String,
    /// `active` (the stack), or a set-aside flow branch's `ready` / `waiting`.
    state: &'static str,
    /// The innermost frame.
    frame: &'a Frame,
    /// A frame on the way stopped at a breakpoint.
    broke: Option<String>,
}

/// Every branch's position: the stack's innermost activity, and that of each
/// set-aside branch of every flow on the way (recursively).
fn positions_of<'a>(def: &Definition, s: &'a Snapshot) -> Vec<Position<'a>> {
    let mut out = Vec::new();
    walk_stack(def, &s.stack, "", "active", &mut out);
    out
}

fn walk_stack<'a>(def: &Definition, stack: &'a [Frame], base: &str, state: &'static str, out: &mut Vec<Position<'a>>) {
    let mut path = base.to_string();
    let mut broke = None;
    let before = out.len();
    for f in stack {
        let name = &def.node(f.node).name;
        path = if path.is_empty() { name.clone() } else { format!("{path}/{name}") };
        if f.broke {
            broke = Some(path.clone());
        }
        if let Phase::Flow { branches } = &f.phase {
            for b in branches {
                let state = match b.state {
                    BranchState::Ready => "ready",
                    BranchState::Waiting => "waiting",
                    _ => continue,
                };
                walk_stack(def, &b.stack, &path, state, out);
            }
        }
    }
    let Some(top) = stack.last() else { return };
    // A flow on top whose branches are all set aside stands where they do.
    if matches!(top.phase, Phase::Flow { .. }) && out.len() > before {
        return;
    }
    out.push(Position { path, state, frame: top, broke });
}

/// `GET /v1/instances/{id}/positions`.
#[utoipa::path(
    get, path = "/v1/instances/{id}/positions", tag = "console",
    params(("id" = String, Path, description = "The instance id")),
    responses((status = 200, description = "Every branch's position, why it stopped, its parent and children", body = crate::api::openapi::Positions), (status = 404, description = "No such instance", body = crate::api::openapi::ErrorBody))
)]
pub async fn positions(State(svc): State<Service>, Path(id): Path<String>) -> Response {
    respond(
        async {
            let s = svc.load_snapshot(&id).await?.ok_or_else(|| Error::new(ErrorKind::NotFound, format!("no instance with id '{id}'")))?;
            let deployed = svc.registry.deployed(&s.version);
            let def = deployed.as_ref().and_then(|d| d.definition());
            let outbox = svc.store.outbox(&id).await?;
            let tasks: Vec<_> = svc.tasks.list().into_iter().filter(|t| t.instance == id).collect();
            let history = svc.store.history(&id).await?;
            // The last stop or go: a frame stays marked `broke` after a resume until it ends.
            let at_breakpoint = history
                .iter()
                .rev()
                .find(|h| matches!(h.reason, Reason::Breakpoint | Reason::Suspended | Reason::Resumed))
                .is_some_and(|h| h.reason == Reason::Breakpoint);
            let mut list = Vec::new();
            let mut stopped = Value::Null;
            if let (Some(def), false) = (def, s.status.is_terminal()) {
                for p in positions_of(def, &s) {
                    let waits = wait_json(&svc, def, &s, &p, &outbox, &tasks);
                    if let (Some(at), Status::Suspended, true) = (&p.broke, s.status, at_breakpoint) {
                        stopped = json!({ "path": at, "why": "breakpoint", "detail": format!("stopped at a breakpoint before '{at}'") });
                    }
                    list.push(json!({ "path": p.path, "state": p.state, "kind": def.node(p.frame.node).activity.kind_name(), "waits": waits }));
                }
                if s.status == Status::Suspended && stopped.is_null() {
                    let at = s.path(def);
                    stopped = match s.stack.last().map(|f| &def.node(f.node).activity) {
                        Some(Activity::Suspend { reason }) => {
                            json!({ "path": at, "why": "suspend-activity", "detail": format!("the process suspended itself: {reason}") })
                        }
                        _ => json!({ "path": at, "why": "operator", "detail": "suspended by an operator" }),
                    };
                }
            }
            let parent = history.iter().flat_map(|h| &h.moved_by).find_map(|m| match m {
                Moved::StartedBy { instance, .. } => Some(instance.clone()),
                _ => None,
            });
            let mut children = Vec::new();
            for m in history.iter().flat_map(|h| &h.moved_by) {
                let Moved::Sent { message_id, process, start: true, .. } = m else { continue };
                if children.len() >= MAX_CHILDREN {
                    break;
                }
                let Some(record) = svc.store.message(message_id).await? else { continue };
                let status = svc.load_snapshot(&record.instance).await?.map(|c| InstanceStatus::from(c.status));
                children.push(json!({ "id": record.instance, "process": process, "status": status }));
            }
            let parent = match parent {
                Some(p) => {
                    let c = svc.load_snapshot(&p).await?;
                    json!({ "id": p, "process": c.as_ref().map(|c| c.process.clone()), "status": c.map(|c| InstanceStatus::from(c.status)) })
                }
                None => Value::Null,
            };
            let history: Vec<HistoryView> = history.iter().map(HistoryView::from).collect();
            Ok(json!({
                "id": id,
                "process": s.process,
                "version": s.version,
                "status": InstanceStatus::from(s.status),
                "fence": s.fence,
                "positions": list,
                "stopped": stopped,
                "fault": s.fault.as_ref().map(FaultView::from),
                "parent": parent,
                "children": children,
                "history": history,
            }))
        }
        .await,
    )
}

/// What the activity at a position waits for, in words the page shows.
fn wait_json(svc: &Service, def: &Definition, s: &Snapshot, p: &Position, outbox: &[Effect], tasks: &[crate::service::TaskInfo]) -> Value {
    let activity = &def.node(p.frame.node).activity;
    let correlation = |set: &Option<String>| -> Value {
        match set {
            Some(set) => json!({ "set": set, "values": s.correlations.get(set) }),
            None => Value::Null,
        }
    };
    let call = |call_id: u64| -> Value {
        let mut v = Map::new();
        v.insert("call_id".into(), json!(call_id));
        for e in outbox {
            if let Effect::Invoke { call_id: c, target, operation, idempotency_key, .. } | Effect::Send { call_id: c, target, operation, message_id: idempotency_key, .. } = e {
                if *c == call_id {
                    v.insert("target".into(), json!(TargetView::from(target)));
                    v.insert("operation".into(), json!(operation));
                    v.insert("key".into(), json!(idempotency_key));
                }
            }
        }
        let task_id = format!("{}:{call_id}", s.id);
        if let Some(t) = tasks.iter().find(|t| t.id == task_id) {
            v.insert("attempt".into(), json!(t.attempt));
            v.insert("task".into(), json!(if t.lease.is_some() { "leased" } else { "waiting" }));
        } else if let Some(a) = svc.calls.attempt(&s.id, call_id) {
            v.insert("attempt".into(), json!(a.attempt));
            v.insert("last_fault".into(), json!(a.last_fault.as_ref().map(FaultView::from)));
        } else {
            v.insert("attempt".into(), json!(1));
        }
        Value::Object(v)
    };
    match (&p.frame.phase, activity) {
        (Phase::AwaitMessage { operation, timer }, Activity::Receive { correlation: set, .. }) => json!({
            "what": "message", "operation": operation, "correlation": correlation(set), "timeout_due_ms": timer.map(|t| t.due_ms),
        }),
        (Phase::AwaitTimer { due_ms, .. }, _) => json!({ "what": "timer", "due_ms": due_ms }),
        (Phase::AwaitInvoke { call_id }, _) => json!({ "what": "call", "call": call(*call_id) }),
        (Phase::AwaitPick { timers }, Activity::Pick { branches, .. }) => {
            let arms: Vec<Value> = branches
                .iter()
                .enumerate()
                .map(|(i, b)| match &b.trigger {
                    PickTrigger::Message { operation, correlation: set, .. } => {
                        json!({ "what": "message", "operation": operation, "correlation": correlation(set) })
                    }
                    PickTrigger::AfterMs(_) => {
                        let due = timers.iter().find(|(b, _)| *b as usize == i).map(|(_, t)| t.due_ms);
                        json!({ "what": "timer", "due_ms": due })
                    }
                })
                .collect();
            json!({ "what": "pick", "arms": arms })
        }
        (Phase::Handling { caught }, _) => json!({ "what": "handling", "fault": FaultView::from(caught) }),
        (Phase::Compensating { queue, .. }, _) => {
            json!({ "what": "compensating", "queue": queue.iter().map(|q| q.scope.clone()).collect::<Vec<_>>() })
        }
        (phase, _) => json!({ "what": "running", "phase": phase_name(phase) }),
    }
}

fn phase_name(p: &Phase) -> &'static str {
    match p {
        Phase::Enter => "enter",
        Phase::Started => "started",
        Phase::Child { .. } => "child",
        Phase::Each { .. } => "each",
        Phase::Flow { .. } => "flow",
        Phase::Done => "done",
        _ => "waiting",
    }
}
