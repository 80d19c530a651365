//! The service: everything between the API and the engine.
//!
//! It owns the registry of deployed definitions, message intake and routing,
//! the instance drivers (`driver`), the dispatch of committed effects
//! (`dispatch`), durable timers, recovery at start and controlled shutdown.
//!
//! Data flow: a request becomes an intake batch (message id, inbox entry and,
//! for an instance-creating message, the new instance and its correlation)
//! committed in one write; the instance's driver then runs the engine,
//! commits one batch per persistence point, and only after each commit hands
//! that batch's effects to dispatch. Activity results come back to the
//! driver as wakes.

mod dispatch;
mod driver;

pub use dispatch::{InTransit, InTransitState};

use cairn_engine::{self as engine, correlation_values, Definition, Delivery, Fault, Snapshot, Status};
use crate::guestlog::GuestLog;
use crate::runtime::{Limits, Loaded, Runtime};
use crate::store::{keys, Batch, Cf, CommitError, Store};
use crate::now_ms;
use serde::{Deserialize, Serialize};
use sha2::Digest;
use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use tokio::sync::{mpsc, oneshot, Notify};

pub struct Config {
    pub data_dir: PathBuf,
    /// fsync every commit (on by default).
    pub fsync: bool,
    pub limits: Limits,
    /// History entries kept per instance.
    pub history_limit: u64,
    /// Echo guest log records to stderr.
    pub echo_guest_log: bool,
    /// How long an instance waiting for a message or timer stays in memory
    /// before it is dehydrated (zero: at once).
    pub idle: std::time::Duration,
    /// An isolated environment (a restored backup): every outbound effect is
    /// recorded in DATA/isolated-effects.jsonl and printed.
    pub isolated: bool,
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
    /// The host is shutting down or timed out waiting (503).
    Unavailable,
    Internal,
}

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Error {
        Error { kind, message: message.into() }
    }
}

impl From<anyhow::Error> for Error {
    fn from(e: anyhow::Error) -> Error {
        Error::new(ErrorKind::Internal, format!("{e:#}"))
    }
}

impl From<CommitError> for Error {
    fn from(e: CommitError) -> Error {
        Error::new(ErrorKind::Internal, e.to_string())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ComponentKind {
    Process,
    Activity,
}

/// What the store keeps about a deployed component version.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DeployedRecord {
    pub name: String,
    pub version: String,
    pub kind: ComponentKind,
    pub deployed_ms: u64,
    pub size: u64,
    pub definition: Option<Definition>,
}

pub struct Deployed {
    pub record: DeployedRecord,
    pub component: Loaded,
}

#[derive(Default)]
struct Registry {
    by_version: HashMap<String, Arc<Deployed>>,
    /// (kind, name) -> newest version.
    latest: HashMap<(ComponentKind, String), String>,
}

impl Registry {
    fn insert(&mut self, d: Arc<Deployed>) {
        let key = (d.record.kind, d.record.name.clone());
        let newer = match self.latest.get(&key).and_then(|v| self.by_version.get(v)) {
            Some(cur) => d.record.deployed_ms >= cur.record.deployed_ms,
            None => true,
        };
        if newer {
            self.latest.insert(key, d.record.version.clone());
        }
        self.by_version.insert(d.record.version.clone(), d);
    }

    fn latest(&self, kind: ComponentKind, name: &str) -> Option<Arc<Deployed>> {
        let v = self.latest.get(&(kind, name.to_string()))?;
        self.by_version.get(v).cloned()
    }
}

/// What wakes an instance driver.
#[derive(Debug)]
pub enum Wake {
    /// Look again: a message arrived, a timer is due, or recovery resumes it.
    Resume,
    InvokeResult { call_id: u64, result: Result<String, Fault> },
    /// An operator verb, and who to tell once it is committed.
    Control(engine::Control, oneshot::Sender<Result<(), String>>),
    Shutdown,
}

/// A reply to a request-response message, as stored.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Reply {
    pub body: serde_json::Value,
    pub fault: Option<Fault>,
}

