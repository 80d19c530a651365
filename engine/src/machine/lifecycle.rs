//! The instance lifecycle beyond its definition: an operator retries a
//! faulted instance from the activity that faulted, or cancels one so that
//! its handlers run before it ends.
//!
//! Rules:
//! - When a fault is raised, the machine remembers the stack as it stood
//!   (`Machine::raised`, in memory only). If that same fault leaves the
//!   process of a long-running instance, the stack becomes the snapshot's
//!   `RetryPoint`, stored with the faulted instance. A fault a handler
//!   catches forgets it; a fault raised by a scope's deadline has none.
//! - A retry puts the stack back with its innermost activity not yet begun
//!   (`Phase::Enter`), or, inside an atomic scope, the outermost atomic
//!   scope not yet begun: nothing inside one was ever persisted. What the
//!   fault withdrew is set up again: timers of the frames below (and of
//!   set-aside flow branches and listening event handlers) are set again,
//!   a set-aside branch whose call was given up makes the call again, the
//!   correlations are initialized again, and the requests the fault answered wait for their reply again
//!   (a reply then replaces the fault as the request's answer).
//!   Compensation that ran while the fault propagated is not undone, and
//!   the scopes it compensated are not registered again (a later fault
//!   does not compensate them twice).
//! - A cancel raises `cairn.cancelled` where the instance stands and marks
//!   it `cancelling`: each scope running takes it like any fault (its
//!   handler for it or its catch-all runs, else its default handler
//!   compensates its completed inner scopes), then the cancel goes on
//!   outward; at the process, the completed top-level scopes are
//!   compensated, and the instance ends *terminated*, its fault record
//!   naming the cancel. A cancelled instance keeps no retry point.

use super::{terminal_reason, Machine};
use crate::contract::{Effect, Reason, Yield};
use crate::definition::{Activity, ProcessKind};
use crate::snapshot::{AfterCompensation, BranchState, Fault, FaultRecord, Frame, Phase, RetryPoint, Status};

/// The fault a cancel raises.
pub const CANCELLED: &str = "cairn.cancelled";

