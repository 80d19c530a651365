//! Cluster mode on PostgreSQL (`cairn serve --store postgres://… --node NAME`):
//! several hosts over one database, each instance in one of a fixed number
//! of partitions, each partition owned by one host under a lease. The
//! database's transactions decide who owns what; there is no other consensus.
//!
//! Tables (schema version 4, see `postgres::MIGRATIONS`):
//! - `cluster`    one row: the partition count, fixed by the first host that
//!   joins (later hosts take the stored count whatever they were given)
//! - `partitions` partition -> owner (NULL: free), epoch (one more at every
//!   claim), lease_until and acquired_at, all on the database's clock (`now()`)
//! - `nodes`      name -> advertised address, last heartbeat, start
//!
//! Fencing: a host's committer checks, in the transaction of every batch
//! that moves an instance's fence past 0, that the instance's partition is
//! still owned by this host under the epoch it holds and that its lease has
//! not lapsed (`SELECT … FOR SHARE`, so that a concurrent claim waits for the
//! commit, and the claim's new epoch is seen by every later batch). A batch
//! of a partition this host no longer holds is refused alone
//! (`StoreError::Fenced`). Creating an instance (fence 0 -> 1) is not fenced:
//! its id is new, so nobody else can write it, and any host may create one.
//!
//! Wake-ups: `pg_notify('cairn_wake', INSTANCE)` after an intake commits on a
//! host that does not own the instance; every host listens and wakes the
//! instances it owns. Likewise `cairn_reply` (a reply committed) and
//! `cairn_task` (a task offered, for workers polling another host).

use crate::error::{Result, StoreError};
use crate::postgres::{storage, Endpoint};
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, RwLock};
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, Client, NoTls};

/// The channel hosts listen on for wake-ups (payload: an instance id).
pub const WAKE_CHANNEL: &str = "cairn_wake";
/// The channel of replies committed (payload: the request's message id), for
/// hosts where a caller waits for a reply another host decided.
pub const REPLY_CHANNEL: &str = "cairn_reply";
/// The channel of tasks offered (payload: the offering node's name, a
/// newline, and the external activity's name),
/// for hosts where a worker polls for tasks that another host offers.
pub const TASK_CHANNEL: &str = "cairn_task";

/// How a host joins a cluster (`cairn serve --node …`).
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// This host's name, unique in the cluster.
    pub node: String,
    /// Where other hosts and clients reach this host's API.
    pub advertise: String,
    /// The partition count if this host creates the cluster.
    pub partitions: u32,
    /// How long a lease lasts without renewal.
    pub lease_ms: u64,
}

/// The partition of an instance: FNV-1a (64 bits) of its id's bytes, modulo
/// the partition count.
pub fn partition_of(instance: &str, count: u32) -> u32 {
    let hash = instance.as_bytes().iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3));
    (hash % u64::from(count.max(1))) as u32
}

/// The partitions this host holds, with their epochs: what the committer
/// fences writes with. A partition being handed over (`drain`) is still
/// held (its drivers write their last points) but owns no new work.
pub struct Held {
    pub node: String,
    lease_ms: u64,
    count: AtomicU32,
    epochs: RwLock<HashMap<u32, u64>>,
    draining: RwLock<HashSet<u32>>,
}

impl Held {
    fn new(node: &str, lease_ms: u64) -> Held {
        Held { node: node.to_string(), lease_ms, count: AtomicU32::new(1), epochs: Default::default(), draining: Default::default() }
    }

    /// How long a read or a commit may wait for the database: a host cut
    /// off from it fails its work instead of hanging past its leases.
    pub(crate) fn answer_within(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.lease_ms.max(1000))
    }

    /// The partition count of the cluster.
    pub fn count(&self) -> u32 {
        self.count.load(Ordering::Relaxed)
    }

    pub fn partition(&self, instance: &str) -> u32 {
        partition_of(instance, self.count())
    }

    /// The epoch this host holds `partition` under, if it does.
    pub fn epoch(&self, partition: u32) -> Option<u64> {
        self.epochs.read().unwrap().get(&partition).copied()
    }

    /// Whether this host runs `instance` now: it holds its partition and is not handing it over.
    pub fn owns(&self, instance: &str) -> bool {
        let p = self.partition(instance);
        self.epochs.read().unwrap().contains_key(&p) && !self.draining.read().unwrap().contains(&p)
    }

    /// Every partition held, with its epoch, in partition order.
    pub fn held(&self) -> Vec<(u32, u64)> {
        let mut v: Vec<(u32, u64)> = self.epochs.read().unwrap().iter().map(|(p, e)| (*p, *e)).collect();
        v.sort_unstable();
        v
    }

    /// Starts holding `partition` under `epoch`.
    pub fn hold(&self, partition: u32, epoch: u64) {
        self.draining.write().unwrap().remove(&partition);
        self.epochs.write().unwrap().insert(partition, epoch);
    }

    /// Stops taking new work for `partition`, still writing under its epoch.
    pub fn drain(&self, partition: u32) {
        self.draining.write().unwrap().insert(partition);
    }

    /// Forgets `partition`: every later write of its instances is fenced.
    pub fn forget(&self, partition: u32) {
        self.epochs.write().unwrap().remove(&partition);
        self.draining.write().unwrap().remove(&partition);
    }
}

