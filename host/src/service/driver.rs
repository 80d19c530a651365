//! The instance driver: one task per instance in memory, carrying out what
//! the engine yields.
//!
//! Owns one instance's `Machine` while it is in memory, with its inbox at
//! hand, the activity-call results it has received, and the operator verbs
//! waiting to apply. Rules:
//! - At most one driver per instance (`Drivers`); the store's fence
//!   rejects a write from any other, and a rejected driver stops.
//! - Handler calls run in a fresh sandbox each (`Runtime::call`).
//! - Effects leave only after the batch that holds them commits
//!   (`after_commit`). Persistence points are pipelined: the driver goes on
//!   computing while its last points are being written (`Pipeline`), and
//!   waits for them before anything leaves the host that a point decided
//!   (dispatched calls and sends, replies, operators told), before a call
//!   with capabilities runs inline, and before it idles or ends. A new
//!   instance's first point is pipelined too: its message is accepted
//!   (`Ack`) once that point is durable, while the instance computes on.
//! - A driver waiting for a message or a timer idles for `--idle-ms`, then
//!   leaves memory: the instance is dehydrated; a message or a timer
//!   rehydrates it in a new driver.
//! - At shutdown a driver commits (reason `shutdown`) only when it has no
//!   input in hand: never between a handler call and its result.

use super::{InstanceEvent, Service, Wake};
use crate::now_ms;
use crate::runtime::{LogContext, Loaded, Session};
use cairn_engine::{
    Control, Delivery, Effect, Fault, HandlerOutput, Input, Machine, PersistencePoint, ProcessKind, Reason, ResourceAccesses, Snapshot, Status, Wait, Yield,
};
use cairn_store::{CorrelationKey, HistoryEntry, Moved, Reply, TimerKey, Write, WriteBatch};
use anyhow::{anyhow, Result};
use tracing::Instrument;
use std::collections::{HashMap, HashSet, VecDeque};
use tokio::sync::mpsc::UnboundedReceiver;

/// An instance not yet stored: its first snapshot, the message that
/// creates it, and the intake's writes (the message record, the correlation,
/// the instance's `created` entry), which ride in its first persistence
/// point, so that creating the instance and consuming the message that
/// created it take one write.
pub struct Creation {
    snapshot: Snapshot,
    delivery: cairn_engine::Delivery,
    writes: WriteBatch,
    ack: Ack,
    /// Whether this drive submitted the first point (which carries `writes`).
    submitted: bool,
}

impl Creation {
    pub fn new(snapshot: Snapshot, delivery: Delivery, writes: WriteBatch, ack: Acceptance) -> Creation {
        Creation { snapshot, delivery, writes, ack: Ack(std::sync::Arc::new(std::sync::Mutex::new(Some(ack)))), submitted: false }
    }

    /// Whether the first point is still to be submitted in this drive.
    fn unsubmitted(creation: &Option<Creation>) -> bool {
        creation.as_ref().is_some_and(|c| !c.submitted)
    }
}

/// The answer to a new instance's message, given once: accepted when its
/// first point is durable (by whoever releases that point), or refused.
#[derive(Clone)]
struct Ack(std::sync::Arc<std::sync::Mutex<Option<Acceptance>>>);

/// Where the intake waits for a new instance's message to be accepted.
pub type Acceptance = tokio::sync::oneshot::Sender<Result<(), crate::service::Error>>;

impl Ack {
    fn answer(&self, result: Result<(), crate::service::Error>) {
        if let Some(tx) = self.0.lock().unwrap().take() {
            let _ = tx.send(result);
        }
    }

    fn answered(&self) -> bool {
        self.0.lock().unwrap().is_none()
    }
}

/// Most messages and call results one history entry records (a microflow
/// or an atomic scope may take many between two points).
const MAX_MOVED: usize = 64;

/// Drives instance `id` while it has something to do. `creation`: a new
/// instance, not yet stored, until its first persistence point commits.
pub(super) async fn run(svc: Service, id: String, generation: u64, mut rx: UnboundedReceiver<Wake>, mut creation: Option<Creation>) {
    // Persistence points rejected for a resource conflict since the last one
    // that committed: the instance goes on from its last persistence point,
    // and the calls run again.
    let mut conflicts: u32 = 0;
    // Persistence points (or loads) that failed for a storage reason in a row.
    let mut failures: u32 = 0;
    use tracing::Instrument;
    let span = tracing::info_span!("instance", instance = %id);
    loop {
        let driven = drive(&svc, &id, &mut rx, &mut conflicts, &mut creation).instrument(span.clone()).await;
        // Once its first point is durable, a new instance is like any
        // other: it goes on from the store.
        if creation.as_ref().is_some_and(|c| c.ack.answered()) {
            creation = None;
        }
        match driven {
            Err(e) if e.is::<ResourceConflict>() => {
                conflicts += 1;
                // A little later each time, so that contenders spread out.
                tokio::time::sleep(std::time::Duration::from_millis(u64::from(conflicts.min(50)) * (1 + now_ms() % 3))).await;
            }
            Err(e) if is_storage_failure(&e) && !svc.must_stop(&id) => {
                // Nothing of the failed point was written and nothing of it
                // left the host: once the store takes writes again, the
                // instance goes on from its last persistence point. A
                // creation is refused instead (the client may send again).
                if let Some(c) = creation.take() {
                    c.ack.answer(Err(e.into()));
                    break;
                }
                if failures == 0 {
                    tracing::warn!(instance = %id, "waits for the store to take writes again: {e:#}");
                }
                failures += 1;
                tokio::time::sleep(std::time::Duration::from_millis(100 << failures.min(3))).await;
                if svc.must_stop(&id) {
                    break;
                }
            }
            Err(e) if creation.is_some() && is_correlated(&e) => {
                // Cluster mode: another host created an instance with the
                // same correlation values at the same moment, and won.
                tracing::info!(instance = %id, "not created: {e}");
                if let Some(c) = creation.take() {
                    c.ack.answer(Err(e.into()));
                }
                break;
            }
            Err(e) if is_fenced(&e) => {
                // Cluster mode: the partition moved to another host, which goes on.
                tracing::info!(instance = %id, "stops here: {e}");
                break;
            }
            Err(e) => {
                tracing::error!(instance = %id, "instance stopped: {e:#}");
                break;
            }
            Ok(()) => break,
        }
    }
    svc.drivers.ended(&id, generation);
}

