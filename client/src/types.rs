//! API types: the JSON the HTTP API takes and returns, and (feature
//! `server`) the conversions into it from engine and store types.
//!
//! API Boundary: these shapes are the contract with every client. They are
//! defined here, apart from the engine's and the store's types, so renaming
//! an engine type or a stored field never changes the API, and the API never
//! shows the engine's internal frames. The host serializes them, the
//! `Client` deserializes them, and (feature `openapi`) the host's OpenAPI
//! document is generated from them.

#[cfg(feature = "server")]
use cairn_engine::{Definition, Effect, FaultRecord, Phase, Reason, Snapshot, Status, Target};
#[cfg(feature = "server")]
use cairn_store::{ComponentKind, DeployedRecord, HistoryEntry, InTransit, InTransitState, Moved, Reply};
use serde::{Deserialize, Serialize};
#[cfg(feature = "openapi")]
use utoipa::ToSchema;
use serde_json::Value;
use std::collections::BTreeMap;

/// An instance's status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(rename_all = "kebab-case")]
pub enum InstanceStatus {
    Running,
    Waiting,
    Suspended,
    Completed,
    Faulted,
    Terminated,
}

#[cfg(feature = "server")]
impl From<Status> for InstanceStatus {
    fn from(s: Status) -> InstanceStatus {
        match s {
            Status::Running => InstanceStatus::Running,
            Status::Waiting => InstanceStatus::Waiting,
            Status::Suspended => InstanceStatus::Suspended,
            Status::Completed => InstanceStatus::Completed,
            Status::Faulted => InstanceStatus::Faulted,
            Status::Terminated => InstanceStatus::Terminated,
        }
    }
}

/// One line of a listing.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct InstanceSummary {
    pub id: String,
    pub process: String,
    pub version: String,
    pub status: InstanceStatus,
    /// Activity path of the innermost activity, e.g. `main/approval/wait`.
    pub position: String,
    pub created_ms: u64,
    pub updated_ms: u64,
}

#[cfg(feature = "server")]
impl InstanceSummary {
    pub fn new(s: &Snapshot, def: Option<&Definition>) -> InstanceSummary {
        InstanceSummary {
            id: s.id.clone(),
            process: s.process.clone(),
            version: s.version.clone(),
            status: s.status.into(),
            position: def.map(|d| s.path(d)).unwrap_or_default(),
            created_ms: s.created_ms,
            updated_ms: s.updated_ms,
        }
    }
}

/// A fault: its name, message, data (JSON text) and, for one that ended an
/// instance, the activity path where it was raised.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct FaultView {
    pub name: String,
    pub message: String,
    pub data: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

#[cfg(feature = "server")]
impl From<&FaultRecord> for FaultView {
    fn from(f: &FaultRecord) -> FaultView {
        FaultView { name: f.fault.name.clone(), message: f.fault.message.clone(), data: f.fault.data.clone(), path: Some(f.path.clone()) }
    }
}

#[cfg(feature = "server")]
impl From<&cairn_engine::Fault> for FaultView {
    fn from(f: &cairn_engine::Fault) -> FaultView {
        FaultView { name: f.name.clone(), message: f.message.clone(), data: f.data.clone(), path: None }
    }
}

/// The reply to a request-response message.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct ReplyView {
    pub body: Value,
    pub fault: Option<FaultView>,
}

#[cfg(feature = "server")]
impl From<&Reply> for ReplyView {
    fn from(r: &Reply) -> ReplyView {
        ReplyView { body: r.body.clone(), fault: r.fault.as_ref().map(FaultView::from) }
    }
}

/// A call's target: an activity component or a process, by name.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct TargetView {
    pub kind: String,
    pub name: String,
}

#[cfg(feature = "server")]
impl From<&Target> for TargetView {
    fn from(t: &Target) -> TargetView {
        match t {
            Target::Activity(n) => TargetView { kind: "activity".into(), name: n.clone() },
            Target::Process(n) => TargetView { kind: "process".into(), name: n.clone() },
        }
    }
}

/// A timer an instance waits for.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct TimerView {
    pub timer_id: u64,
    pub due_ms: u64,
}

