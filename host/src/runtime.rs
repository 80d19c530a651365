//! The WebAssembly runtime: compiles components, checks their world, and runs
//! one handler or activity call per fresh sandboxed instance.
//!
//! Architecture invariant: no guest memory survives a call. Every call makes a
//! new `Store` and instance from a pre-instantiated component, bounded by an
//! epoch deadline (wall time) and a memory cap; a guest that traps, runs out
//! of time or exceeds its memory becomes a `Fault`, never a host error.
//! Guests get WASI p2 with an empty context (no files, sockets, environment)
//! plus `cairn:log/logging`. Activity components may also import
//! `wasi:http/types` and `wasi:http/outgoing-handler`, every request passing
//! the policy hooks of `outbound.rs`, and `cairn:resource/tables`, every
//! operation going to the call's `ResourceAccess` (`resources.rs`); process
//! components may not (process handlers decide, activities act), so there
//! are two linkers and a component is linked by the world its exports tell,
//! and refused at load if a process imports wasi:http. A process component
//! built against the first release of the process world
//! (`wit/process-legacy`, before the later language constructs) links to
//! that world when it does not match the current one, so components already
//! deployed keep running; both worlds' definitions convert with the engine's
//! `definition_from_wit!`.
//!
//! The deadline also bounds WASI sleeps and polls, which epochs cannot
//! interrupt (`bound_sleeps`); each call's guest log is bounded by a quota
//! (`guestlog::Quota`). Compiled components are cached as
//! `DATA/compiled/<digest>.cwasm`, each file with a header holding the
//! engine configuration's fingerprint and the sha256 of the compiled bytes;
//! a file that does not match, cannot be read or does not deserialize is
//! compiled again from the stored component, so damaged machine code is
//! never executed. The host compiles in a child process of its own
//! executable (`compile_component_main`), so that the compiler neither stays
//! resident nor takes the host down when it crashes.

use crate::outbound::{self, OutboundCall};
use crate::resources::{self, ResourceCall};
use cairn_engine::{self as engine, HandlerOutput};
use anyhow::{anyhow, bail, Context, Result};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasmtime::component::{Component, ComponentExportIndex, Func, Linker, ResourceTable, TypedFunc};
use wasmtime::{Engine, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

/// The `bindgen!` output of the worlds; `resources.rs` implements the host
/// side of `cairn:resource/tables` from here. `process_legacy` is the first
/// release of the process world (`wit/process-legacy`): components built
/// against it keep deploying and running.
pub(crate) mod bindings {
    pub mod process {
        wasmtime::component::bindgen!({
            world: "cairn:process/process",
            path: "../wit/process",
            exports: { default: async },
        });
    }
    pub mod process_legacy {
        wasmtime::component::bindgen!({
            world: "cairn:process/process",
            path: "../wit/process-legacy",
            with: { "cairn:log/logging": super::process::cairn::log::logging },
            exports: { default: async },
        });
    }
    pub mod activity {
        wasmtime::component::bindgen!({
            world: "cairn:activity/activity",
            path: "../wit/activity",
            with: { "cairn:log/logging": super::process::cairn::log::logging },
            exports: { default: async },
        });
    }
}

use bindings::process::cairn::log::logging;
use bindings::process::cairn::process::types as wit;
use bindings::process_legacy::cairn::process::types as legacy_wit;

/// Limits applied to every guest call.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest linear memory a guest may grow to, in bytes.
    pub memory_bytes: usize,
    /// Wall-clock budget of one call.
    pub call_timeout: Duration,
    /// Largest variables (and handler output) a handler call may leave, in
    /// bytes; more faults the call with `cairn.too-large` (the driver checks).
    pub max_variables_bytes: usize,
    /// Guest log bytes one handler or activity call may write; records
    /// beyond are dropped and one notice says how many.
    pub guest_log_bytes_per_call: usize,
    /// Guest log bytes the calls of one instance may write while the host runs.
    pub guest_log_bytes_per_instance: usize,
    /// Fuel (about one unit per WebAssembly instruction) one call may burn,
    /// beside the wall-clock deadline; `None`: not metered. Running out
    /// faults the call with `cairn.out-of-fuel`.
    pub fuel_per_call: Option<u64>,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            memory_bytes: 128 << 20,
            call_timeout: Duration::from_secs(10),
            max_variables_bytes: 1 << 20,
            guest_log_bytes_per_call: 1 << 20,
            guest_log_bytes_per_instance: 16 << 20,
            fuel_per_call: None,
        }
    }
}

/// Where guest log records go, and what each record is stamped with.
#[derive(Clone)]
pub struct LogContext {
    pub sink: Arc<crate::guestlog::GuestLog>,
    /// Definition or activity name.
    pub source: String,
    pub instance: String,
    /// Activity path, or the idempotency key of an activity call.
    pub at: String,
}

struct GuestState {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: Limiter,
    log: Option<LogContext>,
    /// When the running call's budget ends: WASI sleeps and polls end by it.
    deadline: Instant,
    /// What is left of this call's guest log quota.
    log_quota: crate::guestlog::Quota,
    /// Reached only by activity components (only their linker has wasi:http).
    http: WasiHttpCtx,
    /// The outbound policy of this call, and what its requests met.
    hooks: outbound::Hooks,
    /// The resource access of this call, and the errors it gave. Reached
    /// only by activity components (only their linker has cairn:resource).
    resources: ResourceCall,
}