/// Whether `e` is the store failing to read or write (I/O, a full disk),
/// as opposed to damage or a bug: worth retrying.
fn is_storage_failure(e: &anyhow::Error) -> bool {
    matches!(e.downcast_ref::<cairn_store::StoreError>(), Some(cairn_store::StoreError::Storage(_) | cairn_store::StoreError::NoSpace(_)))
}

/// Whether `e` is a write refused because this host no longer holds the instance's partition.
fn is_fenced(e: &anyhow::Error) -> bool {
    matches!(e.downcast_ref::<cairn_store::StoreError>(), Some(cairn_store::StoreError::Fenced { .. }))
}

/// Whether `e` is a new instance refused for correlation values another instance holds.
fn is_correlated(e: &anyhow::Error) -> bool {
    matches!(e.downcast_ref::<cairn_store::StoreError>(), Some(cairn_store::StoreError::Correlated { .. }))
}

/// A persistence point lost a resource conflict: nothing of it was written.
#[derive(Debug)]
struct ResourceConflict(cairn_store::StoreError);

impl std::fmt::Display for ResourceConflict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for ResourceConflict {}

/// Commits a persistence point's batch and waits for it.
async fn commit_batch(svc: &Service, id: &str, b: WriteBatch, effects: &[Effect]) -> Result<()> {
    svc.store.commit(b).await.map_err(|e| refused(svc, id, e, effects))
}

/// The error of a refused persistence point; a resource conflict marks the
/// point's calls to run again and becomes `ResourceConflict`.
fn refused(svc: &Service, id: &str, e: cairn_store::StoreError, effects: &[Effect]) -> anyhow::Error {
    match e {
        e @ cairn_store::StoreError::Conflict { .. } => {
            let calls = effects.iter().filter_map(|e| match e {
                Effect::ResourceWrites { call_id, .. } => Some(*call_id),
                _ => None,
            });
            svc.calls.rerun(id, calls);
            ResourceConflict(e).into()
        }
        e => e.into(),
    }
}

/// Drives the instance until it idles out, ends or fails; whatever it
/// submitted is settled before it returns (released if it committed).
async fn drive(svc: &Service, id: &str, rx: &mut UnboundedReceiver<Wake>, conflicts: &mut u32, creation: &mut Option<Creation>) -> Result<()> {
    if let Some(c) = creation {
        c.submitted = false;
    }
    let mut pipeline = Pipeline::new(id);
    let driven = drive_machine(svc, id, rx, conflicts, creation, &mut pipeline).await;
    let settled = pipeline.drain(svc, conflicts).await;
    driven.and(settled)
}

