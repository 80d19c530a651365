//! The store: RocksDB column families, keys, and the group committer.
//!
//! Architecture invariant: every persistence point is exactly one `Batch`,
//! written as part of one RocksDB `WriteBatch`. Instance writes are fenced:
//! a batch names, per instance, the fence it was based on, and the committer
//! rejects the whole batch if the stored fence differs (a stale worker, a
//! late result for a superseded attempt). The committer is the only writer,
//! so its check-then-write is atomic.
//!
//! Group commit: concurrent batches queue to one committer thread, which
//! merges what is waiting into one WriteBatch and one fsync.
//!
//! Key layout (one column family per kind; a retired family is never reused):
//! - `definitions`  version -> deployed definition record (JSON)
//! - `components`   version -> component bytes
//! - `instances`    instance id -> snapshot (JSON)
//! - `fences`       instance id -> fence (u64 BE)
//! - `inbox`        instance id, 0, seq (u64 BE) -> delivery (JSON)
//! - `outbox`       instance id, 0, call id (u64 BE) -> effect (JSON)
//! - `timers`       due ms (u64 BE), instance id, 0, timer id (u64 BE) -> empty
//! - `correlations` process, 0, set, 0, values JSON -> instance id
//! - `messages`     message id -> intake record (JSON)
//! - `history`      instance id, 0, seq (u64 BE) -> history entry (JSON)
//! - `replies`      message id -> reply (JSON)
//! - `meta`         name -> value
//! - `in_transit`   instance id, 0, call id (u64 BE) -> operator state of a
//!   non-idempotent call found in flight after a crash (JSON)

use anyhow::{anyhow, Context, Result};
use rocksdb::{ColumnFamilyDescriptor, Direction, IteratorMode, Options, WriteBatch, WriteOptions, DB};
use std::collections::HashMap;
use std::path::Path;
use std::sync::mpsc;
use std::sync::Arc;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Cf {
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
}

impl Cf {
    const ALL: [Cf; 13] = [
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
    ];

    fn name(self) -> &'static str {
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
        }
    }
}

/// Key builders: the only place key layouts are spelled out.
pub mod keys {
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
        b.copy_from_slice(&key[key.len() - 8..]);
        u64::from_be_bytes(b)
    }
    pub fn timer(due_ms: u64, instance: &str, timer_id: u64) -> Vec<u8> {
        let mut k = due_ms.to_be_bytes().to_vec();
        k.extend_from_slice(instance.as_bytes());
        k.push(0);
        k.extend_from_slice(&timer_id.to_be_bytes());
        k
    }
    /// (due ms, instance, timer id) from a timer key.
    pub fn parse_timer(key: &[u8]) -> Option<(u64, String, u64)> {
        if key.len() < 17 {
            return None;
        }
        let due = u64::from_be_bytes(key[..8].try_into().ok()?);
        let id = std::str::from_utf8(&key[8..key.len() - 9]).ok()?.to_string();
        Some((due, id, trailing_u64(key)))
    }
    pub fn correlation(process: &str, set: &str, values: &str) -> Vec<u8> {
        let mut k = process.as_bytes().to_vec();
        k.push(0);
        k.extend_from_slice(set.as_bytes());
        k.push(0);
        k.extend_from_slice(values.as_bytes());
        k
    }
}

#[derive(Debug, Clone)]
pub enum Op {
    Put(Cf, Vec<u8>, Vec<u8>),
    Delete(Cf, Vec<u8>),
    DeleteRange(Cf, Vec<u8>, Vec<u8>),
}

/// One atomic write: the unit of a persistence point or an intake.
#[derive(Debug, Default, Clone)]
pub struct Batch {
    pub ops: Vec<Op>,
    /// (instance, fence the write is based on, fence after it).
    pub fences: Vec<(String, u64, u64)>,
}

impl Batch {
    pub fn put(&mut self, cf: Cf, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.ops.push(Op::Put(cf, key.into(), value.into()));
    }
    pub fn delete(&mut self, cf: Cf, key: impl Into<Vec<u8>>) {
        self.ops.push(Op::Delete(cf, key.into()));
    }
    pub fn fence(&mut self, instance: &str, based_on: u64, becomes: u64) {
        self.fences.push((instance.to_string(), based_on, becomes));
    }
}

