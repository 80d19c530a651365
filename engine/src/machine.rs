//! The interpreter: applies one input to an instance snapshot and says what
//! the driver must do next.
//!
//! Rules of the data this module owns:
//! - `Snapshot` is everything that survives a persistence point. Between two
//!   yields it is always resumable: feeding `Input::Continue` to a snapshot
//!   loaded from the store re-issues whatever the instance was doing.
//! - Effects decided since the last persistence point live in
//!   `Machine::effects`; the driver takes them at `Yield::Persist`,
//!   `Yield::Await` (when it must wait) and `Yield::Finished`, and writes them in
//!   the same batch as the snapshot. They never leave before that commit.
//! - A handler call is a `Yield::Call`; the driver must answer with
//!   `Input::Handler` before anything else. No persistence point falls
//!   between a call and its result.
//! - Time enters only as `now_ms` on each input; ids come from the snapshot's
//!   own counter. Nothing here does I/O.

use super::definition::{Activity, Definition, NodeId, PickTrigger, ProcessKind, Target, WaitFor};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    /// Executing, or waiting for an activity result.
    Running,
    /// Persisted and waiting for a message or a timer.
    Waiting,
    /// Stopped by an operator until resumed; messages still queue.
    Suspended,
    Completed,
    Faulted,
    Terminated,
}

impl Status {
    pub fn is_terminal(self) -> bool {
        matches!(self, Status::Completed | Status::Faulted | Status::Terminated)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Running => "running",
            Status::Waiting => "waiting",
            Status::Suspended => "suspended",
            Status::Completed => "completed",
            Status::Faulted => "faulted",
            Status::Terminated => "terminated",
        }
    }
}

/// A fault: raised by a handler, a throw, an activity or the host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fault {
    pub name: String,
    pub message: String,
    /// JSON text.
    pub data: String,
}

impl Fault {
    pub fn new(name: impl Into<String>, message: impl Into<String>) -> Fault {
        Fault { name: name.into(), message: message.into(), data: "null".into() }
    }
}

/// A fault that left the process, with where it was raised.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultRecord {
    #[serde(flatten)]
    pub fault: Fault,
    pub path: String,
}

/// Where one activity of the tree stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "phase")]
pub enum Phase {
    /// Not begun: its commit-before, if any, is still due.
    Enter,
    /// Begun: do the activity's own work.
    Started,
    /// Sequence: next child to run; while, if: a child is running.
    Child { next: u32 },
    /// Waiting for a message; with a timer if the receive has a timeout.
    AwaitMessage { operation: String, timer: Option<TimerRef> },
    AwaitTimer { timer_id: u64, due_ms: u64 },
    AwaitInvoke { call_id: u64 },
    /// Pick: waiting for the first message or timer; the timers by branch.
    AwaitPick { timers: Vec<(u32, TimerRef)> },
    /// Sequential for-each: the items, and the next one to run.
    Each { items: Vec<String>, next: u32 },
    /// Flow: its branches. The active one's frames are on the stack above
    /// this frame; the others are kept here, ready, waiting or done.
    Flow { branches: Vec<Branch> },
    /// Scope: a fault handler runs (as the child) for this caught fault.
    Handling { caught: FaultRecord },
    /// Compensation steps still to run, then what follows them.
    Compensating { queue: Vec<CompensationStep>, then: AfterCompensation },
    /// Finished: its commit-after, if any, is still due.
    Done,
}

/// One branch of a flow.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Branch {
    pub state: BranchState,
    /// Its frames while it is not the active branch.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stack: Vec<Frame>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BranchState {
    Ready,
    /// Its frames are on the stack: it runs.
    Active,
    Waiting,
    Done,
}

/// A completed long-running scope whose compensation is registered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registered {
    pub scope: String,
    pub handler: Option<u32>,
    /// JSON text of the variables as they stood when the scope completed.
    pub variables: String,
    /// Completed scopes nested in this one, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inner: Vec<Registered>,
}

/// One compensation handler still to run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompensationStep {
    pub scope: String,
    pub handler: u32,
    pub variables: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AfterCompensation {
    /// The compensate activity is done.
    Done,
    /// A scope's default fault handler: raise the fault further out.
    Rethrow(FaultRecord),
}

/// Compensation order: newest completed scope first, and within a scope its
/// own inner scopes before it (inside-out).
fn compensation_queue(completed: &[Registered]) -> Vec<CompensationStep> {
    let mut queue = Vec::new();
    for r in completed.iter().rev() {
        queue.extend(compensation_queue(&r.inner));
        if let Some(handler) = r.handler {
            queue.push(CompensationStep { scope: r.scope.clone(), handler, variables: r.variables.clone() });
        }
    }
    queue
}

/// Takes the completed scope named `name` out of a registry (searching nested ones).
fn take_registered(completed: &mut Vec<Registered>, name: &str) -> Option<Registered> {
    if let Some(i) = completed.iter().rposition(|r| r.scope == name) {
        return Some(completed.remove(i));
    }
    completed.iter_mut().rev().find_map(|r| take_registered(&mut r.inner, name))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimerRef {
    pub timer_id: u64,
    pub due_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Frame {
    pub node: NodeId,
    #[serde(flatten)]
    pub phase: Phase,
    /// On a scope frame: the completed inner scopes registered for compensation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub completed: Vec<Registered>,
    /// On an atomic scope frame whose body runs: what a fault rolls back to.
    /// Never persisted: no persistence point falls inside an atomic scope.
    #[serde(skip)]
    pub atomic: Option<AtomicAttempt>,
    /// On a long-running scope with a timeout: its deadline timer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<TimerRef>,
    /// The instance stopped at a breakpoint on this activity; resumed, it goes on.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub broke: bool,
    /// On a for-each iteration's body: its item (JSON text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub item: Option<String>,
}

/// One attempt of an atomic scope.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AtomicAttempt {
    pub attempt: u32,
    /// Variables at the start of the scope.
    pub variables: String,
    /// Effects decided before the scope; those after it are buffered.
    pub effects_len: usize,
}

/// A request-response receive waiting for its reply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingRequest {
    pub operation: String,
    pub message_id: String,
}

