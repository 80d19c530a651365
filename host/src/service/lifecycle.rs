//! The lifecycle verbs beyond suspend and resume: retry a faulted instance
//! from the activity that faulted (one, or every faulted instance of a
//! process, by fault name), cancel an instance so that its handlers run,
//! and the check that variables an operator gives decode as the
//! definition's variables type, made by the guest in a fresh sandbox.
//!
//! Owns no state: each verb goes to the instance's driver like the other
//! operator verbs (`Service::send_control`), which applies it through the
//! engine (`cairn_engine::machine` lifecycle) and commits it.

use super::{Error, ErrorKind, Service, Wake};
use crate::runtime::{LogContext, Loaded};
use cairn_engine::{Control, Reason, Snapshot, Status};
use cairn_store::{HistoryEntry, InstanceFilter, Write, WriteBatch};
use serde::Serialize;
use std::collections::BTreeMap;
use tokio::sync::mpsc::UnboundedReceiver;

/// The handler id that asks a process component only to decode and encode
/// its variables (the guest SDK's `cairn_guest::CHECK_VARIABLES`).
const CHECK_VARIABLES: u32 = u32::MAX;

/// What a bulk retry did: the instances retried, and those it could not.
#[derive(Debug, Default, Serialize)]
pub struct RetryReport {
    pub retried: Vec<String>,
    pub refused: Vec<Refused>,
}

#[derive(Debug, Serialize)]
pub struct Refused {
    pub id: String,
    pub error: String,
}

impl Service {
    /// Whether `variables` (JSON text) decode as the variables type of
    /// definition version `version`: the guest decodes them in a fresh
    /// sandbox. A component built with an SDK that predates the check knows
    /// no such handler; its variables are only checked to be JSON.
    pub async fn check_variables(&self, version: &str, variables: &str) -> Result<(), Error> {
        let deployed = self
            .registry
            .deployed(version)
            .ok_or_else(|| Error::new(ErrorKind::Conflict, format!("definition version {version} is not deployed")))?;
        let loaded = self.registry.component(&deployed).await.map_err(|e| Error::new(ErrorKind::Internal, format!("{e:#}")))?;
        let Loaded::Process(component) = loaded else {
            return Err(Error::new(ErrorKind::Conflict, format!("version {version} is not a process")));
        };
        let log = LogContext {
            sink: self.guest_log(),
            source: deployed.record.name.clone(),
            instance: String::new(),
            at: "check-variables".into(),
        };
        let checked = self.runtime.call(component, CHECK_VARIABLES, variables, None, None, log).await;
        match checked {
            Ok(_) => Ok(()),
            Err(f) if f.name == "cairn.unknown-handler" => Ok(()),
            Err(f) => Err(Error::new(
                ErrorKind::BadInput,
                format!(
                    "the variables do not decode as the variables of process '{}' (version {version}): {}",
                    deployed.record.name, f.message
                ),
            )),
        }
    }

    /// Retries a faulted instance from the activity that faulted, with new
    /// variables if given (checked by the guest first).
    pub async fn retry(&self, id: &str, variables: Option<String>) -> Result<Snapshot, Error> {
        let snap = self
            .load_snapshot(id)
            .await?
            .ok_or_else(|| Error::new(ErrorKind::NotFound, format!("no instance with id '{id}'")))?;
        if snap.status != Status::Faulted {
            return Err(Error::new(ErrorKind::Conflict, format!("instance {id} is {}, not faulted", snap.status.as_str())));
        }
        if snap.retry.is_none() {
            return Err(Error::new(
                ErrorKind::Conflict,
                format!(
                    "instance {id} kept no position to retry from (a microflow, a fault raised by a scope's deadline, \
                     or one that faulted before retries existed)"
                ),
            ));
        }
        if let Some(v) = &variables {
            let cap = self.config.limits.max_variables_bytes;
            if v.len() > cap {
                return Err(Error::new(ErrorKind::TooLarge, format!("the variables are {} bytes, more than the cap of {cap} bytes", v.len())));
            }
            self.check_variables(&snap.version, v).await?;
        }
        // The driver that faulted it may still be on its way out: a verb
        // handed to it is dropped, and the next wake starts a new one.
        let mut attempts = 0;
        loop {
            match self.send_control(id, Control::Retry { variables: variables.clone() }).await {
                Err(e) if e.message == "the host is shutting down" && !self.is_shutting_down() && attempts < 20 => {
                    attempts += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(25)).await;
                }
                r => return r,
            }
        }
    }

    /// Retries every faulted instance of `process` (of fault `fault` only,
    /// if given) that kept a position to retry from.
    pub async fn retry_faulted(&self, process: &str, fault: Option<&str>) -> Result<RetryReport, Error> {
        let mut report = RetryReport::default();
        let mut after = None;
        loop {
            let filter = InstanceFilter { status: Some(Status::Faulted), process: Some(process.to_string()), after: after.clone(), newest_first: false };
            let page = self.store.instances(&filter, 1000).await?;
            let Some(last) = page.last() else { break };
            after = Some(last.id.clone());
            for snap in page.iter().filter(|s| fault.is_none_or(|f| s.fault.as_ref().is_some_and(|r| r.fault.name == f))) {
                match self.retry(&snap.id, None).await {
                    Ok(_) => report.retried.push(snap.id.clone()),
                    Err(e) => report.refused.push(Refused { id: snap.id.clone(), error: e.message }),
                }
            }
        }
        Ok(report)
    }
}