#[derive(Debug)]
pub enum CommitError {
    /// The batch was based on a fence that is no longer current; nothing was written.
    Stale { instance: String, expected: u64, found: u64 },
    Storage(String),
}

impl std::fmt::Display for CommitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CommitError::Stale { instance, expected, found } => write!(
                f,
                "stale write to instance {instance}: based on fence {expected}, but the store holds {found}"
            ),
            CommitError::Storage(e) => write!(f, "storage error: {e}"),
        }
    }
}

impl std::error::Error for CommitError {}

struct CommitRequest {
    batch: Batch,
    done: tokio::sync::oneshot::Sender<Result<(), CommitError>>,
}

enum Request {
    Commit(CommitRequest),
    /// Stop the committer once everything queued before is written.
    Close,
}

#[derive(Clone)]
pub struct Store {
    db: Arc<DB>,
    queue: mpsc::Sender<Request>,
    committer: Arc<std::sync::Mutex<Option<std::thread::JoinHandle<()>>>>,
}

/// Group-commit statistics, for the benchmark.
#[derive(Default, Debug, Clone, Copy)]
pub struct CommitStats {
    pub writes: u64,
    pub batches: u64,
}

static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static BATCHES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

pub fn commit_stats() -> CommitStats {
    use std::sync::atomic::Ordering::Relaxed;
    CommitStats { writes: WRITES.load(Relaxed), batches: BATCHES.load(Relaxed) }
}