async fn drive_machine(
    svc: &Service,
    id: &str,
    rx: &mut UnboundedReceiver<Wake>,
    conflicts: &mut u32,
    creation: &mut Option<Creation>,
    pipeline: &mut Pipeline,
) -> Result<()> {
    let snap = match creation {
        Some(c) => c.snapshot.clone(),
        None => match svc.load_snapshot(id).await? {
            Some(snap) => snap,
            None => return Ok(()),
        },
    };
    // A terminal instance is loaded only to be retried.
    let mut early = Vec::new();
    if snap.status.is_terminal() {
        early = super::lifecycle::retry_wakes(rx, snap.status);
        if early.is_empty() {
            return Ok(());
        }
    }
    let deployed = match svc.registry.deployed(&snap.version) {
        // Cluster mode: deployed through another host a moment ago.
        None if svc.cluster.is_some() => {
            svc.registry.refresh().await?;
            svc.registry.deployed(&snap.version)
        }
        found => found,
    };
    let deployed = deployed
        .ok_or_else(|| anyhow!("definition version {} of process '{}' is not deployed", snap.version, snap.process))?;
    let def = deployed.record.definition.as_ref().ok_or_else(|| anyhow!("version {} is not a process", snap.version))?;
    let Loaded::Process(component) = svc.registry.component(&deployed).await? else {
        return Err(anyhow!("version {} is not a process component", snap.version));
    };
    // Outbox entries this driver has sent on their way.
    let mut sent: HashSet<u64> = HashSet::new();
    // A snapshot that decodes but does not fit its definition is damage:
    // reported (health degraded) and left where it is, never run.
    let mut m = Machine::resume(def, snap).map_err(|reason| {
        let reason = format!("the snapshot does not fit version {} of its definition: {reason}", deployed.record.version);
        svc.store.health().damage.report(cairn_store::DamageReport { table: "instances".into(), key: id.to_string(), reason: reason.clone() });
        anyhow!("{reason}")
    })?;
    m.set_breakpoints(svc.operator.breakpoints_of(&def.name));
    let pure = svc.registry.pure_activities();
    m.set_pure_activities(pure.clone());
    let mut consumed: HashSet<u64> = HashSet::new();
    let mut inbox = match creation {
        Some(c) => vec![c.delivery.clone()],
        None => svc.store.inbox(id).await?,
    };
    let mut results: HashMap<u64, (Result<String, Fault>, ResourceAccesses)> = HashMap::new();

    // Calls and sends left in the outbox by an earlier run go out again,
    // with the same idempotency keys and message ids, or are held.
    if creation.is_none() {
        svc.resend_outbox(id, &mut sent, &mut results).await?;
    }

    // The Wasm instance of the atomic scope running, keyed by (frame, attempt).
    let mut session: Option<((usize, u32), Session)> = None;
    // Operator verbs waiting to apply, and the callers to tell once they are committed.
    let mut controls: VecDeque<(Control, Responder)> = VecDeque::new();
    let mut told: Vec<Responder> = Vec::new();
    for w in early {
        absorb(svc, id, w, &mut inbox, &mut results, &mut sent, &mut controls, None).await?;
    }
    let mut input = Input::Continue;
    let mut since = SinceLastPoint::default();
    loop {
        if input == Input::Continue {
            // Between transitions: take in what arrived, and apply an
            // operator verb if one waits (never inside an atomic scope).
            while let Ok(w) = rx.try_recv() {
                if matches!(w, Wake::Resume) {
                    // Resume reads the inbox and outbox as stored.
                    pipeline.drain(svc, conflicts).await?;
                }
                absorb(svc, id, w, &mut inbox, &mut results, &mut sent, &mut controls, creation.as_ref().map(|c| &c.delivery)).await?;
            }
            pipeline.release_ready(svc, conflicts)?;
            if m.in_atomic().is_none() {
                if let Some((c, responder)) = controls.pop_front() {
                    told.push(responder);
                    input = Input::Control(c);
                }
            }
        }
        // Shut down only between transitions: a handler result, a message or
        // an activity result in hand is applied first, so that no persistence
        // point falls between a call and its result.
        // Inside an atomic scope nothing is persisted: a shutdown there is a
        // crash for the scope, which runs again from its start.
        if svc.must_stop(id) && input == Input::Continue {
            if m.in_atomic().is_some() {
                return Ok(());
            }
            commit(svc, &mut m, Reason::Shutdown, &mut sent, conflicts, creation, pipeline, &mut told, &mut since).await?;
            return Ok(());
        }
        match &input {
            Input::Message(d) if since.moved.len() < MAX_MOVED => since.moved.push(Moved::message(&d.message_id, &d.operation, &d.body)),
            Input::InvokeResult { call_id, result, .. } if since.moved.len() < MAX_MOVED => {
                since.moved.push(Moved::call_result(*call_id, result))
            }
            _ => {}
        }
        let y = m.step(input, now_ms());
        input = match y {
            Yield::Call(call) => {
                let log = LogContext {
                    sink: svc.guest_log(),
                    source: def.name.clone(),
                    instance: id.to_string(),
                    at: m.snapshot().path(def),
                };
                let variables = m.snapshot().variables.clone();
                let atomic = m.in_atomic();
                let cap = svc.config.limits.max_variables_bytes;
                let span = tracing::debug_span!("handler_call", process = %def.name, at = %log.at, handler = call.handler);
                let started = std::time::Instant::now();
                // Guest code runs on this task's thread, on a fiber that
                // yields at each epoch tick (runtime.rs).
                let result = async {
                    match atomic {
                        None => {
                            session = None;
                            svc.runtime
                                .call(component, call.handler, &variables, call.message.as_deref(), call.item.as_deref(), log)
                                .await
                                .and_then(|out| within_cap(out, cap))
                        }
                        Some(key) => {
                            crate::failpoint::hit("atomic-call");
                            if session.as_ref().map(|(k, _)| *k) != Some(key) {
                                session = Some((key, svc.runtime.session(component).await?));
                            }
                            let (_, s) = session.as_mut().unwrap();
                            let r = svc
                                .runtime
                                .call_in(s, call.handler, &variables, call.message.as_deref(), call.item.as_deref(), log)
                                .await
                                .and_then(|out| within_cap(out, cap));
                            if r.as_ref().is_err_and(|f| f.name.starts_with("cairn.")) {
                                session = None;
                            }
                            r
                        }
                    }
                }
                .instrument(span);
                let result = pipeline.alongside(svc, result).await;
                svc.metrics.handler_call(&def.name, started.elapsed());
                Input::Handler(result)
            }
            Yield::Persist(reason) => {
                session = None;
                // The instance computes on from here: the point may be
                // synced with a later one (`deferrable`).
                commit(svc, &mut m, reason, &mut sent, conflicts, creation, pipeline, &mut told, &mut since).await?;
                Input::Continue
            }
            Yield::Suspended => {
                if m.needs_persistence() || Creation::unsubmitted(creation) {
                    commit(svc, &mut m, Reason::Suspended, &mut sent, conflicts, creation, pipeline, &mut told, &mut since).await?;
                }
                pipeline.drain(svc, conflicts).await?;
                tell(&mut told);
                // A call in flight keeps the driver, so that its result is not lost.
                let call_in_flight = m.awaits_call();
                let Some(wakes) = idle(svc, id, rx, call_in_flight, std::time::Duration::ZERO).await else {
                    return Ok(());
                };
                for w in wakes {
                    absorb(svc, id, w, &mut inbox, &mut results, &mut sent, &mut controls, creation.as_ref().map(|c| &c.delivery)).await?;
                }
                Input::Continue
            }
            Yield::Sleep(ms) => {
                pipeline.drain(svc, conflicts).await?;
                tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
                Input::Continue
            }
            Yield::Finished(reason) => {
                if def.kind == ProcessKind::Microflow && !def.keep_final_state && m.snapshot().status == Status::Completed {
                    pipeline.drain(svc, conflicts).await?;
                    discard(svc, &mut m, creation).await?;
                } else {
                    commit(svc, &mut m, reason, &mut sent, conflicts, creation, pipeline, &mut told, &mut since).await?;
                }
                pipeline.drain(svc, conflicts).await?;
                tell(&mut told);
                for (_, responder) in controls.drain(..) {
                    let _ = responder.send(Err("the instance has ended".into()));
                }
                return Ok(());
            }
            Yield::Await(wait) => {
                if let Some(ready) = at_hand(&wait, &mut inbox, &consumed, &mut results) {
                    if let Input::Message(d) = &ready {
                        consumed.insert(d.seq);
                    }
                    ready
                } else if let Some(call_id) = first_invoke(&wait).filter(|c| m.invoke_pending(*c)) {
                    // Decided but not committed: a pure call, or one of a
                    // microflow or atomic scope. It runs inline; nothing of
                    // it has left the host, so a crash runs it again.
                    let (result, resources) = invoke_inline(svc, &mut m, id, call_id, &pure, pipeline, conflicts, &mut since.inline_calls).await?;
                    Input::InvokeResult { call_id, result, resources }
                } else if def.kind == ProcessKind::Microflow || m.in_atomic().is_some() {
                    // A microflow, or an atomic scope, is one transaction: its calls run inline.
                    let Some(call_id) = first_invoke(&wait) else {
                        return Err(anyhow!("a transaction waits for {wait:?}, which deploy validation forbids"));
                    };
                    let (result, resources) = invoke_inline(svc, &mut m, id, call_id, &pure, pipeline, conflicts, &mut since.inline_calls).await?;
                    Input::InvokeResult { call_id, result, resources }
                } else {
                    if m.needs_persistence() || Creation::unsubmitted(creation) {
                        commit(svc, &mut m, Reason::Waiting, &mut sent, conflicts, creation, pipeline, &mut told, &mut since).await?;
                    }
                    pipeline.drain(svc, conflicts).await?;
                    tell(&mut told);
                    let Some(wakes) = idle(svc, id, rx, first_invoke(&wait).is_some(), svc.idle()).await else {
                        return Ok(());
                    };
                    for w in wakes {
                        absorb(svc, id, w, &mut inbox, &mut results, &mut sent, &mut controls, creation.as_ref().map(|c| &c.delivery)).await?;
                    }
                    Input::Continue
                }
            }
        };
    }
}

