//! The typed write batch: the unit of atomicity. A persistence point, an
//! intake, a deploy or an operator's decision is one `WriteBatch`, written
//! all or nothing, and only if every fence and every resource check it names
//! still holds.
//!
//! Resource versions: each key of a resource has a version, 0 while it was
//! never written, one more on every `ResourcePut` and `ResourceDelete` of it
//! (a delete leaves a tombstone that keeps the version, so versions never go
//! back). A `ResourceCheck` holds if the stored version (after the batches
//! before it in its group) is the one it names; the checks of a batch are
//! compared before any of its writes.

use crate::records::{
    CorrelationKey, DeployedRecord, HistoryEntry, InTransit, IntakeRecord, Reply, ResourceCheck, ResourceInfo, TimerKey,
    TokenRecord,
};
use cairn_engine::{Delivery, Effect, Snapshot};

/// One write to one table. Keys and encodings are the backend's business.
#[derive(Debug, Clone)]
pub enum Write {
    /// A deployed version: its record and its component bytes.
    Definition { record: Box<DeployedRecord>, component: Vec<u8> },
    Instance(Box<Snapshot>),
    /// Removes an instance's snapshot and its whole history (a microflow that keeps no final state).
    InstanceRemove { id: String },
    Inbox { instance: String, delivery: Delivery },
    InboxRemove { instance: String, seq: u64 },
    /// An invoke's or a send's outbox entry: its in-transit record.
    Outbox { instance: String, call_id: u64, effect: Box<Effect> },
    OutboxRemove { instance: String, call_id: u64 },
    Timer(TimerKey),
    TimerRemove(TimerKey),
    Correlation { key: CorrelationKey, instance: String },
    CorrelationRemove(CorrelationKey),
    Message { id: String, record: IntakeRecord },
    History { instance: String, entry: HistoryEntry },
    /// Removes the history entries of `instance` whose fence is below `below`.
    HistoryPrune { instance: String, below: u64 },
    Reply { message_id: String, reply: Reply },
    InTransit(Box<InTransit>),
    InTransitRemove { instance: String, call_id: u64 },
    Breakpoint { process: String, path: String, set: bool },
    /// Deferred recovery keeps a parked instance unloaded until it is resubmitted.
    Parked { instance: String, parked: bool },
    /// Written at the end of a controlled shutdown, removed at start.
    CleanShutdown(bool),
    /// An isolated environment (a restored backup): every outbound effect is
    /// intercepted, whatever the host's flags, until `cairn promote`.
    Isolated(bool),
    /// Creates a resource, or overwrites the info of an existing one (its rows stay).
    ResourceCreate(ResourceInfo),
    /// Sets `key` of resource `name` to `value` (JSON text); its version goes up by one.
    /// The store does not check that the resource exists: that is the caller's job.
    ResourcePut { name: String, key: String, value: String },
    /// Removes `key` of resource `name`, leaving a tombstone; its version goes up by one.
    ResourceDelete { name: String, key: String },
    /// Writes a row as it is, with its version (`None`: a tombstone). Only for
    /// copying a store (`backup`): anything else moves versions with
    /// `ResourcePut` and `ResourceDelete`.
    ResourceRestore { name: String, key: String, version: u64, value: Option<String> },
    /// Adds (or overwrites) an API bearer token, by id.
    Token(TokenRecord),
    /// Removes the token `id` (nothing if there is none).
    TokenRevoke { id: String },
}

/// A fence condition: the write is based on `based_on` and moves it to `becomes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub instance: String,
    pub based_on: u64,
    pub becomes: u64,
}

/// Writes committed together, under fences and resource checks.
#[derive(Debug, Default, Clone)]
pub struct WriteBatch {
    pub writes: Vec<Write>,
    pub fences: Vec<Fence>,
    /// Resource versions the batch is based on; one that no longer holds
    /// rejects the batch whole (`StoreError::Conflict`).
    pub checks: Vec<ResourceCheck>,
    /// Written at once but synced with a later write (or at
    /// `Backend::sync_deferred`, or within a millisecond): its verdict, and
    /// so whatever waits for it to be durable, comes once it is synced. A
    /// persistence point the instance computes on from, when a later point
    /// will be synced anyway. Stores that sync every write ignore it.
    pub deferred: bool,
}

impl WriteBatch {
    pub fn new() -> WriteBatch {
        WriteBatch::default()
    }

    pub fn push(&mut self, write: Write) {
        self.writes.push(write);
    }

    /// The batch commits only if the stored fence of `instance` is `based_on`; it then becomes `becomes`.
    pub fn fence(&mut self, instance: &str, based_on: u64, becomes: u64) {
        self.fences.push(Fence { instance: instance.to_string(), based_on, becomes });
    }

    /// The batch commits only if `key` of resource `name` is still at `version` (0 = never written).
    pub fn check(&mut self, name: &str, key: &str, version: u64) {
        self.checks.push(ResourceCheck { name: name.to_string(), key: key.to_string(), version });
    }

    pub fn is_empty(&self) -> bool {
        self.writes.is_empty() && self.fences.is_empty() && self.checks.is_empty()
    }
}