/// A message offered to intake.
pub struct MessageIn {
    pub id: Option<String>,
    pub operation: String,
    /// JSON text, already validated.
    pub body: String,
    /// Only an instance-creating receive may take it (start-process).
    pub create_only: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct Accepted {
    pub message_id: String,
    pub instance: String,
    pub created: bool,
    pub duplicate: bool,
}

#[derive(Serialize, Deserialize)]
struct IntakeRecord {
    instance: String,
    operation: String,
    accepted_ms: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub fence: u64,
    pub at_ms: u64,
    pub reason: engine::Reason,
    pub status: Status,
    pub path: String,
}

/// Routing decisions made but not yet committed, so concurrent intakes see them.
#[derive(Default)]
struct Reservations {
    message_ids: HashMap<String, String>,
    correlations: HashMap<Vec<u8>, String>,
}

pub struct Inner {
    pub store: Store,
    pub runtime: Runtime,
    config: Config,
    registry: RwLock<Registry>,
    /// Instances in memory: id -> (driver generation, its wake channel).
    live: Mutex<HashMap<String, (u64, mpsc::UnboundedSender<Wake>)>>,
    next_generation: AtomicU64,
    live_empty: Notify,
    reservations: Mutex<Reservations>,
    timers: Mutex<BTreeSet<(u64, String, u64)>>,
    timers_changed: Notify,
    reply_waiters: Mutex<HashMap<String, Vec<oneshot::Sender<Reply>>>>,
    /// Instances parked by deferred recovery, until an operator resubmits them.
    parked: Mutex<std::collections::HashSet<String>>,
    /// Whether the previous run of the host ended with a controlled shutdown.
    clean_start: AtomicBool,
    /// Breakpoints: process name -> activity paths.
    breakpoints: RwLock<HashMap<String, BTreeSet<String>>>,
    /// Outbox entries being dispatched now, as (instance, call id).
    in_flight: Mutex<std::collections::HashSet<(String, u64)>>,
    inbox_seq: AtomicU64,
    shutting_down: AtomicBool,
    guest_log: Arc<GuestLog>,
}

#[derive(Clone)]
pub struct Service(Arc<Inner>);

impl std::ops::Deref for Service {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

const BREAKPOINT_PREFIX: &[u8] = b"breakpoint\0";
const PARKED_PREFIX: &[u8] = b"parked\0";
const CLEAN_SHUTDOWN: &[u8] = b"clean-shutdown";

fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

fn json<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("store records serialize")
}

impl Service {
    /// Opens the store, loads every deployed component, and starts recovery
    /// and the timer loop in the background (the API can serve at once).
    pub async fn start(config: Config) -> anyhow::Result<Service> {
        let store = Store::open(&config.data_dir, config.fsync)?;
        let runtime = Runtime::new(config.limits.clone(), Some(config.data_dir.join("compiled")))?;
        let guest_log = Arc::new(GuestLog::open(&config.data_dir.join("guest-log.jsonl"), config.echo_guest_log)?);
        let svc = Service(Arc::new(Inner {
            store,
            runtime,
            config,
            registry: RwLock::new(Registry::default()),
            live: Mutex::new(HashMap::new()),
            next_generation: AtomicU64::new(1),
            live_empty: Notify::new(),
            reservations: Mutex::new(Reservations::default()),
            timers: Mutex::new(BTreeSet::new()),
            timers_changed: Notify::new(),
            reply_waiters: Mutex::new(HashMap::new()),
            in_flight: Mutex::new(Default::default()),
            breakpoints: RwLock::new(HashMap::new()),
            parked: Mutex::new(Default::default()),
            clean_start: AtomicBool::new(false),
            inbox_seq: AtomicU64::new(now_ms() * 1000),
            shutting_down: AtomicBool::new(false),
            guest_log,
        }));
        svc.load_registry()?;
        svc.load_timers()?;
        svc.load_breakpoints()?;
        svc.load_parked()?;
        // Whether the last run stopped under control; this run has not, yet.
        let clean = svc.store.get(Cf::Meta, CLEAN_SHUTDOWN)?.is_some();
        svc.clean_start.store(clean, Ordering::SeqCst);
        let mut b = Batch::default();
        b.delete(Cf::Meta, CLEAN_SHUTDOWN);
        svc.store.commit(b).await?;
        tokio::spawn(svc.clone().timer_loop());
        let recovering = svc.clone();
        tokio::spawn(async move {
            if let Err(e) = recovering.recover() {
                eprintln!("cairn: recovery failed: {e:#}");
            }
        });
        Ok(svc)
    }

    fn load_registry(&self) -> anyhow::Result<()> {
        let mut records = Vec::new();
        self.store.for_each(Cf::Definitions, |_, v| {
            if let Ok(r) = serde_json::from_slice::<DeployedRecord>(v) {
                records.push(r);
            }
            true
        })?;
        for record in records {
            let bytes = self
                .store
                .get(Cf::Components, record.version.as_bytes())?
                .ok_or_else(|| anyhow::anyhow!("component bytes of {} {} are missing", record.name, record.version))?;
            let component = self.runtime.load(&record.version, &bytes)?;
            self.registry.write().unwrap().insert(Arc::new(Deployed { record, component }));
        }
        Ok(())
    }

    pub fn deployed(&self, version: &str) -> Option<Arc<Deployed>> {
        self.registry.read().unwrap().by_version.get(version).cloned()
    }

    pub fn latest(&self, kind: ComponentKind, name: &str) -> Option<Arc<Deployed>> {
        self.registry.read().unwrap().latest(kind, name)
    }

    /// Writes an online, consistent backup of definitions and instances to `dir`.
    pub fn backup(&self, dir: &std::path::Path) -> Result<(), Error> {
        self.store.checkpoint(dir).map_err(|e| Error::new(ErrorKind::BadInput, format!("{e:#}")))
    }