/// What happened to an instance since its last persistence point that its
/// next point records.
#[derive(Default)]
struct SinceLastPoint {
    /// Messages consumed and call results taken, for the history entry.
    moved: Vec<Moved>,
    /// Pure calls run inline (`invoke_inline`), which never had an outbox
    /// entry or an in-transit record: their `InvokeDone` writes no deletes.
    inline_calls: HashSet<u64>,
}

/// A handler's output whose variables (or output) exceed the cap faults
/// the call with `cairn.too-large`, like any handler fault: the engine
/// never takes them in, so the last persistence point stays as it was.
fn within_cap(out: HandlerOutput, cap: usize) -> Result<HandlerOutput, Fault> {
    let too_large = |what: &str, len: usize| {
        Fault::new("cairn.too-large", format!("the handler's {what} {len} bytes, more than the cap of {cap} bytes (--max-variables-bytes)"))
    };
    if out.variables.len() > cap {
        return Err(too_large("variables are", out.variables.len()));
    }
    match &out.output {
        Some(o) if o.len() > cap => Err(too_large("output (a message or call input) is", o.len())),
        _ => Ok(out),
    }
}

type Responder = tokio::sync::oneshot::Sender<Result<(), String>>;

/// Idles the driver until something wakes it. With a call in flight it stays
/// in memory for the result; otherwise it stays for `idle`, then leaves
/// memory (the instance is dehydrated) unless a wake slipped in. `None`: the
/// driver should end.
async fn idle(
    svc: &Service,
    id: &str,
    rx: &mut UnboundedReceiver<Wake>,
    call_in_flight: bool,
    idle: std::time::Duration,
) -> Option<Vec<Wake>> {
    if call_in_flight {
        return rx.recv().await.map(|w| vec![w]);
    }
    if !idle.is_zero() {
        if let Ok(w) = tokio::time::timeout(idle, rx.recv()).await {
            return w.map(|w| vec![w]);
        }
    }
    let pending = svc.drivers.dehydrate(id, rx);
    (!pending.is_empty()).then_some(pending)
}

/// Takes a wake into the driver's state.
// The driver's state, one argument per part it may change.
#[allow(clippy::too_many_arguments)]
async fn absorb(
    svc: &Service,
    id: &str,
    wake: Wake,
    inbox: &mut Vec<Delivery>,
    results: &mut HashMap<u64, (Result<String, Fault>, ResourceAccesses)>,
    sent: &mut HashSet<u64>,
    controls: &mut VecDeque<(Control, Responder)>,
    creating: Option<&Delivery>,
) -> Result<()> {
    match wake {
        Wake::Resume => {
            *inbox = svc.store.inbox(id).await?;
            // The message creating a new instance is stored with its first point.
            if let Some(d) = creating {
                inbox.insert(0, d.clone());
            }
            svc.resend_outbox(id, sent, results).await?;
        }
        Wake::CallResult { call_id, result, resources } => {
            results.insert(call_id, (result, resources));
        }
        Wake::Control(c, responder) => controls.push_back((c, responder)),
        Wake::Shutdown => {}
    }
    Ok(())
}

/// Tells operators that their verbs are committed.
fn tell(told: &mut Vec<Responder>) {
    for responder in told.drain(..) {
        let _ = responder.send(Ok(()));
    }
}

/// What the engine waits for, if it is already here.
fn at_hand(
    wait: &Wait,
    inbox: &mut Vec<Delivery>,
    consumed: &HashSet<u64>,
    results: &mut HashMap<u64, (Result<String, Fault>, ResourceAccesses)>,
) -> Option<Input> {
    match wait {
        Wait::Message { operation, .. } => {
            let i = inbox.iter().position(|d| d.operation == *operation && !consumed.contains(&d.seq))?;
            Some(Input::Message(inbox.remove(i)))
        }
        Wait::Invoke { call_id } => {
            let (result, resources) = results.remove(call_id)?;
            Some(Input::InvokeResult { call_id: *call_id, result, resources })
        }
        Wait::Pick { operations } => {
            let i = inbox.iter().position(|d| operations.contains(&d.operation) && !consumed.contains(&d.seq))?;
            Some(Input::Message(inbox.remove(i)))
        }
        Wait::Many(waits) => waits.iter().find_map(|w| at_hand(w, inbox, consumed, results)),
        Wait::Timer { .. } => None,
    }
}