impl WasiView for GuestState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl WasiHttpView for GuestState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView { ctx: &mut self.http, table: &mut self.table, hooks: &mut self.hooks }
    }
}

impl logging::Host for GuestState {
    fn log(&mut self, level: logging::Level, message: String, fields: Vec<(String, String)>) {
        if let Some(ctx) = &self.log {
            let level = match level {
                logging::Level::Trace => "trace",
                logging::Level::Debug => "debug",
                logging::Level::Info => "info",
                logging::Level::Warn => "warn",
                logging::Level::Error => "error",
            };
            ctx.sink.write_within(ctx, level, &message, &fields, &mut self.log_quota);
        }
    }
}

impl GuestState {
    /// Ends a call's guest log: one notice if records were dropped, and a
    /// fresh quota for the next call (of a session).
    fn end_call_log(&mut self, quota: usize) {
        let used = std::mem::replace(&mut self.log_quota, crate::guestlog::Quota::new(quota));
        if let Some(ctx) = &self.log {
            ctx.sink.notice_dropped(ctx, &used);
        }
    }
}

/// Memory cap per store; remembers that it refused, so the resulting trap
/// can be reported as what it is.
struct Limiter {
    max_memory: usize,
    refused: Arc<AtomicBool>,
}

impl wasmtime::ResourceLimiter for Limiter {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        let ok = desired <= self.max_memory;
        if !ok {
            self.refused.store(true, Ordering::Relaxed);
        }
        Ok(ok)
    }
    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

/// A live process instance for an atomic scope's handlers. A call that
/// traps poisons it: drop it and start another.
pub struct Session {
    store: Store<GuestState>,
    call: CallExport,
    refused: Arc<AtomicBool>,
}

/// An instance's `call` export, of the world its component was linked to.
enum CallExport {
    Current(Func),
    Legacy(Func),
}

impl CallExport {
    /// Calls the export: the handler's output, or the fault it returned.
    ///
    /// The bindings' instantiation would look up and type-check every
    /// export on every instance, `describe` and its large definition type
    /// too (3% of the host's CPU per workflow); handler calls need `call`
    /// only, found by an index taken at link, and its type was checked
    /// there, once per component (`ProcessPre::new`).
    async fn call(
        &self,
        store: &mut Store<GuestState>,
        params: (u32, &str, Option<&str>, Option<&str>),
    ) -> wasmtime::Result<Result<HandlerOutput, engine::Fault>> {
        Ok(match self {
            CallExport::Current(func) => {
                // SAFETY: `link` made this component's `ProcessPre::Current`,
                // whose construction checked that `call` has the current
                // world's type, which these parameters and results spell
                // (as the bindings' own `call_call` does).
                #[allow(unsafe_code)]
                let typed = unsafe {
                    TypedFunc::<(u32, &str, Option<&str>, Option<&str>), (Result<wit::CallOutput, wit::Fault>,)>::new_unchecked(*func)
                };
                let (result,) = typed.call_async(&mut *store, params).await?;
                result
                    .map(|out| HandlerOutput { variables: out.variables, output: out.output })
                    .map_err(|f| engine::Fault { name: f.name, message: f.message, data: f.data })
            }
            CallExport::Legacy(func) => {
                // SAFETY: as above, for the first release of the world
                // (`ProcessPre::Legacy`) and its types.
                #[allow(unsafe_code)]
                let typed = unsafe {
                    TypedFunc::<(u32, &str, Option<&str>, Option<&str>), (Result<legacy_wit::CallOutput, legacy_wit::Fault>,)>::new_unchecked(
                        *func,
                    )
                };
                let (result,) = typed.call_async(&mut *store, params).await?;
                result
                    .map(|out| HandlerOutput { variables: out.variables, output: out.output })
                    .map_err(|f| engine::Fault { name: f.name, message: f.message, data: f.data })
            }
        })
    }
}

/// A compiled, linked process component, ready to instantiate.
#[derive(Clone)]
pub struct ProcessComponent {
    pre: ProcessPre,
    /// The `call` export, found once: a handler call's instance looks it up by index.
    call: ComponentExportIndex,
}

/// A process component of the current world, or of its first release.
#[derive(Clone)]
enum ProcessPre {
    Current(bindings::process::ProcessPre<GuestState>),
    Legacy(bindings::process_legacy::ProcessPre<GuestState>),
}

enum ProcessInstance {
    Current(bindings::process::Process),
    Legacy(bindings::process_legacy::Process),
}

impl ProcessPre {
    /// An instance for handler calls, and its `call` export.
    async fn instantiate_for_calls(&self, store: &mut Store<GuestState>, call: &ComponentExportIndex) -> wasmtime::Result<CallExport> {
        let (pre, current) = match self {
            ProcessPre::Current(pre) => (pre.instance_pre(), true),
            ProcessPre::Legacy(pre) => (pre.instance_pre(), false),
        };
        let instance = pre.instantiate_async(&mut *store).await?;
        let func = instance.get_func(&mut *store, call).ok_or_else(|| wasmtime::Error::msg("the instance has no `call` export"))?;
        Ok(if current { CallExport::Current(func) } else { CallExport::Legacy(func) })
    }

