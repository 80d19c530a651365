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

use crate::definition::{Activity, Definition, NodeId};
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
    /// A faulted instance: the position where its fault was raised, so that
    /// an operator can retry it from there (`Control::Retry`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPoint>,
    /// An operator cancelled the instance: its handlers run, then it ends
    /// (`Control::Cancel`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cancelling: bool,
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
            retry: None,
            cancelling: false,
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

    /// Whether this snapshot is one the machine could have written for
    /// `def` (`Machine::resume` asks before it runs a snapshot loaded from
    /// the store). A snapshot that decodes can still be damaged or belong to
    /// another definition; the machine trusts what it runs, so this checks
    /// everything it relies on: the stack is a path down the activity tree
    /// (through the active branch of each flow), every frame's phase belongs
    /// to its activity's kind, set-aside branches are paths from a branch's
    /// start, and handler ids and counters are in range.
    pub fn check(&self, def: &Definition) -> Result<(), String> {
        if self.process != def.name {
            return Err(format!("the snapshot is of process '{}', the definition of '{}'", self.process, def.name));
        }
        if self.next_id >= MAX_COUNTER || self.fence >= MAX_COUNTER {
            return Err(format!("its id counter ({}) or fence ({}) is beyond what an instance reaches", self.next_id, self.fence));
        }
        check_stack(def, &self.stack, &[def.root], "the stack")?;
        if let Some(point) = &self.retry {
            check_stack(def, &point.stack, &[def.root], "the retry position")?;
        }
        self.compensations.iter().try_for_each(|r| check_registered(def, r))
    }
}

/// Counters (`Snapshot::next_id`, `Snapshot::fence`) stay far below this:
/// one a persistence point or a call. A stored one at or beyond it is damage.
const MAX_COUNTER: u64 = 1 << 62;

/// A stack of frames: the first starts at one of `starts`, each next one is a
/// child of the frame below it, which must be running a child.
fn check_stack(def: &Definition, stack: &[Frame], starts: &[NodeId], what: &str) -> Result<(), String> {
    for (i, f) in stack.iter().enumerate() {
        let Some(node) = def.nodes.get(f.node as usize) else {
            return Err(format!("{what}: frame {i} is of node {}, which does not exist ({} nodes)", f.node, def.nodes.len()));
        };
        let fits = match i.checked_sub(1).map(|p| &stack[p]) {
            None => starts.contains(&f.node),
            Some(parent) => {
                let activity = &def.node(parent.node).activity;
                match &parent.phase {
                    Phase::Flow { .. } => branch_starts(activity).contains(&f.node),
                    Phase::Child { .. } | Phase::Each { .. } | Phase::Handling { .. } => activity.children().contains(&f.node),
                    _ => false,
                }
            }
        };
        if !fits {
            return Err(format!("{what}: frame {i} (activity '{}') is not where the activity tree and the frame below put it", node.name));
        }
        check_frame(def, f, i + 1 == stack.len()).map_err(|e| format!("{what}: frame {i} (activity '{}'): {e}", node.name))?;
    }
    Ok(())
}

/// The nodes a flow's or parallel for-each's branches start at.
fn branch_starts(activity: &Activity) -> Vec<NodeId> {
    match activity {
        Activity::Flow { branches } => branches.clone(),
        Activity::ForEach { body, .. } => vec![*body],
        // A scope with event handlers: its body, and a listener per handler.
        Activity::Scope { body, events, .. } if !events.is_empty() => {
            std::iter::once(*body).chain(events.iter().map(|e| e.body)).collect()
        }
        _ => Vec::new(),
    }
}

