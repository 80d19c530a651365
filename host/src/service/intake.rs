//! Intake: messages accepted exactly once by id, routed to an instance by
//! correlation or creating one through an instance-creating receive; and
//! instances started by name.
//!
//! Owns the reservations (routing decisions made but not yet committed, so
//! that concurrent intakes see them) and the inbox sequence. The
//! reservation lock is async and held across the store reads of one
//! decision; the commit happens outside it.

use super::{new_id, Error, ErrorKind, Service};
use crate::now_ms;
use cairn_engine::{self as engine, correlation_values, Delivery, Snapshot};
use cairn_store::{ComponentKind, CorrelationKey, HistoryEntry, IntakeRecord, Moved, Write, WriteBatch};
use serde::Serialize;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::registry::Deployed;

/// A message offered to intake.
pub struct MessageIn {
    pub id: Option<String>,
    pub operation: String,
    /// JSON text, already validated.
    pub body: String,
    /// Only an instance-creating receive may take it (start-process).
    pub create_only: bool,
    /// The send that carries this message, as (instance, call id): its
    /// outbox entry is removed in the intake's batch.
    pub sent_by: Option<(String, u64)>,
}

impl MessageIn {
    pub fn new(operation: impl Into<String>, body: impl Into<String>) -> MessageIn {
        MessageIn { id: None, operation: operation.into(), body: body.into(), create_only: false, sent_by: None }
    }

