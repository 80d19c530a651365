//! Dispatch: turns effects into store operations for their persistence
//! point, and carries them out once that point has committed.
//!
//! Architecture invariant: nothing here runs before the batch holding the
//! effect is durable. Invokes and sends stay in the outbox until their result
//! is consumed (invoke) or their message is accepted (send), so a crash in
//! between dispatches them again with the same idempotency key or message id.

use super::{ComponentKind, MessageIn, Reply, Service, Wake};
use cairn_engine::{Effect, Fault, Snapshot, Target};
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
            Effect::InvokeDone { call_id } => {
                b.delete(Cf::Outbox, keys::instance_scoped(id, *call_id));
                b.delete(Cf::InTransit, keys::instance_scoped(id, *call_id));
            }
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
                    self.dispatch(&snap.id, e, 1)
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

    /// Sends an outbox entry on its way, numbering attempts from
    /// `first_attempt`. Its outcome comes back as a wake (invoke) or removes
    /// the entry (send). An invoke retries by its policy.
    pub(super) fn dispatch(&self, instance: &str, effect: Effect, first_attempt: u32) {
        if self.is_shutting_down() {
            return;
        }
        let call_id = match &effect {
            Effect::Invoke { call_id, .. } | Effect::Send { call_id, .. } => *call_id,
            _ => return,
        };
        if !self.in_flight.lock().unwrap().insert((instance.to_string(), call_id)) {
            return;
        }
        let svc = self.clone();
        let instance = instance.to_string();
        tokio::spawn(async move {
            svc.carry_out(&instance, effect, first_attempt).await;
            svc.in_flight.lock().unwrap().remove(&(instance, call_id));
        });
    }

    async fn carry_out(&self, instance: &str, effect: Effect, first_attempt: u32) {
        let svc = self;
        let instance = instance.to_string();
        {
            match effect {
                Effect::Invoke { call_id, target, operation, input, idempotency_key, policy } => {
                    let result =
                        svc.call_with_policy(&instance, &target, &operation, &input, &idempotency_key, &policy, first_attempt).await;
                    crate::failpoint::hit("mid-dispatch");
                    svc.deliver(&instance, Wake::InvokeResult { call_id, result });
                }
                Effect::Send { call_id, target, operation, body, message_id, start } => {
                    let mut done = Batch::default();
                    done.delete(Cf::Outbox, keys::instance_scoped(&instance, call_id));
                    match target {
                        Target::Process(process) => {
                            let m = MessageIn { id: Some(message_id.clone()), operation: operation.clone(), body, create_only: start };
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
                            let target = Target::Activity(name.clone());
                            if let Err(f) = svc.perform_call(&instance, &target, &operation, &body, &key, None).await {
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
        }
    }

    /// Performs a call, retrying by its policy; attempt numbers (from
    /// `first_attempt`) end its idempotency key.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn call_with_policy(
        &self,
        instance: &str,
        target: &Target,
        operation: &str,
        input: &str,
        idempotency_key: &str,
        policy: &cairn_engine::definition::InvokePolicy,
        first_attempt: u32,
    ) -> Result<String, Fault> {
        let mut attempt = first_attempt;
        loop {
            let key = format!("{idempotency_key}/{attempt}");
            let result = self.perform_call(instance, target, operation, input, &key, policy.timeout_ms).await;
            let retry_in = match (&result, &policy.retry) {
                (Err(f), Some(retry)) => retry.backoff(attempt - first_attempt + 2, &f.name),
                _ => None,
            };
            match retry_in {
                Some(ms) if !self.is_shutting_down() => {
                    tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
                    attempt += 1;
                }
                _ => return result,
            }
        }
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
        timeout_ms: Option<u64>,
    ) -> Result<String, Fault> {
        let timeout = timeout_ms.map(std::time::Duration::from_millis);
        let detail = serde_json::json!({ "target": target, "operation": operation, "input": input, "idempotency_key": idempotency_key });
        self.record_isolated_effect(instance, "call", detail);
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
                tokio::task::spawn_blocking(move || svc.runtime.invoke(&component, &op, &inp, log, timeout))
                    .await
                    .unwrap_or_else(|e| Err(Fault::new("cairn.internal", format!("activity task failed: {e}"))))
            }
            Target::Process(process) => {
                // The idempotency key is the message id: a call dispatched
                // again after a crash finds the same callee instance.
                let m = MessageIn {
                    id: Some(idempotency_key.to_string()),
                    operation: operation.to_string(),
                    body: input.to_string(),
                    create_only: false,
                };
                self.accept_message(m, Some(process), Batch::default())
                    .await
                    .map_err(|e| Fault::new("cairn.call-rejected", e.message))?;
                let limit = timeout.unwrap_or(std::time::Duration::from_secs(u64::MAX / 4));
                let reply = self.await_reply(idempotency_key, limit).await.map_err(|e| match timeout {
                    Some(t) => Fault::new("cairn.timeout", format!("process '{process}' did not reply within {t:?}")),
                    None => Fault::new("cairn.call-failed", e.message),
                })?;
                match reply.fault {
                    Some(f) => Err(f),
                    None => Ok(reply.body.to_string()),
                }
            }
        }
    }
}

/// What an operator decided about a non-idempotent call found in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InTransitState {
    /// Waiting for an operator: not sent again.
    Held,
    /// Sent again by an operator.
    Resubmitted,
    /// Given up by an operator: the instance gets a `cairn.abandoned` fault.
    Abandoned,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct InTransit {
    pub instance: String,
    pub call_id: u64,
    pub state: InTransitState,
    pub since_ms: u64,
    pub target: Target,
    pub operation: String,
    pub idempotency_key: String,
}

impl Service {
    pub fn in_transit(&self, instance: Option<&str>) -> anyhow::Result<Vec<InTransit>> {
        let prefix = instance.map(keys::instance_prefix).unwrap_or_default();
        let rows = self.store.scan_prefix(Cf::InTransit, &prefix)?;
        Ok(rows.iter().filter_map(|(_, v)| serde_json::from_slice(v).ok()).collect())
    }

    fn in_transit_of(&self, instance: &str, call_id: u64) -> anyhow::Result<Option<InTransit>> {
        let row = self.store.get(Cf::InTransit, &keys::instance_scoped(instance, call_id))?;
        Ok(row.and_then(|v| serde_json::from_slice(&v).ok()))
    }

    async fn put_in_transit(&self, record: &InTransit) -> Result<(), crate::store::CommitError> {
        let mut b = Batch::default();
        b.put(Cf::InTransit, keys::instance_scoped(&record.instance, record.call_id), serde_json::to_vec(record).unwrap());
        self.store.commit(b).await
    }

    /// Sends again what the outbox holds for `instance` that this driver has
    /// not sent. Sends and idempotent calls go at once, with the same message
    /// id and idempotency key; a non-idempotent call found in flight is held
    /// for an operator, unless it says `retry_on_recovery` or an operator has
    /// resubmitted it; an abandoned one is answered with a fault.
    pub(super) async fn resend_outbox(
        &self,
        instance: &str,
        sent: &mut std::collections::HashSet<u64>,
        results: &mut std::collections::HashMap<u64, Result<String, Fault>>,
    ) -> anyhow::Result<()> {
        for effect in self.outbox(instance)? {
            let call_id = match &effect {
                Effect::Invoke { call_id, .. } | Effect::Send { call_id, .. } => *call_id,
                _ => continue,
            };
            if sent.contains(&call_id) || self.in_flight.lock().unwrap().contains(&(instance.to_string(), call_id)) {
                continue;
            }
            let Effect::Invoke { policy, target, operation, idempotency_key, .. } = &effect else {
                sent.insert(call_id);
                self.dispatch(instance, effect, 1);
                continue;
            };
            if !policy.held_on_recovery() {
                sent.insert(call_id);
                self.dispatch(instance, effect, 1);
                continue;
            }
            match self.in_transit_of(instance, call_id)?.map(|r| r.state) {
                None => {
                    let record = InTransit {
                        instance: instance.to_string(),
                        call_id,
                        state: InTransitState::Held,
                        since_ms: crate::now_ms(),
                        target: target.clone(),
                        operation: operation.clone(),
                        idempotency_key: idempotency_key.clone(),
                    };
                    self.put_in_transit(&record).await.map_err(|e| anyhow::anyhow!("{e}"))?;
                    eprintln!(
                        "cairn: instance {instance}: non-idempotent call {call_id} ('{operation}' on {target}) was in flight: held for an operator (cairn in-transit ls)"
                    );
                }
                Some(InTransitState::Held) => {}
                Some(InTransitState::Resubmitted) => {
                    sent.insert(call_id);
                    let next = policy.retry.as_ref().map_or(1, |r| r.max_attempts) + 1;
                    self.dispatch(instance, effect, next);
                }
                Some(InTransitState::Abandoned) => {
                    sent.insert(call_id);
                    let fault = Fault::new("cairn.abandoned", format!("an operator abandoned call {call_id} ('{operation}' on {target})"));
                    results.insert(call_id, Err(fault));
                }
            }
        }
        Ok(())
    }

    /// An operator resolves a held call: resubmit it, or abandon it.
    pub async fn resolve_in_transit(&self, id: &str, state: InTransitState) -> Result<InTransit, super::Error> {
        use super::{Error, ErrorKind};
        let bad = || Error::new(ErrorKind::BadInput, format!("'{id}' is not an in-transit call id (INSTANCE:CALL, as `cairn in-transit ls` shows)"));
        let (instance, call) = id.rsplit_once(':').ok_or_else(bad)?;
        let call_id: u64 = call.parse().map_err(|_| bad())?;
        let mut record = self
            .in_transit_of(instance, call_id)?
            .ok_or_else(|| Error::new(ErrorKind::NotFound, format!("no in-transit call '{id}'")))?;
        if record.state != InTransitState::Held {
            return Err(Error::new(ErrorKind::Conflict, format!("call '{id}' is already {:?}", record.state).to_lowercase()));
        }
        record.state = state;
        self.put_in_transit(&record).await?;
        self.wake(instance);
        Ok(record)
    }
}