/// The call a wait (or any of a flow's waits) is for, if any.
fn first_invoke(wait: &Wait) -> Option<u64> {
    match wait {
        Wait::Invoke { call_id } => Some(*call_id),
        Wait::Many(waits) => waits.iter().find_map(first_invoke),
        _ => None,
    }
}

/// Ends a completed microflow that keeps no final state: its effects commit,
/// and its snapshot and history go, in one batch.
async fn discard(svc: &Service, m: &mut Machine<'_>, creation: &mut Option<Creation>) -> Result<()> {
    let point = m.persistence_point(Reason::Completed, now_ms());
    let id = point.snapshot.id.clone();
    let mut b = WriteBatch::new();
    b.fence(&id, point.based_on, point.snapshot.fence);
    b.push(Write::InstanceRemove { id });
    for e in &point.effects {
        effect_writes(&point.snapshot, e, &mut b);
    }
    let creating = with_creation(&mut b, creation);
    commit_batch(svc, &point.snapshot.id, b, &point.effects).await?;
    if let Some(ack) = creating {
        ack.answer(Ok(()));
    }
    after_commit(svc, &point.snapshot.id, point.effects);
    Ok(())
}

/// If `b` is a new instance's first persistence point (not yet submitted
/// in this drive), puts the intake's writes at the front of its batch,
/// which is then based on no fence at all; returns the acceptance to give
/// once the batch is durable. The point's snapshot replaces the one the
/// intake made, and a message the point consumes (the creating message,
/// as a rule) is not put in the inbox only to be removed in the same write
/// (`merge_earlier`).
fn with_creation(b: &mut WriteBatch, creation: &mut Option<Creation>) -> Option<Ack> {
    let c = creation.as_mut().filter(|c| !c.submitted)?;
    c.submitted = true;
    merge_earlier(c.writes.clone(), b);
    for f in &mut b.fences {
        if f.instance == c.snapshot.id {
            f.based_on = 0;
        }
    }
    Some(c.ack.clone())
}

/// Runs a pure call, or a microflow's (or atomic scope's) invoke, at once,
/// without an outbox entry. A call with capabilities leaves the host: the
/// points before it are made durable first.
// The driver's state, one argument per part it uses.
#[allow(clippy::too_many_arguments)]
async fn invoke_inline(
    svc: &Service,
    m: &mut Machine<'_>,
    id: &str,
    call_id: u64,
    pure: &std::sync::Arc<std::collections::BTreeSet<String>>,
    pipeline: &mut Pipeline,
    conflicts: &mut u32,
    inline_calls: &mut HashSet<u64>,
) -> Result<(Result<String, Fault>, ResourceAccesses)> {
    let Some(Effect::Invoke { target, operation, input, idempotency_key, policy, .. }) = m.take_invoke(call_id) else {
        return Ok((Err(Fault::new("cairn.internal", "the invoke to run is not among the pending effects")), ResourceAccesses::default()));
    };
    if matches!(&target, cairn_engine::Target::Activity(name) if pure.contains(name)) {
        inline_calls.insert(call_id);
    } else {
        pipeline.drain(svc, conflicts).await?;
    }
    let earlier = m.pending_resource_writes();
    let call = svc.call_with_policy(id, call_id, &target, &operation, &input, &idempotency_key, &policy, 1, earlier);
    let result = pipeline.alongside(svc, call).await;
    crate::failpoint::hit("inline-call");
    Ok(result)
}

/// Writes one persistence point: the snapshot, its history entry and every
/// effect since the last one, in one batch, submitted to the store; its
/// effects and the operators in `told` are handed on once it is durable
/// (`Pipeline`). A new instance's first point is awaited.
// The driver's state, one argument per part it may change.
#[allow(clippy::too_many_arguments)]
async fn commit(
    svc: &Service,
    m: &mut Machine<'_>,
    reason: Reason,
    sent: &mut HashSet<u64>,
    conflicts: &mut u32,
    creation: &mut Option<Creation>,
    pipeline: &mut Pipeline,
    told: &mut Vec<Responder>,
    since: &mut SinceLastPoint,
) -> Result<()> {
    if !pipeline.is_empty() {
        // A test's pause (`CAIRN_PAUSE=pipelined:MS`) outlasts the hold: a
        // point held before it is written alone, as after a long call.
        pipeline.alongside(svc, crate::failpoint::pause("pipelined")).await;
    }
    let PersistencePoint { snapshot, based_on, mut effects, reason, path, at_ms } = m.persistence_point(reason, now_ms());
    // A pure call run inline never had an outbox entry: its end removes nothing.
    effects.retain(|e| !matches!(e, Effect::InvokeDone { call_id } if since.inline_calls.remove(call_id)));
    let id = snapshot.id.clone();
    let fence = snapshot.fence;
    let mut b = WriteBatch::new();
    b.fence(&id, based_on, fence);
    let mut moved_by = std::mem::take(&mut since.moved);
    moved_by.extend(effects.iter().filter_map(|e| match e {
        Effect::Send { call_id, target: cairn_engine::Target::Process(process), operation, message_id, start, .. } => {
            Some(Moved::Sent { call_id: *call_id, message_id: message_id.clone(), process: process.clone(), operation: operation.clone(), start: *start })
        }
        _ => None,
    }));
    // Only when someone listens: then the event costs a few clones.
    let event = svc.events.listening().then(|| InstanceEvent {
        id: id.clone(),
        process: snapshot.process.clone(),
        version: snapshot.version.clone(),
        status: snapshot.status,
        path: path.clone(),
        reason,
        fence,
        at_ms,
    });
    let entry = HistoryEntry { fence, at_ms, reason, status: snapshot.status, path, resource_conflicts: *conflicts, moved_by };
    b.push(Write::History { instance: id.clone(), entry });
    let keep = svc.history_limit().max(1);
    if fence > keep {
        b.push(Write::HistoryPrune { instance: id.clone(), below: fence - keep + 1 });
    }
    for e in &effects {
        effect_writes(&snapshot, e, &mut b);
    }
    let (process, status) = (snapshot.process.clone(), snapshot.status);
    b.push(Write::Instance(Box::new(snapshot)));
    crate::failpoint::hit("before-commit");
    // Entries this driver sends on their way once the point is durable (a
    // Resume meanwhile must not send them again).
    sent.extend(effects.iter().filter_map(|e| match e {
        Effect::Invoke { call_id, .. } | Effect::Send { call_id, .. } => Some(*call_id),
        _ => None,
    }));
    // The first point of a new instance accepts its message once durable.
    let accepts = with_creation(&mut b, creation);
    let deferred = deferrable(reason, &effects, told);
    b.deferred = deferred;
    let point = InFlight { committing: None, reason, effects, told: std::mem::take(told), event, process, status, fence, accepts, deferred, earlier: Vec::new() };
    if !pipeline.is_empty() {
        crate::failpoint::hit("pipelined");
    }
    pipeline.submit(svc, b, point);
    Ok(())
}