/// A partition claimed by `Leases::claim`.
#[derive(Clone, Debug)]
pub struct Claimed {
    pub partition: u32,
    pub epoch: u64,
    /// The previous owner released it under control (or there was none);
    /// false when its lease expired (its owner crashed or was cut off).
    pub released: bool,
}

/// `GET /v1/cluster`: nodes, partitions, owners, epochs, lease ages.
#[derive(Clone, Debug, Serialize)]
pub struct ClusterStatus {
    /// The node answering.
    pub node: String,
    pub partitions: u32,
    pub lease_ms: u64,
    pub nodes: Vec<NodeStatus>,
    pub owners: Vec<PartitionStatus>,
}

#[derive(Clone, Debug, Serialize)]
pub struct NodeStatus {
    pub name: String,
    pub advertise: String,
    /// Milliseconds since its last heartbeat (on the database's clock).
    pub heartbeat_age_ms: i64,
    /// Its heartbeat is younger than one lease.
    pub live: bool,
    /// Partitions it holds under an unexpired lease.
    pub partitions: u32,
}

#[derive(Clone, Debug, Serialize)]
pub struct PartitionStatus {
    pub partition: u32,
    pub owner: Option<String>,
    pub epoch: u64,
    /// Milliseconds until its lease expires (negative: expired).
    pub lease_remaining_ms: i64,
    /// Milliseconds since its owner claimed it.
    pub lease_age_ms: Option<i64>,
}

/// The lease statements of one host, on a session of their own.
pub struct Leases {
    endpoint: Arc<Endpoint>,
    held: Arc<Held>,
    config: ClusterConfig,
    client: tokio::sync::RwLock<Option<Arc<Client>>>,
}

impl Leases {
    pub fn held(&self) -> &Arc<Held> {
        &self.held
    }

    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    /// The lease session, reopened if the server closed it.
    async fn client(&self) -> Result<Arc<Client>> {
        if let Some(c) = self.client.read().await.as_ref().filter(|c| !c.is_closed()) {
            return Ok(c.clone());
        }
        let mut slot = self.client.write().await;
        if let Some(c) = slot.as_ref().filter(|c| !c.is_closed()) {
            return Ok(c.clone());
        }
        let c = Arc::new(self.endpoint.connect().await?);
        *slot = Some(c.clone());
        Ok(c)
    }

    fn lease_ms(&self) -> f64 {
        self.config.lease_ms as f64
    }

    /// Creates the partitions (the first host fixes their count), records
    /// this node, and sets the count `Held` uses.
    async fn setup(&self) -> Result<()> {
        let c = self.client().await?;
        let want = i32::try_from(self.config.partitions.max(1)).unwrap_or(i32::MAX);
        c.execute("INSERT INTO cluster (one, partitions) VALUES (true, $1) ON CONFLICT (one) DO NOTHING", &[&want])
            .await
            .map_err(|e| storage("creating the cluster", e))?;
        let count: i32 = c
            .query_one("SELECT partitions FROM cluster", &[])
            .await
            .map_err(|e| storage("reading the partition count", e))?
            .get(0);
        c.execute("INSERT INTO partitions (partition) SELECT generate_series(0, $1 - 1) ON CONFLICT (partition) DO NOTHING", &[&count])
            .await
            .map_err(|e| storage("creating the partitions", e))?;
        self.held.count.store(count as u32, Ordering::Relaxed);
        self.heartbeat().await
    }

    /// Records that this node is alive (and where it is reached).
    pub async fn heartbeat(&self) -> Result<()> {
        let c = self.client().await?;
        c.execute(
            "INSERT INTO nodes (name, advertise, heartbeat, started_at) VALUES ($1, $2, now(), now())
             ON CONFLICT (name) DO UPDATE SET advertise = EXCLUDED.advertise, heartbeat = now()",
            &[&self.config.node, &self.config.advertise],
        )
        .await
        .map_err(|e| storage("recording the node's heartbeat", e))?;
        Ok(())
    }

