//! Cluster mode (`cairn serve --store postgres://… --node NAME`): this host's
//! part of a cluster of hosts over one PostgreSQL database.
//!
//! Owns nothing but the lease loop's bookkeeping; the partitions held and
//! their epochs live in the store's `cluster::Held`, which the committer
//! fences writes with. Rules:
//! - Only the lease loop (`run`) changes what is held. Every third of a lease
//!   it renews each lease; a partition missing from the renewal was lost: it
//!   is forgotten at once (its writes are fenced from then on) and its
//!   drivers stop. If renewals fail for two thirds of a lease, every
//!   partition is forgotten, before any lease can have expired.
//! - It then balances: it claims free partitions up to a fair share
//!   (ceil(partitions / live nodes)) and hands over those beyond it. A claim
//!   loads the partition's timers and recovers its instances (a lapsed lease
//!   is a crash, a released one a controlled stop); a handover stops taking
//!   work for the partition (`Held::drain`), stops its drivers (each takes a
//!   persistence point), drops its timers and releases the lease, so another
//!   host claims it at its next round.
//! - A driver runs only for an instance this host owns (`Service::owns`); a
//!   wake for another is a notification on the database's `cairn_wake`
//!   channel, which every host listens to (`listen`). A sweep every few rounds
//!   wakes owned instances with messages waiting, in case a notification was
//!   lost (a listener reconnecting).

use super::{Service, Wake};
use cairn_store::cluster::{Claimed, ClusterStatus, Leases};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Rounds of the lease loop between two sweeps of waiting inboxes.
const SWEEP_EVERY: u64 = 10;

pub struct Cluster {
    pub leases: Arc<Leases>,
    /// Partitions being handed over.
    handing_over: Mutex<HashSet<u32>>,
    /// Set once this host released its partitions at shutdown: the lease loop ends.
    left: AtomicBool,
    /// The cluster's status as the lease loop last read it, and when: the
    /// other hosts' addresses and who owns what (`peers`, `owner_elsewhere`).
    view: std::sync::RwLock<Option<(Instant, Arc<ClusterStatus>)>>,
}

impl Cluster {
    pub fn new(leases: Arc<Leases>) -> Cluster {
        Cluster { leases, handing_over: Mutex::new(HashSet::new()), left: AtomicBool::new(false), view: Default::default() }
    }

    fn lease(&self) -> Duration {
        Duration::from_millis(self.leases.config().lease_ms)
    }

    /// The status read last, if it is younger than `within`.
    fn cached(&self, within: Duration) -> Option<(Instant, Arc<ClusterStatus>)> {
        self.view.read().unwrap().clone().filter(|(at, _)| at.elapsed() < within)
    }

    /// Reads the status from the database and keeps it; a storage error if
    /// the database does not answer within a lease (a host cut off from it).
    async fn refresh(&self) -> cairn_store::Result<Arc<ClusterStatus>> {
        let read_at = Instant::now();
        let status = match tokio::time::timeout(self.lease(), self.leases.status()).await {
            Ok(status) => Arc::new(status?),
            Err(_) => {
                let ms = self.lease().as_millis();
                return Err(cairn_store::StoreError::Storage(format!("reading the cluster's status: no answer within {ms} ms")));
            }
        };
        *self.view.write().unwrap() = Some((read_at, status.clone()));
        Ok(status)
    }
}

impl Service {
    /// Whether this host runs instance `id`: always outside cluster mode; in
    /// a cluster, when it holds the instance's partition and is not handing it over.
    pub fn owns(&self, id: &str) -> bool {
        self.cluster.as_ref().is_none_or(|c| c.leases.held().owns(id))
    }

    /// Whether the driver of `id` must stop between two transitions: the
    /// host shuts down, or the instance's partition is leaving this host.
    pub fn must_stop(&self, id: &str) -> bool {
        self.is_shutting_down() || !self.owns(id)
    }

