//! The service: everything between the API and the engine, as components
//! that each own their state. `Service` is only the wiring.
//!
//! | component | file | owns |
//! |---|---|---|
//! | `Registry` | `registry.rs` | deployed versions in memory; deploy |
//! | `Intake` | `intake.rs` | message intake and routing: reservations, inbox sequence |
//! | `Drivers` | `drivers.rs` | the live map of instance drivers; wakes; dehydration |
//! | (driver task) | `driver.rs` | one instance's machine while it is in memory |
//! | `Calls` | `calls.rs` | activity calls and sends in flight, retries, held calls |
//! | `Tasks` | `tasks.rs` | tasks of external activities offered to workers, their leases |
//! | `Timers` | `timers.rs` | durable timers due in memory; the timer loop |
//! | `Replies` | `replies.rs` | callers waiting for a reply |
//! | `Operator` | `operator.rs` | operator verbs, breakpoints, parked instances |
//! | `Events` | `events.rs` | the live stream of persistence points (the console's `GET /v1/events`) |
//! | (lifecycle) | `lifecycle.rs` | retry of faulted instances, cancel, variables checked by the guest |
//! | recovery | `recovery.rs` | what resumes at start |
//! | `Cluster` | `cluster.rs` | cluster mode: the lease loop, wake-ups between hosts |
//!
//! Lock order, where locks meet: `Intake::reservations` (async) is held
//! across store reads, and before `Registry`'s lock (read briefly inside it);
//! `Drivers::live` is never held while taking another lock. No other lock is
//! held while taking a second one.
//!
//! Data flow: a request becomes an intake batch (message id, inbox entry and,
//! for an instance-creating message, the new instance and its correlation)
//! committed in one write; the instance's driver then runs the engine,
//! commits one batch per persistence point, and only after each commit hands
//! that batch's effects to their components (`driver::after_commit`).
//! Activity results come back to the driver as wakes.

mod calls;
pub mod cluster;
mod driver;
mod drivers;
mod events;
mod intake;
mod lifecycle;
mod operator;
mod recovery;
mod registry;
mod replies;
mod resources;
mod suggest;
mod tasks;
mod timers;

pub use calls::{CallAttempt, Calls};
pub use drivers::Drivers;
pub use events::{Events, InstanceEvent};
pub use intake::{Accepted, Intake, MessageIn};
pub use lifecycle::{MigrateReport, Refused, RetryReport};
pub use operator::Operator;
pub use registry::{Deployed, Registry};
pub use replies::Replies;
pub use resources::{CallResources, ResourceGrant};
pub use tasks::{Acknowledged, Holder, Outcome, PollRequest, Polled, TaskInfo, Tasks, DEFAULT_LEASE_MS, MAX_POLL_WAIT_MS};
pub use timers::Timers;

use crate::guestlog::GuestLog;
use crate::isolated::IsolatedEffects;
use crate::outbound::{HttpPolicy, UrlPrefix};
use crate::runtime::{Limits, Runtime};
use cairn_engine::{self as engine, Fault, Snapshot};
use cairn_store::{Location, Store, StoreError, Write, WriteBatch};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::oneshot;

pub struct Config {
    pub data_dir: PathBuf,
    /// Where the store lives: RocksDB in `data_dir` (the default) or PostgreSQL.
    pub store: Location,
    /// fsync every commit (on by default).
    pub fsync: bool,
    /// Open an embedded store whose write-ahead log is damaged anyway,
    /// dropping the writes after the damage (`cairn serve --salvage-wal`).
    pub salvage_wal: bool,
    pub limits: Limits,
    /// History entries kept per instance.
    pub history_limit: u64,
    /// Echo guest log records to stderr.
    pub echo_guest_log: bool,
    /// How long an instance waiting for a message or timer stays in memory
    /// before it is dehydrated (zero: at once).
    pub idle: std::time::Duration,
    /// Make this store an isolated environment (a restored backup): every
    /// outbound effect is recorded in DATA/isolated-effects.jsonl and printed.
    /// A store once marked stays isolated whatever this flag says, until
    /// `cairn promote`.
    pub isolated: bool,
    /// Outbound HTTP of activity components.
    pub http: HttpConfig,
    /// Cluster mode (`serve --node`): this host's part of a cluster of hosts
    /// over one PostgreSQL store. None: the host owns every instance.
    pub cluster: Option<cairn_store::cluster::ClusterConfig>,
    /// The `cairn` executable to compile components in a child process of
    /// (`Runtime::new`); `None`: compile in this process.
    pub compile_in: Option<PathBuf>,
}

/// Outbound HTTP as `cairn serve` configures it (see `crate::outbound`).
#[derive(Clone, Debug, Default)]
pub struct HttpConfig {
    /// The host's ceiling: URL prefixes activities may reach (with a grant).
    pub allow_http: Vec<String>,
    /// `PREFIX=URL`: in an isolated environment, who answers requests under PREFIX.
    pub stand_ins: Vec<String>,
    pub limits: crate::outbound::HttpLimits,
}