    /// Renews the unexpired leases of the partitions this host holds and
    /// returns those it still holds, with their epochs. One missing from the
    /// answer was lost (expired, or claimed by another node). Each partition
    /// is renewed in a statement (a transaction) of its own, so that a
    /// renewal holds one row lock at a time and never deadlocks with a
    /// committer checking leases (`FOR SHARE`).
    pub async fn renew(&self) -> Result<Vec<(u32, u64)>> {
        self.heartbeat().await?;
        let c = self.client().await?;
        let mut still = Vec::new();
        for (partition, epoch) in self.held.held() {
            let n = c
                .execute(
                    "UPDATE partitions SET lease_until = now() + $4 * interval '1 millisecond'
                     WHERE partition = $1 AND owner = $2 AND epoch = $3 AND lease_until > now()",
                    &[&(partition as i32), &self.config.node, &(epoch as i64), &self.lease_ms()],
                )
                .await
                .map_err(|e| storage("renewing a lease", e))?;
            if n == 1 {
                still.push((partition, epoch));
            }
        }
        Ok(still)
    }

    /// Nodes whose heartbeat is younger than one lease.
    pub async fn live_nodes(&self) -> Result<u32> {
        let c = self.client().await?;
        let n: i64 = c
            .query_one(
                "SELECT count(*) FROM nodes WHERE heartbeat > now() - $1 * interval '1 millisecond'",
                &[&self.lease_ms()],
            )
            .await
            .map_err(|e| storage("counting live nodes", e))?
            .get(0);
        Ok(n.max(1) as u32)
    }

