//! The instance driver: one task per instance in memory, carrying out what
//! the engine yields.
//!
//! Rules:
//! - At most one driver per instance (the `live` map); the store's fence
//!   rejects a write from any other, and a rejected driver stops.
//! - Handler calls run in a fresh sandbox each (`Runtime::call`).
//! - Effects leave only after the batch that holds them commits
//!   (`Service::after_commit`).
//! - A driver parked on a message or a timer leaves memory: the instance is
//!   dehydrated; a message or a timer brings a new driver.
//! - At shutdown a driver commits (reason `shutdown`) only when it has no
//!   input in hand: never between a handler call and its result.

use super::{HistoryEntry, Service, Wake};
use cairn_engine::{Control, Effect, Fault, Input, Machine, Phase, ProcessKind, Reason, Status, Wait, Yield};
use crate::now_ms;
use crate::runtime::{LogContext, Loaded, Session};
use crate::store::{keys, Batch, Cf};
use anyhow::{anyhow, Result};
use std::collections::{HashMap, HashSet, VecDeque};
use tokio::sync::mpsc::UnboundedReceiver;

pub(super) async fn run(svc: Service, id: String, generation: u64, mut rx: UnboundedReceiver<Wake>) {
    if let Err(e) = drive(&svc, &id, &mut rx).await {
        eprintln!("cairn: instance {id} stopped: {e:#}");
    }
    svc.forget(&id, generation);
}

/// The last committed position, to tell whether parking needs a commit.
struct Committed {
    stack: Vec<cairn_engine::machine::Frame>,
    status: Status,
    /// Outbox entries this driver has sent on their way.
    sent: HashSet<u64>,
}

