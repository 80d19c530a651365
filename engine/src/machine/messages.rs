//! Message activities: receive (with its reader), reply, pick, and the
//! correlation sets a consumed message initializes. A receive's timeout is
//! a timer (`timers`).

use super::{Expect, Machine};
use crate::contract::{Delivery, Effect, Wait, Yield};
use crate::definition::{Activity, CorrelationSet, Node, PickBranch, PickTrigger};
use crate::snapshot::{Fault, PendingRequest, Phase, Status, TimerRef};

impl Machine<'_> {
    /// A receive begins: with a timeout, its deadline handler runs first.
    pub(super) fn start_receive(&mut self, node: &Node) -> Option<Yield> {
        let Activity::Receive { operation, timeout, correlation, creates_instance, .. } = &node.activity else { unreachable!() };
        if let Some(set) = correlation.as_ref().filter(|c| !creates_instance && !self.snap.correlations.contains_key(*c)) {
            return self.correlation_violation(set);
        }
        match timeout {
            Some(t) => Some(self.call(t.deadline, None, Expect::ReceiveDeadline)),
            None => {
                self.top_mut().phase = Phase::AwaitMessage { operation: operation.to_string(), timer: None };
                None
            }
        }
    }

    /// A receive waits for its message, unless its timeout has passed.
    pub(super) fn awaiting_message(&mut self, node: &Node, operation: String, timer: Option<TimerRef>) -> Option<Yield> {
        match timer {
            Some(t) if t.due_ms <= self.now_ms => self.receive_timed_out(node, t),
            _ => {
                self.snap.status = Status::Waiting;
                self.await_(Wait::Message { operation, due_ms: timer.map(|t| t.due_ms) })
            }
        }
    }

    /// A pick begins: its timer branches set their timers, and it waits for
    /// the first message or timer.
    pub(super) fn start_pick(&mut self, branches: &[PickBranch], creates_instance: bool) -> Option<Yield> {
        if !creates_instance {
            let uninitialised = branches.iter().find_map(|b| match &b.trigger {
                PickTrigger::Message { correlation: Some(set), .. } if !self.snap.correlations.contains_key(set) => Some(set),
                _ => None,
            });
            if let Some(set) = uninitialised {
                return self.correlation_violation(set);
            }
        }
        let mut timers = Vec::new();
        for (i, b) in branches.iter().enumerate() {
            if let PickTrigger::AfterMs(ms) = b.trigger {
                timers.push((i as u32, self.set_timer(self.now_ms.saturating_add(ms))));
            }
        }
        self.top_mut().phase = Phase::AwaitPick { timers };
        None
    }

    /// A receive (pick, event handler) would wait on correlation set `set`,
    /// which no message has initialised: nothing could ever reach it, so it
    /// faults instead of waiting forever.
    pub(super) fn correlation_violation(&mut self, set: &str) -> Option<Yield> {
        self.raise(Fault::new(
            "cairn.correlation-violation",
            format!("waits on correlation set '{set}', which is not initialised: no message of this instance has given it values, so no message could reach it"),
        ))
    }

    /// A pick waits for the first of its messages, unless one of its timers
    /// is due: then that timer's branch runs.
    pub(super) fn awaiting_pick(&mut self, node: &Node, timers: Vec<(u32, TimerRef)>) -> Option<Yield> {
        let Activity::Pick { branches, .. } = &node.activity else { unreachable!() };
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
            return None;
        }
        self.snap.status = Status::Waiting;
        self.await_(Wait::Pick { operations: pick_operations(branches) })
    }

    /// A message arrived for the receive or pick at the top of the stack
    /// (the driver delivers only what the machine awaits).
    pub(super) fn message_arrived(&mut self, delivery: Delivery) -> Option<Yield> {
        let top = self.snap.stack.last().expect("message delivered to a finished instance");
        let node = self.def.node(top.node);
        match (&top.phase, &node.activity) {
            (Phase::AwaitMessage { operation, timer }, Activity::Receive { reader, .. }) if *operation == delivery.operation => {
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
            (&Phase::Listening { event, .. }, _) => self.event_message_arrived(event, delivery),
            (Phase::AwaitPick { timers }, Activity::Pick { branches, .. }) => {
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

    /// A receive takes its message (after its reader, if any) and is done.
    pub(super) fn receive_done(&mut self, delivery: Delivery) {
        let node = self.def.node(self.top().node);
        let Activity::Receive { correlation, request_response, .. } = &node.activity else { unreachable!() };
        self.take_message(delivery, correlation, *request_response);
        self.top_mut().phase = Phase::Done;
    }

    /// A pick takes its message (after the branch's reader, if any) and runs
    /// the branch's body.
    pub(super) fn pick_message_done(&mut self, branch: u32, delivery: Delivery) {
        let node = self.def.node(self.top().node);
        let Activity::Pick { branches, .. } = &node.activity else { unreachable!() };
        let b = &branches[branch as usize];
        let PickTrigger::Message { correlation, .. } = &b.trigger else { unreachable!() };
        let body = b.body;
        self.take_message(delivery, correlation, false);
        self.top_mut().phase = Phase::Child { next: 1 };
        self.push(body);
    }

    /// Consumes a message in the next persistence point, initializing its
    /// correlation set if this is the set's first message.
    pub(super) fn take_message(&mut self, delivery: Delivery, correlation: &Option<String>, request_response: bool) {
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

    /// A reply's body handler returned: answer the request waiting on its
    /// operation. With no such request, the reply faults.
    pub(super) fn reply(&mut self, node: &Node, output: Option<String>) -> Option<Yield> {
        let Activity::Reply { operation, .. } = &node.activity else { unreachable!() };
        let body = output.unwrap_or_else(|| "null".into());
        match self.snap.requests.iter().position(|r| r.operation == *operation) {
            Some(i) => {
                let request = self.snap.requests.remove(i);
                self.effects.push(Effect::Reply { message_id: request.message_id, body, fault: None });
                self.top_mut().phase = Phase::Done;
                None
            }
            None => self.raise(Fault::new(
                "cairn.no-request",
                format!("no request of operation '{operation}' is waiting for a reply"),
            )),
        }
    }
}

/// The operations a pick's message branches wait for, in branch order.
pub(super) fn pick_operations(branches: &[PickBranch]) -> Vec<String> {
    branches
        .iter()
        .filter_map(|b| match &b.trigger {
            PickTrigger::Message { operation, .. } => Some(operation.clone()),
            PickTrigger::AfterMs(_) => None,
        })
        .collect()
}

/// The values of a correlation set in a message body, as canonical JSON text
/// (an array in property order). Errors name the missing property.
pub fn correlation_values(set: &CorrelationSet, body: &str) -> Result<String, String> {
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
