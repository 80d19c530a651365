//! The interpreter: applies one input to an instance snapshot and says what
//! the driver must do next (`crate::contract` is the protocol).
//!
//! Rules of the data this module owns:
//! - `Machine::snap` is the instance as it will be stored
//!   (`crate::snapshot`). Between two yields it is always resumable.
//! - `Machine::effects` holds the effects decided since the last persistence
//!   point; only `Machine::persistence_point` hands them out, with the
//!   snapshot they commit with. They never leave before that commit.
//! - `Machine::committed` is the position (stack and status) at the last
//!   persistence point, or as given to `new`: `needs_persistence` compares
//!   against it.
//! - `Machine::expecting` is set exactly while a `Yield::Call` is in flight.
//! - Nothing here does I/O; time enters only as `now_ms` on each step.
//!
//! Layout: this file holds `Machine`, its public API, `step`, the run loop
//! and the helpers all activities share. The run loop dispatches each phase
//! and each handler result to one activity family, one file each:
//! `basic` (sequence, snippet, if, while, sequential for-each, throw,
//! rethrow, suspend, terminate), `messages` (receive, reply, pick,
//! correlation), `calls` (invoke, send, start-process), `timers` (wait,
//! receive timeouts, scope deadlines), `scopes` (long-running and atomic
//! scopes, fault propagation, compensation), `flow` (flow and parallel
//! for-each branches), `loops` (repeat-until, switch, for-each completion
//! conditions) and `events` (event handlers of scopes). Their step methods return `Some(yield)` when the
//! driver has something to do, and `None` to let the run loop go on.

mod basic;
mod calls;
mod events;
mod flow;
mod lifecycle;
mod loops;
mod messages;
mod scopes;
mod timers;

pub use lifecycle::CANCELLED;
pub use messages::correlation_values;

use crate::contract::{Control, Delivery, Effect, HandlerCall, Input, PersistencePoint, Reason, Wait, Yield};
use crate::definition::{Activity, Definition, Node, NodeId, ProcessKind};
use crate::snapshot::{Fault, Frame, Phase, Snapshot, Status, TimerRef};

/// An instance in memory, interpreted against its definition.
pub struct Machine<'d> {
    def: &'d Definition,
    /// Activity paths an operator set breakpoints on, for this definition.
    breakpoints: Vec<String>,
    /// Activity components whose calls are pure functions of their input
    /// (no outbound capability): an invoke of one takes no dispatch
    /// persistence point; the driver runs it inline.
    pure_activities: std::sync::Arc<std::collections::BTreeSet<String>>,
    snap: Snapshot,
    /// Effects decided since the last persistence point, in order.
    effects: Vec<Effect>,
    /// Activity path the latest `Yield::Persist` belongs to (for the history).
    persist_path: String,
    /// The position at the last persistence point (or as given to `new`).
    committed: Position,
    /// What the handler call in flight is for.
    expecting: Option<Expect>,
    /// The latest fault raised and the stack where it was raised, while it
    /// propagates (`lifecycle`: a retry starts there). In memory only.
    raised: Option<(crate::snapshot::FaultRecord, Vec<Frame>)>,
    now_ms: u64,
}

/// Where an instance stands, as far as a persistence point is concerned.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Position {
    stack: Vec<Frame>,
    status: Status,
}

impl Position {
    fn of(snap: &Snapshot) -> Position {
        Position { stack: snap.stack.clone(), status: snap.status }
    }
}

/// What the handler call in flight is for, by activity family.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Expect {
    // basic
    Snippet,
    Condition,
    ThrowData,
    // messages
    Reader(Delivery),
    PickReader(u32, Delivery),
    ReplyBody,
    // calls
    InvokeInput,
    InvokeOutput,
    SendBody,
    // timers
    Deadline,
    ReceiveDeadline,
    // scopes
    CatchReader(usize),
    CompensationStep,
    /// A fault handler's condition: `order` lists the candidate handlers
    /// (by index, most specific first), `at` the one asked.
    FaultCondition { order: Vec<usize>, at: usize },
    // loops
    SwitchCase(u32),
    Completion,
    FlowCompletion,
    // events
    EventReader(Delivery),
    EventDeadline,
}