impl HttpConfig {
    /// The host-wide policy, recording intercepted requests in `isolated` when there is one.
    fn policy(&self, isolated: Option<Arc<IsolatedEffects>>) -> anyhow::Result<HttpPolicy> {
        let prefix = |flag: &str, p: &str| UrlPrefix::parse(p).map_err(|e| anyhow::anyhow!("{flag} '{p}': {e}"));
        let ceiling = self.allow_http.iter().map(|p| prefix("--allow-http", p)).collect::<anyhow::Result<Vec<_>>>()?;
        let mut stand_ins = Vec::new();
        for s in &self.stand_ins {
            let (p, url) = s.split_once('=').ok_or_else(|| anyhow::anyhow!("--stand-in '{s}': write PREFIX=URL"))?;
            stand_ins.push((prefix("--stand-in", p)?, url.to_string()));
        }
        let record: Arc<dyn Fn(serde_json::Value) + Send + Sync> = match isolated.clone() {
            Some(effects) => Arc::new(move |detail: serde_json::Value| {
                let instance = detail["instance"].as_str().unwrap_or("").to_string();
                effects.record(&instance, "http", detail)
            }),
            None => Arc::new(|_| {}),
        };
        Ok(HttpPolicy { ceiling, stand_ins, limits: self.limits.clone(), isolated: isolated.is_some(), record })
    }
}

/// Where `Service::backup` writes: a name under the backup root, or (the
/// older form) a directory that must resolve inside it.
#[derive(Debug, Clone, Copy)]
pub enum BackupTarget<'a> {
    Name(&'a str),
    Dir(&'a str),
}

/// An error for the API: what went wrong, and what kind of wrong it is.
#[derive(Debug)]
pub struct Error {
    pub kind: ErrorKind,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Malformed input (400).
    BadInput,
    /// Unknown process, instance or route (404).
    NotFound,
    /// Conflicts with what is stored (409).
    Conflict,
    /// Well-formed but invalid, e.g. a definition that fails validation (422).
    Invalid,
    /// The host is shutting down, timed out waiting, or cannot write to its store (503).
    Unavailable,
    /// The store's disk is full (507).
    NoSpace,
    /// Over a configured size cap (413).
    TooLarge,
    Internal,
}

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Error {
        Error { kind, message: message.into() }
    }
}

impl From<anyhow::Error> for Error {
    fn from(e: anyhow::Error) -> Error {
        match e.downcast::<StoreError>() {
            Ok(e) => e.into(),
            Err(e) => Error::new(ErrorKind::Internal, format!("{e:#}")),
        }
    }
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Error {
        let kind = match e {
            StoreError::Storage(_) => ErrorKind::Unavailable,
            StoreError::NoSpace(_) => ErrorKind::NoSpace,
            StoreError::Fenced { .. } | StoreError::Duplicate { .. } | StoreError::Correlated { .. } => ErrorKind::Conflict,
            _ => ErrorKind::Internal,
        };
        let retry = if matches!(kind, ErrorKind::Internal | ErrorKind::Conflict) { "" } else { " (nothing was written; the host retries in the background: try again later)" };
        Error::new(kind, format!("{e}{retry}"))
    }
}

/// What wakes an instance driver.
#[derive(Debug)]
pub enum Wake {
    /// Look again: a message arrived, a timer is due, or recovery resumes it.
    Resume,
    /// An activity call's result.
    CallResult { call_id: u64, result: Result<String, Fault>, resources: cairn_engine::ResourceAccesses },
    /// An operator verb, and who to tell once it is committed.
    Control(engine::Control, oneshot::Sender<Result<(), String>>),
    Shutdown,
}

pub struct Inner {
    pub store: Store,
    pub runtime: Arc<Runtime>,
    pub registry: Registry,
    pub intake: Intake,
    pub drivers: Drivers,
    pub calls: Calls,
    pub tasks: Tasks,
    pub timers: Timers,
    pub replies: Replies,
    pub operator: Operator,
    pub events: Events,
    config: Config,
    guest_log: Arc<GuestLog>,
    /// Whether the previous run of the host ended with a controlled shutdown.
    clean_start: AtomicBool,
    /// Where the start went (`Service::startup`), for the serving line.
    startup: std::sync::OnceLock<String>,
    shutting_down: AtomicBool,
    /// An isolated environment (marked so in the store, or made so at this
    /// start): where its outbound effects are recorded instead of sent.
    isolated: Option<Arc<IsolatedEffects>>,
    /// The host's outbound HTTP policy, shared by every activity call.
    pub http: Arc<HttpPolicy>,
    /// What `GET /metrics` serves (`crate::metrics`).
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Cluster mode: the partition leases (`cluster.rs`).
    pub cluster: Option<Arc<cluster::Cluster>>,
}

