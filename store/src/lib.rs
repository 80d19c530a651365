//! The store: Cairn's durable state as typed tables, behind one interface
//! with two backends — RocksDB in the data directory (the default) and
//! PostgreSQL (`cairn serve --store postgres://…`).
//!
//! Tables: definitions (deployed versions and their component bytes),
//! instances (snapshots), fences, inbox, outbox, timers, correlations,
//! messages (intake records), history, replies, in-transit (held calls) and
//! meta (breakpoints, parked instances, the clean-shutdown and isolated marks),
//! resources (named tables of JSON documents by key, with versions) and
//! tokens (the API's bearer tokens, hashed).
//!
//! Architecture invariants:
//! - Every write goes through `Store::commit` as one `WriteBatch`: all of it
//!   or nothing. A batch names the fences it is based on, and the backend
//!   rejects it whole (`StoreError::Stale`) if any stored fence differs. It
//!   also names the resource versions it is based on (`WriteBatch::check`),
//!   and is rejected whole (`StoreError::Conflict`) if any differs.
//! - Concurrent batches are grouped: RocksDB merges them into one write with
//!   one fsync; PostgreSQL into one transaction.
//! - Keys and encodings live inside the backends. Every record carries a
//!   format version (`codec`); one that does not decode is a
//!   `StoreError::Integrity` naming its table and key. Scans skip such a
//!   record and report it (`StoreHealth::damage`); nothing is skipped silently.
//! - A write that fails for a storage reason (I/O, a full disk) is reported
//!   (`StoreHealth::writes`) until one succeeds again; the embedded backend
//!   reopens its database by itself once there is room.

pub mod batch;
pub mod check;
pub mod cluster;
pub mod codec;
pub mod error;
pub mod failpoint;
pub mod health;
mod postgres;
mod provision;
pub mod records;
mod rocks;

pub use batch::{Fence, Write, WriteBatch};
pub use error::{Result, StoreError};
pub use health::{DamageReport, StoreHealth};
pub use provision::fresh_postgres_database;
pub use records::{
    CommitStats, ComponentKind, CorrelationKey, DeployedRecord, HistoryEntry, InTransit, InTransitState, InstanceFilter,
    IntakeRecord, MemoryStats, Moved, Reply, ResourceCheck, ResourceInfo, ResourceRow, Role, TimerKey, TokenRecord, GROUP_SIZE_BUCKETS,
};

use cairn_engine::{Delivery, Effect, Snapshot, Status};
use std::path::Path;
use std::sync::Arc;

/// The typed tables, as one backend implements them.
#[async_trait::async_trait]
pub trait Backend: Send + Sync {
    /// Queues one batch for an atomic commit at once and returns what
    /// resolves once it is durable (or refused). Batches commit in the order
    /// they were submitted, so a caller may submit its next batch before the
    /// last one resolved (pipelined persistence points): a batch whose fence
    /// is based on an earlier one that failed fails too.
    fn submit(&self, batch: WriteBatch) -> Committing;

    /// Commits one batch atomically; resolves once it is durable.
    async fn commit(&self, batch: WriteBatch) -> Result<()> {
        self.submit(batch).await
    }

    /// Syncs the deferred batches written so far (`WriteBatch::deferred`)
    /// now, rather than with the next write: their submitter waits for them.
    fn sync_deferred(&self) {}

    // definitions
    async fn definitions(&self) -> Result<Vec<DeployedRecord>>;
    async fn component(&self, version: &str) -> Result<Option<Vec<u8>>>;

    // instances
    async fn instance(&self, id: &str) -> Result<Option<Snapshot>>;
    /// Instances matching `filter`, in id order (oldest first), at most `limit`.
    async fn instances(&self, filter: &InstanceFilter, limit: usize) -> Result<Vec<Snapshot>>;
    async fn count_instances(&self, status: Status) -> Result<u64>;
    /// Every stored instance, of any status (a count, never a listing).
    async fn count_all_instances(&self) -> Result<u64> {
        let mut total = 0;
        for status in [Status::Running, Status::Waiting, Status::Suspended, Status::Completed, Status::Faulted, Status::Terminated] {
            total += self.count_instances(status).await?;
        }
        Ok(total)
    }

    // inbox and outbox
    async fn inbox(&self, instance: &str) -> Result<Vec<Delivery>>;
    /// Instances with at least one message in their inbox.
    async fn inbox_owners(&self) -> Result<Vec<String>>;
    async fn outbox(&self, instance: &str) -> Result<Vec<Effect>>;
    /// Every outbox entry of every instance.
    async fn all_outbox(&self) -> Result<Vec<(String, Effect)>>;

    // timers, correlations, messages, replies, history
    async fn timers(&self) -> Result<Vec<TimerKey>>;
    async fn correlation(&self, key: &CorrelationKey) -> Result<Option<String>>;
    async fn message(&self, id: &str) -> Result<Option<IntakeRecord>>;
    async fn reply(&self, message_id: &str) -> Result<Option<Reply>>;
    async fn history(&self, instance: &str) -> Result<Vec<HistoryEntry>>;

    // held calls
    async fn in_transit(&self, instance: Option<&str>) -> Result<Vec<InTransit>>;
    async fn in_transit_call(&self, instance: &str, call_id: u64) -> Result<Option<InTransit>>;

    // meta
    /// Every breakpoint as (process, activity path).
    async fn breakpoints(&self) -> Result<Vec<(String, String)>>;
    async fn parked(&self) -> Result<Vec<String>>;
    async fn clean_shutdown(&self) -> Result<bool>;
    /// Whether this store is an isolated environment (`Write::Isolated`).
    async fn isolated(&self) -> Result<bool>;

