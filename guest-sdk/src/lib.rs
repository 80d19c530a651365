//! Cairn guest SDK: define durable processes in Rust.
//!
//! A process is a serde struct of *variables* plus an activity tree built with
//! [`Process`]. Handlers are plain Rust closures over the variables. The host
//! interprets the tree; it calls each handler in a fresh WebAssembly instance,
//! so nothing but the variables survives from one handler to the next.
//!
//! ```no_run
//! use cairn_guest::{Activity, Fault, Process};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize, Default)]
//! struct Greeting { name: String, text: String }
//!
//! #[derive(Deserialize)]
//! struct Hello { name: String }
//!
//! fn define(p: &mut Process<Greeting>) -> Activity {
//!     let take = p
//!         .receive("take", "hello", |v: &mut Greeting, m: Hello| { v.name = m.name; Ok(()) })
//!         .creates_instance();
//!     let greet = p.snippet("greet", |v| { v.text = format!("Hello, {}!", v.name); Ok(()) });
//!     p.sequence("main", vec![take, greet])
//! }
//!
//! cairn_guest::export_process!("greeter", Greeting, define);
//! ```
//!
//! Beyond sequences and snippets the builder has the control flow of BPEL
//! and BizTalk: [`Process::if_else`], [`Process::switch`],
//! [`Process::while_loop`], [`Process::repeat_until`], [`Process::for_each`]
//! (with [`Process::until`] to end it early), [`Process::flow`] and
//! [`Process::pick`]; scopes with fault handlers ([`Process::on_fault`],
//! [`Process::on_fault_where`] to match on the fault's data), compensation
//! ([`Process::on_compensate`]) and event handlers ([`Process::on_event`],
//! [`Process::on_alarm`]); and the process scope ([`Process::process_scope`])
//! for handlers of the whole process.
//!
//! Build with `cargo build --release --target wasm32-wasip2`; the `.wasm` in
//! `target/wasm32-wasip2/release/` is the component to `cairn deploy`.
//!
//! Test it natively with the crate `cairn-testkit`: make `define` and the
//! variables type public, build the crate as `crate-type = ["cdylib",
//! "rlib"]`, and run it in `cargo test` on the pure engine, with a virtual
//! clock and stubbed activities (off wasm, [`log`] writes to standard error):
//!
//! ```ignore
//! let mut t = cairn_testkit::ProcessTest::new("greeter", define);
//! t.send("hello", serde_json::json!({ "name": "Ada" }));
//! assert_eq!(t.variables().text, "Hello, Ada!");
//! assert_eq!(t.status(), cairn_testkit::Status::Completed);
//! ```

use serde::de::DeserializeOwned;
use serde::Serialize;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[doc(hidden)]
#[allow(clippy::too_many_arguments)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "cairn:process/process",
        path: "../wit/process",
        pub_export_macro: true,
        export_macro_name: "__export_process_world",
        default_bindings_module: "cairn_guest::bindings",
        generate_all,
    });
}

use bindings::cairn::process::types as wit;

/// A named fault with a message and JSON data. Returning `Err(fault)` from a
/// handler raises it at that activity.
///
/// ```
/// use cairn_guest::Fault;
/// let f = Fault::new("invalid-order", "an order needs at least one line")
///     .with_data(serde_json::json!({ "lines": 0 }));
/// assert_eq!(f.name, "invalid-order");
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Fault {
    pub name: String,
    pub message: String,
    pub data: serde_json::Value,
}

impl Fault {
    /// A fault with a name (what went wrong, for fault handlers to match) and a message (for people).
    ///
    /// ```
    /// let f = cairn_guest::Fault::new("out-of-stock", "item 42 is out of stock");
    /// assert_eq!(f.data, serde_json::Value::Null);
    /// ```
    pub fn new(name: impl Into<String>, message: impl Into<String>) -> Fault {
        Fault { name: name.into(), message: message.into(), data: serde_json::Value::Null }
    }

    /// Attaches JSON data to the fault.
    ///
    /// ```
    /// let f = cairn_guest::Fault::new("late", "too late").with_data(3);
    /// assert_eq!(f.data, serde_json::json!(3));
    /// ```
    pub fn with_data(mut self, data: impl Serialize) -> Fault {
        self.data = serde_json::to_value(data).unwrap_or(serde_json::Value::Null);
        self
    }

    fn into_wit(self) -> wit::Fault {
        wit::Fault { name: self.name, message: self.message, data: self.data.to_string() }
    }
}

/// Transactional behaviour of one activity, overriding its kind's default.
///
/// ```
/// # use cairn_guest::{Process, Transaction};
/// # #[derive(serde::Serialize, serde::Deserialize, Default)] struct V;
/// # fn f(p: &mut Process<V>) {
/// let audit = p.snippet("audit", |_| Ok(())).transaction(Transaction::RequiresOwn);
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transaction {
    /// A persistence point before the activity starts.
    CommitBefore,
    /// A persistence point right after the activity completes.
    CommitAfter,
    /// No persistence point of its own.
    Participates,
    /// Persistence points before and after.
    RequiresOwn,
}

/// Retry policy of an atomic scope: `attempts` in all (at least one), waiting
/// `backoff` before the second and twice as long before each further one.
///
/// ```
/// let once = cairn_guest::Retry::none();
/// assert_eq!(once.attempts, 1);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    pub attempts: u32,
    pub backoff: Duration,
}

impl Retry {
    /// One attempt: a fault propagates at once (after the rollback).
    ///
    /// ```
    /// assert_eq!(cairn_guest::Retry::none().backoff, std::time::Duration::ZERO);
    /// ```
    pub fn none() -> Retry {
        Retry { attempts: 1, backoff: Duration::ZERO }
    }
}

/// Retry policy of an invoke: `attempts` in all, waiting `initial_backoff`
/// before the second and doubling up to `max_backoff`; only faults named in
/// `faults` retry (empty: every fault).
///
/// ```
/// let p = cairn_guest::RetryPolicy {
///     attempts: 3,
///     initial_backoff: std::time::Duration::from_millis(50),
///     max_backoff: std::time::Duration::from_secs(1),
///     faults: vec![],
/// };
/// assert_eq!(p.attempts, 3);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    pub faults: Vec<String>,
}