/// One frame: its phase belongs to its activity's kind; a flow's branches
/// are consistent with its place on the stack (`top`).
fn check_frame(def: &Definition, f: &Frame, top: bool) -> Result<(), String> {
    let activity = &def.node(f.node).activity;
    let handler = |h: u32| {
        if h < def.handler_count {
            Ok(())
        } else {
            Err(format!("handler {h} does not exist ({} handlers)", def.handler_count))
        }
    };
    let fits = match &f.phase {
        Phase::Enter | Phase::Started | Phase::Done => true,
        Phase::Child { .. } => matches!(
            activity,
            Activity::Sequence { .. }
                | Activity::IfElse { .. }
                | Activity::While { .. }
                | Activity::RepeatUntil { .. }
                | Activity::Switch { .. }
                | Activity::Pick { .. }
                | Activity::Scope { .. }
        ),
        // The body of an event handler, waiting for its trigger (where
        // `check_stack` puts it: a branch of its scope).
        Phase::Listening { .. } => true,
        Phase::Each { .. } => matches!(activity, Activity::ForEach { .. }),
        Phase::AwaitMessage { .. } => matches!(activity, Activity::Receive { .. }),
        Phase::AwaitTimer { .. } => matches!(activity, Activity::Wait { .. }),
        Phase::AwaitInvoke { .. } => matches!(activity, Activity::Invoke { .. }),
        Phase::AwaitPick { timers } => match activity {
            Activity::Pick { branches, .. } => timers.iter().all(|(b, _)| (*b as usize) < branches.len()),
            _ => false,
        },
        Phase::Handling { .. } => matches!(activity, Activity::Scope { .. }),
        Phase::Compensating { queue, .. } => {
            queue.iter().try_for_each(|s| handler(s.handler))?;
            // The root's frame: a cancelled instance compensates its completed top-level scopes.
            matches!(activity, Activity::Scope { .. } | Activity::Compensate { .. }) || f.node == def.root
        }
        Phase::Flow { branches } => {
            if !matches!(activity, Activity::Flow { .. } | Activity::ForEach { .. })
                && !matches!(activity, Activity::Scope { events, .. } if !events.is_empty())
            {
                false
            } else {
                let active = branches.iter().filter(|b| b.state == BranchState::Active).count();
                // Below the top, the frames above are the one active branch's.
                if (!top && active != 1) || active > 1 {
                    return Err(format!("{active} active branches in a flow {}", if top { "on top" } else { "below the top" }));
                }
                let starts = branch_starts(activity);
                for (i, b) in branches.iter().enumerate() {
                    let set_aside = matches!(b.state, BranchState::Ready | BranchState::Waiting);
                    if set_aside == b.stack.is_empty() {
                        return Err(format!("branch {i} is {:?} with {} frames set aside", b.state, b.stack.len()));
                    }
                    check_stack(def, &b.stack, &starts, &format!("branch {i}"))?;
                }
                true
            }
        }
    };
    if !fits {
        return Err(format!("phase {} does not belong to a {}", phase_name(&f.phase), activity.kind_name()));
    }
    f.completed.iter().try_for_each(|r| check_registered(def, r))
}

/// A registered compensation names a handler of the definition.
fn check_registered(def: &Definition, r: &Registered) -> Result<(), String> {
    if let Some(h) = r.handler {
        if h >= def.handler_count {
            return Err(format!("scope '{}' registered handler {h}, which does not exist ({} handlers)", r.scope, def.handler_count));
        }
    }
    r.inner.iter().try_for_each(|i| check_registered(def, i))
}

fn phase_name(p: &Phase) -> &'static str {
    match p {
        Phase::Enter => "enter",
        Phase::Started => "started",
        Phase::Child { .. } => "child",
        Phase::AwaitMessage { .. } => "await-message",
        Phase::AwaitTimer { .. } => "await-timer",
        Phase::AwaitInvoke { .. } => "await-invoke",
        Phase::AwaitPick { .. } => "await-pick",
        Phase::Each { .. } => "each",
        Phase::Flow { .. } => "flow",
        Phase::Handling { .. } => "handling",
        Phase::Compensating { .. } => "compensating",
        Phase::Listening { .. } => "listening",
        Phase::Done => "done",
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
    /// Flow (and a parallel for-each, and a scope with event handlers: its
    /// body first, then a listener per handler): its branches. The active
    /// one's frames are on the stack above this frame; the others are kept
    /// here, ready, waiting or done.
    Flow { branches: Vec<Branch> },
    /// Scope: a fault handler runs (as the child) for this caught fault.
    Handling { caught: FaultRecord },
    /// Compensation steps still to run, then what follows them.
    Compensating { queue: Vec<CompensationStep>, then: AfterCompensation },
    /// Finished: its commit-after, if any, is still due.
    Done,
    /// The body of event handler `event` of the scope below, waiting for
    /// its trigger: a message, or its alarm's timer once set.
    Listening { event: u32, timer: Option<TimerRef> },
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

/// Where a faulted instance stood when its fault was raised: the stack as it
/// was then (the innermost frame is the activity that faulted), the
/// correlations it had initialized, which the fault released, and the
/// requests waiting for a reply, which the fault answered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryPoint {
    pub stack: Vec<Frame>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub correlations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requests: Vec<PendingRequest>,
}

/// A fault that left the process, with where it was raised.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultRecord {
    #[serde(flatten)]
    pub fault: Fault,
    pub path: String,
}