/// What a bulk migration did: the instances moved, and those it could not.
#[derive(Debug, Default, Serialize)]
pub struct MigrateReport {
    pub migrated: Vec<String>,
    pub refused: Vec<Refused>,
}

impl Service {
    /// Moves a waiting or suspended instance to version `to` of its
    /// definition, its position mapped by activity path (`map`: old path ->
    /// new path for activities that moved), its variables checked by the
    /// target version's guest. One write, fenced like a persistence point,
    /// with a `migrated` history entry.
    pub async fn migrate(&self, id: &str, to: &str, map: &BTreeMap<String, String>) -> Result<Snapshot, Error> {
        let snap = self
            .load_snapshot(id)
            .await?
            .ok_or_else(|| Error::new(ErrorKind::NotFound, format!("no instance with id '{id}'")))?;
        let refuse = |kind: ErrorKind, why: String| Error::new(kind, format!("instance {id} cannot move to version {to}: {why}"));
        if !matches!(snap.status, Status::Waiting | Status::Suspended) {
            return Err(refuse(ErrorKind::Conflict, format!("it is {}; only a waiting or suspended instance moves", snap.status.as_str())));
        }
        if snap.version == to {
            return Err(refuse(ErrorKind::Conflict, "it is on that version already".into()));
        }
        // A waiting instance leaves memory once its driver idles out
        // (`serve --idle-ms`, at once by default): give it a moment.
        for _ in 0..40 {
            if !self.drivers.in_memory(id) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        if self.drivers.in_memory(id) {
            return Err(refuse(ErrorKind::Conflict, "it is in memory, busy: try again once it waits".into()));
        }
        let from = self.registry.deployed(&snap.version).and_then(|d| d.record.definition.clone());
        let from = from.ok_or_else(|| refuse(ErrorKind::Conflict, format!("its own version {} is not deployed", snap.version)))?;
        let target = self.registry.deployed(to).and_then(|d| d.record.definition.clone());
        let target = target.ok_or_else(|| Error::new(ErrorKind::NotFound, format!("no process version '{to}' is deployed")))?;
        let mut moved = cairn_engine::migration::migrate(&snap, &from, &target, map).map_err(|e| refuse(ErrorKind::Conflict, e))?;
        self.check_variables(to, &snap.variables).await.map_err(|e| refuse(e.kind, e.message))?;
        moved.version = to.to_string();
        moved.fence = snap.fence + 1;
        moved.updated_ms = crate::now_ms();
        let mut b = WriteBatch::new();
        b.fence(id, snap.fence, moved.fence);
        let path = moved.path(&target);
        let entry = HistoryEntry { fence: moved.fence, at_ms: moved.updated_ms, reason: Reason::Migrated, status: moved.status, path, resource_conflicts: 0, moved_by: Vec::new() };
        b.push(Write::History { instance: id.to_string(), entry });
        b.push(Write::Instance(Box::new(moved.clone())));
        self.store.commit(b).await.map_err(|e| match e {
            cairn_store::StoreError::Stale { .. } => refuse(ErrorKind::Conflict, "it moved meanwhile: try again".into()),
            e => e.into(),
        })?;
        // Whatever arrived meanwhile is taken up by the target version.
        if moved.status == Status::Waiting {
            self.wake(id);
        }
        Ok(moved)
    }

    /// Migrates every waiting or suspended instance of version `from` that
    /// can move to `to`, and reports the rest with why.
    pub async fn migrate_version(&self, from: &str, to: &str, map: &BTreeMap<String, String>) -> Result<MigrateReport, Error> {
        let process = self
            .registry
            .deployed(from)
            .map(|d| d.record.name.clone())
            .ok_or_else(|| Error::new(ErrorKind::NotFound, format!("no process version '{from}' is deployed")))?;
        let mut report = MigrateReport::default();
        for status in [Status::Waiting, Status::Suspended] {
            let mut after = None;
            loop {
                let filter = InstanceFilter { status: Some(status), process: Some(process.clone()), after: after.clone(), newest_first: false };
                let page = self.store.instances(&filter, 1000).await?;
                let Some(last) = page.last() else { break };
                after = Some(last.id.clone());
                for snap in page.iter().filter(|s| s.version == from) {
                    match self.migrate(&snap.id, to, map).await {
                        Ok(_) => report.migrated.push(snap.id.clone()),
                        Err(e) => report.refused.push(Refused { id: snap.id.clone(), error: e.message }),
                    }
                }
            }
        }
        Ok(report)
    }
}

/// A driver started for a terminal instance goes on only for a retry: the
/// wakes it was started with, the retry first. Any other verb is answered
/// that the instance has ended, and an empty list tells the driver to stop.
pub(super) fn retry_wakes(rx: &mut UnboundedReceiver<Wake>, status: Status) -> Vec<Wake> {
    let mut wakes = Vec::new();
    while let Ok(w) = rx.try_recv() {
        wakes.push(w);
    }
    let is_retry = |w: &Wake| matches!(w, Wake::Control(Control::Retry { .. }, _));
    if !wakes.iter().any(is_retry) {
        for w in wakes {
            if let Wake::Control(_, responder) = w {
                let _ = responder.send(Err(format!("the instance is already {}", status.as_str())));
            }
        }
        return Vec::new();
    }
    wakes.sort_by_key(|w| !is_retry(w));
    wakes
}