thread_local! {
    static ITEM: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// Inside a [`Process::for_each`] body: the element of this iteration,
/// deserialized as `T`; `None` outside one (or if it is not a `T`).
///
/// ```
/// // Outside a for-each there is no item.
/// assert_eq!(cairn_guest::item::<u32>(), None);
/// ```
pub fn item<T: DeserializeOwned>() -> Option<T> {
    ITEM.with(|i| i.borrow().as_deref().and_then(|text| serde_json::from_str(text).ok()))
}

thread_local! {
    static SCOPE_LOCALS: std::cell::RefCell<std::collections::HashMap<std::any::TypeId, Box<dyn std::any::Any>>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

/// The place for non-serializable objects (a connection, a parsed document,
/// a cache) that the handlers of one atomic scope share: `f` runs on this
/// scope's `T`, made by `init` on first use. It lives in the scope's
/// WebAssembly instance and is gone at the scope's end, or when the scope is
/// retried. Outside an atomic scope every handler runs in a fresh instance,
/// so it never outlives one handler.
///
/// ```
/// struct Connection { queries: u32 } // not Serialize: it never leaves the scope
/// let n = cairn_guest::scope_local(|| Connection { queries: 0 }, |c| { c.queries += 1; c.queries });
/// assert_eq!(n, 1);
/// ```
pub fn scope_local<T: 'static, R>(init: impl FnOnce() -> T, f: impl FnOnce(&mut T) -> R) -> R {
    SCOPE_LOCALS.with(|locals| {
        let mut locals = locals.borrow_mut();
        let slot = locals.entry(std::any::TypeId::of::<T>()).or_insert_with(|| Box::new(init()));
        f(slot.downcast_mut::<T>().expect("the slot of T holds a T"))
    })
}

/// Logging to the host, stamped with the instance and activity it came from.
///
/// ```no_run
/// cairn_guest::log::info("priced order", &[("order", "o-1"), ("total", "42.00")]);
/// ```
pub mod log {
    #[cfg(target_arch = "wasm32")]
    use super::bindings::cairn::log::logging;
    use super::bindings::cairn::log::logging::Level;

    #[cfg(target_arch = "wasm32")]
    fn write(level: Level, message: &str, fields: &[(&str, &str)]) {
        let fields: Vec<(String, String)> = fields.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        logging::log(level, message, &fields);
    }

    /// Compiled natively (a process run by `cairn-testkit` in `cargo test`),
    /// there is no host to log to: the line goes to standard error, which
    /// the test harness captures.
    #[cfg(not(target_arch = "wasm32"))]
    fn write(level: Level, message: &str, fields: &[(&str, &str)]) {
        let fields: Vec<String> = fields.iter().map(|(k, v)| format!(" {k}={v}")).collect();
        eprintln!("[{level:?}] {message}{}", fields.concat());
    }
    /// Logs at debug level.
    ///
    /// ```no_run
    /// cairn_guest::log::debug("state", &[]);
    /// ```
    pub fn debug(message: &str, fields: &[(&str, &str)]) {
        write(Level::Debug, message, fields)
    }
    /// Logs at info level.
    ///
    /// ```no_run
    /// cairn_guest::log::info("validated", &[("order", "o-1")]);
    /// ```
    pub fn info(message: &str, fields: &[(&str, &str)]) {
        write(Level::Info, message, fields)
    }
    /// Logs at warn level.
    ///
    /// ```no_run
    /// cairn_guest::log::warn("approval late", &[]);
    /// ```
    pub fn warn(message: &str, fields: &[(&str, &str)]) {
        write(Level::Warn, message, fields)
    }
    /// Logs at error level.
    ///
    /// ```no_run
    /// cairn_guest::log::error("cannot price", &[]);
    /// ```
    pub fn error(message: &str, fields: &[(&str, &str)]) {
        write(Level::Error, message, fields)
    }
}

// Linted natively since cairn-testkit builds the SDK for the host.
#[allow(clippy::type_complexity)]
#[derive(Debug, Clone)]
enum Kind {
    Sequence(Vec<Activity>),
    Snippet(u32),
    IfElse { condition: u32, then: Box<Activity>, otherwise: Option<Box<Activity>> },
    While { condition: u32, body: Box<Activity> },
    RepeatUntil { condition: u32, body: Box<Activity> },
    Switch { cases: Vec<(u32, Activity)>, otherwise: Option<Box<Activity>> },
    Receive {
        operation: String,
        correlation: Option<String>,
        creates: bool,
        request_response: bool,
        reader: Option<u32>,
        timeout: Option<wit::ReceiveTimeout>,
    },
    Reply { operation: String, body: u32 },
    Invoke { target: wit::Target, operation: String, input: u32, output: Option<u32>, policy: wit::InvokePolicy },
    Send { target: wit::Target, operation: String, body: u32 },
    Wait(wit::WaitNode),
    Throw { fault: String, message: String, data: Option<u32> },
    Terminate,
    Scope {
        body: Box<Activity>,
        atomic: Option<Retry>,
        handlers: Vec<ScopeFaultHandler>,
        compensation: Option<u32>,
        timeout: Option<Duration>,
        events: Vec<(wit::EventTrigger, Activity)>,
    },
    Compensate(Option<String>),
    Rethrow,
    Suspend(String),
    StartProcess { process: String, operation: String, body: u32 },
    Pick { branches: Vec<(wit::PickTrigger, Activity)>, creates: bool },
    Flow(Vec<Activity>),
    ForEach { items: String, parallel: bool, body: Box<Activity>, completion: Option<u32> },
}

/// A fault handler of a scope: the fault name (`None`: any), its condition
/// on the fault, its reader and its body.
#[derive(Debug, Clone)]
struct ScopeFaultHandler {
    fault: Option<String>,
    condition: Option<u32>,
    reader: Option<u32>,
    body: Option<Box<Activity>>,
}

/// A case of a [`Process::switch`]: made by [`Process::case`].
#[derive(Debug, Clone, Copy)]
pub struct Case(u32);

/// When an alarm event handler fires: see [`Process::on_alarm`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alarm {
    /// Once, this long after the scope starts.
    After(Duration),
    /// Every this long, from the scope's start and after each run.
    Every(Duration),
}

/// What a pick branch waits for: made by [`Process::on_message`] or [`Process::after`].
#[derive(Debug, Clone)]
pub struct PickArm(wit::PickTrigger);

/// One node of the activity tree, made by a [`Process`] method. Its name is
/// its step in the activity path (`main/approval/timeout`).
///
/// ```
/// # use cairn_guest::Process;
/// # #[derive(serde::Serialize, serde::Deserialize, Default)] struct V;
/// # fn f(p: &mut Process<V>) -> cairn_guest::Activity {
/// let a = p.snippet("a", |_| Ok(()));
/// let b = p.snippet("b", |_| Ok(()));
/// p.sequence("main", vec![a, b])
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Activity {
    name: String,
    kind: Kind,
    transaction: Option<Transaction>,
}

impl Activity {
    fn new(name: &str, kind: Kind) -> Activity {
        Activity { name: name.to_string(), kind, transaction: None }
    }

    /// Overrides the activity's transactional behaviour.
    ///
    /// ```
    /// # use cairn_guest::{Process, Transaction};
    /// # #[derive(serde::Serialize, serde::Deserialize, Default)] struct V;
    /// # fn f(p: &mut Process<V>) {
    /// let s = p.snippet("checkpointed", |_| Ok(())).transaction(Transaction::CommitAfter);
    /// # }
    /// ```
    pub fn transaction(mut self, t: Transaction) -> Activity {
        self.transaction = Some(t);
        self
    }

    /// On a receive: the message creates a new instance (and initializes the
    /// receive's correlation set). On a pick: each of its messages may
    /// create the instance, whichever comes first. It must be a first
    /// activity of the process: first in its sequence, or a branch of a flow
    /// that is. With several instance-creating receives (in a flow), the
    /// first message creates the instance and the others route to it by the
    /// correlation set the first initialised: they must all name that set.
    ///
    /// ```
    /// # use cairn_guest::Process;
    /// # #[derive(serde::Serialize, serde::Deserialize, Default)] struct V;
    /// # fn f(p: &mut Process<V>) {
    /// let take = p.receive_any("take", "order").creates_instance().correlate("order");
    /// # }
    /// ```
    pub fn creates_instance(mut self) -> Activity {
        if let Kind::Receive { creates, .. } | Kind::Pick { creates, .. } = &mut self.kind {
            *creates = true;
        }
        self
    }

    /// On a receive: the correlation set that routes messages to this
    /// instance. The first receive that uses a set initializes it from its message.
    ///
    /// ```
    /// # use cairn_guest::Process;
    /// # #[derive(serde::Serialize, serde::Deserialize, Default)] struct V;
    /// # fn f(p: &mut Process<V>) {
    /// p.correlation_set("order", &[("order_id", "/order_id")]);
    /// let approval = p.receive_any("approval", "approve").correlate("order");
    /// # }
    /// ```
    pub fn correlate(mut self, set: &str) -> Activity {
        if let Kind::Receive { correlation, .. } = &mut self.kind {
            *correlation = Some(set.to_string());
        }
        self
    }

    /// On an invoke: the call is not safe to perform twice. If the host stops
    /// while it is in flight, it is held for an operator (`cairn in-transit`)
    /// instead of being sent again, and its result is persisted at once.
    ///
    /// ```
    /// # use cairn_guest::Process;
    /// # #[derive(serde::Serialize, serde::Deserialize, Default)] struct V;
    /// # fn f(p: &mut Process<V>) {
    /// let pay = p
    ///     .invoke_activity("pay", "bank", "transfer", |_| Ok(serde_json::json!({})), |_, _: serde_json::Value| Ok(()))
    ///     .non_idempotent();
    /// # }
    /// ```
    pub fn non_idempotent(mut self) -> Activity {
        if let Kind::Invoke { policy, .. } = &mut self.kind {
            policy.idempotent = false;
        }
        self
    }

    /// On a non-idempotent invoke: send it again after a crash all the same.
    ///
    /// ```
    /// # use cairn_guest::Process;
    /// # #[derive(serde::Serialize, serde::Deserialize, Default)] struct V;
    /// # fn f(p: &mut Process<V>) {
    /// let mail = p
    ///     .invoke_activity("mail", "mailer", "send", |_| Ok(serde_json::json!({})), |_, _: serde_json::Value| Ok(()))
    ///     .non_idempotent()
    ///     .retry_on_recovery();
    /// # }
    /// ```
    pub fn retry_on_recovery(mut self) -> Activity {
        if let Kind::Invoke { policy, .. } = &mut self.kind {
            policy.retry_on_recovery = true;
        }
        self
    }

    /// On an invoke: retry faults by this policy.
    ///
    /// ```
    /// # use cairn_guest::{Process, RetryPolicy};
    /// # use std::time::Duration;
    /// # #[derive(serde::Serialize, serde::Deserialize, Default)] struct V;
    /// # fn f(p: &mut Process<V>) {
    /// let quote = p
    ///     .invoke_activity("quote", "pricing", "quote", |_| Ok(serde_json::json!({})), |_, _: serde_json::Value| Ok(()))
    ///     .retry(RetryPolicy {
    ///         attempts: 5,
    ///         initial_backoff: Duration::from_millis(100),
    ///         max_backoff: Duration::from_secs(5),
    ///         faults: vec!["busy".into()],
    ///     });
    /// # }
    /// ```
    pub fn retry(mut self, retry: RetryPolicy) -> Activity {
        if let Kind::Invoke { policy, .. } = &mut self.kind {
            policy.retry = Some(wit::RetryPolicy {
                max_attempts: retry.attempts.max(1),
                initial_backoff_ms: retry.initial_backoff.as_millis() as u64,
                max_backoff_ms: retry.max_backoff.as_millis() as u64,
                faults: retry.faults,
            });
        }
        self
    }