    /// The message's id: the one it was given, or a new one if none (or an empty one) was.
    pub fn id_or_new(&self) -> String {
        self.id.clone().filter(|i| !i.is_empty()).unwrap_or_else(new_id)
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Accepted {
    pub message_id: String,
    pub instance: String,
    pub created: bool,
    pub duplicate: bool,
}

#[derive(Default)]
struct Reservations {
    message_ids: HashMap<String, String>,
    correlations: HashMap<CorrelationKey, String>,
}

pub struct Intake {
    reservations: tokio::sync::Mutex<Reservations>,
    inbox_seq: AtomicU64,
}

/// Where intake sends a message.
enum Route {
    Existing(String),
    Create { deployed: Arc<Deployed>, correlation: Option<CorrelationKey> },
}

impl Intake {
    pub fn new() -> Intake {
        Intake { reservations: Default::default(), inbox_seq: AtomicU64::new(now_ms() * 1000) }
    }
}

impl Default for Intake {
    fn default() -> Intake {
        Intake::new()
    }
}

impl Service {
    /// Accepts a message exactly once by id: routes it by correlation to a
    /// waiting instance's inbox, or creates an instance through an
    /// instance-creating receive. `process` restricts routing to one process.
    pub async fn accept_message(&self, m: MessageIn, process: Option<&str>) -> Result<Accepted, Error> {
        if self.is_shutting_down() {
            return Err(Error::new(ErrorKind::Unavailable, "the host is shutting down"));
        }
        if m.operation.is_empty() {
            return Err(Error::new(ErrorKind::BadInput, "the message has no operation"));
        }
        let cap = self.config.limits.max_variables_bytes;
        if m.body.len() > cap {
            return Err(Error::new(
                ErrorKind::TooLarge,
                format!("cairn.too-large: the message body is {} bytes, more than the cap of {cap} bytes (serve --max-variables-bytes)", m.body.len()),
            ));
        }
        serde_json::from_str::<serde_json::Value>(&m.body)
            .map_err(|e| Error::new(ErrorKind::BadInput, format!("message body is not valid JSON: {e}")))?;
        let message_id = m.id_or_new();
        if message_id.contains('\0') {
            return Err(Error::new(ErrorKind::BadInput, "the message id contains a NUL character"));
        }

        // Decide under the lock, commit outside it: reservations make the
        // decision visible to concurrent intakes until the commit lands.
        let (route, instance, reserved) = {
            let mut res = self.intake.reservations.lock().await;
            if let Some(instance) = res.message_ids.get(&message_id) {
                return Ok(Accepted { message_id, instance: instance.clone(), created: false, duplicate: true });
            }
            if let Some(rec) = self.store.message(&message_id).await? {
                return Ok(Accepted { message_id, instance: rec.instance, created: false, duplicate: true });
            }
            let route = match self.route(&m, process, &res).await {
                // Cluster mode: the process may have been deployed through
                // another host a moment ago.
                Err(e) if e.kind == ErrorKind::NotFound && self.cluster.is_some() && self.registry.refresh().await.unwrap_or(0) > 0 => {
                    self.route(&m, process, &res).await?
                }
                r => r?,
            };
            let (instance, reserved) = match &route {
                Route::Existing(id) => (id.clone(), None),
                Route::Create { correlation, .. } => {
                    let id = new_id();
                    if let Some(k) = correlation {
                        res.correlations.insert(k.clone(), id.clone());
                    }
                    (id, correlation.clone())
                }
            };
            res.message_ids.insert(message_id.clone(), instance.clone());
            (route, instance, reserved)
        };
        // The commit and the release of the reservations run to the end even
        // if the caller goes away (a client that disconnects drops this
        // future); then whoever is still there wakes the instance: the caller
        // (so that it answers before the instance runs), or the task if the
        // caller is gone.
        let svc = self.clone();
        let (mid, inst) = (message_id.clone(), instance.clone());
        let created = matches!(route, Route::Create { .. });
        // A new long-running instance's driver already holds its message
        // (`driver::Creation`) and runs on: a wake would only make it wait
        // for the points it has in flight before it reads the inbox again.
        let driver_has_it = matches!(&route, Route::Create { deployed, .. }
            if deployed.definition().is_some_and(|d| d.kind == engine::ProcessKind::LongRunning))
            && self.owns(&instance);
        let (done, outcome) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let result = match &route {
                // A new instance of a long-running process: its driver
                // commits the intake's writes with its first persistence
                // point (the receive that consumes the message), and answers
                // once it has. A microflow's first point is its end, so its
                // message is stored at once.
                // (In a cluster, only if this host owns the new instance's
                // partition; otherwise it is stored here and its owner woken.)
                _ if driver_has_it => svc.create_instance(&m, &mid, &route, &inst).await,
                _ => svc.commit_intake(&m, &mid, &route, &inst).await,
            };
            let mut res = svc.intake.reservations.lock().await;
            res.message_ids.remove(&mid);
            if let Some(k) = reserved {
                res.correlations.remove(&k);
            }
            drop(res);
            let committed = result.is_ok();
            if done.send(result).is_err() && committed && !driver_has_it {
                svc.wake(&inst);
            }
        });
        let result = outcome.await.map_err(|_| Error::new(ErrorKind::Internal, "the intake task ended without an answer"))?;
        if let Err(e) = result {
            // Cluster mode: another host may have stored the same message id
            // first (the store refuses the second); that is a duplicate.
            if self.cluster.is_some() {
                if let Ok(Some(rec)) = self.store.message(&message_id).await {
                    return Ok(Accepted { message_id, instance: rec.instance, created: false, duplicate: true });
                }
            }
            return Err(e);
        }
        if !driver_has_it {
            self.wake(&instance);
        }
        Ok(Accepted { message_id, instance, created, duplicate: false })
    }

