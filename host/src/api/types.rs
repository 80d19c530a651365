//! API response types: the JSON the HTTP API returns, and the conversions
//! into it from engine and store types.
//!
//! API Boundary: these shapes are the contract with every client. They are
//! defined here, apart from the engine's and the store's types, so renaming
//! an engine type or a stored field never changes the API, and the API never
//! shows the engine's internal frames.

use cairn_engine::{Definition, Effect, FaultRecord, Phase, Reason, Snapshot, Status, Target};
use cairn_store::{ComponentKind, DeployedRecord, HistoryEntry, InTransit, InTransitState, Moved, Reply};
use serde::Serialize;
use utoipa::ToSchema;
use serde_json::Value;
use std::collections::BTreeMap;

/// An instance's status.
#[derive(Clone, Copy, Debug, Serialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum InstanceStatus {
    Running,
    Waiting,
    Suspended,
    Completed,
    Faulted,
    Terminated,
}

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
#[derive(Debug, Serialize, ToSchema)]
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
#[derive(Debug, Serialize, ToSchema)]
pub struct FaultView {
    pub name: String,
    pub message: String,
    pub data: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

impl From<&FaultRecord> for FaultView {
    fn from(f: &FaultRecord) -> FaultView {
        FaultView { name: f.fault.name.clone(), message: f.fault.message.clone(), data: f.fault.data.clone(), path: Some(f.path.clone()) }
    }
}

impl From<&cairn_engine::Fault> for FaultView {
    fn from(f: &cairn_engine::Fault) -> FaultView {
        FaultView { name: f.name.clone(), message: f.message.clone(), data: f.data.clone(), path: None }
    }
}

/// The reply to a request-response message.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReplyView {
    pub body: Value,
    pub fault: Option<FaultView>,
}

impl From<&Reply> for ReplyView {
    fn from(r: &Reply) -> ReplyView {
        ReplyView { body: r.body.clone(), fault: r.fault.as_ref().map(FaultView::from) }
    }
}

/// A call's target: an activity component or a process, by name.
#[derive(Debug, Serialize, ToSchema)]
pub struct TargetView {
    pub kind: &'static str,
    pub name: String,
}

impl From<&Target> for TargetView {
    fn from(t: &Target) -> TargetView {
        match t {
            Target::Activity(n) => TargetView { kind: "activity", name: n.clone() },
            Target::Process(n) => TargetView { kind: "process", name: n.clone() },
        }
    }
}

/// A timer an instance waits for.
#[derive(Debug, Serialize, ToSchema)]
pub struct TimerView {
    pub timer_id: u64,
    pub due_ms: u64,
}

/// What the innermost activity of an instance is doing.
#[derive(Debug, Serialize, ToSchema)]
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
        #[schema(value_type = Vec<Vec<serde_json::Value>>)]
        timers: Vec<(u32, TimerView)>,
    },
    /// Branches of a flow, each running, waiting or done.
    Flow { branches: usize },
    /// Any other point of an activity's life.
    Running { activity_phase: &'static str },
}

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
                activity_phase: match other {
                    Phase::Enter => "enter",
                    Phase::Started => "started",
                    Phase::Child { .. } => "child",
                    Phase::Each { .. } => "each",
                    Phase::Handling { .. } => "handling",
                    Phase::Compensating { .. } => "compensating",
                    _ => "done",
                },
            },
        }
    }
}

/// An activity call or send in the outbox: dispatched, result not yet consumed.
#[derive(Debug, Serialize, ToSchema)]
pub struct PendingCallView {
    /// `invoke` or `send`.
    pub effect: &'static str,
    pub call_id: u64,
    pub target: TargetView,
    pub operation: String,
    /// JSON text of the input (invoke) or the message body (send).
    pub input: String,
    /// The invoke's idempotency key, or the send's message id.
    pub key: String,
}

