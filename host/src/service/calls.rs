//! Calls: activity calls and sends carried out after their persistence
//! point commits, with retries, timeouts, and held calls.
//!
//! Owns the set of outbox entries being carried out now (one mutex, held
//! briefly), so that no two drivers of an instance send the same entry twice.
//!
//! Architecture invariant: nothing here runs before the batch holding the
//! effect is durable. Invokes and sends stay in the outbox until their result
//! is consumed (invoke) or their message is accepted (send), so a crash in
//! between dispatches them again with the same idempotency key or message id.
//!
//! Vocabulary: an *activity call* is an invoke or send to a target (an
//! activity component or a process); a *handler call* runs a process's own
//! guest code (`driver.rs`). A *held call* is a non-idempotent activity call
//! found in flight after a crash: an operator *resubmits* or *abandons* it.

use super::{Error, ErrorKind, MessageIn, Service, Wake};
use tracing::Instrument;
use crate::outbound::OutboundCall;
use crate::runtime::{LogContext, Loaded};
use cairn_engine::definition::InvokePolicy;
use cairn_engine::{Effect, Fault, ResourceAccesses, ResourceWrite, Target};
use super::resources::CallResources;
use super::tasks::Durable;
use cairn_store::{ComponentKind, InTransit, InTransitState, StoreError, Write, WriteBatch};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

/// How often a one-way call that conflicts on its resources runs again.
const SEND_CONFLICT_RETRIES: usize = 5;

#[derive(Default)]
pub struct Calls {
    /// Outbox entries being carried out now, as (instance, call id).
    in_flight: Mutex<HashSet<(String, u64)>>,
    /// Calls whose persistence point lost a resource conflict: they run
    /// again whatever their idempotency (the first run's result never committed).
    reruns: Mutex<HashSet<(String, u64)>>,
    /// Calls retrying by their policy now: (instance, call id) -> the
    /// attempt under way and the fault of the one before (for the console).
    attempts: Mutex<HashMap<(String, u64), CallAttempt>>,
}

/// Where a call retrying by its policy stands.
#[derive(Clone, Debug)]
pub struct CallAttempt {
    pub attempt: u32,
    /// The fault that ended the previous attempt.
    pub last_fault: Option<Fault>,
}

impl Calls {
    /// Marks calls of `instance` to run again after a resource conflict.
    pub fn rerun(&self, instance: &str, call_ids: impl IntoIterator<Item = u64>) {
        self.reruns.lock().unwrap().extend(call_ids.into_iter().map(|c| (instance.to_string(), c)));
    }

    fn take_rerun(&self, instance: &str, call_id: u64) -> bool {
        self.reruns.lock().unwrap().remove(&(instance.to_string(), call_id))
    }

    /// The attempt a call of `instance` is at, once it has failed at least once.
    pub fn attempt(&self, instance: &str, call_id: u64) -> Option<CallAttempt> {
        self.attempts.lock().unwrap().get(&(instance.to_string(), call_id)).cloned()
    }

    /// Outbox entries being carried out now: the dispatch queue.
    pub fn in_flight(&self) -> usize {
        self.in_flight.lock().unwrap().len()
    }

    fn is_in_flight(&self, instance: &str, call_id: u64) -> bool {
        self.in_flight.lock().unwrap().contains(&(instance.to_string(), call_id))
    }
}

impl Service {
    /// Sends an outbox entry on its way, numbering attempts from
    /// `first_attempt`. Its outcome comes back as a wake (invoke) or removes
    /// the entry (send). An invoke retries by its policy.
    pub fn dispatch(&self, instance: &str, effect: Effect, first_attempt: u32) {
        if self.is_shutting_down() {
            return;
        }
        let call_id = match &effect {
            Effect::Invoke { call_id, .. } | Effect::Send { call_id, .. } => *call_id,
            _ => return,
        };
        if !self.calls.in_flight.lock().unwrap().insert((instance.to_string(), call_id)) {
            return;
        }
        let svc = self.clone();
        let instance = instance.to_string();
        tokio::spawn(async move {
            svc.carry_out(&instance, effect, first_attempt).await;
            svc.calls.in_flight.lock().unwrap().remove(&(instance, call_id));
        });
    }