/// Everything of an instance that survives a persistence point.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub id: String,
    pub process: String,
    /// Digest-based version of the definition the instance is pinned to.
    pub version: String,
    pub status: Status,
    /// JSON text of the variables.
    pub variables: String,
    pub stack: Vec<Frame>,
    /// Correlation set name -> JSON text of its values, once initialized.
    pub correlations: BTreeMap<String, String>,
    pub requests: Vec<PendingRequest>,
    /// Completed top-level scopes registered for compensation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub compensations: Vec<Registered>,
    pub fault: Option<FaultRecord>,
    /// Source of timer and call ids; never reused within an instance.
    pub next_id: u64,
    /// Fence: the number of persistence points committed. A write is
    /// accepted only if it is based on the stored value.
    pub fence: u64,
    pub created_ms: u64,
    pub updated_ms: u64,
}

impl Snapshot {
    pub fn new(id: String, def: &Definition, version: String, variables: String, now_ms: u64) -> Snapshot {
        Snapshot {
            id,
            process: def.name.clone(),
            version,
            status: Status::Running,
            variables,
            stack: vec![Frame { node: def.root, phase: Phase::Enter, completed: Vec::new(), atomic: None, deadline: None, broke: false, item: None }],
            correlations: BTreeMap::new(),
            requests: Vec::new(),
            compensations: Vec::new(),
            fault: None,
            next_id: 1,
            fence: 0,
            created_ms: now_ms,
            updated_ms: now_ms,
        }
    }

    /// Activity path of the innermost frame, e.g. `main/approval/wait`.
    pub fn path(&self, def: &Definition) -> String {
        self.stack.iter().map(|f| def.node(f.node).name.as_str()).collect::<Vec<_>>().join("/")
    }
}

/// A message taken from the instance's inbox.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// Inbox sequence number; consumed in the next persistence point.
    pub seq: u64,
    pub message_id: String,
    pub operation: String,
    /// JSON text.
    pub body: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "effect")]
pub enum Effect {
    ConsumeMessage { seq: u64 },
    Correlate { set: String, values: String },
    Uncorrelate { set: String, values: String },
    SetTimer { timer_id: u64, due_ms: u64 },
    ClearTimer { timer_id: u64, due_ms: u64 },
    /// A call to make; its outbox entry is its in-transit record.
    Invoke {
        call_id: u64,
        target: Target,
        operation: String,
        input: String,
        /// `instance/path/call`; each attempt appends `/attempt`.
        idempotency_key: String,
        #[serde(default)]
        policy: super::definition::InvokePolicy,
    },
    /// The invoke's result has been taken: its outbox entry goes.
    InvokeDone { call_id: u64 },
    Send {
        call_id: u64,
        target: Target,
        operation: String,
        body: String,
        message_id: String,
        /// A start-process: the message must create an instance.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        start: bool,
    },
    /// The answer to a request-response receive: a body, or the fault that
    /// ended the instance before it replied.
    Reply { message_id: String, body: String, fault: Option<Fault> },
}

/// Why a persistence point was taken; recorded in the instance history.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    Created,
    CommitBefore,
    CommitAfter,
    /// An invoke or a send was written to the outbox (rule 3).
    Dispatch,
    /// The instance waits for a message or a timer (rule 7).
    Waiting,
    /// Controlled host shutdown (rule 6).
    Shutdown,
    /// A long-running scope completed; its compensation is registered (rule 1).
    ScopeCompleted,
    /// One compensation handler ran; it will not run again.
    Compensated,
    /// Suspended by an operator (rule 5).
    Suspended,
    Resumed,
    /// An operator replaced the variables.
    VariablesSet,
    /// The instance reached a breakpoint and is suspended (rule 5).
    Breakpoint,
    Completed,
    Faulted,
    Terminated,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Wait {
    /// A message of `operation`, or time passing `due_ms` if the receive has a timeout.
    Message { operation: String, due_ms: Option<u64> },
    /// Time passing `due_ms`; the driver then answers with `Input::Continue`.
    Timer { timer_id: u64, due_ms: u64 },
    Invoke { call_id: u64 },
    /// The first message of any of these operations (a pick).
    Pick { operations: Vec<String> },
    /// Any of these: the branches of a flow all wait.
    Many(Vec<Wait>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HandlerCall {
    pub handler: u32,
    /// JSON text given to readers (message body, invoke output).
    pub message: Option<String>,
    /// The item of the innermost for-each iteration running (JSON text).
    pub item: Option<String>,
}

/// What the driver must do next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Yield {
    /// Run a guest handler on the snapshot's variables; answer with `Input::Handler`.
    Call(HandlerCall),
    /// Commit the snapshot and the effects, then answer with `Input::Continue`.
    Persist(Reason),
    /// The instance needs this before it can go on. If it is not at hand, the
    /// driver commits (reason `Waiting`, or `Dispatch` is already done) and parks.
    Await(Wait),
    /// Terminal: commit snapshot and effects with this reason; nothing follows.
    Finished(Reason),
    /// Wait this long (an atomic scope's retry backoff), then `Input::Continue`.
    Sleep(u64),
    /// Suspended: nothing happens until `Control::Resume` (or `Terminate`).
    Suspended,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HandlerOutput {
    pub variables: String,
    pub output: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    Continue,
    Handler(Result<HandlerOutput, Fault>),
    Message(Delivery),
    InvokeResult { call_id: u64, result: Result<String, Fault> },
    /// An operator verb.
    Control(Control),
}

/// What an operator can do to an instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Control {
    Suspend,
    Resume,
    Terminate,
    /// Replace the variables (JSON text) of a suspended instance.
    SetVariables(String),
}

/// What the handler call in flight is for.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Expect {
    Snippet,
    Condition,
    Reader(Delivery),
    ReplyBody,
    InvokeInput,
    InvokeOutput,
    SendBody,
    Deadline,
    ReceiveDeadline,
    ThrowData,
    CatchReader,
    CompensationStep,
    PickReader(u32, Delivery),
}

pub struct Machine<'d> {
    pub def: &'d Definition,
    /// Activity paths an operator set breakpoints on, for this definition.
    pub breakpoints: Vec<String>,
    pub snap: Snapshot,
    pub effects: Vec<Effect>,
    /// Activity path the latest `Yield::Persist` belongs to (for the history).
    pub persist_path: String,
    expecting: Option<Expect>,
    now_ms: u64,
}