impl Machine<'_> {
    /// A fault was raised here: remember where, for a retry.
    pub(super) fn note_raised(&mut self, record: &FaultRecord) {
        let mut stack = self.snap.stack.clone();
        // What an atomic scope rolls back to is never stored (`Frame::atomic`).
        for f in &mut stack {
            f.atomic = None;
        }
        self.raised = Some((record.clone(), stack));
    }

    /// A handler caught the fault: there is nothing to retry.
    pub(super) fn forget_raised(&mut self) {
        self.raised = None;
    }

    /// `record` leaves the process: keep where it was raised in the
    /// snapshot, if it is the fault remembered and the instance persists.
    pub(super) fn keep_retry_point(&mut self, record: &FaultRecord) {
        let raised = self.raised.take();
        if self.def.kind != ProcessKind::LongRunning || self.snap.cancelling {
            return;
        }
        if let Some((_, mut stack)) = raised.filter(|(r, _)| r == record) {
            // Each scope the fault went out through compensated its
            // completed inner scopes (no handler caught it): they stay
            // compensated, not registered again for a second compensation.
            let def = self.def;
            for f in &mut stack {
                if matches!(def.node(f.node).activity, Activity::Scope { .. }) && matches!(f.phase, Phase::Child { .. } | Phase::Flow { .. }) {
                    f.completed.clear();
                }
            }
            let (correlations, requests) = (self.snap.correlations.clone(), self.snap.requests.clone());
            self.snap.retry = Some(RetryPoint { stack, correlations, requests });
        }
    }

    /// An operator retries a faulted instance. Without a retry point (not
    /// faulted, a microflow, a fault of a scope's deadline) nothing changes.
    pub(super) fn retry(&mut self, variables: Option<String>) -> Yield {
        let point = match (self.snap.status, self.snap.retry.take()) {
            (Status::Faulted, Some(point)) => point,
            (status, point) => {
                self.snap.retry = point;
                if status.is_terminal() {
                    return Yield::Finished(self.finished_reason());
                }
                // Already retried (two operators at once): nothing to do.
                return self.step(crate::contract::Input::Continue, self.now_ms);
            }
        };
        let mut stack = point.stack;
        // Into an atomic scope there is no way back but its start.
        let def = self.def;
        let atomic = stack.iter().position(|f| matches!(def.node(f.node).activity, Activity::Scope { atomic: Some(_), .. }));
        if let Some(i) = atomic {
            stack.truncate(i + 1);
        }
        if let Some(top) = stack.last_mut() {
            let item = top.item.take();
            *top = Frame::new(top.node, item);
        }
        // What the fault withdrew is set up again.
        for f in &mut stack {
            self.set_up_again(f);
        }
        for (set, values) in &point.correlations {
            self.effects.push(Effect::Correlate { set: set.clone(), values: values.clone() });
        }
        self.snap.correlations = point.correlations;
        self.snap.requests = point.requests;
        if let Some(v) = variables {
            self.snap.variables = v;
        }
        self.snap.stack = stack;
        self.snap.fault = None;
        self.snap.status = Status::Running;
        self.persist(Reason::Retried)
    }

    /// Sets again a frame's timers, and, in a set-aside flow branch, gives a
    /// call given up a fresh start (the branch becomes ready to run it).
    fn set_up_again(&mut self, f: &mut Frame) {
        let mut timers: Vec<crate::snapshot::TimerRef> = f.deadline.into_iter().collect();
        match &mut f.phase {
            Phase::AwaitTimer { timer_id, due_ms } => timers.push(crate::snapshot::TimerRef { timer_id: *timer_id, due_ms: *due_ms }),
            Phase::AwaitMessage { timer: Some(t), .. } => timers.push(*t),
            Phase::AwaitPick { timers: ts } => timers.extend(ts.iter().map(|(_, t)| *t)),
            // An event handler's alarm, listening beside its scope's body.
            Phase::Listening { timer: Some(t), .. } => timers.push(*t),
            Phase::Flow { branches } => {
                let mut branches = std::mem::take(branches);
                for b in &mut branches {
                    for frame in &mut b.stack {
                        self.set_up_again(frame);
                    }
                    if b.state == BranchState::Waiting && matches!(b.stack.last().map(|f| &f.phase), Some(Phase::Started)) {
                        b.state = BranchState::Ready;
                    }
                }
                let Phase::Flow { branches: slot } = &mut f.phase else { unreachable!() };
                *slot = branches;
            }
            // A call given up by the fault (its outbox entry is gone): made again.
            Phase::AwaitInvoke { .. } => f.phase = Phase::Started,
            _ => {}
        }
        for t in timers {
            self.effects.push(Effect::SetTimer { timer_id: t.timer_id, due_ms: t.due_ms });
        }
    }

    /// Why a finished instance finished: a cancelled one is terminated, for
    /// the reason `Cancelled`, however often it is asked.
    pub(super) fn finished_reason(&self) -> Reason {
        match self.snap.status {
            Status::Terminated if self.snap.cancelling => Reason::Cancelled,
            status => terminal_reason(status),
        }
    }

    /// An operator cancels the instance: `cairn.cancelled` is raised where
    /// it stands, even if suspended.
    pub(super) fn cancel(&mut self) -> Yield {
        self.snap.cancelling = true;
        self.snap.status = Status::Running;
        match self.raise(Fault::new(CANCELLED, "cancelled by an operator")) {
            Some(y) => y,
            None => self.run(),
        }
    }

    /// A fault handler finished while the instance is cancelling: the
    /// cancel goes on outward from the scope. `None`: not cancelling.
    pub(super) fn cancel_onward(&mut self) -> Option<Option<Yield>> {
        if !self.snap.cancelling {
            return None;
        }
        let path = self.snap.path(self.def);
        self.top_mut().phase = Phase::Done;
        Some(self.propagate(FaultRecord { fault: Fault::new(CANCELLED, "cancelled by an operator"), path }))
    }

    /// The cancel reached the process: its completed top-level scopes are
    /// compensated first (on the root's frame), then it ends terminated.
    /// `None`: the run loop goes on with the compensation on top.
    pub(super) fn cancel_ends(&mut self, record: FaultRecord) -> Option<Yield> {
        let queue = super::scopes::compensation_queue(&std::mem::take(&mut self.snap.compensations));
        if !queue.is_empty() && self.def.kind == ProcessKind::LongRunning {
            self.truncate_stack(0);
            let mut root = Frame::new(self.def.root, None);
            root.phase = Phase::Compensating { queue, then: AfterCompensation::Rethrow(record) };
            self.snap.stack.push(root);
            return None;
        }
        self.snap.fault = Some(record);
        // Terminated while cancelling: finished for the reason `Cancelled`.
        Some(self.finish(Status::Terminated))
    }
}