    /// Wakes `id` on the host that owns it (a notification through the database).
    pub fn notify_owner(&self, id: &str) {
        if let Some(c) = &self.cluster {
            let leases = c.leases.clone();
            let id = id.to_string();
            tokio::spawn(async move {
                if let Err(e) = leases.notify(&id).await {
                    tracing::warn!(instance = %id, "waking the owner of instance {id}: {e} (its owner's sweep finds it)");
                }
            });
        }
    }

    /// Tells the other hosts that the reply to `message_id` is stored (a
    /// caller may wait for it there); nothing outside cluster mode.
    pub fn notify_reply(&self, message_id: &str) {
        if let Some(c) = &self.cluster {
            let leases = c.leases.clone();
            let id = message_id.to_string();
            tokio::spawn(async move {
                if let Err(e) = leases.notify_on(cairn_store::cluster::REPLY_CHANNEL, &id).await {
                    tracing::debug!("telling the other hosts of the reply to {id}: {e} (their callers read it from the store)");
                }
            });
        }
    }

    /// Tells the other hosts that a task of external activity `activity` is
    /// offered here (their workers' polls ask this host); nothing outside
    /// cluster mode.
    pub fn announce_task(&self, activity: &str) {
        if let Some(c) = &self.cluster {
            let leases = c.leases.clone();
            let activity = activity.to_string();
            // Named by this host, whose own polls found the task already.
            let payload = format!("{}\n{activity}", leases.config().node);
            tokio::spawn(async move {
                if let Err(e) = leases.notify_on(cairn_store::cluster::TASK_CHANNEL, &payload).await {
                    tracing::debug!("telling the other hosts of a task of {activity}: {e} (their polls ask again within a second)");
                }
            });
        }
    }

    /// Cluster mode: the name and advertised address of every other live
    /// host (as the lease loop last saw them); empty outside cluster mode.
    pub async fn peers(&self) -> Vec<(String, String)> {
        let Some(c) = self.cluster.as_ref() else { return Vec::new() };
        let status = match c.cached(c.lease()) {
            Some((_, status)) => status,
            None => match c.refresh().await {
                Ok(status) => status,
                Err(e) => {
                    tracing::warn!("reading the cluster's nodes: {e}");
                    return Vec::new();
                }
            },
        };
        status.nodes.iter().filter(|n| n.live && n.name != status.node).map(|n| (n.name.clone(), n.advertise.clone())).collect()
    }

    /// Nodes, partitions, owners, epochs and lease ages; None outside cluster mode.
    pub async fn cluster_status(&self) -> Option<Result<ClusterStatus, super::Error>> {
        let c = self.cluster.as_ref()?;
        Some(c.leases.status().await.map_err(Into::into))
    }
}

