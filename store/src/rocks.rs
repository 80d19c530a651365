//! The embedded backend: RocksDB column families under `DATA/db`, and the
//! group committer.
//!
//! This module owns the key layouts (one column family per table; a retired
//! family is never reused). Values are `codec` records unless noted:
//! - `definitions`  version -> `DeployedRecord`
//! - `components`   version -> component bytes (raw)
//! - `instances`    instance id -> `Snapshot`
//! - `fences`       instance id -> fence (u64 BE, raw)
//! - `inbox`        instance id, 0, seq (u64 BE) -> `Delivery`
//! - `outbox`       instance id, 0, call id (u64 BE) -> `Effect`
//! - `timers`       due ms (u64 BE), instance id, 0, timer id (u64 BE) -> empty
//! - `correlations` process, 0, set, 0, values JSON -> instance id (raw)
//! - `messages`     message id -> `IntakeRecord`
//! - `history`      instance id, 0, fence (u64 BE) -> `HistoryEntry`
//! - `replies`      message id -> `Reply`
//! - `meta`         `breakpoint\0PROCESS\0PATH`, `parked\0ID`, `clean-shutdown`, `isolated`
//!   (empty values) and `store-format` (one byte)
//! - `in_transit`   instance id, 0, call id (u64 BE) -> `InTransit`
//! - `resources`    resource name, 0, key -> version (u64 BE), then an
//!   `Option<String>` record: the value's JSON text, `None` for a tombstone
//! - `resource_names` resource name -> `ResourceInfo`
//! - `tokens`       token id -> `TokenRecord`
//! - `live`         instance id -> status name (raw), for every instance not
//!   ended: the index recovery, counts and listings of live instances read
//!   instead of every snapshot. Kept in the batch of each snapshot write;
//!   built once from the snapshots when a store written before it opens
//!   (meta `live-index` marks it built).
//!
//! Resource names hold no NUL (neither do PostgreSQL's text columns), so
//! `name, 0` prefixes exactly the rows of one resource.
//!
//! The committer thread is the only writer, so its check-then-write of
//! fences and resource versions is atomic. It drains what is queued, checks
//! each batch's fences and resource checks (against the store and the
//! batches before it in the group), gives each resource write its new
//! version (likewise), and writes the accepted batches as one RocksDB
//! `WriteBatch` with one fsync.

use crate::batch::{Write, WriteBatch};
use crate::codec::{self, decode, encode};
use crate::error::{Result, StoreError};
use crate::health::StoreHealth;
use crate::records::*;
use cairn_engine::{Delivery, Effect, Snapshot, Status};
use rocksdb::{ColumnFamilyDescriptor, DBRecoveryMode, Direction, IteratorMode, Options, ReadOptions, WriteOptions, DB};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{mpsc, Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Cf {
    Definitions,
    Components,
    Instances,
    Fences,
    Inbox,
    Outbox,
    Timers,
    Correlations,
    Messages,
    History,
    Replies,
    Meta,
    InTransit,
    Resources,
    ResourceNames,
    Tokens,
    Live,
}

impl Cf {
    pub(crate) const ALL: [Cf; 17] = [
        Cf::Definitions,
        Cf::Components,
        Cf::Instances,
        Cf::Fences,
        Cf::Inbox,
        Cf::Outbox,
        Cf::Timers,
        Cf::Correlations,
        Cf::Messages,
        Cf::History,
        Cf::Replies,
        Cf::Meta,
        Cf::InTransit,
        Cf::Resources,
        Cf::ResourceNames,
        Cf::Tokens,
        Cf::Live,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Cf::Definitions => "definitions",
            Cf::Components => "components",
            Cf::Instances => "instances",
            Cf::Fences => "fences",
            Cf::Inbox => "inbox",
            Cf::Outbox => "outbox",
            Cf::Timers => "timers",
            Cf::Correlations => "correlations",
            Cf::Messages => "messages",
            Cf::History => "history",
            Cf::Replies => "replies",
            Cf::Meta => "meta",
            Cf::InTransit => "in_transit",
            Cf::Resources => "resources",
            Cf::ResourceNames => "resource_names",
            Cf::Tokens => "tokens",
            Cf::Live => "live",
        }
    }
}

/// Key builders: the only place key layouts are spelled out.
pub(crate) mod keys {
    use crate::records::{CorrelationKey, TimerKey};

    pub fn instance_scoped(instance: &str, n: u64) -> Vec<u8> {
        let mut k = instance_prefix(instance);
        k.extend_from_slice(&n.to_be_bytes());
        k
    }
    pub fn instance_prefix(instance: &str) -> Vec<u8> {
        let mut k = instance.as_bytes().to_vec();
        k.push(0);
        k
    }
    /// The trailing u64 of an instance-scoped key.
    pub fn trailing_u64(key: &[u8]) -> u64 {
        let mut b = [0u8; 8];
        if key.len() >= 8 {
            b.copy_from_slice(&key[key.len() - 8..]);
        }
        u64::from_be_bytes(b)
    }
    /// The instance id of an instance-scoped key.
    pub fn scoped_instance(key: &[u8]) -> String {
        String::from_utf8_lossy(&key[..key.len().saturating_sub(9)]).into_owned()
    }
    pub fn timer(t: &TimerKey) -> Vec<u8> {
        let mut k = t.due_ms.to_be_bytes().to_vec();
        k.extend_from_slice(t.instance.as_bytes());
        k.push(0);
        k.extend_from_slice(&t.timer_id.to_be_bytes());
        k
    }
    pub fn parse_timer(key: &[u8]) -> Option<TimerKey> {
        if key.len() < 17 {
            return None;
        }
        let due_ms = u64::from_be_bytes(key[..8].try_into().ok()?);
        let instance = std::str::from_utf8(&key[8..key.len() - 9]).ok()?.to_string();
        Some(TimerKey { due_ms, instance, timer_id: trailing_u64(key) })
    }
    pub fn correlation(c: &CorrelationKey) -> Vec<u8> {
        let mut k = c.process.as_bytes().to_vec();
        k.push(0);
        k.extend_from_slice(c.set.as_bytes());
        k.push(0);
        k.extend_from_slice(c.values.as_bytes());
        k
    }
    pub const BREAKPOINT: &[u8] = b"breakpoint\0";
    pub const PARKED: &[u8] = b"parked\0";
    pub const CLEAN_SHUTDOWN: &[u8] = b"clean-shutdown";
    pub const ISOLATED: &[u8] = b"isolated";
    pub const STORE_FORMAT: &[u8] = b"store-format";
    pub const LIVE_INDEX: &[u8] = b"live-index";
    pub fn breakpoint(process: &str, path: &str) -> Vec<u8> {
        [BREAKPOINT, process.as_bytes(), b"\0", path.as_bytes()].concat()
    }
    pub fn parked(instance: &str) -> Vec<u8> {
        [PARKED, instance.as_bytes()].concat()
    }
    /// A row of a resource; with a partial key, the prefix of the rows whose keys start with it.
    pub fn resource(name: &str, key: &str) -> Vec<u8> {
        [name.as_bytes(), b"\0", key.as_bytes()].concat()
    }
}