/// What the innermost activity of an instance is doing.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(rename_all = "kebab-case", tag = "phase")]
pub enum WaitView {
    /// A message of `operation`, with a timeout timer if the receive has one.
    AwaitMessage { operation: String, timer: Option<TimerView> },
    AwaitTimer { timer_id: u64, due_ms: u64 },
    /// An activity call's result.
    AwaitInvoke { call_id: u64 },
    /// The first of a pick's messages or timers (timers by branch).
    AwaitPick {
        /// `[branch, timer]` pairs.
        #[cfg_attr(feature = "openapi", schema(value_type = Vec<Vec<serde_json::Value>>))]
        timers: Vec<(u32, TimerView)>,
    },
    /// Branches of a flow, each running, waiting or done.
    Flow { branches: usize },
    /// Any other point of an activity's life.
    Running { activity_phase: String },
}

#[cfg(feature = "server")]
impl From<&Phase> for WaitView {
    fn from(p: &Phase) -> WaitView {
        match p {
            Phase::AwaitMessage { operation, timer } => WaitView::AwaitMessage {
                operation: operation.clone(),
                timer: timer.map(|t| TimerView { timer_id: t.timer_id, due_ms: t.due_ms }),
            },
            Phase::AwaitTimer { timer_id, due_ms } => WaitView::AwaitTimer { timer_id: *timer_id, due_ms: *due_ms },
            Phase::AwaitInvoke { call_id } => WaitView::AwaitInvoke { call_id: *call_id },
            Phase::AwaitPick { timers } => WaitView::AwaitPick {
                timers: timers.iter().map(|(b, t)| (*b, TimerView { timer_id: t.timer_id, due_ms: t.due_ms })).collect(),
            },
            Phase::Flow { branches } => WaitView::Flow { branches: branches.len() },
            other => WaitView::Running {
                activity_phase: String::from(match other {
                    Phase::Enter => "enter",
                    Phase::Started => "started",
                    Phase::Child { .. } => "child",
                    Phase::Each { .. } => "each",
                    Phase::Handling { .. } => "handling",
                    Phase::Compensating { .. } => "compensating",
                    _ => "done",
                }),
            },
        }
    }
}

/// An activity call or send in the outbox: dispatched, result not yet consumed.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct PendingCallView {
    /// `invoke` or `send`.
    pub effect: String,
    pub call_id: u64,
    pub target: TargetView,
    pub operation: String,
    /// JSON text of the input (invoke) or the message body (send).
    pub input: String,
    /// The invoke's idempotency key, or the send's message id.
    pub key: String,
}

#[cfg(feature = "server")]
impl PendingCallView {
    pub fn new(e: &Effect) -> Option<PendingCallView> {
        match e {
            Effect::Invoke { call_id, target, operation, input, idempotency_key, .. } => Some(PendingCallView {
                effect: "invoke".into(),
                call_id: *call_id,
                target: target.into(),
                operation: operation.clone(),
                input: input.clone(),
                key: idempotency_key.clone(),
            }),
            Effect::Send { call_id, target, operation, body, message_id, .. } => Some(PendingCallView {
                effect: "send".into(),
                call_id: *call_id,
                target: target.into(),
                operation: operation.clone(),
                input: body.clone(),
                key: message_id.clone(),
            }),
            _ => None,
        }
    }
}

/// A persistence point in an instance's history.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct HistoryView {
    pub fence: u64,
    pub at_ms: u64,
    pub reason: String,
    pub status: InstanceStatus,
    pub path: String,
    /// Times this point lost a resource conflict and its calls ran again (absent when none).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub resource_conflicts: u32,
    /// What moved the instance to this point (absent when nothing is recorded).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub moved_by: Vec<MovedView>,
}

/// One thing that moved an instance to a persistence point.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum MovedView {
    /// A message it consumed (`body`: JSON text, cut at 16 KiB).
    Message {
        message_id: String,
        operation: String,
        body: String,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        truncated: bool,
    },
    /// An activity call's result it took: its output (JSON text) or its fault.
    CallResult {
        call_id: u64,
        output: Option<String>,
        fault: Option<FaultView>,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        truncated: bool,
    },
    /// A message it sent to a process (`start`: a start-process).
    Sent { call_id: u64, message_id: String, process: String, operation: String, start: bool },
    /// The instance whose message created it: its parent.
    StartedBy { instance: String, call_id: u64 },
}