    async fn instantiate(&self, store: &mut Store<GuestState>) -> wasmtime::Result<ProcessInstance> {
        Ok(match self {
            ProcessPre::Current(pre) => ProcessInstance::Current(pre.instantiate_async(store).await?),
            ProcessPre::Legacy(pre) => ProcessInstance::Legacy(pre.instantiate_async(store).await?),
        })
    }
}

impl ProcessInstance {
    async fn describe(&self, store: &mut Store<GuestState>) -> wasmtime::Result<engine::Definition> {
        Ok(match self {
            ProcessInstance::Current(i) => definition_from_wit(i.call_describe(store).await?),
            ProcessInstance::Legacy(i) => definition_from_legacy_wit(i.call_describe(store).await?),
        })
    }
}

/// A compiled, linked activity component, ready to instantiate.
#[derive(Clone)]
pub struct ActivityComponent {
    pre: bindings::activity::ActivityPre<GuestState>,
}

#[derive(Clone)]
pub enum Loaded {
    Process(ProcessComponent),
    Activity(ActivityComponent),
    /// An external activity: no component; workers outside the host carry out its tasks.
    External,
}

pub struct Runtime {
    engine: Engine,
    /// WASI p2 and cairn:log: what process components may import.
    process_linker: Linker<GuestState>,
    /// The same plus wasi:http types and outgoing-handler and
    /// cairn:resource/tables: activities.
    activity_linker: Linker<GuestState>,
    limits: Limits,
    /// Compiled components are cached here by digest; `None` disables the cache.
    cache_dir: Option<PathBuf>,
    /// The engine configuration compiled code in the cache must come from.
    fingerprint: String,
    /// Whether the engine uses the pooling allocator (part of its configuration).
    pooling: bool,
    /// Compile in a child process of this executable (`cairn
    /// compile-component`) rather than here: the compiler's code and memory
    /// never stay resident in the host, and a compiler that crashes on a
    /// component refuses that component without taking the host down.
    /// `None`: compile in this process.
    compile_in: Option<PathBuf>,
    /// Held while a component compiles (see `compile`).
    compiling: std::sync::Mutex<()>,
    ticker_stop: Arc<AtomicBool>,
}

/// Epochs advance every tick; at each one a running guest yields, and traps
/// if its call's deadline has passed.
const TICK: Duration = Duration::from_millis(10);

