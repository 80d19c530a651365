//! The records the store keeps besides snapshots: what each table holds.
//!
//! These are stored formats. Renaming a Rust item here is free; renaming a
//! serialized name is a data migration and needs `#[serde(rename = ...)]`
//! to keep the stored one. Every record is written with a format version
//! (see `codec`), so a later change can tell old records from new.

use cairn_engine::{Definition, Fault, Reason, Status, Target};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ComponentKind {
    Process,
    Activity,
}

/// What the store keeps about a deployed component version (its bytes are
/// kept beside it).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DeployedRecord {
    pub name: String,
    pub version: String,
    pub kind: ComponentKind,
    pub deployed_ms: u64,
    pub size: u64,
    pub definition: Option<Definition>,
    /// An external activity (no component: workers outside the host carry out
    /// its tasks): the operations it offers (empty: any).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<Vec<String>>,
    /// URL prefixes an activity component may call over HTTP (its deploy
    /// grant; the host's ceiling applies too). Part of the version.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_http: Vec<String>,
    /// Resources an activity component may use (`NAME`, `NAME:read`,
    /// `NAME:write`; its deploy grant). Part of the version.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<String>,
}

/// One persistence point in an instance's history.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub fence: u64,
    pub at_ms: u64,
    pub reason: Reason,
    pub status: Status,
    pub path: String,
    /// Times this point's batch was rejected for a resource conflict and its
    /// calls ran again before it committed.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub resource_conflicts: u32,
    /// What moved the instance to this point: the messages it consumed and
    /// the activity call results it took since the previous point, the
    /// messages it sent, and (on `created`) the instance that started it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub moved_by: Vec<Moved>,
}

/// The longest body or call result a history entry keeps, in bytes; the
/// rest is cut (`truncated`), so that history stays small beside snapshots.
pub const MOVED_BODY_BYTES: usize = 16 << 10;

/// One thing that moved an instance to a persistence point (`HistoryEntry::moved_by`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Moved {
    /// A message the instance consumed; `body` is JSON text, cut at `MOVED_BODY_BYTES`.
    Message {
        message_id: String,
        operation: String,
        body: String,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        truncated: bool,
    },
    /// An activity call's result the instance took: its output (JSON text,
    /// cut at `MOVED_BODY_BYTES`) or its fault.
    CallResult {
        call_id: u64,
        output: Option<String>,
        fault: Option<Fault>,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        truncated: bool,
    },
    /// A message the instance sent to a process (`start`: a start-process,
    /// whose message created the child instance it names by message id).
    Sent { call_id: u64, message_id: String, process: String, operation: String, start: bool },
    /// The instance was created by a message another instance sent: its parent.
    StartedBy { instance: String, call_id: u64 },
}

impl Moved {
    /// A consumed message, its body cut at `MOVED_BODY_BYTES`.
    pub fn message(message_id: &str, operation: &str, body: &str) -> Moved {
        let (body, truncated) = cut(body);
        Moved::Message { message_id: message_id.to_string(), operation: operation.to_string(), body, truncated }
    }

    /// A call result taken, its output cut at `MOVED_BODY_BYTES`.
    pub fn call_result(call_id: u64, result: &std::result::Result<String, Fault>) -> Moved {
        match result {
            Ok(out) => {
                let (output, truncated) = cut(out);
                Moved::CallResult { call_id, output: Some(output), fault: None, truncated }
            }
            Err(f) => Moved::CallResult { call_id, output: None, fault: Some(f.clone()), truncated: false },
        }
    }
}

/// `text` cut at `MOVED_BODY_BYTES` on a character boundary, and whether it was cut.
fn cut(text: &str) -> (String, bool) {
    if text.len() <= MOVED_BODY_BYTES {
        return (text.to_string(), false);
    }
    let mut end = MOVED_BODY_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    (text[..end].to_string(), true)
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// The reply to a request-response message.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Reply {
    pub body: serde_json::Value,
    pub fault: Option<Fault>,
}

/// An accepted message id: which instance took it. Intake is exactly once by it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct IntakeRecord {
    pub instance: String,
    pub operation: String,
    pub accepted_ms: u64,
}

/// What an operator decided about a non-idempotent call found in flight
/// after a crash (a *held call*).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InTransitState {
    /// Waiting for an operator: not sent again.
    Held,
    /// An operator resubmitted it; the next driver sends it once.
    Resubmitted,
    /// Sent again after a resubmit. Found so after another crash, it is held
    /// again: one resubmit, at most one more execution.
    Resent,
    /// Given up by an operator: the instance gets a `cairn.abandoned` fault.
    Abandoned,
    /// A non-idempotent task of an external activity handed to a worker
    /// (written before the worker gets it): found so after a crash, it is held.
    Leased,
    /// A task of an external activity that a worker completed (or failed for
    /// good): `result` holds the outcome until the persistence point that
    /// consumes it removes the record with the outbox entry.
    Completed,
}

/// A non-idempotent activity call found in flight after a crash.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct InTransit {
    pub instance: String,
    pub call_id: u64,
    pub state: InTransitState,
    pub since_ms: u64,
    pub target: Target,
    pub operation: String,
    pub idempotency_key: String,
    /// The outcome a worker reported for an external task (`Completed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Result<String, cairn_engine::Fault>>,
}

/// A durable timer: due time, instance, and the instance's timer id.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TimerKey {
    pub due_ms: u64,
    pub instance: String,
    pub timer_id: u64,
}