/// A resource row's stored value: its version, then the value or `None` (a tombstone).
fn resource_value(version: u64, value: Option<&str>) -> Vec<u8> {
    let mut out = version.to_be_bytes().to_vec();
    out.extend_from_slice(&encode(&value));
    out
}

/// The version and value of the resource row `name`/`key` stored as `bytes`.
pub(crate) fn parse_resource(name: &str, key: &str, bytes: &[u8]) -> Result<(u64, Option<String>)> {
    let shown = format!("{name}/{key}");
    if bytes.len() < 9 {
        let reason = "shorter than a version and a record".into();
        return Err(StoreError::Integrity { table: Cf::Resources.name(), key: shown, reason });
    }
    let version = keys::trailing_u64(&bytes[..8]);
    Ok((version, decode(Cf::Resources.name(), &shown, &bytes[8..])?))
}

/// A readable rendering of a key for error messages.
pub(crate) fn show_key(key: &[u8]) -> String {
    key.iter()
        .map(|&b| if b.is_ascii_graphic() { (b as char).to_string() } else { format!("\\x{b:02x}") })
        .collect()
}

enum Request {
    Commit(WriteBatch, Done),
    /// Sync the deferred batches written so far.
    Sync,
    /// Stop the committer once everything queued before is written.
    Close,
}

pub struct RocksStore {
    shared: Arc<Shared>,
    queue: mpsc::Sender<Request>,
    committer: Mutex<Option<std::thread::JoinHandle<()>>>,
    stats: Arc<CommitCounters>,
    /// Every write is synced (`OpenOptions::fsync`).
    fsync: bool,
}

/// What the readers and the committer share: the open database, which the
/// committer replaces whole when it reopens it after a write failure, and
/// the store's health.
struct Shared {
    /// `None` only for the moment of a reopen.
    db: RwLock<Option<Arc<DB>>>,
    /// The data directory's `db` directory.
    path: std::path::PathBuf,
    health: StoreHealth,
}

impl Shared {
    fn db(&self) -> Result<Arc<DB>> {
        self.db.read().unwrap().clone().ok_or_else(|| {
            StoreError::Storage("the store is being reopened after a write failure; try again in a moment".into())
        })
    }
}

/// The handle of column family `cf` in `db`.
fn handle(db: &DB, cf: Cf) -> &rocksdb::ColumnFamily {
    db.cf_handle(cf.name()).expect("column family opened at start")
}

fn storage(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::storage(format!("{what}: {e}"))
}

