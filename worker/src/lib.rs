//! `cairn-worker`: carry out the tasks of a Cairn *external activity* in a
//! plain Rust program, over the host's HTTP API only.
//!
//! ```no_run
//! use cairn_worker::{Failure, Worker};
//! let worker = Worker::new("http://127.0.0.1:7700", "account-service", "worker-1");
//! let stop = std::sync::atomic::AtomicBool::new(false);
//! worker.run(&stop, |task| match task.operation.as_str() {
//!     "status" => Ok(serde_json::json!({ "active": true })),
//!     other => Err(Failure::permanent("unknown-operation", other)),
//! });
//! ```
//!
//! A task carries its id, operation, input, idempotency key (the same for
//! every attempt: use it to make side effects idempotent), attempt and lease
//! deadline. Complete it, or fail it, before the deadline, or heartbeat to
//! keep it; a completion the host refuses (the lease passed to another
//! worker, or the task was completed) is `Error::Refused`.

use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// A task leased to this worker.
#[derive(Clone, Debug)]
pub struct Task {
    pub id: String,
    pub instance: String,
    pub operation: String,
    pub input: Value,
    pub idempotency_key: String,
    pub attempt: u32,
    pub lease_deadline_ms: u64,
    /// The lease's token, sent with every completion and heartbeat.
    pub lease: String,
}

/// Why a task failed: a fault for the process, and whether the invoke's retry policy may retry it.
#[derive(Clone, Debug)]
pub struct Failure {
    pub name: String,
    pub message: String,
    pub data: Value,
    pub retryable: bool,
}

impl Failure {
    /// A failure that may be retried (by the invoke's retry policy).
    pub fn retryable(name: &str, message: &str) -> Failure {
        Failure { name: name.into(), message: message.into(), data: Value::Null, retryable: true }
    }

    /// A failure that is not retried: the process gets the fault.
    pub fn permanent(name: &str, message: &str) -> Failure {
        Failure { name: name.into(), message: message.into(), data: Value::Null, retryable: false }
    }
}

#[derive(Debug)]
pub enum Error {
    /// 409: the attempt no longer holds the lease, or the task is already completed.
    Refused(String),
    /// Any other answer of the host that is not a success.
    Status(u16, String),
    /// The host could not be reached.
    Transport(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Refused(m) => write!(f, "refused: {m}"),
            Error::Status(s, m) => write!(f, "HTTP {s}: {m}"),
            Error::Transport(m) => write!(f, "transport: {m}"),
        }
    }
}

impl std::error::Error for Error {}

/// A worker of one external activity.
pub struct Worker {
    server: String,
    activity: String,
    name: String,
    operations: Vec<String>,
    token: Option<String>,
    lease_ms: u64,
    agent: ureq::Agent,
}