impl Runtime {
    /// `compile_in`: the `cairn` executable to compile components in a
    /// child process of (with a `cache_dir` only); `None`: in this process.
    pub fn new(limits: Limits, cache_dir: Option<PathBuf>, compile_in: Option<PathBuf>) -> Result<Runtime> {
        let (engine, pooling) = match Engine::new(&config(true, &limits)) {
            Ok(e) => (e, true),
            // The pooling allocator reserves address space up front; where
            // that is refused, fall back to allocating on demand.
            Err(_) => (Engine::new(&config(false, &limits)).map_err(|e| anyhow!("creating the wasmtime engine: {e:#}"))?, false),
        };
        let fingerprint = fingerprint(&engine, pooling, &limits);
        let base = || -> Result<Linker<GuestState>> {
            let mut linker = Linker::new(&engine);
            wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(|e| anyhow!("linking WASI: {e:#}"))?;
            bound_sleeps(&mut linker).map_err(|e| anyhow!("linking WASI clocks and poll: {e:#}"))?;
            logging::add_to_linker::<GuestState, wasmtime::component::HasSelf<GuestState>>(&mut linker, |s| s)
                .map_err(|e| anyhow!("linking cairn:log: {e:#}"))?;
            Ok(linker)
        };
        let process_linker = base()?;
        let mut activity_linker = base()?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut activity_linker)
            .map_err(|e| anyhow!("linking wasi:http: {e:#}"))?;
        bindings::activity::cairn::resource::tables::add_to_linker::<GuestState, wasmtime::component::HasSelf<ResourceCall>>(
            &mut activity_linker,
            |s| &mut s.resources,
        )
        .map_err(|e| anyhow!("linking cairn:resource: {e:#}"))?;
        if let Some(dir) = &cache_dir {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let ticker_stop = Arc::new(AtomicBool::new(false));
        let (e, stop) = (engine.clone(), ticker_stop.clone());
        std::thread::Builder::new().name("cairn-epoch".into()).spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(TICK);
                e.increment_epoch();
            }
        })?;
        let compile_in = compile_in.filter(|_| cache_dir.is_some());
        Ok(Runtime { engine, process_linker, activity_linker, limits, cache_dir, fingerprint, pooling, compile_in, compiling: std::sync::Mutex::new(()), ticker_stop })
    }

    /// Compiles (or loads from the cache) and links a component, and tells
    /// which world it implements. Errors say what is wrong with the bytes.
    pub fn load(&self, digest: &str, bytes: &[u8]) -> Result<Loaded> {
        self.link(self.compile(digest, bytes)?)
    }

    /// The component from the compiled cache, linked, if the cache holds a
    /// whole file of it made by this engine configuration (`None`: load it
    /// from its bytes).
    pub fn load_cached(&self, digest: &str) -> Option<Loaded> {
        let path = self.cache_dir.as_ref()?.join(format!("{digest}.cwasm"));
        let component = load_cached(&self.engine, &self.fingerprint, &path).ok()?;
        self.link(component).ok()
    }

    /// Links a compiled component and tells which world it implements.
    fn link(&self, component: Component) -> Result<Loaded> {
        let ty = component.component_type();
        let exports: Vec<String> = ty.exports(&self.engine).map(|(name, _)| name.to_string()).collect();
        let has = |n: &str| exports.iter().any(|e| e == n);
        let imports: Vec<String> = ty.imports(&self.engine).map(|(n, _)| n.to_string()).collect();
        let is_process = has("describe") && has("call");
        if is_process {
            let http: Vec<&str> = imports.iter().map(String::as_str).filter(|i| i.starts_with("wasi:http/")).collect();
            if !http.is_empty() {
                bail!(
                    "this process component imports {}, which process components may not: process handlers decide, activities act. Make the HTTP request in an activity component and invoke it from the process",
                    http.join(" and ")
                );
            }
        }
        let linker = if is_process { &self.process_linker } else { &self.activity_linker };
        let pre = linker.instantiate_pre(&component).map_err(|e| {
            anyhow!(
                "the component imports something Cairn does not grant ({e:#}); it imports: {}. Processes may import WASI p2 and cairn:log/logging only; activities may also import wasi:http/types, wasi:http/outgoing-handler and cairn:resource/tables",
                imports.join(", ")
            )
        })?;
        if is_process {
            // The current world, else its first release (components built
            // before the later constructs), else the current world's error.
            let pre = match bindings::process::ProcessPre::new(pre.clone()) {
                Ok(current) => ProcessPre::Current(current),
                Err(e) => match bindings::process_legacy::ProcessPre::new(pre) {
                    Ok(legacy) => ProcessPre::Legacy(legacy),
                    Err(_) => bail!("the component exports describe/call with the wrong types for world cairn:process/process: {e:#}"),
                },
            };
            let call = component
                .get_export_index(None, "call")
                .ok_or_else(|| anyhow!("the component exports no `call` for world cairn:process/process"))?;
            Ok(Loaded::Process(ProcessComponent { pre, call }))
        } else if has("invoke") {
            let pre = bindings::activity::ActivityPre::new(pre)
                .map_err(|e| anyhow!("the component exports invoke with the wrong types for world cairn:activity/activity: {e:#}"))?;
            Ok(Loaded::Activity(ActivityComponent { pre }))
        } else {
            bail!(
                "the component implements neither world cairn:process/process (exports describe, call) nor cairn:activity/activity (exports invoke); it exports: [{}]",
                exports.join(", ")
            )
        }
    }

    /// Loads the component from the cache if its file is whole and was made
    /// by this engine configuration; else compiles it from `bytes` and
    /// rewrites the cache file.
    fn compile(&self, digest: &str, bytes: &[u8]) -> Result<Component> {
        let cached = self.cache_dir.as_ref().map(|d| d.join(format!("{digest}.cwasm")));
        let from_cache = |warn: bool| -> Option<Component> {
            let path = cached.as_ref().filter(|p| p.exists())?;
            load_cached(&self.engine, &self.fingerprint, path)
                .map_err(|e| {
                    if warn {
                        tracing::warn!("compiled cache {} not used, compiling again: {e:#}", path.display())
                    }
                })
                .ok()
        };
        if let Some(c) = from_cache(false) {
            return Ok(c);
        }
        // One compile at a time: drivers that load the same component at
        // once wait for the first, then find its cache file.
        let _one = self.compiling.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = from_cache(true) {
            return Ok(c);
        }
        if let (Some(exe), Some(path)) = (&self.compile_in, &cached) {
            match self.compile_in_child(exe, bytes, path) {
                Ok(()) => return load_cached(&self.engine, &self.fingerprint, path).map_err(|e| anyhow!("the compiled component {}: {e:#}", path.display())),
                Err(ChildCompile::Refused(e)) => return Err(e),
                // No child could run (the executable moved, a configuration
                // that differs): compile here instead.
                Err(ChildCompile::Unavailable(e)) => tracing::warn!("compiling in this process instead of a child: {e:#}"),
            }
        }
        let component = compile_bytes(&self.engine, bytes)?;
        if let Some(path) = &cached {
            // Not cached, it is compiled again next time.
            let _ = write_cache(&component, &self.fingerprint, path);
        }
        Ok(component)
    }

    /// Runs `cairn compile-component` on `bytes` (its standard input), which
    /// writes the cache file `out` for this engine configuration.
    fn compile_in_child(&self, exe: &std::path::Path, bytes: &[u8], out: &std::path::Path) -> Result<(), ChildCompile> {
        use std::io::Write;
        use std::process::{Command, Stdio};
        let mut cmd = Command::new(exe);
        cmd.arg("compile-component")
            .arg("--out")
            .arg(out)
            .arg("--fingerprint")
            .arg(&self.fingerprint)
            .arg("--memory-bytes")
            .arg(self.limits.memory_bytes.to_string());
        if self.pooling {
            cmd.arg("--pooling");
        }
        if self.limits.fuel_per_call.is_some() {
            cmd.arg("--fuel");
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| ChildCompile::Unavailable(anyhow!("starting {} compile-component: {e}", exe.display())))?;
        // A child that stops reading (it refused the bytes) closes the pipe: its status says why.
        let _ = child.stdin.take().expect("piped").write_all(bytes);
        let output = child.wait_with_output().map_err(|e| ChildCompile::Unavailable(anyhow!("waiting for compile-component: {e}")))?;
        let said = String::from_utf8_lossy(&output.stderr).trim().trim_start_matches("error: ").to_string();
        match output.status.code() {
            Some(0) => Ok(()),
            Some(COMPILE_REFUSED) => Err(ChildCompile::Refused(anyhow!("{said}"))),
            Some(_) => Err(ChildCompile::Unavailable(anyhow!("compile-component: {said}"))),
            None => {
                use std::os::unix::process::ExitStatusExt;
                Err(ChildCompile::Refused(anyhow!(
                    "compiling the component killed the compiler's process ({}); the host goes on without it{}",
                    output.status.signal().map_or("no exit status".to_string(), |s| format!("signal {s}")),
                    if said.is_empty() { String::new() } else { format!(": {said}") }
                )))
            }
        }
    }

    fn store(&self, log: Option<LogContext>, hooks: outbound::Hooks, resources: ResourceCall) -> (Store<GuestState>, Arc<AtomicBool>) {
        let refused = Arc::new(AtomicBool::new(false));
        let state = GuestState {
            wasi: WasiCtx::builder().build(),
            table: ResourceTable::new(),
            limiter: Limiter { max_memory: self.limits.memory_bytes, refused: refused.clone() },
            log,
            deadline: Instant::now() + self.limits.call_timeout,
            log_quota: crate::guestlog::Quota::new(self.limits.guest_log_bytes_per_call),
            http: WasiHttpCtx::new(),
            hooks,
            resources,
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limiter);
        // At every tick a running guest yields to the runtime's other tasks
        // (guest code runs on the worker thread, on a fiber); past its
        // call's deadline it traps as an interrupt (`cairn.timeout`).
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|cx| {
            if Instant::now() >= cx.data().deadline {
                return Ok(wasmtime::UpdateDeadline::Interrupt);
            }
            // tokio's own yield goes to the back of the worker's queue (a
            // plain wake would take the worker's next-task slot at once).
            Ok(wasmtime::UpdateDeadline::YieldCustom(1, Box::pin(tokio::task::yield_now())))
        });
        self.refuel(&mut store);
        (store, refused)
    }

    /// A fresh call's fuel, when fuel is metered.
    fn refuel(&self, store: &mut Store<GuestState>) {
        if let Some(fuel) = self.limits.fuel_per_call {
            store.set_fuel(fuel).expect("fuel metering is on in the engine's configuration");
        }
    }

    /// Reads a process component's definition.
    pub async fn describe(&self, component: &ProcessComponent) -> Result<engine::Definition, engine::Fault> {
        let (mut store, refused) = self.store(None, no_outbound(), ResourceCall::default());
        let instance = component.pre.instantiate(&mut store).await.map_err(|e| self.trap_fault(e, &refused))?;
        instance.describe(&mut store).await.map_err(|e| self.trap_fault(e, &refused))
    }

    /// Runs one handler on the variables in a fresh instance.
    pub async fn call(
        &self,
        component: &ProcessComponent,
        handler: u32,
        variables: &str,
        message: Option<&str>,
        item: Option<&str>,
        log: LogContext,
    ) -> Result<HandlerOutput, engine::Fault> {
        let mut session = self.session(component).await?;
        self.call_in(&mut session, handler, variables, message, item, log).await
    }

    /// A process instance that lives for several calls: an atomic scope's.
    /// Guest memory (the SDK's scope state) lives as long as the session.
    pub async fn session(&self, component: &ProcessComponent) -> Result<Session, engine::Fault> {
        let (mut store, refused) = self.store(None, no_outbound(), ResourceCall::default());
        let call = component.pre.instantiate_for_calls(&mut store, &component.call).await.map_err(|e| self.trap_fault(e, &refused))?;
        Ok(Session { store, call, refused })
    }

    /// Runs one handler in a session, with a fresh call deadline.
    pub async fn call_in(
        &self,
        session: &mut Session,
        handler: u32,
        variables: &str,
        message: Option<&str>,
        item: Option<&str>,
        log: LogContext,
    ) -> Result<HandlerOutput, engine::Fault> {
        let state = session.store.data_mut();
        state.log = Some(log);
        state.deadline = Instant::now() + self.limits.call_timeout;
        state.log_quota = crate::guestlog::Quota::new(self.limits.guest_log_bytes_per_call);
        session.store.set_epoch_deadline(1);
        self.refuel(&mut session.store);
        let result = session.call.call(&mut session.store, (handler, variables, message, item)).await;
        session.store.data_mut().end_call_log(self.limits.guest_log_bytes_per_call);
        result.unwrap_or_else(|e| Err(self.trap_fault(e, &session.refused)))
    }

    /// Performs one activity call in a fresh instance, within `timeout` if
    /// given (else the configured call timeout). `http` is what the call may
    /// reach with wasi:http (`None`: nothing); `resources` is what it may do
    /// with cairn:resource (`None`: every operation denied), the caller
    /// keeping a clone to take the buffered writes out afterwards. A call
    /// that fails after a resource operation got a named error (a denial)
    /// ends with the host's fault for it (`ResourceCall::fault_instead`);
    /// else, after an outbound request was refused or failed, with the
    /// host's fault for that (`outbound::Hooks::fault_instead`).
    // One argument per thing the call is given; the service's only call
    // site names each.
    #[allow(clippy::too_many_arguments)]
    pub async fn invoke(
        &self,
        component: &ActivityComponent,
        operation: &str,
        input: &str,
        log: LogContext,
        timeout: Option<Duration>,
        http: Option<OutboundCall>,
        resources: Option<resources::Access>,
    ) -> Result<String, engine::Fault> {
        let budget = timeout.unwrap_or(self.limits.call_timeout);
        let hooks = outbound::Hooks::new(http, Instant::now() + budget);
        let (mut store, refused) = self.store(Some(log), hooks, ResourceCall::new(resources));
        if timeout.is_some() {
            store.data_mut().deadline = Instant::now() + budget;
        }
        let instance = component.pre.instantiate_async(&mut store).await.map_err(|e| self.trap_fault(e, &refused))?;
        let result = instance.call_invoke(&mut store, operation, input).await;
        store.data_mut().end_call_log(self.limits.guest_log_bytes_per_call);
        let fault = match result {
            Ok(Ok(out)) => return Ok(out),
            Ok(Err(f)) => engine::Fault { name: f.name, message: f.message, data: f.data },
            Err(e) => self.trap_fault(e, &refused),
        };
        if fault.name == "cairn.memory-limit" {
            return Err(fault);
        }
        let state = store.data();
        if state.resources.has_account() {
            return Err(state.resources.fault_instead(fault));
        }
        Err(state.hooks.fault_instead(fault))
    }

    /// Guest misbehaviour becomes a system fault recorded in the instance.
    fn trap_fault(&self, e: wasmtime::Error, refused: &AtomicBool) -> engine::Fault {
        let trap = e.downcast_ref::<wasmtime::Trap>().copied();
        if trap == Some(wasmtime::Trap::Interrupt) {
            return engine::Fault::new("cairn.timeout", "the guest ran past its call deadline");
        }
        if trap == Some(wasmtime::Trap::OutOfFuel) {
            let fuel = self.limits.fuel_per_call.unwrap_or(0);
            return engine::Fault::new("cairn.out-of-fuel", format!("the guest burned its fuel of {fuel} units for one call (serve --fuel-per-call)"));
        }
        if refused.load(Ordering::Relaxed) {
            return engine::Fault::new(
                "cairn.memory-limit",
                format!("the guest tried to grow its memory past the limit of {} bytes", self.limits.memory_bytes),
            );
        }
        engine::Fault::new("cairn.trap", format!("the guest trapped: {e:#}"))
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

/// The version of the WASI p2 interfaces wasmtime-wasi defines (its
/// `p2/wit/deps`); components importing any 0.2.x version link to them.
const WASI_P2: &str = "0.2.12";

/// Epoch interruption cannot stop a guest blocked in a host call, so a WASI
/// sleep would outlast the call deadline. This shadows the functions a guest
/// waits with: a clock subscription ends by the call's deadline at the
/// latest, and a `poll` or `block` that returns at or past the deadline
/// traps as an interrupt (`cairn.timeout`).
fn bound_sleeps(linker: &mut Linker<GuestState>) -> wasmtime::Result<()> {
    use wasmtime::component::Resource;
    use wasmtime::StoreContextMut;
    use wasmtime_wasi::clocks::WasiClocksView;
    use wasmtime_wasi::p2::bindings::clocks::monotonic_clock;
    use wasmtime_wasi::p2::bindings::io::poll;
    use wasmtime_wasi::p2::DynPollable;

    /// A subscription for `nanos`, cut at the call's deadline.
    fn subscribe(state: &mut GuestState, nanos: u64) -> wasmtime::Result<Resource<DynPollable>> {
        let left = state.deadline.saturating_duration_since(Instant::now());
        let nanos = nanos.min(u64::try_from(left.as_nanos()).unwrap_or(u64::MAX));
        monotonic_clock::Host::subscribe_duration(&mut state.clocks(), nanos)
    }
    fn past_deadline(state: &GuestState) -> wasmtime::Result<()> {
        if Instant::now() >= state.deadline {
            return Err(wasmtime::Trap::Interrupt.into());
        }
        Ok(())
    }

    linker.allow_shadowing(true);
    let mut clock = linker.instance(&format!("wasi:clocks/monotonic-clock@{WASI_P2}"))?;
    clock.func_wrap("subscribe-duration", |mut cx: StoreContextMut<'_, GuestState>, (nanos,): (u64,)| {
        Ok((subscribe(cx.data_mut(), nanos)?,))
    })?;
    clock.func_wrap("subscribe-instant", |mut cx: StoreContextMut<'_, GuestState>, (when,): (u64,)| {
        let state = cx.data_mut();
        let now = monotonic_clock::Host::now(&mut state.clocks())?;
        Ok((subscribe(state, when.saturating_sub(now))?,))
    })?;
    let mut io = linker.instance(&format!("wasi:io/poll@{WASI_P2}"))?;
    io.func_wrap_async("poll", |mut cx: StoreContextMut<'_, GuestState>, (list,): (Vec<Resource<DynPollable>>,)| {
        Box::new(async move {
            let ready = poll::Host::poll(&mut cx.data_mut().table, list).await?;
            past_deadline(cx.data())?;
            Ok((ready,))
        })
    })?;
    io.func_wrap_async("[method]pollable.block", |mut cx: StoreContextMut<'_, GuestState>, (p,): (Resource<DynPollable>,)| {
        Box::new(async move {
            poll::HostPollable::block(&mut cx.data_mut().table, p).await?;
            past_deadline(cx.data())
        })
    })?;
    linker.allow_shadowing(false);
    Ok(())
}