    /// Claims at most `max` free partitions (never owned, released, with an
    /// expired lease, or still recorded for this node's name by a previous
    /// run of it), each under a new epoch. Rows another transaction holds
    /// locked are skipped (`SKIP LOCKED`): a claim never waits.
    pub async fn claim(&self, max: usize) -> Result<Vec<Claimed>> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let c = self.client().await?;
        let mine: Vec<i32> = self.held.held().into_iter().map(|(p, _)| p as i32).collect();
        let rows = c
            .query(
                "WITH free AS (
                     SELECT partition, owner FROM partitions
                     WHERE (owner IS NULL OR lease_until < now() OR owner = $1) AND NOT (partition = ANY($4))
                     ORDER BY partition LIMIT $2 FOR UPDATE SKIP LOCKED)
                 UPDATE partitions p SET owner = $1, epoch = p.epoch + 1,
                     lease_until = now() + $3 * interval '1 millisecond', acquired_at = now()
                 FROM free WHERE p.partition = free.partition
                 RETURNING p.partition, p.epoch, free.owner IS NULL",
                &[&self.config.node, &(max.min(i64::MAX as usize) as i64), &self.lease_ms(), &mine],
            )
            .await
            .map_err(|e| storage("claiming partitions", e))?;
        let mut claimed: Vec<Claimed> = rows
            .iter()
            .map(|r| Claimed { partition: r.get::<_, i32>(0) as u32, epoch: r.get::<_, i64>(1) as u64, released: r.get(2) })
            .collect();
        claimed.sort_by_key(|c| c.partition);
        Ok(claimed)
    }

    /// Gives `partition` up (its drivers have stopped): free at once for another node.
    pub async fn release(&self, partition: u32, epoch: u64) -> Result<()> {
        let c = self.client().await?;
        c.execute(
            "UPDATE partitions SET owner = NULL, lease_until = now() WHERE partition = $1 AND owner = $2 AND epoch = $3",
            &[&(partition as i32), &self.config.node, &(epoch as i64)],
        )
        .await
        .map_err(|e| storage("releasing a partition", e))?;
        Ok(())
    }

    /// Removes this node from the nodes table (a controlled leave).
    pub async fn leave(&self) -> Result<()> {
        let c = self.client().await?;
        c.execute("DELETE FROM nodes WHERE name = $1", &[&self.config.node]).await.map_err(|e| storage("leaving the cluster", e))?;
        Ok(())
    }

    /// Wakes `instance` on whichever host owns it.
    pub async fn notify(&self, instance: &str) -> Result<()> {
        self.notify_on(WAKE_CHANNEL, instance).await
    }

    /// Sends `payload` to every host listening on `channel`.
    pub async fn notify_on(&self, channel: &str, payload: &str) -> Result<()> {
        let c = self.client().await?;
        c.execute("SELECT pg_notify($1, $2)", &[&channel, &payload]).await.map_err(|e| storage("notifying the other hosts", e))?;
        Ok(())
    }

    /// A new session listening on `WAKE_CHANNEL`, `REPLY_CHANNEL` and `TASK_CHANNEL`: every
    /// notification arrives on the receiver as (channel, payload); the
    /// receiver closes when the session ends.
    pub async fn listen(&self) -> Result<mpsc::UnboundedReceiver<(String, String)>> {
        let (client, mut connection) = self
            .endpoint
            .config
            .connect(NoTls)
            .await
            .map_err(|e| storage("connecting the wake-up listener", e))?;
        let (tx, rx) = mpsc::unbounded_channel();
        let driver = tokio::spawn(async move {
            loop {
                match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                    Some(Ok(AsyncMessage::Notification(n))) => {
                        if tx.send((n.channel().to_string(), n.payload().to_string())).is_err() {
                            return;
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => return,
                }
            }
        });
        client
            .batch_execute(&format!("LISTEN {WAKE_CHANNEL}; LISTEN {REPLY_CHANNEL}; LISTEN {TASK_CHANNEL}"))
            .await
            .map_err(|e| storage("listening for wake-ups", e))?;
        // The session lives as long as its connection.
        tokio::spawn(async move {
            let _client = client;
            let _ = driver.await;
        });
        Ok(rx)
    }

    /// Nodes, partitions, owners, epochs and lease ages, as the database holds them.
    pub async fn status(&self) -> Result<ClusterStatus> {
        let c = self.client().await?;
        let ms = |col: &str| format!("(extract(epoch from ({col})) * 1000)::bigint");
        let nodes = c
            .query(
                &format!(
                    "SELECT n.name, n.advertise, {}, n.heartbeat > now() - $1 * interval '1 millisecond',
                        (SELECT count(*) FROM partitions p WHERE p.owner = n.name AND p.lease_until > now())
                     FROM nodes n ORDER BY n.name",
                    ms("now() - n.heartbeat")
                ),
                &[&self.lease_ms()],
            )
            .await
            .map_err(|e| storage("reading the nodes", e))?;
        let parts = c
            .query(
                &format!(
                    // A partition never claimed has lease_until '-infinity',
                    // which PostgreSQL before 17 cannot subtract: -1 (expired).
                    "SELECT partition, owner, epoch, CASE WHEN isfinite(lease_until) THEN {} ELSE -1 END, {}
                     FROM partitions ORDER BY partition",
                    ms("lease_until - now()"),
                    ms("now() - acquired_at")
                ),
                &[],
            )
            .await
            .map_err(|e| storage("reading the partitions", e))?;
        Ok(ClusterStatus {
            node: self.config.node.clone(),
            partitions: self.held.count(),
            lease_ms: self.config.lease_ms,
            nodes: nodes
                .iter()
                .map(|r| NodeStatus {
                    name: r.get(0),
                    advertise: r.get(1),
                    heartbeat_age_ms: r.get(2),
                    live: r.get(3),
                    partitions: r.get::<_, i64>(4) as u32,
                })
                .collect(),
            owners: parts
                .iter()
                .map(|r| PartitionStatus {
                    partition: r.get::<_, i32>(0) as u32,
                    owner: r.get(1),
                    epoch: r.get::<_, i64>(2) as u64,
                    lease_remaining_ms: r.get(3),
                    lease_age_ms: r.get(4),
                })
                .collect(),
        })
    }
}

/// Opens the PostgreSQL store at `url` as one host of a cluster: the store
/// fences every instance write by this host's partition leases, and the
/// returned `Leases` claims and renews them (the host's lease loop drives it).
pub async fn join(url: &str, fsync: bool, config: ClusterConfig) -> Result<(crate::Store, Arc<Leases>)> {
    if config.node.is_empty() || config.node.contains('\0') {
        return Err(StoreError::Storage("--node must be a non-empty name".into()));
    }
    // A transaction left open by a host that was cut off would keep its
    // partitions' rows locked (claims skip locked rows): the server ends it.
    let extra = format!("-c idle_in_transaction_session_timeout={}", config.lease_ms.max(100));
    let endpoint = Arc::new(Endpoint::parse_with(url, fsync, Some(&extra))?);
    let held = Arc::new(Held::new(&config.node, config.lease_ms));
    let store = crate::postgres::open_endpoint(endpoint.clone(), Some(held.clone())).await?;
    let leases = Arc::new(Leases { endpoint, held, config, client: tokio::sync::RwLock::new(None) });
    leases.setup().await?;
    Ok((store, leases))
}