    /// On an invoke: the wall-clock limit of one attempt; past it the
    /// attempt faults with `cairn.timeout`. On a long-running scope: its
    /// deadline from its start; when it passes, whatever the body is doing
    /// (waiting included) stops and the scope faults with
    /// `cairn.scope-timeout`, which its own fault handlers may catch.
    ///
    /// ```
    /// # use cairn_guest::Process;
    /// # #[derive(serde::Serialize, serde::Deserialize, Default)] struct V;
    /// # fn f(p: &mut Process<V>) {
    /// let quote = p
    ///     .invoke_activity("quote", "pricing", "quote", |_| Ok(serde_json::json!({})), |_, _: serde_json::Value| Ok(()))
    ///     .timeout(std::time::Duration::from_secs(2));
    /// # }
    /// ```
    pub fn timeout(mut self, limit: Duration) -> Activity {
        match &mut self.kind {
            Kind::Invoke { policy, .. } => policy.timeout_ms = Some(limit.as_millis() as u64),
            Kind::Scope { timeout, .. } => *timeout = Some(limit),
            _ => {}
        }
        self
    }

    /// On a receive: the sender waits for a [`Process::reply`] to this operation.
    ///
    /// ```
    /// # use cairn_guest::Process;
    /// # #[derive(serde::Serialize, serde::Deserialize, Default)] struct V;
    /// # fn f(p: &mut Process<V>) {
    /// let take = p.receive_any("take", "quote").creates_instance().request_response();
    /// # }
    /// ```
    pub fn request_response(mut self) -> Activity {
        if let Kind::Receive { request_response, .. } = &mut self.kind {
            *request_response = true;
        }
        self
    }
}

type HandlerFn<V> = Box<dyn Fn(&mut V, Option<&str>) -> Result<Option<String>, Fault>>;

/// Whether the builder is describing the tree (deploy) or looking for one handler (a call).
enum Mode<V> {
    Describe,
    Dispatch { target: u32, found: Option<HandlerFn<V>> },
}

/// The builder of a process definition over variables `V`.
///
/// Handlers get ids in the order they are registered, so every instance of
/// the same component resolves the same ids. When the host calls a handler,
/// the builder runs in dispatch mode and keeps only the closure asked for.
pub struct Process<V> {
    kind: wit::ProcessKind,
    keep_final_state: bool,
    deferred_recovery: bool,
    correlation_sets: Vec<wit::CorrelationSet>,
    next_handler: u32,
    mode: Mode<V>,
}

fn to_json<T: Serialize>(value: &T, what: &str) -> Result<String, Fault> {
    serde_json::to_string(value).map_err(|e| Fault::new("cairn.serialize", format!("{what}: {e}")))
}

fn from_json<T: DeserializeOwned>(text: Option<&str>, what: &str) -> Result<T, Fault> {
    let text = text.unwrap_or("null");
    serde_json::from_str(text).map_err(|e| {
        Fault::new("cairn.deserialize", format!("{what} does not match the expected type: {e}"))
            .with_data(serde_json::from_str::<serde_json::Value>(text).unwrap_or(serde_json::Value::Null))
    })
}

