//! Tasks: invokes and sends of *external activities*, carried out by workers
//! outside the host (any language, over the HTTP API) that take them by long
//! polling, under leases.
//!
//! Owns the tasks offered now (one mutex, held briefly, never across an
//! await) and wakes pollers when one is offered.
//!
//! A task is the outbox entry of its invoke or send (task id
//! `INSTANCE:CALL`): it is durable with the persistence point that decided
//! it, and `Calls::dispatch` offers it after that point commits, as it would
//! run a component. Leases live in memory only: after a crash every lease is
//! void, and the outbox is dispatched again (`Service::resend_outbox`).
//! Two records of the in-transit table make that exact:
//! - `Leased`, written before a non-idempotent task is handed to a worker:
//!   found after a crash, the task is held for an operator (as a
//!   non-idempotent call cut by a crash is);
//! - `Completed`, with the worker's outcome, written before a completion is
//!   acknowledged: found after a crash, the outcome is handed to the
//!   instance instead of offering the task again. The persistence point that
//!   consumes the result removes it with the outbox entry (`InvokeDone`).
//!
//! Attempts: the first offer is attempt 1 (after a restart too); a lease that
//! expires offers an idempotent task again with the next attempt and the
//! same idempotency key (after the retry policy's first backoff, if any; a
//! lost worker is not a failure of the task, so the policy's attempt limit
//! and fault names do not apply), and a retryable failure does so by the
//! invoke's retry policy. The invoke's timeout covers the whole task.
//! A completion must name the attempt (and the worker and lease token, if
//! it gives them) that holds the lease; anything else is refused (409).

use super::{Error, ErrorKind, Service};
use crate::now_ms;
use cairn_engine::definition::{InvokePolicy, RetryPolicy};
use cairn_engine::{Fault, Target};
use cairn_store::{InTransit, InTransitState, Write, WriteBatch};
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};

/// The lease a poll gives by default, and the longest a poll may wait.
pub const DEFAULT_LEASE_MS: u64 = 30_000;
pub const MAX_POLL_WAIT_MS: u64 = 60_000;
/// How long an accepted completion is remembered, so that the same
/// completion sent again is answered alike.
const DONE_MEMORY: Duration = Duration::from_secs(600);

/// What makes a worker's outcome durable before it is acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durable {
    /// An invoke from the outbox: a `Completed` in-transit record.
    Invoke,
    /// A one-way send: removing its outbox entry.
    Send,
    /// An invoke inside an atomic scope or microflow: nothing (a crash runs
    /// the transaction again from its start).
    Inline,
}

/// What a task's dispatcher hears.
enum Event {
    /// The outcome, durable already (as `Durable` says).
    Done(Result<String, Fault>),
    /// A retryable failure the policy retries: offer the next attempt after this long.
    Again { after_ms: u64 },
    /// The lease passed its deadline without a completion.
    LeaseExpired,
}

#[derive(Clone, Debug)]
pub struct Lease {
    pub worker: String,
    pub deadline_ms: u64,
    pub lease_ms: u64,
    /// A random token of this lease: a completion that gives it is refused
    /// unless it is the current lease's (attempts restart at 1 after a
    /// restart; tokens never repeat).
    pub token: String,
}

/// A task offered now.
struct Task {
    instance: String,
    call_id: u64,
    activity: String,
    operation: String,
    input: String,
    idempotency_key: String,
    attempt: u32,
    first_attempt: u32,
    retry: Option<RetryPolicy>,
    /// Written `Leased` before it goes to a worker, held if its lease expires.
    hold: bool,
    durable: Durable,
    since_ms: u64,
    lease: Option<Lease>,
    /// A completion is being made durable: not expired, not taken again.
    completing: bool,
    /// Its `Leased` record is being written: its lease does not expire
    /// before the worker has it (else `Held` could be overwritten by `Leased`).
    recording: bool,
    events: UnboundedSender<Event>,
}

/// A task as a worker or a listing sees it.
#[derive(Clone, Debug)]
pub struct TaskInfo {
    pub id: String,
    pub instance: String,
    pub activity: String,
    pub operation: String,
    pub input: String,
    pub idempotency_key: String,
    pub attempt: u32,
    pub since_ms: u64,
    pub lease: Option<Lease>,
}