    async fn carry_out(&self, instance: &str, effect: Effect, first_attempt: u32) {
        match effect {
            Effect::Invoke { call_id, target, operation, input, idempotency_key, policy } => {
                if let Some(name) = self.external_target(&target) {
                    // A task for workers; `None`: its lease expired and it is held.
                    let outcome = self
                        .external_call(instance, call_id, &name, &operation, &input, &idempotency_key, &policy, first_attempt, Durable::Invoke)
                        .await;
                    crate::failpoint::hit("mid-dispatch");
                    if let Some(result) = outcome {
                        self.drivers.deliver(instance, Wake::CallResult { call_id, result, resources: ResourceAccesses::default() });
                    }
                    return;
                }
                let (result, resources) =
                    self.call_with_policy(instance, call_id, &target, &operation, &input, &idempotency_key, &policy, first_attempt, Vec::new()).await;
                crate::failpoint::hit("mid-dispatch");
                self.drivers.deliver(instance, Wake::CallResult { call_id, result, resources });
            }
            Effect::Send { call_id, target, operation, body, message_id, start } => {
                match target {
                    Target::Process(process) => {
                        // The intake batch that accepts the message removes the outbox entry.
                        let sent_by = Some((instance.to_string(), call_id));
                        let m = MessageIn { id: Some(message_id.clone()), create_only: start, sent_by, ..MessageIn::new(operation.clone(), body) };
                        match self.accept_message(m, Some(&process)).await {
                            Ok(a) if !a.duplicate => return,
                            Ok(_) => {}
                            Err(e) => tracing::warn!(instance, "send of '{operation}' to process '{process}' was rejected: {}", e.message),
                        }
                    }
                    Target::Activity(name) if self.registry.external(&name).is_some() => {
                        // A task for workers; its completion removes the outbox entry.
                        let key = format!("{instance}/send/{call_id}");
                        let policy = InvokePolicy::default();
                        let outcome = self.external_call(instance, call_id, &name, &operation, &body, &key, &policy, 1, Durable::Send).await;
                        if let Some(Err(f)) = outcome {
                            tracing::warn!(instance, "one-way call of '{operation}' on external activity '{name}' faulted: {}: {}", f.name, f.message);
                        }
                        return;
                    }
                    Target::Activity(name) => {
                        // A one-way call's resource writes commit with the
                        // removal of its outbox entry; on a conflict it runs again.
                        let key = format!("{instance}/send/{call_id}");
                        let target = Target::Activity(name.clone());
                        for _ in 0..SEND_CONFLICT_RETRIES {
                            let (result, resources) = self.activity_call(instance, &target, &operation, &body, &key, None, Vec::new()).await;
                            let mut done = WriteBatch::new();
                            done.push(Write::OutboxRemove { instance: instance.to_string(), call_id });
                            match result {
                                Ok(_) => super::resources::accesses_into(&resources, &mut done),
                                Err(f) => tracing::warn!(instance, "one-way call of '{operation}' on activity '{name}' faulted: {}: {}", f.name, f.message),
                            }
                            match self.store.commit(done).await {
                                Err(StoreError::Conflict { .. }) => continue,
                                Err(e) => tracing::error!(instance, "clearing a delivered send: {e}"),
                                Ok(()) => {}
                            }
                            return;
                        }
                        tracing::warn!(instance, "one-way call of '{operation}' on activity '{name}' kept conflicting on its resources; it stays in the outbox");
                        return;
                    }
                }
                let mut done = WriteBatch::new();
                done.push(Write::OutboxRemove { instance: instance.to_string(), call_id });
                if let Err(e) = self.store.commit(done).await {
                    tracing::error!(instance, "clearing a delivered send: {e}");
                }
            }
            other => tracing::error!(instance, "{other:?} is not dispatchable"),
        }
    }