/// The lease loop: renews, detects losses, claims and hands over partitions.
pub async fn run(svc: Service) {
    let Some(cluster) = svc.cluster.clone() else { return };
    let lease = cluster.lease();
    let tick = lease / 3;
    let held = cluster.leases.held().clone();
    let mut last_renewed = Instant::now();
    let mut failing = false;
    let mut round: u64 = 0;
    // Leases are renewed while a controlled shutdown stops the drivers, up to `leave`.
    while !cluster.left.load(Ordering::SeqCst) {
        let started = Instant::now();
        round += 1;
        let renewed = match tokio::time::timeout(tick, cluster.leases.renew()).await {
            Ok(Ok(still)) => {
                if failing {
                    tracing::info!("lease renewals succeed again");
                    failing = false;
                }
                last_renewed = started;
                let still: HashSet<u32> = still.into_iter().map(|(p, _)| p).collect();
                for (p, _) in held.held() {
                    if !still.contains(&p) {
                        tracing::warn!("partition {p}: lease lost; its instances stop here");
                        lose(&svc, p);
                    }
                }
                true
            }
            Ok(Err(e)) => {
                if !failing {
                    tracing::warn!("renewing the partition leases: {e}");
                }
                failing = true;
                false
            }
            Err(_) => {
                if !failing {
                    tracing::warn!("renewing the partition leases: no answer within {} ms", tick.as_millis());
                }
                failing = true;
                false
            }
        };
        if !renewed && last_renewed.elapsed() >= lease * 2 / 3 {
            let lost = held.held();
            if !lost.is_empty() {
                tracing::warn!("no lease renewed for {} ms: stopping the instances of {} partitions before their leases can expire", last_renewed.elapsed().as_millis(), lost.len());
            }
            for (p, _) in lost {
                lose(&svc, p);
            }
        }
        // Each step is bounded: the loop must come round again to notice a
        // lost database before the leases lapse.
        if renewed && !svc.is_shutting_down() {
            match tokio::time::timeout(tick, balance(&svc, &cluster)).await {
                Ok(Err(e)) => tracing::warn!("balancing partitions: {e}"),
                Err(_) => tracing::warn!("balancing partitions: no answer within {} ms", tick.as_millis()),
                Ok(Ok(())) => {}
            }
            // Who owns what and where the other hosts are, for forwarding.
            if let Ok(Err(e)) = tokio::time::timeout(tick, cluster.refresh()).await {
                tracing::debug!("reading the cluster's status: {e}");
            }
            // Versions deployed through another host.
            if let Ok(Err(e)) = tokio::time::timeout(tick, svc.registry.refresh()).await {
                tracing::warn!("reading deployed versions: {e:#}");
            }
            if round.is_multiple_of(SWEEP_EVERY) {
                let _ = tokio::time::timeout(tick, sweep(&svc)).await;
            }
        }
        if cluster.left.load(Ordering::SeqCst) {
            return;
        }
        tokio::time::sleep(tick.saturating_sub(started.elapsed())).await;
    }
}

/// Claims free partitions up to a fair share; hands over those beyond it.
async fn balance(svc: &Service, cluster: &Arc<Cluster>) -> cairn_store::Result<()> {
    let held = cluster.leases.held();
    let live = cluster.leases.live_nodes().await?;
    let target = held.count().div_ceil(live) as usize;
    let now_held = held.held();
    if now_held.len() < target {
        let claimed = cluster.leases.claim(target - now_held.len()).await?;
        if !claimed.is_empty() {
            // Held at once (the next claim must not take them again); their
            // timers and instances start in a task of their own, which the
            // loop's bound on this step cannot cut short.
            for c in &claimed {
                held.hold(c.partition, c.epoch);
            }
            tokio::spawn(acquire(svc.clone(), claimed));
        }
    } else if now_held.len() > target {
        let mut busy = cluster.handing_over.lock().unwrap();
        let excess = now_held.len() - target - busy.len().min(now_held.len() - target);
        let give: Vec<(u32, u64)> = now_held.into_iter().rev().filter(|(p, _)| !busy.contains(p)).take(excess).collect();
        for (p, epoch) in give {
            busy.insert(p);
            tokio::spawn(hand_over(svc.clone(), cluster.clone(), p, epoch));
        }
    }
    Ok(())
}

/// Starts running claimed (and held) partitions: their timers, then their instances.
async fn acquire(svc: Service, claimed: Vec<Claimed>) {
    let held = svc.cluster.as_ref().expect("cluster mode").leases.held().clone();
    let names: Vec<String> = claimed.iter().map(|c| format!("{}@{}", c.partition, c.epoch)).collect();
    tracing::info!("claimed partitions {}", names.join(", "));
    let partitions: HashSet<u32> = claimed.iter().map(|c| c.partition).collect();
    let crashed: HashSet<u32> = claimed.iter().filter(|c| !c.released).map(|c| c.partition).collect();
    let in_these = |id: &str| partitions.contains(&held.partition(id));
    if let Err(e) = svc.timers.load_where(&svc.store, in_these).await {
        tracing::error!("loading the timers of partitions {}: {e}", names.join(", "));
    }
    let of = held.clone();
    let scope = super::recovery::Scope {
        keep: Box::new(move |id: &str| partitions.contains(&held.partition(id))),
        crashed: Box::new(move |id: &str| crashed.contains(&of.partition(id))),
    };
    if let Err(e) = super::recovery::recover_scope(&svc, scope).await {
        tracing::error!("recovery of claimed partitions failed: {e:#}");
    }
}