impl Task {
    fn info(&self, id: &str) -> TaskInfo {
        TaskInfo {
            id: id.to_string(),
            instance: self.instance.clone(),
            activity: self.activity.clone(),
            operation: self.operation.clone(),
            input: self.input.clone(),
            idempotency_key: self.idempotency_key.clone(),
            attempt: self.attempt,
            since_ms: self.since_ms,
            lease: self.lease.clone(),
        }
    }
}

#[derive(Default)]
struct State {
    tasks: HashMap<String, Task>,
    /// Waiting task ids per activity, oldest first (ids of tasks gone since are skipped).
    waiting: HashMap<String, VecDeque<String>>,
    /// Completions accepted lately: task id -> (attempt, when).
    done: HashMap<String, (u32, std::time::Instant)>,
}

#[derive(Default)]
pub struct Tasks {
    state: Mutex<State>,
    offered: tokio::sync::Notify,
    /// Cluster mode: tasks announced by other hosts, counted per activity,
    /// and the polls waiting here woken at each (they ask those hosts).
    announced: Mutex<HashMap<String, u64>>,
    offered_elsewhere: tokio::sync::Notify,
    /// A controlled shutdown began: polls answer at once, with no task
    /// (completions are still taken during the grace period).
    closing: std::sync::atomic::AtomicBool,
}

/// What a worker asks of a poll.
#[derive(Clone, Debug)]
pub struct PollRequest {
    pub activity: String,
    pub operations: Vec<String>,
    pub worker: String,
    pub max: usize,
    pub wait_ms: u64,
    pub lease_ms: u64,
}

/// A worker's report on an attempt.
#[derive(Clone, Debug)]
pub enum Outcome {
    Completed(String),
    Failed { fault: Fault, retryable: bool },
}

/// What a poll hands a worker: tasks leased here, or (cluster mode, none
/// being offered here) tasks other hosts leased to it, as their API wrote them.
pub enum Polled {
    Here(Vec<TaskInfo>),
    Elsewhere(Vec<serde_json::Value>),
}

/// Cluster mode: how often a waiting poll asks the other hosts again
/// without an announcement (one lost while the listener reconnected).
const ASK_AGAIN: Duration = Duration::from_secs(1);

/// The answer to a completion or failure.
#[derive(Clone, Debug)]
pub struct Acknowledged {
    /// The same completion was accepted before.
    pub duplicate: bool,
    /// A failure the invoke's retry policy retries: the next attempt is offered.
    pub retrying: bool,
}

fn conflict(message: String) -> Error {
    Error::new(ErrorKind::Conflict, message)
}

impl Tasks {
    /// Ends the polls waiting now and makes later ones answer at once (shutdown).
    pub fn close_polls(&self) {
        self.closing.store(true, std::sync::atomic::Ordering::SeqCst);
        self.offered.notify_waiters();
    }