    /// In an isolated environment, records and prints an outbound effect.
    pub fn record_isolated_effect(&self, instance: &str, what: &str, detail: serde_json::Value) {
        if !self.config.isolated {
            return;
        }
        let record = serde_json::json!({ "ts_ms": now_ms(), "instance": instance, "effect": what, "detail": detail });
        println!("[isolated] {record}");
        // One write of a whole line, under a lock: concurrent calls never interleave.
        use std::io::Write;
        static FILE: Mutex<()> = Mutex::new(());
        let _guard = FILE.lock().unwrap();
        let path = self.config.data_dir.join("isolated-effects.jsonl");
        if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
            let _ = f.write_all(format!("{record}\n").as_bytes());
        }
    }

    pub fn is_isolated(&self) -> bool {
        self.config.isolated
    }

    pub fn idle(&self) -> std::time::Duration {
        self.config.idle
    }

    pub fn guest_log(&self) -> Arc<GuestLog> {
        self.guest_log.clone()
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    /// Every deployed version, newest first.
    pub fn definitions(&self) -> Vec<(DeployedRecord, bool)> {
        let reg = self.registry.read().unwrap();
        let mut out: Vec<(DeployedRecord, bool)> = reg
            .by_version
            .values()
            .map(|d| {
                let latest = reg.latest.get(&(d.record.kind, d.record.name.clone())) == Some(&d.record.version);
                (d.record.clone(), latest)
            })
            .collect();
        out.sort_by(|a, b| b.0.deployed_ms.cmp(&a.0.deployed_ms).then(a.0.name.cmp(&b.0.name)));
        out
    }

    /// Deploys a component: compiles it, checks its world, and for a process
    /// reads and validates its definition. Nothing is stored unless all pass.
    pub async fn deploy(&self, bytes: Vec<u8>, name: Option<String>) -> Result<(DeployedRecord, bool), Error> {
        let version = hex(&sha2::Sha256::digest(&bytes))[..16].to_string();
        if let Some(existing) = self.deployed(&version) {
            return Ok((existing.record.clone(), false));
        }
        let svc = self.clone();
        let v = version.clone();
        let (record, component, bytes) = tokio::task::spawn_blocking(move || svc.compile_and_check(&v, bytes, name))
            .await
            .map_err(|e| Error::new(ErrorKind::Internal, format!("deploy task failed: {e}")))??;
        if let Some(def) = &record.definition {
            self.check_creation_conflicts(def)?;
        }
        let mut b = Batch::default();
        b.put(Cf::Components, record.version.as_bytes(), bytes);
        b.put(Cf::Definitions, record.version.as_bytes(), json(&record));
        self.store.commit(b).await?;
        self.registry.write().unwrap().insert(Arc::new(Deployed { record: record.clone(), component }));
        Ok((record, true))
    }

    fn compile_and_check(
        &self,
        version: &str,
        bytes: Vec<u8>,
        name: Option<String>,
    ) -> Result<(DeployedRecord, Loaded, Vec<u8>), Error> {
        let loaded = self.runtime.load(version, &bytes).map_err(|e| Error::new(ErrorKind::BadInput, format!("{e:#}")))?;
        let size = bytes.len() as u64;
        let (name, kind, definition) = match &loaded {
            Loaded::Process(p) => {
                let def = self.runtime.describe(p).map_err(|f| {
                    Error::new(ErrorKind::Invalid, format!("describe failed: {}: {}", f.name, f.message))
                })?;
                def.validate().map_err(|e| {
                    Error::new(ErrorKind::Invalid, format!("invalid definition of process '{}': {e}", def.name))
                })?;
                // A process names itself; `name` only names activity components.
                (def.name.clone(), ComponentKind::Process, Some(def))
            }
            Loaded::Activity(_) => {
                let name = name.filter(|n| !n.is_empty()).ok_or_else(|| {
                    Error::new(
                        ErrorKind::BadInput,
                        "an activity component needs a name: pass ?name=NAME (the CLI uses the file name)",
                    )
                })?;
                if !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
                    return Err(Error::new(
                        ErrorKind::BadInput,
                        format!("activity name '{name}' may use only letters, digits, '-', '_' and '.'"),
                    ));
                }
                (name, ComponentKind::Activity, None)
            }
        };
        let record = DeployedRecord { name, version: version.to_string(), kind, deployed_ms: now_ms(), size, definition };
        Ok((record, loaded, bytes))
    }

