//! The stored format: everything of an instance that survives a persistence
//! point, as the store holds it (JSON in the instances column family).
//!
//! Rules of the data this module owns:
//! - Existing data directories hold these types as JSON. The serialized form
//!   is the contract, not the Rust names: renaming a Rust item here (a type,
//!   a field, a variant) needs `#[serde(rename = ...)]` to keep the stored
//!   name, and a new field needs `#[serde(default)]` so that older snapshots
//!   still load. `tests::stored_format` pins the current form byte for byte.
//! - A snapshot is always resumable: fed `Input::Continue`, a machine built
//!   on a snapshot loaded from the store re-issues whatever the instance was
//!   doing (`crate::machine`).
//! - Only `Frame::atomic` is never stored (`AtomicAttempt`): no persistence
//!   point falls inside an atomic scope.

use crate::definition::{Definition, NodeId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Everything of an instance that survives a persistence point.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub id: String,
    pub process: String,
    /// Digest-based version of the definition the instance is pinned to.
    pub version: String,
    pub status: Status,
    /// JSON text of the variables.
    pub variables: String,
    pub stack: Vec<Frame>,
    /// Correlation set name -> JSON text of its values, once initialized.
    pub correlations: BTreeMap<String, String>,
    pub requests: Vec<PendingRequest>,
    /// Completed top-level scopes registered for compensation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub compensations: Vec<Registered>,
    pub fault: Option<FaultRecord>,
    /// Source of timer and call ids; never reused within an instance.
    pub next_id: u64,
    /// Fence: the number of persistence points committed. A write is
    /// accepted only if it is based on the stored value.
    pub fence: u64,
    pub created_ms: u64,
    pub updated_ms: u64,
}

impl Snapshot {
    pub fn new(id: String, def: &Definition, version: String, variables: String, now_ms: u64) -> Snapshot {
        Snapshot {
            id,
            process: def.name.clone(),
            version,
            status: Status::Running,
            variables,
            stack: vec![Frame::new(def.root, None)],
            correlations: BTreeMap::new(),
            requests: Vec::new(),
            compensations: Vec::new(),
            fault: None,
            next_id: 1,
            fence: 0,
            created_ms: now_ms,
            updated_ms: now_ms,
        }
    }

    /// Activity path of the innermost frame, e.g. `main/approval/wait`.
    pub fn path(&self, def: &Definition) -> String {
        self.stack.iter().map(|f| def.node(f.node).name.as_str()).collect::<Vec<_>>().join("/")
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    /// Executing, or waiting for an activity result.
    Running,
    /// Persisted and waiting for a message or a timer.
    Waiting,
    /// Stopped by an operator until resumed; messages still queue.
    Suspended,
    Completed,
    Faulted,
    Terminated,
}

impl Status {
    pub fn is_terminal(self) -> bool {
        matches!(self, Status::Completed | Status::Faulted | Status::Terminated)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Running => "running",
            Status::Waiting => "waiting",
            Status::Suspended => "suspended",
            Status::Completed => "completed",
            Status::Faulted => "faulted",
            Status::Terminated => "terminated",
        }
    }
}

/// One activity of the tree in progress: the stack holds the path from the
/// root to the innermost activity running.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Frame {
    pub node: NodeId,
    #[serde(flatten)]
    pub phase: Phase,
    /// On a scope frame: the completed inner scopes registered for compensation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub completed: Vec<Registered>,
    /// On an atomic scope frame whose body runs: what a fault rolls back to.
    /// Never persisted: no persistence point falls inside an atomic scope.
    #[serde(skip)]
    pub atomic: Option<AtomicAttempt>,
    /// On a long-running scope with a timeout: its deadline timer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<TimerRef>,
    /// The instance stopped at a breakpoint on this activity; resumed, it goes on.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub broke: bool,
    /// On a for-each iteration's body: its item (JSON text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub item: Option<String>,
}

impl Frame {
    /// A frame for an activity not yet begun; `item` for a for-each iteration's body.
    pub(crate) fn new(node: NodeId, item: Option<String>) -> Frame {
        Frame { node, phase: Phase::Enter, completed: Vec::new(), atomic: None, deadline: None, broke: false, item }
    }
}

/// Where one activity of the tree stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "phase")]
pub enum Phase {
    /// Not begun: its commit-before, if any, is still due.
    Enter,
    /// Begun: do the activity's own work.
    Started,
    /// Sequence: next child to run; while, if: a child is running.
    Child { next: u32 },
    /// Waiting for a message; with a timer if the receive has a timeout.
    AwaitMessage { operation: String, timer: Option<TimerRef> },
    AwaitTimer { timer_id: u64, due_ms: u64 },
    AwaitInvoke { call_id: u64 },
    /// Pick: waiting for the first message or timer; the timers by branch.
    AwaitPick { timers: Vec<(u32, TimerRef)> },
    /// Sequential for-each: the items, and the next one to run.
    Each { items: Vec<String>, next: u32 },
    /// Flow: its branches. The active one's frames are on the stack above
    /// this frame; the others are kept here, ready, waiting or done.
    Flow { branches: Vec<Branch> },
    /// Scope: a fault handler runs (as the child) for this caught fault.
    Handling { caught: FaultRecord },
    /// Compensation steps still to run, then what follows them.
    Compensating { queue: Vec<CompensationStep>, then: AfterCompensation },
    /// Finished: its commit-after, if any, is still due.
    Done,
}

/// One branch of a flow.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Branch {
    pub state: BranchState,
    /// Its frames while it is not the active branch.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stack: Vec<Frame>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BranchState {
    Ready,
    /// Its frames are on the stack: it runs.
    Active,
    Waiting,
    Done,
}

/// A completed long-running scope whose compensation is registered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registered {
    pub scope: String,
    pub handler: Option<u32>,
    /// JSON text of the variables as they stood when the scope completed.
    pub variables: String,
    /// Completed scopes nested in this one, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inner: Vec<Registered>,
}

/// One compensation handler still to run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompensationStep {
    pub scope: String,
    pub handler: u32,
    pub variables: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AfterCompensation {
    /// The compensate activity is done.
    Done,
    /// A scope's default fault handler: raise the fault further out.
    Rethrow(FaultRecord),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimerRef {
    pub timer_id: u64,
    pub due_ms: u64,
}

/// One attempt of an atomic scope. In memory only (`Frame::atomic`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AtomicAttempt {
    pub attempt: u32,
    /// Variables at the start of the scope.
    pub variables: String,
    /// Effects decided before the scope; those after it are buffered.
    pub effects_len: usize,
}

/// A request-response receive waiting for its reply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingRequest {
    pub operation: String,
    pub message_id: String,
}

/// A fault: raised by a handler, a throw, an activity or the host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fault {
    pub name: String,
    pub message: String,
    /// JSON text.
    pub data: String,
}

impl Fault {
    pub fn new(name: impl Into<String>, message: impl Into<String>) -> Fault {
        Fault { name: name.into(), message: message.into(), data: "null".into() }
    }
}

/// A fault that left the process, with where it was raised.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultRecord {
    #[serde(flatten)]
    pub fault: Fault,
    pub path: String,
}