/// The wiring: a cheap handle on every component.
#[derive(Clone)]
pub struct Service(Arc<Inner>);

impl std::ops::Deref for Service {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl Service {
    /// Opens the store, loads every deployed component, and starts recovery
    /// and the timer loop in the background (the API can serve at once).
    pub async fn start(config: Config) -> anyhow::Result<Service> {
        let began = std::time::Instant::now();
        std::fs::create_dir_all(&config.data_dir)?;
        let options = cairn_store::OpenOptions { fsync: config.fsync, salvage_wal: config.salvage_wal };
        let (store, leases) = match (&config.cluster, &config.store) {
            (None, _) => (cairn_store::open_with(&config.store, options).await?, None),
            (Some(c), Location::Postgres { url }) => {
                let (store, leases) = cairn_store::cluster::join(url, config.fsync, c.clone()).await?;
                (store, Some(leases))
            }
            (Some(_), _) => anyhow::bail!("--node (cluster mode) needs a shared PostgreSQL store: give --store postgres://…"),
        };
        let cluster = leases.map(|l| Arc::new(cluster::Cluster::new(l)));
        let store_opened = began.elapsed();
        let runtime = Arc::new(Runtime::new(config.limits.clone(), Some(config.data_dir.join("compiled")), config.compile_in.clone())?);
        let runtime_made = began.elapsed();
        let guest_log = Arc::new(GuestLog::open(&config.data_dir.join("guest-log.jsonl"), config.echo_guest_log, config.limits.guest_log_bytes_per_instance)?);
        let registry = Registry::load(&store, &runtime).await?;
        // In a cluster each claimed partition's timers are loaded when it is claimed.
        let timers = if cluster.is_some() { Timers::empty() } else { Timers::load(&store).await? };
        let operator = Operator::load(&store).await?;
        let loaded = began.elapsed();
        let isolated = store.isolated().await?;
        if config.isolated && !isolated {
            let mut b = WriteBatch::new();
            b.push(Write::Isolated(true));
            store.commit(b).await?;
        }
        let isolated = (isolated || config.isolated).then(|| Arc::new(IsolatedEffects::new(config.data_dir.join("isolated-effects.jsonl"))));
        let http = Arc::new(config.http.policy(isolated.clone())?);
        let metrics = Arc::new(crate::metrics::Metrics::new(store.clone()));
        let svc = Service(Arc::new(Inner {
            metrics,
            store,
            runtime,
            registry,
            intake: Intake::new(),
            drivers: Drivers::default(),
            calls: Calls::default(),
            tasks: Tasks::default(),
            timers,
            replies: Replies::default(),
            operator,
            events: Events::default(),
            config,
            guest_log,
            clean_start: AtomicBool::new(false),
            startup: std::sync::OnceLock::new(),
            shutting_down: AtomicBool::new(false),
            isolated,
            http,
            cluster,
        }));
        // Whether the last run stopped under control; this run has not, yet.
        // (A cluster tells it per partition: a released lease is a controlled stop.)
        if svc.cluster.is_none() {
            let clean = svc.store.clean_shutdown().await?;
            svc.clean_start.store(clean, Ordering::SeqCst);
            let mut b = WriteBatch::new();
            b.push(Write::CleanShutdown(false));
            svc.store.commit(b).await?;
        }
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
        let _ = svc.startup.set(format!(
            "ready in {:.0} ms: store opened {:.0} ms, runtime {:.0} ms, definitions, timers and operator state {:.0} ms, first write {:.0} ms; recovery goes on in the background",
            ms(began.elapsed()),
            ms(store_opened),
            ms(runtime_made - store_opened),
            ms(loaded - runtime_made),
            ms(began.elapsed() - loaded)
        ));
        tokio::spawn(timers::run(svc.clone()));
        tokio::spawn(tasks::run(svc.clone()));
        if svc.cluster.is_some() {
            // Partitions are claimed, and their instances recovered, by the lease loop.
            tokio::spawn(cluster::listen(svc.clone()));
            tokio::spawn(cluster::run(svc.clone()));
            return Ok(svc);
        }
        let recovering = svc.clone();
        tokio::spawn(async move {
            if let Err(e) = recovery::recover(&recovering).await {
                tracing::error!("recovery failed: {e:#}");
            }
        });
        Ok(svc)
    }

