//! Test Cairn process definitions natively, in `cargo test`: no server, no
//! WebAssembly. A [`ProcessTest`] runs one instance of a definition on the
//! pure engine (`cairn-engine`, the same state machine the host runs), with
//! the guest SDK's [`Process`] builder compiled for the host and its
//! handlers called directly.
//!
//! - **Virtual clock**: time stands still until the test moves it;
//!   [`ProcessTest::skip_to_next_timer`] jumps straight to the next timer
//!   (a wait, a receive's timeout, a pick's alarm, a scope's deadline), so a
//!   test of a one-day timeout runs in milliseconds. The clock starts at the
//!   wall-clock time the test began, so handlers that compute deadlines from
//!   `SystemTime::now()` agree with it.
//! - **Stubbed activities and child processes**: every invoke of an
//!   activity component or of another process is answered by a stub the
//!   test registers ([`ProcessTest::stub_activity`],
//!   [`ProcessTest::stub_process`]); an invoke without one panics, naming it.
//! - **Messages sent in** with [`ProcessTest::send`]: the first creates the
//!   instance (through its instance-creating receive), the rest queue for it
//!   like the host's inbox until a receive or pick takes them. One-way sends,
//!   started processes and replies are recorded ([`ProcessTest::sent`],
//!   [`ProcessTest::replies`]).
//! - **Assertions** on the variables (typed), the position (the activity
//!   path), the status and fault, and the history of persistence points
//!   with their reasons, as `cairn history` shows them.
//!
//! What it does not model: correlation routing between instances (every
//! message goes to the one instance), the durability of the store, crashes,
//! and activity retries or timeouts (a stub answers once, at once).
//!
//! A process crate exposes its `define` function and variables type (keep
//! `crate-type = ["cdylib", "rlib"]` so that its tests link natively):
//!
//! ```
//! use cairn_guest::{Activity, Process};
//! use cairn_testkit::ProcessTest;
//! use serde::{Deserialize, Serialize};
//! use std::time::Duration;
//!
//! #[derive(Serialize, Deserialize, Default)]
//! pub struct Vars { pub order: String, pub price: f64, pub reminded: bool }
//!
//! #[derive(Deserialize)]
//! struct Order { order: String }
//!
//! pub fn define(p: &mut Process<Vars>) -> Activity {
//!     p.correlation_set("order", &[("order", "/order")]);
//!     let take = p
//!         .receive("take", "order", |v: &mut Vars, m: Order| { v.order = m.order; Ok(()) })
//!         .creates_instance()
//!         .correlate("order");
//!     let price = p.invoke_activity(
//!         "price", "pricing", "quote",
//!         |v| Ok(serde_json::json!({ "order": v.order })),
//!         |v, q: serde_json::Value| { v.price = q["total"].as_f64().unwrap_or(0.0); Ok(()) },
//!     );
//!     let pause = p.wait_for("pause", Duration::from_secs(24 * 3600));
//!     let remind = p.snippet("remind", |v| { v.reminded = true; Ok(()) });
//!     p.sequence("main", vec![take, price, pause, remind])
//! }
//!
//! let mut t = ProcessTest::new("shop", define);
//! t.stub_activity("pricing", "quote", |_| Ok(serde_json::json!({ "total": 12.5 })));
//! t.send("order", serde_json::json!({ "order": "o-1" }));
//! assert_eq!(t.position(), "main/pause");
//! assert_eq!(t.variables().price, 12.5);
//! assert!(t.skip_to_next_timer(), "a day passes at once");
//! assert_eq!(t.status(), cairn_testkit::Status::Completed);
//! assert!(t.variables().reminded);
//! assert_eq!(t.reasons(), ["created", "commit-after", "dispatch", "commit-after", "commit-before", "waiting", "completed"]);
//! ```

use cairn_engine::{self as engine, Control, Definition, Delivery, Effect, HandlerOutput, Input, Machine, Snapshot, Wait, Yield};
use cairn_guest::bindings::cairn::process::types as wit;
use cairn_guest::{Activity, Process};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use cairn_engine::{Fault, FaultRecord, Reason, Status};

type Stub = Box<dyn FnMut(Value) -> Result<Value, Fault>>;