/// The write-ahead log files (`*.log`) under `db`, sorted.
pub(crate) fn wal_files(db: &Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(db)
        .map(|dir| {
            dir.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "log"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// The damaged write-ahead log file(s): the one RocksDB's message names, or else every `*.log`.
pub(crate) fn damaged_wal(db: &Path, e: &rocksdb::Error) -> Vec<String> {
    let all = wal_files(db);
    let message = e.to_string();
    let named: Vec<String> = all
        .iter()
        .filter(|p| p.file_name().is_some_and(|n| message.contains(&*n.to_string_lossy())))
        .map(|p| p.display().to_string())
        .collect();
    if named.is_empty() {
        all.iter().map(|p| p.display().to_string()).collect()
    } else {
        named
    }
}

/// The error for a write-ahead log damaged before its tail.
fn wal_damaged(db: &Path, files: &[String], e: &rocksdb::Error) -> StoreError {
    StoreError::Storage(format!(
        "the write-ahead log of the store at {} is damaged before its last record: {} ({e}). \
         Opening it would silently drop every acknowledged write after the damage, so the store does not open. \
         Restore a backup, or start with `cairn serve --salvage-wal` to open it anyway, replaying the log up to \
         the damage and dropping the writes after it.",
        db.display(),
        files.join(", ")
    ))
}

impl RocksStore {
    pub fn open(dir: &Path, fsync: bool, salvage_wal: bool) -> Result<RocksStore> {
        std::fs::create_dir_all(dir).map_err(|e| storage(&format!("creating data directory {}", dir.display()), e))?;
        let path = dir.join("db");
        let db = Arc::new(open_db(&path, salvage_wal)?);
        check_format(&db)?;
        build_live_index(&db)?;
        let shared = Arc::new(Shared { db: RwLock::new(Some(db)), path, health: StoreHealth::default() });
        let (tx, rx) = mpsc::channel::<Request>();
        let stats = Arc::new(CommitCounters::default());
        let (committer_shared, committer_stats) = (shared.clone(), stats.clone());
        let handle = std::thread::Builder::new()
            .name("cairn-commit".into())
            .spawn(move || committer(committer_shared, rx, fsync, committer_stats))
            .map_err(|e| storage("starting the committer", e))?;
        Ok(RocksStore { shared, queue: tx, committer: Mutex::new(Some(handle)), stats, fsync })
    }
}

/// Whether the blocks a scan reads enter the block cache.
#[derive(Clone, Copy)]
enum Blocks {
    Cached,
    Uncached,
}

/// Opens the RocksDB database at `path` (DATA/db) with Cairn's options.
fn open_db(path: &Path, salvage_wal: bool) -> Result<DB> {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    opts.set_max_background_jobs(2);
    // Memory is bounded by these caches, not by the number of instances:
    // all memtables together flush at 64 MiB, and reads share one block cache.
    opts.set_db_write_buffer_size(64 << 20);
    // The write-ahead log is what a restart after a crash replays (about
    // 4 ms per MiB, then a flush of what it replayed): keep it small. Past
    // 4 MiB the column families holding the oldest log flush, so that it
    // can go (a rarely written family would otherwise keep every log since
    // its last write alive). At 16 MiB a kill -9 after the load runs took
    // ~60 ms to replay (BENCHMARKS.md, issue 10's fifth step).
    opts.set_max_total_wal_size(4 << 20);
    // RocksDB starts this many threads per column family at every open to
    // open table files, even when there are none: the default 16, times
    // eighteen families, was 10 ms of each start. On two cores one opener
    // (the opening thread itself) is as fast.
    opts.set_max_file_opening_threads(1);
    // An incomplete last record of the write-ahead log (a crash mid-write,
    // never acknowledged) is dropped; damage before it fails the open
    // rather than silently dropping acknowledged writes (see `wal_damaged`).
    opts.set_wal_recovery_mode(DBRecoveryMode::TolerateCorruptedTailRecords);
    // A start reads no table files' statistics: opening stays flat as
    // the store grows.
    opts.set_skip_stats_update_on_db_open(true);
    let cache = rocksdb::Cache::new_lru_cache(32 << 20);
    let cfs = || Cf::ALL.iter().map(|cf| {
        let mut cf_opts = Options::default();
        // Small memtables in small blocks: thirteen families each holding
        // a 16 MiB memtable in 2 MiB blocks kept the host near 80 MiB
        // resident after a load; with 4 MiB in 256 KiB blocks the
        // memtables hold 3-10 MiB (BENCHMARKS.md, issue 10's fourth step).
        cf_opts.set_write_buffer_size(4 << 20);
        cf_opts.set_arena_block_size(256 << 10);
        // Snapshots, messages and history are JSON: LZ4 shrinks the
        // table files a few times over for little CPU (flushes and
        // compactions only; the write-ahead log stays as written).
        cf_opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
        let mut table = rocksdb::BlockBasedOptions::default();
        table.set_block_cache(&cache);
        // Index and filter blocks grow with the data: keep them inside the cache's bound.
        table.set_cache_index_and_filter_blocks(true);
        table.set_pin_l0_filter_and_index_blocks_in_cache(true);
        // A Bloom filter per table file (10 bits a key): a point read of a
        // key that is not there, as every new message id's duplicate check
        // is, skips the files instead of searching each one's index.
        table.set_bloom_filter(10.0, false);
        cf_opts.set_block_based_table_factory(&table);
        ColumnFamilyDescriptor::new(cf.name(), cf_opts)
    });
    let db = match DB::open_cf_descriptors(&opts, path, cfs()) {
        Ok(db) => db,
        Err(e) if e.kind() == rocksdb::ErrorKind::Corruption && !wal_files(path).is_empty() => {
            let named = damaged_wal(path, &e);
            if !salvage_wal {
                return Err(wal_damaged(path, &named, &e));
            }
            opts.set_wal_recovery_mode(DBRecoveryMode::PointInTime);
            let db = DB::open_cf_descriptors(&opts, path, cfs())
                .map_err(|e| storage(&format!("opening the store at {} (salvaging the write-ahead log)", path.display()), e))?;
            tracing::warn!(
                "the write-ahead log of the store at {} is damaged ({}): {e}. Opened with --salvage-wal: \
                 it was replayed up to the damage, and every write after it (acknowledged or not) was dropped.",
                path.display(),
                named.join(", ")
            );
            db
        }
        Err(e) => return Err(storage(&format!("opening the store at {}", path.display()), e)),
    };
    Ok(db)
}

impl RocksStore {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let db = self.shared.db()?;
        db.get_cf(handle(&db, cf), key).map_err(|e| self.read_error(cf, &show_key(key), e))
    }

    /// A failed read: damage (a block that fails its checksum) is reported
    /// as such, with where it was met.
    fn read_error(&self, cf: Cf, at: &str, e: rocksdb::Error) -> StoreError {
        if e.kind() == rocksdb::ErrorKind::Corruption {
            let key = if at.is_empty() { "(first record)".to_string() } else { at.to_string() };
            self.shared.health.damage.note(StoreError::Integrity { table: cf.name(), key, reason: e.to_string() })
        } else {
            storage(&format!("reading {}", cf.name()), e)
        }
    }

    /// The ids of the live instances whose status is `status`, in id order.
    fn live_ids(&self, status: Status) -> Result<Vec<String>> {
        let mut ids = Vec::new();
        self.scan(Cf::Live, b"", |k, v| {
            if v == status.as_str().as_bytes() {
                ids.push(String::from_utf8_lossy(k).into_owned());
            }
            Ok(true)
        })?;
        Ok(ids)
    }

    /// A record that does not decode: reported, and handed back.
    fn damaged(&self, e: StoreError) -> StoreError {
        self.shared.health.damage.note(e)
    }

    fn get_record<T: serde::de::DeserializeOwned>(&self, cf: Cf, key: &[u8]) -> Result<Option<T>> {
        match self.get(cf, key)? {
            Some(v) => decode(cf.name(), &show_key(key), &v).map(Some).map_err(|e| self.damaged(e)),
            None => Ok(None),
        }
    }

    /// Visits the entries whose key starts with `prefix`, in key order, until
    /// `f` returns false. A damaged block ends the scan with an `Integrity`
    /// error naming the last key read before it (and is reported).
    fn scan(&self, cf: Cf, prefix: &[u8], f: impl FnMut(&[u8], &[u8]) -> Result<bool>) -> Result<()> {
        self.scan_range(cf, prefix, prefix, Blocks::Cached, f)
    }

    /// As `scan`, for listings and counts that read a whole family: the
    /// blocks read do not enter the block cache, so a listing neither
    /// evicts what the hot path reads nor leaves the host holding what it read.
    fn sweep(&self, cf: Cf, mode: IteratorMode, f: impl FnMut(&[u8], &[u8]) -> Result<bool>) -> Result<()> {
        self.iterate(cf, b"", mode, Blocks::Uncached, f)
    }

    /// Visits the entries from `start` on whose key starts with `prefix`.
    fn scan_range(&self, cf: Cf, prefix: &[u8], start: &[u8], blocks: Blocks, f: impl FnMut(&[u8], &[u8]) -> Result<bool>) -> Result<()> {
        self.iterate(cf, prefix, IteratorMode::From(start, Direction::Forward), blocks, f)
    }

    /// Visits the entries whose key starts with `prefix`, in `mode`'s order from its start.
    fn iterate(&self, cf: Cf, prefix: &[u8], mode: IteratorMode, blocks: Blocks, mut f: impl FnMut(&[u8], &[u8]) -> Result<bool>) -> Result<()> {
        let db = self.shared.db()?;
        let mut read = ReadOptions::default();
        read.fill_cache(matches!(blocks, Blocks::Cached));
        let mut last = Vec::new();
        for item in db.iterator_cf_opt(handle(&db, cf), read, mode) {
            let (k, v) = item.map_err(|e| {
                let at = if last.is_empty() { String::new() } else { format!("after {}", show_key(&last)) };
                self.read_error(cf, &at, e)
            })?;
            if !k.starts_with(prefix) || !f(&k, &v)? {
                break;
            }
            last.clear();
            last.extend_from_slice(&k);
        }
        Ok(())
    }

    /// The records under `prefix` that decode; each one that does not is
    /// reported (`StoreHealth::damage`) and skipped.
    fn records<T: serde::de::DeserializeOwned>(&self, cf: Cf, prefix: &[u8]) -> Result<Vec<T>> {
        let mut out = Vec::new();
        self.scan(cf, prefix, |k, v| {
            match decode(cf.name(), &show_key(k), v) {
                Ok(record) => out.push(record),
                Err(e) => {
                    self.damaged(e);
                }
            }
            Ok(true)
        })?;
        Ok(out)
    }
}

/// Refuses a store written by a newer format; stamps an older one (written
/// before format versions, whose records decode as they are).
fn check_format(db: &DB) -> Result<()> {
    let meta = db.cf_handle(Cf::Meta.name()).expect("column family opened at start");
    match db.get_cf(meta, keys::STORE_FORMAT).map_err(|e| storage("reading the store format", e))? {
        Some(v) if v.first().copied().unwrap_or(0) > codec::FORMAT => Err(StoreError::Storage(format!(
            "this store was written in format {} by a newer cairn; this cairn reads format {} and older: run the newer cairn, or `cairn backup` it with that version and restore into a new data directory",
            v[0],
            codec::FORMAT
        ))),
        Some(_) => Ok(()),
        None => db.put_cf(meta, keys::STORE_FORMAT, [codec::FORMAT]).map_err(|e| storage("stamping the store format", e)),
    }
}

/// Builds the `live` index from the snapshots, once, for a store written
/// before the index existed (or a fresh one, where there is nothing to do).
fn build_live_index(db: &DB) -> Result<()> {
    let meta = handle(db, Cf::Meta);
    if db.get_cf(meta, keys::LIVE_INDEX).map_err(|e| storage("reading the live index mark", e))?.is_some() {
        return Ok(());
    }
    #[derive(serde::Deserialize)]
    struct StatusOnly {
        status: Status,
    }
    let mut wb = rocksdb::WriteBatch::default();
    let mut live = 0u64;
    for item in db.iterator_cf(handle(db, Cf::Instances), IteratorMode::Start) {
        let (k, v) = item.map_err(|e| storage("building the live index", e))?;
        // An undecodable snapshot is left out here; reading it reports it.
        if let Ok(s) = decode::<StatusOnly>(Cf::Instances.name(), &show_key(&k), &v) {
            if !s.status.is_terminal() {
                wb.put_cf(handle(db, Cf::Live), &k, s.status.as_str());
                live += 1;
            }
        }
    }
    wb.put_cf(meta, keys::LIVE_INDEX, []);
    db.write(wb).map_err(|e| storage("writing the live index", e))?;
    if live > 0 {
        tracing::info!("built the index of live instances ({live}) for a store written before it existed");
    }
    Ok(())
}

#[async_trait::async_trait]
impl crate::Backend for RocksStore {
    fn submit(&self, batch: WriteBatch) -> crate::Committing {
        let (done, verdict) = tokio::sync::oneshot::channel();
        match self.queue.send(Request::Commit(batch, done)) {
            Ok(()) => crate::Committing::queued(verdict),
            Err(_) => crate::Committing::refused(StoreError::Storage("the committer has stopped".into())),
        }
    }

    fn sync_deferred(&self) {
        let _ = self.queue.send(Request::Sync);
    }

    async fn definitions(&self) -> Result<Vec<DeployedRecord>> {
        self.records(Cf::Definitions, b"")
    }

    async fn component(&self, version: &str) -> Result<Option<Vec<u8>>> {
        self.get(Cf::Components, version.as_bytes())
    }

    async fn instance(&self, id: &str) -> Result<Option<Snapshot>> {
        self.get_record(Cf::Instances, id.as_bytes())
    }

    async fn instances(&self, filter: &InstanceFilter, limit: usize) -> Result<Vec<Snapshot>> {
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        if let Some(status) = filter.status.filter(|s| !s.is_terminal()) {
            // Live instances: their index, then only their snapshots.
            let mut ids = self.live_ids(status)?;
            if filter.newest_first {
                ids.reverse();
            }
            for id in ids.into_iter().filter(|id| filter.comes_after(id)) {
                if let Some(s) = self.get_record::<Snapshot>(Cf::Instances, id.as_bytes()).or_else(|e| match e {
                    StoreError::Integrity { .. } => Ok(None),
                    e => Err(e),
                })? {
                    if filter.matches(&s) {
                        out.push(s);
                        if out.len() >= limit {
                            break;
                        }
                    }
                }
            }
            return Ok(out);
        }
        let mode = match (filter.after.as_deref(), filter.newest_first) {
            (Some(after), false) => IteratorMode::From(after.as_bytes(), Direction::Forward),
            (Some(after), true) => IteratorMode::From(after.as_bytes(), Direction::Reverse),
            (None, false) => IteratorMode::Start,
            (None, true) => IteratorMode::End,
        };
        self.sweep(Cf::Instances, mode, |k, v| {
            if Some(k) == filter.after.as_deref().map(str::as_bytes) {
                return Ok(true);
            }
            match decode::<Snapshot>(Cf::Instances.name(), &show_key(k), v) {
                Ok(s) if filter.matches(&s) => out.push(s),
                Ok(_) => {}
                Err(e) => {
                    self.damaged(e);
                }
            }
            Ok(out.len() < limit)
        })?;
        Ok(out)
    }

    async fn count_instances(&self, status: Status) -> Result<u64> {
        if !status.is_terminal() {
            return Ok(self.live_ids(status)?.len() as u64);
        }
        #[derive(serde::Deserialize)]
        struct StatusOnly {
            status: Status,
        }
        let mut n = 0;
        self.sweep(Cf::Instances, IteratorMode::Start, |k, v| {
            match decode::<StatusOnly>(Cf::Instances.name(), &show_key(k), v) {
                Ok(s) if s.status == status => n += 1,
                Ok(_) => {}
                Err(e) => {
                    self.damaged(e);
                }
            }
            Ok(true)
        })?;
        Ok(n)
    }

    async fn count_all_instances(&self) -> Result<u64> {
        // One pass over the keys, decoding nothing (rather than a pass per terminal status).
        let mut n = 0;
        self.sweep(Cf::Instances, IteratorMode::Start, |_, _| {
            n += 1;
            Ok(true)
        })?;
        Ok(n)
    }

    async fn inbox(&self, instance: &str) -> Result<Vec<Delivery>> {
        self.records(Cf::Inbox, &keys::instance_prefix(instance))
    }

    async fn inbox_owners(&self) -> Result<Vec<String>> {
        let mut out: Vec<String> = Vec::new();
        self.scan(Cf::Inbox, b"", |k, _| {
            let id = keys::scoped_instance(k);
            if out.last() != Some(&id) {
                out.push(id);
            }
            Ok(true)
        })?;
        Ok(out)
    }

    async fn outbox(&self, instance: &str) -> Result<Vec<Effect>> {
        self.records(Cf::Outbox, &keys::instance_prefix(instance))
    }

    async fn all_outbox(&self) -> Result<Vec<(String, Effect)>> {
        let mut out = Vec::new();
        self.scan(Cf::Outbox, b"", |k, v| {
            match decode(Cf::Outbox.name(), &show_key(k), v) {
                Ok(effect) => out.push((keys::scoped_instance(k), effect)),
                Err(e) => {
                    self.damaged(e);
                }
            }
            Ok(true)
        })?;
        Ok(out)
    }

    async fn timers(&self) -> Result<Vec<TimerKey>> {
        let mut out = Vec::new();
        self.scan(Cf::Timers, b"", |k, _| {
            match keys::parse_timer(k) {
                Some(t) => out.push(t),
                None => {
                    self.damaged(StoreError::Integrity {
                        table: "timers",
                        key: show_key(k),
                        reason: "not a timer key (due, instance, timer id)".into(),
                    });
                }
            }
            Ok(true)
        })?;
        Ok(out)
    }

    async fn correlation(&self, key: &CorrelationKey) -> Result<Option<String>> {
        Ok(self.get(Cf::Correlations, &keys::correlation(key))?.map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    async fn message(&self, id: &str) -> Result<Option<IntakeRecord>> {
        self.get_record(Cf::Messages, id.as_bytes())
    }

    async fn reply(&self, message_id: &str) -> Result<Option<Reply>> {
        self.get_record(Cf::Replies, message_id.as_bytes())
    }

    async fn history(&self, instance: &str) -> Result<Vec<HistoryEntry>> {
        self.records(Cf::History, &keys::instance_prefix(instance))
    }

    async fn in_transit(&self, instance: Option<&str>) -> Result<Vec<InTransit>> {
        self.records(Cf::InTransit, &instance.map(keys::instance_prefix).unwrap_or_default())
    }

    async fn in_transit_call(&self, instance: &str, call_id: u64) -> Result<Option<InTransit>> {
        self.get_record(Cf::InTransit, &keys::instance_scoped(instance, call_id))
    }

    async fn breakpoints(&self) -> Result<Vec<(String, String)>> {
        let mut out = Vec::new();
        self.scan(Cf::Meta, keys::BREAKPOINT, |k, _| {
            let rest = String::from_utf8_lossy(&k[keys::BREAKPOINT.len()..]).into_owned();
            if let Some((process, path)) = rest.split_once('\0') {
                out.push((process.to_string(), path.to_string()));
            }
            Ok(true)
        })?;
        Ok(out)
    }

    async fn parked(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        self.scan(Cf::Meta, keys::PARKED, |k, _| {
            out.push(String::from_utf8_lossy(&k[keys::PARKED.len()..]).into_owned());
            Ok(true)
        })?;
        Ok(out)
    }

    async fn clean_shutdown(&self) -> Result<bool> {
        Ok(self.get(Cf::Meta, keys::CLEAN_SHUTDOWN)?.is_some())
    }

    async fn isolated(&self) -> Result<bool> {
        Ok(self.get(Cf::Meta, keys::ISOLATED)?.is_some())
    }

    async fn resources(&self) -> Result<Vec<ResourceInfo>> {
        self.records(Cf::ResourceNames, b"")
    }

    async fn resource_get(&self, name: &str, key: &str) -> Result<(u64, Option<String>)> {
        match self.get(Cf::Resources, &keys::resource(name, key))? {
            Some(v) => parse_resource(name, key, &v).map_err(|e| self.damaged(e)),
            None => Ok((0, None)),
        }
    }

    async fn resource_scan(&self, name: &str, prefix: &str, after: Option<&str>, limit: usize) -> Result<Vec<ResourceRow>> {
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        let rows = keys::resource(name, prefix);
        let start = match after {
            Some(after) => rows.clone().max(keys::resource(name, after)),
            None => rows.clone(),
        };
        let key_at = name.len() + 1;
        let db = self.shared.db()?;
        for item in db.iterator_cf(handle(&db, Cf::Resources), IteratorMode::From(&start, Direction::Forward)) {
            let (k, v) = item.map_err(|e| self.read_error(Cf::Resources, name, e))?;
            if !k.starts_with(&rows) {
                break;
            }
            let key = String::from_utf8_lossy(&k[key_at..]);
            if after == Some(&*key) {
                continue;
            }
            if let (version, Some(value)) = parse_resource(name, &key, &v).map_err(|e| self.damaged(e))? {
                out.push(ResourceRow { key: key.into_owned(), version, value });
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    async fn tokens(&self) -> Result<Vec<TokenRecord>> {
        self.records(Cf::Tokens, b"")
    }

    async fn backup(&self, dir: &Path) -> Result<()> {
        if dir.exists() {
            return Err(StoreError::Storage(format!("{} already exists: a backup goes into a new directory", dir.display())));
        }
        std::fs::create_dir_all(dir).map_err(|e| storage(&format!("creating {}", dir.display()), e))?;
        let db = self.shared.db()?;
        let cp = rocksdb::checkpoint::Checkpoint::new(&db).map_err(|e| storage("starting a checkpoint", e))?;
        cp.create_checkpoint(dir.join("db")).map_err(|e| storage(&format!("writing the checkpoint to {}", dir.display()), e))
    }

    async fn flush(&self) -> Result<()> {
        let db = self.shared.db()?;
        db.flush_wal(true).map_err(|e| storage("flushing the WAL", e))?;
        for cf in Cf::ALL {
            db.flush_cf(handle(&db, cf)).map_err(|e| storage(&format!("flushing {}", cf.name()), e))?;
        }
        Ok(())
    }

    async fn close(&self) {
        let _ = self.queue.send(Request::Close);
        let handle = self.committer.lock().unwrap().take();
        if let Some(h) = handle {
            let _ = h.join();
        }
    }

    fn commit_stats(&self) -> CommitStats {
        self.stats.stats(self.fsync)
    }

    fn memory(&self) -> MemoryStats {
        let Ok(db) = self.shared.db() else { return MemoryStats::default() };
        let memtables = Cf::ALL
            .iter()
            .filter_map(|cf| db.property_int_value_cf(handle(&db, *cf), "rocksdb.size-all-mem-tables").ok().flatten())
            .sum();
        // Every column family shares one cache: any of them reports it.
        let block_cache = db.property_int_value_cf(handle(&db, Cf::ALL[0]), "rocksdb.block-cache-usage").ok().flatten().unwrap_or(0);
        MemoryStats { memtables, block_cache }
    }

    fn kind(&self) -> &'static str {
        "rocksdb"
    }

    fn health(&self) -> &StoreHealth {
        &self.shared.health
    }
}

/// Adds one typed write to a RocksDB write batch. `version` is the version a
/// resource row write gives its key (see `resolve`); other writes ignore it.
fn put_write(db: &DB, wb: &mut rocksdb::WriteBatch, write: &Write, version: u64) {
    let cf = |c: Cf| db.cf_handle(c.name()).expect("column family opened at start");
    match write {
        Write::Definition { record, component } => {
            wb.put_cf(cf(Cf::Components), record.version.as_bytes(), component);
            wb.put_cf(cf(Cf::Definitions), record.version.as_bytes(), encode(record));
        }
        Write::Instance(snap) => {
            wb.put_cf(cf(Cf::Instances), snap.id.as_bytes(), encode(snap));
            if snap.status.is_terminal() {
                wb.delete_cf(cf(Cf::Live), snap.id.as_bytes());
            } else {
                wb.put_cf(cf(Cf::Live), snap.id.as_bytes(), snap.status.as_str());
            }
        }
        Write::InstanceRemove { id } => {
            wb.delete_cf(cf(Cf::Instances), id.as_bytes());
            wb.delete_cf(cf(Cf::Live), id.as_bytes());
            wb.delete_range_cf(cf(Cf::History), keys::instance_scoped(id, 0), keys::instance_scoped(id, u64::MAX));
        }
        Write::Inbox { instance, delivery } => {
            wb.put_cf(cf(Cf::Inbox), keys::instance_scoped(instance, delivery.seq), encode(delivery))
        }
        Write::InboxRemove { instance, seq } => wb.delete_cf(cf(Cf::Inbox), keys::instance_scoped(instance, *seq)),
        Write::Outbox { instance, call_id, effect } => {
            wb.put_cf(cf(Cf::Outbox), keys::instance_scoped(instance, *call_id), encode(effect))
        }
        Write::OutboxRemove { instance, call_id } => wb.delete_cf(cf(Cf::Outbox), keys::instance_scoped(instance, *call_id)),
        Write::Timer(t) => wb.put_cf(cf(Cf::Timers), keys::timer(t), []),
        Write::TimerRemove(t) => wb.delete_cf(cf(Cf::Timers), keys::timer(t)),
        Write::Correlation { key, instance } => wb.put_cf(cf(Cf::Correlations), keys::correlation(key), instance.as_bytes()),
        Write::CorrelationRemove(key) => wb.delete_cf(cf(Cf::Correlations), keys::correlation(key)),
        Write::Message { id, record } => wb.put_cf(cf(Cf::Messages), id.as_bytes(), encode(record)),
        Write::History { instance, entry } => wb.put_cf(cf(Cf::History), keys::instance_scoped(instance, entry.fence), encode(entry)),
        Write::HistoryPrune { instance, below } => {
            wb.delete_range_cf(cf(Cf::History), keys::instance_scoped(instance, 0), keys::instance_scoped(instance, *below))
        }
        Write::Reply { message_id, reply } => wb.put_cf(cf(Cf::Replies), message_id.as_bytes(), encode(reply)),
        Write::InTransit(t) => wb.put_cf(cf(Cf::InTransit), keys::instance_scoped(&t.instance, t.call_id), encode(t)),
        Write::InTransitRemove { instance, call_id } => {
            wb.delete_cf(cf(Cf::InTransit), keys::instance_scoped(instance, *call_id))
        }
        Write::Breakpoint { process, path, set: true } => wb.put_cf(cf(Cf::Meta), keys::breakpoint(process, path), []),
        Write::Breakpoint { process, path, set: false } => wb.delete_cf(cf(Cf::Meta), keys::breakpoint(process, path)),
        Write::Parked { instance, parked: true } => wb.put_cf(cf(Cf::Meta), keys::parked(instance), []),
        Write::Parked { instance, parked: false } => wb.delete_cf(cf(Cf::Meta), keys::parked(instance)),
        Write::CleanShutdown(true) => wb.put_cf(cf(Cf::Meta), keys::CLEAN_SHUTDOWN, []),
        Write::CleanShutdown(false) => wb.delete_cf(cf(Cf::Meta), keys::CLEAN_SHUTDOWN),
        Write::Isolated(true) => wb.put_cf(cf(Cf::Meta), keys::ISOLATED, []),
        Write::Isolated(false) => wb.delete_cf(cf(Cf::Meta), keys::ISOLATED),
        Write::ResourceCreate(info) => wb.put_cf(cf(Cf::ResourceNames), info.name.as_bytes(), encode(info)),
        Write::Token(t) => wb.put_cf(cf(Cf::Tokens), t.id.as_bytes(), encode(t)),
        Write::TokenRevoke { id } => wb.delete_cf(cf(Cf::Tokens), id.as_bytes()),
        Write::ResourcePut { name, key, value } => {
            wb.put_cf(cf(Cf::Resources), keys::resource(name, key), resource_value(version, Some(value.as_str())))
        }
        Write::ResourceDelete { name, key } => {
            wb.put_cf(cf(Cf::Resources), keys::resource(name, key), resource_value(version, None))
        }
        Write::ResourceRestore { name, key, value, .. } => {
            wb.put_cf(cf(Cf::Resources), keys::resource(name, key), resource_value(version, value.as_deref()))
        }
    }
}

/// A resource row: (resource name, key).
type RowKey = (String, String);

/// The version of a resource row as the group leaves it so far: written by
/// an earlier batch of the group, or stored.
fn row_version(db: &DB, group: &HashMap<RowKey, u64>, name: &str, key: &str) -> Result<u64> {
    if let Some(v) = group.get(&(name.to_string(), key.to_string())) {
        return Ok(*v);
    }
    let cf = db.cf_handle(Cf::Resources.name()).expect("column family opened at start");
    match db.get_pinned_cf(cf, keys::resource(name, key)).map_err(|e| storage("reading a resource version", e))? {
        Some(v) => Ok(parse_resource(name, key, &v)?.0),
        None => Ok(0),
    }
}

/// Checks a batch's resource checks against the group so far, and gives each
/// of its writes the version it leaves its resource row at (0 for writes
/// that are not resource rows). Also returns the rows the batch moves, to
/// merge into the group's once it is accepted.
fn resolve(db: &DB, group: &HashMap<RowKey, u64>, batch: &WriteBatch) -> Result<(Vec<u64>, HashMap<RowKey, u64>)> {
    for c in &batch.checks {
        let found = row_version(db, group, &c.name, &c.key)?;
        if found != c.version {
            return Err(StoreError::Conflict { resource: c.name.clone(), key: c.key.clone(), expected: c.version, found });
        }
    }
    let mut moved: HashMap<RowKey, u64> = HashMap::new();
    let mut versions = Vec::with_capacity(batch.writes.len());
    for w in &batch.writes {
        let version = match w {
            Write::ResourcePut { name, key, .. } | Write::ResourceDelete { name, key } => {
                let row = (name.clone(), key.clone());
                let current = match moved.get(&row) {
                    Some(v) => *v,
                    None => row_version(db, group, name, key)?,
                };
                moved.insert(row, current + 1);
                current + 1
            }
            Write::ResourceRestore { name, key, version, .. } => {
                moved.insert((name.clone(), key.clone()), *version);
                *version
            }
            _ => 0,
        };
        versions.push(version);
    }
    Ok((versions, moved))
}

/// How long a deferred batch waits for a later write to sync it before the
/// committer syncs it alone.
const DEFERRED_SYNC_WITHIN: Duration = Duration::from_millis(1);

/// Owns the write path: takes the queued batches in order, checks each
/// one's fences and resource versions against the store and the batches
/// before it in its group, and writes the group as one RocksDB write,
/// synced unless every batch in it is deferred (those wait in `unsynced`
/// for the next sync, which answers them).
fn committer(shared: Arc<Shared>, queue: mpsc::Receiver<Request>, fsync: bool, stats: Arc<CommitCounters>) {
    let mut write_opts = WriteOptions::default();
    let mut closing = false;
    let mut unsynced: Vec<Done> = Vec::new();
    while !closing {
        let next = if unsynced.is_empty() {
            queue.recv().ok()
        } else {
            match queue.recv_timeout(DEFERRED_SYNC_WITHIN) {
                Ok(request) => Some(request),
                Err(mpsc::RecvTimeoutError::Timeout) => Some(Request::Sync),
                Err(mpsc::RecvTimeoutError::Disconnected) => None,
            }
        };
        let (first, done) = match next {
            Some(Request::Commit(first, done)) => (first, done),
            Some(Request::Sync) => {
                sync_wal(&shared, &stats, std::mem::take(&mut unsynced));
                continue;
            }
            Some(Request::Close) | None => break,
        };
        let db = match shared.db() {
            Ok(db) => db,
            Err(e) => {
                let _ = done.send(Err(e));
                continue;
            }
        };
        let fences_cf = handle(&db, Cf::Fences);
        let mut group = vec![(first, done)];
        let mut sync_asked = false;
        while group.len() < 1024 {
            match queue.try_recv() {
                Ok(Request::Commit(b, d)) => group.push((b, d)),
                Ok(Request::Sync) => sync_asked = true,
                Ok(Request::Close) => {
                    closing = true;
                    break;
                }
                Err(_) => break,
            }
        }
        // Synced unless every batch is deferred (and no sync is asked for, nor the end near).
        let sync = fsync && (sync_asked || closing || group.iter().any(|(b, _)| !b.deferred));
        let mut wb = rocksdb::WriteBatch::default();
        // Fences and resource versions as this group leaves them, so later
        // batches see earlier ones.
        let mut fences: HashMap<String, u64> = HashMap::new();
        let mut rows: HashMap<RowKey, u64> = HashMap::new();
        let mut accepted = Vec::with_capacity(group.len());
        // Whether the group holds an instance's persistence point.
        let mut holds_point = false;
        'batches: for (batch, done) in group {
            for f in &batch.fences {
                let found = match fences.get(&f.instance) {
                    Some(v) => *v,
                    None => match db.get_cf(fences_cf, f.instance.as_bytes()) {
                        Ok(v) => v.map(|b| keys::trailing_u64(&b)).unwrap_or(0),
                        Err(e) => {
                            let _ = done.send(Err(storage("reading a fence", e)));
                            continue 'batches;
                        }
                    },
                };
                if found != f.based_on {
                    let _ = done.send(Err(StoreError::Stale { instance: f.instance.clone(), expected: f.based_on, found }));
                    continue 'batches;
                }
            }
            let (versions, moved) = match resolve(&db, &rows, &batch) {
                Ok(resolved) => resolved,
                Err(e) => {
                    let _ = done.send(Err(e));
                    continue 'batches;
                }
            };
            rows.extend(moved);
            for f in &batch.fences {
                fences.insert(f.instance.clone(), f.becomes);
                wb.put_cf(fences_cf, f.instance.as_bytes(), f.becomes.to_be_bytes());
            }
            for (w, version) in batch.writes.iter().zip(versions) {
                put_write(&db, &mut wb, w, version);
            }
            holds_point |= !batch.fences.is_empty();
            accepted.push(done);
        }
        if accepted.is_empty() {
            if sync && !unsynced.is_empty() {
                drop(db);
                sync_wal(&shared, &stats, std::mem::take(&mut unsynced));
            }
            continue;
        }
        if holds_point {
            crate::failpoint::hit("before-write");
        }
        write_opts.set_sync(sync);
        let result = db.write_opt(wb, &write_opts).map_err(|e| storage("writing a batch", e));
        stats.record(accepted.len());
        crate::failpoint::hit("after-commit");
        shared.health.writes.observe(&result);
        if result.is_ok() && fsync && !sync {
            // Written, not yet durable: answered by the next sync.
            unsynced.extend(accepted);
            continue;
        }
        if sync && result.is_ok() {
            stats.synced();
        }
        // A failed write leaves the deferred batches before it in doubt:
        // they are answered with its failure, and their instances go on
        // from what the store holds.
        for done in unsynced.drain(..).chain(accepted) {
            let _ = done.send(result.clone());
        }
        if let Err(failure) = result {
            drop(db);
            write_opts.set_sync(fsync);
            if !recover_writes(&shared, &queue, &write_opts, failure) {
                break;
            }
        }
    }
    sync_wal(&shared, &stats, unsynced);
}

/// The verdict of one queued batch.
type Done = tokio::sync::oneshot::Sender<Result<()>>;

/// Syncs the write-ahead log, then answers the deferred batches written before.
fn sync_wal(shared: &Shared, stats: &CommitCounters, unsynced: Vec<Done>) {
    if unsynced.is_empty() {
        return;
    }
    let result = shared.db().and_then(|db| db.flush_wal(true).map_err(|e| storage("syncing the write-ahead log", e)));
    if result.is_ok() {
        stats.synced();
    }
    shared.health.writes.observe(&result);
    for done in unsynced {
        let _ = done.send(result.clone());
    }
}

/// After a failed write RocksDB refuses every later one (its background
/// error) until the database is reopened. Until writes succeed again, this
/// answers every queued commit with `failure` at once (the API says 503 or
/// 507; drivers retry), and about once a second tries: a probe write, and
/// else, once a small file can be written beside the database (space was
/// freed), a reopen. Returns false if the store was closed meanwhile.
fn recover_writes(shared: &Shared, queue: &mpsc::Receiver<Request>, write_opts: &WriteOptions, failure: StoreError) -> bool {
    let probe = |db: &DB| db.put_cf_opt(handle(db, Cf::Meta), keys::STORE_FORMAT, [codec::FORMAT], write_opts);
    let mut last_try = Instant::now();
    loop {
        match queue.recv_timeout(Duration::from_millis(200)) {
            Ok(Request::Commit(_, done)) => {
                let _ = done.send(Err(failure.clone()));
            }
            Ok(Request::Sync) => {}
            Ok(Request::Close) | Err(mpsc::RecvTimeoutError::Disconnected) => return false,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        if last_try.elapsed() < Duration::from_secs(1) {
            continue;
        }
        last_try = Instant::now();
        if let Ok(db) = shared.db() {
            if probe(&db).is_ok() {
                shared.health.writes.ok();
                return true;
            }
        }
        // Is there room again? A file the size of a few records must fit.
        let room = shared.path.join("cairn-space-probe");
        let fits = std::fs::write(&room, vec![0u8; 256 << 10]).is_ok();
        let _ = std::fs::remove_file(&room);
        if !fits {
            continue;
        }
        let taken = shared.db.write().unwrap().take();
        if let Some(old) = taken {
            // Readers hold the database only for one read or scan.
            let deadline = Instant::now() + Duration::from_secs(5);
            while Arc::strong_count(&old) > 1 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if Arc::strong_count(&old) > 1 {
                *shared.db.write().unwrap() = Some(old);
                continue;
            }
            drop(old);
        }
        match open_db(&shared.path, false) {
            Ok(db) => {
                let ok = probe(&db).is_ok();
                *shared.db.write().unwrap() = Some(Arc::new(db));
                if ok {
                    tracing::warn!("the store at {} was reopened after a write failure", shared.path.display());
                    shared.health.writes.ok();
                    return true;
                }
            }
            Err(e) => {
                tracing::error!("reopening the store after a write failure: {e} (retrying)");
                // Without a database every read fails; the next try reopens again.
            }
        }
    }
}