    // resources
    /// Every resource, by name.
    async fn resources(&self) -> Result<Vec<ResourceInfo>>;
    /// The version of `key` in resource `name` and its value (JSON text);
    /// `None` if it was never written (version 0) or was deleted (the
    /// tombstone's version).
    async fn resource_get(&self, name: &str, key: &str) -> Result<(u64, Option<String>)>;
    /// The live rows of resource `name` whose key starts with `prefix` and
    /// comes after `after`, in key (byte) order, at most `limit`.
    async fn resource_scan(&self, name: &str, prefix: &str, after: Option<&str>, limit: usize) -> Result<Vec<ResourceRow>>;

    // tokens
    /// Every API bearer token (hashed), by id.
    async fn tokens(&self) -> Result<Vec<TokenRecord>>;

    /// Writes an online, consistent copy of the whole store into `dir`, as a
    /// data directory `cairn serve --data` (and `cairn restore`) opens.
    async fn backup(&self, dir: &Path) -> Result<()>;
    /// Makes what is committed durable on disk (a controlled shutdown).
    async fn flush(&self) -> Result<()>;
    /// Stops the committer after what is queued.
    async fn close(&self);
    fn commit_stats(&self) -> CommitStats;
    /// What the store holds in the host's memory now.
    fn memory(&self) -> MemoryStats {
        MemoryStats::default()
    }
    /// `rocksdb` or `postgres`.
    fn kind(&self) -> &'static str;
    /// Damage met at run time, and whether writes are failing.
    fn health(&self) -> &StoreHealth;
}

/// A submitted batch on its way to the store (`Backend::submit`): resolves
/// to its verdict once it is durable or refused.
pub struct Committing(CommittingState);

enum CommittingState {
    Queued(tokio::sync::oneshot::Receiver<Result<()>>),
    /// Refused before it was queued (the committer has stopped).
    Refused(Option<StoreError>),
}

impl Committing {
    /// A batch queued with the committer, which answers on `verdict`.
    pub fn queued(verdict: tokio::sync::oneshot::Receiver<Result<()>>) -> Committing {
        Committing(CommittingState::Queued(verdict))
    }

    /// A batch refused before it was queued.
    pub fn refused(e: StoreError) -> Committing {
        Committing(CommittingState::Refused(Some(e)))
    }

    /// The verdict if it is already known, without waiting.
    pub fn verdict(&mut self) -> Option<Result<()>> {
        match &mut self.0 {
            CommittingState::Queued(rx) => match rx.try_recv() {
                Ok(v) => Some(v),
                Err(tokio::sync::oneshot::error::TryRecvError::Empty) => None,
                Err(tokio::sync::oneshot::error::TryRecvError::Closed) => Some(Err(committer_stopped())),
            },
            CommittingState::Refused(e) => Some(Err(e.take().unwrap_or_else(committer_stopped))),
        }
    }
}

fn committer_stopped() -> StoreError {
    StoreError::Storage("the committer has stopped".into())
}

impl std::future::Future for Committing {
    type Output = Result<()>;
    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<()>> {
        match &mut self.0 {
            CommittingState::Queued(rx) => std::pin::Pin::new(rx).poll(cx).map(|v| v.unwrap_or_else(|_| Err(committer_stopped()))),
            CommittingState::Refused(e) => std::task::Poll::Ready(Err(e.take().unwrap_or_else(committer_stopped))),
        }
    }
}

/// Where the store lives.
#[derive(Clone, Debug)]
pub enum Location {
    /// RocksDB under `DATA/db`.
    Embedded { data_dir: std::path::PathBuf },
    /// A PostgreSQL database, by connection URL.
    Postgres { url: String },
}

impl Location {
    /// `--store` as given (a `postgres://` or `postgresql://` URL), or the embedded store in `data_dir`.
    pub fn parse(store: Option<&str>, data_dir: &Path) -> std::result::Result<Location, String> {
        match store {
            None | Some("") | Some("rocksdb") => Ok(Location::Embedded { data_dir: data_dir.to_path_buf() }),
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                Ok(Location::Postgres { url: url.to_string() })
            }
            Some(other) => Err(format!(
                "--store '{other}' is not a store: use a postgres://USER@HOST:PORT/DATABASE URL, or leave it out for the embedded RocksDB store"
            )),
        }
    }
}

/// The store: a shared handle on one backend.
pub type Store = Arc<dyn Backend>;

/// How to open the store, beyond where it lives.
#[derive(Clone, Copy, Debug, Default)]
pub struct OpenOptions {
    /// Make every commit durable before it resolves.
    pub fsync: bool,
    /// Embedded store only (`cairn serve --salvage-wal`): if the write-ahead
    /// log is damaged before its tail, open anyway, replaying it up to the
    /// damage (point-in-time recovery) and dropping every write after it,
    /// with a warning on stderr. Without it such a store does not open.
    pub salvage_wal: bool,
}

/// Opens the store at `location`; `fsync` makes every commit durable before it resolves.
pub async fn open(location: &Location, fsync: bool) -> Result<Store> {
    open_with(location, OpenOptions { fsync, salvage_wal: false }).await
}

/// Opens the store at `location` with `options`.
pub async fn open_with(location: &Location, options: OpenOptions) -> Result<Store> {
    match location {
        Location::Embedded { data_dir } => {
            Ok(Arc::new(rocks::RocksStore::open(data_dir, options.fsync, options.salvage_wal)?))
        }
        Location::Postgres { url } => postgres::open(url, options.fsync).await,
    }
}