    fn closing(&self) -> bool {
        self.closing.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Cluster mode: another host offered a task of `activity`.
    pub fn offered_elsewhere(&self, activity: &str) {
        *self.announced.lock().unwrap().entry(activity.to_string()).or_default() += 1;
        self.offered_elsewhere.notify_waiters();
    }

    fn announcements(&self, activity: &str) -> u64 {
        self.announced.lock().unwrap().get(activity).copied().unwrap_or(0)
    }

    fn offer(&self, id: &str, task: Task) {
        let mut s = self.state.lock().unwrap();
        s.waiting.entry(task.activity.clone()).or_default().push_back(id.to_string());
        s.tasks.insert(id.to_string(), task);
        drop(s);
        self.offered.notify_waiters();
    }

    /// Withdraws a task whose deadline passed; false if a completion or a
    /// lease is being recorded (ask again shortly).
    fn withdraw(&self, id: &str) -> bool {
        let mut s = self.state.lock().unwrap();
        match s.tasks.get(id) {
            Some(t) if t.completing || t.recording => false,
            _ => {
                s.tasks.remove(id);
                true
            }
        }
    }

    /// Takes up to `max` waiting tasks for `worker`, leased until `lease_ms` from now.
    fn take(&self, r: &PollRequest) -> Vec<TaskInfo> {
        let mut guard = self.state.lock().unwrap();
        let s = &mut *guard;
        let Some(queue) = s.waiting.get_mut(&r.activity) else { return Vec::new() };
        let mut out = Vec::new();
        let mut i = 0;
        while i < queue.len() && out.len() < r.max {
            let id = &queue[i];
            let Some(task) = s.tasks.get_mut(id) else {
                queue.remove(i);
                continue;
            };
            if task.lease.is_some() {
                queue.remove(i);
                continue;
            }
            if !r.operations.is_empty() && !r.operations.contains(&task.operation) {
                i += 1;
                continue;
            }
            let token = uuid::Uuid::new_v4().simple().to_string();
            task.lease = Some(Lease { worker: r.worker.clone(), deadline_ms: now_ms() + r.lease_ms, lease_ms: r.lease_ms, token });
            task.recording = task.hold;
            out.push(task.info(id));
            queue.remove(i);
        }
        out
    }

    /// Voids the leases that passed their deadline; their dispatchers decide what follows.
    fn expire(&self) {
        let now = now_ms();
        let mut s = self.state.lock().unwrap();
        let expired: Vec<String> = s
            .tasks
            .iter()
            .filter(|(_, t)| !t.completing && !t.recording && t.lease.as_ref().is_some_and(|l| l.deadline_ms <= now))
            .map(|(id, _)| id.clone())
            .collect();
        for id in expired {
            if let Some(t) = s.tasks.remove(&id) {
                let _ = t.events.send(Event::LeaseExpired);
            }
        }
    }

    /// Forgets completions accepted longer ago than `DONE_MEMORY`.
    fn forget_done(&self) {
        self.state.lock().unwrap().done.retain(|_, (_, at)| at.elapsed() < DONE_MEMORY);
    }

    /// Every task offered now, oldest first.
    pub fn list(&self) -> Vec<TaskInfo> {
        let s = self.state.lock().unwrap();
        let mut out: Vec<TaskInfo> = s.tasks.iter().map(|(id, t)| t.info(id)).collect();
        out.sort_by(|a, b| a.since_ms.cmp(&b.since_ms).then(a.id.cmp(&b.id)));
        out
    }
}

/// Checks leases every 50 ms (and forgets old completions every 10 s).
pub(super) async fn run(svc: Service) {
    let mut ticks: u64 = 0;
    while !svc.is_shutting_down() {
        tokio::time::sleep(Duration::from_millis(50)).await;
        svc.tasks.expire();
        ticks += 1;
        if ticks.is_multiple_of(200) {
            svc.tasks.forget_done();
        }
    }
}

impl Service {
    /// Offers a task of external activity `activity` and waits for its
    /// outcome: attempts from `first_attempt`, lease expiries and retryable
    /// failures by `policy`, its timeout over the whole task. `None`: a
    /// non-idempotent task whose lease expired is held for an operator.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn external_call(
        &self,
        instance: &str,
        call_id: u64,
        activity: &str,
        operation: &str,
        input: &str,
        idempotency_key: &str,
        policy: &InvokePolicy,
        first_attempt: u32,
        durable: Durable,
    ) -> Option<Result<String, Fault>> {
        if let Some(ops) = self.registry.external(activity) {
            if !ops.is_empty() && !ops.iter().any(|o| o == operation) {
                let fault = Fault::new("cairn.unknown-operation", format!("external activity '{activity}' has no operation '{operation}' (deployed: {})", ops.join(", ")));
                return Some(Err(fault));
            }
        }
        let id = format!("{instance}:{call_id}");
        let deadline = policy.timeout_ms.map(|t| tokio::time::Instant::now() + Duration::from_millis(t));
        let timeout = || Fault::new("cairn.timeout", format!("task {id} ('{operation}' on external activity '{activity}') was not completed within {} ms", policy.timeout_ms.unwrap_or(0)));
        let (tx, mut rx) = unbounded_channel();
        let hold = durable == Durable::Invoke && policy.held_on_recovery();
        let mut attempt = first_attempt;
        let offer = |attempt: u32| {
            self.announce_task(activity);
            self.tasks.offer(
                &id,
                Task {
                    instance: instance.to_string(),
                    call_id,
                    activity: activity.to_string(),
                    operation: operation.to_string(),
                    input: input.to_string(),
                    idempotency_key: idempotency_key.to_string(),
                    attempt,
                    first_attempt,
                    retry: policy.retry.clone(),
                    hold,
                    durable,
                    since_ms: now_ms(),
                    lease: None,
                    completing: false,
                    recording: false,
                    events: tx.clone(),
                },
            )
        };
        offer(attempt);
        let mut deadline = deadline;
        loop {
            let event = match deadline {
                Some(d) => tokio::select! {
                    e = rx.recv() => e,
                    _ = tokio::time::sleep_until(d) => {
                        if self.tasks.withdraw(&id) {
                            return Some(Err(timeout()));
                        }
                        // A completion (whose outcome then wins) or a lease
                        // is being recorded: look again shortly.
                        deadline = Some(tokio::time::Instant::now() + Duration::from_millis(20));
                        continue;
                    }
                },
                None => rx.recv().await,
            };
            let after_ms = match event {
                None => return Some(Err(Fault::new("cairn.internal", "the task's channel closed"))),
                Some(Event::Done(result)) => return Some(result),
                Some(Event::Again { after_ms }) => after_ms,
                Some(Event::LeaseExpired) if hold => {
                    self.hold_task(instance, call_id, activity, operation, idempotency_key).await;
                    return None;
                }
                Some(Event::LeaseExpired) => {
                    // A lost worker is not a failure of the task: offered
                    // again, after the retry policy's first backoff if it has one.
                    tracing::warn!(instance, "task {id} ('{operation}' on external activity '{activity}'): the lease of attempt {attempt} expired; offered again");
                    policy.retry.as_ref().map_or(0, |r| r.initial_backoff_ms)
                }
            };
            let pause = tokio::time::sleep(Duration::from_millis(after_ms));
            match deadline {
                Some(d) => {
                    tokio::select! { _ = pause => {}, _ = tokio::time::sleep_until(d) => return Some(Err(timeout())) }
                }
                None => pause.await,
            }
            if self.is_shutting_down() {
                return None;
            }
            attempt += 1;
            offer(attempt);
        }
    }