impl<'d> Machine<'d> {
    pub fn new(def: &'d Definition, snap: Snapshot) -> Machine<'d> {
        Machine { def, breakpoints: Vec::new(), snap, effects: Vec::new(), persist_path: String::new(), expecting: None, now_ms: 0 }
    }

    pub fn take_effects(&mut self) -> Vec<Effect> {
        std::mem::take(&mut self.effects)
    }

    /// Whether persistence points are taken here: not in a microflow, and
    /// not inside an atomic scope.
    fn persistent(&self) -> bool {
        self.def.kind == ProcessKind::LongRunning && self.in_atomic().is_none()
    }

    /// The outermost atomic scope running, as (frame index, attempt): all
    /// handler calls with the same value share one Wasm instance.
    pub fn in_atomic(&self) -> Option<(usize, u32)> {
        self.snap.stack.iter().enumerate().find_map(|(i, f)| f.atomic.as_ref().map(|a| (i, a.attempt)))
    }

    /// Applies `input` and runs until the driver has something to do.
    pub fn step(&mut self, input: Input, now_ms: u64) -> Yield {
        self.now_ms = now_ms;
        self.snap.updated_ms = now_ms;
        if self.snap.status.is_terminal() {
            return Yield::Finished(terminal_reason(self.snap.status));
        }
        if let Input::Control(c) = input {
            return self.control(c);
        }
        if self.snap.status == Status::Suspended {
            return Yield::Suspended;
        }
        self.snap.status = Status::Running;
        if let Some(y) = self.apply(input) {
            return y;
        }
        self.run()
    }

    /// Applies an operator verb. Verbs that do not fit the instance's state
    /// (resume a running one, set variables of one not suspended) change nothing.
    fn control(&mut self, c: Control) -> Yield {
        match c {
            Control::Suspend => {
                self.snap.status = Status::Suspended;
                self.persist_path = self.snap.path(self.def);
                Yield::Persist(Reason::Suspended)
            }
            Control::Resume if self.snap.status == Status::Suspended => {
                self.snap.status = Status::Running;
                self.persist_path = self.snap.path(self.def);
                Yield::Persist(Reason::Resumed)
            }
            Control::SetVariables(v) if self.snap.status == Status::Suspended => {
                self.snap.variables = v;
                self.persist_path = self.snap.path(self.def);
                Yield::Persist(Reason::VariablesSet)
            }
            Control::Terminate => {
                // Whatever it waited for is withdrawn with it.
                self.truncate_stack(0);
                self.finish(Status::Terminated)
            }
            Control::Resume | Control::SetVariables(_) => self.step(Input::Continue, self.now_ms),
        }
    }

    /// Folds an input into the snapshot. Returns a yield if the input itself
    /// leads straight to one (a reader call, a fault).
    fn apply(&mut self, input: Input) -> Option<Yield> {
        if matches!(input, Input::Message(_) | Input::InvokeResult { .. }) {
            self.activate_branch_for(&input);
        }
        match input {
            Input::Continue => None,
            Input::Control(_) => unreachable!("operator verbs are applied by step"),
            Input::Handler(result) => {
                let expect = self.expecting.take().expect("handler result without a call in flight");
                match result {
                    Err(fault) => Some(self.raise(fault)),
                    Ok(out) => {
                        self.snap.variables = out.variables;
                        self.handler_done(expect, out.output)
                    }
                }
            }
            Input::Message(delivery) => {
                let top = self.snap.stack.last().expect("message delivered to a finished instance");
                let node = self.def.node(top.node);
                match (&top.phase, &node.activity) {
                    (Phase::AwaitMessage { operation, timer }, Activity::Receive { reader, .. })
                        if *operation == delivery.operation =>
                    {
                        if let Some(t) = timer {
                            self.effects.push(Effect::ClearTimer { timer_id: t.timer_id, due_ms: t.due_ms });
                        }
                        match reader {
                            Some(h) => {
                                let message = Some(delivery.body.clone());
                                Some(self.call(*h, message, Expect::Reader(delivery)))
                            }
                            None => {
                                self.receive_done(delivery);
                                None
                            }
                        }
                    }
                    (Phase::AwaitPick { timers }, Activity::Pick { branches }) => {
                        let (i, reader) = branches
                            .iter()
                            .enumerate()
                            .find_map(|(i, b)| match &b.trigger {
                                PickTrigger::Message { operation, reader, .. } if *operation == delivery.operation => {
                                    Some((i as u32, *reader))
                                }
                                _ => None,
                            })
                            .expect("message delivered for an operation the pick does not wait for");
                        // The choice withdraws the other branches at once.
                        let timers = timers.clone();
                        for (_, t) in timers {
                            self.effects.push(Effect::ClearTimer { timer_id: t.timer_id, due_ms: t.due_ms });
                        }
                        match reader {
                            Some(h) => {
                                let message = Some(delivery.body.clone());
                                Some(self.call(h, message, Expect::PickReader(i, delivery)))
                            }
                            None => {
                                self.pick_message_done(i, delivery);
                                None
                            }
                        }
                    }
                    _ => panic!("message '{}' delivered while not waiting for it", delivery.operation),
                }
            }
            Input::InvokeResult { call_id, result } => {
                let top = self.snap.stack.last().expect("invoke result for a finished instance");
                assert_eq!(top.phase, Phase::AwaitInvoke { call_id }, "result for a call not awaited");
                self.effects.push(Effect::InvokeDone { call_id });
                let output = match &self.def.node(top.node).activity {
                    Activity::Invoke { output, .. } => *output,
                    _ => unreachable!("AwaitInvoke on a node that is not an invoke"),
                };
                match result {
                    Err(fault) => Some(self.raise(fault)),
                    Ok(out) => match output {
                        Some(h) => Some(self.call(h, Some(out), Expect::InvokeOutput)),
                        None => {
                            self.top_mut().phase = Phase::Done;
                            None
                        }
                    },
                }
            }
        }
    }

    fn handler_done(&mut self, expect: Expect, output: Option<String>) -> Option<Yield> {
        let node_id = self.top().node;
        let node = self.def.node(node_id);
        match expect {
            Expect::Snippet | Expect::InvokeOutput => self.top_mut().phase = Phase::Done,
            Expect::Condition => {
                let truth = match parse_output::<bool>(&output) {
                    Ok(t) => t,
                    Err(e) => return Some(self.raise(Fault::new("cairn.bad-handler-output", format!("condition: {e}")))),
                };
                match &node.activity {
                    Activity::IfElse { then_branch, else_branch, .. } => {
                        let branch = if truth { Some(*then_branch) } else { *else_branch };
                        match branch {
                            Some(b) => {
                                self.top_mut().phase = Phase::Child { next: 1 };
                                self.push(b);
                            }
                            None => self.top_mut().phase = Phase::Done,
                        }
                    }
                    Activity::While { body, .. } => {
                        if truth {
                            let body = *body;
                            self.top_mut().phase = Phase::Child { next: 1 };
                            self.push(body);
                        } else {
                            self.top_mut().phase = Phase::Done;
                        }
                    }
                    _ => unreachable!("condition on a node without one"),
                }
            }
            Expect::Reader(delivery) => self.receive_done(delivery),
            Expect::PickReader(branch, delivery) => self.pick_message_done(branch, delivery),
            Expect::ReplyBody => {
                let Activity::Reply { operation, .. } = &node.activity else { unreachable!() };
                let body = output.unwrap_or_else(|| "null".into());
                match self.snap.requests.iter().position(|r| r.operation == *operation) {
                    Some(i) => {
                        let request = self.snap.requests.remove(i);
                        self.effects.push(Effect::Reply { message_id: request.message_id, body, fault: None });
                        self.top_mut().phase = Phase::Done;
                    }
                    None => {
                        return Some(self.raise(Fault::new(
                            "cairn.no-request",
                            format!("no request of operation '{operation}' is waiting for a reply"),
                        )))
                    }
                }
            }
            Expect::InvokeInput => {
                let Activity::Invoke { target, operation, policy, .. } = &node.activity else { unreachable!() };
                let call_id = self.next_id();
                let key = format!("{}/{}/{call_id}", self.snap.id, self.snap.path(self.def));
                self.effects.push(Effect::Invoke {
                    call_id,
                    target: target.clone(),
                    operation: operation.clone(),
                    input: output.unwrap_or_else(|| "null".into()),
                    idempotency_key: key,
                    policy: policy.clone(),
                });
                self.top_mut().phase = Phase::AwaitInvoke { call_id };
                if self.persistent() {
                    return Some(self.persist(Reason::Dispatch));
                }
            }
            Expect::SendBody => {
                let (target, operation, start) = match &node.activity {
                    Activity::Send { target, operation, .. } => (target.clone(), operation.clone(), false),
                    Activity::StartProcess { process, operation, .. } => {
                        (Target::Process(process.clone()), operation.clone(), true)
                    }
                    _ => unreachable!(),
                };
                let call_id = self.next_id();
                let message_id = format!("{}:{call_id}", self.snap.id);
                self.effects.push(Effect::Send {
                    call_id,
                    target,
                    operation,
                    body: output.unwrap_or_else(|| "null".into()),
                    message_id,
                    start,
                });
                self.top_mut().phase = Phase::Done;
                if self.persistent() {
                    return Some(self.persist(Reason::Dispatch));
                }
            }
            Expect::Deadline => match parse_output::<u64>(&output) {
                Ok(due_ms) => {
                    let timer = self.set_timer(due_ms);
                    self.top_mut().phase = Phase::AwaitTimer { timer_id: timer.timer_id, due_ms };
                }
                Err(e) => return Some(self.raise(Fault::new("cairn.bad-handler-output", format!("deadline: {e}")))),
            },
            Expect::ReceiveDeadline => match parse_output::<u64>(&output) {
                Ok(due_ms) => {
                    let Activity::Receive { operation, .. } = &node.activity else { unreachable!() };
                    let operation = operation.clone();
                    let timer = Some(self.set_timer(due_ms));
                    self.top_mut().phase = Phase::AwaitMessage { operation, timer };
                }
                Err(e) => {
                    return Some(self.raise(Fault::new("cairn.bad-handler-output", format!("receive timeout: {e}"))))
                }
            },
            Expect::CatchReader => {
                let Activity::Scope { handlers, .. } = &node.activity else { unreachable!() };
                let Phase::Handling { caught } = &self.top().phase else { unreachable!() };
                let body = handler_for(handlers, &caught.fault.name).and_then(|h| h.body);
                if let Some(b) = body {
                    self.push(b);
                }
            }
            Expect::CompensationStep => {
                let Phase::Compensating { queue, .. } = &mut self.top_mut().phase else { unreachable!() };
                queue.remove(0);
                if self.persistent() {
                    return Some(self.persist(Reason::Compensated));
                }
            }
            Expect::ThrowData => {
                let Activity::Throw { fault, message, .. } = &node.activity else { unreachable!() };
                let fault = Fault { name: fault.clone(), message: message.clone(), data: output.unwrap_or_else(|| "null".into()) };
                return Some(self.raise(fault));
            }
        }
        None
    }

    fn receive_done(&mut self, delivery: Delivery) {
        let node = self.def.node(self.top().node);
        let Activity::Receive { correlation, request_response, .. } = &node.activity else { unreachable!() };
        self.take_message(delivery, correlation, *request_response);
        self.top_mut().phase = Phase::Done;
    }

    fn pick_message_done(&mut self, branch: u32, delivery: Delivery) {
        let node = self.def.node(self.top().node);
        let Activity::Pick { branches } = &node.activity else { unreachable!() };
        let b = &branches[branch as usize];
        let PickTrigger::Message { correlation, .. } = &b.trigger else { unreachable!() };
        let body = b.body;
        self.take_message(delivery, correlation, false);
        self.top_mut().phase = Phase::Child { next: 1 };
        self.push(body);
    }

    /// Consumes a message in the next persistence point, initializing its
    /// correlation set if this is the set's first message.
    fn take_message(&mut self, delivery: Delivery, correlation: &Option<String>, request_response: bool) {
        self.effects.push(Effect::ConsumeMessage { seq: delivery.seq });
        if let Some(set_name) = correlation {
            if !self.snap.correlations.contains_key(set_name) {
                let set = self.def.correlation_set(set_name).expect("validated at deploy");
                // Intake already checked that the properties are present.
                if let Ok(values) = correlation_values(set, &delivery.body) {
                    self.snap.correlations.insert(set_name.clone(), values.clone());
                    self.effects.push(Effect::Correlate { set: set_name.clone(), values });
                }
            }
        }
        if request_response {
            self.snap.requests.push(PendingRequest { operation: delivery.operation, message_id: delivery.message_id });
        }
    }

    fn run(&mut self) -> Yield {
        loop {
            if let Some(y) = self.scope_deadline_passed() {
                return y;
            }
            let Some(frame) = self.snap.stack.last().cloned() else {
                return self.finish(Status::Completed);
            };
            let node = self.def.node(frame.node);
            match frame.phase {
                Phase::Enter => {
                    if !frame.broke && !self.breakpoints.is_empty() && self.in_atomic().is_none() {
                        let path = self.snap.path(self.def);
                        if self.breakpoints.contains(&path) {
                            self.top_mut().broke = true;
                            self.snap.status = Status::Suspended;
                            return self.persist(Reason::Breakpoint);
                        }
                    }
                    self.top_mut().phase = Phase::Started;
                    if node.commits().before && self.persistent() {
                        return self.persist(Reason::CommitBefore);
                    }
                }
                Phase::Done => {
                    let path = self.snap.path(self.def);
                    self.snap.stack.pop();
                    if node.commits().after && self.persistent() {
                        self.persist_path = path;
                        let reason = match node.activity {
                            Activity::Scope { .. } => Reason::ScopeCompleted,
                            _ => Reason::CommitAfter,
                        };
                        return Yield::Persist(reason);
                    }
                }
                Phase::Handling { .. } => {
                    self.clear_deadline();
                    self.top_mut().phase = Phase::Done;
                }
                Phase::Compensating { queue, then } => match queue.first() {
                    Some(step) => {
                        let message = Some(step.variables.clone());
                        return self.call(step.handler, message, Expect::CompensationStep);
                    }
                    None => match then {
                        AfterCompensation::Done => self.top_mut().phase = Phase::Done,
                        AfterCompensation::Rethrow(record) => return self.propagate(record),
                    },
                },
                Phase::AwaitMessage { operation, timer } => match timer {
                    Some(t) if t.due_ms <= self.now_ms => {
                        self.effects.push(Effect::ClearTimer { timer_id: t.timer_id, due_ms: t.due_ms });
                        let on_timeout = match &node.activity {
                            Activity::Receive { timeout: Some(t), .. } => t.on_timeout,
                            _ => None,
                        };
                        match on_timeout {
                            Some(h) => return self.call(h, None, Expect::Snippet),
                            None => self.top_mut().phase = Phase::Done,
                        }
                    }
                    _ => {
                        self.snap.status = Status::Waiting;
                        return self.await_(Wait::Message { operation, due_ms: timer.map(|t| t.due_ms) });
                    }
                },
                Phase::AwaitTimer { timer_id, due_ms } => {
                    if due_ms <= self.now_ms {
                        self.top_mut().phase = Phase::Done;
                        self.effects.push(Effect::ClearTimer { timer_id, due_ms });
                    } else {
                        self.snap.status = Status::Waiting;
                        return self.await_(Wait::Timer { timer_id, due_ms });
                    }
                }
                Phase::AwaitInvoke { call_id } => return self.await_(Wait::Invoke { call_id }),
                Phase::Each { items, next } => match items.get(next as usize) {
                    Some(item) => {
                        let Activity::ForEach { body, .. } = &node.activity else { unreachable!() };
                        let frame = self.frame_for(*body, Some(item.clone()));
                        self.top_mut().phase = Phase::Each { items, next: next + 1 };
                        self.snap.stack.push(frame);
                    }
                    None => self.top_mut().phase = Phase::Done,
                },
                Phase::Flow { .. } => {
                    if let Some(y) = self.flow_step() {
                        return y;
                    }
                }
                Phase::AwaitPick { timers } => {
                    let Activity::Pick { branches } = &node.activity else { unreachable!() };
                    // A due timer wins (the earliest; on a tie, the first branch),
                    // even over a message already queued: that one stays queued.
                    let due = timers.iter().filter(|(_, t)| t.due_ms <= self.now_ms).min_by_key(|(i, t)| (t.due_ms, *i));
                    if let Some((branch, _)) = due {
                        let body = branches[*branch as usize].body;
                        for (_, t) in &timers {
                            self.effects.push(Effect::ClearTimer { timer_id: t.timer_id, due_ms: t.due_ms });
                        }
                        self.top_mut().phase = Phase::Child { next: 1 };
                        self.push(body);
                    } else {
                        let operations = branches
                            .iter()
                            .filter_map(|b| match &b.trigger {
                                PickTrigger::Message { operation, .. } => Some(operation.clone()),
                                PickTrigger::AfterMs(_) => None,
                            })
                            .collect();
                        self.snap.status = Status::Waiting;
                        return self.await_(Wait::Pick { operations });
                    }
                }
                Phase::Child { next } => match &node.activity {
                    Activity::Sequence { children } => {
                        if let Some(&child) = children.get(next as usize) {
                            self.top_mut().phase = Phase::Child { next: next + 1 };
                            self.push(child);
                        } else {
                            self.top_mut().phase = Phase::Done;
                        }
                    }
                    Activity::While { condition, .. } => return self.call(*condition, None, Expect::Condition),
                    Activity::IfElse { .. } | Activity::Pick { .. } => self.top_mut().phase = Phase::Done,
                    Activity::Scope { compensation, .. } => {
                        // The body completed: register the scope's compensation
                        // with the variables as they stand now.
                        self.clear_deadline();
                        let frame = self.snap.stack.last_mut().unwrap();
                        frame.atomic = None;
                        let registered = Registered {
                            scope: node.name.clone(),
                            handler: *compensation,
                            variables: self.snap.variables.clone(),
                            inner: std::mem::take(&mut frame.completed),
                        };
                        frame.phase = Phase::Done;
                        if registered.handler.is_some() || !registered.inner.is_empty() {
                            self.enclosing_registry().push(registered);
                        }
                    }
                    _ => unreachable!("child phase on a leaf activity"),
                },
                Phase::Started => match &node.activity {
                    Activity::Sequence { .. } => self.top_mut().phase = Phase::Child { next: 0 },
                    Activity::Snippet { handler } => return self.call(*handler, None, Expect::Snippet),
                    Activity::IfElse { condition, .. } | Activity::While { condition, .. } => {
                        return self.call(*condition, None, Expect::Condition)
                    }
                    Activity::Receive { operation, timeout, .. } => match timeout {
                        Some(t) => return self.call(t.deadline, None, Expect::ReceiveDeadline),
                        None => {
                            let operation = operation.clone();
                            self.top_mut().phase = Phase::AwaitMessage { operation, timer: None };
                        }
                    },
                    Activity::Reply { body, .. } => return self.call(*body, None, Expect::ReplyBody),
                    Activity::Invoke { input, .. } => return self.call(*input, None, Expect::InvokeInput),
                    Activity::Send { body, .. } | Activity::StartProcess { body, .. } => {
                        return self.call(*body, None, Expect::SendBody)
                    }
                    Activity::ForEach { items, parallel, body } => {
                        let items = match self.items_at(items) {
                            Ok(items) => items,
                            Err(fault) => return self.raise(fault),
                        };
                        let body = *body;
                        let phase = if *parallel {
                            let branches = items
                                .into_iter()
                                .map(|item| Branch { state: BranchState::Ready, stack: vec![self.frame_for(body, Some(item))] })
                                .collect();
                            Phase::Flow { branches }
                        } else {
                            Phase::Each { items, next: 0 }
                        };
                        self.top_mut().phase = phase;
                    }
                    Activity::Flow { branches } => {
                        let branches = branches
                            .iter()
                            .map(|&b| Branch {
                                state: BranchState::Ready,
                                stack: vec![Frame {
                                    node: b,
                                    phase: Phase::Enter,
                                    completed: Vec::new(),
                                    atomic: None,
                                    deadline: None,
                                    broke: false,
                                    item: None,
                                }],
                            })
                            .collect();
                        self.top_mut().phase = Phase::Flow { branches };
                    }
                    Activity::Pick { branches } => {
                        let mut timers = Vec::new();
                        for (i, b) in branches.iter().enumerate() {
                            if let PickTrigger::AfterMs(ms) = b.trigger {
                                timers.push((i as u32, self.set_timer(self.now_ms.saturating_add(ms))));
                            }
                        }
                        self.top_mut().phase = Phase::AwaitPick { timers };
                    }
                    Activity::Suspend { .. } => {
                        self.top_mut().phase = Phase::Done;
                        self.snap.status = Status::Suspended;
                        return self.persist(Reason::Suspended);
                    }
                    Activity::Wait { wait: WaitFor::DurationMs(ms) } => {
                        let due_ms = self.now_ms.saturating_add(*ms);
                        let timer = self.set_timer(due_ms);
                        self.top_mut().phase = Phase::AwaitTimer { timer_id: timer.timer_id, due_ms };
                    }
                    Activity::Wait { wait: WaitFor::Deadline(h) } => return self.call(*h, None, Expect::Deadline),
                    Activity::Throw { fault, message, data } => match data {
                        Some(h) => return self.call(*h, None, Expect::ThrowData),
                        None => {
                            let fault = Fault::new(fault.clone(), message.clone());
                            return self.raise(fault);
                        }
                    },
                    Activity::Terminate => return self.finish(Status::Terminated),
                    Activity::Scope { body, atomic, timeout_ms, .. } => {
                        let body = *body;
                        if let Some(ms) = timeout_ms {
                            let timer = self.set_timer(self.now_ms.saturating_add(*ms));
                            self.top_mut().deadline = Some(timer);
                        }
                        if atomic.is_some() {
                            let attempt = AtomicAttempt {
                                attempt: 1,
                                variables: self.snap.variables.clone(),
                                effects_len: self.effects.len(),
                            };
                            self.top_mut().atomic = Some(attempt);
                        }
                        self.top_mut().phase = Phase::Child { next: 1 };
                        self.push(body);
                    }
                    Activity::Compensate { scope } => {
                        let registry = self.enclosing_registry();
                        let chosen = match scope {
                            None => std::mem::take(registry),
                            Some(name) => take_registered(registry, name).into_iter().collect(),
                        };
                        let queue = compensation_queue(&chosen);
                        self.top_mut().phase = Phase::Compensating { queue, then: AfterCompensation::Done };
                    }
                    Activity::Rethrow => {
                        let caught = self.snap.stack.iter().rev().find_map(|f| match &f.phase {
                            Phase::Handling { caught } => Some(caught.clone()),
                            _ => None,
                        });
                        return match caught {
                            Some(record) => self.propagate(record),
                            None => self.raise(Fault::new("cairn.rethrow-outside-handler", "rethrow outside a fault handler")),
                        };
                    }
                },
            }
        }
    }

    fn persist(&mut self, reason: Reason) -> Yield {
        self.persist_path = self.snap.path(self.def);
        Yield::Persist(reason)
    }

    fn set_timer(&mut self, due_ms: u64) -> TimerRef {
        let timer_id = self.next_id();
        self.effects.push(Effect::SetTimer { timer_id, due_ms });
        TimerRef { timer_id, due_ms }
    }

    fn call(&mut self, handler: u32, message: Option<String>, expect: Expect) -> Yield {
        self.expecting = Some(expect);
        let item = self.snap.stack.iter().rev().find_map(|f| f.item.clone());
        Yield::Call(HandlerCall { handler, message, item })
    }

    /// The elements of the array at `pointer` in the variables, as JSON texts.
    fn items_at(&self, pointer: &str) -> Result<Vec<String>, Fault> {
        let variables: serde_json::Value = serde_json::from_str(&self.snap.variables).unwrap_or(serde_json::Value::Null);
        match variables.pointer(pointer) {
            Some(serde_json::Value::Array(items)) => Ok(items.iter().map(|i| i.to_string()).collect()),
            other => Err(Fault::new(
                "cairn.for-each-not-array",
                format!("for-each items at '{pointer}' are not a JSON array (found {})", other.map_or("nothing".into(), |v| v.to_string())),
            )),
        }
    }

    fn frame_for(&self, node: NodeId, item: Option<String>) -> Frame {
        Frame { node, phase: Phase::Enter, completed: Vec::new(), atomic: None, deadline: None, broke: false, item }
    }

    /// Raises a fault at the current activity.
    fn raise(&mut self, fault: Fault) -> Yield {
        let path = self.snap.path(self.def);
        self.propagate(FaultRecord { fault, path })
    }

    /// Finds the innermost scope whose body is running and hands it the
    /// fault: a matching handler runs, or else its default handler
    /// compensates its completed inner scopes and raises the fault further
    /// out. A fault no scope takes leaves the process and faults the instance.
    fn propagate(&mut self, record: FaultRecord) -> Yield {
        self.expecting = None;
        let catcher = self.snap.stack.iter().rposition(|f| {
            matches!(self.def.node(f.node).activity, Activity::Scope { .. }) && matches!(f.phase, Phase::Child { .. })
        });
        let Some(i) = catcher else {
            if self.def.kind == ProcessKind::Microflow {
                // A microflow is one transaction: a fault that ends it takes
                // back the messages it would have sent.
                self.effects.retain(|e| !matches!(e, Effect::Send { .. }));
            }
            self.snap.fault = Some(record);
            return self.finish(Status::Faulted);
        };
        self.truncate_stack(i + 1);
        if let Some(attempt) = self.top_mut().atomic.take() {
            // Roll back: the variables as at the scope's start, buffered
            // effects dropped; then retry while the policy allows.
            self.snap.variables = attempt.variables.clone();
            self.effects.truncate(attempt.effects_len);
            self.top_mut().completed.clear();
            let node = self.def.node(self.top().node);
            let Activity::Scope { atomic: Some(policy), body, .. } = &node.activity else { unreachable!() };
            if attempt.attempt < policy.max_attempts {
                let backoff = policy.backoff_ms.saturating_mul(1 << (attempt.attempt - 1).min(20));
                let body = *body;
                self.top_mut().atomic = Some(AtomicAttempt { attempt: attempt.attempt + 1, ..attempt });
                self.push(body);
                if backoff > 0 {
                    return Yield::Sleep(backoff);
                }
                return self.run();
            }
        }
        let Activity::Scope { handlers, .. } = &self.def.node(self.top().node).activity else { unreachable!() };
        match handler_for(handlers, &record.fault.name) {
            Some(h) => {
                let (reader, body) = (h.reader, h.body);
                let message = serde_json::json!({
                    "name": record.fault.name,
                    "message": record.fault.message,
                    "data": serde_json::from_str::<serde_json::Value>(&record.fault.data).unwrap_or(serde_json::Value::Null),
                })
                .to_string();
                self.top_mut().phase = Phase::Handling { caught: record };
                match (reader, body) {
                    (Some(r), _) => return self.call(r, Some(message), Expect::CatchReader),
                    (None, Some(b)) => self.push(b),
                    (None, None) => {}
                }
            }
            None => {
                let frame = self.top_mut();
                let queue = compensation_queue(&std::mem::take(&mut frame.completed));
                frame.phase = Phase::Compensating { queue, then: AfterCompensation::Rethrow(record) };
            }
        }
        self.run()
    }

    /// Pops frames above `len`, withdrawing what they were waiting for: their
    /// timers are cleared and a call in flight is given up.
    fn truncate_stack(&mut self, len: usize) {
        while self.snap.stack.len() > len {
            let f = self.snap.stack.pop().unwrap();
            self.withdraw(f);
        }
    }

    /// Withdraws what a frame (and, for a flow, its parked branches) waits for.
    fn withdraw(&mut self, f: Frame) {
        {
            match f.phase {
                Phase::Flow { branches } => {
                    for b in branches {
                        for frame in b.stack.into_iter().rev() {
                            self.withdraw(frame);
                        }
                    }
                }
                Phase::AwaitInvoke { call_id } => self.effects.push(Effect::InvokeDone { call_id }),
                Phase::AwaitPick { timers } => {
                    for (_, t) in timers {
                        self.effects.push(Effect::ClearTimer { timer_id: t.timer_id, due_ms: t.due_ms });
                    }
                }
                Phase::AwaitTimer { timer_id, due_ms } | Phase::AwaitMessage { timer: Some(TimerRef { timer_id, due_ms }), .. } => {
                    self.effects.push(Effect::ClearTimer { timer_id, due_ms })
                }
                _ => {}
            }
            if let Some(d) = f.deadline {
                self.effects.push(Effect::ClearTimer { timer_id: d.timer_id, due_ms: d.due_ms });
            }
        }
    }

    /// The flow frame the top frame's branch belongs to, if any.
    fn enclosing_flow(&self) -> Option<usize> {
        let top = self.snap.stack.len().checked_sub(1)?;
        self.snap.stack[..top].iter().rposition(|f| matches!(f.phase, Phase::Flow { .. }))
    }

    /// A wait of the running branch: park it and let the flow go on with
    /// another; outside a flow, the wait goes to the driver.
    fn await_(&mut self, wait: Wait) -> Yield {
        let Some(f) = self.enclosing_flow() else { return Yield::Await(wait) };
        let frames = self.snap.stack.split_off(f + 1);
        let Phase::Flow { branches } = &mut self.snap.stack[f].phase else { unreachable!() };
        let active = branches.iter_mut().find(|b| b.state == BranchState::Active).expect("a flow runs one branch");
        active.state = BranchState::Waiting;
        active.stack = frames;
        self.run()
    }

    /// The flow frame is on top: its active branch (if any) has finished.
    /// Run the next ready branch, join when all are done, or wait for any.
    fn flow_step(&mut self) -> Option<Yield> {
        let now = self.now_ms;
        let def = self.def;
        let Phase::Flow { branches } = &mut self.top_mut().phase else { unreachable!() };
        for b in branches.iter_mut() {
            match b.state {
                BranchState::Active => b.state = BranchState::Done,
                BranchState::Waiting if stack_ready(&b.stack, now) => b.state = BranchState::Ready,
                _ => {}
            }
        }
        if let Some(b) = branches.iter_mut().find(|b| b.state == BranchState::Ready) {
            b.state = BranchState::Active;
            let frames = std::mem::take(&mut b.stack);
            self.snap.stack.extend(frames);
            return None;
        }
        if branches.iter().all(|b| b.state == BranchState::Done) {
            self.top_mut().phase = Phase::Done;
            return None;
        }
        let waits: Vec<Wait> = branches.iter().filter(|b| b.state == BranchState::Waiting).flat_map(|b| stack_waits(&b.stack, def)).collect();
        self.snap.status = if waits.iter().any(|w| matches!(w, Wait::Invoke { .. })) { Status::Running } else { Status::Waiting };
        Some(self.await_(Wait::Many(waits)))
    }

    /// Makes the branch that waits for `input` the active one (through
    /// nested flows), so that the input applies to its top frame.
    fn activate_branch_for(&mut self, input: &Input) {
        let def = self.def;
        loop {
            let Some(Frame { phase: Phase::Flow { branches }, .. }) = self.snap.stack.last_mut() else { return };
            let Some(b) = branches.iter_mut().find(|b| b.state == BranchState::Waiting && stack_takes(&b.stack, input, def)) else {
                return;
            };
            b.state = BranchState::Active;
            let frames = std::mem::take(&mut b.stack);
            self.snap.stack.extend(frames);
        }
    }

    fn clear_deadline(&mut self) {
        if let Some(d) = self.top_mut().deadline.take() {
            self.effects.push(Effect::ClearTimer { timer_id: d.timer_id, due_ms: d.due_ms });
        }
    }

    /// The outermost scope whose deadline has passed while its body runs
    /// faults, with the body interrupted wherever it was.
    fn scope_deadline_passed(&mut self) -> Option<Yield> {
        let now = self.now_ms;
        let i = self.snap.stack.iter().position(|f| {
            f.deadline.is_some_and(|d| d.due_ms <= now) && matches!(f.phase, Phase::Child { .. })
        })?;
        self.truncate_stack(i + 1);
        self.clear_deadline();
        let path = self.snap.path(self.def);
        let name = &self.def.node(self.top().node).name;
        let fault = Fault::new("cairn.scope-timeout", format!("scope '{name}' passed its deadline"));
        Some(self.propagate(FaultRecord { fault, path }))
    }

    /// The registry a completing scope joins, and that `compensate` draws
    /// from: the nearest enclosing scope's, or the process's.
    fn enclosing_registry(&mut self) -> &mut Vec<Registered> {
        let top = self.snap.stack.len().saturating_sub(1);
        let def = self.def;
        match self.snap.stack[..top].iter().rposition(|f| matches!(def.node(f.node).activity, Activity::Scope { .. })) {
            Some(i) => &mut self.snap.stack[i].completed,
            None => &mut self.snap.compensations,
        }
    }

    fn finish(&mut self, status: Status) -> Yield {
        self.snap.status = status;
        self.truncate_stack(0);
        self.expecting = None;
        // A finished instance routes nothing: its correlations are released,
        // and its pending timers go with it.
        for (set, values) in std::mem::take(&mut self.snap.correlations) {
            self.effects.push(Effect::Uncorrelate { set, values });
        }
        // Callers still waiting for a reply learn that none will come.
        for request in std::mem::take(&mut self.snap.requests) {
            let fault = match (&self.snap.fault, status) {
                (Some(record), _) => record.fault.clone(),
                (None, _) => Fault::new(
                    "cairn.no-reply",
                    format!("the instance {} without replying to '{}'", status.as_str(), request.operation),
                ),
            };
            self.effects.push(Effect::Reply { message_id: request.message_id, body: "null".into(), fault: Some(fault) });
        }
        Yield::Finished(terminal_reason(status))
    }

    fn push(&mut self, node: NodeId) {
        self.snap.stack.push(Frame { node, phase: Phase::Enter, completed: Vec::new(), atomic: None, deadline: None, broke: false, item: None });
    }

    fn top(&self) -> &Frame {
        self.snap.stack.last().expect("no activity running")
    }

    fn top_mut(&mut self) -> &mut Frame {
        self.snap.stack.last_mut().expect("no activity running")
    }

    fn next_id(&mut self) -> u64 {
        let id = self.snap.next_id;
        self.snap.next_id += 1;
        id
    }
}

/// Whether a parked branch has something to do now: a due timer at its top,
/// or a scope deadline passed anywhere in it.
fn stack_ready(stack: &[Frame], now: u64) -> bool {
    if stack.iter().any(|f| f.deadline.is_some_and(|d| d.due_ms <= now)) {
        return true;
    }
    match stack.last().map(|f| &f.phase) {
        Some(Phase::AwaitTimer { due_ms, .. }) => *due_ms <= now,
        Some(Phase::AwaitMessage { timer: Some(t), .. }) => t.due_ms <= now,
        Some(Phase::AwaitPick { timers }) => timers.iter().any(|(_, t)| t.due_ms <= now),
        Some(Phase::Flow { branches }) => {
            branches.iter().any(|b| b.state == BranchState::Waiting && stack_ready(&b.stack, now))
        }
        _ => false,
    }
}

/// What a parked branch waits for.
fn stack_waits(stack: &[Frame], def: &Definition) -> Vec<Wait> {
    let Some(top) = stack.last() else { return Vec::new() };
    match &top.phase {
        Phase::AwaitMessage { operation, timer } => {
            vec![Wait::Message { operation: operation.clone(), due_ms: timer.map(|t| t.due_ms) }]
        }
        Phase::AwaitTimer { timer_id, due_ms } => vec![Wait::Timer { timer_id: *timer_id, due_ms: *due_ms }],
        Phase::AwaitInvoke { call_id } => vec![Wait::Invoke { call_id: *call_id }],
        Phase::AwaitPick { .. } => match &def.node(top.node).activity {
            Activity::Pick { branches } => vec![Wait::Pick {
                operations: branches
                    .iter()
                    .filter_map(|b| match &b.trigger {
                        PickTrigger::Message { operation, .. } => Some(operation.clone()),
                        PickTrigger::AfterMs(_) => None,
                    })
                    .collect(),
            }],
            _ => Vec::new(),
        },
        Phase::Flow { branches } => branches
            .iter()
            .filter(|b| b.state == BranchState::Waiting)
            .flat_map(|b| stack_waits(&b.stack, def))
            .collect(),
        _ => Vec::new(),
    }
}

/// Whether a parked branch waits for this message or call result.
fn stack_takes(stack: &[Frame], input: &Input, def: &Definition) -> bool {
    stack_waits(stack, def).iter().any(|w| match (w, input) {
        (Wait::Message { operation, .. }, Input::Message(d)) => *operation == d.operation,
        (Wait::Pick { operations }, Input::Message(d)) => operations.contains(&d.operation),
        (Wait::Invoke { call_id }, Input::InvokeResult { call_id: c, .. }) => call_id == c,
        _ => false,
    })
}

/// The handler for `fault`: one that names it, else a catch-all.
fn handler_for<'a>(handlers: &'a [super::definition::FaultHandler], fault: &str) -> Option<&'a super::definition::FaultHandler> {
    handlers.iter().find(|h| h.fault.as_deref() == Some(fault)).or_else(|| handlers.iter().find(|h| h.fault.is_none()))
}