impl<'d> Machine<'d> {
    /// A machine on `snap` (fresh, or loaded from the store): the position
    /// it stands at counts as committed.
    pub fn new(def: &'d Definition, snap: Snapshot) -> Machine<'d> {
        Machine {
            def,
            breakpoints: Vec::new(),
            pure_activities: Default::default(),
            committed: Position::of(&snap),
            snap,
            effects: Vec::new(),
            persist_path: String::new(),
            expecting: None,
            raised: None,
            now_ms: 0,
        }
    }

    /// A machine on a snapshot loaded from the store, if it fits `def`
    /// (`Snapshot::check`): a damaged snapshot, or one of another definition,
    /// is refused here rather than met half-way through a step.
    pub fn resume(def: &'d Definition, snap: Snapshot) -> Result<Machine<'d>, String> {
        snap.check(def)?;
        Ok(Machine::new(def, snap))
    }

    /// The definition the instance runs.
    pub fn definition(&self) -> &'d Definition {
        self.def
    }

    /// The instance as it stands now (not necessarily committed).
    pub fn snapshot(&self) -> &Snapshot {
        &self.snap
    }

    /// Activity paths to stop at (`Reason::Breakpoint`), for this definition.
    /// The activity components whose calls are pure (see `pure_activities`).
    pub fn set_pure_activities(&mut self, names: std::sync::Arc<std::collections::BTreeSet<String>>) {
        self.pure_activities = names;
    }

    /// Whether the invoke `call_id` was decided but not yet committed: it
    /// runs inline (a pure call, or any call of a microflow or atomic scope).
    /// Left pending until the next persistence point, it goes to the outbox
    /// there like any other call.
    pub fn invoke_pending(&self, call_id: u64) -> bool {
        self.effects.iter().any(|e| matches!(e, Effect::Invoke { call_id: c, .. } if *c == call_id))
    }

    pub fn set_breakpoints(&mut self, paths: Vec<String>) {
        self.breakpoints = paths;
    }

    /// The outermost atomic scope running, as (frame index, attempt): all
    /// handler calls with the same value share one Wasm instance.
    pub fn in_atomic(&self) -> Option<(usize, u32)> {
        self.snap.stack.iter().enumerate().find_map(|(i, f)| f.atomic.as_ref().map(|a| (i, a.attempt)))
    }

    /// Whether the innermost frame waits for an activity result (`Phase::AwaitInvoke`).
    pub fn awaits_call(&self) -> bool {
        matches!(self.snap.stack.last().map(|f| &f.phase), Some(Phase::AwaitInvoke { .. }))
    }

    /// Whether the position (stack, status) moved or effects were decided
    /// since the last persistence point (or since `new`).
    pub fn needs_persistence(&self) -> bool {
        self.snap.stack != self.committed.stack || self.snap.status != self.committed.status || !self.effects.is_empty()
    }

    /// Takes a persistence point: bumps the fence, takes the effects decided
    /// since the last one, computes the history path, remembers the position
    /// as committed, and hands back an owned record for the driver to commit.
    pub fn persistence_point(&mut self, reason: Reason, now_ms: u64) -> PersistencePoint {
        let based_on = self.snap.fence;
        self.snap.fence += 1;
        let path = match (reason, &self.snap.fault) {
            // The activity the persistence point belongs to, which may have left the stack.
            (Reason::CommitBefore | Reason::CommitAfter | Reason::Dispatch | Reason::ScopeCompleted | Reason::Compensated, _) => {
                std::mem::take(&mut self.persist_path)
            }
            (_, Some(record)) => record.path.clone(),
            _ => self.snap.path(self.def),
        };
        self.committed = Position::of(&self.snap);
        PersistencePoint {
            snapshot: self.snap.clone(),
            based_on,
            effects: std::mem::take(&mut self.effects),
            reason,
            path,
            at_ms: now_ms,
        }
    }

    /// The resource writes decided since the last persistence point, in
    /// order (an atomic scope's or microflow's earlier calls): a later call
    /// of the same transaction reads them.
    pub fn pending_resource_writes(&self) -> Vec<crate::contract::ResourceWrite> {
        self.effects
            .iter()
            .flat_map(|e| match e {
                Effect::ResourceWrites { accesses, .. } => accesses.writes.clone(),
                _ => Vec::new(),
            })
            .collect()
    }

    /// Removes and returns the pending `Effect::Invoke` with this call id (a
    /// microflow or atomic scope runs it inline, never through the outbox).
    pub fn take_invoke(&mut self, call_id: u64) -> Option<Effect> {
        let i = self.effects.iter().position(|e| matches!(e, Effect::Invoke { call_id: c, .. } if *c == call_id))?;
        Some(self.effects.remove(i))
    }

    /// Applies `input` and runs until the driver has something to do.
    pub fn step(&mut self, input: Input, now_ms: u64) -> Yield {
        self.now_ms = now_ms;
        self.snap.updated_ms = now_ms;
        if let Input::Control(Control::Retry { variables }) = input {
            return self.retry(variables);
        }
        if self.snap.status.is_terminal() {
            return Yield::Finished(self.finished_reason());
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

    /// The effects decided since the last persistence point, for tests that
    /// look between two persistence points.
    #[cfg(test)]
    pub(crate) fn pending_effects(&self) -> &[Effect] {
        &self.effects
    }

    /// Applies an operator verb. Verbs that do not fit the instance's state
    /// (resume a running one, set variables of one not suspended) change nothing.
    fn control(&mut self, c: Control) -> Yield {
        match c {
            Control::Suspend => {
                self.snap.status = Status::Suspended;
                self.persist(Reason::Suspended)
            }
            Control::Resume if self.snap.status == Status::Suspended => {
                self.snap.status = Status::Running;
                self.persist(Reason::Resumed)
            }
            Control::SetVariables(v) if self.snap.status == Status::Suspended => {
                self.snap.variables = v;
                self.persist(Reason::VariablesSet)
            }
            Control::Terminate => {
                // Whatever it waited for is withdrawn with it, and a cancel
                // under way stops short: the instance ends terminated.
                self.truncate_stack(0);
                self.snap.cancelling = false;
                self.finish(Status::Terminated)
            }
            Control::Cancel => self.cancel(),
            Control::Retry { variables } => self.retry(variables),
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
                    Err(fault) => self.raise(fault),
                    Ok(out) => {
                        self.snap.variables = out.variables;
                        self.handler_done(expect, out.output)
                    }
                }
            }
            Input::Message(delivery) => self.message_arrived(delivery),
            Input::InvokeResult { call_id, result, resources } => self.invoke_result(call_id, result, resources),
        }
    }

    /// A handler returned `output`: the activity that called it goes on.
    fn handler_done(&mut self, expect: Expect, output: Option<String>) -> Option<Yield> {
        let node = self.def.node(self.top().node);
        match expect {
            Expect::Snippet | Expect::InvokeOutput => {
                self.top_mut().phase = Phase::Done;
                None
            }
            Expect::Condition => self.condition_decided(node, &output),
            Expect::ThrowData => self.throw_with_data(node, output),
            Expect::Reader(delivery) => {
                self.receive_done(delivery);
                None
            }
            Expect::PickReader(branch, delivery) => {
                self.pick_message_done(branch, delivery);
                None
            }
            Expect::ReplyBody => self.reply(node, output),
            Expect::InvokeInput => self.dispatch_invoke(node, output),
            Expect::SendBody => self.dispatch_send(node, output),
            Expect::Deadline => self.wait_until(&output),
            Expect::ReceiveDeadline => self.receive_until(node, &output),
            Expect::CatchReader(h) => {
                self.caught_fault_read(node, h);
                None
            }
            Expect::CompensationStep => self.compensation_step_done(),
            Expect::FaultCondition { order, at } => self.fault_condition_decided(&output, order, at),
            Expect::SwitchCase(case) => self.switch_case_decided(node, &output, case),
            Expect::Completion => self.completion_decided(node, &output),
            Expect::FlowCompletion => self.flow_completion_decided(&output),
            Expect::EventReader(delivery) => {
                self.event_message_done(delivery);
                None
            }
            Expect::EventDeadline => self.event_deadline_set(&output),
        }
    }

    /// Runs the innermost frame, phase after phase, until the driver has
    /// something to do. Scope deadlines are checked before every step.
    ///
    /// Each turn reads the top frame in place: a flow's branches and a
    /// for-each's items are never copied per turn (a flow of many branches
    /// takes one turn per branch).
    fn run(&mut self) -> Yield {
        loop {
            match self.scope_deadline_passed() {
                Some(Some(y)) => return y,
                Some(None) => continue,
                None => {}
            }
            let Some(frame) = self.snap.stack.last() else {
                return self.finish(Status::Completed);
            };
            let node = self.def.node(frame.node);
            let next = match &frame.phase {
                Phase::Enter => self.enter(node, frame.broke),
                Phase::Started => self.start(node),
                &Phase::Child { next } => self.child_finished(node, next),
                Phase::Each { .. } => self.each_step(node),
                Phase::AwaitMessage { operation, timer } => {
                    let (operation, timer) = (operation.clone(), *timer);
                    self.awaiting_message(node, operation, timer)
                }
                Phase::AwaitPick { timers } => {
                    let timers = timers.clone();
                    self.awaiting_pick(node, timers)
                }
                &Phase::AwaitTimer { timer_id, due_ms } => self.awaiting_timer(timer_id, due_ms),
                &Phase::AwaitInvoke { call_id } => self.await_(Wait::Invoke { call_id }),
                Phase::Flow { .. } if matches!(node.activity, Activity::Scope { .. }) => self.events_step(node),
                Phase::Flow { .. } => self.flow_step(),
                &Phase::Listening { event, timer } => self.listening(event, timer),
                Phase::Handling { .. } => self.fault_handled(),
                Phase::Compensating { queue, then } => {
                    let (step, then) = (queue.first().cloned(), then.clone());
                    self.compensate_next(step.as_ref(), then)
                }
                Phase::Done => self.leave(node),
            };
            if let Some(y) = next {
                return y;
            }
        }
    }

    /// An activity not yet begun: stop at a breakpoint on it, then take its
    /// commit-before, if any.
    fn enter(&mut self, node: &Node, broke: bool) -> Option<Yield> {
        if !broke && !self.breakpoints.is_empty() && self.in_atomic().is_none() {
            let path = self.snap.path(self.def);
            if self.breakpoints.contains(&path) {
                self.top_mut().broke = true;
                self.snap.status = Status::Suspended;
                return Some(self.persist(Reason::Breakpoint));
            }
        }
        self.top_mut().phase = Phase::Started;
        if node.commits().before && self.persistent() {
            return Some(self.persist(Reason::CommitBefore));
        }
        None
    }

    /// An activity begins its own work.
    fn start(&mut self, node: &'d Node) -> Option<Yield> {
        match &node.activity {
            Activity::Sequence { .. } => {
                self.top_mut().phase = Phase::Child { next: 0 };
                None
            }
            Activity::Snippet { handler } => Some(self.call(*handler, None, Expect::Snippet)),
            Activity::IfElse { condition, .. } | Activity::While { condition, .. } => {
                Some(self.call(*condition, None, Expect::Condition))
            }
            Activity::RepeatUntil { body, .. } => {
                self.top_mut().phase = Phase::Child { next: 1 };
                self.push(*body);
                None
            }
            Activity::Switch { cases, .. } => Some(self.call(cases[0].condition, None, Expect::SwitchCase(0))),
            Activity::ForEach { items, parallel, body, .. } => self.start_for_each(items, *parallel, *body),
            Activity::Throw { fault, message, data } => self.start_throw(fault, message, *data),
            Activity::Rethrow => self.rethrow(),
            Activity::Suspend { .. } => Some(self.suspend()),
            Activity::Terminate => {
                // A terminate in a handler of a cancel ends the cancel too.
                self.snap.cancelling = false;
                Some(self.finish(Status::Terminated))
            }
            Activity::Receive { .. } => self.start_receive(node),
            Activity::Reply { body, .. } => Some(self.call(*body, None, Expect::ReplyBody)),
            Activity::Pick { branches, creates_instance } => self.start_pick(branches, *creates_instance),
            Activity::Invoke { input, .. } => Some(self.call(*input, None, Expect::InvokeInput)),
            Activity::Send { body, .. } | Activity::StartProcess { body, .. } => Some(self.call(*body, None, Expect::SendBody)),
            Activity::Wait { wait } => self.start_wait(wait),
            Activity::Scope { body, atomic, timeout_ms, events, .. } => {
                self.start_scope(*body, atomic.is_some(), *timeout_ms, events);
                None
            }
            Activity::Compensate { scope } => {
                self.start_compensate(scope.as_deref());
                None
            }
            Activity::Flow { branches } => {
                self.start_branches(branches.iter().map(|&b| Frame::new(b, None)).collect());
                None
            }
        }
    }

    /// The child of a composite activity finished (or, for a sequence, the
    /// next child is due).
    fn child_finished(&mut self, node: &'d Node, next: u32) -> Option<Yield> {
        match &node.activity {
            Activity::Sequence { children } => {
                self.next_child(children, next);
                None
            }
            Activity::While { condition, .. } | Activity::RepeatUntil { condition, .. } => {
                Some(self.call(*condition, None, Expect::Condition))
            }
            Activity::IfElse { .. } | Activity::Pick { .. } | Activity::Switch { .. } => {
                self.top_mut().phase = Phase::Done;
                None
            }
            Activity::Scope { compensation, .. } => {
                self.scope_body_completed(node, *compensation);
                None
            }
            _ => unreachable!("child phase on a leaf activity"),
        }
    }

    /// A finished activity leaves the stack, taking its commit-after, if any.
    fn leave(&mut self, node: &Node) -> Option<Yield> {
        let path = self.snap.path(self.def);
        self.snap.stack.pop();
        if node.commits().after && self.persistent() {
            self.persist_path = path;
            let reason = match node.activity {
                Activity::Scope { .. } => Reason::ScopeCompleted,
                _ => Reason::CommitAfter,
            };
            return Some(Yield::Persist(reason));
        }
        None
    }

    /// Whether persistence points are taken here: not in a microflow, and
    /// not inside an atomic scope.
    fn persistent(&self) -> bool {
        self.def.kind == ProcessKind::LongRunning && self.in_atomic().is_none()
    }

    /// Asks for a persistence point that belongs to the current activity.
    fn persist(&mut self, reason: Reason) -> Yield {
        self.persist_path = self.snap.path(self.def);
        Yield::Persist(reason)
    }

    /// Asks the driver to run a handler, with the item of the innermost
    /// for-each iteration at hand.
    fn call(&mut self, handler: u32, message: Option<String>, expect: Expect) -> Yield {
        self.expecting = Some(expect);
        let item = self.snap.stack.iter().rev().find_map(|f| f.item.clone());
        Yield::Call(HandlerCall { handler, message, item })
    }

    /// Ends the instance with a terminal status.
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
            let fault = match &self.snap.fault {
                Some(record) => record.fault.clone(),
                None => Fault::new(
                    "cairn.no-reply",
                    format!("the instance {} without replying to '{}'", status.as_str(), request.operation),
                ),
            };
            self.effects.push(Effect::Reply { message_id: request.message_id, body: "null".into(), fault: Some(fault) });
        }
        // The same reason a later step gives (a cancel ends terminated).
        Yield::Finished(self.finished_reason())
    }

    /// Pops frames above `len`, withdrawing what they were waiting for: their
    /// timers are cleared and a call in flight is given up.
    fn truncate_stack(&mut self, len: usize) {
        while self.snap.stack.len() > len {
            let f = self.snap.stack.pop().unwrap();
            self.withdraw(f);
        }
    }

    /// Withdraws what a frame (and, for a flow, its set-aside branches) waits for.
    fn withdraw(&mut self, f: Frame) {
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
            Phase::AwaitTimer { timer_id, due_ms }
            | Phase::AwaitMessage { timer: Some(TimerRef { timer_id, due_ms }), .. }
            | Phase::Listening { timer: Some(TimerRef { timer_id, due_ms }), .. } => {
                self.effects.push(Effect::ClearTimer { timer_id, due_ms })
            }
            _ => {}
        }
        if let Some(d) = f.deadline {
            self.effects.push(Effect::ClearTimer { timer_id: d.timer_id, due_ms: d.due_ms });
        }
    }

    /// Pushes a frame for `node`, not yet begun.
    fn push(&mut self, node: NodeId) {
        self.snap.stack.push(Frame::new(node, None));
    }

    fn top(&self) -> &Frame {
        self.snap.stack.last().expect("no activity running")
    }

    fn top_mut(&mut self) -> &mut Frame {
        self.snap.stack.last_mut().expect("no activity running")
    }

    /// A fresh timer or call id.
    fn next_id(&mut self) -> u64 {
        let id = self.snap.next_id;
        self.snap.next_id += 1;
        id
    }
}

fn terminal_reason(status: Status) -> Reason {
    match status {
        Status::Faulted => Reason::Faulted,
        Status::Terminated => Reason::Terminated,
        _ => Reason::Completed,
    }
}

/// A handler's output as a `T`, or why it is not one.
fn parse_output<T: serde::de::DeserializeOwned>(output: &Option<String>) -> Result<T, String> {
    let text = output.as_deref().ok_or("the handler returned no output")?;
    serde_json::from_str(text).map_err(|e| format!("output {text} is not a {}: {e}", std::any::type_name::<T>()))
}