    async fn route(&self, m: &MessageIn, process: Option<&str>, res: &Reservations) -> Result<Route, Error> {
        let processes: Vec<Arc<Deployed>> =
            self.registry.processes().into_iter().filter(|d| process.is_none_or(|p| d.record.name == p)).collect();
        // 1. An instance that correlates: any version of the process may
        // hold it. With several instance-creating receives (in a flow), the
        // messages after the first route to the instance it created.
        let mut missing = Vec::new();
        for d in processes.iter().filter(|_| !m.create_only) {
            let def = d.definition().expect("process records hold their definition");
            let shared = def.creating_receive_count() > 1;
            for sub in def.subscriptions() {
                let Some(set_name) = &sub.correlation else { continue };
                if sub.creates_instance && !shared {
                    continue;
                }
                if sub.operation != m.operation {
                    continue;
                }
                let set = def.correlation_set(set_name).expect("validated at deploy");
                let values = match correlation_values(set, &m.body) {
                    Ok(v) => v,
                    Err(e) => {
                        missing.push(e);
                        continue;
                    }
                };
                let key = CorrelationKey { process: def.name.clone(), set: set_name.clone(), values };
                if let Some(id) = res.correlations.get(&key) {
                    return Ok(Route::Existing(id.clone()));
                }
                if let Some(id) = self.store.correlation(&key).await? {
                    return Ok(Route::Existing(id));
                }
            }
        }
        // 2. A process that creates instances on this operation (by a
        // receive, or a branch of a pick): its newest version.
        let mut creators: Vec<(Arc<Deployed>, engine::definition::Subscription)> = Vec::new();
        for d in processes.iter().filter(|d| self.registry.is_latest(d)) {
            let def = d.definition().expect("process records hold their definition");
            if let Some(sub) = def.creating_subscriptions().into_iter().find(|s| s.operation == m.operation) {
                creators.push((d.clone(), sub));
            }
        }
        creators.sort_by(|a, b| a.0.record.name.cmp(&b.0.record.name));
        if let Some((d, sub)) = creators.into_iter().next() {
            let def = d.definition().expect("process records hold their definition");
            let correlation = match &sub.correlation {
                Some(set_name) => {
                    let set = def.correlation_set(set_name).expect("validated at deploy");
                    let values = correlation_values(set, &m.body)
                        .map_err(|e| Error::new(ErrorKind::BadInput, format!("cannot start process '{}': {e}", def.name)))?;
                    let key = CorrelationKey { process: def.name.clone(), set: set_name.clone(), values };
                    let holder = match res.correlations.get(&key) {
                        Some(id) => Some(id.clone()),
                        None => self.store.correlation(&key).await?,
                    };
                    if let Some(holder) = holder {
                        return Err(Error::new(
                            ErrorKind::Conflict,
                            format!(
                                "correlation set '{set_name}' with values {} already belongs to instance {holder} of process '{}', which does not receive '{}' now",
                                key.values, def.name, m.operation
                            ),
                        ));
                    }
                    Some(key)
                }
                None => None,
            };
            return Ok(Route::Create { deployed: d, correlation });
        }
        let scope = process.map(|p| format!(" of process '{p}'")).unwrap_or_default();
        let mut msg = format!(
            "no instance{scope} correlates with this message and no process creates instances on operation '{}'",
            m.operation
        );
        if !missing.is_empty() {
            msg.push_str(&format!(" ({})", missing.join("; ")));
        }
        Err(Error::new(ErrorKind::NotFound, msg))
    }

    /// The intake's writes for `m`: the new instance (if it creates one),
    /// the message in the instance's inbox, its intake record (exactly once
    /// by id), and the sender's outbox entry gone. Returns them with the new
    /// instance's first snapshot and the delivery.
    fn intake_writes(&self, m: &MessageIn, message_id: &str, route: &Route, instance: &str) -> (WriteBatch, Option<Snapshot>, Delivery) {
        let now = now_ms();
        let mut b = WriteBatch::new();
        let mut created = None;
        if let Route::Create { deployed, correlation } = route {
            let def = deployed.definition().expect("process records hold their definition");
            let mut snap = Snapshot::new(instance.to_string(), def, deployed.record.version.clone(), def.initial_variables.clone(), now);
            if let Some(key) = correlation {
                snap.correlations.insert(key.set.clone(), key.values.clone());
                b.push(Write::Correlation { key: key.clone(), instance: instance.to_string() });
            }
            created = Some(put_new_instance(&mut b, snap, m.sent_by.as_ref()));
        }
        let seq = self.intake.inbox_seq.fetch_add(1, Ordering::SeqCst);
        let delivery = Delivery { seq, message_id: message_id.to_string(), operation: m.operation.clone(), body: m.body.clone() };
        b.push(Write::Inbox { instance: instance.to_string(), delivery: delivery.clone() });
        let record = IntakeRecord { instance: instance.to_string(), operation: m.operation.clone(), accepted_ms: now };
        b.push(Write::Message { id: message_id.to_string(), record });
        if let Some((sender, call_id)) = &m.sent_by {
            b.push(Write::OutboxRemove { instance: sender.clone(), call_id: *call_id });
        }
        (b, created, delivery)
    }