fn terminal_reason(status: Status) -> Reason {
    match status {
        Status::Faulted => Reason::Faulted,
        Status::Terminated => Reason::Terminated,
        _ => Reason::Completed,
    }
}

fn parse_output<T: serde::de::DeserializeOwned>(output: &Option<String>) -> Result<T, String> {
    let text = output.as_deref().ok_or("the handler returned no output")?;
    serde_json::from_str(text).map_err(|e| format!("output {text} is not a {}: {e}", std::any::type_name::<T>()))
}

/// The values of a correlation set in a message body, as canonical JSON text
/// (an array in property order). Errors name the missing property.
pub fn correlation_values(set: &super::definition::CorrelationSet, body: &str) -> Result<String, String> {
    let body: serde_json::Value = serde_json::from_str(body).map_err(|e| format!("message body is not JSON: {e}"))?;
    let mut values = Vec::with_capacity(set.properties.len());
    for p in &set.properties {
        match body.pointer(&p.pointer) {
            Some(v) if !v.is_null() => values.push(v.clone()),
            _ => {
                return Err(format!(
                    "message body has no value at '{}' for property '{}' of correlation set '{}'",
                    p.pointer, p.name, set.name
                ))
            }
        }
    }
    Ok(serde_json::Value::Array(values).to_string())
}