    /// Performs an activity call, retrying by its policy; attempt numbers
    /// (from `first_attempt`) end its idempotency key.
    #[allow(clippy::too_many_arguments)]
    pub async fn call_with_policy(
        &self,
        instance: &str,
        call_id: u64,
        target: &Target,
        operation: &str,
        input: &str,
        idempotency_key: &str,
        policy: &InvokePolicy,
        first_attempt: u32,
        earlier: Vec<ResourceWrite>,
    ) -> (Result<String, Fault>, ResourceAccesses) {
        if let Some(name) = self.external_target(target) {
            // Inside a transaction: nothing is durable, and nothing is held.
            let outcome = self.external_call(instance, call_id, &name, operation, input, idempotency_key, policy, first_attempt, Durable::Inline).await;
            let result = outcome.unwrap_or_else(|| Err(Fault::new("cairn.lease-expired", format!("the lease of task {instance}:{call_id} expired"))));
            return (result, ResourceAccesses::default());
        }
        let mut attempt = first_attempt;
        loop {
            let key = format!("{idempotency_key}/{attempt}");
            let (result, resources) = self.activity_call(instance, target, operation, input, &key, policy.timeout_ms, earlier.clone()).await;
            let retry_in = match (&result, &policy.retry) {
                (Err(f), Some(retry)) => retry.backoff(attempt - first_attempt + 2, &f.name),
                _ => None,
            };
            match retry_in {
                Some(ms) if !self.is_shutting_down() => {
                    let last_fault = result.err();
                    self.calls.attempts.lock().unwrap().insert((instance.to_string(), call_id), CallAttempt { attempt: attempt + 1, last_fault });
                    tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
                    attempt += 1;
                }
                _ => {
                    if attempt > first_attempt {
                        self.calls.attempts.lock().unwrap().remove(&(instance.to_string(), call_id));
                    }
                    return (result, resources);
                }
            }
        }
    }

    /// Performs one activity call: an activity component in a fresh
    /// sandbox, or a process started with a request-response message whose
    /// reply is the result. Also hands back what the call read and wrote in
    /// resources (nothing of it is committed yet).
    #[allow(clippy::too_many_arguments)]
    pub async fn activity_call(
        &self,
        instance: &str,
        target: &Target,
        operation: &str,
        input: &str,
        idempotency_key: &str,
        timeout_ms: Option<u64>,
        earlier: Vec<ResourceWrite>,
    ) -> (Result<String, Fault>, ResourceAccesses) {
        let timeout = timeout_ms.map(std::time::Duration::from_millis);
        if self.is_isolated() {
            let detail = serde_json::json!({ "target": target, "operation": operation, "input": input, "idempotency_key": idempotency_key });
            self.record_isolated_effect(instance, "call", detail);
        }
        match target {
            Target::Activity(name) => {
                let Some(deployed) = self.registry.latest(ComponentKind::Activity, name) else {
                    let fault = Fault::new("cairn.unknown-activity", format!("no activity component named '{name}' is deployed"));
                    return (Err(fault), ResourceAccesses::default());
                };
                let component = match self.registry.component(&deployed).await {
                    Ok(Loaded::Activity(component)) => component.clone(),
                    Ok(_) => unreachable!("an activity's newest version is an activity component"),
                    Err(e) => return (Err(Fault::new("cairn.internal", format!("activity '{name}': {e:#}"))), ResourceAccesses::default()),
                };
                let http = OutboundCall {
                    policy: self.http.clone(),
                    grant: deployed.http_grant.clone(),
                    idempotency_key: idempotency_key.to_string(),
                    instance: instance.to_string(),
                    at: idempotency_key.to_string(),
                };
                let resources = Arc::new(Mutex::new(CallResources::new(
                    self.store.clone(),
                    tokio::runtime::Handle::current(),
                    deployed.resource_grants.clone(),
                    earlier,
                )));
                let access: crate::resources::Access = resources.clone();
                let log = LogContext { sink: self.guest_log(), source: name.clone(), instance: instance.to_string(), at: idempotency_key.to_string() };
                let started = std::time::Instant::now();
                let span = tracing::info_span!("activity_call", instance, activity = %name, operation, at = idempotency_key);
                // On this task's thread, as the driver runs its handler
                // calls: guest code runs on a fiber that yields at each
                // epoch tick, and its HTTP requests are futures.
                let result = self.runtime.invoke(&component, operation, input, log, timeout, Some(http), Some(access)).instrument(span).await;
                self.metrics.activity_call(name, started.elapsed());
                if let Err(f) = &result {
                    tracing::debug!(instance, activity = %name, operation, fault = %f.name, "activity call faulted: {}", f.message);
                }
                let accesses = resources.lock().unwrap().take();
                let cap = self.config.limits.max_variables_bytes;
                let result = result.and_then(|out| match out.len() > cap {
                    true => Err(Fault::new(
                        "cairn.too-large",
                        format!("activity '{name}' returned {} bytes, more than the cap of {cap} bytes (serve --max-variables-bytes)", out.len()),
                    )),
                    false => Ok(out),
                });
                (result, accesses)
            }
            Target::Process(process) => (self.process_call(process, operation, input, idempotency_key, timeout).await, ResourceAccesses::default()),
        }
    }

