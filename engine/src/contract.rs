//! The contract between the engine and its driver: what goes in (`Input`),
//! what comes out (`Yield`, `Effect`, `PersistencePoint`), and why a
//! persistence point was taken (`Reason`).
//!
//! The protocol, from the driver's side:
//! - Step the machine with an input; it answers with one `Yield`.
//! - `Yield::Call` must be answered with `Input::Handler` before anything
//!   else: no persistence point falls between a call and its result.
//! - At `Yield::Persist` and `Yield::Finished`, and at a `Yield::Await` or
//!   `Yield::Suspended` the driver idles on when `Machine::needs_persistence`,
//!   take a `Machine::persistence_point` and commit it (snapshot, history
//!   entry and effects) in one write batch. Effects never leave before that
//!   commit.
//! - Time enters only as `now_ms` on each step; ids come from the snapshot's
//!   own counter.
//!
//! `Effect`, `Delivery` and `Reason` are also stored (outbox, inbox and
//! history records): as in `crate::snapshot`, renaming one of their Rust
//! items needs `#[serde(rename = ...)]` to keep the stored name.

use crate::definition::{InvokePolicy, Target};
use crate::snapshot::{Fault, Snapshot};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    Continue,
    Handler(Result<HandlerOutput, Fault>),
    Message(Delivery),
    /// An activity call's result, with the resource reads and writes the
    /// call made (they become `Effect::ResourceWrites` if it succeeded).
    InvokeResult { call_id: u64, result: Result<String, Fault>, resources: ResourceAccesses },
    /// An operator verb.
    Control(Control),
}

/// What an operator can do to an instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Control {
    Suspend,
    Resume,
    Terminate,
    /// Replace the variables (JSON text) of a suspended instance.
    SetVariables(String),
    /// Run a faulted instance again from the activity that faulted, with
    /// these variables (JSON text) if given (`crate::machine` lifecycle).
    Retry { variables: Option<String> },
    /// Raise `cairn.cancelled` where the instance stands: the scopes running
    /// run their fault handlers (or compensate), then the instance ends.
    Cancel,
}

/// A message taken from the instance's inbox.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// Inbox sequence number; consumed in the next persistence point.
    pub seq: u64,
    pub message_id: String,
    pub operation: String,
    /// JSON text.
    pub body: String,
}

/// What the driver must do next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Yield {
    /// Run a guest handler on the snapshot's variables; answer with `Input::Handler`.
    Call(HandlerCall),
    /// Take a persistence point with this reason and commit it, then answer
    /// with `Input::Continue`.
    Persist(Reason),
    /// The instance needs this before it can go on. If it is not at hand, the
    /// driver commits (reason `Waiting`, or `Dispatch` is already done) and idles (then dehydrates).
    Await(Wait),
    /// Terminal: commit a persistence point with this reason; nothing follows.
    Finished(Reason),
    /// Wait this long (an atomic scope's retry backoff), then `Input::Continue`.
    Sleep(u64),
    /// Suspended: nothing happens until `Control::Resume` (or `Terminate`).
    Suspended,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Wait {
    /// A message of `operation`, or time passing `due_ms` if the receive has a timeout.
    Message { operation: String, due_ms: Option<u64> },
    /// Time passing `due_ms`; the driver then answers with `Input::Continue`.
    Timer { timer_id: u64, due_ms: u64 },
    Invoke { call_id: u64 },
    /// The first message of any of these operations (a pick).
    Pick { operations: Vec<String> },
    /// Any of these: the branches of a flow all wait.
    Many(Vec<Wait>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HandlerCall {
    pub handler: u32,
    /// JSON text given to readers (message body, invoke output).
    pub message: Option<String>,
    /// The item of the innermost for-each iteration running (JSON text).
    pub item: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HandlerOutput {
    pub variables: String,
    pub output: Option<String>,
}

/// Something to do in the outside world once the persistence point that
/// holds it commits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "effect")]
pub enum Effect {
    ConsumeMessage { seq: u64 },
    Correlate { set: String, values: String },
    Uncorrelate { set: String, values: String },
    SetTimer { timer_id: u64, due_ms: u64 },
    ClearTimer { timer_id: u64, due_ms: u64 },
    /// A call to make; its outbox entry is its in-transit record.
    Invoke {
        call_id: u64,
        target: Target,
        operation: String,
        input: String,
        /// `instance/path/call`; each attempt appends `/attempt`.
        idempotency_key: String,
        #[serde(default)]
        policy: InvokePolicy,
    },
    /// The invoke's result has been taken: its outbox entry goes.
    InvokeDone { call_id: u64 },
    Send {
        call_id: u64,
        target: Target,
        operation: String,
        body: String,
        message_id: String,
        /// A start-process: the message must create an instance.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        start: bool,
    },
    /// The answer to a request-response receive: a body, or the fault that
    /// ended the instance before it replied.
    Reply { message_id: String, body: String, fault: Option<Fault> },
    /// What a successful activity call read and wrote in resources: its
    /// writes commit with this persistence point, and only if what it read
    /// is still what the store holds. Like every effect, an atomic scope's
    /// rollback drops it.
    ResourceWrites { call_id: u64, accesses: ResourceAccesses },
}

/// Resource reads and writes of one activity call.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceAccesses {
    /// Keys the call read or wrote, with the version it saw (0: absent).
    pub reads: Vec<ResourceRead>,
    /// Its writes, in order; a `None` value deletes the key.
    pub writes: Vec<ResourceWrite>,
}

impl ResourceAccesses {
    pub fn is_empty(&self) -> bool {
        self.reads.is_empty() && self.writes.is_empty()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceRead {
    pub table: String,
    pub key: String,
    pub version: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceWrite {
    pub table: String,
    pub key: String,
    /// JSON text, or `None` to delete.
    pub value: Option<String>,
}

/// Why a persistence point was taken; recorded in the instance history.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    Created,
    CommitBefore,
    CommitAfter,
    /// An invoke or a send was written to the outbox (rule 3).
    Dispatch,
    /// The instance waits for a message or a timer (rule 7).
    Waiting,
    /// Controlled host shutdown (rule 6).
    Shutdown,
    /// A long-running scope completed; its compensation is registered (rule 1).
    ScopeCompleted,
    /// One compensation handler ran; it will not run again.
    Compensated,
    /// Suspended by an operator (rule 5).
    Suspended,
    Resumed,
    /// An operator replaced the variables.
    VariablesSet,
    /// The instance reached a breakpoint and is suspended (rule 5).
    Breakpoint,
    /// An operator retried a faulted instance from the activity that faulted.
    Retried,
    /// An operator cancelled the instance: its handlers run, then it ends.
    Cancelled,
    /// An operator moved the instance to another version of its definition.
    Migrated,
    Completed,
    Faulted,
    Terminated,
}

/// One persistence point, as the driver commits it: the snapshot, its
/// history entry and the effects decided since the previous point, in one
/// write batch. Owned: the machine goes on without it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PersistencePoint {
    /// The snapshot to store, carrying the new fence.
    pub snapshot: Snapshot,
    /// The fence before this point: the store accepts the write only if this
    /// is the stored value.
    pub based_on: u64,
    /// The effects decided since the previous persistence point, in order.
    pub effects: Vec<Effect>,
    pub reason: Reason,
    /// Activity path for the history entry.
    pub path: String,
    pub at_ms: u64,
}