/// A lost partition: fenced at once, its drivers and timers stopped here.
fn lose(svc: &Service, partition: u32) {
    let held = svc.cluster.as_ref().expect("cluster mode").leases.held().clone();
    held.forget(partition);
    let of = |id: &str| held.partition(id) == partition;
    svc.timers.drop_where(of);
    svc.drivers.signal_where(of);
}

/// Hands a partition over under control: no new work, drivers stopped
/// (each takes a persistence point), timers dropped, lease released.
async fn hand_over(svc: Service, cluster: Arc<Cluster>, partition: u32, epoch: u64) {
    let held = cluster.leases.held().clone();
    held.drain(partition);
    let of = |id: &str| held.partition(id) == partition;
    svc.drivers.stop_where(of, cluster.lease()).await;
    svc.timers.drop_where(of);
    // Still ours (not lost meanwhile): release it for another host.
    if held.epoch(partition) == Some(epoch) {
        match cluster.leases.release(partition, epoch).await {
            Ok(()) => tracing::info!("handed partition {partition} over"),
            Err(e) => tracing::warn!("releasing partition {partition}: {e} (its lease expires instead)"),
        }
        held.forget(partition);
    }
    cluster.handing_over.lock().unwrap().remove(&partition);
}

/// At a controlled shutdown, after every driver stopped: releases every
/// partition and leaves the cluster, so that the other hosts take over at
/// once instead of after the leases expire.
pub async fn leave(svc: &Service) {
    let Some(cluster) = &svc.cluster else { return };
    cluster.left.store(true, Ordering::SeqCst);
    let held = cluster.leases.held().clone();
    for (p, epoch) in held.held() {
        if let Err(e) = cluster.leases.release(p, epoch).await {
            tracing::warn!("releasing partition {p}: {e} (its lease expires instead)");
        }
        held.forget(p);
    }
    if let Err(e) = cluster.leases.leave().await {
        tracing::warn!("leaving the cluster: {e}");
    }
}

/// Listens for wake-ups and wakes the instances this host owns (and the
/// polls waiting here when another host offers a task); reconnects
/// (and sweeps, for what it missed) when the session ends.
pub async fn listen(svc: Service) {
    let Some(cluster) = svc.cluster.clone() else { return };
    let mut first = true;
    loop {
        if svc.is_shutting_down() {
            return;
        }
        match cluster.leases.listen().await {
            Ok(mut wakes) => {
                if !first {
                    sweep(&svc).await;
                }
                first = false;
                while let Some((channel, id)) = wakes.recv().await {
                    if channel == cairn_store::cluster::REPLY_CHANNEL {
                        if svc.replies.waits(&id) {
                            let svc = svc.clone();
                            tokio::spawn(async move {
                                if let Ok(Some(reply)) = svc.store.reply(&id).await {
                                    svc.replies.answer(&id, reply);
                                }
                            });
                        }
                    } else if channel == cairn_store::cluster::TASK_CHANNEL {
                        match id.split_once('\n') {
                            Some((from, _)) if from == cluster.leases.config().node => {}
                            Some((_, activity)) => svc.tasks.offered_elsewhere(activity),
                            None => svc.tasks.offered_elsewhere(&id),
                        }
                    } else if svc.owns(&id) {
                        svc.drivers.wake(&svc, &id, Wake::Resume);
                    }
                }
            }
            Err(e) => tracing::warn!("listening for wake-ups: {e}"),
        }
        tokio::time::sleep(cluster.lease() / 3).await;
    }
}