    /// A non-idempotent task whose lease expired: held for an operator (the
    /// worker may or may not have carried it out).
    async fn hold_task(&self, instance: &str, call_id: u64, activity: &str, operation: &str, idempotency_key: &str) {
        let record = InTransit {
            instance: instance.to_string(),
            call_id,
            state: InTransitState::Held,
            since_ms: now_ms(),
            target: Target::Activity(activity.to_string()),
            operation: operation.to_string(),
            idempotency_key: idempotency_key.to_string(),
            result: None,
        };
        let mut b = WriteBatch::new();
        b.push(Write::InTransit(Box::new(record)));
        // Should the write fail, the `Leased` record holds it after a restart all the same.
        if let Err(e) = self.store.commit(b).await {
            tracing::error!(instance, "recording held task {call_id}: {e}");
        }
        tracing::warn!(
            instance,
            "the lease of non-idempotent task {instance}:{call_id} ('{operation}' on external activity '{activity}') expired: held for an operator (cairn in-transit ls)"
        );
    }

    /// Long polling: waits up to `wait_ms` for tasks of the activity, leases
    /// up to `max` of them to the worker.
    ///
    /// Cluster mode: `elsewhere(max)`, if given, asks the other hosts for up
    /// to `max` of their tasks without waiting (each leases its own: a task's
    /// lease lives where its instance runs). It is called when nothing is
    /// offered here: at once, whenever another host announces a task of the
    /// activity, and every `ASK_AGAIN` while the poll waits. Tasks come
    /// from one place per answer, so none is leased and then dropped here.
    pub async fn poll_tasks<F, Fut>(&self, r: PollRequest, mut elsewhere: Option<F>) -> Result<Polled, Error>
    where
        F: FnMut(usize) -> Fut,
        Fut: std::future::Future<Output = Vec<serde_json::Value>>,
    {
        if self.registry.external(&r.activity).is_none() {
            // Cluster mode: deployed through another host a moment ago?
            if self.cluster.is_some() {
                let _ = self.registry.refresh().await;
            }
            if self.registry.external(&r.activity).is_none() {
                return Err(Error::new(ErrorKind::NotFound, format!("no external activity named '{}' is deployed (cairn deploy --external NAME)", r.activity)));
            }
        }
        let deadline = tokio::time::Instant::now() + Duration::from_millis(r.wait_ms.min(MAX_POLL_WAIT_MS));
        // When the other hosts were asked last, and how many announcements there had been.
        let mut asked: Option<(tokio::time::Instant, u64)> = None;
        loop {
            let notified = self.tasks.offered.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let announced = self.tasks.offered_elsewhere.notified();
            tokio::pin!(announced);
            announced.as_mut().enable();
            if self.tasks.closing() {
                return Ok(Polled::Here(Vec::new()));
            }
            let taken = self.tasks.take(&r);
            if !taken.is_empty() {
                return self.record_leases(taken).await.map(Polled::Here);
            }
            if let Some(ask) = elsewhere.as_mut() {
                let count = self.tasks.announcements(&r.activity);
                let due = asked.is_none_or(|(at, seen)| seen != count || at.elapsed() >= ASK_AGAIN);
                if due && !self.is_shutting_down() {
                    asked = Some((tokio::time::Instant::now(), count));
                    let got = ask(r.max).await;
                    if !got.is_empty() {
                        return Ok(Polled::Elsewhere(got));
                    }
                    // Look here again: a task may have come meanwhile.
                    continue;
                }
            }
            if self.is_shutting_down() || tokio::time::Instant::now() >= deadline {
                return Ok(Polled::Here(Vec::new()));
            }
            let again = match (&elsewhere, asked) {
                (Some(_), Some((at, _))) => (at + ASK_AGAIN).min(deadline),
                _ => deadline,
            };
            tokio::select! {
                _ = notified => {},
                _ = announced, if elsewhere.is_some() => {},
                _ = tokio::time::sleep_until(again) => {},
            }
        }
    }

