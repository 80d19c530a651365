//! Outgoing calls: invoke (an activity or a process, answered later by
//! `Input::InvokeResult`), send and start-process (fire and forget). Each
//! leaves as an outbox effect; outside a transaction, writing it is a
//! persistence point of its own (reason `Dispatch`), except for an invoke of
//! a pure activity (`Machine::set_pure_activities`): nothing leaves the host
//! for it, so it needs no point before it, and the driver runs it inline;
//! its result is persisted with the invoke's own commit.

use super::{Expect, Machine};
use crate::contract::{Effect, Reason, ResourceAccesses, Yield};
use crate::definition::{Activity, Node, Target};
use crate::snapshot::{Fault, Phase};

impl Machine<'_> {
    /// An invoke's input handler returned: decide the call, and wait for its
    /// result. The idempotency key is `instance/path/call`.
    pub(super) fn dispatch_invoke(&mut self, node: &Node, input: Option<String>) -> Option<Yield> {
        let Activity::Invoke { target, operation, policy, .. } = &node.activity else { unreachable!() };
        let call_id = self.next_id();
        let key = format!("{}/{}/{call_id}", self.snap.id, self.snap.path(self.def));
        self.effects.push(Effect::Invoke {
            call_id,
            target: target.clone(),
            operation: operation.clone(),
            input: input.unwrap_or_else(|| "null".into()),
            idempotency_key: key,
            policy: policy.clone(),
        });
        self.top_mut().phase = Phase::AwaitInvoke { call_id };
        let pure = matches!(target, Target::Activity(name) if self.pure_activities.contains(name));
        (self.persistent() && !pure).then(|| self.persist(Reason::Dispatch))
    }

    /// A send's or start-process's body handler returned: decide the message;
    /// the activity is done. The message id is `instance:call`.
    pub(super) fn dispatch_send(&mut self, node: &Node, body: Option<String>) -> Option<Yield> {
        let (target, operation, start) = match &node.activity {
            Activity::Send { target, operation, .. } => (target.clone(), operation.clone(), false),
            Activity::StartProcess { process, operation, .. } => (Target::Process(process.clone()), operation.clone(), true),
            _ => unreachable!(),
        };
        let call_id = self.next_id();
        let message_id = format!("{}:{call_id}", self.snap.id);
        let body = body.unwrap_or_else(|| "null".into());
        self.effects.push(Effect::Send { call_id, target, operation, body, message_id, start });
        self.top_mut().phase = Phase::Done;
        self.persistent().then(|| self.persist(Reason::Dispatch))
    }

    /// An invoke's result arrived: its outbox entry goes, and its output
    /// handler (if any) reads the result. A fault result is raised here.
    pub(super) fn invoke_result(&mut self, call_id: u64, result: Result<String, Fault>, resources: ResourceAccesses) -> Option<Yield> {
        let top = self.snap.stack.last().expect("invoke result for a finished instance");
        assert_eq!(top.phase, Phase::AwaitInvoke { call_id }, "result for a call not awaited");
        let Activity::Invoke { output, .. } = &self.def.node(top.node).activity else {
            unreachable!("AwaitInvoke on a node that is not an invoke")
        };
        self.effects.push(Effect::InvokeDone { call_id });
        // A failed call's resource writes are dropped with it.
        if result.is_ok() && !resources.is_empty() {
            self.effects.push(Effect::ResourceWrites { call_id, accesses: resources });
        }
        match result {
            Err(fault) => self.raise(fault),
            Ok(out) => match output {
                Some(h) => Some(self.call(*h, Some(out), Expect::InvokeOutput)),
                None => {
                    self.top_mut().phase = Phase::Done;
                    None
                }
            },
        }
    }
}