impl PendingCallView {
    pub fn new(e: &Effect) -> Option<PendingCallView> {
        match e {
            Effect::Invoke { call_id, target, operation, input, idempotency_key, .. } => Some(PendingCallView {
                effect: "invoke",
                call_id: *call_id,
                target: target.into(),
                operation: operation.clone(),
                input: input.clone(),
                key: idempotency_key.clone(),
            }),
            Effect::Send { call_id, target, operation, body, message_id, .. } => Some(PendingCallView {
                effect: "send",
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
#[derive(Debug, Serialize, ToSchema)]
pub struct HistoryView {
    pub fence: u64,
    pub at_ms: u64,
    pub reason: &'static str,
    pub status: InstanceStatus,
    pub path: String,
    /// Times this point lost a resource conflict and its calls ran again (absent when none).
    #[serde(skip_serializing_if = "is_zero")]
    pub resource_conflicts: u32,
    /// What moved the instance to this point (absent when nothing is recorded).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub moved_by: Vec<MovedView>,
}

/// One thing that moved an instance to a persistence point.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum MovedView {
    /// A message it consumed (`body`: JSON text, cut at 16 KiB).
    Message {
        message_id: String,
        operation: String,
        body: String,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        truncated: bool,
    },
    /// An activity call's result it took: its output (JSON text) or its fault.
    CallResult {
        call_id: u64,
        output: Option<String>,
        fault: Option<FaultView>,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        truncated: bool,
    },
    /// A message it sent to a process (`start`: a start-process).
    Sent { call_id: u64, message_id: String, process: String, operation: String, start: bool },
    /// The instance whose message created it: its parent.
    StartedBy { instance: String, call_id: u64 },
}

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

impl From<&HistoryEntry> for HistoryView {
    fn from(h: &HistoryEntry) -> HistoryView {
        HistoryView {
            fence: h.fence,
            at_ms: h.at_ms,
            reason: reason_name(h.reason),
            status: h.status.into(),
            path: h.path.clone(),
            resource_conflicts: h.resource_conflicts,
            moved_by: h.moved_by.iter().map(MovedView::from).collect(),
        }
    }
}

/// Why a persistence point was taken, as the API and the CLI name it.
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
#[derive(Debug, Serialize, ToSchema)]
pub struct HeldCallView {
    /// `INSTANCE:CALL`, what `cairn in-transit resubmit` takes.
    pub id: String,
    pub instance: String,
    pub call_id: u64,
    /// `held`, `resubmitted` (to be sent again), `resent` (sent again) or `abandoned`.
    pub state: &'static str,
    pub since_ms: u64,
    pub target: TargetView,
    pub operation: String,
    pub idempotency_key: String,
}

impl From<&InTransit> for HeldCallView {
    fn from(t: &InTransit) -> HeldCallView {
        HeldCallView {
            id: format!("{}:{}", t.instance, t.call_id),
            instance: t.instance.clone(),
            call_id: t.call_id,
            state: match t.state {
                InTransitState::Held => "held",
                InTransitState::Resubmitted => "resubmitted",
                InTransitState::Resent => "resent",
                InTransitState::Abandoned => "abandoned",
                InTransitState::Leased => "leased",
                InTransitState::Completed => "completed",
            },
            since_ms: t.since_ms,
            target: (&t.target).into(),
            operation: t.operation.clone(),
            idempotency_key: t.idempotency_key.clone(),
        }
    }
}

/// One instance in full.
#[derive(Debug, Serialize, ToSchema)]
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
pub fn variables(s: &Snapshot) -> Value {
    serde_json::from_str(&s.variables).unwrap_or(Value::String(s.variables.clone()))
}

/// A deployed version in a listing.
#[derive(Debug, Serialize, ToSchema)]
pub struct DefinitionView {
    pub name: String,
    pub version: String,
    pub kind: &'static str,
    pub latest: bool,
    pub deployed_ms: u64,
    pub size: u64,
    /// `long-running` or `microflow`, for a process.
    pub process_kind: Option<&'static str>,
    /// URL prefixes an activity component is granted over HTTP.
    pub allow_http: Vec<String>,
    /// An external activity's operations (empty: any), for an external activity only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external: Option<Vec<String>>,
}

pub fn kind_name(k: ComponentKind) -> &'static str {
    match k {
        ComponentKind::Process => "process",
        ComponentKind::Activity => "activity",
    }
}

impl DefinitionView {
    pub fn new(r: &DeployedRecord, latest: bool) -> DefinitionView {
        DefinitionView {
            name: r.name.clone(),
            version: r.version.clone(),
            kind: kind_name(r.kind),
            latest,
            deployed_ms: r.deployed_ms,
            size: r.size,
            process_kind: r.definition.as_ref().map(|d| match d.kind {
                cairn_engine::ProcessKind::LongRunning => "long-running",
                cairn_engine::ProcessKind::Microflow => "microflow",
            }),
            allow_http: r.allow_http.clone(),
            external: r.external.clone(),
        }
    }
}
