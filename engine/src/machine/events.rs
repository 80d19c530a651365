//! Event handlers of a scope (and of the process: of its root scope): on a
//! message, correlated like a receive, and on an alarm (once after a
//! duration or at a deadline, or repeating at an interval).
//!
//! Rules:
//! - A scope with event handlers runs like a flow (`flow`): branch 0 is its
//!   body, branch `1 + i` the listener of handler `i`. A listener is the
//!   handler's body frame in `Phase::Listening` until its trigger fires;
//!   then it runs as an ordinary activity, with the persistence points of
//!   the activities it contains.
//! - One run of a handler at a time: a message that arrives while its body
//!   runs waits in the inbox and fires it again once the body is done. A
//!   message handler and a repeating alarm listen again after each run; a
//!   one-time alarm is done after its run.
//! - Everything ends with the body: when the body completes, the listeners
//!   (and a handler body still running) are withdrawn and the scope
//!   completes. A fault in a handler body is a fault of the scope.

use super::{parse_output, Expect, Machine};
use crate::contract::{Delivery, Effect, Wait, Yield};
use crate::definition::{Activity, EventHandler, EventTrigger, Node, NodeId};
use crate::snapshot::{Branch, BranchState, Fault, Frame, Phase, Status, TimerRef};

/// The frame of handler `event`'s body, listening for its trigger.
fn listener(body: NodeId, event: u32, timer: Option<TimerRef>) -> Frame {
    Frame { phase: Phase::Listening { event, timer }, ..Frame::new(body, None) }
}

impl Machine<'_> {
    /// A scope with event handlers begins: its body and one listener per
    /// handler, as the ready branches of the scope frame.
    pub(super) fn start_events(&mut self, body: NodeId, events: &[EventHandler]) {
        let mut stacks = vec![Frame::new(body, None)];
        stacks.extend(events.iter().enumerate().map(|(i, e)| listener(e.body, i as u32, None)));
        self.start_branches(stacks);
    }

    /// The scope frame is on top: a branch has finished, or all wait. The
    /// body finishing completes the scope; a handler's run finishing makes
    /// it listen again (or, a one-time alarm, be done).
    pub(super) fn events_step(&mut self, node: &Node) -> Option<Yield> {
        let Activity::Scope { events, compensation, .. } = &node.activity else { unreachable!() };
        let Phase::Flow { branches } = &self.top().phase else { unreachable!() };
        if let Some(i) = branches.iter().position(|b| b.state == BranchState::Active) {
            if i == 0 {
                self.cancel_branches();
                self.scope_body_completed(node, *compensation);
                return None;
            }
            let event = &events[i - 1];
            let again = match event.trigger {
                EventTrigger::Message { .. } => Some(None),
                EventTrigger::EveryMs(ms) => Some(Some(self.set_timer(self.now_ms.saturating_add(ms)))),
                EventTrigger::AfterMs(_) | EventTrigger::Deadline(_) => None,
            };
            let Phase::Flow { branches } = &mut self.top_mut().phase else { unreachable!() };
            branches[i] = match again {
                Some(timer) => Branch { state: BranchState::Ready, stack: vec![listener(event.body, (i - 1) as u32, timer)] },
                None => Branch { state: BranchState::Done, stack: Vec::new() },
            };
        }
        self.flow_step()
    }

    /// A listener runs: it waits for its message or its alarm's timer
    /// (setting the timer the first time), or fires when the timer is due.
    pub(super) fn listening(&mut self, event: u32, timer: Option<TimerRef>) -> Option<Yield> {
        match (self.trigger_of(event), timer) {
            (EventTrigger::Message { operation, correlation, .. }, _) => {
                if let Some(set) = correlation.as_ref().filter(|c| !self.snap.correlations.contains_key(*c)) {
                    return self.correlation_violation(set);
                }
                self.snap.status = Status::Waiting;
                self.await_(Wait::Message { operation: operation.clone(), due_ms: None })
            }
            (_, Some(t)) if t.due_ms <= self.now_ms => {
                self.effects.push(Effect::ClearTimer { timer_id: t.timer_id, due_ms: t.due_ms });
                self.top_mut().phase = Phase::Enter;
                None
            }
            (_, Some(t)) => {
                self.snap.status = Status::Waiting;
                self.await_(Wait::Timer { timer_id: t.timer_id, due_ms: t.due_ms })
            }
            (&EventTrigger::AfterMs(ms) | &EventTrigger::EveryMs(ms), None) => {
                let timer = self.set_timer(self.now_ms.saturating_add(ms));
                self.top_mut().phase = Phase::Listening { event, timer: Some(timer) };
                None
            }
            (&EventTrigger::Deadline(h), None) => Some(self.call(h, None, Expect::EventDeadline)),
        }
    }

    /// An alarm's deadline handler returned its deadline: set the timer.
    pub(super) fn event_deadline_set(&mut self, output: &Option<String>) -> Option<Yield> {
        let &Phase::Listening { event, .. } = &self.top().phase else { unreachable!() };
        match parse_output::<u64>(output) {
            Ok(due_ms) => {
                let timer = self.set_timer(due_ms);
                self.top_mut().phase = Phase::Listening { event, timer: Some(timer) };
                None
            }
            Err(e) => self.raise(Fault::new("cairn.bad-handler-output", format!("alarm deadline: {e}"))),
        }
    }

    /// A message arrived for the listener on top: its reader (if any) reads it.
    pub(super) fn event_message_arrived(&mut self, event: u32, delivery: Delivery) -> Option<Yield> {
        let EventTrigger::Message { reader, .. } = self.trigger_of(event) else {
            panic!("message '{}' delivered to an alarm", delivery.operation)
        };
        match *reader {
            Some(h) => {
                let message = Some(delivery.body.clone());
                Some(self.call(h, message, Expect::EventReader(delivery)))
            }
            None => {
                self.event_message_done(delivery);
                None
            }
        }
    }

    /// The listener on top takes its message (in the next persistence
    /// point) and its handler's body runs.
    pub(super) fn event_message_done(&mut self, delivery: Delivery) {
        let &Phase::Listening { event, .. } = &self.top().phase else { unreachable!() };
        let EventTrigger::Message { correlation, .. } = self.trigger_of(event) else { unreachable!() };
        self.take_message(delivery, correlation, false);
        self.top_mut().phase = Phase::Enter;
    }

}

impl<'d> Machine<'d> {
    /// The trigger of event handler `event` of the scope below the top frame.
    fn trigger_of(&self, event: u32) -> &'d EventTrigger {
        let def: &'d crate::definition::Definition = self.def;
        let scope = &self.snap.stack[self.snap.stack.len() - 2];
        let Activity::Scope { events, .. } = &def.node(scope.node).activity else {
            unreachable!("a listener stands on its scope")
        };
        &events[event as usize].trigger
    }
}