async fn drive(svc: &Service, id: &str, rx: &mut UnboundedReceiver<Wake>) -> Result<()> {
    let Some(snap) = svc.load_snapshot(id)? else { return Ok(()) };
    if snap.status.is_terminal() {
        return Ok(());
    }
    let deployed = svc
        .deployed(&snap.version)
        .ok_or_else(|| anyhow!("definition version {} of process '{}' is not deployed", snap.version, snap.process))?;
    let def = deployed.record.definition.as_ref().ok_or_else(|| anyhow!("version {} is not a process", snap.version))?;
    let Loaded::Process(component) = &deployed.component else {
        return Err(anyhow!("version {} is not a process component", snap.version));
    };
    let mut committed = Committed { stack: snap.stack.clone(), status: snap.status, sent: HashSet::new() };
    let mut m = Machine::new(def, snap);
    m.breakpoints = svc.breakpoints_of(&def.name);
    let mut consumed: HashSet<u64> = HashSet::new();
    let mut inbox = svc.inbox(id)?;
    let mut results: HashMap<u64, Result<String, Fault>> = HashMap::new();

    // Calls and sends left in the outbox by an earlier run go out again,
    // with the same idempotency keys and message ids, or are held.
    svc.resend_outbox(id, &mut committed.sent, &mut results).await?;

    // The Wasm instance of the atomic scope running, keyed by (frame, attempt).
    let mut session: Option<((usize, u32), Session)> = None;
    // Operator verbs waiting to apply, and the callers to tell once they are committed.
    let mut controls: VecDeque<(Control, Responder)> = VecDeque::new();
    let mut told: Vec<Responder> = Vec::new();
    let mut input = Input::Continue;
    loop {
        if input == Input::Continue {
            // Between transitions: take in what arrived, and apply an
            // operator verb if one waits (never inside an atomic scope).
            while let Ok(w) = rx.try_recv() {
                absorb(svc, id, w, &mut inbox, &mut results, &mut committed.sent, &mut controls).await?;
            }
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
        if svc.is_shutting_down() && input == Input::Continue {
            if m.in_atomic().is_some() {
                return Ok(());
            }
            commit(svc, &mut m, Reason::Shutdown, &mut committed).await?;
            return Ok(());
        }
        let y = m.step(input, now_ms());
        input = match y {
            Yield::Call(call) => {
                let log = LogContext {
                    sink: svc.guest_log(),
                    source: def.name.clone(),
                    instance: id.to_string(),
                    at: m.snap.path(def),
                };
                let variables = m.snap.variables.clone();
                let atomic = m.in_atomic();
                let result = tokio::task::block_in_place(|| match atomic {
                    None => {
                        session = None;
                        svc.runtime.call(component, call.handler, &variables, call.message.as_deref(), call.item.as_deref(), log)
                    }
                    Some(key) => {
                        crate::failpoint::hit("atomic-call");
                        if session.as_ref().map(|(k, _)| *k) != Some(key) {
                            session = Some((key, svc.runtime.session(component)?));
                        }
                        let (_, s) = session.as_mut().unwrap();
                        let r = svc.runtime.call_in(s, call.handler, &variables, call.message.as_deref(), call.item.as_deref(), log);
                        if r.as_ref().is_err_and(|f| f.name.starts_with("cairn.")) {
                            session = None;
                        }
                        r
                    }
                });
                Input::Handler(result)
            }
            Yield::Persist(reason) => {
                session = None;
                commit(svc, &mut m, reason, &mut committed).await?;
                tell(&mut told);
                Input::Continue
            }
            Yield::Suspended => {
                let moved = m.snap.stack != committed.stack || m.snap.status != committed.status;
                if moved || !m.effects.is_empty() {
                    commit(svc, &mut m, Reason::Suspended, &mut committed).await?;
                }
                tell(&mut told);
                // A call in flight keeps the driver, so that its result is not lost.
                let call_in_flight = matches!(m.snap.stack.last().map(|f| &f.phase), Some(Phase::AwaitInvoke { .. }));
                let Some(wakes) = park(svc, id, rx, call_in_flight, std::time::Duration::ZERO).await else {
                    return Ok(());
                };
                for w in wakes {
                    absorb(svc, id, w, &mut inbox, &mut results, &mut committed.sent, &mut controls).await?;
                }
                Input::Continue
            }
            Yield::Sleep(ms) => {
                tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
                Input::Continue
            }
            Yield::Finished(reason) => {
                if def.kind == ProcessKind::Microflow && !def.keep_final_state && m.snap.status == Status::Completed {
                    discard(svc, &mut m).await?;
                } else {
                    commit(svc, &mut m, reason, &mut committed).await?;
                }
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
                } else if def.kind == ProcessKind::Microflow || m.in_atomic().is_some() {
                    // A microflow, or an atomic scope, is one transaction: its calls run inline.
                    let Some(call_id) = first_invoke(&wait) else {
                        return Err(anyhow!("a transaction waits for {wait:?}, which deploy validation forbids"));
                    };
                    let result = invoke_inline(svc, &mut m, id, call_id).await;
                    Input::InvokeResult { call_id, result }
                } else {
                    let moved = m.snap.stack != committed.stack || m.snap.status != committed.status;
                    if moved || !m.effects.is_empty() {
                        commit(svc, &mut m, Reason::Waiting, &mut committed).await?;
                    }
                    tell(&mut told);
                    let Some(wakes) = park(svc, id, rx, first_invoke(&wait).is_some(), svc.idle()).await else {
                        return Ok(());
                    };
                    for w in wakes {
                        absorb(svc, id, w, &mut inbox, &mut results, &mut committed.sent, &mut controls).await?;
                    }
                    Input::Continue
                }
            }
        };
    }
}

type Responder = tokio::sync::oneshot::Sender<Result<(), String>>;

/// Parks the driver until something wakes it. With a call in flight it stays
/// in memory for the result; otherwise it stays for `idle`, then leaves
/// memory (the instance is dehydrated) unless a wake slipped in. `None`: the
/// driver should end.
async fn park(
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
    let pending = svc.try_retire(id, rx);
    (!pending.is_empty()).then_some(pending)
}