impl<V: Serialize + DeserializeOwned + Default + 'static> Process<V> {
    fn new(mode: Mode<V>) -> Process<V> {
        Process { kind: wit::ProcessKind::LongRunning, keep_final_state: true, deferred_recovery: false, correlation_sets: Vec::new(), next_handler: 0, mode }
    }

    fn register(&mut self, f: HandlerFn<V>) -> u32 {
        let id = self.next_handler;
        self.next_handler += 1;
        if let Mode::Dispatch { target, found } = &mut self.mode {
            if *target == id {
                *found = Some(f);
            }
        }
        id
    }

    /// Makes this process a microflow: one transaction, no waits, persisted only at its end.
    ///
    /// ```
    /// # use cairn_guest::Process;
    /// # #[derive(serde::Serialize, serde::Deserialize, Default)] struct V;
    /// # fn f(p: &mut Process<V>) {
    /// p.microflow();
    /// # }
    /// ```
    pub fn microflow(&mut self) {
        self.kind = wit::ProcessKind::Microflow;
    }

    /// For a microflow: do not store the final state of a completed instance
    /// (a faulted one is always kept, for operators to see).
    ///
    /// ```
    /// # use cairn_guest::Process;
    /// # #[derive(serde::Serialize, serde::Deserialize, Default)] struct V;
    /// # fn f(p: &mut Process<V>) {
    /// p.microflow();
    /// p.discard_final_state();
    /// # }
    /// ```
    pub fn discard_final_state(&mut self) {
        self.keep_final_state = false;
    }

    /// Deferred recovery: after a crash, instances that were in flight stay
    /// parked (not loaded) until an operator resubmits them (`cairn resubmit`).
    ///
    /// ```
    /// # use cairn_guest::Process;
    /// # #[derive(serde::Serialize, serde::Deserialize, Default)] struct V;
    /// # fn f(p: &mut Process<V>) {
    /// p.deferred_recovery();
    /// # }
    /// ```
    pub fn deferred_recovery(&mut self) {
        self.deferred_recovery = true;
    }

    /// Declares a correlation set: named properties, each a JSON pointer into message bodies.
    ///
    /// ```
    /// # use cairn_guest::Process;
    /// # #[derive(serde::Serialize, serde::Deserialize, Default)] struct V;
    /// # fn f(p: &mut Process<V>) {
    /// p.correlation_set("order", &[("order_id", "/order_id")]);
    /// # }
    /// ```
    pub fn correlation_set(&mut self, name: &str, properties: &[(&str, &str)]) {
        let properties = properties
            .iter()
            .map(|(n, p)| wit::Property { name: n.to_string(), pointer: p.to_string() })
            .collect();
        self.correlation_sets.push(wit::CorrelationSet { name: name.to_string(), properties });
    }

    /// Runs children in order.
    ///
    /// ```
    /// # use cairn_guest::Process;
    /// # #[derive(serde::Serialize, serde::Deserialize, Default)] struct V;
    /// # fn f(p: &mut Process<V>) {
    /// let steps = vec![p.snippet("one", |_| Ok(())), p.snippet("two", |_| Ok(()))];
    /// let main = p.sequence("main", steps);
    /// # }
    /// ```
    pub fn sequence(&mut self, name: &str, children: Vec<Activity>) -> Activity {
        Activity::new(name, Kind::Sequence(children))
    }

    /// Calls `f` to read and change the variables. `Err` raises a fault here.
    ///
    /// ```
    /// # use cairn_guest::{Fault, Process};
    /// # #[derive(serde::Serialize, serde::Deserialize, Default)] struct V { total: f64 }
    /// # fn f(p: &mut Process<V>) {
    /// let check = p.snippet("validate", |v| {
    ///     if v.total <= 0.0 { return Err(Fault::new("invalid-order", "total must be positive")); }
    ///     Ok(())
    /// });
    /// # }
    /// ```
    pub fn snippet(&mut self, name: &str, f: impl Fn(&mut V) -> Result<(), Fault> + 'static) -> Activity {
        let id = self.register(Box::new(move |v, _| f(v).map(|()| None)));
        Activity::new(name, Kind::Snippet(id))
    }

    /// Registers a handler that folds a typed message (`what`, for errors) into the variables.
    fn reader<M: DeserializeOwned>(&mut self, what: String, f: impl Fn(&mut V, M) -> Result<(), Fault> + 'static) -> u32 {
        self.register(Box::new(move |v, msg| {
            let m: M = from_json(msg, &what)?;
            f(v, m).map(|()| None)
        }))
    }

    fn condition(&mut self, f: impl Fn(&V) -> bool + 'static) -> u32 {
        self.register(Box::new(move |v, _| Ok(Some(f(v).to_string()))))
    }

    /// Runs `then` if `condition` holds, else `otherwise`.
    ///
    /// ```
    /// # use cairn_guest::Process;
    /// # #[derive(serde::Serialize, serde::Deserialize, Default)] struct V { big: bool }
    /// # fn f(p: &mut Process<V>) {
    /// let yes = p.snippet("flag", |_| Ok(()));
    /// let no = p.snippet("pass", |_| Ok(()));
    /// let branch = p.if_else("large?", |v| v.big, yes, Some(no));
    /// # }
    /// ```
    pub fn if_else(
        &mut self,
        name: &str,
        condition: impl Fn(&V) -> bool + 'static,
        then: Activity,
        otherwise: Option<Activity>,
    ) -> Activity {
        let condition = self.condition(condition);
        Activity::new(name, Kind::IfElse { condition, then: Box::new(then), otherwise: otherwise.map(Box::new) })
    }

    /// Runs `body` while `condition` holds.
    ///
    /// ```
    /// # use cairn_guest::Process;
    /// # #[derive(serde::Serialize, serde::Deserialize, Default)] struct V { n: u32 }
    /// # fn f(p: &mut Process<V>) {
    /// let step = p.snippet("step", |v| { v.n += 1; Ok(()) });
    /// let count = p.while_loop("count", |v| v.n < 10, step);
    /// # }
    /// ```
    pub fn while_loop(&mut self, name: &str, condition: impl Fn(&V) -> bool + 'static, body: Activity) -> Activity {
        let condition = self.condition(condition);
        Activity::new(name, Kind::While { condition, body: Box::new(body) })
    }

    /// Runs `body`, then again until `condition` holds: the body runs at least once.
    ///
    /// ```
    /// # use cairn_guest::Process;
    /// # #[derive(serde::Serialize, serde::Deserialize, Default)] struct V { tries: u32, ok: bool }
    /// # fn f(p: &mut Process<V>) {
    /// let attempt = p.snippet("attempt", |v| { v.tries += 1; v.ok = v.tries >= 3; Ok(()) });
    /// let retry = p.repeat_until("retry", attempt, |v| v.ok);
    /// # }
    /// ```
    pub fn repeat_until(&mut self, name: &str, body: Activity, condition: impl Fn(&V) -> bool + 'static) -> Activity {
        let condition = self.condition(condition);
        Activity::new(name, Kind::RepeatUntil { condition, body: Box::new(body) })
    }

    /// A case of a [`Process::switch`]: its condition.
    ///
    /// ```
    /// # use cairn_guest::Process;
    /// # #[derive(serde::Serialize, serde::Deserialize, Default)] struct V { total: u32 }
    /// # fn f(p: &mut Process<V>) {
    /// let large = p.case(|v| v.total > 1000);
    /// # }
    /// ```
    pub fn case(&mut self, condition: impl Fn(&V) -> bool + 'static) -> Case {
        Case(self.condition(condition))
    }

    /// An if / else-if chain: runs the body of the first case whose
    /// condition holds (asked in order), else `otherwise`, if any.
    ///
    /// ```
    /// # use cairn_guest::Process;
    /// # #[derive(serde::Serialize, serde::Deserialize, Default)] struct V { total: u32, route: String }
    /// # fn f(p: &mut Process<V>) {
    /// let board = p.snippet("board", |v| { v.route = "board".into(); Ok(()) });
    /// let manager = p.snippet("manager", |v| { v.route = "manager".into(); Ok(()) });
    /// let auto = p.snippet("auto", |v| { v.route = "auto".into(); Ok(()) });
    /// let (large, medium) = (p.case(|v| v.total > 100_000), p.case(|v| v.total > 1000));
    /// let route = p.switch("route", vec![(large, board), (medium, manager)], Some(auto));
    /// # }
    /// ```
    pub fn switch(&mut self, name: &str, cases: Vec<(Case, Activity)>, otherwise: Option<Activity>) -> Activity {
        let cases = cases.into_iter().map(|(c, body)| (c.0, body)).collect();
        Activity::new(name, Kind::Switch { cases, otherwise: otherwise.map(Box::new) })
    }

    /// Waits for a message of `operation` and folds its body (typed `M`) into the variables.
    ///
    /// ```
    /// # use cairn_guest::Process;
    /// # #[derive(serde::Serialize, serde::Deserialize, Default)] struct V { approved: bool }
    /// #[derive(serde::Deserialize)]
    /// struct Decision { approved: bool }
    /// # fn f(p: &mut Process<V>) {
    /// let wait = p
    ///     .receive("approval", "decide", |v: &mut V, d: Decision| { v.approved = d.approved; Ok(()) })
    ///     .correlate("order");
    /// # }
    /// ```
    pub fn receive<M: DeserializeOwned>(
        &mut self,
        name: &str,
        operation: &str,
        reader: impl Fn(&mut V, M) -> Result<(), Fault> + 'static,
    ) -> Activity {
        let reader = self.reader(format!("the body of message '{operation}'"), reader);
        Activity::new(
            name,
            Kind::Receive {
                operation: operation.to_string(),
                correlation: None,
                creates: false,
                request_response: false,
                reader: Some(reader),
                timeout: None,
            },
        )
    }

    /// Waits for a message of `operation` and ignores its body.
    ///
    /// ```
    /// # use cairn_guest::Process;
    /// # #[derive(serde::Serialize, serde::Deserialize, Default)] struct V;
    /// # fn f(p: &mut Process<V>) {
    /// let ping = p.receive_any("ping", "ping").correlate("order");
    /// # }
    /// ```
    pub fn receive_any(&mut self, name: &str, operation: &str) -> Activity {
        Activity::new(
            name,
            Kind::Receive {
                operation: operation.to_string(),
                correlation: None,
                creates: false,
                request_response: false,
                reader: None,
                timeout: None,
            },
        )
    }

    /// Gives a receive a deadline: if no message has come when `deadline(v)`
    /// passes, `on_timeout` runs on the variables and the receive completes.
    ///
    /// ```
    /// # use cairn_guest::Process;
    /// # #[derive(serde::Serialize, serde::Deserialize, Default)] struct V { approved: bool, timed_out: bool, due_ms: u64 }
    /// # fn f(p: &mut Process<V>) {
    /// let wait = p.receive_any("approval", "approve").correlate("order");
    /// let wait = p.with_timeout(
    ///     wait,
    ///     |v| std::time::UNIX_EPOCH + std::time::Duration::from_millis(v.due_ms),
    ///     |v| { v.timed_out = true; Ok(()) },
    /// );
    /// # }
    /// ```
    pub fn with_timeout(
        &mut self,
        receive: Activity,
        deadline: impl Fn(&V) -> SystemTime + 'static,
        on_timeout: impl Fn(&mut V) -> Result<(), Fault> + 'static,
    ) -> Activity {
        let deadline = self.deadline(deadline);
        let on_timeout = self.register(Box::new(move |v, _| on_timeout(v).map(|()| None)));
        let mut receive = receive;
        if let Kind::Receive { timeout, .. } = &mut receive.kind {
            *timeout = Some(wit::ReceiveTimeout { deadline, on_timeout: Some(on_timeout) });
        }
        receive
    }

    fn deadline(&mut self, deadline: impl Fn(&V) -> SystemTime + 'static) -> u32 {
        self.register(Box::new(move |v, _| {
            let ms = deadline(v).duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
            Ok(Some(ms.to_string()))
        }))
    }

    /// Answers the caller of the request-response receive of `operation` with `body(v)`.
    ///
    /// ```
    /// # use cairn_guest::Process;
    /// # #[derive(serde::Serialize, serde::Deserialize, Default)] struct V { total: f64 }
    /// # fn f(p: &mut Process<V>) {
    /// let answer = p.reply("answer", "quote", |v| Ok(serde_json::json!({ "total": v.total })));
    /// # }
    /// ```
    pub fn reply<R: Serialize>(
        &mut self,
        name: &str,
        operation: &str,
        body: impl Fn(&V) -> Result<R, Fault> + 'static,
    ) -> Activity {
        let body = self.register(Box::new(move |v, _| Ok(Some(to_json(&body(v)?, "reply body")?))));
        Activity::new(name, Kind::Reply { operation: operation.to_string(), body })
    }

    fn invoke<I: Serialize, O: DeserializeOwned>(
        &mut self,
        name: &str,
        target: wit::Target,
        operation: &str,
        input: impl Fn(&V) -> Result<I, Fault> + 'static,
        output: impl Fn(&mut V, O) -> Result<(), Fault> + 'static,
    ) -> Activity {
        let input = self.register(Box::new(move |v, _| Ok(Some(to_json(&input(v)?, "invoke input")?))));
        let output = self.reader(format!("the output of '{operation}'"), output);
        let policy = wit::InvokePolicy { idempotent: true, retry_on_recovery: false, retry: None, timeout_ms: None };
        Activity::new(name, Kind::Invoke { target, operation: operation.to_string(), input, output: Some(output), policy })
    }

    /// Calls operation `operation` of the activity component deployed as
    /// `component` and waits for its output. Its fault is raised here.
    ///
    /// ```
    /// # use cairn_guest::Process;
    /// # #[derive(serde::Serialize, serde::Deserialize, Default)] struct V { qty: u32, price: f64 }
    /// #[derive(serde::Deserialize)]
    /// struct Quote { price: f64 }
    /// # fn f(p: &mut Process<V>) {
    /// let price = p.invoke_activity(
    ///     "price", "pricing", "quote",
    ///     |v| Ok(serde_json::json!({ "qty": v.qty })),
    ///     |v, q: Quote| { v.price = q.price; Ok(()) },
    /// );
    /// # }
    /// ```
    pub fn invoke_activity<I: Serialize, O: DeserializeOwned>(
        &mut self,
        name: &str,
        component: &str,
        operation: &str,
        input: impl Fn(&V) -> Result<I, Fault> + 'static,
        output: impl Fn(&mut V, O) -> Result<(), Fault> + 'static,
    ) -> Activity {
        self.invoke(name, wit::Target::Activity(component.to_string()), operation, input, output)
    }

    /// Starts process `process` with a message of `operation` and waits for its reply.
    ///
    /// ```
    /// # use cairn_guest::Process;
    /// # #[derive(serde::Serialize, serde::Deserialize, Default)] struct V { ok: bool }
    /// # fn f(p: &mut Process<V>) {
    /// let check = p.invoke_process(
    ///     "check", "credit-check", "check",
    ///     |_| Ok(serde_json::json!({ "customer": 7 })),
    ///     |v, ok: bool| { v.ok = ok; Ok(()) },
    /// );
    /// # }
    /// ```
    pub fn invoke_process<I: Serialize, O: DeserializeOwned>(
        &mut self,
        name: &str,
        process: &str,
        operation: &str,
        input: impl Fn(&V) -> Result<I, Fault> + 'static,
        output: impl Fn(&mut V, O) -> Result<(), Fault> + 'static,
    ) -> Activity {
        self.invoke(name, wit::Target::Process(process.to_string()), operation, input, output)
    }

    fn send<B: Serialize>(
        &mut self,
        name: &str,
        target: wit::Target,
        operation: &str,
        body: impl Fn(&V) -> Result<B, Fault> + 'static,
    ) -> Activity {
        let body = self.register(Box::new(move |v, _| Ok(Some(to_json(&body(v)?, "message body")?))));
        Activity::new(name, Kind::Send { target, operation: operation.to_string(), body })
    }

    /// Sends a one-way message of `operation`, routed by correlation like any
    /// message from outside. It leaves after the next persistence point.
    ///
    /// ```
    /// # use cairn_guest::Process;
    /// # #[derive(serde::Serialize, serde::Deserialize, Default)] struct V { id: String }
    /// # fn f(p: &mut Process<V>) {
    /// let tell = p.send_message("tell", "order-events", "rejected", |v| Ok(serde_json::json!({ "id": v.id })));
    /// # }
    /// ```
    pub fn send_message<B: Serialize>(
        &mut self,
        name: &str,
        process: &str,
        operation: &str,
        body: impl Fn(&V) -> Result<B, Fault> + 'static,
    ) -> Activity {
        self.send(name, wit::Target::Process(process.to_string()), operation, body)
    }

    /// Calls an activity component one way: no answer is awaited.
    ///
    /// ```
    /// # use cairn_guest::Process;
    /// # #[derive(serde::Serialize, serde::Deserialize, Default)] struct V { id: String }
    /// # fn f(p: &mut Process<V>) {
    /// let mail = p.send_activity("mail", "notifier", "email", |v| Ok(serde_json::json!({ "order": v.id })));
    /// # }
    /// ```
    pub fn send_activity<B: Serialize>(
        &mut self,
        name: &str,
        component: &str,
        operation: &str,
        body: impl Fn(&V) -> Result<B, Fault> + 'static,
    ) -> Activity {
        self.send(name, wit::Target::Activity(component.to_string()), operation, body)
    }

    /// A durable timer of a fixed duration.
    ///
    /// ```
    /// # use cairn_guest::Process;
    /// # #[derive(serde::Serialize, serde::Deserialize, Default)] struct V;
    /// # fn f(p: &mut Process<V>) {
    /// let pause = p.wait_for("cool-off", std::time::Duration::from_secs(30));
    /// # }
    /// ```
    pub fn wait_for(&mut self, name: &str, duration: Duration) -> Activity {
        Activity::new(name, Kind::Wait(wit::WaitNode::DurationMs(duration.as_millis() as u64)))
    }

    /// A durable timer until a deadline computed from the variables.
    ///
    /// ```
    /// # use cairn_guest::Process;
    /// # #[derive(serde::Serialize, serde::Deserialize, Default)] struct V { due_unix_s: u64 }
    /// # fn f(p: &mut Process<V>) {
    /// let until = p.wait_until("until-due", |v| {
    ///     std::time::UNIX_EPOCH + std::time::Duration::from_secs(v.due_unix_s)
    /// });
    /// # }
    /// ```
    pub fn wait_until(&mut self, name: &str, deadline: impl Fn(&V) -> SystemTime + 'static) -> Activity {
        let h = self.deadline(deadline);
        Activity::new(name, Kind::Wait(wit::WaitNode::Deadline(h)))
    }

    /// Raises the named fault.
    ///
    /// ```
    /// # use cairn_guest::Process;
    /// # #[derive(serde::Serialize, serde::Deserialize, Default)] struct V;
    /// # fn f(p: &mut Process<V>) {
    /// let fail = p.throw("reject", "rejected", "the order was rejected");
    /// # }
    /// ```
    pub fn throw(&mut self, name: &str, fault: &str, message: &str) -> Activity {
        Activity::new(name, Kind::Throw { fault: fault.to_string(), message: message.to_string(), data: None })
    }

    /// Raises the named fault with data computed from the variables.
    ///
    /// ```
    /// # use cairn_guest::Process;
    /// # #[derive(serde::Serialize, serde::Deserialize, Default)] struct V { id: String }
    /// # fn f(p: &mut Process<V>) {
    /// let fail = p.throw_with("reject", "rejected", "rejected", |v| serde_json::json!({ "id": v.id }));
    /// # }
    /// ```
    pub fn throw_with<D: Serialize>(
        &mut self,
        name: &str,
        fault: &str,
        message: &str,
        data: impl Fn(&V) -> D + 'static,
    ) -> Activity {
        let h = self.register(Box::new(move |v, _| Ok(Some(to_json(&data(v), "fault data")?))));
        Activity::new(name, Kind::Throw { fault: fault.to_string(), message: message.to_string(), data: Some(h) })
    }

    /// Ends the instance at once.
    ///
    /// ```
    /// # use cairn_guest::Process;
    /// # #[derive(serde::Serialize, serde::Deserialize, Default)] struct V;
    /// # fn f(p: &mut Process<V>) {
    /// let stop = p.terminate("stop");
    /// # }
    /// ```
    pub fn terminate(&mut self, name: &str) -> Activity {
        Activity::new(name, Kind::Terminate)
    }
}