    /// Writes an online, consistent backup of definitions and instances under
    /// the backup root (`root`, or DATA/backups; created on demand) and
    /// returns where it went. A name is one path component; a directory
    /// (the older form) must resolve inside the root. Nothing resolves
    /// outside the root, through `..` or a symlink.
    pub async fn backup(&self, root: Option<&std::path::Path>, target: BackupTarget<'_>) -> Result<PathBuf, Error> {
        use std::path::{Component, Path};
        let bad = |m: String| Error::new(ErrorKind::BadInput, m);
        let root = root.map(Path::to_path_buf).unwrap_or_else(|| self.config.data_dir.join("backups"));
        std::fs::create_dir_all(&root).map_err(|e| Error::new(ErrorKind::Internal, format!("creating the backup root {}: {e}", root.display())))?;
        let root = root.canonicalize().map_err(|e| Error::new(ErrorKind::Internal, format!("the backup root {}: {e}", root.display())))?;
        let dir = match target {
            BackupTarget::Name(name) => {
                let mut parts = Path::new(name).components();
                let one = matches!((parts.next(), parts.next()), (Some(Component::Normal(_)), None));
                if !one || name.contains(['/', '\\', '\0']) {
                    return Err(bad(format!(
                        "backup name '{name}' is not a plain name: give one name (no '/', '..' or absolute path); the backup goes under the backup root {}",
                        root.display()
                    )));
                }
                root.join(name)
            }
            BackupTarget::Dir(dir) => {
                let outside = || {
                    bad(format!(
                        "'{dir}' is not inside the backup root {}: give {{\"name\": NAME}} for a backup under the backup root",
                        root.display()
                    ))
                };
                let path = Path::new(dir);
                let (Some(parent), Some(Component::Normal(last))) = (path.parent(), path.components().next_back()) else {
                    return Err(outside());
                };
                let parent = if parent.as_os_str().is_empty() { Path::new(".") } else { parent };
                let parent = parent.canonicalize().map_err(|_| outside())?;
                let resolved = parent.join(last);
                if !parent.starts_with(&root) || resolved == root {
                    return Err(outside());
                }
                resolved
            }
        };
        if std::fs::symlink_metadata(&dir).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(bad(format!("{} is a symlink: a backup goes into a new directory under the backup root {}", dir.display(), root.display())));
        }
        self.store.backup(&dir).await.map_err(|e| Error::new(ErrorKind::BadInput, e.to_string()))?;
        Ok(dir)
    }

    /// In an isolated environment, records and prints an outbound effect.
    pub fn record_isolated_effect(&self, instance: &str, what: &str, detail: serde_json::Value) {
        if let Some(effects) = &self.isolated {
            effects.record(instance, what, detail);
        }
    }

    pub fn is_isolated(&self) -> bool {
        self.isolated.is_some()
    }

    pub fn idle(&self) -> std::time::Duration {
        self.config.idle
    }

    pub fn history_limit(&self) -> u64 {
        self.config.history_limit
    }

    pub fn guest_log(&self) -> Arc<GuestLog> {
        self.guest_log.clone()
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    /// How long the start took and where the time went.
    pub fn startup(&self) -> &str {
        self.startup.get().map(String::as_str).unwrap_or("")
    }

    pub fn clean_start(&self) -> bool {
        self.clean_start.load(Ordering::SeqCst)
    }

    pub async fn load_snapshot(&self, id: &str) -> Result<Option<Snapshot>, StoreError> {
        self.store.instance(id).await
    }

    /// The metrics as a scrape gets them: first the series read where they
    /// live (live-index counts, timers, the dispatch queue, drivers in memory).
    pub async fn metrics_text(&self) -> Result<String, Error> {
        use cairn_engine::Status;
        for status in [Status::Running, Status::Waiting, Status::Suspended] {
            let n = self.store.count_instances(status).await?;
            self.metrics.instances.get_or_create(&vec![("status", status.as_str().to_string())]).set(n as i64);
        }
        let (pending, due) = self.timers.counts(crate::now_ms());
        self.metrics.timers_pending.set(pending as i64);
        self.metrics.timers_due.set(due as i64);
        self.metrics.dispatch_queue.set(self.calls.in_flight() as i64);
        self.metrics.instances_in_memory.set(self.drivers.count() as i64);
        Ok(self.metrics.render())
    }

    /// Makes sure a driver runs for `id` and tells it to look again.
    pub fn wake(&self, id: &str) {
        self.drivers.wake(self, id, Wake::Resume)
    }

    /// Controlled shutdown: every live instance takes a persistence point and
    /// stops; then the store is flushed.
    pub async fn shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
        self.timers.stop();
        self.drivers.stop_all(std::time::Duration::from_secs(30)).await;
        if self.cluster.is_some() {
            cluster::leave(self).await;
            self.store.close().await;
            return;
        }
        let mut b = WriteBatch::new();
        b.push(Write::CleanShutdown(true));
        if let Err(e) = self.store.commit(b).await {
            tracing::error!("recording the controlled shutdown: {e}");
        }
        if let Err(e) = self.store.flush().await {
            tracing::error!("flushing the store: {e}");
        }
        self.store.close().await;
    }
}

pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