impl Worker {
    /// A worker `name` for `activity` on the host at `server` (`http://HOST:PORT`).
    pub fn new(server: &str, activity: &str, name: &str) -> Worker {
        let agent = ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(Duration::from_secs(120))).build().into();
        Worker {
            server: server.trim_end_matches('/').to_string(),
            activity: activity.to_string(),
            name: name.to_string(),
            operations: Vec::new(),
            token: None,
            lease_ms: 30_000,
            agent,
        }
    }

    /// A bearer token (role worker).
    pub fn with_token(mut self, token: &str) -> Worker {
        self.token = Some(token.to_string());
        self
    }

    /// Only these operations (default: every operation of the activity).
    pub fn with_operations(mut self, operations: &[&str]) -> Worker {
        self.operations = operations.iter().map(|s| s.to_string()).collect();
        self
    }

    /// How long a lease lasts without a heartbeat (default 30 s).
    pub fn with_lease(mut self, lease: Duration) -> Worker {
        self.lease_ms = lease.as_millis().max(1) as u64;
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn post(&self, path: &str, body: &Value) -> Result<Value, Error> {
        let mut r = self.agent.post(format!("{}{path}", self.server)).header("content-type", "application/json");
        if let Some(t) = &self.token {
            r = r.header("authorization", format!("Bearer {t}"));
        }
        let mut response = r.send(body.to_string().as_bytes()).map_err(|e| Error::Transport(e.to_string()))?;
        let status = response.status().as_u16();
        let v: Value = response.body_mut().read_json().unwrap_or(Value::Null);
        let message = || v["error"].as_str().unwrap_or("").to_string();
        match status {
            200..=299 => Ok(v),
            409 => Err(Error::Refused(message())),
            s => Err(Error::Status(s, message())),
        }
    }

    /// Waits up to `wait` (at most 60 s) for up to `max` tasks, and leases them.
    pub fn poll(&self, max: usize, wait: Duration) -> Result<Vec<Task>, Error> {
        let body = json!({
            "activity": self.activity,
            "operations": self.operations,
            "worker": self.name,
            "max": max,
            "wait_ms": wait.as_millis() as u64,
            "lease_ms": self.lease_ms,
        });
        let v = self.post("/v1/tasks/poll", &body)?;
        Ok(v["tasks"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|t| Task {
                id: t["id"].as_str().unwrap_or("").to_string(),
                instance: t["instance"].as_str().unwrap_or("").to_string(),
                operation: t["operation"].as_str().unwrap_or("").to_string(),
                input: t["input"].clone(),
                idempotency_key: t["idempotency_key"].as_str().unwrap_or("").to_string(),
                attempt: t["attempt"].as_u64().unwrap_or(0) as u32,
                lease_deadline_ms: t["lease_deadline_ms"].as_u64().unwrap_or(0),
                lease: t["lease"].as_str().unwrap_or("").to_string(),
            })
            .collect())
    }

    fn task_path(task: &Task, verb: &str) -> String {
        format!("/v1/tasks/{}/{verb}", task.id.replace('%', "%25").replace('/', "%2F"))
    }

    /// Completes the task with its output. Sent again after a lost answer,
    /// the same completion is accepted again (`duplicate`).
    pub fn complete(&self, task: &Task, output: &Value) -> Result<(), Error> {
        self.post(&Worker::task_path(task, "complete"), &json!({ "attempt": task.attempt, "worker": self.name, "lease": task.lease, "output": output })).map(|_| ())
    }

    /// Fails the task with a fault; a retryable one may be offered again.
    pub fn fail(&self, task: &Task, failure: &Failure) -> Result<(), Error> {
        let body = json!({
            "attempt": task.attempt,
            "worker": self.name,
            "lease": task.lease,
            "fault": { "name": failure.name, "message": failure.message, "data": failure.data },
            "retryable": failure.retryable,
        });
        self.post(&Worker::task_path(task, "fail"), &body).map(|_| ())
    }

    /// Extends the task's lease by the worker's lease time; returns the new deadline (ms since the epoch).
    pub fn heartbeat(&self, task: &Task) -> Result<u64, Error> {
        let v = self.post(&Worker::task_path(task, "heartbeat"), &json!({ "attempt": task.attempt, "worker": self.name, "lease": task.lease, "lease_ms": self.lease_ms }))?;
        Ok(v["lease_deadline_ms"].as_u64().unwrap_or(0))
    }

    /// Runs `work` while a thread heartbeats `task`'s lease every third of
    /// the lease time (until `work` returns or a heartbeat is refused).
    pub fn keeping_lease<T>(&self, task: &Task, work: impl FnOnce() -> T) -> T {
        let done = AtomicBool::new(false);
        let every = Duration::from_millis((self.lease_ms / 3).max(1));
        std::thread::scope(|scope| {
            scope.spawn(|| {
                let mut since = std::time::Instant::now();
                while !done.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(10).min(every));
                    if since.elapsed() >= every && !done.load(Ordering::SeqCst) {
                        since = std::time::Instant::now();
                        if let Err(e) = self.heartbeat(task) {
                            eprintln!("cairn-worker {}: heartbeat of task {} attempt {}: {e}", self.name, task.id, task.attempt);
                            if matches!(e, Error::Refused(_)) {
                                return;
                            }
                        }
                    }
                }
            });
            let out = work();
            done.store(true, Ordering::SeqCst);
            out
        })
    }

    /// Polls and carries out tasks one at a time until `stop` is set:
    /// `handler`'s output completes a task, its failure fails it. While the
    /// handler runs, a thread heartbeats the lease every third of its
    /// length, so a slow handler keeps its task. Refusals (a lease that
    /// passed on) and transport errors are reported on stderr and the loop
    /// goes on.
    pub fn run<F: FnMut(&Task) -> Result<Value, Failure>>(&self, stop: &AtomicBool, mut handler: F) {
        while !stop.load(Ordering::SeqCst) {
            let tasks = match self.poll(1, Duration::from_millis(500)) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("cairn-worker {}: poll: {e}", self.name);
                    std::thread::sleep(Duration::from_millis(200));
                    continue;
                }
            };
            for task in tasks {
                let result = self.keeping_lease(&task, || handler(&task));
                let outcome = match result {
                    Ok(output) => self.complete(&task, &output),
                    Err(f) => self.fail(&task, &f),
                };
                if let Err(e) = outcome {
                    eprintln!("cairn-worker {}: task {} attempt {}: {e}", self.name, task.id, task.attempt);
                }
            }
        }
    }
}
