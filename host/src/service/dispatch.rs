//! Dispatch: turns effects into store operations for their persistence
//! point, and carries them out once that point has committed.
//!
//! Architecture invariant: nothing here runs before the batch holding the
//! effect is durable. Invokes and sends stay in the outbox until their result
//! is consumed (invoke) or their message is accepted (send), so a crash in
//! between dispatches them again with the same idempotency key or message id.

use super::{ComponentKind, MessageIn, Reply, Service, Wake};
use crate::engine::{Effect, Fault, Snapshot, Target};
use crate::runtime::{LogContext, Loaded};
use crate::store::{keys, Batch, Cf};

impl Service {
    /// The store operations that record `effect` in a persistence point.
    pub(super) fn effect_ops(&self, snap: &Snapshot, effect: &Effect, b: &mut Batch) {
        let id = &snap.id;
        match effect {
            Effect::ConsumeMessage { seq } => b.delete(Cf::Inbox, keys::instance_scoped(id, *seq)),
            Effect::Correlate { set, values } => {
                b.put(Cf::Correlations, keys::correlation(&snap.process, set, values), id.as_bytes())
            }
            Effect::Uncorrelate { set, values } => b.delete(Cf::Correlations, keys::correlation(&snap.process, set, values)),
            Effect::SetTimer { timer_id, due_ms } => b.put(Cf::Timers, keys::timer(*due_ms, id, *timer_id), Vec::new()),
            Effect::ClearTimer { timer_id, due_ms } => b.delete(Cf::Timers, keys::timer(*due_ms, id, *timer_id)),
            Effect::Invoke { call_id, .. } | Effect::Send { call_id, .. } => {
                b.put(Cf::Outbox, keys::instance_scoped(id, *call_id), serde_json::to_vec(effect).unwrap())
            }
            Effect::InvokeDone { call_id } => b.delete(Cf::Outbox, keys::instance_scoped(id, *call_id)),
            Effect::Reply { message_id, body, fault } => {
                let reply = Reply { body: serde_json::from_str(body).unwrap_or(serde_json::Value::Null), fault: fault.clone() };
                b.put(Cf::Replies, message_id.as_bytes(), serde_json::to_vec(&reply).unwrap())
            }
        }
    }

    /// Carries out a committed batch's effects.
    pub(super) fn after_commit(&self, snap: &Snapshot, effects: Vec<Effect>) {
        let mut timers_changed = false;
        for effect in effects {
            match effect {
                Effect::SetTimer { timer_id, due_ms } => {
                    self.timers.lock().unwrap().insert((due_ms, snap.id.clone(), timer_id));
                    timers_changed = true;
                }
                Effect::ClearTimer { timer_id, due_ms } => {
                    self.timers.lock().unwrap().remove(&(due_ms, snap.id.clone(), timer_id));
                }
                Effect::Reply { message_id, body, fault } => {
                    let reply = Reply { body: serde_json::from_str(&body).unwrap_or(serde_json::Value::Null), fault };
                    for waiter in self.reply_waiters.lock().unwrap().remove(&message_id).unwrap_or_default() {
                        let _ = waiter.send(reply.clone());
                    }
                }
                e @ (Effect::Invoke { .. } | Effect::Send { .. }) => {
                    crate::failpoint::hit("after-commit-dispatch");
                    self.dispatch(&snap.id, e)
                }
                Effect::ConsumeMessage { .. }
                | Effect::Correlate { .. }
                | Effect::Uncorrelate { .. }
                | Effect::InvokeDone { .. } => {}
            }
        }
        if timers_changed {
            self.timers_changed.notify_waiters();
        }
    }

    /// Sends an outbox entry on its way. Its outcome comes back as a wake
    /// (invoke) or removes the entry (send).
    pub(super) fn dispatch(&self, instance: &str, effect: Effect) {
        if self.is_shutting_down() {
            return;
        }
        let svc = self.clone();
        let instance = instance.to_string();
        tokio::spawn(async move {
            match effect {
                Effect::Invoke { call_id, target, operation, input, idempotency_key } => {
                    let result = svc.perform_call(&instance, &target, &operation, &input, &idempotency_key).await;
                    crate::failpoint::hit("mid-dispatch");
                    svc.deliver(&instance, Wake::InvokeResult { call_id, result });
                }
                Effect::Send { call_id, target, operation, body, message_id } => {
                    let mut done = Batch::default();
                    done.delete(Cf::Outbox, keys::instance_scoped(&instance, call_id));
                    match target {
                        Target::Process(process) => {
                            let m = MessageIn { id: Some(message_id.clone()), operation: operation.clone(), body };
                            match svc.accept_message(m, Some(&process), done.clone()).await {
                                Ok(a) if !a.duplicate => return,
                                Ok(_) => {}
                                Err(e) => eprintln!(
                                    "cairn: instance {instance}: send of '{operation}' to process '{process}' was rejected: {}",
                                    e.message
                                ),
                            }
                        }
                        Target::Activity(name) => {
                            let key = format!("{instance}/send/{call_id}");
                            if let Err(f) = svc.perform_call(&instance, &Target::Activity(name.clone()), &operation, &body, &key).await {
                                eprintln!("cairn: instance {instance}: one-way call of '{operation}' on activity '{name}' faulted: {}: {}", f.name, f.message);
                            }
                        }
                    }
                    if let Err(e) = svc.store.commit(done).await {
                        eprintln!("cairn: instance {instance}: clearing a delivered send: {e}");
                    }
                }
                other => eprintln!("cairn: instance {instance}: {other:?} is not dispatchable"),
            }
        });
    }

    /// Performs one call: an activity in a fresh sandbox, or a process
    /// started with a request-response message whose reply is the result.
    pub(super) async fn perform_call(
        &self,
        instance: &str,
        target: &Target,
        operation: &str,
        input: &str,
        idempotency_key: &str,
    ) -> Result<String, Fault> {
        match target {
            Target::Activity(name) => {
                let deployed = self.latest(ComponentKind::Activity, name).ok_or_else(|| {
                    Fault::new("cairn.unknown-activity", format!("no activity component named '{name}' is deployed"))
                })?;
                let Loaded::Activity(component) = &deployed.component else { unreachable!() };
                let component = component.clone();
                let log = LogContext {
                    sink: self.guest_log(),
                    source: name.clone(),
                    instance: instance.to_string(),
                    at: idempotency_key.to_string(),
                };
                let svc = self.clone();
                let (op, inp) = (operation.to_string(), input.to_string());
                tokio::task::spawn_blocking(move || svc.runtime.invoke(&component, &op, &inp, log))
                    .await
                    .unwrap_or_else(|e| Err(Fault::new("cairn.internal", format!("activity task failed: {e}"))))
            }
            Target::Process(process) => {
                // The idempotency key is the message id: a call dispatched
                // again after a crash finds the same callee instance.
                let m = MessageIn { id: Some(idempotency_key.to_string()), operation: operation.to_string(), body: input.to_string() };
                self.accept_message(m, Some(process), Batch::default())
                    .await
                    .map_err(|e| Fault::new("cairn.call-rejected", e.message))?;
                let reply = self
                    .await_reply(idempotency_key, std::time::Duration::from_secs(u64::MAX / 4))
                    .await
                    .map_err(|e| Fault::new("cairn.call-failed", e.message))?;
                match reply.fault {
                    Some(f) => Err(f),
                    None => Ok(reply.body.to_string()),
                }
            }
        }
    }
}