    async fn commit_intake(&self, m: &MessageIn, message_id: &str, route: &Route, instance: &str) -> Result<(), Error> {
        let (b, created, _) = self.intake_writes(m, message_id, route, instance);
        self.store.commit(b).await?;
        if let Some(snap) = created {
            self.metrics.instance_started(&snap.process);
        }
        Ok(())
    }

    /// Creates a new instance in memory and waits until its first
    /// persistence point, which carries the intake's writes, commits.
    async fn create_instance(&self, m: &MessageIn, message_id: &str, route: &Route, instance: &str) -> Result<(), Error> {
        let (writes, snapshot, delivery) = self.intake_writes(m, message_id, route, instance);
        let snapshot = snapshot.expect("a creating route creates an instance");
        let (ack, acked) = tokio::sync::oneshot::channel();
        let creation = super::driver::Creation::new(snapshot, delivery, writes, ack);
        self.drivers.create(self, instance, creation);
        acked.await.map_err(|_| Error::new(ErrorKind::Unavailable, "the new instance stopped before its first persistence point (the host is shutting down, or it could not be stored): nothing was accepted; send the message again"))?
    }

    /// Starts an instance of the newest version of `process`. If the process
    /// begins with an instance-creating receive, `input` is its message;
    /// otherwise `input` (an object) is merged into the initial variables.
    pub async fn start_instance(&self, process: &str, input: Option<serde_json::Value>) -> Result<Accepted, Error> {
        if self.is_shutting_down() {
            return Err(Error::new(ErrorKind::Unavailable, "the host is shutting down"));
        }
        let deployed = self
            .registry
            .latest(ComponentKind::Process, process)
            .ok_or_else(|| Error::new(ErrorKind::NotFound, format!("no process named '{process}' is deployed")))?;
        let def = deployed.definition().expect("process records hold their definition");
        if let Some(sub) = def.creating_subscriptions().into_iter().next() {
            let body = input.unwrap_or(serde_json::Value::Object(Default::default())).to_string();
            let m = MessageIn { create_only: true, ..MessageIn::new(sub.operation, body) };
            return self.accept_message(m, Some(process)).await;
        }
        let mut variables: serde_json::Value = serde_json::from_str(&def.initial_variables).map_err(anyhow::Error::from)?;
        match (input, &mut variables) {
            (None, _) => {}
            (Some(serde_json::Value::Object(fields)), serde_json::Value::Object(vars)) => vars.extend(fields),
            (Some(_), _) => {
                return Err(Error::new(
                    ErrorKind::BadInput,
                    format!("process '{process}' has no instance-creating receive, so its input must be a JSON object of variables"),
                ))
            }
        }
        let id = new_id();
        let snap = Snapshot::new(id.clone(), def, deployed.record.version.clone(), variables.to_string(), now_ms());
        let mut b = WriteBatch::new();
        put_new_instance(&mut b, snap, None);
        self.store.commit(b).await?;
        self.metrics.instance_started(process);
        self.wake(&id);
        Ok(Accepted { message_id: String::new(), instance: id, created: true, duplicate: false })
    }
}

/// A new instance's first persistence point: fence 1, its snapshot and its
/// `created` history entry, naming the instance that sent the creating
/// message (`sent_by`: its parent), if one did. Returns the snapshot as written.
fn put_new_instance(b: &mut WriteBatch, mut snap: Snapshot, sent_by: Option<&(String, u64)>) -> Snapshot {
    snap.fence = 1;
    b.fence(&snap.id, 0, 1);
    let moved_by = sent_by.map(|(instance, call_id)| Moved::StartedBy { instance: instance.clone(), call_id: *call_id }).into_iter().collect();
    let entry =
        HistoryEntry { fence: 1, at_ms: snap.created_ms, reason: engine::Reason::Created, status: snap.status, path: String::new(), resource_conflicts: 0, moved_by };
    b.push(Write::History { instance: snap.id.clone(), entry });
    b.push(Write::Instance(Box::new(snap.clone())));
    snap
}