impl<V: Serialize + DeserializeOwned + Default + 'static> Process<V> {
    /// A long-running scope around `body`: it persists when it completes and
    /// registers its compensation, and its fault handlers catch faults raised
    /// inside it. Add handlers with [`Process::on_fault`] and compensation
    /// with [`Process::on_compensate`].
    ///
    /// ```
    /// # use cairn_guest::Process;
    /// # #[derive(serde::Serialize, serde::Deserialize, Default)] struct V { paid: bool }
    /// # fn f(p: &mut Process<V>) {
    /// let charge = p.snippet("charge", |v| { v.paid = true; Ok(()) });
    /// let pay = p.scope("pay", charge);
    /// # }
    /// ```
    pub fn scope(&mut self, name: &str, body: Activity) -> Activity {
        let kind = Kind::Scope { body: Box::new(body), atomic: None, handlers: Vec::new(), compensation: None, timeout: None, events: Vec::new() };
        Activity::new(name, kind)
    }

    /// The process scope: a long-running scope named `process` around the
    /// whole process (return it from your `define`). Its fault handlers,
    /// event handlers and compensation handler are the process's own: they
    /// catch what no inner scope caught, listen while the whole process
    /// runs, and undo it. When a fault leaves the process and no handler of
    /// the process scope matches, its completed scopes are compensated
    /// (newest first), then the process's compensation handler runs, and
    /// the instance is faulted. Activity paths start with `process/`.
    ///
    /// ```
    /// # use cairn_guest::Process;
    /// # #[derive(serde::Serialize, serde::Deserialize, Default)] struct V { failed: bool, undone: bool }
    /// # fn f(p: &mut Process<V>) -> cairn_guest::Activity {
    /// let work = p.snippet("work", |_| Ok(()));
    /// let main = p.sequence("main", vec![work]);
    /// let process = p.process_scope(main);
    /// let process = p.on_fault(process, Some("rejected"), |v, _| { v.failed = true; Ok(()) }, None);
    /// p.on_compensate(process, |v, _| { v.undone = true; Ok(()) })
    /// # }
    /// ```
    pub fn process_scope(&mut self, body: Activity) -> Activity {
        self.scope("process", body)
    }

    /// An atomic scope around `body`: one transaction with no persistence
    /// point inside and one WebAssembly instance for all its handlers, so they
    /// can share non-serializable objects through [`scope_local`]. Its sends
    /// are buffered. On a fault the variables return to their value at the
    /// scope's start, buffered effects are dropped, and the scope runs again
    /// as `retry` allows before its fault handlers, or the enclosing scope,
    /// get the fault. It cannot wait.
    ///
    /// ```
    /// # use cairn_guest::{Process, Retry};
    /// # #[derive(serde::Serialize, serde::Deserialize, Default)] struct V { n: u32 }
    /// # fn f(p: &mut Process<V>) {
    /// let a = p.snippet("a", |v| { v.n += 1; Ok(()) });
    /// let b = p.snippet("b", |v| { v.n += 1; Ok(()) });
    /// let body = p.sequence("body", vec![a, b]);
    /// let tx = p.atomic_scope("tx", body, Retry { attempts: 3, backoff: std::time::Duration::from_millis(100) });
    /// # }
    /// ```
    pub fn atomic_scope(&mut self, name: &str, body: Activity, retry: Retry) -> Activity {
        let kind = Kind::Scope {
            body: Box::new(body),
            atomic: Some(retry),
            handlers: Vec::new(),
            compensation: None,
            timeout: None,
            events: Vec::new(),
        };
        Activity::new(name, kind)
    }

    /// Adds a fault handler to a scope: it catches faults named `fault`
    /// (`None`: every fault not caught by name). `reader` gets the fault;
    /// `body`, if any, runs after it. When the handler ends, the scope ends
    /// and the process goes on after it, unless the body rethrows.
    ///
    /// ```
    /// # use cairn_guest::Process;
    /// # #[derive(serde::Serialize, serde::Deserialize, Default)] struct V { declined: bool }
    /// # fn f(p: &mut Process<V>) {
    /// let charge = p.snippet("charge", |_| Err(cairn_guest::Fault::new("declined", "card declined")));
    /// let pay = p.scope("pay", charge);
    /// let pay = p.on_fault(pay, Some("declined"), |v, _fault| { v.declined = true; Ok(()) }, None);
    /// # }
    /// ```
    pub fn on_fault(
        &mut self,
        scope: Activity,
        fault: Option<&str>,
        reader: impl Fn(&mut V, &Fault) -> Result<(), Fault> + 'static,
        body: Option<Activity>,
    ) -> Activity {
        self.add_fault_handler(scope, fault, None, reader, body)
    }

    /// Adds a fault handler that catches faults named `fault` (`None`: any)
    /// only when `condition` holds on the fault (its name, message and
    /// data). The most specific handler wins: one that names the fault and
    /// has a condition that holds, then one that names it, then a catch-all
    /// with a condition that holds, then a catch-all.
    ///
    /// ```
    /// # use cairn_guest::Process;
    /// # #[derive(serde::Serialize, serde::Deserialize, Default)] struct V { retry_later: bool, declined: bool }
    /// # fn f(p: &mut Process<V>) {
    /// let charge = p.snippet("charge", |_| Err(cairn_guest::Fault::new("declined", "card declined").with_data(serde_json::json!({ "code": 51 }))));
    /// let pay = p.scope("pay", charge);
    /// // Code 51 (insufficient funds): try again later; any other decline: give up.
    /// let pay = p.on_fault_where(pay, Some("declined"), |_, f| f.data["code"] == 51, |v, _| { v.retry_later = true; Ok(()) }, None);
    /// let pay = p.on_fault(pay, Some("declined"), |v, _| { v.declined = true; Ok(()) }, None);
    /// # }
    /// ```
    pub fn on_fault_where(
        &mut self,
        scope: Activity,
        fault: Option<&str>,
        condition: impl Fn(&V, &Fault) -> bool + 'static,
        reader: impl Fn(&mut V, &Fault) -> Result<(), Fault> + 'static,
        body: Option<Activity>,
    ) -> Activity {
        let condition = self.register(Box::new(move |v, msg| {
            let fault = caught_fault(msg)?;
            Ok(Some(condition(v, &fault).to_string()))
        }));
        self.add_fault_handler(scope, fault, Some(condition), reader, body)
    }

    fn add_fault_handler(
        &mut self,
        scope: Activity,
        fault: Option<&str>,
        condition: Option<u32>,
        reader: impl Fn(&mut V, &Fault) -> Result<(), Fault> + 'static,
        body: Option<Activity>,
    ) -> Activity {
        let reader = self.register(Box::new(move |v, msg| {
            let fault = caught_fault(msg)?;
            reader(v, &fault).map(|()| None)
        }));
        let mut scope = scope;
        if let Kind::Scope { handlers, .. } = &mut scope.kind {
            let fault = fault.map(str::to_string);
            handlers.push(ScopeFaultHandler { fault, condition, reader: Some(reader), body: body.map(Box::new) });
        }
        scope
    }

    /// Adds an event handler on messages to a scope (or the process scope):
    /// each message of `operation`, routed by `correlation` like a
    /// receive's, is read by `reader` and runs `body`, as many times as
    /// messages come while the scope's body runs (one run at a time; a
    /// message that comes during a run waits for the next). The handler
    /// ends with the scope's body.
    ///
    /// ```
    /// # use cairn_guest::Process;
    /// # #[derive(serde::Serialize, serde::Deserialize, Default)] struct V { notes: Vec<String>, done: bool }
    /// #[derive(serde::Deserialize)]
    /// struct Note { text: String }
    /// # fn f(p: &mut Process<V>) {
    /// let finish = p.receive_any("finish", "finish").correlate("order");
    /// let work = p.scope("work", finish);
    /// let log = p.snippet("log", |_| Ok(()));
    /// let work = p.on_event(work, "note", "order", |v: &mut V, n: Note| { v.notes.push(n.text); Ok(()) }, log);
    /// # }
    /// ```
    pub fn on_event<M: DeserializeOwned>(
        &mut self,
        scope: Activity,
        operation: &str,
        correlation: &str,
        reader: impl Fn(&mut V, M) -> Result<(), Fault> + 'static,
        body: Activity,
    ) -> Activity {
        let reader = self.reader(format!("the body of message '{operation}'"), reader);
        let trigger = wit::EventTrigger::Message(wit::PickMessage {
            operation: operation.to_string(),
            correlation: Some(correlation.to_string()),
            reader: Some(reader),
        });
        add_event(scope, trigger, body)
    }

    /// Adds an alarm event handler to a scope (or the process scope): `body`
    /// runs once after a duration from the scope's start
    /// ([`Alarm::After`]), or repeatedly ([`Alarm::Every`]), while the
    /// scope's body runs. It ends with the scope's body.
    ///
    /// ```
    /// # use cairn_guest::{Alarm, Process};
    /// # #[derive(serde::Serialize, serde::Deserialize, Default)] struct V { reminders: u32 }
    /// # fn f(p: &mut Process<V>) {
    /// let approval = p.receive_any("approval", "approve").correlate("order");
    /// let wait = p.scope("await-approval", approval);
    /// let remind = p.snippet("remind", |v| { v.reminders += 1; Ok(()) });
    /// let wait = p.on_alarm(wait, Alarm::Every(std::time::Duration::from_secs(3600)), remind);
    /// # }
    /// ```
    pub fn on_alarm(&mut self, scope: Activity, alarm: Alarm, body: Activity) -> Activity {
        let trigger = match alarm {
            Alarm::After(d) => wit::EventTrigger::AfterMs(d.as_millis() as u64),
            Alarm::Every(d) => wit::EventTrigger::EveryMs(d.as_millis() as u64),
        };
        add_event(scope, trigger, body)
    }

    /// Adds an alarm event handler that fires once, at the deadline
    /// `deadline(v)` computes when the scope starts.
    ///
    /// ```
    /// # use cairn_guest::Process;
    /// # #[derive(serde::Serialize, serde::Deserialize, Default)] struct V { due_ms: u64, escalated: bool }
    /// # fn f(p: &mut Process<V>) {
    /// let approval = p.receive_any("approval", "approve").correlate("order");
    /// let wait = p.scope("await-approval", approval);
    /// let escalate = p.snippet("escalate", |v| { v.escalated = true; Ok(()) });
    /// let wait = p.on_alarm_at(wait, |v| std::time::UNIX_EPOCH + std::time::Duration::from_millis(v.due_ms), escalate);
    /// # }
    /// ```
    pub fn on_alarm_at(&mut self, scope: Activity, deadline: impl Fn(&V) -> SystemTime + 'static, body: Activity) -> Activity {
        let deadline = self.deadline(deadline);
        add_event(scope, wit::EventTrigger::Deadline(deadline), body)
    }

    /// Gives a scope its compensation handler: when the completed scope is
    /// compensated, `f` gets the current variables and the variables as they
    /// stood when the scope completed.
    ///
    /// ```
    /// # use cairn_guest::Process;
    /// # #[derive(serde::Serialize, serde::Deserialize, Default, Clone)] struct V { charged: u32, refunded: u32 }
    /// # fn f(p: &mut Process<V>) {
    /// let charge = p.snippet("charge", |v| { v.charged = 42; Ok(()) });
    /// let pay = p.scope("pay", charge);
    /// let pay = p.on_compensate(pay, |v, at_end| { v.refunded = at_end.charged; Ok(()) });
    /// # }
    /// ```
    pub fn on_compensate(&mut self, scope: Activity, f: impl Fn(&mut V, V) -> Result<(), Fault> + 'static) -> Activity {
        let h = self.register(Box::new(move |v, msg| {
            let at_end: V = from_json(msg, "the variables at the scope's end")?;
            f(v, at_end).map(|()| None)
        }));
        let mut scope = scope;
        if let Kind::Scope { compensation, .. } = &mut scope.kind {
            *compensation = Some(h);
        }
        scope
    }

    /// Compensates the completed scopes inside the enclosing scope (or the
    /// process): newest first, each one's inner scopes before it.
    ///
    /// ```
    /// # use cairn_guest::Process;
    /// # #[derive(serde::Serialize, serde::Deserialize, Default)] struct V;
    /// # fn f(p: &mut Process<V>) {
    /// let undo = p.compensate("undo-all");
    /// # }
    /// ```
    pub fn compensate(&mut self, name: &str) -> Activity {
        Activity::new(name, Kind::Compensate(None))
    }

    /// Compensates only the completed scope named `scope`.
    ///
    /// ```
    /// # use cairn_guest::Process;
    /// # #[derive(serde::Serialize, serde::Deserialize, Default)] struct V;
    /// # fn f(p: &mut Process<V>) {
    /// let refund = p.compensate_scope("refund", "pay");
    /// # }
    /// ```
    pub fn compensate_scope(&mut self, name: &str, scope: &str) -> Activity {
        Activity::new(name, Kind::Compensate(Some(scope.to_string())))
    }

    /// Waits for the first of its branches' messages and timers, and runs
    /// that branch; the others are withdrawn with the choice. When a timer is
    /// due as a message arrives, the timer's branch runs and the message stays
    /// queued for a later receive.
    ///
    /// ```
    /// # use cairn_guest::Process;
    /// # #[derive(serde::Serialize, serde::Deserialize, Default)] struct V { by: String }
    /// #[derive(serde::Deserialize)]
    /// struct Approval { by: String }
    /// # fn f(p: &mut Process<V>) {
    /// let ok = p.snippet("approved", |_| Ok(()));
    /// let late = p.snippet("expired", |_| Ok(()));
    /// let approval = p.on_message("approve", "order", |v: &mut V, a: Approval| { v.by = a.by; Ok(()) });
    /// let window = p.after(std::time::Duration::from_secs(3600));
    /// let decide = p.pick("decide", vec![(approval, ok), (window, late)]);
    /// # }
    /// ```
    pub fn pick(&mut self, name: &str, branches: Vec<(PickArm, Activity)>) -> Activity {
        Activity::new(name, Kind::Pick { branches: branches.into_iter().map(|(arm, body)| (arm.0, body)).collect(), creates: false })
    }

    /// A pick branch on a message of `operation` routed by `correlation`.
    ///
    /// ```
    /// # use cairn_guest::Process;
    /// # #[derive(serde::Serialize, serde::Deserialize, Default)] struct V { cancelled: bool }
    /// # fn f(p: &mut Process<V>) {
    /// let cancel = p.on_message("cancel", "order", |v: &mut V, _: serde_json::Value| { v.cancelled = true; Ok(()) });
    /// # }
    /// ```
    pub fn on_message<M: DeserializeOwned>(
        &mut self,
        operation: &str,
        correlation: &str,
        reader: impl Fn(&mut V, M) -> Result<(), Fault> + 'static,
    ) -> PickArm {
        let reader = self.reader(format!("the body of message '{operation}'"), reader);
        PickArm(wit::PickTrigger::Message(wit::PickMessage {
            operation: operation.to_string(),
            correlation: Some(correlation.to_string()),
            reader: Some(reader),
        }))
    }

    /// A pick branch on a timer, from the pick's start.
    ///
    /// ```
    /// # use cairn_guest::Process;
    /// # #[derive(serde::Serialize, serde::Deserialize, Default)] struct V;
    /// # fn f(p: &mut Process<V>) {
    /// let day = p.after(std::time::Duration::from_secs(86_400));
    /// # }
    /// ```
    pub fn after(&mut self, duration: Duration) -> PickArm {
        PickArm(wit::PickTrigger::AfterMs(duration.as_millis() as u64))
    }

    /// Runs `branches` in parallel within the instance, sharing its
    /// variables, and completes when all have. A branch runs until it waits,
    /// then another goes on; a fault in one cancels the others.
    ///
    /// ```
    /// # use cairn_guest::Process;
    /// # #[derive(serde::Serialize, serde::Deserialize, Default)] struct V;
    /// # fn f(p: &mut Process<V>) {
    /// let credit = p.receive_any("credit", "credit-ok").correlate("order");
    /// let stock = p.receive_any("stock", "stock-ok").correlate("order");
    /// let both = p.flow("checks", vec![credit, stock]);
    /// # }
    /// ```
    pub fn flow(&mut self, name: &str, branches: Vec<Activity>) -> Activity {
        Activity::new(name, Kind::Flow(branches))
    }

    /// Runs `body` once per element of the JSON array at `items` (a JSON
    /// pointer into the variables, read when the activity starts), one after
    /// another. Handlers inside read the element with [`item`].
    ///
    /// ```
    /// # use cairn_guest::Process;
    /// # #[derive(serde::Serialize, serde::Deserialize, Default)] struct V { lines: Vec<String>, seen: Vec<String> }
    /// # fn f(p: &mut Process<V>) {
    /// let note = p.snippet("note", |v| { v.seen.extend(cairn_guest::item::<String>()); Ok(()) });
    /// let each = p.for_each("each-line", "/lines", note);
    /// # }
    /// ```
    pub fn for_each(&mut self, name: &str, items: &str, body: Activity) -> Activity {
        Activity::new(name, Kind::ForEach { items: items.to_string(), parallel: false, body: Box::new(body), completion: None })
    }

    /// Like [`Process::for_each`], with the iterations in parallel (as the
    /// branches of a flow), joined when all finish.
    ///
    /// ```
    /// # use cairn_guest::Process;
    /// # #[derive(serde::Serialize, serde::Deserialize, Default)] struct V { skus: Vec<String> }
    /// # fn f(p: &mut Process<V>) {
    /// let reserve = p.invoke_activity(
    ///     "reserve", "stock", "reserve",
    ///     |_| Ok(serde_json::json!({ "sku": cairn_guest::item::<String>() })),
    ///     |_, _: serde_json::Value| Ok(()),
    /// );
    /// let all = p.for_each_parallel("reserve-all", "/skus", reserve);
    /// # }
    /// ```
    pub fn for_each_parallel(&mut self, name: &str, items: &str, body: Activity) -> Activity {
        Activity::new(name, Kind::ForEach { items: items.to_string(), parallel: true, body: Box::new(body), completion: None })
    }

    /// Gives a for-each a completion condition: after each iteration, once
    /// `done(v)` holds, the for-each ends early. In the parallel form, the
    /// iterations not yet finished are then cancelled (what they wait for is
    /// withdrawn, as for the branches of a flow).
    ///
    /// ```
    /// # use cairn_guest::Process;
    /// # #[derive(serde::Serialize, serde::Deserialize, Default)] struct V { offers: Vec<u32>, best: Option<u32> }
    /// # fn f(p: &mut Process<V>) {
    /// let consider = p.snippet("consider", |v| {
    ///     if let Some(o) = cairn_guest::item::<u32>().filter(|o| *o < 100) { v.best = Some(o); }
    ///     Ok(())
    /// });
    /// let each = p.for_each("offers", "/offers", consider);
    /// // Stop at the first offer under 100.
    /// let each = p.until(each, |v| v.best.is_some());
    /// # }
    /// ```
    pub fn until(&mut self, for_each: Activity, done: impl Fn(&V) -> bool + 'static) -> Activity {
        let condition = self.condition(done);
        let mut for_each = for_each;
        if let Kind::ForEach { completion, .. } = &mut for_each.kind {
            *completion = Some(condition);
        }
        for_each
    }

    /// Suspends the instance until an operator resumes it (`cairn resume`).
    ///
    /// ```
    /// # use cairn_guest::Process;
    /// # #[derive(serde::Serialize, serde::Deserialize, Default)] struct V;
    /// # fn f(p: &mut Process<V>) {
    /// let review = p.suspend("review", "a person must check this order");
    /// # }
    /// ```
    pub fn suspend(&mut self, name: &str, reason: &str) -> Activity {
        Activity::new(name, Kind::Suspend(reason.to_string()))
    }

    /// Starts an instance of `process` with a message of `operation` that its
    /// instance-creating receive takes; the child runs in its own transaction
    /// context and may report back by message, correlated to this instance.
    ///
    /// ```
    /// # use cairn_guest::Process;
    /// # #[derive(serde::Serialize, serde::Deserialize, Default)] struct V { order: String }
    /// # fn f(p: &mut Process<V>) {
    /// let check = p.start_process("check", "credit-check", "check-start", |v| Ok(serde_json::json!({ "order": v.order })));
    /// # }
    /// ```
    pub fn start_process<B: Serialize>(
        &mut self,
        name: &str,
        process: &str,
        operation: &str,
        body: impl Fn(&V) -> Result<B, Fault> + 'static,
    ) -> Activity {
        let body = self.register(Box::new(move |v, _| Ok(Some(to_json(&body(v)?, "message body")?))));
        Activity::new(name, Kind::StartProcess { process: process.to_string(), operation: operation.to_string(), body })
    }

    /// Inside a fault handler: raises the caught fault again, further out.
    ///
    /// ```
    /// # use cairn_guest::Process;
    /// # #[derive(serde::Serialize, serde::Deserialize, Default)] struct V;
    /// # fn f(p: &mut Process<V>) {
    /// let again = p.rethrow("give-up");
    /// # }
    /// ```
    pub fn rethrow(&mut self, name: &str) -> Activity {
        Activity::new(name, Kind::Rethrow)
    }
}