/// Whether a point may be synced with a later write rather than its own:
/// one the instance computes on from (a commit before or after an
/// activity, a scope's or a compensation's end) whose release lets nothing
/// leave the host (no call, send, reply or timer; no operator to tell).
/// Its effects wait for that later sync, which comes with the next point
/// that is not deferred, when the driver waits for its points, or within a
/// millisecond. Saving one fsync each, a workflow of pure calls takes one
/// sync, at its end (README, "Which persistence points remain").
fn deferrable(reason: Reason, effects: &[Effect], told: &[Responder]) -> bool {
    let computes_on = matches!(reason, Reason::Created | Reason::CommitBefore | Reason::CommitAfter | Reason::ScopeCompleted | Reason::Compensated);
    let leaves = |e: &Effect| matches!(e, Effect::Invoke { .. } | Effect::Send { .. } | Effect::Reply { .. } | Effect::SetTimer { .. });
    computes_on && told.is_empty() && !effects.iter().any(leaves)
}

/// The persistence points a driver submitted and does not yet know durable,
/// oldest first, with what each lets leave the host once it is. The store
/// commits one instance's batches in order and refuses a batch whose fence
/// is based on one that failed, so when a point fails every later one fails
/// too, and the instance goes on from its last durable point: a crash, or a
/// refused point, loses only work whose effects never left.
///
/// A deferred point (`deferrable`) that holds no resource writes or checks
/// is held here, not submitted: the next point's batch takes it in (its
/// snapshot replaced by the later one, the fence going from the held
/// point's base to the later point's), so a workflow of pure calls makes
/// one store write from its creation to its end, not one per point. A held
/// point is submitted alone when the driver waits for its points (`drain`),
/// which it does before it idles, sleeps, ends, or runs a call that leaves
/// the host, and once it has been held `HOLD_AT_MOST` while calls run
/// (`alongside`): a new instance's acknowledgement, which waits for its
/// first point, is never held longer than that. Each point is still
/// released on its own (history entry, metrics, events).
struct Pipeline {
    id: String,
    in_flight: VecDeque<InFlight>,
    held: Option<Held>,
}

/// A point held unsubmitted, with the points its batch took in, since the
/// first of them was held.
struct Held {
    batch: WriteBatch,
    point: InFlight,
    since: std::time::Instant,
}

/// One submitted persistence point and what it holds back.
struct InFlight {
    /// `None` only while the point is built.
    committing: Option<cairn_store::Committing>,
    reason: Reason,
    effects: Vec<Effect>,
    told: Vec<Responder>,
    /// For the event stream, when someone listened as it was built.
    event: Option<InstanceEvent>,
    /// For the metrics and the log.
    process: String,
    status: Status,
    fence: u64,
    /// The first point of a new instance: its message's acceptance.
    accepts: Option<Ack>,
    /// Written at once, synced with a later write (`WriteBatch::deferred`).
    deferred: bool,
    /// Held points this one's batch took in, oldest first: released before it.
    earlier: Vec<InFlight>,
}

impl InFlight {
    /// The point is durable: its effects go, its operators are told.
    fn release(mut self, svc: &Service, id: &str) {
        for earlier in std::mem::take(&mut self.earlier) {
            earlier.release(svc, id);
        }
        crate::failpoint::hit("after-point");
        svc.metrics.persistence_point(&self.process, self.status, self.accepts.is_some());
        if let Some(ack) = &self.accepts {
            ack.answer(Ok(()));
        }
        tracing::debug!(fence = self.fence, reason = ?self.reason, status = self.status.as_str(), "persistence point");
        if self.reason == Reason::Compensated {
            crate::failpoint::hit("after-compensation-step");
        }
        after_commit(svc, id, self.effects);
        tell(&mut self.told);
        if let Some(event) = self.event {
            svc.events.publish(event);
        }
    }
}

impl Pipeline {
    fn new(id: &str) -> Pipeline {
        Pipeline { id: id.to_string(), in_flight: VecDeque::new(), held: None }
    }

    fn is_empty(&self) -> bool {
        self.in_flight.is_empty() && self.held.is_none()
    }

    /// Submits a point's batch, taking in the point held before it; holds
    /// the point instead if it may be (see `Pipeline`).
    fn submit(&mut self, svc: &Service, mut batch: WriteBatch, mut point: InFlight) {
        let mut since = std::time::Instant::now();
        if let Some(held) = self.held.take() {
            merge_earlier(held.batch, &mut batch);
            point.earlier.push(held.point);
            since = held.since;
        }
        let holdable = batch.deferred
            && batch.checks.is_empty()
            && !point.effects.iter().any(|e| matches!(e, Effect::ResourceWrites { .. }));
        if holdable {
            self.held = Some(Held { batch, point, since });
            return;
        }
        self.send(svc, batch, point);
    }

    /// Submits the held point, if any.
    fn send_held(&mut self, svc: &Service) {
        if let Some(held) = self.held.take() {
            self.send(svc, held.batch, held.point);
        }
    }