#[cfg(feature = "server")]
impl From<&Moved> for MovedView {
    fn from(m: &Moved) -> MovedView {
        match m {
            Moved::Message { message_id, operation, body, truncated } => {
                MovedView::Message { message_id: message_id.clone(), operation: operation.clone(), body: body.clone(), truncated: *truncated }
            }
            Moved::CallResult { call_id, output, fault, truncated } => {
                MovedView::CallResult { call_id: *call_id, output: output.clone(), fault: fault.as_ref().map(FaultView::from), truncated: *truncated }
            }
            Moved::Sent { call_id, message_id, process, operation, start } => MovedView::Sent {
                call_id: *call_id,
                message_id: message_id.clone(),
                process: process.clone(),
                operation: operation.clone(),
                start: *start,
            },
            Moved::StartedBy { instance, call_id } => MovedView::StartedBy { instance: instance.clone(), call_id: *call_id },
        }
    }
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

#[cfg(feature = "server")]
impl From<&HistoryEntry> for HistoryView {
    fn from(h: &HistoryEntry) -> HistoryView {
        HistoryView {
            fence: h.fence,
            at_ms: h.at_ms,
            reason: reason_name(h.reason).into(),
            status: h.status.into(),
            path: h.path.clone(),
            resource_conflicts: h.resource_conflicts,
            moved_by: h.moved_by.iter().map(MovedView::from).collect(),
        }
    }
}

/// Why a persistence point was taken, as the API and the CLI name it.
#[cfg(feature = "server")]
pub fn reason_name(r: Reason) -> &'static str {
    match r {
        Reason::Created => "created",
        Reason::CommitBefore => "commit-before",
        Reason::CommitAfter => "commit-after",
        Reason::Dispatch => "dispatch",
        Reason::Waiting => "waiting",
        Reason::Shutdown => "shutdown",
        Reason::ScopeCompleted => "scope-completed",
        Reason::Compensated => "compensated",
        Reason::Suspended => "suspended",
        Reason::Resumed => "resumed",
        Reason::VariablesSet => "variables-set",
        Reason::Breakpoint => "breakpoint",
        Reason::Retried => "retried",
        Reason::Cancelled => "cancelled",
        Reason::Migrated => "migrated",
        Reason::Completed => "completed",
        Reason::Faulted => "faulted",
        Reason::Terminated => "terminated",
    }
}

/// A held call: a non-idempotent activity call found in flight after a crash.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct HeldCallView {
    /// `INSTANCE:CALL`, what `cairn in-transit resubmit` takes.
    pub id: String,
    pub instance: String,
    pub call_id: u64,
    /// `held`, `resubmitted` (to be sent again), `resent` (sent again) or `abandoned`.
    pub state: String,
    pub since_ms: u64,
    pub target: TargetView,
    pub operation: String,
    pub idempotency_key: String,
}

#[cfg(feature = "server")]
impl From<&InTransit> for HeldCallView {
    fn from(t: &InTransit) -> HeldCallView {
        HeldCallView {
            id: format!("{}:{}", t.instance, t.call_id),
            instance: t.instance.clone(),
            call_id: t.call_id,
            state: String::from(match t.state {
                InTransitState::Held => "held",
                InTransitState::Resubmitted => "resubmitted",
                InTransitState::Resent => "resent",
                InTransitState::Abandoned => "abandoned",
                InTransitState::Leased => "leased",
                InTransitState::Completed => "completed",
            }),
            since_ms: t.since_ms,
            target: (&t.target).into(),
            operation: t.operation.clone(),
            idempotency_key: t.idempotency_key.clone(),
        }
    }
}

/// One instance in full.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct InstanceDetail {
    #[serde(flatten)]
    pub summary: InstanceSummary,
    pub variables: Value,
    pub fault: Option<FaultView>,
    pub correlations: BTreeMap<String, String>,
    pub in_memory: bool,
    /// Parked by deferred recovery until an operator releases it.
    pub parked: bool,
    pub wait: Option<WaitView>,
    /// Messages in its inbox, not yet consumed.
    pub inbox: usize,
    pub pending_calls: Vec<PendingCallView>,
    pub in_transit: Vec<HeldCallView>,
    pub history: Vec<HistoryView>,
    pub fence: u64,
}

/// The variables of a snapshot as JSON (text that is not JSON is shown as a string).
#[cfg(feature = "server")]
pub fn variables(s: &Snapshot) -> Value {
    serde_json::from_str(&s.variables).unwrap_or(Value::String(s.variables.clone()))
}