/// Hooks for stores that make no outbound requests (process components,
/// whose linker has no wasi:http): every request would be denied.
fn no_outbound() -> outbound::Hooks {
    outbound::Hooks::new(None, Instant::now())
}

fn config(pooling: bool, limits: &Limits) -> wasmtime::Config {
    let mut cfg = wasmtime::Config::new();
    cfg.wasm_component_model(true);
    cfg.epoch_interruption(true);
    cfg.consume_fuel(limits.fuel_per_call.is_some());
    if pooling {
        let mut pool = wasmtime::PoolingAllocationConfig::default();
        pool.total_component_instances(1000);
        pool.total_memories(1000);
        pool.total_tables(2000);
        pool.max_memory_size(limits.memory_bytes);
        // Instances are created and dropped at a high rate: reset slots by
        // memset (or by scanning for dirty pages where the kernel can, so
        // that only those are reset). A slot is free again as soon as it is
        // reset (wasmtime's default decommit batch of one): batching its
        // decommits kept freed slots out of use until a flush, so calls took
        // colder slots (BENCHMARKS.md, issue 10's sixth step: 7% less CPU
        // per workflow, p50 at concurrency 1 0.05 ms lower).
        pool.linear_memory_keep_resident(1 << 20);
        pool.table_keep_resident(64 << 10);
        pool.pagemap_scan(wasmtime::Enabled::Auto);
        cfg.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pool));
    }
    cfg
}