/// The fault a fault handler's reader or condition gets, from its JSON.
fn caught_fault(msg: Option<&str>) -> Result<Fault, Fault> {
    let f: serde_json::Value = from_json(msg, "the caught fault")?;
    Ok(Fault {
        name: f["name"].as_str().unwrap_or_default().to_string(),
        message: f["message"].as_str().unwrap_or_default().to_string(),
        data: f["data"].clone(),
    })
}

/// Adds an event handler to a scope (nothing, on another activity).
fn add_event(scope: Activity, trigger: wit::EventTrigger, body: Activity) -> Activity {
    let mut scope = scope;
    if let Kind::Scope { events, .. } = &mut scope.kind {
        events.push((trigger, body));
    }
    scope
}

/// Flattens the tree into the arena that crosses WIT.
fn flatten(activity: Activity, nodes: &mut Vec<wit::Node>) -> u32 {
    let kind = match activity.kind {
        Kind::Sequence(children) => wit::Activity::Sequence(children.into_iter().map(|c| flatten(c, nodes)).collect()),
        Kind::Snippet(h) => wit::Activity::Snippet(h),
        Kind::IfElse { condition, then, otherwise } => wit::Activity::IfElse(wit::IfNode {
            condition,
            then_branch: flatten(*then, nodes),
            else_branch: otherwise.map(|o| flatten(*o, nodes)),
        }),
        Kind::While { condition, body } => {
            wit::Activity::WhileLoop(wit::WhileNode { condition, body: flatten(*body, nodes) })
        }
        Kind::RepeatUntil { condition, body } => {
            wit::Activity::RepeatUntil(wit::WhileNode { condition, body: flatten(*body, nodes) })
        }
        Kind::Switch { cases, otherwise } => {
            let cases = cases.into_iter().map(|(condition, body)| wit::SwitchCase { condition, body: flatten(body, nodes) }).collect();
            wit::Activity::Switch(wit::SwitchNode { cases, otherwise: otherwise.map(|o| flatten(*o, nodes)) })
        }
        Kind::Receive { operation, correlation, creates, request_response, reader, timeout } => {
            wit::Activity::Receive(wit::ReceiveNode {
                operation,
                correlation,
                creates_instance: creates,
                request_response,
                reader,
                timeout,
            })
        }
        Kind::Reply { operation, body } => wit::Activity::Reply(wit::ReplyNode { operation, body }),
        Kind::Invoke { target, operation, input, output, policy } => {
            wit::Activity::Invoke(wit::InvokeNode { target, operation, input, output, policy })
        }
        Kind::Send { target, operation, body } => wit::Activity::Send(wit::SendNode { target, operation, body }),
        Kind::Wait(w) => wit::Activity::Wait(w),
        Kind::Throw { fault, message, data } => wit::Activity::Throw(wit::ThrowNode { fault, message, data }),
        Kind::Terminate => wit::Activity::Terminate,
        Kind::Scope { body, atomic, handlers, compensation, timeout, events } => {
            let body = flatten(*body, nodes);
            let atomic = atomic.map(|r| wit::AtomicPolicy {
                max_attempts: r.attempts.max(1),
                backoff_ms: r.backoff.as_millis() as u64,
            });
            let handlers = handlers
                .into_iter()
                .map(|h| wit::FaultHandler {
                    fault: h.fault,
                    condition: h.condition,
                    reader: h.reader,
                    body: h.body.map(|b| flatten(*b, nodes)),
                })
                .collect();
            let timeout_ms = timeout.map(|t| t.as_millis() as u64);
            let events =
                events.into_iter().map(|(trigger, body)| wit::EventHandler { trigger, body: flatten(body, nodes) }).collect();
            wit::Activity::Scope(wit::ScopeNode { body, atomic, handlers, compensation, timeout_ms, events })
        }
        Kind::Compensate(scope) => wit::Activity::Compensate(scope),
        Kind::Rethrow => wit::Activity::Rethrow,
        Kind::Suspend(reason) => wit::Activity::Suspend(reason),
        Kind::Flow(branches) => wit::Activity::Flow(branches.into_iter().map(|b| flatten(b, nodes)).collect()),
        Kind::ForEach { items, parallel, body, completion } => {
            wit::Activity::ForEach(wit::ForEachNode { items, parallel, body: flatten(*body, nodes), completion })
        }
        Kind::Pick { branches, creates } => {
            let branches =
                branches.into_iter().map(|(trigger, body)| wit::PickBranch { trigger, body: flatten(body, nodes) }).collect();
            if creates {
                wit::Activity::CreatingPick(branches)
            } else {
                wit::Activity::Pick(branches)
            }
        }
        Kind::StartProcess { process, operation, body } => wit::Activity::StartProcess(wit::SendNode {
            target: wit::Target::Process(process),
            operation,
            body,
        }),
    };
    let transaction = match activity.transaction {
        None => wit::Transaction::Default,
        Some(Transaction::CommitBefore) => wit::Transaction::CommitBefore,
        Some(Transaction::CommitAfter) => wit::Transaction::CommitAfter,
        Some(Transaction::Participates) => wit::Transaction::Participates,
        Some(Transaction::RequiresOwn) => wit::Transaction::RequiresOwn,
    };
    nodes.push(wit::Node { name: activity.name, activity: kind, transaction });
    (nodes.len() - 1) as u32
}