/// One persistence point the instance took, as its history records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Point {
    pub reason: Reason,
    /// The activity path it belongs to.
    pub path: String,
    /// The instance's status after it.
    pub status: Status,
}

/// A message the instance sent one way, or an instance it started.
#[derive(Clone, Debug, PartialEq)]
pub struct Sent {
    /// `activity 'notifier'` or `process 'billing'`.
    pub target: String,
    pub operation: String,
    pub body: Value,
    /// A start-process: the message creates an instance of `target`.
    pub start: bool,
}

/// The answer to a request-response receive: a body, or the fault that ended
/// the instance before it replied.
#[derive(Clone, Debug, PartialEq)]
pub struct Reply {
    pub operation: String,
    pub body: Value,
    pub fault: Option<Fault>,
}

/// One instance of a definition, run on the pure engine (see the crate docs).
pub struct ProcessTest<V: 'static> {
    define: fn(&mut Process<V>) -> Activity,
    def: Definition,
    /// The instance once a message created it.
    snap: Option<Snapshot>,
    now_ms: u64,
    inbox: VecDeque<Delivery>,
    next_seq: u64,
    /// Timers set and not cleared, as (due, id).
    timers: BTreeSet<(u64, u64)>,
    /// Results of calls made, by call id, until the instance takes them.
    results: HashMap<u64, Result<String, Fault>>,
    stubs: HashMap<(String, String), Stub>,
    history: Vec<Point>,
    sent: Vec<Sent>,
    replies: Vec<Reply>,
    /// Request-response message ids -> operation, to name replies.
    requests: HashMap<String, String>,
}

