//! Resources: named tables of JSON documents by key, kept in Cairn's own
//! store, that activity components read and write under a deploy grant.
//!
//! Owns nothing in memory but each activity call's `CallResources`: the
//! grant of the calling deployment, the versions the call saw, and its
//! buffered writes. Nothing a call writes reaches the store during the call:
//! the writes travel with its result (`ResourceAccesses`) and commit in the
//! batch of the instance's persistence point that records that result, only
//! if every key the call read or wrote still has the version it saw
//! (`WriteBatch::check`). A conflict rejects the whole batch; the driver
//! then runs the call again from the last persistence point.
//!
//! Isolation: serializable per key set. A call's reads see committed data
//! and its own writes; its commit succeeds only if no other commit changed a
//! key it read or wrote since it read it, so no update is lost.

use super::{Error, ErrorKind, Service};
use crate::now_ms;
use cairn_engine::{ResourceAccesses, ResourceRead, ResourceWrite};
use cairn_store::{ResourceInfo, ResourceRow, Store, Write, WriteBatch};
use std::collections::BTreeMap;

/// The most rows one scan returns.
pub const SCAN_LIMIT: u32 = 1000;

/// One resource a deployment may use, and whether it may write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceGrant {
    pub name: String,
    pub write: bool,
}

impl ResourceGrant {
    /// `NAME` (read and write), `NAME:write` or `NAME:read`.
    pub fn parse(s: &str) -> Result<ResourceGrant, String> {
        let (name, write) = match s.rsplit_once(':') {
            Some((name, "write")) => (name, true),
            Some((name, "read")) => (name, false),
            Some((_, mode)) => return Err(format!("'{s}': the mode '{mode}' is neither read nor write")),
            None => (s, true),
        };
        check_name(name)?;
        Ok(ResourceGrant { name: name.to_string(), write })
    }
}

/// A resource name: letters, digits, '-', '_' and '.'.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
        return Err(format!("'{name}' is not a resource name: use letters, digits, '-', '_' and '.'"));
    }
    Ok(())
}

/// What one activity call does with resources (see the module doc).
pub struct CallResources {
    store: Store,
    runtime: tokio::runtime::Handle,
    grants: Vec<ResourceGrant>,
    /// (table, key) -> the version the call first saw.
    seen: BTreeMap<(String, String), u64>,
    /// (table, key) -> the call's latest write (None: deleted).
    overlay: BTreeMap<(String, String), Option<String>>,
    writes: Vec<ResourceWrite>,
}

impl CallResources {
    /// `earlier`: writes of the same transaction not committed yet (earlier
    /// calls of an atomic scope or a microflow), which this call reads.
    pub fn new(store: Store, runtime: tokio::runtime::Handle, grants: Vec<ResourceGrant>, earlier: Vec<ResourceWrite>) -> CallResources {
        let overlay = earlier.into_iter().map(|w| ((w.table, w.key), w.value)).collect();
        CallResources { store, runtime, grants, seen: BTreeMap::new(), overlay, writes: Vec::new() }
    }

    /// What the call read and wrote, for its result.
    pub fn take(&mut self) -> ResourceAccesses {
        let reads = std::mem::take(&mut self.seen)
            .into_iter()
            .map(|((table, key), version)| ResourceRead { table, key, version })
            .collect();
        self.overlay.clear();
        ResourceAccesses { reads, writes: std::mem::take(&mut self.writes) }
    }

    fn allow(&self, table: &str, write: bool) -> Result<(), String> {
        match self.grants.iter().find(|g| g.name == table) {
            Some(g) if g.write || !write => Ok(()),
            Some(_) => Err(format!("cairn.resource-denied: this activity may read resource '{table}' but not write it")),
            None => {
                let granted: Vec<&str> = self.grants.iter().map(|g| g.name.as_str()).collect();
                let granted = if granted.is_empty() { "none".to_string() } else { granted.join(", ") };
                Err(format!("cairn.resource-denied: this activity is not granted resource '{table}' (granted: {granted})"))
            }
        }
    }

    /// Waits for a store read from a guest's host call (a synchronous
    /// import, on the runtime worker that runs the guest's fiber): the
    /// worker's other tasks go to another thread meanwhile.
    fn wait_for<F: std::future::Future>(&self, read: F) -> F::Output {
        tokio::task::block_in_place(|| self.runtime.block_on(read))
    }

    /// The committed version and value of a key, remembering the version.
    fn committed(&mut self, table: &str, key: &str) -> Result<Option<String>, String> {
        let (version, value) =
            self.wait_for(self.store.resource_get(table, key)).map_err(|e| format!("reading resource '{table}': {e}"))?;
        self.seen.entry((table.to_string(), key.to_string())).or_insert(version);
        Ok(value)
    }