#[doc(hidden)]
pub fn __describe<V: Serialize + DeserializeOwned + Default + 'static>(
    name: &str,
    define: fn(&mut Process<V>) -> Activity,
) -> wit::Definition {
    let mut p = Process::new(Mode::Describe);
    let root_activity = define(&mut p);
    let mut nodes = Vec::new();
    let root = flatten(root_activity, &mut nodes);
    wit::Definition {
        name: name.to_string(),
        kind: p.kind,
        keep_final_state: p.keep_final_state,
        deferred_recovery: p.deferred_recovery,
        initial_variables: serde_json::to_string(&V::default()).unwrap_or_else(|_| "null".into()),
        correlation_sets: p.correlation_sets,
        nodes,
        root,
        handler_count: p.next_handler,
    }
}

/// The handler id the host calls to check that a document decodes as the
/// variables type, without running any handler of the process: the call
/// returns the variables decoded and encoded again, or the fault
/// `cairn.deserialize` naming what failed to decode. No process registers
/// this many handlers.
pub const CHECK_VARIABLES: u32 = u32::MAX;

#[doc(hidden)]
pub fn __call<V: Serialize + DeserializeOwned + Default + 'static>(
    define: fn(&mut Process<V>) -> Activity,
    handler: u32,
    variables: String,
    message: Option<String>,
    item: Option<String>,
) -> Result<wit::CallOutput, wit::Fault> {
    ITEM.with(|i| *i.borrow_mut() = item);
    if handler == CHECK_VARIABLES {
        // The host asks whether a document decodes as the variables type
        // (an operator's edit, a migration): decoded and encoded again, it
        // runs no handler of the process.
        let v: V = from_json(Some(&variables), "the variables").map_err(Fault::into_wit)?;
        let variables = to_json(&v, "the variables").map_err(Fault::into_wit)?;
        return Ok(wit::CallOutput { variables, output: None });
    }
    let mut p = Process::new(Mode::Dispatch { target: handler, found: None });
    let _ = define(&mut p);
    let Mode::Dispatch { found: Some(f), .. } = p.mode else {
        return Err(Fault::new("cairn.unknown-handler", format!("handler {handler} does not exist")).into_wit());
    };
    let mut v: V = from_json(Some(&variables), "the variables").map_err(Fault::into_wit)?;
    let output = f(&mut v, message.as_deref()).map_err(Fault::into_wit)?;
    let variables = to_json(&v, "the variables").map_err(Fault::into_wit)?;
    Ok(wit::CallOutput { variables, output })
}