/// Compiles `bytes` with `engine`; errors say what is wrong with them.
fn compile_bytes(engine: &Engine, bytes: &[u8]) -> Result<Component> {
    if !bytes.starts_with(b"\0asm") {
        bail!("not a WebAssembly file (it does not start with the \\0asm magic bytes)");
    }
    Component::new(engine, bytes).map_err(|e| {
        if wasmparser_says_core_module(bytes) {
            anyhow!("this is a core WebAssembly module, not a component; build for wasm32-wasip2 ({e:#})")
        } else {
            anyhow!("not a valid WebAssembly component: {e:#}")
        }
    })
}

/// Writes `component` as the cache file `path` made by the engine of
/// `fingerprint`: whole under a temporary name unique to this process and
/// call, then renamed, so that `path` is always whole whoever writes it.
fn write_cache(component: &Component, fingerprint: &str, path: &std::path::Path) -> Result<()> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let compiled = component.serialize().map_err(|e| anyhow!("serializing: {e:#}"))?;
    let tmp = path.with_extension(format!("{}-{}.tmp", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed)));
    std::fs::write(&tmp, cache_file(fingerprint, &compiled)).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}

/// Why a child could not compile a component.
enum ChildCompile {
    /// The component is refused: what is wrong with it.
    Refused(anyhow::Error),
    /// No child ran to the end for a reason of the host's: compile here.
    Unavailable(anyhow::Error),
}