    fn send(&mut self, svc: &Service, batch: WriteBatch, mut point: InFlight) {
        point.committing = Some(svc.store.submit(batch));
        self.in_flight.push_back(point);
    }

    /// Runs `call` (a handler or a pure call, or a test's pause). A point
    /// held meanwhile is submitted alone once it has been held
    /// `HOLD_AT_MOST`, so that the store is never more than a moment behind
    /// an instance in long calls, nor a new instance's acknowledgement.
    async fn alongside<F: std::future::Future>(&mut self, svc: &Service, call: F) -> F::Output {
        let Some(held) = &self.held else {
            return call.await;
        };
        let until = held.since + HOLD_AT_MOST;
        let mut call = std::pin::pin!(call);
        if std::time::Instant::now() < until {
            tokio::select! {
                biased;
                out = &mut call => return out,
                _ = tokio::time::sleep_until(until.into()) => {}
            }
        }
        self.send_held(svc);
        call.await
    }

    /// Releases the oldest points already durable, without waiting.
    fn release_ready(&mut self, svc: &Service, conflicts: &mut u32) -> Result<()> {
        while let Some(front) = self.in_flight.front_mut() {
            let Some(verdict) = front.committing.as_mut().and_then(|c| c.verdict()) else { break };
            let point = self.in_flight.pop_front().expect("a front point");
            self.settle(svc, point, verdict, conflicts)?;
        }
        Ok(())
    }

