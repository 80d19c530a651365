//! Operator: verbs on instances, breakpoints, and instances parked by
//! deferred recovery.
//!
//! Owns the breakpoints (process -> activity paths) and the parked set, each
//! behind its own lock, held briefly and never together. Both are stored in
//! the store's meta table first and changed in memory after the commit.
//!
//! Vocabulary: a *parked* instance is one deferred recovery keeps unloaded
//! after a crash until an operator *releases* it; a *held call* (in transit)
//! is one an operator *resubmits* or *abandons* (see `calls.rs`).

use super::{Error, ErrorKind, Service, Wake};
use cairn_engine::{Control, Snapshot, Status};
use cairn_store::{ComponentKind, Store, Write, WriteBatch};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Mutex, RwLock};
use tokio::sync::oneshot;

pub struct Operator {
    breakpoints: RwLock<HashMap<String, BTreeSet<String>>>,
    parked: Mutex<HashSet<String>>,
}

impl Operator {
    pub async fn load(store: &Store) -> anyhow::Result<Operator> {
        let mut breakpoints: HashMap<String, BTreeSet<String>> = HashMap::new();
        for (process, path) in store.breakpoints().await? {
            breakpoints.entry(process).or_default().insert(path);
        }
        let parked = store.parked().await?.into_iter().collect();
        Ok(Operator { breakpoints: RwLock::new(breakpoints), parked: Mutex::new(parked) })
    }

    pub fn is_parked(&self, id: &str) -> bool {
        self.parked.lock().unwrap().contains(id)
    }

    /// Marks instances parked (the caller records them in the store).
    pub fn park(&self, ids: impl IntoIterator<Item = String>) {
        self.parked.lock().unwrap().extend(ids);
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
}

impl Service {
    /// An operator releases an instance parked by deferred recovery: it is loaded and goes on.
    pub async fn release(&self, id: &str) -> Result<(), Error> {
        if !self.operator.is_parked(id) {
            return Err(Error::new(ErrorKind::Conflict, format!("instance {id} is not parked by deferred recovery")));
        }
        let mut b = WriteBatch::new();
        b.push(Write::Parked { instance: id.to_string(), parked: false });
        self.store.commit(b).await?;
        self.operator.parked.lock().unwrap().remove(id);
        self.wake(id);
        Ok(())
    }

    /// Sets (or clears) a breakpoint on an activity path of a process; the
    /// path must exist in the newest version.
    pub async fn set_breakpoint(&self, process: &str, path: &str, on: bool) -> Result<(), Error> {
        let deployed = self
            .registry
            .latest(ComponentKind::Process, process)
            .ok_or_else(|| Error::new(ErrorKind::NotFound, format!("no process named '{process}' is deployed")))?;
        let paths = deployed.definition().expect("process records hold their definition").paths();
        if on && !paths.iter().any(|p| p == path) {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!("process '{process}' has no activity at '{path}'; its paths are: {}", paths.join(", ")),
            ));
        }
        if !on && !self.operator.breakpoints_of(process).iter().any(|p| p == path) {
            return Err(Error::new(ErrorKind::NotFound, format!("no breakpoint on '{path}' of process '{process}'")));
        }
        let mut b = WriteBatch::new();
        b.push(Write::Breakpoint { process: process.to_string(), path: path.to_string(), set: on });
        self.store.commit(b).await?;
        let mut bps = self.operator.breakpoints.write().unwrap();
        let set = bps.entry(process.to_string()).or_default();
        if on {
            set.insert(path.to_string());
        } else {
            set.remove(path);
        }
        Ok(())
    }

    /// Applies an operator verb through the instance's driver and returns
    /// the instance once the verb is committed.
    pub async fn control(&self, id: &str, control: Control) -> Result<Snapshot, Error> {
        use Control as C;
        let snap = self
            .load_snapshot(id)
            .await?
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
            self.check_variables(&snap.version, v).await?;
        }
        self.send_control(id, control).await
    }

    /// Hands a verb to the instance's driver, waits until it is committed,
    /// and returns the instance as it then stands.
    pub(super) async fn send_control(&self, id: &str, control: Control) -> Result<Snapshot, Error> {
        let conflict = |why: String| Err(Error::new(ErrorKind::Conflict, why));
        let (tx, rx) = oneshot::channel();
        self.drivers.wake(self, id, Wake::Control(control, tx));
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
        self.load_snapshot(id)
            .await?
            .ok_or_else(|| Error::new(ErrorKind::NotFound, format!("instance {id} ended and kept no final state")))
    }
}