/// `cairn compile-component`'s exit status when the bytes are not a component it can compile.
const COMPILE_REFUSED: i32 = 1;
/// Its exit status when its engine configuration is not the host's.
const COMPILE_OTHER_ENGINE: i32 = 3;

/// `cairn compile-component` (run by the host, not by users): compiles the
/// component on standard input with the engine configuration the flags
/// describe, checks that it is the host's (`fingerprint`), and writes the
/// cache file `out`. Exit status 0, `COMPILE_REFUSED` with the reason on
/// stderr, or `COMPILE_OTHER_ENGINE`.
pub fn compile_component_main(out: &std::path::Path, expected: &str, memory_bytes: usize, pooling: bool, fuel: bool) -> i32 {
    use std::io::Read;
    let limits = Limits { memory_bytes, fuel_per_call: fuel.then_some(1), ..Limits::default() };
    let engine = match Engine::new(&config(pooling, &limits)) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("error: creating the wasmtime engine: {e:#}");
            return COMPILE_OTHER_ENGINE;
        }
    };
    let actual = fingerprint(&engine, pooling, &limits);
    if actual != expected {
        eprintln!("error: this executable's engine configuration is {actual}, the host's {expected}");
        return COMPILE_OTHER_ENGINE;
    }
    let mut bytes = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut bytes) {
        eprintln!("error: reading the component from standard input: {e}");
        return COMPILE_OTHER_ENGINE;
    }
    crate::failpoint::hit("compile-component");
    let component = match compile_bytes(&engine, &bytes) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e:#}");
            return COMPILE_REFUSED;
        }
    };
    match write_cache(&component, &actual, out) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e:#}");
            COMPILE_OTHER_ENGINE
        }
    }
}

