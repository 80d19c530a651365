//! Scopes and faults: long-running and atomic scopes, how a fault
//! propagates to the innermost scope running its body (fault handlers,
//! atomic rollback and retry), and compensation of completed scopes.
//!
//! Rules:
//! - A completed long-running scope registers its compensation, with the
//!   variables as they stood at its end, in the registry of the nearest
//!   enclosing scope (or the process's); its inner registrations go with it.
//! - Compensation runs newest completed scope first, and within a scope its
//!   own inner scopes before it (inside-out). Each step is a persistence
//!   point (`Reason::Compensated`), so a resumed instance never runs a step
//!   twice.
//! - Inside an atomic scope nothing is persisted; a fault rolls the
//!   variables back and drops the effects decided since the scope began.

use super::{Expect, Machine};
use crate::contract::{Effect, Reason, Yield};
use crate::definition::{Activity, EventHandler, FaultHandler, Node, NodeId, ProcessKind};
use crate::snapshot::{AfterCompensation, AtomicAttempt, CompensationStep, Fault, FaultRecord, Phase, Registered, Status};

impl Machine<'_> {
    /// A scope begins: its deadline timer is set, an atomic scope records
    /// what a fault rolls back to, and its body runs.
    pub(super) fn start_scope(&mut self, body: NodeId, atomic: bool, timeout_ms: Option<u64>, events: &[EventHandler]) {
        if let Some(ms) = timeout_ms {
            let timer = self.set_timer(self.now_ms.saturating_add(ms));
            self.top_mut().deadline = Some(timer);
        }
        if atomic {
            let attempt = AtomicAttempt { attempt: 1, variables: self.snap.variables.clone(), effects_len: self.effects.len() };
            self.top_mut().atomic = Some(attempt);
        }
        if events.is_empty() {
            self.top_mut().phase = Phase::Child { next: 1 };
            self.push(body);
        } else {
            self.start_events(body, events);
        }
    }

    /// A scope's body completed: register the scope's compensation with the
    /// variables as they stand now.
    pub(super) fn scope_body_completed(&mut self, node: &Node, compensation: Option<u32>) {
        self.clear_deadline();
        let frame = self.top_mut();
        frame.atomic = None;
        let inner = std::mem::take(&mut frame.completed);
        frame.phase = Phase::Done;
        let variables = self.snap.variables.clone();
        let registered = Registered { scope: node.name.clone(), handler: compensation, variables, inner };
        if registered.handler.is_some() || !registered.inner.is_empty() {
            self.enclosing_registry().push(registered);
        }
    }

    /// A compensate activity begins: it takes the scope named (or all) out
    /// of the enclosing registry and queues their handlers.
    pub(super) fn start_compensate(&mut self, scope: Option<&str>) {
        let registry = self.enclosing_registry();
        let chosen = match scope {
            None => std::mem::take(registry),
            Some(name) => take_registered(registry, name).into_iter().collect(),
        };
        let queue = compensation_queue(&chosen);
        self.top_mut().phase = Phase::Compensating { queue, then: AfterCompensation::Done };
    }

    /// Runs the next compensation step, or, with none left, does what follows.
    pub(super) fn compensate_next(&mut self, step: Option<&CompensationStep>, then: AfterCompensation) -> Option<Yield> {
        match (step, then) {
            (Some(step), _) => Some(self.call(step.handler, Some(step.variables.clone()), Expect::CompensationStep)),
            (None, AfterCompensation::Done) => {
                self.top_mut().phase = Phase::Done;
                None
            }
            (None, AfterCompensation::Rethrow(record)) => self.propagate(record),
        }
    }

    /// A compensation handler ran: it leaves the queue, durably.
    pub(super) fn compensation_step_done(&mut self) -> Option<Yield> {
        let Phase::Compensating { queue, .. } = &mut self.top_mut().phase else { unreachable!() };
        queue.remove(0);
        self.persistent().then(|| self.persist(Reason::Compensated))
    }

    /// Fault handler `h`'s reader returned: the handler's body, if any, runs.
    pub(super) fn caught_fault_read(&mut self, node: &Node, h: usize) {
        let Activity::Scope { handlers, .. } = &node.activity else { unreachable!() };
        if let Some(b) = handlers[h].body {
            self.push(b);
        }
    }

    /// A fault handler finished: the scope ends as completed (without
    /// registering its compensation).
    pub(super) fn fault_handled(&mut self) -> Option<Yield> {
        self.clear_deadline();
        if let Some(cancel) = self.cancel_onward() {
            return cancel;
        }
        self.top_mut().phase = Phase::Done;
        None
    }

    /// Raises a fault at the current activity (see `propagate`).
    pub(super) fn raise(&mut self, fault: Fault) -> Option<Yield> {
        let path = self.snap.path(self.def);
        let record = FaultRecord { fault, path };
        self.note_raised(&record);
        self.propagate(record)
    }

    /// Finds the innermost scope whose body is running and hands it the
    /// fault: a matching handler runs, or else its default handler
    /// compensates its completed inner scopes and raises the fault further
    /// out. A fault no scope takes leaves the process and faults the instance.
    ///
    /// `None`: the run loop goes on with the frame now on top (the handler's
    /// body, the compensation, the retried atomic body). Never the run loop
    /// itself: faults caught one after another in one step would each add a
    /// level of recursion.
    pub(super) fn propagate(&mut self, record: FaultRecord) -> Option<Yield> {
        self.expecting = None;
        let def = self.def;
        let catcher = self.snap.stack.iter().rposition(|f| {
            matches!(def.node(f.node).activity, Activity::Scope { .. }) && matches!(f.phase, Phase::Child { .. } | Phase::Flow { .. })
        });
        let Some(i) = catcher else {
            if self.snap.cancelling {
                return self.cancel_ends(record);
            }
            self.keep_retry_point(&record);
            if self.def.kind == ProcessKind::Microflow {
                // A microflow is one transaction: a fault that ends it takes
                // back the messages it would have sent.
                self.effects.retain(|e| !matches!(e, Effect::Send { .. }));
            }
            self.snap.fault = Some(record);
            return Some(self.finish(Status::Faulted));
        };
        self.truncate_stack(i + 1);
        // Its event handlers end with the body.
        self.cancel_branches();
        self.top_mut().phase = Phase::Child { next: 1 };
        if let Some(attempt) = self.top_mut().atomic.take() {
            if let Some(backoff) = self.roll_back(attempt) {
                return (backoff > 0).then_some(Yield::Sleep(backoff));
            }
        }
        let Activity::Scope { handlers, .. } = &self.def.node(self.top().node).activity else { unreachable!() };
        let order = handler_order(handlers, &record.fault.name);
        self.top_mut().phase = Phase::Handling { caught: record };
        self.try_fault_handlers(order, 0)
    }

    /// Tries the candidate fault handlers of the scope on top (handling the
    /// fault in its `Phase::Handling`) from `order[at]`: the first without a
    /// condition, or whose condition holds, catches. With none left, the
    /// default handler runs: the completed inner scopes are compensated
    /// (and, for the process scope, the process's own compensation handler
    /// after them), then the fault goes further out.
    fn try_fault_handlers(&mut self, order: Vec<usize>, at: usize) -> Option<Yield> {
        let node = self.def.node(self.top().node);
        let Activity::Scope { handlers, compensation, .. } = &node.activity else { unreachable!() };
        let Phase::Handling { caught } = &self.top().phase else { unreachable!() };
        let record = caught.clone();
        let message = serde_json::json!({
            "name": record.fault.name,
            "message": record.fault.message,
            "data": serde_json::from_str::<serde_json::Value>(&record.fault.data).unwrap_or(serde_json::Value::Null),
        })
        .to_string();
        let Some(&h) = order.get(at) else {
            let is_process_scope = self.snap.stack.len() == 1 && self.top().node == self.def.root;
            let frame = self.top_mut();
            let mut queue = compensation_queue(&std::mem::take(&mut frame.completed));
            if let (true, Some(handler)) = (is_process_scope, compensation) {
                queue.push(CompensationStep { scope: node.name.clone(), handler: *handler, variables: self.snap.variables.clone() });
            }
            self.top_mut().phase = Phase::Compensating { queue, then: AfterCompensation::Rethrow(record) };
            return None;
        };
        let handler = &handlers[h];
        if let Some(condition) = handler.condition {
            return Some(self.call(condition, Some(message), Expect::FaultCondition { order, at }));
        }
        // Caught: the fault will not leave the process.
        self.forget_raised();
        match (handler.reader, handler.body) {
            (Some(r), _) => return Some(self.call(r, Some(message), Expect::CatchReader(h))),
            (None, Some(b)) => self.push(b),
            (None, None) => {}
        }
        None
    }

    /// A fault handler's condition on the fault answered: it catches, or
    /// the next candidate is tried.
    pub(super) fn fault_condition_decided(&mut self, output: &Option<String>, order: Vec<usize>, at: usize) -> Option<Yield> {
        match super::parse_output::<bool>(output) {
            Ok(true) => {
                let node = self.def.node(self.top().node);
                let Activity::Scope { handlers, .. } = &node.activity else { unreachable!() };
                let h = order[at];
                let Phase::Handling { caught } = &self.top().phase else { unreachable!() };
                let message = serde_json::json!({
                    "name": caught.fault.name,
                    "message": caught.fault.message,
                    "data": serde_json::from_str::<serde_json::Value>(&caught.fault.data).unwrap_or(serde_json::Value::Null),
                })
                .to_string();
                // Caught: the fault will not leave the process.
                self.forget_raised();
                match (handlers[h].reader, handlers[h].body) {
                    (Some(r), _) => return Some(self.call(r, Some(message), Expect::CatchReader(h))),
                    (None, Some(b)) => self.push(b),
                    (None, None) => {}
                }
                None
            }
            Ok(false) => self.try_fault_handlers(order, at + 1),
            Err(e) => self.raise(Fault::new("cairn.bad-handler-output", format!("fault handler condition: {e}"))),
        }
    }

    /// Rolls the atomic scope at the top of the stack back to its start: the
    /// variables as they were, buffered effects dropped. Then retries while
    /// the policy allows: the backoff to wait first (0: at once), or `None`
    /// when the attempts are used up and the fault goes to the scope's handlers.
    fn roll_back(&mut self, attempt: AtomicAttempt) -> Option<u64> {
        self.snap.variables = attempt.variables.clone();
        self.effects.truncate(attempt.effects_len);
        self.top_mut().completed.clear();
        let node = self.def.node(self.top().node);
        let Activity::Scope { atomic: Some(policy), body, .. } = &node.activity else { unreachable!() };
        if attempt.attempt >= policy.max_attempts {
            return None;
        }
        let backoff = policy.backoff_ms.saturating_mul(1 << (attempt.attempt - 1).min(20));
        self.top_mut().atomic = Some(AtomicAttempt { attempt: attempt.attempt + 1, ..attempt });
        self.push(*body);
        Some(backoff)
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
}

/// The handlers that may catch `fault`, most specific first: those that
/// name it with a condition on its data, those that name it, catch-alls
/// with a condition, catch-alls; in declaration order within each.
fn handler_order(handlers: &[FaultHandler], fault: &str) -> Vec<usize> {
    let rank = |h: &FaultHandler| match (h.fault.as_deref(), h.condition.is_some()) {
        (Some(f), true) if f == fault => Some(0),
        (Some(f), false) if f == fault => Some(1),
        (None, true) => Some(2),
        (None, false) => Some(3),
        _ => None,
    };
    let mut order: Vec<(u8, usize)> = handlers.iter().enumerate().filter_map(|(i, h)| rank(h).map(|r| (r, i))).collect();
    order.sort();
    order.into_iter().map(|(_, i)| i).collect()
}

/// Compensation order: newest completed scope first, and within a scope its
/// own inner scopes before it (inside-out).
pub(super) fn compensation_queue(completed: &[Registered]) -> Vec<CompensationStep> {
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