    /// Waits for every point in flight, releasing each that committed. On
    /// the first that failed, waits for the rest (refused, being based on
    /// it) and returns its error.
    async fn drain(&mut self, svc: &Service, conflicts: &mut u32) -> Result<()> {
        self.send_held(svc);
        // Deferred points wait for a later sync: this driver waits for them now.
        if self.in_flight.iter().any(|p| p.deferred) {
            svc.store.sync_deferred();
        }
        let mut first_error = None;
        while let Some(mut point) = self.in_flight.pop_front() {
            let verdict = match point.committing.take() {
                Some(c) => c.await,
                None => Ok(()),
            };
            if first_error.is_none() {
                if let Err(e) = self.settle(svc, point, verdict, conflicts) {
                    first_error = Some(e);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    fn settle(&self, svc: &Service, point: InFlight, verdict: cairn_store::Result<()>, conflicts: &mut u32) -> Result<()> {
        match verdict {
            Ok(()) => {
                *conflicts = 0;
                point.release(svc, &self.id);
                Ok(())
            }
            Err(e) => Err(refused(svc, &self.id, e, &point.effects)),
        }
    }
}

/// How long a point is held at most while the instance runs calls: about
/// the time the store waits to sync a deferred write alone.
const HOLD_AT_MOST: std::time::Duration = std::time::Duration::from_millis(1);

/// Puts an earlier batch (a held point's, or a new instance's intake) in
/// front of the later point's `batch`: its writes first, but not a
/// snapshot the later batch replaces, nor an inbox entry the later batch
/// removes (with that removal); the fence of each instance goes from the
/// earlier batch's base to the later point's.
fn merge_earlier(earlier: WriteBatch, batch: &mut WriteBatch) {
    let mut replaced = HashSet::new();
    let mut removed = HashSet::new();
    for w in &batch.writes {
        match w {
            Write::Instance(s) => {
                replaced.insert(s.id.clone());
            }
            Write::InboxRemove { instance, seq } => {
                removed.insert((instance.clone(), *seq));
            }
            _ => {}
        }
    }
    let mut never_stored = HashSet::new();
    let mut writes: Vec<Write> = Vec::with_capacity(earlier.writes.len() + batch.writes.len());
    for w in earlier.writes {
        match w {
            Write::Instance(s) if replaced.contains(&s.id) => {}
            Write::Inbox { instance, delivery } if removed.contains(&(instance.clone(), delivery.seq)) => {
                never_stored.insert((instance, delivery.seq));
            }
            w => writes.push(w),
        }
    }
    writes.extend(
        batch.writes.drain(..).filter(|w| !matches!(w, Write::InboxRemove { instance, seq } if never_stored.contains(&(instance.clone(), *seq)))),
    );
    batch.writes = writes;
    for f in &mut batch.fences {
        if let Some(e) = earlier.fences.iter().find(|e| e.instance == f.instance) {
            f.based_on = e.based_on;
        }
    }
    batch.checks.extend(earlier.checks);
}

/// The writes that record `effect` in its persistence point.
fn effect_writes(snap: &Snapshot, effect: &Effect, b: &mut WriteBatch) {
    let instance = snap.id.clone();
    let correlation = |set: &str, values: &str| CorrelationKey { process: snap.process.clone(), set: set.to_string(), values: values.to_string() };
    match effect {
        Effect::ConsumeMessage { seq } => b.push(Write::InboxRemove { instance, seq: *seq }),
        Effect::Correlate { set, values } => b.push(Write::Correlation { key: correlation(set, values), instance }),
        Effect::Uncorrelate { set, values } => b.push(Write::CorrelationRemove(correlation(set, values))),
        Effect::SetTimer { timer_id, due_ms } => b.push(Write::Timer(TimerKey { due_ms: *due_ms, instance, timer_id: *timer_id })),
        Effect::ClearTimer { timer_id, due_ms } => {
            b.push(Write::TimerRemove(TimerKey { due_ms: *due_ms, instance, timer_id: *timer_id }))
        }
        Effect::Invoke { call_id, .. } | Effect::Send { call_id, .. } => {
            b.push(Write::Outbox { instance, call_id: *call_id, effect: Box::new(effect.clone()) })
        }
        Effect::InvokeDone { call_id } => {
            b.push(Write::OutboxRemove { instance: instance.clone(), call_id: *call_id });
            b.push(Write::InTransitRemove { instance, call_id: *call_id });
        }
        Effect::Reply { message_id, body, fault } => {
            let reply = Reply { body: serde_json::from_str(body).unwrap_or(serde_json::Value::Null), fault: fault.clone() };
            b.push(Write::Reply { message_id: message_id.clone(), reply })
        }
        Effect::ResourceWrites { accesses, .. } => super::resources::accesses_into(accesses, b),
    }
}

/// Carries out a committed batch's effects: timers into the timer set,
/// replies to their waiters, activity calls and sends to dispatch.
fn after_commit(svc: &Service, instance: &str, effects: Vec<Effect>) {
    for effect in effects {
        match effect {
            Effect::SetTimer { timer_id, due_ms } => svc.timers.set(TimerKey { due_ms, instance: instance.to_string(), timer_id }),
            Effect::ClearTimer { timer_id, due_ms } => svc.timers.clear(&TimerKey { due_ms, instance: instance.to_string(), timer_id }),
            Effect::Reply { message_id, body, fault } => {
                let reply = Reply { body: serde_json::from_str(&body).unwrap_or(serde_json::Value::Null), fault };
                if !svc.replies.answer(&message_id, reply) {
                    // Cluster mode: the caller may wait on another host.
                    svc.notify_reply(&message_id);
                }
            }
            e @ (Effect::Invoke { .. } | Effect::Send { .. }) => {
                crate::failpoint::hit("after-commit-dispatch");
                svc.dispatch(instance, e, 1)
            }
            Effect::ConsumeMessage { .. }
            | Effect::Correlate { .. }
            | Effect::Uncorrelate { .. }
            | Effect::InvokeDone { .. }
            | Effect::ResourceWrites { .. } => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(id: &str, fence: u64, variables: &str) -> Snapshot {
        Snapshot {
            id: id.into(),
            process: "p".into(),
            version: "v".into(),
            status: Status::Running,
            variables: variables.into(),
            stack: Vec::new(),
            correlations: Default::default(),
            requests: Vec::new(),
            compensations: Vec::new(),
            fault: None,
            retry: None,
            cancelling: false,
            next_id: 1,
            fence,
            created_ms: 0,
            updated_ms: 0,
        }
    }

    /// A point's batch as `commit` builds it: its fence, one effect's write, its snapshot.
    fn point(id: &str, based_on: u64, fence: u64, effect: Write, variables: &str) -> WriteBatch {
        let mut b = WriteBatch::new();
        b.fence(id, based_on, fence);
        b.push(effect);
        b.push(Write::Instance(Box::new(snapshot(id, fence, variables))));
        b
    }

    fn snapshots(b: &WriteBatch) -> Vec<(String, u64)> {
        b.writes.iter().filter_map(|w| match w {
            Write::Instance(s) => Some((s.id.clone(), s.fence)),
            _ => None,
        }).collect()
    }

    #[test]
    fn a_held_point_goes_with_the_next_one_whose_snapshot_replaces_its_own() {
        let held = point("i1", 2, 3, Write::OutboxRemove { instance: "i1".into(), call_id: 1 }, r#"{"step":1}"#);
        let mut next = point("i1", 3, 4, Write::OutboxRemove { instance: "i1".into(), call_id: 2 }, r#"{"step":2}"#);
        merge_earlier(held, &mut next);
        assert_eq!(next.fences.len(), 1);
        assert_eq!((next.fences[0].based_on, next.fences[0].becomes), (2, 4), "from the held point's base to the later point's fence");
        assert_eq!(snapshots(&next), [("i1".to_string(), 4)], "only the later snapshot is written");
        let removed: Vec<u64> = next.writes.iter().filter_map(|w| match w {
            Write::OutboxRemove { call_id, .. } => Some(*call_id),
            _ => None,
        }).collect();
        assert_eq!(removed, [1, 2], "every other write, the held point's first");
    }

    #[test]
    fn a_held_snapshot_of_another_instance_is_kept() {
        let mut held = point("i1", 2, 3, Write::InboxRemove { instance: "i1".into(), seq: 7 }, "{}");
        held.push(Write::Instance(Box::new(snapshot("other", 1, "{}"))));
        let mut next = point("i1", 3, 4, Write::InboxRemove { instance: "i1".into(), seq: 8 }, "{}");
        merge_earlier(held, &mut next);
        assert_eq!(snapshots(&next), [("other".to_string(), 1), ("i1".to_string(), 4)]);
    }

    #[test]
    fn a_creation_writes_its_message_and_snapshot_once_when_its_first_point_consumes_the_message() {
        let delivery = Delivery { seq: 5, message_id: "m1".into(), operation: "start".into(), body: "{}".into() };
        let mut intake = WriteBatch::new();
        intake.push(Write::Instance(Box::new(snapshot("i1", 1, "{}"))));
        intake.push(Write::Inbox { instance: "i1".into(), delivery: delivery.clone() });
        intake.push(Write::Inbox { instance: "i1".into(), delivery: Delivery { seq: 6, ..delivery.clone() } });
        let (ack, _acked) = tokio::sync::oneshot::channel();
        let mut creation = Some(Creation::new(snapshot("i1", 0, "{}"), delivery, intake, ack));
        let mut first = point("i1", 1, 2, Write::InboxRemove { instance: "i1".into(), seq: 5 }, r#"{"started":true}"#);
        assert!(with_creation(&mut first, &mut creation).is_some(), "the first point carries the acceptance");
        assert_eq!(first.fences[0].based_on, 0, "based on no fence at all");
        assert_eq!(snapshots(&first), [("i1".to_string(), 2)], "the point's snapshot, not the intake's");
        let inbox: Vec<String> = first.writes.iter().filter_map(|w| match w {
            Write::Inbox { delivery, .. } => Some(format!("put {}", delivery.seq)),
            Write::InboxRemove { seq, .. } => Some(format!("remove {seq}")),
            _ => None,
        }).collect();
        assert_eq!(inbox, ["put 6"], "the consumed message is neither put nor removed; another one stays");
        let mut again = point("i1", 2, 3, Write::InboxRemove { instance: "i1".into(), seq: 6 }, "{}");
        assert!(with_creation(&mut again, &mut creation).is_none(), "only the first point");
    }
}