/// Takes a wake into the driver's state.
async fn absorb(
    svc: &Service,
    id: &str,
    wake: Wake,
    inbox: &mut Vec<cairn_engine::Delivery>,
    results: &mut HashMap<u64, Result<String, Fault>>,
    sent: &mut HashSet<u64>,
    controls: &mut VecDeque<(Control, Responder)>,
) -> Result<()> {
    match wake {
        Wake::Resume => {
            *inbox = svc.inbox(id)?;
            svc.resend_outbox(id, sent, results).await?;
        }
        Wake::InvokeResult { call_id, result } => {
            results.insert(call_id, result);
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
    inbox: &mut Vec<cairn_engine::Delivery>,
    consumed: &HashSet<u64>,
    results: &mut HashMap<u64, Result<String, Fault>>,
) -> Option<Input> {
    match wait {
        Wait::Message { operation, .. } => {
            let i = inbox.iter().position(|d| d.operation == *operation && !consumed.contains(&d.seq))?;
            Some(Input::Message(inbox.remove(i)))
        }
        Wait::Invoke { call_id } => {
            let result = results.remove(call_id)?;
            Some(Input::InvokeResult { call_id: *call_id, result })
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
async fn discard(svc: &Service, m: &mut Machine<'_>) -> Result<()> {
    let effects = m.take_effects();
    let id = m.snap.id.clone();
    let mut b = Batch::default();
    b.fence(&id, m.snap.fence, m.snap.fence + 1);
    b.delete(Cf::Instances, id.as_bytes());
    b.ops.push(crate::store::Op::DeleteRange(Cf::History, keys::instance_scoped(&id, 0), keys::instance_scoped(&id, u64::MAX)));
    for e in &effects {
        svc.effect_ops(&m.snap, e, &mut b);
    }
    svc.store.commit(b).await.map_err(|e| anyhow!("{e}"))?;
    svc.after_commit(&m.snap, effects);
    Ok(())
}

/// Runs a microflow's invoke at once, without an outbox entry.
async fn invoke_inline(svc: &Service, m: &mut Machine<'_>, id: &str, call_id: u64) -> Result<String, Fault> {
    let i = m
        .effects
        .iter()
        .position(|e| matches!(e, Effect::Invoke { call_id: c, .. } if *c == call_id))
        .ok_or_else(|| Fault::new("cairn.internal", "the invoke to run is not among the pending effects"))?;
    let Effect::Invoke { target, operation, input, idempotency_key, policy, .. } = m.effects.remove(i) else {
        unreachable!()
    };
    let result = svc.call_with_policy(id, &target, &operation, &input, &idempotency_key, &policy, 1).await;
    crate::failpoint::hit("inline-call");
    result
}

/// Writes one persistence point: the snapshot, its history entry and every
/// effect since the last one, in one batch; then hands the effects to dispatch.
async fn commit(svc: &Service, m: &mut Machine<'_>, reason: Reason, committed: &mut Committed) -> Result<()> {
    let effects = m.take_effects();
    let id = m.snap.id.clone();
    let based_on = m.snap.fence;
    m.snap.fence += 1;
    let fence = m.snap.fence;
    let mut b = Batch::default();
    b.fence(&id, based_on, fence);
    b.put(Cf::Instances, id.as_bytes(), serde_json::to_vec(&m.snap)?);
    let path = match (reason, &m.snap.fault) {
        (Reason::CommitBefore | Reason::CommitAfter | Reason::Dispatch | Reason::ScopeCompleted | Reason::Compensated, _) => {
            std::mem::take(&mut m.persist_path)
        }
        (_, Some(f)) => f.path.clone(),
        _ => m.snap.path(m.def),
    };
    let entry = HistoryEntry { fence, at_ms: now_ms(), reason, status: m.snap.status, path };
    b.put(Cf::History, keys::instance_scoped(&id, fence), serde_json::to_vec(&entry)?);
    let keep = svc.config.history_limit.max(1);
    if fence > keep {
        b.ops.push(crate::store::Op::DeleteRange(
            Cf::History,
            keys::instance_scoped(&id, 0),
            keys::instance_scoped(&id, fence - keep + 1),
        ));
    }
    for e in &effects {
        svc.effect_ops(&m.snap, e, &mut b);
    }
    crate::failpoint::hit("before-commit");
    svc.store.commit(b).await.map_err(|e| anyhow!("{e}"))?;
    if reason == Reason::Compensated {
        crate::failpoint::hit("after-compensation-step");
    }
    committed.stack = m.snap.stack.clone();
    committed.status = m.snap.status;
    committed.sent.extend(effects.iter().filter_map(|e| match e {
        Effect::Invoke { call_id, .. } | Effect::Send { call_id, .. } => Some(*call_id),
        _ => None,
    }));
    svc.after_commit(&m.snap, effects);
    Ok(())
}