/// Exports a process component: its name, its variables type and the
/// function that builds its activity tree. Use once per component.
///
/// ```no_run
/// # use cairn_guest::{Activity, Process};
/// #[derive(serde::Serialize, serde::Deserialize, Default)]
/// struct Vars { n: u32 }
/// fn define(p: &mut Process<Vars>) -> Activity {
///     let bump = p.snippet("bump", |v| { v.n += 1; Ok(()) });
///     p.sequence("main", vec![bump])
/// }
/// cairn_guest::export_process!("counter", Vars, define);
/// ```
#[macro_export]
macro_rules! export_process {
    ($name:expr, $vars:ty, $define:path) => {
        struct __CairnProcess;
        impl $crate::bindings::Guest for __CairnProcess {
            fn describe() -> $crate::bindings::cairn::process::types::Definition {
                $crate::__describe::<$vars>($name, $define)
            }
            fn call(
                handler: u32,
                variables: ::std::string::String,
                message: ::std::option::Option<::std::string::String>,
                item: ::std::option::Option<::std::string::String>,
            ) -> ::std::result::Result<
                $crate::bindings::cairn::process::types::CallOutput,
                $crate::bindings::cairn::process::types::Fault,
            > {
                $crate::__call::<$vars>($define, handler, variables, message, item)
            }
        }
        $crate::bindings::__export_process_world!(__CairnProcess with_types_in $crate::bindings);
    };
}