    /// A call of a process: a request-response message, and its reply.
    async fn process_call(
        &self,
        process: &str,
        operation: &str,
        input: &str,
        idempotency_key: &str,
        timeout: Option<std::time::Duration>,
    ) -> Result<String, Fault> {
        // The idempotency key is the message id: a call dispatched
        // again after a crash finds the same callee instance.
        let m = MessageIn { id: Some(idempotency_key.to_string()), ..MessageIn::new(operation, input) };
        self.accept_message(m, Some(process)).await.map_err(|e| match e.kind {
            crate::service::ErrorKind::TooLarge => Fault::new("cairn.too-large", e.message),
            _ => Fault::new("cairn.call-rejected", e.message),
        })?;
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

    /// The name of an external activity, if `target` is one.
    fn external_target(&self, target: &Target) -> Option<String> {
        match target {
            Target::Activity(name) if self.registry.external(name).is_some() => Some(name.clone()),
            _ => None,
        }
    }

    /// Held calls, of one instance or of all (not the records of leased
    /// or completed tasks of external activities, which are no operator's business).
    pub async fn in_transit(&self, instance: Option<&str>) -> Result<Vec<InTransit>, Error> {
        let mut calls = self.store.in_transit(instance).await?;
        calls.retain(|c| !matches!(c.state, InTransitState::Leased | InTransitState::Completed));
        Ok(calls)
    }

    async fn put_in_transit(&self, record: InTransit) -> Result<(), cairn_store::StoreError> {
        let mut b = WriteBatch::new();
        b.push(Write::InTransit(Box::new(record)));
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
        sent: &mut HashSet<u64>,
        results: &mut HashMap<u64, (Result<String, Fault>, ResourceAccesses)>,
    ) -> anyhow::Result<()> {
        for effect in self.store.outbox(instance).await? {
            let call_id = match &effect {
                Effect::Invoke { call_id, .. } | Effect::Send { call_id, .. } => *call_id,
                _ => continue,
            };
            if self.calls.is_in_flight(instance, call_id) {
                continue;
            }
            if let Effect::Invoke { target, .. } = &effect {
                if self.external_target(target).is_some() {
                    self.resend_task(instance, call_id, effect, sent, results).await?;
                    continue;
                }
            }
            if sent.contains(&call_id) {
                continue;
            }
            let Effect::Invoke { policy, target, operation, idempotency_key, .. } = &effect else {
                sent.insert(call_id);
                self.dispatch(instance, effect, 1);
                continue;
            };
            if !policy.held_on_recovery() || self.calls.take_rerun(instance, call_id) {
                sent.insert(call_id);
                self.dispatch(instance, effect, 1);
                continue;
            }
            let record = self.store.in_transit_call(instance, call_id).await?;
            match record.as_ref().map(|r| r.state) {
                // A task completed while the activity was external (it has
                // been deployed as a component since): its outcome stands.
                Some(InTransitState::Completed) => {
                    sent.insert(call_id);
                    let result = record.and_then(|r| r.result).unwrap_or_else(|| Err(Fault::new("cairn.internal", "a completed task without its result")));
                    results.insert(call_id, (result, ResourceAccesses::default()));
                }
                // Found in flight for the first time, or again after a resubmit
                // was sent and another crash cut it (or leased to a worker
                // while external): held for an operator.
                None | Some(InTransitState::Resent) | Some(InTransitState::Leased) => {
                    let record = InTransit {
                        instance: instance.to_string(),
                        call_id,
                        state: InTransitState::Held,
                        since_ms: crate::now_ms(),
                        target: target.clone(),
                        operation: operation.clone(),
                        idempotency_key: idempotency_key.clone(),
                        result: None,
                    };
                    self.put_in_transit(record).await?;
                    tracing::warn!(instance, "non-idempotent call {call_id} ('{operation}' on {target}) was in flight: held for an operator (cairn in-transit ls)");
                }
                Some(InTransitState::Held) => {}
                Some(state @ (InTransitState::Resubmitted | InTransitState::Abandoned)) => {
                    let what = format!("call {call_id} ('{operation}' on {target})");
                    self.carry_out_resolution(instance, state, record.expect("matched Some"), effect, &what, sent, results).await?;
                }
            }
        }
        Ok(())
    }

    /// Carries out an operator's resolution of a held call or task (`what`
    /// names it): resubmitted, it is recorded as sent again before it leaves
    /// (a crash from there on holds it again) and dispatched with the next
    /// attempt number; abandoned, the instance gets `cairn.abandoned`.
    // The driver's state it updates, one argument each.
    #[allow(clippy::too_many_arguments)]
    async fn carry_out_resolution(
        &self,
        instance: &str,
        state: InTransitState,
        mut record: InTransit,
        effect: Effect,
        what: &str,
        sent: &mut HashSet<u64>,
        results: &mut HashMap<u64, (Result<String, Fault>, ResourceAccesses)>,
    ) -> anyhow::Result<()> {
        let call_id = record.call_id;
        sent.insert(call_id);
        if state == InTransitState::Abandoned {
            let fault = Fault::new("cairn.abandoned", format!("an operator abandoned {what}"));
            results.insert(call_id, (Err(fault), ResourceAccesses::default()));
            return Ok(());
        }
        record.state = InTransitState::Resent;
        record.since_ms = crate::now_ms();
        self.put_in_transit(record).await?;
        let Effect::Invoke { policy, .. } = &effect else { return Ok(()) };
        let next = policy.retry.as_ref().map_or(1, |r| r.max_attempts) + 1;
        self.dispatch(instance, effect, next);
        Ok(())
    }

    /// `resend_outbox` for an invoke of an external activity: a completion
    /// recorded before a crash is handed to the instance; a task that was
    /// leased to a worker while non-idempotent is held; a task held while
    /// this driver runs comes back once an operator resolves it; any other
    /// is offered again (attempt 1, the same idempotency key).
    async fn resend_task(
        &self,
        instance: &str,
        call_id: u64,
        effect: Effect,
        sent: &mut HashSet<u64>,
        results: &mut HashMap<u64, (Result<String, Fault>, ResourceAccesses)>,
    ) -> anyhow::Result<()> {
        let Effect::Invoke { policy, target, operation, .. } = &effect else { return Ok(()) };
        let record = self.store.in_transit_call(instance, call_id).await?;
        let state = record.as_ref().map(|r| r.state);
        if sent.contains(&call_id) && !matches!(state, Some(InTransitState::Resubmitted | InTransitState::Abandoned)) {
            return Ok(());
        }
        match state {
            Some(InTransitState::Completed) => {
                sent.insert(call_id);
                let result = record.and_then(|r| r.result).unwrap_or_else(|| Err(Fault::new("cairn.internal", "a completed task without its result")));
                results.insert(call_id, (result, ResourceAccesses::default()));
            }
            Some(InTransitState::Leased | InTransitState::Resent) if policy.held_on_recovery() => {
                let mut held = record.expect("matched Some");
                held.state = InTransitState::Held;
                held.since_ms = crate::now_ms();
                self.put_in_transit(held).await?;
                tracing::warn!(
                    instance,
                    "non-idempotent task {instance}:{call_id} ('{operation}' on {target}) was leased to a worker: held for an operator (cairn in-transit ls)"
                );
            }
            Some(InTransitState::Held) => {}
            Some(state @ (InTransitState::Resubmitted | InTransitState::Abandoned)) => {
                let what = format!("task {instance}:{call_id} ('{operation}' on {target})");
                self.carry_out_resolution(instance, state, record.expect("matched Some"), effect, &what, sent, results).await?;
            }
            _ => {
                sent.insert(call_id);
                self.dispatch(instance, effect, 1);
            }
        }
        Ok(())
    }

    /// An operator resolves a held call: resubmit it, or abandon it.
    pub async fn resolve_in_transit(&self, id: &str, state: InTransitState) -> Result<InTransit, Error> {
        let bad = || Error::new(ErrorKind::BadInput, format!("'{id}' is not an in-transit call id (INSTANCE:CALL, as `cairn in-transit ls` shows)"));
        let (instance, call) = id.rsplit_once(':').ok_or_else(bad)?;
        let call_id: u64 = call.parse().map_err(|_| bad())?;
        let mut record = self
            .store
            .in_transit_call(instance, call_id)
            .await?
            .ok_or_else(|| Error::new(ErrorKind::NotFound, format!("no in-transit call '{id}'")))?;
        if record.state != InTransitState::Held {
            return Err(Error::new(ErrorKind::Conflict, format!("call '{id}' is already {:?}", record.state).to_lowercase()));
        }
        record.state = state;
        self.put_in_transit(record.clone()).await?;
        self.wake(instance);
        Ok(record)
    }
}