/// A deployed version in a listing.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct DefinitionView {
    pub name: String,
    pub version: String,
    pub kind: String,
    pub latest: bool,
    pub deployed_ms: u64,
    pub size: u64,
    /// `long-running` or `microflow`, for a process.
    pub process_kind: Option<String>,
    /// URL prefixes an activity component is granted over HTTP.
    pub allow_http: Vec<String>,
    /// An external activity's operations (empty: any), for an external activity only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<Vec<String>>,
}

#[cfg(feature = "server")]
pub fn kind_name(k: ComponentKind) -> &'static str {
    match k {
        ComponentKind::Process => "process",
        ComponentKind::Activity => "activity",
    }
}

#[cfg(feature = "server")]
impl DefinitionView {
    pub fn new(r: &DeployedRecord, latest: bool) -> DefinitionView {
        DefinitionView {
            name: r.name.clone(),
            version: r.version.clone(),
            kind: kind_name(r.kind).into(),
            latest,
            deployed_ms: r.deployed_ms,
            size: r.size,
            process_kind: r.definition.as_ref().map(|d| {
                String::from(match d.kind {
                    cairn_engine::ProcessKind::LongRunning => "long-running",
                    cairn_engine::ProcessKind::Microflow => "microflow",
                })
            }),
            allow_http: r.allow_http.clone(),
            external: r.external.clone(),
        }
    }
}


// ---- Bodies the host builds with `json!`, typed for clients (and the OpenAPI document) ----

/// `GET /v1/health`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct Health {
    /// Whether the host is healthy (`status` is `ok`).
    pub ok: bool,
    /// `ok` or `degraded`: degraded still serves what it can.
    #[cfg_attr(feature = "openapi", schema(pattern = "^(ok|degraded)$"))]
    pub status: String,
    /// Why the host is degraded (empty when ok).
    pub reasons: Vec<String>,
    /// Instances held in memory.
    pub live_instances: u64,
    /// Since when writes to the store fail (ms since the Unix epoch), while they do.
    pub writes_failing_since_ms: Option<u64>,
    /// Damaged records met, if any.
    pub damaged_records: Option<u64>,
    /// What the damaged records were.
    pub damage: Option<Value>,
}

/// A component deployed (`POST /v1/definitions`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct Deployed {
    pub name: String,
    /// The version: the sha256 of the component.
    pub version: String,
    /// `process` or `activity`.
    pub kind: String,
    /// False when this version was deployed already.
    pub created: bool,
    pub allow_http: Vec<String>,
    pub resources: Vec<String>,
}

/// An external activity deployed (`POST /v1/definitions/external`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct DeployedExternal {
    pub name: String,
    pub version: String,
    /// Always `activity`.
    pub kind: String,
    /// Its operations (empty: any).
    pub external: Option<Vec<String>>,
    pub created: bool,
}

/// `GET /v1/definitions`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct DefinitionList {
    pub definitions: Vec<DefinitionView>,
}

/// An instance started (`POST /v1/instances`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct Started {
    pub id: String,
    pub process: String,
    pub version: String,
}

/// A page of instances (`GET /v1/instances`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct InstanceList {
    pub instances: Vec<InstanceSummary>,
    pub count: u64,
    /// Present when more may follow: pass it as `after` for the next page.
    pub next_after: Option<String>,
    /// All instances that match (of the status asked for, or of every
    /// status); absent with `process`, which would need a listing.
    pub total: Option<u64>,
}

/// `GET /v1/instances/{id}/history`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct InstanceHistory {
    pub id: String,
    pub history: Vec<HistoryView>,
}

/// An instance after `PUT /v1/instances/{id}/variables`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct WithVariables {
    #[cfg_attr(feature = "openapi", schema(inline))]
    #[serde(flatten)]
    pub summary: InstanceSummary,
    pub variables: Value,
}

/// An instance an operation refused, and why.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct RefusedView {
    pub id: String,
    pub error: String,
}

/// `POST /v1/retry`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct RetryReport {
    pub retried: Vec<String>,
    pub refused: Vec<RefusedView>,
}

/// `POST /v1/migrate`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct MigrateReport {
    pub migrated: Vec<String>,
    pub refused: Vec<RefusedView>,
}

/// A message accepted (`POST /v1/messages`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct MessageAccepted {
    pub message_id: String,
    /// The instance the message went to (or created).
    pub instance: String,
    /// Whether the message created the instance.
    pub created: bool,
    /// Whether a message of this id was accepted before (then 200, not 202).
    pub duplicate: bool,
    /// With `wait_reply`: the reply.
    pub reply: Option<ReplyView>,
}