impl<V: Serialize + DeserializeOwned + Default + 'static> ProcessTest<V> {
    /// A test of the process `name` that `define` builds. Panics, listing
    /// the problems, if the definition fails deploy-time validation.
    pub fn new(name: &str, define: fn(&mut Process<V>) -> Activity) -> ProcessTest<V> {
        let def = definition_from_wit(cairn_guest::__describe::<V>(name, define));
        if let Err(problems) = def.validate() {
            panic!("the definition of '{name}' would be refused at deploy: {problems}");
        }
        let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        ProcessTest {
            define,
            def,
            snap: None,
            now_ms,
            inbox: VecDeque::new(),
            next_seq: 1,
            timers: BTreeSet::new(),
            results: HashMap::new(),
            stubs: HashMap::new(),
            history: Vec::new(),
            sent: Vec::new(),
            replies: Vec::new(),
            requests: HashMap::new(),
        }
    }

    /// Answers every invoke of `operation` on the activity component
    /// `activity` with `answer(input)`: an output, or a fault.
    pub fn stub_activity(
        &mut self,
        activity: &str,
        operation: &str,
        answer: impl FnMut(Value) -> Result<Value, Fault> + 'static,
    ) -> &mut Self {
        self.stubs.insert((engine::Target::Activity(activity.into()).to_string(), operation.into()), Box::new(answer));
        self
    }

    /// Answers every invoke of `operation` on the process `process` (a child
    /// process called synchronously) with `answer(input)`.
    pub fn stub_process(
        &mut self,
        process: &str,
        operation: &str,
        answer: impl FnMut(Value) -> Result<Value, Fault> + 'static,
    ) -> &mut Self {
        self.stubs.insert((engine::Target::Process(process.into()).to_string(), operation.into()), Box::new(answer));
        self
    }

    /// Sends a message of `operation`: the first one creates the instance;
    /// later ones queue for it. The instance then runs until it waits or ends.
    pub fn send(&mut self, operation: &str, body: impl Serialize) -> &mut Self {
        let body = serde_json::to_string(&body).expect("the message body serializes");
        let seq = self.next_seq;
        self.next_seq += 1;
        let message_id = format!("test-message-{seq}");
        if self.is_request(operation) {
            self.requests.insert(message_id.clone(), operation.to_string());
        }
        self.inbox.push_back(Delivery { seq, message_id, operation: operation.into(), body });
        if self.snap.is_none() {
            let id = "test-instance".to_string();
            let snap = Snapshot::new(id, &self.def, "test".into(), self.def.initial_variables.clone(), self.now_ms);
            self.snap = Some(snap);
            self.history.push(Point { reason: Reason::Created, path: self.def.node(self.def.root).name.clone(), status: Status::Running });
        }
        self.run(Input::Continue);
        self
    }

    /// Moves the virtual clock on by `by`; timers that come due fire.
    pub fn advance(&mut self, by: Duration) -> &mut Self {
        self.now_ms = self.now_ms.saturating_add(by.as_millis() as u64);
        self.timers.retain(|(due, _)| *due > self.now_ms);
        self.run(Input::Continue);
        self
    }

    /// Moves the virtual clock to the next timer the instance set and lets
    /// it fire. `false` if no timer is set.
    pub fn skip_to_next_timer(&mut self) -> bool {
        let Some(&(due, _)) = self.timers.iter().next() else { return false };
        self.now_ms = self.now_ms.max(due);
        self.timers.retain(|(d, _)| *d > self.now_ms);
        self.run(Input::Continue);
        true
    }

    /// An operator resumes the suspended instance.
    pub fn resume(&mut self) -> &mut Self {
        self.run(Input::Control(Control::Resume));
        self
    }

    /// An operator retries the faulted instance from the activity that
    /// faulted, with new variables if given.
    pub fn retry(&mut self, variables: Option<V>) -> &mut Self {
        let variables = variables.map(|v| serde_json::to_string(&v).expect("the variables serialize"));
        self.run(Input::Control(Control::Retry { variables }));
        self
    }

    /// An operator cancels the instance: its handlers run, then it ends.
    pub fn cancel(&mut self) -> &mut Self {
        self.run(Input::Control(Control::Cancel));
        self
    }

    /// The variables as they stand.
    pub fn variables(&self) -> V {
        serde_json::from_str(&self.instance().variables).expect("the instance's variables decode")
    }

    pub fn status(&self) -> Status {
        self.instance().status
    }

    /// The activity path the instance stands at (`main/approval/wait`); empty once it ended.
    pub fn position(&self) -> String {
        self.instance().path(&self.def)
    }

    /// The fault that ended the instance, with the activity path it was raised at.
    pub fn fault(&self) -> Option<&FaultRecord> {
        self.instance().fault.as_ref()
    }

    /// The instance's persistence points, oldest first.
    pub fn history(&self) -> &[Point] {
        &self.history
    }

    /// The reasons of the persistence points, as `cairn history` names them.
    pub fn reasons(&self) -> Vec<String> {
        self.history.iter().map(|p| serde_json::to_value(p.reason).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default()).collect()
    }

    /// Messages sent one way and instances started, in order.
    pub fn sent(&self) -> &[Sent] {
        &self.sent
    }

    /// Replies to request-response receives, in order.
    pub fn replies(&self) -> &[Reply] {
        &self.replies
    }

    /// The virtual clock.
    pub fn now(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.now_ms)
    }

    /// The definition as the engine runs it.
    pub fn definition(&self) -> &Definition {
        &self.def
    }

    /// The instance's snapshot, as the store would hold it.
    pub fn snapshot(&self) -> &Snapshot {
        self.instance()
    }

    fn instance(&self) -> &Snapshot {
        self.snap.as_ref().expect("no instance yet: send the message that creates it first")
    }

    fn is_request(&self, operation: &str) -> bool {
        self.def.nodes.iter().any(|n| matches!(&n.activity, engine::Activity::Receive { operation: o, request_response: true, .. } if o == operation))
    }

    /// Runs the instance from its snapshot until it waits, is suspended or ends.
    fn run(&mut self, first: Input) {
        let Some(snap) = self.snap.take() else { return };
        // The machine borrows the definition while `self` changes beside it.
        let def = self.def.clone();
        let mut m = Machine::new(&def, snap);
        let mut input = first;
        let mut consumed: BTreeSet<u64> = BTreeSet::new();
        loop {
            let y = m.step(input, self.now_ms);
            input = match y {
                Yield::Call(c) => {
                    let variables = m.snapshot().variables.clone();
                    let out = cairn_guest::__call::<V>(self.define, c.handler, variables, c.message, c.item);
                    Input::Handler(
                        out.map(|o| HandlerOutput { variables: o.variables, output: o.output })
                            .map_err(|f| Fault { name: f.name, message: f.message, data: f.data }),
                    )
                }
                Yield::Persist(reason) => {
                    self.point(&mut m, reason);
                    Input::Continue
                }
                Yield::Sleep(ms) => {
                    self.now_ms = self.now_ms.saturating_add(ms);
                    Input::Continue
                }
                Yield::Finished(reason) => {
                    self.point(&mut m, reason);
                    break;
                }
                Yield::Suspended => {
                    if m.needs_persistence() {
                        self.point(&mut m, Reason::Suspended);
                    }
                    break;
                }
                Yield::Await(wait) => match self.at_hand(&wait, &mut m, &consumed) {
                    Some(ready) => {
                        if let Input::Message(d) = &ready {
                            consumed.insert(d.seq);
                        }
                        ready
                    }
                    None => {
                        if m.needs_persistence() {
                            self.point(&mut m, Reason::Waiting);
                        }
                        break;
                    }
                },
            };
        }
        self.inbox.retain(|d| !consumed.contains(&d.seq));
        self.snap = Some(m.snapshot().clone());
    }

    /// What the instance waits for, if it is here: a queued message, a
    /// call's result (made now if it runs inline).
    fn at_hand(&mut self, wait: &Wait, m: &mut Machine, consumed: &BTreeSet<u64>) -> Option<Input> {
        match wait {
            Wait::Message { operation, .. } => {
                let d = self.inbox.iter().find(|d| d.operation == *operation && !consumed.contains(&d.seq))?;
                Some(Input::Message(d.clone()))
            }
            Wait::Pick { operations } => {
                let d = self.inbox.iter().find(|d| operations.contains(&d.operation) && !consumed.contains(&d.seq))?;
                Some(Input::Message(d.clone()))
            }
            Wait::Invoke { call_id } => {
                if let Some(Effect::Invoke { target, operation, input, .. }) = m.take_invoke(*call_id) {
                    let result = self.call(&target, &operation, &input);
                    return Some(Input::InvokeResult { call_id: *call_id, result, resources: Default::default() });
                }
                let result = self.results.remove(call_id)?;
                Some(Input::InvokeResult { call_id: *call_id, result, resources: Default::default() })
            }
            Wait::Many(waits) => waits.iter().find_map(|w| self.at_hand(w, m, consumed)),
            Wait::Timer { .. } => None,
        }
    }

    /// Takes a persistence point and carries out its effects at once.
    fn point(&mut self, m: &mut Machine, reason: Reason) {
        let point = m.persistence_point(reason, self.now_ms);
        self.history.push(Point { reason: point.reason, path: point.path.clone(), status: point.snapshot.status });
        for effect in point.effects {
            match effect {
                Effect::SetTimer { timer_id, due_ms } => {
                    self.timers.insert((due_ms, timer_id));
                }
                Effect::ClearTimer { timer_id, due_ms } => {
                    self.timers.remove(&(due_ms, timer_id));
                }
                Effect::Invoke { call_id, target, operation, input, .. } => {
                    let result = self.call(&target, &operation, &input);
                    self.results.insert(call_id, result);
                }
                Effect::Send { target, operation, body, start, .. } => self.sent.push(Sent {
                    target: target.to_string(),
                    operation,
                    body: serde_json::from_str(&body).unwrap_or(Value::Null),
                    start,
                }),
                Effect::Reply { message_id, body, fault } => self.replies.push(Reply {
                    operation: self.requests.get(&message_id).cloned().unwrap_or_default(),
                    body: serde_json::from_str(&body).unwrap_or(Value::Null),
                    fault,
                }),
                Effect::ConsumeMessage { .. }
                | Effect::Correlate { .. }
                | Effect::Uncorrelate { .. }
                | Effect::InvokeDone { .. }
                | Effect::ResourceWrites { .. } => {}
            }
        }
    }

    /// Calls the stub for `target`'s `operation`.
    fn call(&mut self, target: &engine::Target, operation: &str, input: &str) -> Result<String, Fault> {
        let key = (target.to_string(), operation.to_string());
        let Some(stub) = self.stubs.get_mut(&key) else {
            panic!("the instance invokes {target} operation '{operation}', which has no stub: add one with stub_activity or stub_process");
        };
        let input = serde_json::from_str(input).unwrap_or(Value::Null);
        stub(input).map(|out| out.to_string())
    }
}

// The definition the guest describes, as the engine takes it: the host's
// conversion at deploy, instantiated over the SDK's bindings.
cairn_engine::definition_from_wit!(fn definition_from_wit(wit));