impl Store {
    pub fn open(dir: &Path, fsync: bool) -> Result<Store> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating data directory {}", dir.display()))?;
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_max_background_jobs(2);
        // Memory is bounded by these caches, not by the number of instances:
        // all memtables together flush at 64 MiB, and reads share one block cache.
        opts.set_db_write_buffer_size(64 << 20);
        let cache = rocksdb::Cache::new_lru_cache(32 << 20);
        let cfs = Cf::ALL.iter().map(|cf| {
            let mut cf_opts = Options::default();
            cf_opts.set_write_buffer_size(16 << 20);
            let mut table = rocksdb::BlockBasedOptions::default();
            table.set_block_cache(&cache);
            // Index and filter blocks grow with the data: keep them inside the cache's bound.
            table.set_cache_index_and_filter_blocks(true);
            table.set_pin_l0_filter_and_index_blocks_in_cache(true);
            cf_opts.set_block_based_table_factory(&table);
            ColumnFamilyDescriptor::new(cf.name(), cf_opts)
        });
        let path = dir.join("db");
        let db = DB::open_cf_descriptors(&opts, &path, cfs)
            .map_err(|e| anyhow!("opening the store at {}: {e}", path.display()))?;
        let db = Arc::new(db);
        let (tx, rx) = mpsc::channel::<Request>();
        let committer_db = db.clone();
        let handle = std::thread::Builder::new()
            .name("cairn-commit".into())
            .spawn(move || committer(committer_db, rx, fsync))?;
        Ok(Store { db, queue: tx, committer: Arc::new(std::sync::Mutex::new(Some(handle))) })
    }

    /// Stops the committer after what is queued, and waits for it. RocksDB
    /// itself closes when the last handle drops; closing first keeps the
    /// committer thread from outliving it at process exit.
    pub fn close(&self) {
        let _ = self.queue.send(Request::Close);
        if let Some(h) = self.committer.lock().unwrap().take() {
            let _ = h.join();
        }
    }

    fn cf(&self, cf: Cf) -> &rocksdb::ColumnFamily {
        self.db.cf_handle(cf.name()).expect("column family opened at start")
    }

    /// Commits one batch atomically; resolves once it is durable (per the fsync setting).
    pub async fn commit(&self, batch: Batch) -> Result<(), CommitError> {
        let (done, wait) = tokio::sync::oneshot::channel();
        self.queue
            .send(Request::Commit(CommitRequest { batch, done }))
            .map_err(|_| CommitError::Storage("the committer has stopped".into()))?;
        wait.await.map_err(|_| CommitError::Storage("the committer has stopped".into()))?
    }

    pub fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.db.get_cf(self.cf(cf), key).map_err(|e| anyhow!("reading {}: {e}", cf.name()))
    }

    /// All entries whose key starts with `prefix`, in key order.
    pub fn scan_prefix(&self, cf: Cf, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut out = Vec::new();
        for item in self.db.iterator_cf(self.cf(cf), IteratorMode::From(prefix, Direction::Forward)) {
            let (k, v) = item.map_err(|e| anyhow!("scanning {}: {e}", cf.name()))?;
            if !k.starts_with(prefix) {
                break;
            }
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    /// Visits every entry of a column family in key order until `f` returns false.
    pub fn for_each(&self, cf: Cf, mut f: impl FnMut(&[u8], &[u8]) -> bool) -> Result<()> {
        for item in self.db.iterator_cf(self.cf(cf), IteratorMode::Start) {
            let (k, v) = item.map_err(|e| anyhow!("scanning {}: {e}", cf.name()))?;
            if !f(&k, &v) {
                break;
            }
        }
        Ok(())
    }

    /// An online, consistent copy of the store (a RocksDB checkpoint) in
    /// `dir`, laid out as a data directory `cairn serve --data` opens.
    pub fn checkpoint(&self, dir: &Path) -> Result<()> {
        if dir.exists() {
            anyhow::bail!("{} already exists: a backup goes into a new directory", dir.display());
        }
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let cp = rocksdb::checkpoint::Checkpoint::new(&self.db).map_err(|e| anyhow!("starting a checkpoint: {e}"))?;
        cp.create_checkpoint(dir.join("db")).map_err(|e| anyhow!("writing the checkpoint to {}: {e}", dir.display()))
    }

    pub fn flush(&self) -> Result<()> {
        self.db.flush_wal(true).map_err(|e| anyhow!("flushing the WAL: {e}"))?;
        for cf in Cf::ALL {
            self.db.flush_cf(self.cf(cf)).map_err(|e| anyhow!("flushing {}: {e}", cf.name()))?;
        }
        Ok(())
    }
}

fn committer(db: Arc<DB>, queue: mpsc::Receiver<Request>, fsync: bool) {
    let mut write_opts = WriteOptions::default();
    write_opts.set_sync(fsync);
    let cf = |c: Cf| db.cf_handle(c.name()).expect("column family opened at start");
    let mut closing = false;
    while !closing {
        let Ok(Request::Commit(first)) = queue.recv() else { break };
        let mut group = vec![first];
        while group.len() < 1024 {
            match queue.try_recv() {
                Ok(Request::Commit(r)) => group.push(r),
                Ok(Request::Close) => {
                    closing = true;
                    break;
                }
                Err(_) => break,
            }
        }
        let mut wb = WriteBatch::default();
        let mut fences: HashMap<String, u64> = HashMap::new();
        let mut accepted = Vec::with_capacity(group.len());
        'requests: for req in group {
            for (instance, expected, _) in &req.batch.fences {
                let found = match fences.get(instance) {
                    Some(f) => *f,
                    None => match db.get_cf(cf(Cf::Fences), instance.as_bytes()) {
                        Ok(v) => v.map(|b| keys::trailing_u64(&b)).unwrap_or(0),
                        Err(e) => {
                            let _ = req.done.send(Err(CommitError::Storage(e.to_string())));
                            continue 'requests;
                        }
                    },
                };
                if found != *expected {
                    let stale = CommitError::Stale { instance: instance.clone(), expected: *expected, found };
                    let _ = req.done.send(Err(stale));
                    continue 'requests;
                }
            }
            for (instance, _, becomes) in &req.batch.fences {
                fences.insert(instance.clone(), *becomes);
                wb.put_cf(cf(Cf::Fences), instance.as_bytes(), becomes.to_be_bytes());
            }
            for op in &req.batch.ops {
                match op {
                    Op::Put(c, k, v) => wb.put_cf(cf(*c), k, v),
                    Op::Delete(c, k) => wb.delete_cf(cf(*c), k),
                    Op::DeleteRange(c, from, to) => wb.delete_range_cf(cf(*c), from, to),
                }
            }
            accepted.push(req.done);
        }
        if accepted.is_empty() {
            continue;
        }
        let result = db.write_opt(wb, &write_opts).map_err(|e| CommitError::Storage(e.to_string()));
        WRITES.fetch_add(accepted.len() as u64, std::sync::atomic::Ordering::Relaxed);
        BATCHES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        crate::failpoint::hit("after-commit");
        for done in accepted {
            let _ = done.send(result.as_ref().map(|_| ()).map_err(|e| match e {
                CommitError::Storage(s) => CommitError::Storage(s.clone()),
                CommitError::Stale { .. } => unreachable!(),
            }));
        }
    }
}