/// A backup made (`POST /v1/backup`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct BackupMade {
    pub name: String,
    /// Where it is on the host.
    pub dir: String,
}

/// A breakpoint: before the activity at `path` of `process`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct Breakpoint {
    pub process: String,
    pub path: String,
}

/// `GET /v1/breakpoints`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct BreakpointList {
    pub breakpoints: Vec<Breakpoint>,
}

/// A breakpoint set or cleared.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct BreakpointChanged {
    pub process: String,
    pub path: String,
    /// True after `POST`, false after `DELETE`.
    pub set: bool,
}

/// A resource (a keyed store processes share).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct ResourceView {
    pub name: String,
    pub created_ms: u64,
}

/// `POST /v1/resources`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct ResourceCreated {
    pub name: String,
    pub created_ms: u64,
    /// False when it existed already (then 200, not 201).
    pub created: bool,
}

/// `GET /v1/resources`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct ResourceList {
    pub resources: Vec<ResourceView>,
}

/// One key of a resource.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct ResourceRow {
    pub key: String,
    pub version: u64,
    pub value: Value,
}

/// `GET /v1/resources/{name}`: a page of keys.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct ResourceScan {
    pub name: String,
    pub count: u64,
    pub rows: Vec<ResourceRow>,
    /// Pass as `after` for the next page (null when this is the last).
    pub next_after: Option<String>,
}

/// `GET /v1/resources/{name}/keys/{key}`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct ResourceKey {
    pub name: String,
    pub key: String,
    pub version: u64,
    pub value: Value,
}

/// `GET /v1/in-transit`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct HeldCallList {
    pub calls: Vec<HeldCallView>,
    pub count: u64,
}

/// A token (its secret is never shown again after creation).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct TokenView {
    pub id: String,
    /// `worker`, `reader`, `operator` or `admin`.
    pub role: String,
    pub created_ms: u64,
    pub note: String,
}

/// `POST /v1/tokens`: the token, shown this once.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct TokenCreated {
    pub id: String,
    pub role: String,
    pub created_ms: u64,
    pub note: String,
    /// The secret to send as `Authorization: Bearer TOKEN`.
    pub token: String,
}

/// `GET /v1/tokens`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct TokenList {
    pub tokens: Vec<TokenView>,
}

/// `DELETE /v1/tokens/{id}`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct TokenRevoked {
    pub id: String,
    pub revoked: bool,
}

/// A task in `GET /v1/tasks`: waiting, leased, or held after a crash.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct ListedTask {
    pub id: String,
    pub instance: String,
    pub activity: String,
    pub operation: String,
    /// The call's input (absent for a held call).
    pub input: Option<Value>,
    pub idempotency_key: String,
    /// `waiting`, `leased` or `held`.
    pub state: String,
    pub since_ms: u64,
    pub attempt: Option<u32>,
    pub lease_deadline_ms: Option<u64>,
    pub lease: Option<String>,
    pub worker: Option<String>,
}

/// `GET /v1/tasks`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct TaskList {
    pub count: u64,
    pub tasks: Vec<ListedTask>,
}

/// Where one branch of an instance stands.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct PositionView {
    pub path: String,
    /// `active`, or a set-aside flow branch's `ready` or `waiting`.
    pub state: String,
    /// The activity's kind.
    pub kind: String,
    /// What it waits for: `{"what": "message" | "timer" | "call" | "pick" | "handling" | "compensating" | "running", …}`.
    pub waits: BTreeMap<String, Value>,
}

/// Why a suspended instance stopped.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct StoppedView {
    pub path: String,
    /// `breakpoint`, `suspend-activity` or `operator`.
    pub why: String,
    pub detail: String,
}

/// A parent or child instance.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct RelatedInstance {
    pub id: String,
    pub process: Option<String>,
    pub status: Option<InstanceStatus>,
}

/// `GET /v1/instances/{id}/positions`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct Positions {
    pub id: String,
    pub process: String,
    pub version: String,
    pub status: InstanceStatus,
    pub fence: u64,
    pub positions: Vec<PositionView>,
    pub stopped: Option<StoppedView>,
    pub fault: Option<FaultView>,
    pub parent: Option<RelatedInstance>,
    pub children: Vec<RelatedInstance>,
    pub history: Vec<HistoryView>,
}