/// A correlation: values of a process's correlation set (JSON text) that
/// route messages to one instance.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CorrelationKey {
    pub process: String,
    pub set: String,
    pub values: String,
}

/// A resource: a named table of JSON documents by key, written in the same
/// batches as the persistence points of instances.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceInfo {
    pub name: String,
    pub created_ms: u64,
}

/// What a bearer token may do: each role includes the ones before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Only takes and completes tasks of external activities (`/v1/tasks/…`);
    /// below every other role, and not included in them but operator and admin.
    Worker,
    /// Lists and shows.
    Reader,
    /// Also deploys, starts, sends, and uses the operator verbs.
    Operator,
    /// Also backs up and manages tokens.
    Admin,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Worker => "worker",
            Role::Reader => "reader",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "worker" => Some(Role::Worker),
            "reader" => Some(Role::Reader),
            "operator" => Some(Role::Operator),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

/// A bearer token of the API: only the hex sha256 of the token is kept.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub id: String,
    pub role: Role,
    pub hash: String,
    pub created_ms: u64,
    #[serde(default)]
    pub note: String,
}

/// A live row of a resource: its key, its version and its value (JSON text).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceRow {
    pub key: String,
    pub version: u64,
    pub value: String,
}

/// An optimistic check: the batch commits only if the key `key` of resource
/// `name` is still at `version` (the version a call read, or based a write
/// on; 0 = never written).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceCheck {
    pub name: String,
    pub key: String,
    pub version: u64,
}

/// Which instances a listing wants.
#[derive(Clone, Debug, Default)]
pub struct InstanceFilter {
    pub status: Option<Status>,
    pub process: Option<String>,
    /// Only instances whose id comes after this one in the listing's order
    /// (the next page of a listing): greater ids oldest first, smaller ids
    /// newest first.
    pub after: Option<String>,
    /// Newest first: in descending id order (ids are time-ordered).
    pub newest_first: bool,
}

impl InstanceFilter {
    pub fn matches(&self, s: &cairn_engine::Snapshot) -> bool {
        self.status.is_none_or(|st| s.status == st) && self.process.as_deref().is_none_or(|p| s.process == p) && self.comes_after(&s.id)
    }

    /// Whether `id` comes after `after` in the listing's order.
    pub fn comes_after(&self, id: &str) -> bool {
        match (self.after.as_deref(), self.newest_first) {
            (None, _) => true,
            (Some(a), false) => id > a,
            (Some(a), true) => id < a,
        }
    }
}

/// Group-commit statistics, for the benchmark and `GET /metrics`: batches
/// asked for, the writes (RocksDB write batches or PostgreSQL transactions)
/// that carried them, whether each write is synced to disk, and how many
/// batches each write carried.
#[derive(Default, Debug, Clone, Copy)]
pub struct CommitStats {
    pub batches: u64,
    pub writes: u64,
    /// Writes are synced (fsync, or PostgreSQL's synchronous commit).
    pub fsync: bool,
    /// Syncs: of writes, or of deferred writes before them (a write of
    /// deferred batches only is synced by a later one).
    pub syncs: u64,
    /// Writes by batches carried, one count per bucket of
    /// `GROUP_SIZE_BUCKETS` (not cumulative): `group_sizes[i]` counts the
    /// writes that carried more than `GROUP_SIZE_BUCKETS[i - 1]` and at most
    /// `GROUP_SIZE_BUCKETS[i]` batches.
    pub group_sizes: [u64; GROUP_SIZE_BUCKETS.len()],
}

/// Memory the store holds inside the host process, in bytes (the embedded
/// RocksDB store; a PostgreSQL store holds none of its own).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryStats {
    /// Every column family's memtables, active and immutable.
    pub memtables: u64,
    /// The shared block cache (data, index and filter blocks).
    pub block_cache: u64,
}

/// Upper bounds of the group-size buckets (batches per write); a group holds
/// at most 1024 batches.
pub const GROUP_SIZE_BUCKETS: [u64; 11] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024];

/// The committers' counters behind `CommitStats` (atomics: written by the
/// committer, read by anyone).
#[derive(Default)]
pub(crate) struct CommitCounters {
    batches: std::sync::atomic::AtomicU64,
    writes: std::sync::atomic::AtomicU64,
    syncs: std::sync::atomic::AtomicU64,
    group_sizes: [std::sync::atomic::AtomicU64; GROUP_SIZE_BUCKETS.len()],
}

impl CommitCounters {
    /// One write that carried `batches` batches.
    pub(crate) fn record(&self, batches: usize) {
        use std::sync::atomic::Ordering::Relaxed;
        self.batches.fetch_add(batches as u64, Relaxed);
        self.writes.fetch_add(1, Relaxed);
        let bucket = GROUP_SIZE_BUCKETS.iter().position(|b| batches as u64 <= *b).unwrap_or(GROUP_SIZE_BUCKETS.len() - 1);
        self.group_sizes[bucket].fetch_add(1, Relaxed);
    }

    /// One sync (the write just recorded, or the deferred ones before it).
    pub(crate) fn synced(&self) {
        self.syncs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    pub(crate) fn stats(&self, fsync: bool) -> CommitStats {
        use std::sync::atomic::Ordering::Relaxed;
        CommitStats {
            batches: self.batches.load(Relaxed),
            writes: self.writes.load(Relaxed),
            fsync,
            syncs: self.syncs.load(Relaxed),
            group_sizes: std::array::from_fn(|i| self.group_sizes[i].load(Relaxed)),
        }
    }
}
