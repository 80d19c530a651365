//! The registry: every deployed component version, loaded and ready to run.
//!
//! Owns the in-memory map of versions (one `RwLock`, never held across an
//! await or while taking another lock). Deploy compiles and checks a
//! component, stores its record and bytes in one batch, then publishes it
//! here; nothing is stored unless every check passes. At start only the
//! records are read: a version's compiled component is loaded on its first
//! use (`Registry::component`), from the compiled cache when it holds it.

use super::{hex, Error, ErrorKind};
use crate::now_ms;
use super::resources::ResourceGrant;
use crate::outbound::UrlPrefix;
use crate::runtime::{Loaded, Runtime};
use cairn_engine::Definition;
use cairn_store::{ComponentKind, DeployedRecord, Store, Write, WriteBatch};
use sha2::Digest;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, RwLock};

pub struct Deployed {
    pub record: DeployedRecord,
    /// The compiled component: set at deploy, or on first use after a start
    /// (`Registry::component`).
    component: std::sync::OnceLock<Loaded>,
    /// The deployment's outbound HTTP grant, parsed from `record.allow_http`.
    pub http_grant: Vec<UrlPrefix>,
    /// The deployment's resource grant, parsed from `record.resources`.
    pub resource_grants: Vec<ResourceGrant>,
}

impl Deployed {
    fn new(record: DeployedRecord, component: Option<Loaded>) -> Result<Deployed, String> {
        let http_grant = record.allow_http.iter().map(|p| UrlPrefix::parse(p).map_err(|e| format!("'{p}': {e}"))).collect::<Result<_, _>>()?;
        let resource_grants = record.resources.iter().map(|g| ResourceGrant::parse(g)).collect::<Result<_, _>>()?;
        let loaded = std::sync::OnceLock::new();
        if let Some(c) = component {
            let _ = loaded.set(c);
        }
        Ok(Deployed { record, component: loaded, http_grant, resource_grants })
    }

    /// The definition of a process version.
    pub fn definition(&self) -> Option<&Definition> {
        self.record.definition.as_ref()
    }
}

#[derive(Default)]
struct Versions {
    by_version: HashMap<String, Arc<Deployed>>,
    /// (kind, name) -> newest version.
    latest: HashMap<(ComponentKind, String), String>,
    /// The activities whose newest version is pure (`Registry::pure_activities`),
    /// worked out again at each deploy.
    pure: Arc<BTreeSet<String>>,
}

impl Versions {
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
        self.pure = Arc::new(self.pure_now());
    }

    fn latest(&self, kind: ComponentKind, name: &str) -> Option<Arc<Deployed>> {
        let v = self.latest.get(&(kind, name.to_string()))?;
        self.by_version.get(v).cloned()
    }

    fn pure_now(&self) -> BTreeSet<String> {
        self.latest
            .iter()
            .filter(|((kind, _), _)| *kind == ComponentKind::Activity)
            .filter_map(|((_, name), version)| {
                let d = self.by_version.get(version)?;
                // An external activity's tasks go to workers: never inline.
                (d.http_grant.is_empty() && d.resource_grants.is_empty() && d.record.external.is_none()).then(|| name.clone())
            })
            .collect()
    }
}

pub struct Registry {
    versions: RwLock<Versions>,
    /// Where components are loaded from on first use.
    store: Store,
    runtime: Arc<Runtime>,
}

impl Registry {
    /// Reads every stored version's record; components load on first use.
    pub async fn load(store: &Store, runtime: &Arc<Runtime>) -> anyhow::Result<Registry> {
        let mut versions = Versions::default();
        for record in store.definitions().await? {
            let external = record.external.is_some().then_some(Loaded::External);
            let what = format!("{} {}", record.name, record.version);
            let deployed = Deployed::new(record, external).map_err(|e| anyhow::anyhow!("the grant of {what}: {e}"))?;
            versions.insert(Arc::new(deployed));
        }
        Ok(Registry { versions: RwLock::new(versions), store: store.clone(), runtime: runtime.clone() })
    }

    /// Cluster mode: takes in the versions another host deployed since
    /// (their records; components load on first use). Returns how many.
    pub async fn refresh(&self) -> anyhow::Result<usize> {
        let records = self.store.definitions().await?;
        let mut versions = self.versions.write().unwrap();
        let mut added = 0;
        for record in records {
            if versions.by_version.contains_key(&record.version) {
                continue;
            }
            let external = record.external.is_some().then_some(Loaded::External);
            let what = format!("{} {}", record.name, record.version);
            match Deployed::new(record, external) {
                Ok(d) => {
                    versions.insert(Arc::new(d));
                    added += 1;
                }
                Err(e) => tracing::error!("the grant of {what}: {e}"),
            }
        }
        Ok(added)
    }