/// A component's layer/version field: 0x0d 0x00 0x01 0x00 after the magic;
/// a core module has version 1.
fn wasmparser_says_core_module(bytes: &[u8]) -> bool {
    bytes.len() >= 8 && bytes[4..8] == [1, 0, 0, 0]
}

/// The first line of a compiled cache file; the header ends with an empty line.
const CACHE_MAGIC: &str = "cairn-compiled 1";

/// The engine configuration as text: wasmtime's own compatibility hash
/// (its version, target, compiler flags, tunables, features) plus Cairn's
/// choices. Compiled code from any other configuration is not loaded.
fn fingerprint(engine: &Engine, pooling: bool, limits: &Limits) -> String {
    use sha2::Digest;
    use std::hash::Hash;
    /// A `Hasher` that feeds sha256, so that the hash is stable across runs.
    struct Sha(sha2::Sha256);
    impl std::hash::Hasher for Sha {
        fn write(&mut self, bytes: &[u8]) {
            self.0.update(bytes);
        }
        fn finish(&self) -> u64 {
            0
        }
    }
    let mut h = Sha(sha2::Sha256::new());
    engine.precompile_compatibility_hash().hash(&mut h);
    format!(
        "wasmtime-48 {} component-model epoch-interruption pooling={pooling} max-memory={} fuel={} cairn-{}",
        crate::service::hex(&h.0.finalize()),
        limits.memory_bytes,
        limits.fuel_per_call.is_some(),
        env!("CARGO_PKG_VERSION"),
    )
}

/// A cache file: the header (magic, engine fingerprint, sha256 of the
/// compiled bytes, an empty line), then the compiled bytes.
fn cache_file(fingerprint: &str, compiled: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    let sum = crate::service::hex(&sha2::Sha256::digest(compiled));
    let mut out = format!("{CACHE_MAGIC}\nengine {fingerprint}\nsha256 {sum}\n\n").into_bytes();
    out.extend_from_slice(compiled);
    out
}

/// The compiled bytes of a cache file, if its header is whole, names this
/// engine's fingerprint and the sha256 of what follows.
fn cached_bytes<'a>(fingerprint: &str, file: &'a [u8]) -> Result<&'a [u8]> {
    use sha2::Digest;
    let end = file.windows(2).take(4096).position(|w| w == b"\n\n").ok_or_else(|| anyhow!("no header"))?;
    let header = std::str::from_utf8(&file[..end]).map_err(|_| anyhow!("the header is not text"))?;
    let body = &file[end + 2..];
    let mut lines = header.lines();
    if lines.next() != Some(CACHE_MAGIC) {
        bail!("not a cache file of this host");
    }
    let engine = lines.next().and_then(|l| l.strip_prefix("engine ")).ok_or_else(|| anyhow!("no engine line"))?;
    if engine != fingerprint {
        bail!("compiled by another engine configuration ({engine}; this one is {fingerprint})");
    }
    let sum = lines.next().and_then(|l| l.strip_prefix("sha256 ")).ok_or_else(|| anyhow!("no sha256 line"))?;
    let actual = crate::service::hex(&sha2::Sha256::digest(body));
    if sum != actual {
        bail!("damaged: sha256 {actual}, expected {sum}");
    }
    Ok(body)
}

fn load_cached(engine: &Engine, fingerprint: &str, path: &std::path::Path) -> Result<Component> {
    let file = std::fs::read(path).map_err(|e| anyhow!("reading it: {e}"))?;
    let compiled = cached_bytes(fingerprint, &file)?;
    deserialize_checked(engine, compiled)
}

#[allow(unsafe_code)]
fn deserialize_checked(engine: &Engine, compiled: &[u8]) -> Result<Component> {
    // SAFETY: `compiled` is, byte for byte, what `Component::serialize` of
    // an engine with this configuration wrote: its sha256 and the engine's
    // fingerprint were checked against the header (`cached_bytes`) on the
    // bytes in memory, so the file cannot change in between; wasmtime checks
    // compatibility again, and we recompile on any error.
    unsafe { Component::deserialize(engine, compiled) }.map_err(|e| anyhow!("deserializing: {e:#}"))
}

cairn_engine::definition_from_wit!(fn definition_from_wit(wit));
cairn_engine::definition_from_wit!(legacy fn definition_from_legacy_wit(legacy_wit));