    /// One process name may create instances on an operation: otherwise a
    /// message would not know which process to start.
    fn check_creation_conflicts(&self, def: &Definition) -> Result<(), Error> {
        let reg = self.registry.read().unwrap();
        for sub in def.subscriptions().into_iter().filter(|s| s.creates_instance) {
            for d in reg.by_version.values() {
                let Some(other) = &d.record.definition else { continue };
                if other.name == def.name {
                    continue;
                }
                if other.subscriptions().iter().any(|s| s.creates_instance && s.operation == sub.operation) {
                    return Err(Error::new(
                        ErrorKind::Conflict,
                        format!(
                            "process '{}' already creates instances on operation '{}'; one process per operation may",
                            other.name, sub.operation
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Where intake sends a message.
enum Route {
    Existing(String),
    Create { deployed: Arc<Deployed>, correlation: Option<(String, String)> },
}

impl Service {
    /// Accepts a message exactly once by id: routes it by correlation to a
    /// waiting instance's inbox, or creates an instance through an
    /// instance-creating receive. `process` restricts routing to one process.
    /// `extra` ops are committed in the same batch (an outbox entry that the
    /// message delivers, say).
    pub async fn accept_message(&self, m: MessageIn, process: Option<&str>, extra: Batch) -> Result<Accepted, Error> {
        if self.is_shutting_down() {
            return Err(Error::new(ErrorKind::Unavailable, "the host is shutting down"));
        }
        if m.operation.is_empty() {
            return Err(Error::new(ErrorKind::BadInput, "the message has no operation"));
        }
        serde_json::from_str::<serde_json::Value>(&m.body)
            .map_err(|e| Error::new(ErrorKind::BadInput, format!("message body is not valid JSON: {e}")))?;
        let message_id = m.id.clone().filter(|i| !i.is_empty()).unwrap_or_else(new_id);

        // Decide under the lock, commit outside it: reservations make the
        // decision visible to concurrent intakes until the commit lands.
        let (route, reserved_key) = {
            let mut res = self.reservations.lock().unwrap();
            if let Some(instance) = res.message_ids.get(&message_id) {
                return Ok(Accepted { message_id, instance: instance.clone(), created: false, duplicate: true });
            }
            if let Some(rec) = self.store.get(Cf::Messages, message_id.as_bytes())? {
                let rec: IntakeRecord = serde_json::from_slice(&rec).map_err(anyhow::Error::from)?;
                return Ok(Accepted { message_id, instance: rec.instance, created: false, duplicate: true });
            }
            let route = self.route(&m, process, &res)?;
            let (instance, key) = match &route {
                Route::Existing(id) => (id.clone(), None),
                Route::Create { correlation, deployed } => {
                    let id = new_id();
                    let key = correlation.as_ref().map(|(set, values)| keys::correlation(&deployed.record.name, set, values));
                    if let Some(k) = &key {
                        res.correlations.insert(k.clone(), id.clone());
                    }
                    (id, key)
                }
            };
            res.message_ids.insert(message_id.clone(), instance.clone());
            ((route, instance), key)
        };
        let (route, instance) = route;
        let result = self.commit_intake(&m, &message_id, &route, &instance, extra).await;
        {
            let mut res = self.reservations.lock().unwrap();
            res.message_ids.remove(&message_id);
            if let Some(k) = reserved_key {
                res.correlations.remove(&k);
            }
        }
        result?;
        self.wake(&instance);
        Ok(Accepted { message_id, instance, created: matches!(route, Route::Create { .. }), duplicate: false })
    }

    fn route(&self, m: &MessageIn, process: Option<&str>, res: &Reservations) -> Result<Route, Error> {
        let reg = self.registry.read().unwrap();
        let processes = || {
            reg.by_version
                .values()
                .filter(|d| d.record.kind == ComponentKind::Process)
                .filter(move |d| process.is_none_or(|p| d.record.name == p))
        };
        // 1. An instance that correlates: any version of the process may hold it.
        let mut missing = Vec::new();
        for d in processes().filter(|_| !m.create_only) {
            let def = d.record.definition.as_ref().expect("process records hold their definition");
            for sub in def.subscriptions() {
                let (Some(set_name), false) = (&sub.correlation, sub.creates_instance) else { continue };
                if sub.operation != m.operation {
                    continue;
                }
                let set = def.correlation_set(set_name).expect("validated at deploy");
                let values = match correlation_values(set, &m.body) {
                    Ok(v) => v,
                    Err(e) => {
                        missing.push(e);
                        continue;
                    }
                };
                let key = keys::correlation(&def.name, set_name, &values);
                if let Some(id) = res.correlations.get(&key) {
                    return Ok(Route::Existing(id.clone()));
                }
                if let Some(id) = self.store.get(Cf::Correlations, &key)? {
                    return Ok(Route::Existing(String::from_utf8_lossy(&id).into_owned()));
                }
            }
        }
        // 2. A process that creates instances on this operation: its newest version.
        let mut creators: Vec<Arc<Deployed>> = Vec::new();
        for d in processes() {
            if reg.latest(ComponentKind::Process, &d.record.name).map(|l| l.record.version.clone())
                != Some(d.record.version.clone())
            {
                continue;
            }
            let def = d.record.definition.as_ref().unwrap();
            if let Some((_, node)) = def.creating_receive() {
                if let engine::Activity::Receive { operation, .. } = &node.activity {
                    if *operation == m.operation {
                        creators.push(d.clone());
                    }
                }
            }
        }
        creators.sort_by(|a, b| a.record.name.cmp(&b.record.name));
        if let Some(d) = creators.into_iter().next() {
            let def = d.record.definition.as_ref().unwrap();
            let (_, node) = def.creating_receive().unwrap();
            let correlation = match &node.activity {
                engine::Activity::Receive { correlation: Some(set_name), .. } => {
                    let set = def.correlation_set(set_name).expect("validated at deploy");
                    let values = correlation_values(set, &m.body).map_err(|e| {
                        Error::new(ErrorKind::BadInput, format!("cannot start process '{}': {e}", def.name))
                    })?;
                    let key = keys::correlation(&def.name, set_name, &values);
                    let holder = match res.correlations.get(&key) {
                        Some(id) => Some(id.clone()),
                        None => self.store.get(Cf::Correlations, &key)?.map(|b| String::from_utf8_lossy(&b).into_owned()),
                    };
                    if let Some(holder) = holder {
                        return Err(Error::new(
                            ErrorKind::Conflict,
                            format!(
                                "correlation set '{set_name}' with values {values} already belongs to instance {holder} of process '{}', which does not receive '{}' now",
                                def.name, m.operation
                            ),
                        ));
                    }
                    Some((set_name.clone(), values))
                }
                _ => None,
            };
            return Ok(Route::Create { deployed: d, correlation });
        }
        let scope = process.map(|p| format!(" of process '{p}'")).unwrap_or_default();
        let mut msg = format!(
            "no instance{scope} correlates with this message and no process creates instances on operation '{}'",
            m.operation
        );
        if !missing.is_empty() {
            msg.push_str(&format!(" ({})", missing.join("; ")));
        }
        Err(Error::new(ErrorKind::NotFound, msg))
    }

    async fn commit_intake(
        &self,
        m: &MessageIn,
        message_id: &str,
        route: &Route,
        instance: &str,
        mut b: Batch,
    ) -> Result<(), Error> {
        let now = now_ms();
        if let Route::Create { deployed, correlation } = route {
            let def = deployed.record.definition.as_ref().unwrap();
            let mut snap = Snapshot::new(instance.to_string(), def, deployed.record.version.clone(), def.initial_variables.clone(), now);
            if let Some((set, values)) = correlation {
                snap.correlations.insert(set.clone(), values.clone());
                b.put(Cf::Correlations, keys::correlation(&def.name, set, values), instance.as_bytes());
            }
            self.put_new_instance(&mut b, &mut snap);
        }
        let seq = self.inbox_seq.fetch_add(1, Ordering::SeqCst);
        let delivery = Delivery {
            seq,
            message_id: message_id.to_string(),
            operation: m.operation.clone(),
            body: m.body.clone(),
        };
        b.put(Cf::Inbox, keys::instance_scoped(instance, seq), json(&delivery));
        let rec = IntakeRecord { instance: instance.to_string(), operation: m.operation.clone(), accepted_ms: now };
        b.put(Cf::Messages, message_id.as_bytes(), json(&rec));
        self.store.commit(b).await?;
        Ok(())
    }

    fn put_new_instance(&self, b: &mut Batch, snap: &mut Snapshot) {
        snap.fence = 1;
        b.fence(&snap.id, 0, 1);
        b.put(Cf::Instances, snap.id.as_bytes(), json(snap));
        let entry = HistoryEntry { fence: 1, at_ms: snap.created_ms, reason: engine::Reason::Created, status: snap.status, path: String::new() };
        b.put(Cf::History, keys::instance_scoped(&snap.id, 1), json(&entry));
    }

    /// Starts an instance of the newest version of `process`. If the process
    /// begins with an instance-creating receive, `input` is its message;
    /// otherwise `input` (an object) is merged into the initial variables.
    pub async fn start_instance(&self, process: &str, input: Option<serde_json::Value>) -> Result<Accepted, Error> {
        if self.is_shutting_down() {
            return Err(Error::new(ErrorKind::Unavailable, "the host is shutting down"));
        }
        let deployed = self
            .latest(ComponentKind::Process, process)
            .ok_or_else(|| Error::new(ErrorKind::NotFound, format!("no process named '{process}' is deployed")))?;
        let def = deployed.record.definition.as_ref().unwrap();
        if let Some((_, node)) = def.creating_receive() {
            let engine::Activity::Receive { operation, .. } = &node.activity else { unreachable!() };
            let body = input.unwrap_or(serde_json::Value::Object(Default::default())).to_string();
            let m = MessageIn { id: None, operation: operation.clone(), body, create_only: true };
            return self.accept_message(m, Some(process), Batch::default()).await;
        }
        let mut variables: serde_json::Value =
            serde_json::from_str(&def.initial_variables).map_err(anyhow::Error::from)?;
        match (input, &mut variables) {
            (None, _) => {}
            (Some(serde_json::Value::Object(fields)), serde_json::Value::Object(vars)) => vars.extend(fields),
            (Some(_), _) => {
                return Err(Error::new(
                    ErrorKind::BadInput,
                    format!("process '{process}' has no instance-creating receive, so its input must be a JSON object of variables"),
                ))
            }
        }
        let id = new_id();
        let mut snap = Snapshot::new(id.clone(), def, deployed.record.version.clone(), variables.to_string(), now_ms());
        let mut b = Batch::default();
        self.put_new_instance(&mut b, &mut snap);
        self.store.commit(b).await?;
        self.wake(&id);
        Ok(Accepted { message_id: String::new(), instance: id, created: true, duplicate: false })
    }

    /// Makes sure a driver runs for `id` and tells it to look again.
    pub fn wake(&self, id: &str) {
        self.wake_with(id, Wake::Resume)
    }

    /// Hands `wake` to the driver of `id`, starting one if none runs.
    fn wake_with(&self, id: &str, wake: Wake) {
        // A parked instance is not loaded until it is resubmitted; an
        // operator verb still reaches it.
        if !matches!(wake, Wake::Control(..)) && self.is_parked(id) {
            return;
        }
        let mut live = self.live.lock().unwrap();
        let wake = match live.get(id) {
            Some((_, tx)) => match tx.send(wake) {
                Ok(()) => return,
                Err(mpsc::error::SendError(w)) => w,
            },
            None => wake,
        };
        if self.is_shutting_down() {
            return;
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = tx.send(wake);
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
        live.insert(id.to_string(), (generation, tx));
        drop(live);
        tokio::spawn(driver::run(self.clone(), id.to_string(), generation, rx));
    }

    fn load_breakpoints(&self) -> anyhow::Result<()> {
        let rows = self.store.scan_prefix(Cf::Meta, BREAKPOINT_PREFIX)?;
        let mut bps = self.breakpoints.write().unwrap();
        for (k, _) in rows {
            let rest = String::from_utf8_lossy(&k[BREAKPOINT_PREFIX.len()..]).into_owned();
            if let Some((process, path)) = rest.split_once('\0') {
                bps.entry(process.to_string()).or_default().insert(path.to_string());
            }
        }
        Ok(())
    }

    fn load_parked(&self) -> anyhow::Result<()> {
        let rows = self.store.scan_prefix(Cf::Meta, PARKED_PREFIX)?;
        let mut parked = self.parked.lock().unwrap();
        for (k, _) in rows {
            parked.insert(String::from_utf8_lossy(&k[PARKED_PREFIX.len()..]).into_owned());
        }
        Ok(())
    }

    fn parked_key(id: &str) -> Vec<u8> {
        let mut k = PARKED_PREFIX.to_vec();
        k.extend_from_slice(id.as_bytes());
        k
    }

    pub fn is_parked(&self, id: &str) -> bool {
        self.parked.lock().unwrap().contains(id)
    }

    /// An operator resubmits an instance parked by deferred recovery.
    pub async fn resubmit(&self, id: &str) -> Result<(), Error> {
        if !self.is_parked(id) {
            return Err(Error::new(ErrorKind::Conflict, format!("instance {id} is not parked by deferred recovery")));
        }
        let mut b = Batch::default();
        b.delete(Cf::Meta, Self::parked_key(id));
        self.store.commit(b).await?;
        self.parked.lock().unwrap().remove(id);
        self.wake(id);
        Ok(())
    }

    /// Breakpoint paths set on `process`.
    pub fn breakpoints_of(&self, process: &str) -> Vec<String> {
        self.breakpoints.read().unwrap().get(process).map(|b| b.iter().cloned().collect()).unwrap_or_default()
    }

    /// Every breakpoint, as (process, path).
    pub fn breakpoints(&self) -> Vec<(String, String)> {
        let bps = self.breakpoints.read().unwrap();
        bps.iter().flat_map(|(p, paths)| paths.iter().map(move |path| (p.clone(), path.clone()))).collect()
    }

    /// Sets (or clears) a breakpoint on an activity path of a process; the
    /// path must exist in the newest version.
    pub async fn set_breakpoint(&self, process: &str, path: &str, on: bool) -> Result<(), Error> {
        let deployed = self
            .latest(ComponentKind::Process, process)
            .ok_or_else(|| Error::new(ErrorKind::NotFound, format!("no process named '{process}' is deployed")))?;
        let paths = deployed.record.definition.as_ref().unwrap().paths();
        if on && !paths.iter().any(|p| p == path) {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!("process '{process}' has no activity at '{path}'; its paths are: {}", paths.join(", ")),
            ));
        }
        let mut key = BREAKPOINT_PREFIX.to_vec();
        key.extend_from_slice(format!("{process}\0{path}").as_bytes());
        let mut b = Batch::default();
        if on {
            b.put(Cf::Meta, key, Vec::new());
        } else {
            b.delete(Cf::Meta, key);
        }
        self.store.commit(b).await?;
        let mut bps = self.breakpoints.write().unwrap();
        let set = bps.entry(process.to_string()).or_default();
        if on {
            set.insert(path.to_string());
        } else if !set.remove(path) {
            return Err(Error::new(ErrorKind::NotFound, format!("no breakpoint on '{path}' of process '{process}'")));
        }
        Ok(())
    }

    /// Applies an operator verb through the instance's driver and returns
    /// the instance once the verb is committed.
    pub async fn control(&self, id: &str, control: engine::Control) -> Result<Snapshot, Error> {
        use engine::Control as C;
        let snap = self
            .load_snapshot(id)?
            .ok_or_else(|| Error::new(ErrorKind::NotFound, format!("no instance with id '{id}'")))?;
        let conflict = |why: String| Err(Error::new(ErrorKind::Conflict, why));
        if snap.status.is_terminal() {
            return conflict(format!("instance {id} is already {}", snap.status.as_str()));
        }
        match (&control, snap.status) {
            (C::Suspend, Status::Suspended) => return conflict(format!("instance {id} is already suspended")),
            (C::Resume, s) if s != Status::Suspended => return conflict(format!("instance {id} is {}, not suspended", s.as_str())),
            (C::SetVariables(_), s) if s != Status::Suspended => {
                return conflict(format!("instance {id} is {}: suspend it before setting its variables", s.as_str()))
            }
            _ => {}
        }
        if let C::SetVariables(v) = &control {
            serde_json::from_str::<serde_json::Value>(v)
                .map_err(|e| Error::new(ErrorKind::BadInput, format!("variables are not valid JSON: {e}")))?;
        }
        let (tx, rx) = oneshot::channel();
        self.wake_with(id, Wake::Control(control, tx));
        match tokio::time::timeout(std::time::Duration::from_secs(30), rx).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(why))) => return conflict(why),
            Ok(Err(_)) => return Err(Error::new(ErrorKind::Unavailable, "the host is shutting down")),
            Err(_) => {
                return Err(Error::new(
                    ErrorKind::Unavailable,
                    format!("instance {id} is busy in a long step; the verb applies at its next transition"),
                ))
            }
        }
        self.load_snapshot(id)?
            .ok_or_else(|| Error::new(ErrorKind::NotFound, format!("instance {id} ended and kept no final state")))
    }

    /// Hands an activity result to the live driver of `id`; a driver that is
    /// gone (shutdown) will dispatch the call again from the outbox.
    fn deliver(&self, id: &str, wake: Wake) {
        if let Some((_, tx)) = self.live.lock().unwrap().get(id) {
            let _ = tx.send(wake);
        }
    }

    /// A parked driver leaves memory unless a wake slipped in meanwhile.
    fn try_retire(&self, id: &str, rx: &mut mpsc::UnboundedReceiver<Wake>) -> Vec<Wake> {
        let mut live = self.live.lock().unwrap();
        let mut pending = Vec::new();
        while let Ok(w) = rx.try_recv() {
            pending.push(w);
        }
        if pending.is_empty() {
            live.remove(id);
            if live.is_empty() {
                self.live_empty.notify_waiters();
            }
        }
        pending
    }

    /// Removes the driver of `generation` from the live map; a newer driver
    /// of the same instance stays.
    fn forget(&self, id: &str, generation: u64) {
        let mut live = self.live.lock().unwrap();
        if live.get(id).is_some_and(|(g, _)| *g == generation) {
            live.remove(id);
        }
        if live.is_empty() {
            self.live_empty.notify_waiters();
        }
    }

    pub fn in_memory(&self, id: &str) -> bool {
        self.live.lock().unwrap().contains_key(id)
    }

    pub fn live_count(&self) -> usize {
        self.live.lock().unwrap().len()
    }

    pub fn load_snapshot(&self, id: &str) -> anyhow::Result<Option<Snapshot>> {
        match self.store.get(Cf::Instances, id.as_bytes())? {
            Some(b) => Ok(Some(serde_json::from_slice(&b)?)),
            None => Ok(None),
        }
    }

    pub fn history(&self, id: &str) -> anyhow::Result<Vec<HistoryEntry>> {
        let rows = self.store.scan_prefix(Cf::History, &keys::instance_prefix(id))?;
        Ok(rows.iter().filter_map(|(_, v)| serde_json::from_slice(v).ok()).collect())
    }

    pub fn inbox(&self, id: &str) -> anyhow::Result<Vec<Delivery>> {
        let rows = self.store.scan_prefix(Cf::Inbox, &keys::instance_prefix(id))?;
        Ok(rows.iter().filter_map(|(_, v)| serde_json::from_slice(v).ok()).collect())
    }

    pub fn outbox(&self, id: &str) -> anyhow::Result<Vec<engine::Effect>> {
        let rows = self.store.scan_prefix(Cf::Outbox, &keys::instance_prefix(id))?;
        Ok(rows.iter().filter_map(|(_, v)| serde_json::from_slice(v).ok()).collect())
    }

    /// Instances filtered by status and process, oldest first, at most `limit`.
    pub fn list_instances(&self, status: Option<Status>, process: Option<&str>, limit: usize) -> anyhow::Result<Vec<Snapshot>> {
        let mut out = Vec::new();
        self.store.for_each(Cf::Instances, |_, v| {
            if let Ok(s) = serde_json::from_slice::<Snapshot>(v) {
                if status.is_none_or(|st| s.status == st) && process.is_none_or(|p| s.process == p) {
                    out.push(s);
                }
            }
            out.len() < limit
        })?;
        Ok(out)
    }

    /// How many instances have `status`, without holding their snapshots.
    pub fn count_instances(&self, status: Status) -> anyhow::Result<usize> {
        let mut n = 0;
        self.store.for_each(Cf::Instances, |_, v| {
            #[derive(Deserialize)]
            struct StatusOnly {
                status: Status,
            }
            if serde_json::from_slice::<StatusOnly>(v).is_ok_and(|s| s.status == status) {
                n += 1;
            }
            true
        })?;
        Ok(n)
    }

    /// Waits for the reply to a request-response message.
    pub async fn await_reply(&self, message_id: &str, timeout: std::time::Duration) -> Result<Reply, Error> {
        let (tx, rx) = oneshot::channel();
        self.reply_waiters.lock().unwrap().entry(message_id.to_string()).or_default().push(tx);
        if let Some(stored) = self.store.get(Cf::Replies, message_id.as_bytes())? {
            return serde_json::from_slice(&stored).map_err(|e| Error::from(anyhow::Error::from(e)));
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(reply)) => Ok(reply),
            _ => Err(Error::new(
                ErrorKind::Unavailable,
                format!("no reply to message {message_id} within {timeout:?}; the message was accepted and the reply may still come"),
            )),
        }
    }

    fn load_timers(&self) -> anyhow::Result<()> {
        let mut timers = self.timers.lock().unwrap();
        self.store.for_each(Cf::Timers, |k, _| {
            if let Some(t) = keys::parse_timer(k) {
                timers.insert(t);
            }
            true
        })?;
        Ok(())
    }

    /// Fires due timers in due order by waking their instances.
    async fn timer_loop(self) {
        loop {
            if self.is_shutting_down() {
                return;
            }
            let changed = self.timers_changed.notified();
            let next_due = {
                let mut timers = self.timers.lock().unwrap();
                let now = now_ms();
                let mut due = Vec::new();
                while let Some(first) = timers.first() {
                    if first.0 > now {
                        break;
                    }
                    due.push(timers.pop_first().unwrap());
                }
                drop(timers);
                for (_, id, _) in due {
                    self.wake(&id);
                }
                self.timers.lock().unwrap().first().map(|t| t.0)
            };
            match next_due {
                Some(due) => {
                    let wait = std::time::Duration::from_millis(due.saturating_sub(now_ms()));
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = changed => {}
                    }
                }
                None => changed.await,
            }
        }
    }

    /// Resumes every instance that has something to do: running ones,
    /// waiting ones with messages pending, and any with outbox entries (a
    /// finished instance's last sends go out again). Timers resume the rest.
    fn recover(&self) -> anyhow::Result<()> {
        let mut resume = BTreeSet::new();
        let mut park = Vec::new();
        let crashed = !self.clean_start.load(Ordering::SeqCst);
        self.store.for_each(Cf::Instances, |k, v| {
            if let Ok(s) = serde_json::from_slice::<Snapshot>(v) {
                let id = String::from_utf8_lossy(k).into_owned();
                let deferred = self.deployed(&s.version).and_then(|d| d.record.definition.as_ref().map(|d| d.deferred_recovery));
                if crashed && s.status == Status::Running && deferred == Some(true) {
                    park.push(id);
                    return true;
                }
                let pending = || self.store.scan_prefix(Cf::Inbox, &keys::instance_prefix(&id)).map(|r| !r.is_empty()).unwrap_or(true);
                if s.status == Status::Running || (s.status == Status::Waiting && pending()) {
                    resume.insert(id);
                }
            }
            true
        })?;
        let mut orphans = Vec::new();
        self.store.for_each(Cf::Outbox, |k, v| {
            let id = String::from_utf8_lossy(&k[..k.len() - 9]).into_owned();
            if let Ok(effect) = serde_json::from_slice::<engine::Effect>(v) {
                orphans.push((id, effect));
            }
            true
        })?;
        for (id, effect) in orphans {
            match self.load_snapshot(&id)? {
                Some(s) if s.status.is_terminal() => self.dispatch(&id, effect, 1),
                _ => {
                    resume.insert(id);
                }
            }
        }
        if !park.is_empty() {
            eprintln!("cairn: deferred recovery: {} instances parked until resubmitted (cairn resubmit ID)", park.len());
            let mut b = Batch::default();
            for id in &park {
                b.put(Cf::Meta, Self::parked_key(id), Vec::new());
            }
            let store = self.store.clone();
            tokio::spawn(async move {
                if let Err(e) = store.commit(b).await {
                    eprintln!("cairn: recording parked instances: {e}");
                }
            });
            let mut parked = self.parked.lock().unwrap();
            for id in park {
                resume.remove(&id);
                parked.insert(id);
            }
        }
        if !resume.is_empty() {
            eprintln!("cairn: resuming {} instances", resume.len());
        }
        for id in resume {
            self.wake(&id);
        }
        Ok(())
    }

    /// Controlled shutdown: every live instance takes a persistence point and
    /// stops; then the store is flushed.
    pub async fn shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
        self.timers_changed.notify_waiters();
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let notified = self.live_empty.notified();
            {
                let live = self.live.lock().unwrap();
                if live.is_empty() {
                    break;
                }
                for (_, tx) in live.values() {
                    let _ = tx.send(Wake::Shutdown);
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                eprintln!("cairn: {} instances did not stop in time", self.live_count());
                break;
            }
        }
        let mut b = Batch::default();
        b.put(Cf::Meta, CLEAN_SHUTDOWN, Vec::new());
        if let Err(e) = self.store.commit(b).await {
            eprintln!("cairn: recording the controlled shutdown: {e}");
        }
        if let Err(e) = self.store.flush() {
            eprintln!("cairn: flushing the store: {e:#}");
        }
        self.store.close();
    }
}