    /// Writes `Leased` for the non-idempotent tasks taken, before any worker
    /// learns of them; on failure they are offered again and nothing is handed out.
    async fn record_leases(&self, taken: Vec<TaskInfo>) -> Result<Vec<TaskInfo>, Error> {
        let mut b = WriteBatch::new();
        {
            let s = self.tasks.state.lock().unwrap();
            for t in &taken {
                if let Some(task) = s.tasks.get(&t.id).filter(|task| task.hold) {
                    b.push(Write::InTransit(Box::new(InTransit {
                        instance: task.instance.clone(),
                        call_id: task.call_id,
                        state: InTransitState::Leased,
                        since_ms: now_ms(),
                        target: Target::Activity(task.activity.clone()),
                        operation: task.operation.clone(),
                        idempotency_key: task.idempotency_key.clone(),
                        result: None,
                    })));
                }
            }
        }
        if b.is_empty() {
            return Ok(taken);
        }
        let committed = self.store.commit(b).await;
        let mut s = self.tasks.state.lock().unwrap();
        for t in &taken {
            if let Some(task) = s.tasks.get_mut(&t.id) {
                task.recording = false;
            }
        }
        drop(s);
        if let Err(e) = committed {
            let mut s = self.tasks.state.lock().unwrap();
            for t in &taken {
                if let Some(task) = s.tasks.get_mut(&t.id) {
                    if task.lease.as_ref().is_some_and(|l| l.worker == t.lease.as_ref().map_or("", |l| &l.worker)) && task.attempt == t.attempt {
                        task.lease = None;
                        let activity = task.activity.clone();
                        s.waiting.entry(activity).or_default().push_front(t.id.clone());
                    }
                }
            }
            drop(s);
            self.tasks.offered.notify_waiters();
            return Err(e.into());
        }
        Ok(taken)
    }

    /// Extends the lease of attempt `attempt` of task `id` by its lease time (or `lease_ms`).
    pub fn heartbeat_task(&self, id: &str, holder: &Holder<'_>, lease_ms: Option<u64>) -> Result<TaskInfo, Error> {
        let mut s = self.tasks.state.lock().unwrap();
        let Some(task) = s.tasks.get_mut(id) else {
            return Err(conflict(format!("task '{id}' is not leased (completed, expired, or unknown)")));
        };
        check_lease(id, task, holder)?;
        let lease = task.lease.as_mut().expect("checked");
        let ms = lease_ms.unwrap_or(lease.lease_ms);
        lease.lease_ms = ms;
        lease.deadline_ms = now_ms() + ms;
        Ok(task.info(id))
    }

