//! The store's health as the host sees it at run time: damage found (records
//! that do not decode, table blocks that fail their checksums, by table and
//! key) and whether writes are failing (I/O errors, a full disk).
//!
//! Owns both registers of one open backend. A
//! scan that meets an undecodable record reports it here and goes on with
//! the next; a point read reports it and returns the `Integrity` error. The
//! host's health reads the register (`degraded` while it is not empty), so
//! nothing damaged is ever skipped silently. `cairn check` and `cairn
//! repair` deal with the damage itself, on a stopped data directory.

use crate::error::StoreError;
use std::collections::BTreeMap;
use std::sync::Mutex;

/// One damaged record or region.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct DamageReport {
    pub table: String,
    /// The record's key (printable), or where a damaged region begins.
    pub key: String,
    pub reason: String,
}

impl std::fmt::Display for DamageReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "table {} key '{}': {}", self.table, self.key, self.reason)
    }
}

/// At most this many reports are kept; the count goes on.
const KEPT: usize = 1000;

/// Both registers of one backend.
#[derive(Default)]
pub struct StoreHealth {
    pub damage: Damage,
    pub writes: WriteHealth,
}

/// Whether the last write failed for a storage reason, and since when.
#[derive(Default)]
pub struct WriteHealth {
    failing: Mutex<Option<(String, std::time::SystemTime)>>,
}

impl WriteHealth {
    /// Records the outcome of a commit: storage failures set the failing
    /// state, a success clears it; stale fences and conflicts are neither.
    pub fn observe(&self, result: &Result<(), StoreError>) {
        match result {
            Ok(()) => self.ok(),
            Err(e @ (StoreError::Storage(_) | StoreError::NoSpace(_))) => self.failed(&e.to_string()),
            Err(_) => {}
        }
    }

    pub fn failed(&self, reason: &str) {
        let mut failing = self.failing.lock().unwrap();
        if failing.is_none() {
            tracing::error!("writes to the store are failing: {reason} (retrying in the background)");
            *failing = Some((reason.to_string(), std::time::SystemTime::now()));
        }
    }

    pub fn ok(&self) {
        let mut failing = self.failing.lock().unwrap();
        if failing.take().is_some() {
            tracing::warn!("writes to the store succeed again");
        }
    }

    /// Why writes fail, and since when; `None` while they succeed.
    pub fn failing(&self) -> Option<(String, std::time::SystemTime)> {
        self.failing.lock().unwrap().clone()
    }
}

/// The damage kept (by table and key: the reason) and how many in all.
type Reports = (BTreeMap<(String, String), String>, u64);

#[derive(Default)]
pub struct Damage {
    reports: Mutex<Reports>,
}

impl Damage {
    /// Records `report`, once per table and key, with a line on stderr the first time.
    pub fn report(&self, report: DamageReport) {
        let mut reports = self.reports.lock().unwrap();
        let (kept, total) = &mut *reports;
        let key = (report.table.clone(), report.key.clone());
        if kept.contains_key(&key) {
            return;
        }
        *total += 1;
        tracing::error!("DAMAGED DATA: {report} (skipped; the host is degraded until it is repaired: stop it and run `cairn check`)");
        if kept.len() < KEPT {
            kept.insert(key, report.reason);
        }
    }

    /// Records an `Integrity` error (other errors are not damage) and hands it back.
    pub fn note(&self, e: StoreError) -> StoreError {
        if let StoreError::Integrity { table, key, reason } = &e {
            self.report(DamageReport { table: table.to_string(), key: key.clone(), reason: reason.clone() });
        }
        e
    }

    /// What was found so far (at most the first 1000) and how many in all.
    pub fn reports(&self) -> (Vec<DamageReport>, u64) {
        let reports = self.reports.lock().unwrap();
        let list = reports
            .0
            .iter()
            .map(|((table, key), reason)| DamageReport { table: table.clone(), key: key.clone(), reason: reason.clone() })
            .collect();
        (list, reports.1)
    }
}