/// Wakes every owned instance that is not in memory and has something to
/// do: messages waiting, or running (one created on this host just as its
/// partition moved here, after the claim's recovery looked).
async fn sweep(svc: &Service) {
    let mut found = match svc.store.inbox_owners().await {
        Ok(owners) => owners,
        Err(e) => {
            tracing::warn!("sweeping waiting inboxes: {e}");
            Vec::new()
        }
    };
    let running = cairn_store::InstanceFilter { status: Some(cairn_engine::Status::Running), process: None, after: None, newest_first: false };
    match svc.store.instances(&running, usize::MAX).await {
        Ok(snapshots) => found.extend(snapshots.into_iter().map(|s| s.id)),
        Err(e) => tracing::warn!("sweeping running instances: {e}"),
    }
    for id in found {
        if svc.owns(&id) && !svc.drivers.in_memory(&id) {
            svc.drivers.wake(svc, &id, Wake::Resume);
        }
    }
}

impl Service {
    /// This host's node name in cluster mode.
    pub fn node_name(&self) -> Option<String> {
        self.cluster.as_ref().map(|c| c.leases.config().node.clone())
    }

    /// Cluster mode: the name and advertised address of the host whose
    /// lease covers instance `id`'s partition, if another live host holds
    /// it. `None` outside cluster mode, when this host owns it, or when no
    /// live host holds an unexpired lease on it (a handover under way).
    /// From the status the lease loop keeps while the lease it shows has
    /// time left; read afresh otherwise, or with `fresh`.
    pub async fn owner_elsewhere(&self, id: &str, fresh: bool) -> Result<Option<(String, String)>, super::Error> {
        let Some(c) = self.cluster.as_ref() else { return Ok(None) };
        if self.owns(id) {
            return Ok(None);
        }
        let partition = c.leases.held().partition(id);
        if !fresh {
            if let Some(found) = c.cached(c.lease()).and_then(|(at, status)| owner_in(&status, partition, at.elapsed())) {
                return Ok(Some(found));
            }
        }
        let status = c.refresh().await?;
        Ok(owner_in(&status, partition, Duration::ZERO))
    }
}

/// The other live host holding `partition` in `status`, read `age` ago,
/// under a lease that had more than `age` left then.
fn owner_in(status: &ClusterStatus, partition: u32, age: Duration) -> Option<(String, String)> {
    let age = i64::try_from(age.as_millis()).unwrap_or(i64::MAX);
    let p = status.owners.iter().find(|p| p.partition == partition && p.lease_remaining_ms > age)?;
    let owner = p.owner.clone().filter(|owner| *owner != status.node)?;
    let node = status.nodes.iter().find(|n| n.name == owner && n.live)?;
    Some((owner, node.advertise.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_store::cluster::{NodeStatus, PartitionStatus};

    fn status(me: &str, owner: &str, remaining_ms: i64, live: bool) -> ClusterStatus {
        let node = |name: &str, live: bool| NodeStatus { name: name.into(), advertise: format!("http://{name}"), heartbeat_age_ms: 0, live, partitions: 1 };
        ClusterStatus {
            node: me.into(),
            partitions: 2,
            lease_ms: 3000,
            nodes: vec![node(me, true), node(owner, live)],
            owners: vec![
                PartitionStatus { partition: 0, owner: Some(me.into()), epoch: 1, lease_remaining_ms: 3000, lease_age_ms: Some(0) },
                PartitionStatus { partition: 1, owner: Some(owner.into()), epoch: 4, lease_remaining_ms: remaining_ms, lease_age_ms: Some(0) },
            ],
        }
    }

    #[test]
    fn a_kept_status_names_an_owner_only_while_the_lease_it_shows_runs() {
        let s = status("a", "b", 2000, true);
        assert_eq!(owner_in(&s, 1, Duration::from_millis(500)), Some(("b".into(), "http://b".into())));
        // Read longer ago than the lease had left: the database is asked.
        assert_eq!(owner_in(&s, 1, Duration::from_millis(2000)), None);
        // This host's own partitions, and hosts no longer live, are nobody's to forward to.
        assert_eq!(owner_in(&s, 0, Duration::ZERO), None);
        assert_eq!(owner_in(&status("a", "b", 2000, false), 1, Duration::ZERO), None);
        assert_eq!(owner_in(&status("a", "b", -5, true), 1, Duration::ZERO), None);
    }
}