    /// The compiled component of `d`, loaded on its first use since the
    /// start: from the compiled cache when it holds it, else compiled from
    /// the stored bytes (and cached).
    pub async fn component<'d>(&self, d: &'d Deployed) -> anyhow::Result<&'d Loaded> {
        if let Some(loaded) = d.component.get() {
            return Ok(loaded);
        }
        let version = &d.record.version;
        let loaded = match tokio::task::block_in_place(|| self.runtime.load_cached(version)) {
            Some(loaded) => loaded,
            None => {
                let bytes = self
                    .store
                    .component(version)
                    .await?
                    .ok_or_else(|| anyhow::anyhow!("the component bytes of {} {version} are missing (see `cairn check`)", d.record.name))?;
                tokio::task::block_in_place(|| self.runtime.load(version, &bytes))
                    .map_err(|e| anyhow::anyhow!("loading {} {version}: {e:#}", d.record.name))?
            }
        };
        // Two first uses at once may both load it; one is kept.
        let _ = d.component.set(loaded);
        Ok(d.component.get().expect("set above"))
    }

    pub fn deployed(&self, version: &str) -> Option<Arc<Deployed>> {
        self.versions.read().unwrap().by_version.get(version).cloned()
    }

    pub fn latest(&self, kind: ComponentKind, name: &str) -> Option<Arc<Deployed>> {
        self.versions.read().unwrap().latest(kind, name)
    }

    /// The activity components whose newest version holds no outbound
    /// capability (no HTTP grant, no resource grant): a call of one is a
    /// pure function of its input, run inline with no dispatch persistence
    /// point (`Machine::set_pure_activities`).
    pub fn pure_activities(&self) -> Arc<BTreeSet<String>> {
        self.versions.read().unwrap().pure.clone()
    }

    /// The operations of the newest version of activity `name` if it is
    /// external (empty: any operation).
    pub fn external(&self, name: &str) -> Option<Vec<String>> {
        self.latest(ComponentKind::Activity, name).and_then(|d| d.record.external.clone())
    }

    /// Deploys an external activity: a name and the operations its workers
    /// offer, no component. The version is a digest of both.
    pub async fn deploy_external(&self, store: &Store, name: &str, operations: Vec<String>) -> Result<(DeployedRecord, bool), Error> {
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
            return Err(Error::new(ErrorKind::BadInput, format!("activity name '{name}' may use only letters, digits, '-', '_' and '.' (and not be empty)")));
        }
        if let Some(op) = operations.iter().find(|o| o.is_empty() || o.len() > 256) {
            return Err(Error::new(ErrorKind::BadInput, format!("operation name '{op}' must be 1 to 256 bytes")));
        }
        let mut digest = sha2::Sha256::new();
        digest.update(format!("external\0{name}\0{}", operations.join("\0")).as_bytes());
        let version = hex(&digest.finalize())[..16].to_string();
        if let Some(existing) = self.deployed(&version) {
            return Ok((existing.record.clone(), false));
        }
        let record = DeployedRecord {
            name: name.to_string(),
            version,
            kind: ComponentKind::Activity,
            deployed_ms: now_ms(),
            size: 0,
            definition: None,
            external: Some(operations),
            allow_http: Vec::new(),
            resources: Vec::new(),
        };
        let mut b = WriteBatch::new();
        b.push(Write::Definition { record: Box::new(record.clone()), component: Vec::new() });
        let deployed = Deployed::new(record.clone(), Some(Loaded::External)).map_err(|e| Error::new(ErrorKind::BadInput, e))?;
        store.commit(b).await?;
        self.versions.write().unwrap().insert(Arc::new(deployed));
        Ok((record, true))
    }

    /// Every deployed process version.
    pub fn processes(&self) -> Vec<Arc<Deployed>> {
        let v = self.versions.read().unwrap();
        v.by_version.values().filter(|d| d.record.kind == ComponentKind::Process).cloned().collect()
    }

    /// Whether `d` is the newest version of its name.
    pub fn is_latest(&self, d: &Deployed) -> bool {
        let v = self.versions.read().unwrap();
        v.latest.get(&(d.record.kind, d.record.name.clone())) == Some(&d.record.version)
    }

    /// Every deployed version, newest first, and whether it is the newest of its name.
    pub fn definitions(&self) -> Vec<(DeployedRecord, bool)> {
        let v = self.versions.read().unwrap();
        let mut out: Vec<(DeployedRecord, bool)> = v
            .by_version
            .values()
            .map(|d| {
                let latest = v.latest.get(&(d.record.kind, d.record.name.clone())) == Some(&d.record.version);
                (d.record.clone(), latest)
            })
            .collect();
        out.sort_by(|a, b| b.0.deployed_ms.cmp(&a.0.deployed_ms).then(a.0.name.cmp(&b.0.name)));
        out
    }

    /// Deploys a component: compiles it, checks its world, and for a process
    /// reads and validates its definition. Nothing is stored unless all pass.
    pub async fn deploy(
        &self,
        store: &Store,
        runtime: &Arc<Runtime>,
        bytes: Vec<u8>,
        name: Option<String>,
        allow_http: Vec<String>,
        resources: Vec<String>,
    ) -> Result<(DeployedRecord, bool), Error> {
        for prefix in &allow_http {
            crate::outbound::UrlPrefix::parse(prefix)
                .map_err(|e| Error::new(ErrorKind::BadInput, format!("--allow-http '{prefix}': {e}")))?;
        }
        // The grant is part of the version: the same bytes with another grant
        // are another version (the newest of its name).
        let mut digest = sha2::Sha256::new();
        digest.update(&bytes);
        if !allow_http.is_empty() {
            digest.update(format!("\0allow-http\0{}", allow_http.join("\0")).as_bytes());
        }
        if !resources.is_empty() {
            digest.update(format!("\0resources\0{}", resources.join("\0")).as_bytes());
        }
        let version = hex(&digest.finalize())[..16].to_string();
        if let Some(existing) = self.deployed(&version) {
            return Ok((existing.record.clone(), false));
        }
        let rt = runtime.clone();
        let v = version.clone();
        let (mut record, component, bytes) = tokio::task::spawn_blocking(move || compile_and_check(&rt, &v, bytes, name))
            .await
            .map_err(|e| Error::new(ErrorKind::Internal, format!("deploy task failed: {e}")))??;
        if let Some(def) = &record.definition {
            self.check_creation_conflicts(def)?;
            if !allow_http.is_empty() || !resources.is_empty() {
                return Err(Error::new(
                    ErrorKind::BadInput,
                    format!("process '{}' cannot be granted outbound HTTP or resources: process handlers decide, activities act; grant them to an activity component", def.name),
                ));
            }
        }
        record.allow_http = allow_http;
        record.resources = resources;
        let mut b = WriteBatch::new();
        b.push(Write::Definition { record: Box::new(record.clone()), component: bytes });
        let deployed = Deployed::new(record.clone(), Some(component)).map_err(|e| Error::new(ErrorKind::BadInput, format!("grant {e}")))?;
        store.commit(b).await?;
        self.versions.write().unwrap().insert(Arc::new(deployed));
        Ok((record, true))
    }

    /// One process name may create instances on an operation: otherwise a
    /// message would not know which process to start.
    fn check_creation_conflicts(&self, def: &Definition) -> Result<(), Error> {
        let v = self.versions.read().unwrap();
        for sub in def.subscriptions().into_iter().filter(|s| s.creates_instance) {
            for d in v.by_version.values() {
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

fn compile_and_check(
    runtime: &Runtime,
    version: &str,
    bytes: Vec<u8>,
    name: Option<String>,
) -> Result<(DeployedRecord, Loaded, Vec<u8>), Error> {
    let loaded = runtime.load(version, &bytes).map_err(|e| Error::new(ErrorKind::BadInput, format!("{e:#}")))?;
    let size = bytes.len() as u64;
    let (name, kind, definition) = match &loaded {
        Loaded::Process(p) => {
            // On a blocking thread (the deploy's spawn_blocking): the call is
            // a future, run to its end here.
            let def = tokio::runtime::Handle::current()
                .block_on(runtime.describe(p))
                .map_err(|f| Error::new(ErrorKind::Invalid, format!("describe failed: {}: {}", f.name, f.message)))?;
            def.validate()
                .map_err(|e| Error::new(ErrorKind::Invalid, format!("invalid definition of process '{}': {e}", def.name)))?;
            // A process names itself; `name` only names activity components.
            (def.name.clone(), ComponentKind::Process, Some(def))
        }
        Loaded::External => unreachable!("runtime.load never makes an external activity"),
        Loaded::Activity(_) => {
            let name = name.filter(|n| !n.is_empty()).ok_or_else(|| {
                Error::new(ErrorKind::BadInput, "an activity component needs a name: pass ?name=NAME (the CLI uses the file name)")
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
    let record =
        DeployedRecord { name, version: version.to_string(), kind, deployed_ms: now_ms(), size, definition, external: None, allow_http: Vec::new(), resources: Vec::new() };
    Ok((record, loaded, bytes))
}

impl super::Service {
    /// Deploys a component (see `Registry::deploy`).
    pub async fn deploy(
        &self,
        bytes: Vec<u8>,
        name: Option<String>,
        allow_http: Vec<String>,
        resources: Vec<String>,
    ) -> Result<(DeployedRecord, bool), Error> {
        self.check_resource_grants(&resources).await?;
        self.registry.deploy(&self.store, &self.runtime, bytes, name, allow_http, resources).await
    }

    /// Deploys an external activity (see `Registry::deploy_external`).
    pub async fn deploy_external(&self, name: &str, operations: Vec<String>) -> Result<(DeployedRecord, bool), Error> {
        self.registry.deploy_external(&self.store, name, operations).await
    }
}