    /// A worker's completion or failure of attempt `attempt` of task `id`:
    /// made durable, then handed to the instance, then acknowledged.
    pub async fn finish_task(&self, id: &str, holder: &Holder<'_>, outcome: Outcome) -> Result<Acknowledged, Error> {
        let attempt = holder.attempt;
        let (task, result) = {
            let mut s = self.tasks.state.lock().unwrap();
            let Some(task) = s.tasks.get_mut(id) else {
                return match s.done.get(id) {
                    Some((a, _)) if *a == attempt => Ok(Acknowledged { duplicate: true, retrying: false }),
                    Some((a, _)) => Err(conflict(format!("task '{id}' was already completed, by attempt {a}"))),
                    None => Err(conflict(format!("task '{id}' is not leased (completed, or unknown)"))),
                };
            };
            check_lease(id, task, holder)?;
            if task.completing {
                return Err(Error::new(ErrorKind::Unavailable, format!("a completion of attempt {attempt} of task '{id}' is being recorded: try again")));
            }
            let result = match outcome {
                Outcome::Completed(output) => Ok(output),
                Outcome::Failed { fault, retryable } => {
                    let next = attempt - task.first_attempt + 2;
                    let again = retryable.then(|| task.retry.as_ref().and_then(|r| r.backoff(next, &fault.name))).flatten();
                    if let Some(after_ms) = again {
                        let task = s.tasks.remove(id).expect("present");
                        let _ = task.events.send(Event::Again { after_ms });
                        return Ok(Acknowledged { duplicate: false, retrying: true });
                    }
                    Err(fault)
                }
            };
            task.completing = true;
            (clone_fields(task), result)
        };
        let mut b = WriteBatch::new();
        match task.durable {
            Durable::Invoke => b.push(Write::InTransit(Box::new(InTransit {
                instance: task.instance.clone(),
                call_id: task.call_id,
                state: InTransitState::Completed,
                since_ms: now_ms(),
                target: Target::Activity(task.activity.clone()),
                operation: task.operation.clone(),
                idempotency_key: task.idempotency_key.clone(),
                result: Some(result.clone()),
            }))),
            Durable::Send => {
                b.push(Write::OutboxRemove { instance: task.instance.clone(), call_id: task.call_id });
                b.push(Write::InTransitRemove { instance: task.instance.clone(), call_id: task.call_id });
            }
            Durable::Inline => {}
        }
        if !b.is_empty() {
            if let Err(e) = self.store.commit(b).await {
                if let Some(t) = self.tasks.state.lock().unwrap().tasks.get_mut(id) {
                    t.completing = false;
                }
                return Err(e.into());
            }
        }
        crate::failpoint::hit("task-completed");
        let mut s = self.tasks.state.lock().unwrap();
        s.tasks.remove(id);
        s.done.insert(id.to_string(), (attempt, std::time::Instant::now()));
        let _ = task.events.send(Event::Done(result));
        Ok(Acknowledged { duplicate: false, retrying: false })
    }
}

fn clone_fields(t: &Task) -> Task {
    Task {
        instance: t.instance.clone(),
        call_id: t.call_id,
        activity: t.activity.clone(),
        operation: t.operation.clone(),
        input: String::new(),
        idempotency_key: t.idempotency_key.clone(),
        attempt: t.attempt,
        first_attempt: t.first_attempt,
        retry: None,
        hold: t.hold,
        durable: t.durable,
        since_ms: t.since_ms,
        lease: None,
        completing: true,
        recording: false,
        events: t.events.clone(),
    }
}

/// Who claims to hold a task's lease: its attempt, and if given, the worker
/// and the lease token.
pub struct Holder<'a> {
    pub attempt: u32,
    pub worker: Option<&'a str>,
    pub lease: Option<&'a str>,
}

/// Whether the holder's attempt (worker, token) holds the task's lease.
fn check_lease(id: &str, task: &Task, holder: &Holder<'_>) -> Result<(), Error> {
    let attempt = holder.attempt;
    let Some(lease) = &task.lease else {
        return Err(conflict(format!("task '{id}' is waiting for a worker: attempt {attempt} holds no lease")));
    };
    if task.attempt != attempt {
        return Err(conflict(format!("attempt {attempt} of task '{id}' no longer holds its lease: attempt {} does", task.attempt)));
    }
    if let Some(w) = holder.worker {
        if w != lease.worker {
            return Err(conflict(format!("the lease of task '{id}' is held by worker '{}', not '{w}'", lease.worker)));
        }
    }
    if let Some(t) = holder.lease {
        if t != lease.token {
            return Err(conflict(format!("lease '{t}' of task '{id}' is not its current lease (that lease is void: the task was offered again)")));
        }
    }
    Ok(())
}
