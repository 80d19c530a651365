//! Time: the wait activity (a duration, or a deadline from a handler),
//! receive timeouts, and long-running scope deadlines. Every timer is an
//! effect (`SetTimer`, and `ClearTimer` once it fired or was withdrawn); the
//! machine learns that time passed only from `now_ms` on each step.

use super::{parse_output, Expect, Machine};
use crate::contract::{Effect, Wait, Yield};
use crate::definition::{Activity, Node, WaitFor};
use crate::snapshot::{Fault, FaultRecord, Phase, Status, TimerRef};

impl Machine<'_> {
    /// Decides a timer due at `due_ms`, with a fresh id.
    pub(super) fn set_timer(&mut self, due_ms: u64) -> TimerRef {
        let timer_id = self.next_id();
        self.effects.push(Effect::SetTimer { timer_id, due_ms });
        TimerRef { timer_id, due_ms }
    }

    /// A wait begins: for a duration its timer is set at once; for a
    /// deadline, its handler computes it first.
    pub(super) fn start_wait(&mut self, wait: &WaitFor) -> Option<Yield> {
        match wait {
            WaitFor::DurationMs(ms) => {
                let due_ms = self.now_ms.saturating_add(*ms);
                let timer = self.set_timer(due_ms);
                self.top_mut().phase = Phase::AwaitTimer { timer_id: timer.timer_id, due_ms };
                None
            }
            WaitFor::Deadline(h) => Some(self.call(*h, None, Expect::Deadline)),
        }
    }

    /// A wait's deadline handler returned the deadline (ms since the epoch).
    pub(super) fn wait_until(&mut self, output: &Option<String>) -> Option<Yield> {
        match parse_output::<u64>(output) {
            Ok(due_ms) => {
                let timer = self.set_timer(due_ms);
                self.top_mut().phase = Phase::AwaitTimer { timer_id: timer.timer_id, due_ms };
                None
            }
            Err(e) => self.raise(Fault::new("cairn.bad-handler-output", format!("deadline: {e}"))),
        }
    }

    /// A wait is done once its timer is due; until then the instance waits.
    pub(super) fn awaiting_timer(&mut self, timer_id: u64, due_ms: u64) -> Option<Yield> {
        if due_ms <= self.now_ms {
            self.top_mut().phase = Phase::Done;
            self.effects.push(Effect::ClearTimer { timer_id, due_ms });
            None
        } else {
            self.snap.status = Status::Waiting;
            self.await_(Wait::Timer { timer_id, due_ms })
        }
    }

    /// A receive's deadline handler returned: wait for the message, with a
    /// timer at that deadline.
    pub(super) fn receive_until(&mut self, node: &Node, output: &Option<String>) -> Option<Yield> {
        match parse_output::<u64>(output) {
            Ok(due_ms) => {
                let Activity::Receive { operation, .. } = &node.activity else { unreachable!() };
                let timer = Some(self.set_timer(due_ms));
                self.top_mut().phase = Phase::AwaitMessage { operation: operation.clone(), timer };
                None
            }
            Err(e) => self.raise(Fault::new("cairn.bad-handler-output", format!("receive timeout: {e}"))),
        }
    }

    /// A receive's deadline passed before its message: its timeout handler
    /// runs (as a snippet), and the receive is done without a message.
    pub(super) fn receive_timed_out(&mut self, node: &Node, timer: TimerRef) -> Option<Yield> {
        self.effects.push(Effect::ClearTimer { timer_id: timer.timer_id, due_ms: timer.due_ms });
        let on_timeout = match &node.activity {
            Activity::Receive { timeout: Some(t), .. } => t.on_timeout,
            _ => None,
        };
        match on_timeout {
            Some(h) => Some(self.call(h, None, Expect::Snippet)),
            None => {
                self.top_mut().phase = Phase::Done;
                None
            }
        }
    }

    /// Withdraws the deadline of the scope at the top of the stack, if any.
    pub(super) fn clear_deadline(&mut self) {
        if let Some(d) = self.top_mut().deadline.take() {
            self.effects.push(Effect::ClearTimer { timer_id: d.timer_id, due_ms: d.due_ms });
        }
    }

    /// The outermost scope whose deadline has passed while its body runs
    /// faults, with the body interrupted wherever it was. `None` if no
    /// deadline has passed; else what the fault's propagation yields.
    pub(super) fn scope_deadline_passed(&mut self) -> Option<Option<Yield>> {
        let now = self.now_ms;
        let i = self
            .snap
            .stack
            .iter()
            .position(|f| f.deadline.is_some_and(|d| d.due_ms <= now) && matches!(f.phase, Phase::Child { .. } | Phase::Flow { .. }))?;
        self.truncate_stack(i + 1);
        self.clear_deadline();
        let path = self.snap.path(self.def);
        let name = &self.def.node(self.top().node).name;
        let fault = Fault::new("cairn.scope-timeout", format!("scope '{name}' passed its deadline"));
        Some(self.propagate(FaultRecord { fault, path }))
    }
}