    fn write(&mut self, table: &str, key: &str, value: Option<String>) -> Result<(), String> {
        self.allow(table, true)?;
        let k = (table.to_string(), key.to_string());
        if !self.seen.contains_key(&k) {
            self.committed(table, key)?;
        }
        self.overlay.insert(k, value.clone());
        self.writes.push(ResourceWrite { table: table.to_string(), key: key.to_string(), value });
        Ok(())
    }
}

impl crate::resources::ResourceAccess for CallResources {
    fn get(&mut self, table: &str, key: &str) -> Result<Option<String>, String> {
        self.allow(table, false)?;
        if let Some(v) = self.overlay.get(&(table.to_string(), key.to_string())) {
            return Ok(v.clone());
        }
        self.committed(table, key)
    }

    fn put(&mut self, table: &str, key: &str, value: &str) -> Result<(), String> {
        serde_json::from_str::<serde_json::Value>(value).map_err(|e| format!("the value for key '{key}' is not JSON: {e}"))?;
        self.write(table, key, Some(value.to_string()))
    }

    fn delete(&mut self, table: &str, key: &str) -> Result<(), String> {
        self.write(table, key, None)
    }

    fn scan(&mut self, table: &str, prefix: &str, after: Option<&str>, limit: u32) -> Result<Vec<(String, String)>, String> {
        self.allow(table, false)?;
        let limit = limit.min(SCAN_LIMIT) as usize;
        let rows = self
            .wait_for(self.store.resource_scan(table, prefix, after, limit))
            .map_err(|e| format!("scanning resource '{table}': {e}"))?;
        let mut merged: BTreeMap<String, String> = BTreeMap::new();
        for ResourceRow { key, version, value } in rows {
            self.seen.entry((table.to_string(), key.clone())).or_insert(version);
            merged.insert(key, value);
        }
        // The call's own writes in range replace, add or remove rows.
        for ((t, key), value) in &self.overlay {
            if t != table || !key.starts_with(prefix) || after.is_some_and(|a| key.as_str() <= a) {
                continue;
            }
            match value {
                Some(v) => merged.insert(key.clone(), v.clone()),
                None => merged.remove(key),
            };
        }
        Ok(merged.into_iter().take(limit).collect())
    }
}

/// The store writes and checks of a successful call's resource accesses.
pub fn accesses_into(accesses: &ResourceAccesses, b: &mut WriteBatch) {
    for r in &accesses.reads {
        b.check(&r.table, &r.key, r.version);
    }
    for w in &accesses.writes {
        match &w.value {
            Some(value) => b.push(Write::ResourcePut { name: w.table.clone(), key: w.key.clone(), value: value.clone() }),
            None => b.push(Write::ResourceDelete { name: w.table.clone(), key: w.key.clone() }),
        }
    }
}

impl Service {
    /// Creates a resource (a no-op for one that exists).
    pub async fn create_resource(&self, name: &str) -> Result<(ResourceInfo, bool), Error> {
        check_name(name).map_err(|e| Error::new(ErrorKind::BadInput, e))?;
        if let Some(existing) = self.store.resources().await?.into_iter().find(|r| r.name == name) {
            return Ok((existing, false));
        }
        let info = ResourceInfo { name: name.to_string(), created_ms: now_ms() };
        let mut b = WriteBatch::new();
        b.push(Write::ResourceCreate(info.clone()));
        self.store.commit(b).await?;
        Ok((info, true))
    }

    /// The resource named `name`, or a 404 that lists the ones there are.
    pub async fn resource(&self, name: &str) -> Result<ResourceInfo, Error> {
        let all = self.store.resources().await?;
        let names: Vec<String> = all.iter().map(|r| r.name.clone()).collect();
        all.into_iter().find(|r| r.name == name).ok_or_else(|| {
            let known = if names.is_empty() { "none; create one with `cairn resource create NAME`".to_string() } else { names.join(", ") };
            Error::new(ErrorKind::NotFound, format!("no resource named '{name}' (resources: {known})"))
        })
    }

    /// Checks that every granted resource exists.
    pub async fn check_resource_grants(&self, grants: &[String]) -> Result<(), Error> {
        for g in grants {
            let grant = ResourceGrant::parse(g).map_err(|e| Error::new(ErrorKind::BadInput, format!("--resource {e}")))?;
            self.resource(&grant.name).await?;
        }
        Ok(())
    }
}
