//! The PostgreSQL backend (`cairn serve --store postgres://…`): one SQL table
//! per store table, and the group committer.
//!
//! This module owns the schema. `MIGRATIONS` is an ordered list; the version
//! a database has reached is the one row of `cairn_schema_version`, and
//! `open` applies the newer migrations in one transaction under an advisory
//! lock, so hosts starting together migrate once. A database migrated by a
//! newer cairn is refused. Record bodies are `codec` records in `bytea`
//! columns (their format byte kept); keys are columns, text keys in the "C"
//! collation so that listings come back in the byte order RocksDB gives:
//! - `definitions`  version -> `DeployedRecord` and the component bytes (raw)
//! - `instances`    id -> `Snapshot`; process and status copied out of the
//!   snapshot for filtering and counting
//! - `fences`       instance -> fence
//! - `inbox`        (instance, seq) -> `Delivery`
//! - `outbox`       (instance, call id) -> `Effect`
//! - `timers`       (instance, timer id, due ms), no body
//! - `correlations` (process, set, values JSON) -> instance id; unique on
//!   md5(values) so that long values stay within index limits
//! - `messages`     id -> `IntakeRecord`
//! - `history`      (instance, fence) -> `HistoryEntry`
//! - `replies`      message id -> `Reply`
//! - `in_transit`   (instance, call id) -> `InTransit`
//! - `breakpoints`  (process, path); `parked` (instance)
//! - `meta`         `clean-shutdown` and `isolated` (empty) and `store-format` (one byte)
//! - `resource_names` name -> `ResourceInfo` (schema version 2)
//! - `tokens`     id -> `TokenRecord` (schema version 3)
//! - `cluster`, `partitions`, `nodes`: cluster mode's partition leases
//!   (schema version 4; `cluster.rs`)
//! - `resource_rows`  (name, key) -> version and the value (a `String`
//!   record of its JSON text), NULL for a tombstone. A row at version 0
//!   with a NULL value is a key that was checked while absent (see below):
//!   it reads as absent, and a backup leaves it out.
//!
//! u64 values are stored in `bigint` columns as their i64 bit pattern.
//!
//! Invariants of the committer (one task, one connection, the only writer
//! of this host):
//! - A batch commits inside a transaction that also moves its fences, each by
//!   `UPDATE fences SET fence = becomes WHERE fence = based_on` (or an insert
//!   when based on 0): a batch based on a stale fence changes nothing, and
//!   another host writing the same database is held to the same fences.
//! - Its resource checks likewise: a check of version v > 0 is `SELECT … FOR
//!   UPDATE` of the row at that version (locked, so that a concurrent writer
//!   waits and is then held to the version it finds), a check of 0 inserts a
//!   placeholder row at version 0 unless a row above 0 is there. A put or
//!   delete is an upsert to version + 1 (1 for a new row); within the group
//!   transaction each batch sees the versions the batches before it left.
//! - Concurrent batches share one transaction (one WAL flush). The group is
//!   first sent as one pipeline without savepoints; if any fence fails or
//!   any statement errors, it is rolled back and replayed with a savepoint
//!   per batch, so a bad batch is rejected alone and the rest commit.
//! - A batch is answered only after the COMMIT that carries it returns.
//!
//! - Cluster mode (`cluster::join`): a batch that moves an instance's fence
//!   past 0 also checks, in its transaction, that this host holds the
//!   instance's partition under the epoch it believes (`lease_check`, `FOR
//!   SHARE`), or is refused alone (`StoreError::Fenced`); a message record is
//!   inserted only if no host stored its id before (`StoreError::Duplicate`),
//!   and a new instance's correlation only if no other instance holds its
//!   values (`StoreError::Correlated`).
//!
//! Reads go to a small round-robin set of other connections (tokio-postgres
//! pipelines concurrent queries on one connection); no read connection ever
//! opens a transaction. Every connection prepares every statement once.

use crate::batch::{Write, WriteBatch};
use crate::codec::{self, decode, encode};
use crate::error::{Result, StoreError};
use crate::records::*;
use crate::rocks::RocksStore;
use crate::Backend;
use cairn_engine::{Delivery, Effect, Snapshot, Status};
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock};
use std::task::Poll;
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::config::Host;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Config, NoTls, Row, Statement};

/// The schema, one migration per entry: entry `i` takes the database to
/// version `i + 1`. Entries are never edited once released, only appended.
const MIGRATIONS: &[&str] = &[r#"
CREATE TABLE definitions (
    version   text COLLATE "C" PRIMARY KEY,
    record    bytea NOT NULL,
    component bytea NOT NULL
);
CREATE TABLE instances (
    id       text COLLATE "C" PRIMARY KEY,
    process  text COLLATE "C" NOT NULL,
    status   text COLLATE "C" NOT NULL,
    snapshot bytea NOT NULL
);
CREATE INDEX instances_by_process ON instances (process, status, id);
CREATE INDEX instances_by_status ON instances (status, id);
CREATE TABLE fences (
    instance text COLLATE "C" PRIMARY KEY,
    fence    bigint NOT NULL
);
CREATE TABLE inbox (
    instance text COLLATE "C" NOT NULL,
    seq      bigint NOT NULL,
    delivery bytea NOT NULL,
    PRIMARY KEY (instance, seq)
);
CREATE TABLE outbox (
    instance text COLLATE "C" NOT NULL,
    call_id  bigint NOT NULL,
    effect   bytea NOT NULL,
    PRIMARY KEY (instance, call_id)
);
CREATE TABLE timers (
    instance text COLLATE "C" NOT NULL,
    timer_id bigint NOT NULL,
    due_ms   bigint NOT NULL,
    PRIMARY KEY (instance, timer_id, due_ms)
);
CREATE TABLE correlations (
    process  text COLLATE "C" NOT NULL,
    set_name text COLLATE "C" NOT NULL,
    vals     text COLLATE "C" NOT NULL,
    instance text COLLATE "C" NOT NULL
);
CREATE UNIQUE INDEX correlations_key ON correlations (process, set_name, (md5(vals)));
CREATE TABLE messages (
    id     text COLLATE "C" PRIMARY KEY,
    record bytea NOT NULL
);
CREATE TABLE history (
    instance text COLLATE "C" NOT NULL,
    fence    bigint NOT NULL,
    entry    bytea NOT NULL,
    PRIMARY KEY (instance, fence)
);
CREATE TABLE replies (
    message_id text COLLATE "C" PRIMARY KEY,
    reply      bytea NOT NULL
);
CREATE TABLE in_transit (
    instance text COLLATE "C" NOT NULL,
    call_id  bigint NOT NULL,
    record   bytea NOT NULL,
    PRIMARY KEY (instance, call_id)
);
CREATE TABLE breakpoints (
    process text COLLATE "C" NOT NULL,
    path    text COLLATE "C" NOT NULL,
    PRIMARY KEY (process, path)
);
CREATE TABLE parked (
    instance text COLLATE "C" PRIMARY KEY
);
CREATE TABLE meta (
    name  text COLLATE "C" PRIMARY KEY,
    value bytea NOT NULL
);
"#, r#"
CREATE TABLE resource_names (
    name text COLLATE "C" PRIMARY KEY,
    info bytea NOT NULL
);
CREATE TABLE resource_rows (
    name    text COLLATE "C" NOT NULL,
    key     text COLLATE "C" NOT NULL,
    version bigint NOT NULL,
    value   bytea,
    PRIMARY KEY (name, key)
);
"#, r#"
CREATE TABLE tokens (
    id     text COLLATE "C" PRIMARY KEY,
    record bytea NOT NULL
);
"#, r#"
CREATE TABLE cluster (
    one        boolean PRIMARY KEY DEFAULT true CHECK (one),
    partitions integer NOT NULL CHECK (partitions > 0)
);
CREATE TABLE partitions (
    partition   integer PRIMARY KEY,
    owner       text COLLATE "C",
    epoch       bigint NOT NULL DEFAULT 0,
    lease_until timestamptz NOT NULL DEFAULT '-infinity',
    acquired_at timestamptz
);
CREATE TABLE nodes (
    name       text COLLATE "C" PRIMARY KEY,
    advertise  text NOT NULL,
    heartbeat  timestamptz NOT NULL,
    started_at timestamptz NOT NULL
);
"#];

/// Read connections beside the committer's.
const READERS: usize = 4;
/// Batches per group transaction. Each batch replayed under a savepoint is a
/// subtransaction; PostgreSQL tracks 64 per backend before it overflows to
/// the slower pg_subtrans lookups.
const MAX_GROUP: usize = 64;
/// A backup commits to the RocksDB copy every this many writes and fences,
const BACKUP_CHUNK: usize = 1000;
/// ... or every this many bytes of records.
const BACKUP_CHUNK_BYTES: usize = 32 << 20;
/// The advisory lock key that serializes migrations ("cairn").
const MIGRATION_LOCK: i64 = 0x63_6169_726e;
const CLEAN_SHUTDOWN: &str = "clean-shutdown";
const ISOLATED: &str = "isolated";
const STORE_FORMAT: &str = "store-format";

/// A failed statement as a storage error that names what was being done,
/// in the server's own words when the server refused it (tokio-postgres
/// alone says only "db error").
pub(crate) fn storage(what: &str, e: impl std::borrow::Borrow<tokio_postgres::Error>) -> StoreError {
    let e = e.borrow();
    match e.as_db_error() {
        Some(db) => StoreError::storage(format!("{what}: {db}")),
        None => StoreError::storage(format!("{what}: {e}")),
    }
}

/// The rows that decode; each one that does not is reported to `damage` and skipped.
fn decodable<T>(damage: &crate::health::Damage, rows: impl Iterator<Item = Result<T>>) -> Vec<T> {
    rows.filter_map(|r| r.map_err(|e| damage.note(e)).ok()).collect()
}

/// A u64 as its bigint column holds it.
fn int(v: u64) -> i64 {
    v as i64
}

/// A bigint column read back as the u64 it holds.
fn uint(row: &Row, i: usize) -> u64 {
    row.get::<_, i64>(i) as u64
}

/// The key of a resource row, for error messages.
fn row_key(name: &str, key: &str) -> String {
    format!("{name}/{key}")
}

/// The key of an instance-scoped record, for error messages.
fn scoped(instance: &str, n: u64) -> String {
    format!("{instance}/{n}")
}

/// Declares `Statements`, every statement a connection prepares at start.
macro_rules! statements {
    ($($name:ident = $sql:expr;)*) => {
        struct Statements {
            $($name: Statement,)*
        }

        impl Statements {
            /// Prepares them all in one pipeline.
            async fn prepare(client: &Client) -> Result<Statements> {
                let sql: &[&str] = &[$($sql),*];
                let calls = sql.iter().map(|s| -> Call<'_, _> { Box::pin(client.prepare(s)) }).collect();
                let mut prepared = pipeline(calls).await.into_iter().zip(sql);
                let mut next = || match prepared.next() {
                    Some((Ok(statement), _)) => Ok(statement),
                    Some((Err(e), sql)) => Err(storage(&format!("preparing `{sql}`"), e)),
                    None => unreachable!("one statement per SQL text"),
                };
                Ok(Statements { $($name: next()?,)* })
            }
        }
    };
}

statements! {
    // fences
    fence = "SELECT fence FROM fences WHERE instance = $1";
    fence_first = "INSERT INTO fences (instance, fence) VALUES ($1, $2)
                   ON CONFLICT (instance) DO UPDATE SET fence = EXCLUDED.fence WHERE fences.fence = 0";
    fence_next = "UPDATE fences SET fence = $3 WHERE instance = $1 AND fence = $2";
    // definitions
    definitions = "SELECT version, record FROM definitions ORDER BY version";
    component = "SELECT component FROM definitions WHERE version = $1";
    put_definition = "INSERT INTO definitions (version, record, component) VALUES ($1, $2, $3)
                      ON CONFLICT (version) DO UPDATE SET record = EXCLUDED.record, component = EXCLUDED.component";
    // instances
    instance = "SELECT snapshot FROM instances WHERE id = $1";
    instances_all = "SELECT id, snapshot FROM instances WHERE id > $2 ORDER BY id LIMIT $1";
    instances_status = "SELECT id, snapshot FROM instances WHERE status = $1 AND id > $3 ORDER BY id LIMIT $2";
    instances_process = "SELECT id, snapshot FROM instances WHERE process = $1 AND id > $3 ORDER BY id LIMIT $2";
    instances_both = "SELECT id, snapshot FROM instances WHERE process = $1 AND status = $2 AND id > $4 ORDER BY id LIMIT $3";
    // Newest first, after `after` (or from the newest when it is empty).
    instances_all_desc = "SELECT id, snapshot FROM instances WHERE ($2 = '' OR id < $2) ORDER BY id DESC LIMIT $1";
    instances_status_desc = "SELECT id, snapshot FROM instances WHERE status = $1 AND ($3 = '' OR id < $3) ORDER BY id DESC LIMIT $2";
    instances_process_desc = "SELECT id, snapshot FROM instances WHERE process = $1 AND ($3 = '' OR id < $3) ORDER BY id DESC LIMIT $2";
    instances_both_desc = "SELECT id, snapshot FROM instances WHERE process = $1 AND status = $2 AND ($4 = '' OR id < $4) ORDER BY id DESC LIMIT $3";
    count_instances = "SELECT count(*) FROM instances WHERE status = $1";
    count_all_instances = "SELECT count(*) FROM instances";
    put_instance = "INSERT INTO instances (id, process, status, snapshot) VALUES ($1, $2, $3, $4)
                    ON CONFLICT (id) DO UPDATE SET process = EXCLUDED.process, status = EXCLUDED.status, snapshot = EXCLUDED.snapshot";
    delete_instance = "DELETE FROM instances WHERE id = $1";
    // inbox and outbox
    inbox = "SELECT seq, delivery FROM inbox WHERE instance = $1 ORDER BY seq";
    inbox_owners = "SELECT DISTINCT instance FROM inbox ORDER BY instance";
    put_inbox = "INSERT INTO inbox (instance, seq, delivery) VALUES ($1, $2, $3)
                 ON CONFLICT (instance, seq) DO UPDATE SET delivery = EXCLUDED.delivery";
    delete_inbox = "DELETE FROM inbox WHERE instance = $1 AND seq = $2";
    outbox = "SELECT call_id, effect FROM outbox WHERE instance = $1 ORDER BY call_id";
    all_outbox = "SELECT instance, call_id, effect FROM outbox ORDER BY instance, call_id";
    put_outbox = "INSERT INTO outbox (instance, call_id, effect) VALUES ($1, $2, $3)
                  ON CONFLICT (instance, call_id) DO UPDATE SET effect = EXCLUDED.effect";
    delete_outbox = "DELETE FROM outbox WHERE instance = $1 AND call_id = $2";
    // timers
    timers = "SELECT due_ms, instance, timer_id FROM timers ORDER BY due_ms, instance, timer_id";
    put_timer = "INSERT INTO timers (instance, timer_id, due_ms) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING";
    delete_timer = "DELETE FROM timers WHERE instance = $1 AND timer_id = $2 AND due_ms = $3";
    // correlations
    correlation = "SELECT instance FROM correlations
                   WHERE process = $1 AND set_name = $2 AND md5(vals) = md5($3::text) AND vals = $3::text";
    put_correlation = "INSERT INTO correlations (process, set_name, vals, instance) VALUES ($1, $2, $3, $4)
                       ON CONFLICT (process, set_name, (md5(vals))) DO UPDATE SET vals = EXCLUDED.vals, instance = EXCLUDED.instance";
    delete_correlation = "DELETE FROM correlations
                          WHERE process = $1 AND set_name = $2 AND md5(vals) = md5($3::text) AND vals = $3::text";
    // cluster mode
    lease_check = "SELECT 1 FROM partitions WHERE partition = $1 AND owner = $2 AND epoch = $3 AND lease_until > now() FOR SHARE";
    insert_message = "INSERT INTO messages (id, record) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING";
    // A new instance's correlation: one row if it is now this instance's,
    // none if another instance holds the values (a concurrent insert of the
    // same values waits for the other transaction, then finds its row).
    claim_correlation = "INSERT INTO correlations (process, set_name, vals, instance) VALUES ($1, $2, $3, $4)
                         ON CONFLICT (process, set_name, (md5(vals))) DO UPDATE SET vals = EXCLUDED.vals
                         WHERE correlations.instance = EXCLUDED.instance AND correlations.vals = EXCLUDED.vals";
    // messages and replies
    message = "SELECT record FROM messages WHERE id = $1";
    put_message = "INSERT INTO messages (id, record) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET record = EXCLUDED.record";
    reply = "SELECT reply FROM replies WHERE message_id = $1";
    put_reply = "INSERT INTO replies (message_id, reply) VALUES ($1, $2)
                 ON CONFLICT (message_id) DO UPDATE SET reply = EXCLUDED.reply";
    // history
    history = "SELECT fence, entry FROM history WHERE instance = $1 ORDER BY fence";
    put_history = "INSERT INTO history (instance, fence, entry) VALUES ($1, $2, $3)
                   ON CONFLICT (instance, fence) DO UPDATE SET entry = EXCLUDED.entry";
    prune_history = "DELETE FROM history WHERE instance = $1 AND fence < $2";
    delete_history = "DELETE FROM history WHERE instance = $1";
    // held calls
    in_transit_all = "SELECT instance, call_id, record FROM in_transit ORDER BY instance, call_id";
    in_transit_of = "SELECT instance, call_id, record FROM in_transit WHERE instance = $1 ORDER BY call_id";
    in_transit_call = "SELECT record FROM in_transit WHERE instance = $1 AND call_id = $2";
    put_in_transit = "INSERT INTO in_transit (instance, call_id, record) VALUES ($1, $2, $3)
                      ON CONFLICT (instance, call_id) DO UPDATE SET record = EXCLUDED.record";
    delete_in_transit = "DELETE FROM in_transit WHERE instance = $1 AND call_id = $2";
    // meta
    breakpoints = "SELECT process, path FROM breakpoints ORDER BY process, path";
    put_breakpoint = "INSERT INTO breakpoints (process, path) VALUES ($1, $2) ON CONFLICT DO NOTHING";
    delete_breakpoint = "DELETE FROM breakpoints WHERE process = $1 AND path = $2";
    parked = "SELECT instance FROM parked ORDER BY instance";
    put_parked = "INSERT INTO parked (instance) VALUES ($1) ON CONFLICT DO NOTHING";
    delete_parked = "DELETE FROM parked WHERE instance = $1";
    meta = "SELECT value FROM meta WHERE name = $1";
    put_meta = "INSERT INTO meta (name, value) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value";
    delete_meta = "DELETE FROM meta WHERE name = $1";
    // resources
    tokens = "SELECT id, record FROM tokens ORDER BY id";
    put_token = "INSERT INTO tokens (id, record) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET record = EXCLUDED.record";
    delete_token = "DELETE FROM tokens WHERE id = $1";
    resources = "SELECT name, info FROM resource_names ORDER BY name";
    put_resource_name = "INSERT INTO resource_names (name, info) VALUES ($1, $2)
                         ON CONFLICT (name) DO UPDATE SET info = EXCLUDED.info";
    resource_get = "SELECT version, value FROM resource_rows WHERE name = $1 AND key = $2";
    resource_scan = "SELECT key, version, value FROM resource_rows
                     WHERE name = $1 AND key >= $2 AND starts_with(key, $2) AND ($3::text IS NULL OR key > $3::text)
                       AND value IS NOT NULL
                     ORDER BY key LIMIT $4";
    resource_version = "SELECT version FROM resource_rows WHERE name = $1 AND key = $2";
    resource_check = "SELECT 1 FROM resource_rows WHERE name = $1 AND key = $2 AND version = $3 FOR UPDATE";
    resource_check_absent = "INSERT INTO resource_rows (name, key, version, value) VALUES ($1, $2, 0, NULL)
                             ON CONFLICT (name, key) DO UPDATE SET version = 0 WHERE resource_rows.version = 0";
    put_resource_row = "INSERT INTO resource_rows (name, key, version, value) VALUES ($1, $2, 1, $3)
                        ON CONFLICT (name, key) DO UPDATE SET version = resource_rows.version + 1, value = EXCLUDED.value";
    delete_resource_row = "INSERT INTO resource_rows (name, key, version, value) VALUES ($1, $2, 1, NULL)
                           ON CONFLICT (name, key) DO UPDATE SET version = resource_rows.version + 1, value = NULL";
    restore_resource_row = "INSERT INTO resource_rows (name, key, version, value) VALUES ($1, $2, $3, $4)
                            ON CONFLICT (name, key) DO UPDATE SET version = EXCLUDED.version, value = EXCLUDED.value";
}

// ---------------------------------------------------------------------------
// Connections

/// Where the store is: the parsed URL, and how to name it without its password.
pub(crate) struct Endpoint {
    pub(crate) config: Config,
    /// `HOST:PORT/DATABASE`, for messages.
    name: String,
    /// `SET synchronous_commit = off` on every connection (`fsync == false`).
    fsync: bool,
}

impl Endpoint {
    fn parse(url: &str, fsync: bool) -> Result<Endpoint> {
        Endpoint::parse_with(url, fsync, None)
    }

    /// As `parse`, with more server options (`-c NAME=VALUE …`) for every session.
    pub(crate) fn parse_with(url: &str, fsync: bool, extra: Option<&str>) -> Result<Endpoint> {
        let mut config: Config =
            url.parse().map_err(|e| StoreError::Storage(format!("the PostgreSQL store URL is not valid: {e}")))?;
        if config.get_application_name().is_none() {
            config.application_name("cairn");
        }
        // A server that stops answering is an error after a while, never a
        // committer that hangs forever (and a shutdown behind it).
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(std::time::Duration::from_secs(10));
        }
        config.keepalives(true).keepalives_idle(std::time::Duration::from_secs(30));
        if config.get_options().is_none() {
            config.options("-c statement_timeout=60000");
        }
        if let Some(extra) = extra {
            let options = format!("{} {extra}", config.get_options().unwrap_or(""));
            config.options(options.trim());
        }
        let host = match config.get_hosts().first() {
            Some(Host::Tcp(h)) => h.clone(),
            #[cfg(unix)]
            Some(Host::Unix(dir)) => dir.display().to_string(),
            None => "localhost".to_string(),
        };
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let db = config.get_dbname().or(config.get_user()).unwrap_or("postgres");
        let name = format!("{host}:{port}/{db}");
        Ok(Endpoint { config, name, fsync })
    }

    /// A new session; its connection runs as a task until the client is dropped.
    pub(crate) async fn connect(&self) -> Result<Client> {
        let (client, connection) = self
            .config
            .connect(NoTls)
            .await
            .map_err(|e| storage(&format!("connecting to the PostgreSQL store at {}", self.name), e))?;
        // Its error, if any, is what the next query on `client` reports.
        tokio::spawn(async move {
            let _ = connection.await;
        });
        if !self.fsync {
            client.batch_execute("SET synchronous_commit = off").await.map_err(|e| storage("turning synchronous_commit off", e))?;
        }
        Ok(client)
    }
}

/// A session with every statement prepared.
struct Conn {
    client: Client,
    st: Statements,
}

impl Conn {
    async fn open(endpoint: &Endpoint) -> Result<Conn> {
        let client = endpoint.connect().await?;
        Conn::ready(client).await
    }

    async fn ready(client: Client) -> Result<Conn> {
        let st = Statements::prepare(&client).await?;
        Ok(Conn { client, st })
    }
}

/// Brings the schema up to this host's version in one transaction.
async fn migrate(client: &mut Client, endpoint: &Endpoint) -> Result<()> {
    let at = &endpoint.name;
    let failed = |what: &str, e: tokio_postgres::Error| storage(&format!("{what} of the PostgreSQL store at {at}"), e);
    let tx = client.transaction().await.map_err(|e| failed("starting the migration", e))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await.map_err(|e| failed("locking the schema", e))?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS cairn_schema_version (
             one boolean PRIMARY KEY DEFAULT true CHECK (one),
             version integer NOT NULL
         )",
    )
    .await
    .map_err(|e| failed("creating the schema version table", e))?;
    let stored: i32 = tx
        .query_opt("SELECT version FROM cairn_schema_version", &[])
        .await
        .map_err(|e| failed("reading the schema version", e))?
        .map(|r| r.get(0))
        .unwrap_or(0);
    let known = MIGRATIONS.len() as i32;
    if stored > known {
        return Err(StoreError::Storage(format!(
            "the PostgreSQL store at {at} has schema version {stored}, written by a newer cairn; this cairn knows versions up to {known}: run the newer cairn, or `cairn backup` it with that version and restore into a new data directory"
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(stored.max(0) as usize) {
        tx.batch_execute(sql).await.map_err(|e| failed(&format!("migrating to schema version {}", i + 1), e))?;
    }
    if stored < known {
        tx.execute(
            "INSERT INTO cairn_schema_version (one, version) VALUES (true, $1)
             ON CONFLICT (one) DO UPDATE SET version = EXCLUDED.version",
            &[&known],
        )
        .await
        .map_err(|e| failed("recording the schema version", e))?;
    }
    // The record format, as RocksDB's `store-format`: refuse records a newer cairn wrote.
    let format: Option<Vec<u8>> = tx
        .query_opt("SELECT value FROM meta WHERE name = $1", &[&STORE_FORMAT])
        .await
        .map_err(|e| failed("reading the store format", e))?
        .map(|r| r.get(0));
    match format {
        Some(v) if v.first().copied().unwrap_or(0) > codec::FORMAT => {
            return Err(StoreError::Storage(format!(
                "the PostgreSQL store at {at} was written in format {} by a newer cairn; this cairn reads format {} and older: run the newer cairn, or `cairn backup` it with that version and restore into a new data directory",
                v[0],
                codec::FORMAT
            )))
        }
        Some(_) => {}
        None => {
            tx.execute("INSERT INTO meta (name, value) VALUES ($1, $2)", &[&STORE_FORMAT, &vec![codec::FORMAT]])
                .await
                .map_err(|e| failed("stamping the store format", e))?;
        }
    }
    tx.commit().await.map_err(|e| failed("committing the migration", e))
}

/// Opens the store in the PostgreSQL database at `url`, migrating its schema.
pub async fn open(url: &str, fsync: bool) -> Result<crate::Store> {
    open_endpoint(Arc::new(Endpoint::parse(url, fsync)?), None).await
}

/// Opens the store at `endpoint`; with `held` (cluster mode) its committer
/// fences instance writes by the partition leases this host holds.
pub(crate) async fn open_endpoint(endpoint: Arc<Endpoint>, held: Option<Arc<crate::cluster::Held>>) -> Result<crate::Store> {
    let mut first = endpoint.connect().await?;
    migrate(&mut first, &endpoint).await?;
    let committer_conn = Conn::ready(first).await?;
    let mut readers = Vec::with_capacity(READERS);
    for _ in 0..READERS {
        readers.push(RwLock::new(Arc::new(Conn::open(&endpoint).await?)));
    }
    let (queue, requests) = mpsc::unbounded_channel();
    let stats = Arc::new(Stats::default());
    let health = Arc::new(crate::health::StoreHealth::default());
    let answer_within = held.as_ref().map(|h| h.answer_within());
    let committer = Committer {
        endpoint: endpoint.clone(),
        conn: Some(committer_conn),
        stats: stats.clone(),
        health: health.clone(),
        held,
        answer_within,
    };
    let handle = tokio::spawn(committer.run(requests));
    Ok(Arc::new(PgStore {
        endpoint,
        readers,
        next_reader: AtomicUsize::new(0),
        queue,
        committer: Mutex::new(Some(handle)),
        stats,
        health,
        answer_within,
    }))
}

// ---------------------------------------------------------------------------
// Pipelines

/// One statement in flight.
type Call<'a, T> = Pin<Box<dyn Future<Output = std::result::Result<T, tokio_postgres::Error>> + Send + 'a>>;

/// Runs `calls` concurrently on their connection and returns their results in
/// order. Each is polled first in order, which is when tokio-postgres sends
/// it: the server receives and runs them in this order, with one round trip
/// for all.
async fn pipeline<'a, T>(mut calls: Vec<Call<'a, T>>) -> Vec<std::result::Result<T, tokio_postgres::Error>> {
    let mut out: Vec<Option<_>> = calls.iter().map(|_| None).collect();
    let mut sent = false;
    let mut unfinished = 0;
    std::future::poll_fn(|cx| {
        if !sent {
            sent = true;
            for (call, slot) in calls.iter_mut().zip(out.iter_mut()) {
                if let Poll::Ready(result) = call.as_mut().poll(cx) {
                    *slot = Some(result);
                }
            }
        }
        // Responses come back in order: wait on the first unfinished call
        // (every pending one holds this task's waker).
        while unfinished < calls.len() {
            if out[unfinished].is_none() {
                match calls[unfinished].as_mut().poll(cx) {
                    Poll::Ready(result) => out[unfinished] = Some(result),
                    Poll::Pending => return Poll::Pending,
                }
            }
            unfinished += 1;
        }
        Poll::Ready(())
    })
    .await;
    out.into_iter().map(|r| r.expect("every call finished")).collect()
}

/// A simple-protocol statement (transaction control), as a pipeline call.
fn simple<'a>(client: &'a Client, sql: &'a str) -> Call<'a, u64> {
    Box::pin(async move { client.batch_execute(sql).await.map(|()| 0) })
}

type Param<'a> = Box<dyn ToSql + Sync + Send + 'a>;

macro_rules! params {
    ($($p:expr),* $(,)?) => { vec![$(Box::new($p) as Param<'_>),*] };
}

/// One statement of a batch: a fence check, or (part of) one write.
struct Op<'a> {
    stmt: &'a Statement,
    params: Vec<Param<'a>>,
    kind: OpKind,
}

#[derive(Clone, Copy)]
enum OpKind {
    /// Moves the batch's fence at this index; holds only if it changes one row.
    Fence(usize),
    /// The batch's resource check at this index; holds only if it finds (or inserts) one row.
    Check(usize),
    /// Writes this table.
    Write(&'static str),
    /// Cluster mode: this host still holds the partition of the batch's
    /// fence at this index under its epoch; holds only if it finds one row.
    Lease(usize, u32),
    /// Cluster mode: the batch's message record is new; holds only if it inserts one row.
    Unique,
    /// Cluster mode: the correlation written by the batch's write at this
    /// index, for an instance the batch creates, is held by no other
    /// instance; holds only if it inserts (or finds its own) one row.
    Claim(usize),
}

impl<'a> Op<'a> {
    fn call(&'a self, client: &'a Client) -> Call<'a, u64> {
        Box::pin(client.execute_raw(self.stmt, self.params.iter().map(|p| p.as_ref() as &(dyn ToSql + Sync))))
    }

    /// Whether the statement's result lets the batch commit.
    fn held(&self, result: &std::result::Result<u64, tokio_postgres::Error>) -> bool {
        match (self.kind, result) {
            (OpKind::Fence(_) | OpKind::Check(_) | OpKind::Lease(..) | OpKind::Unique | OpKind::Claim(_), Ok(rows)) => *rows == 1,
            (OpKind::Write(_), Ok(_)) => true,
            (_, Err(_)) => false,
        }
    }
}

/// The statements of one batch: its fences first, then its resource checks,
/// then its writes in order.
fn plan<'a>(st: &'a Statements, batch: &'a WriteBatch, held: Option<&crate::cluster::Held>) -> Vec<Op<'a>> {
    let mut ops = Vec::with_capacity(batch.fences.len() + batch.checks.len() + batch.writes.len() + 1);
    if let Some(held) = held {
        // Each partition once; a new instance (based on 0) is anyone's to create.
        let mut seen = Vec::new();
        for (i, f) in batch.fences.iter().enumerate().filter(|(_, f)| f.based_on > 0) {
            let partition = held.partition(&f.instance);
            if seen.contains(&partition) {
                continue;
            }
            seen.push(partition);
            // Not held: an epoch no partition has, so the check finds nothing.
            let epoch = held.epoch(partition).map_or(-1, int);
            let params = params![partition as i32, held.node.clone(), epoch];
            ops.push(Op { stmt: &st.lease_check, params, kind: OpKind::Lease(i, partition) });
        }
    }
    for (i, f) in batch.fences.iter().enumerate() {
        let (stmt, params) = if f.based_on == 0 {
            // Absent counts as 0, as in RocksDB.
            (&st.fence_first, params![f.instance.as_str(), int(f.becomes)])
        } else {
            (&st.fence_next, params![f.instance.as_str(), int(f.based_on), int(f.becomes)])
        };
        ops.push(Op { stmt, params, kind: OpKind::Fence(i) });
    }
    for (i, c) in batch.checks.iter().enumerate() {
        let (stmt, params) = if c.version == 0 {
            (&st.resource_check_absent, params![c.name.as_str(), c.key.as_str()])
        } else {
            (&st.resource_check, params![c.name.as_str(), c.key.as_str(), int(c.version)])
        };
        ops.push(Op { stmt, params, kind: OpKind::Check(i) });
    }
    // A new instance is created where the request landed: two hosts may
    // create instances with the same correlation values at once, and only
    // one of them may have it (a single host decides that in its intake).
    let creates = |instance: &str| batch.fences.iter().any(|f| f.instance == instance && f.based_on == 0);
    for (i, w) in batch.writes.iter().enumerate() {
        match w {
            Write::Message { id, record } if held.is_some() => {
                ops.push(Op { stmt: &st.insert_message, params: params![id.as_str(), encode(record)], kind: OpKind::Unique });
            }
            Write::Correlation { key, instance } if held.is_some() && creates(instance) => ops.push(Op {
                stmt: &st.claim_correlation,
                params: params![key.process.as_str(), key.set.as_str(), key.values.as_str(), instance.as_str()],
                kind: OpKind::Claim(i),
            }),
            w => plan_write(st, w, &mut ops),
        }
    }
    ops
}

/// The statements of one typed write (as `rocks::put_write` does it).
fn plan_write<'a>(st: &'a Statements, write: &'a Write, ops: &mut Vec<Op<'a>>) {
    let mut op = |table: &'static str, stmt: &'a Statement, params: Vec<Param<'a>>| {
        ops.push(Op { stmt, params, kind: OpKind::Write(table) })
    };
    match write {
        Write::Definition { record, component } => op(
            "definitions",
            &st.put_definition,
            params![record.version.as_str(), encode(record), component.as_slice()],
        ),
        Write::Instance(snap) => op(
            "instances",
            &st.put_instance,
            params![snap.id.as_str(), snap.process.as_str(), snap.status.as_str(), encode(snap)],
        ),
        Write::InstanceRemove { id } => {
            op("instances", &st.delete_instance, params![id.as_str()]);
            op("history", &st.delete_history, params![id.as_str()]);
        }
        Write::Inbox { instance, delivery } => {
            op("inbox", &st.put_inbox, params![instance.as_str(), int(delivery.seq), encode(delivery)])
        }
        Write::InboxRemove { instance, seq } => op("inbox", &st.delete_inbox, params![instance.as_str(), int(*seq)]),
        Write::Outbox { instance, call_id, effect } => {
            op("outbox", &st.put_outbox, params![instance.as_str(), int(*call_id), encode(effect)])
        }
        Write::OutboxRemove { instance, call_id } => {
            op("outbox", &st.delete_outbox, params![instance.as_str(), int(*call_id)])
        }
        Write::Timer(t) => op("timers", &st.put_timer, params![t.instance.as_str(), int(t.timer_id), int(t.due_ms)]),
        Write::TimerRemove(t) => {
            op("timers", &st.delete_timer, params![t.instance.as_str(), int(t.timer_id), int(t.due_ms)])
        }
        Write::Correlation { key, instance } => op(
            "correlations",
            &st.put_correlation,
            params![key.process.as_str(), key.set.as_str(), key.values.as_str(), instance.as_str()],
        ),
        Write::CorrelationRemove(key) => op(
            "correlations",
            &st.delete_correlation,
            params![key.process.as_str(), key.set.as_str(), key.values.as_str()],
        ),
        Write::Message { id, record } => op("messages", &st.put_message, params![id.as_str(), encode(record)]),
        Write::History { instance, entry } => {
            op("history", &st.put_history, params![instance.as_str(), int(entry.fence), encode(entry)])
        }
        Write::HistoryPrune { instance, below } => op(
            "history",
            &st.prune_history,
            params![instance.as_str(), i64::try_from(*below).unwrap_or(i64::MAX)],
        ),
        Write::Reply { message_id, reply } => op("replies", &st.put_reply, params![message_id.as_str(), encode(reply)]),
        Write::InTransit(t) => {
            op("in_transit", &st.put_in_transit, params![t.instance.as_str(), int(t.call_id), encode(t)])
        }
        Write::InTransitRemove { instance, call_id } => {
            op("in_transit", &st.delete_in_transit, params![instance.as_str(), int(*call_id)])
        }
        Write::Breakpoint { process, path, set: true } => {
            op("breakpoints", &st.put_breakpoint, params![process.as_str(), path.as_str()])
        }
        Write::Breakpoint { process, path, set: false } => {
            op("breakpoints", &st.delete_breakpoint, params![process.as_str(), path.as_str()])
        }
        Write::Parked { instance, parked: true } => op("parked", &st.put_parked, params![instance.as_str()]),
        Write::Parked { instance, parked: false } => op("parked", &st.delete_parked, params![instance.as_str()]),
        Write::CleanShutdown(true) => op("meta", &st.put_meta, params![CLEAN_SHUTDOWN, Vec::<u8>::new()]),
        Write::CleanShutdown(false) => op("meta", &st.delete_meta, params![CLEAN_SHUTDOWN]),
        Write::Isolated(true) => op("meta", &st.put_meta, params![ISOLATED, Vec::<u8>::new()]),
        Write::Isolated(false) => op("meta", &st.delete_meta, params![ISOLATED]),
        Write::ResourceCreate(info) => {
            op("resource_names", &st.put_resource_name, params![info.name.as_str(), encode(info)])
        }
        Write::Token(t) => op("tokens", &st.put_token, params![t.id.as_str(), encode(t)]),
        Write::TokenRevoke { id } => op("tokens", &st.delete_token, params![id.as_str()]),
        Write::ResourcePut { name, key, value } => {
            op("resource_rows", &st.put_resource_row, params![name.as_str(), key.as_str(), encode(value)])
        }
        Write::ResourceDelete { name, key } => {
            op("resource_rows", &st.delete_resource_row, params![name.as_str(), key.as_str()])
        }
        Write::ResourceRestore { name, key, version, value } => op(
            "resource_rows",
            &st.restore_resource_row,
            params![name.as_str(), key.as_str(), int(*version), value.as_ref().map(encode)],
        ),
    }
}

// ---------------------------------------------------------------------------
// The committer

type Done = oneshot::Sender<Result<()>>;

enum Request {
    Commit(WriteBatch, Done),
    /// Stop the committer once everything queued before is written.
    Close,
}

type Stats = crate::records::CommitCounters;

struct Committer {
    endpoint: Arc<Endpoint>,
    /// `None` after the connection was found closed and could not be reopened.
    conn: Option<Conn>,
    stats: Arc<Stats>,
    /// Whether writes fail, observed on every verdict.
    health: Arc<crate::health::StoreHealth>,
    /// Cluster mode: the partitions this host holds, which fence its writes.
    held: Option<Arc<crate::cluster::Held>>,
    /// Cluster mode: how long a group may wait for the database before its
    /// batches are answered with a storage error and the session dropped.
    answer_within: Option<std::time::Duration>,
}

/// The transaction itself failed (the connection, or transaction control):
/// nothing of the group is committed.
struct Broken(StoreError);

impl Committer {
    async fn run(mut self, mut queue: mpsc::UnboundedReceiver<Request>) {
        let stats = self.stats.clone();
        let mut closing = false;
        while !closing {
            let Some(Request::Commit(first, done)) = queue.recv().await else { break };
            let mut group = vec![(first, done)];
            while group.len() < MAX_GROUP {
                match queue.try_recv() {
                    Ok(Request::Commit(b, d)) => group.push((b, d)),
                    Ok(Request::Close) => {
                        closing = true;
                        break;
                    }
                    Err(_) => break,
                }
            }
            let (batches, dones): (Vec<WriteBatch>, Vec<Done>) = group.into_iter().unzip();
            let held = self.held.clone();
            let within = self.answer_within;
            let work = async {
                match self.connection().await {
                    Ok(conn) => Ok(commit_group(conn, &batches, &stats, held.as_deref()).await),
                    Err(e) => Err(e),
                }
            };
            let verdicts = match bounded(within, "committing a group of batches", work).await {
                Ok(verdicts) => verdicts,
                Err(e) => {
                    // No answer in time (cluster mode): whatever it sent may
                    // still arrive, and is then refused by its lease check
                    // or its session's idle-in-transaction timeout. A new session for the next group.
                    if within.is_some() {
                        self.conn = None;
                    }
                    vec![Err(e); batches.len()]
                }
            };
            for (done, verdict) in dones.into_iter().zip(verdicts) {
                self.health.writes.observe(&verdict);
                let _ = done.send(verdict);
            }
        }
    }

    /// The committer's session, reopened if the server closed it.
    async fn connection(&mut self) -> Result<&Conn> {
        if self.conn.as_ref().is_none_or(|c| c.client.is_closed()) {
            self.conn = None;
            self.conn = Some(Conn::open(&self.endpoint).await?);
        }
        Ok(self.conn.as_ref().expect("opened above"))
    }
}

/// Commits what it can of a group in one transaction; one verdict per batch.
async fn commit_group(conn: &Conn, batches: &[WriteBatch], stats: &Stats, held: Option<&crate::cluster::Held>) -> Vec<Result<()>> {
    // Cluster mode: a batch of a partition this host does not hold is
    // refused here, without a round trip (the database would refuse it too).
    let unheld: Vec<Option<StoreError>> = batches.iter().map(|b| held.and_then(|h| unheld(b, h))).collect();
    if unheld.iter().all(Option::is_none) {
        return commit_held(conn, batches, stats, held).await;
    }
    let rest: Vec<WriteBatch> = batches.iter().zip(&unheld).filter(|(_, u)| u.is_none()).map(|(b, _)| b.clone()).collect();
    let mut verdicts = if rest.is_empty() { Vec::new() } else { commit_held(conn, &rest, stats, held).await }.into_iter();
    unheld.into_iter().map(|u| u.map_or_else(|| verdicts.next().expect("one verdict per batch"), Err)).collect()
}

/// `StoreError::Fenced` if `batch` moves the fence of an instance whose
/// partition `held` does not hold.
fn unheld(batch: &WriteBatch, held: &crate::cluster::Held) -> Option<StoreError> {
    batch.fences.iter().filter(|f| f.based_on > 0).find_map(|f| {
        let partition = held.partition(&f.instance);
        held.epoch(partition).is_none().then(|| StoreError::Fenced { instance: f.instance.clone(), partition })
    })
}

async fn commit_held(conn: &Conn, batches: &[WriteBatch], stats: &Stats, held: Option<&crate::cluster::Held>) -> Vec<Result<()>> {
    let client = &conn.client;
    if batches.iter().any(|b| !b.fences.is_empty()) {
        crate::failpoint::hit("before-write");
    }
    let plans: Vec<Vec<Op>> = batches.iter().map(|b| plan(&conn.st, b, held)).collect();
    let verdicts = match optimistic(client, &plans).await {
        Ok(true) => Ok(vec![Ok(()); batches.len()]),
        Ok(false) => match client.batch_execute("ROLLBACK").await {
            Ok(()) => one_by_one(conn, batches, &plans).await,
            Err(e) => Err(Broken(storage("rolling back a group", e))),
        },
        Err(broken) => Err(broken),
    };
    let mut verdicts = match verdicts {
        Ok(v) => v,
        Err(Broken(e)) => {
            let _ = client.batch_execute("ROLLBACK").await;
            return vec![Err(e); batches.len()];
        }
    };
    let accepted = verdicts.iter().filter(|v| v.is_ok()).count();
    if accepted == 0 {
        let _ = client.batch_execute("ROLLBACK").await;
        return verdicts;
    }
    let result = client.batch_execute("COMMIT").await.map_err(|e| storage("committing a group of batches", e));
    stats.record(accepted);
    crate::failpoint::hit("after-commit");
    if let Err(e) = result {
        for v in verdicts.iter_mut().filter(|v| v.is_ok()) {
            *v = Err(e.clone());
        }
    }
    verdicts
}

/// Opens the transaction and sends every batch of the group in one pipeline,
/// without savepoints. True if every fence held and every statement
/// succeeded: the transaction is open and holds the whole group. False: it
/// must be rolled back.
async fn optimistic(client: &Client, plans: &[Vec<Op<'_>>]) -> std::result::Result<bool, Broken> {
    let mut calls = vec![simple(client, "BEGIN")];
    calls.extend(plans.iter().flatten().map(|op| op.call(client)));
    let results = pipeline(calls).await;
    if let Err(e) = &results[0] {
        return Err(Broken(storage("beginning a transaction", e)));
    }
    Ok(plans.iter().flatten().zip(&results[1..]).all(|(op, r)| op.held(r)))
}

/// Replays the group in a new transaction, each batch under a savepoint: a
/// batch whose fence does not hold or whose write fails is rolled back alone.
async fn one_by_one(conn: &Conn, batches: &[WriteBatch], plans: &[Vec<Op<'_>>]) -> std::result::Result<Vec<Result<()>>, Broken> {
    let client = &conn.client;
    client.batch_execute("BEGIN").await.map_err(|e| Broken(storage("beginning a transaction", e)))?;
    let mut verdicts = Vec::with_capacity(batches.len());
    for (batch, ops) in batches.iter().zip(plans) {
        let mut calls = vec![simple(client, "SAVEPOINT batch")];
        calls.extend(ops.iter().map(|op| op.call(client)));
        let results = pipeline(calls).await;
        if let Err(e) = &results[0] {
            return Err(Broken(storage("setting a savepoint", e)));
        }
        let failure = ops.iter().zip(&results[1..]).find(|(op, r)| !op.held(r));
        let Some((op, result)) = failure else {
            client.batch_execute("RELEASE SAVEPOINT batch").await.map_err(|e| Broken(storage("releasing a savepoint", e)))?;
            verdicts.push(Ok(()));
            continue;
        };
        client
            .batch_execute("ROLLBACK TO SAVEPOINT batch")
            .await
            .map_err(|e| Broken(storage("rolling back to a savepoint", e)))?;
        verdicts.push(Err(match (op.kind, result) {
            (OpKind::Fence(i), Ok(_)) => {
                let f = &batch.fences[i];
                let found = client
                    .query_opt(&conn.st.fence, &[&f.instance])
                    .await
                    .map_err(|e| Broken(storage("reading a fence", e)))?
                    .map_or(0, |row| uint(&row, 0));
                StoreError::Stale { instance: f.instance.clone(), expected: f.based_on, found }
            }
            (OpKind::Fence(i), Err(e)) => storage(&format!("checking the fence of instance {}", batch.fences[i].instance), e),
            (OpKind::Check(i), Ok(_)) => {
                let c = &batch.checks[i];
                let found = client
                    .query_opt(&conn.st.resource_version, &[&c.name, &c.key])
                    .await
                    .map_err(|e| Broken(storage("reading a resource version", e)))?
                    .map_or(0, |row| uint(&row, 0));
                StoreError::Conflict { resource: c.name.clone(), key: c.key.clone(), expected: c.version, found }
            }
            (OpKind::Check(i), Err(e)) => {
                let c = &batch.checks[i];
                storage(&format!("checking the version of resource {} key {}", c.name, c.key), e)
            }
            (OpKind::Lease(i, partition), Ok(_)) => StoreError::Fenced { instance: batch.fences[i].instance.clone(), partition },
            (OpKind::Lease(_, partition), Err(e)) => storage(&format!("checking the lease of partition {partition}"), e),
            (OpKind::Unique, Ok(_)) => {
                let id = batch.writes.iter().find_map(|w| match w {
                    Write::Message { id, .. } => Some(id.clone()),
                    _ => None,
                });
                StoreError::Duplicate { message_id: id.unwrap_or_default() }
            }
            (OpKind::Unique, Err(e)) => storage("writing messages", e),
            (OpKind::Claim(i), Ok(_)) => {
                let Write::Correlation { key, .. } = &batch.writes[i] else { unreachable!("a claim is a correlation's") };
                let holder = client
                    .query_opt(&conn.st.correlation, &[&key.process, &key.set, &key.values])
                    .await
                    .map_err(|e| Broken(storage("reading a correlation", e)))?
                    .map(|row| row.get::<_, String>(0))
                    .unwrap_or_default();
                StoreError::Correlated { process: key.process.clone(), set: key.set.clone(), values: key.values.clone(), holder }
            }
            (OpKind::Claim(_), Err(e)) => storage("writing correlations", e),
            (OpKind::Write(table), Err(e)) => storage(&format!("writing {table}"), e),
            (OpKind::Write(_), Ok(_)) => unreachable!("a write that succeeded holds"),
        }));
    }
    Ok(verdicts)
}

/// `work`, failed with a storage error if it does not end `within` (cluster
/// mode: a host cut off from the database must not wait on it forever).
async fn bounded<T>(within: Option<std::time::Duration>, what: &str, work: impl Future<Output = Result<T>>) -> Result<T> {
    match within {
        None => work.await,
        Some(limit) => tokio::time::timeout(limit, work).await.unwrap_or_else(|_| {
            Err(StoreError::Storage(format!("{what}: the PostgreSQL store did not answer within {} ms", limit.as_millis())))
        }),
    }
}

// ---------------------------------------------------------------------------
// The backend

pub struct PgStore {
    endpoint: Arc<Endpoint>,
    readers: Vec<RwLock<Arc<Conn>>>,
    next_reader: AtomicUsize,
    queue: mpsc::UnboundedSender<Request>,
    committer: Mutex<Option<tokio::task::JoinHandle<()>>>,
    stats: Arc<Stats>,
    health: Arc<crate::health::StoreHealth>,
    /// Cluster mode: how long a read (or a group commit) may wait for the database.
    answer_within: Option<std::time::Duration>,
}

impl PgStore {
    /// A read session, round robin; one the server closed is reopened.
    async fn reader(&self) -> Result<Arc<Conn>> {
        let slot = &self.readers[self.next_reader.fetch_add(1, Relaxed) % self.readers.len()];
        let conn = slot.read().expect("reader slot").clone();
        if !conn.client.is_closed() {
            return Ok(conn);
        }
        let fresh = Arc::new(Conn::open(&self.endpoint).await?);
        *slot.write().expect("reader slot") = fresh.clone();
        Ok(fresh)
    }

    async fn query(&self, what: &str, pick: fn(&Statements) -> &Statement, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>> {
        bounded(self.answer_within, what, async {
            let conn = self.reader().await?;
            conn.client.query(pick(&conn.st), params).await.map_err(|e| storage(what, e))
        })
        .await
    }

    async fn query_opt(&self, what: &str, pick: fn(&Statements) -> &Statement, params: &[&(dyn ToSql + Sync)]) -> Result<Option<Row>> {
        bounded(self.answer_within, what, async {
            let conn = self.reader().await?;
            conn.client.query_opt(pick(&conn.st), params).await.map_err(|e| storage(what, e))
        })
        .await
    }
}

#[async_trait::async_trait]
impl Backend for PgStore {
    fn submit(&self, batch: WriteBatch) -> crate::Committing {
        let (done, verdict) = oneshot::channel();
        match self.queue.send(Request::Commit(batch, done)) {
            Ok(()) => crate::Committing::queued(verdict),
            Err(_) => crate::Committing::refused(StoreError::Storage("the committer has stopped".into())),
        }
    }

    async fn definitions(&self) -> Result<Vec<DeployedRecord>> {
        let rows = self.query("reading definitions", |s| &s.definitions, &[]).await?;
        Ok(decodable(&self.health.damage, rows.iter().map(|r| decode("definitions", &r.get::<_, &str>(0), r.get(1)))))
    }

    async fn component(&self, version: &str) -> Result<Option<Vec<u8>>> {
        let row = self.query_opt("reading a component", |s| &s.component, &[&version]).await?;
        Ok(row.map(|r| r.get(0)))
    }

    async fn instance(&self, id: &str) -> Result<Option<Snapshot>> {
        match self.query_opt("reading an instance", |s| &s.instance, &[&id]).await? {
            Some(r) => decode("instances", &id, r.get(0)).map(Some).map_err(|e| self.health.damage.note(e)),
            None => Ok(None),
        }
    }

    async fn instances(&self, filter: &InstanceFilter, limit: usize) -> Result<Vec<Snapshot>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let status = filter.status.map(Status::as_str);
        let what = "listing instances";
        // Ids are compared in the "C" collation, as RocksDB orders its keys.
        let after = filter.after.as_deref().unwrap_or("");
        type Pick = fn(&Statements) -> &Statement;
        let desc = filter.newest_first;
        let rows = match (filter.process.as_deref(), status) {
            (None, None) => {
                let pick: Pick = if desc { |s| &s.instances_all_desc } else { |s| &s.instances_all };
                self.query(what, pick, &[&limit, &after]).await?
            }
            (None, Some(status)) => {
                let pick: Pick = if desc { |s| &s.instances_status_desc } else { |s| &s.instances_status };
                self.query(what, pick, &[&status, &limit, &after]).await?
            }
            (Some(process), None) => {
                let pick: Pick = if desc { |s| &s.instances_process_desc } else { |s| &s.instances_process };
                self.query(what, pick, &[&process, &limit, &after]).await?
            }
            (Some(process), Some(status)) => {
                let pick: Pick = if desc { |s| &s.instances_both_desc } else { |s| &s.instances_both };
                self.query(what, pick, &[&process, &status, &limit, &after]).await?
            }
        };
        Ok(decodable(&self.health.damage, rows.iter().map(|r| decode("instances", &r.get::<_, &str>(0), r.get(1)))))
    }

    async fn count_instances(&self, status: Status) -> Result<u64> {
        let row = self.query_opt("counting instances", |s| &s.count_instances, &[&status.as_str()]).await?;
        Ok(row.map_or(0, |r| uint(&r, 0)))
    }

    async fn count_all_instances(&self) -> Result<u64> {
        let row = self.query_opt("counting instances", |s| &s.count_all_instances, &[]).await?;
        Ok(row.map_or(0, |r| uint(&r, 0)))
    }

    async fn inbox(&self, instance: &str) -> Result<Vec<Delivery>> {
        let rows = self.query("reading an inbox", |s| &s.inbox, &[&instance]).await?;
        Ok(decodable(&self.health.damage, rows.iter().map(|r| decode("inbox", &scoped(instance, uint(r, 0)), r.get(1)))))
    }

    async fn inbox_owners(&self) -> Result<Vec<String>> {
        let rows = self.query("listing inboxes", |s| &s.inbox_owners, &[]).await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    async fn outbox(&self, instance: &str) -> Result<Vec<Effect>> {
        let rows = self.query("reading an outbox", |s| &s.outbox, &[&instance]).await?;
        Ok(decodable(&self.health.damage, rows.iter().map(|r| decode("outbox", &scoped(instance, uint(r, 0)), r.get(1)))))
    }

    async fn all_outbox(&self) -> Result<Vec<(String, Effect)>> {
        let rows = self.query("reading the outbox", |s| &s.all_outbox, &[]).await?;
        let entries = rows.iter().map(|r| {
            let instance: String = r.get(0);
            let effect = decode("outbox", &scoped(&instance, uint(r, 1)), r.get(2))?;
            Ok((instance, effect))
        });
        Ok(decodable(&self.health.damage, entries))
    }

    async fn timers(&self) -> Result<Vec<TimerKey>> {
        let rows = self.query("reading timers", |s| &s.timers, &[]).await?;
        Ok(rows.iter().map(|r| TimerKey { due_ms: uint(r, 0), instance: r.get(1), timer_id: uint(r, 2) }).collect())
    }

    async fn correlation(&self, key: &CorrelationKey) -> Result<Option<String>> {
        let row = self
            .query_opt("reading a correlation", |s| &s.correlation, &[&key.process, &key.set, &key.values])
            .await?;
        Ok(row.map(|r| r.get(0)))
    }

    async fn message(&self, id: &str) -> Result<Option<IntakeRecord>> {
        match self.query_opt("reading a message", |s| &s.message, &[&id]).await? {
            Some(r) => decode("messages", &id, r.get(0)).map(Some),
            None => Ok(None),
        }
    }

    async fn reply(&self, message_id: &str) -> Result<Option<Reply>> {
        match self.query_opt("reading a reply", |s| &s.reply, &[&message_id]).await? {
            Some(r) => decode("replies", &message_id, r.get(0)).map(Some),
            None => Ok(None),
        }
    }

    async fn history(&self, instance: &str) -> Result<Vec<HistoryEntry>> {
        let rows = self.query("reading history", |s| &s.history, &[&instance]).await?;
        rows.iter().map(|r| decode("history", &scoped(instance, uint(r, 0)), r.get(1))).collect()
    }

    async fn in_transit(&self, instance: Option<&str>) -> Result<Vec<InTransit>> {
        let what = "reading held calls";
        let rows = match instance {
            Some(instance) => self.query(what, |s| &s.in_transit_of, &[&instance]).await?,
            None => self.query(what, |s| &s.in_transit_all, &[]).await?,
        };
        rows.iter().map(|r| decode("in_transit", &scoped(r.get(0), uint(r, 1)), r.get(2))).collect()
    }

    async fn in_transit_call(&self, instance: &str, call_id: u64) -> Result<Option<InTransit>> {
        match self.query_opt("reading a held call", |s| &s.in_transit_call, &[&instance, &int(call_id)]).await? {
            Some(r) => decode("in_transit", &scoped(instance, call_id), r.get(0)).map(Some),
            None => Ok(None),
        }
    }

    async fn breakpoints(&self) -> Result<Vec<(String, String)>> {
        let rows = self.query("reading breakpoints", |s| &s.breakpoints, &[]).await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    async fn parked(&self) -> Result<Vec<String>> {
        let rows = self.query("reading parked instances", |s| &s.parked, &[]).await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    async fn clean_shutdown(&self) -> Result<bool> {
        Ok(self.query_opt("reading the clean-shutdown mark", |s| &s.meta, &[&CLEAN_SHUTDOWN]).await?.is_some())
    }

    async fn isolated(&self) -> Result<bool> {
        Ok(self.query_opt("reading the isolated mark", |s| &s.meta, &[&ISOLATED]).await?.is_some())
    }

    async fn tokens(&self) -> Result<Vec<TokenRecord>> {
        let rows = self.query("reading tokens", |s| &s.tokens, &[]).await?;
        rows.iter().map(|r| decode("tokens", &r.get::<_, &str>(0), r.get(1))).collect()
    }

    async fn resources(&self) -> Result<Vec<ResourceInfo>> {
        let rows = self.query("reading resources", |s| &s.resources, &[]).await?;
        rows.iter().map(|r| decode("resource_names", &r.get::<_, &str>(0), r.get(1))).collect()
    }

    async fn resource_get(&self, name: &str, key: &str) -> Result<(u64, Option<String>)> {
        match self.query_opt("reading a resource", |s| &s.resource_get, &[&name, &key]).await? {
            Some(r) => {
                let value = r.get::<_, Option<&[u8]>>(1).map(|v| decode("resource_rows", &row_key(name, key), v)).transpose()?;
                Ok((uint(&r, 0), value))
            }
            None => Ok((0, None)),
        }
    }

    async fn resource_scan(&self, name: &str, prefix: &str, after: Option<&str>, limit: usize) -> Result<Vec<ResourceRow>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self.query("scanning a resource", |s| &s.resource_scan, &[&name, &prefix, &after, &limit]).await?;
        rows.iter()
            .map(|r| {
                let key: String = r.get(0);
                let value = decode("resource_rows", &row_key(name, &key), r.get(2))?;
                Ok(ResourceRow { key, version: uint(r, 1), value })
            })
            .collect()
    }

    async fn backup(&self, dir: &Path) -> Result<()> {
        if dir.exists() {
            return Err(StoreError::Storage(format!("{} already exists: a backup goes into a new directory", dir.display())));
        }
        let client = self.endpoint.connect().await?;
        // Written without a sync per chunk; `flush` makes the whole copy durable.
        let result = match RocksStore::open(dir, false, false) {
            Ok(copy) => {
                let result = async {
                    copy_store(&client, &copy).await?;
                    copy.flush().await
                }
                .await;
                copy.close().await;
                result
            }
            Err(e) => Err(e),
        };
        if result.is_err() {
            // Not a backup: leave nothing that looks like one.
            let _ = std::fs::remove_dir_all(dir);
        }
        result
    }

    async fn flush(&self) -> Result<()> {
        // Every commit is durable when it resolves (or, with fsync off, as
        // durable as PostgreSQL makes it): nothing is held back here.
        Ok(())
    }

    async fn close(&self) {
        let _ = self.queue.send(Request::Close);
        let handle = self.committer.lock().expect("committer handle").take();
        if let Some(h) = handle {
            let _ = h.await;
        }
    }

    fn commit_stats(&self) -> CommitStats {
        // Every transaction commits synchronously (deferral is RocksDB's).
        let stats = self.stats.stats(self.endpoint.fsync);
        CommitStats { syncs: if stats.fsync { stats.writes } else { 0 }, ..stats }
    }

    fn kind(&self) -> &'static str {
        "postgres"
    }

    fn health(&self) -> &crate::health::StoreHealth {
        &self.health
    }
}

// ---------------------------------------------------------------------------
// Backup: a consistent copy into a RocksDB data directory

/// Rows of one query, fetched in pages through a cursor of the open transaction.
struct Cursor<'c> {
    client: &'c Client,
    table: &'static str,
    fetch: String,
    done: bool,
}

impl<'c> Cursor<'c> {
    async fn open(client: &'c Client, table: &'static str, sql: &str, page: usize) -> Result<Cursor<'c>> {
        client
            .batch_execute(&format!("DECLARE backup NO SCROLL CURSOR FOR {sql}"))
            .await
            .map_err(|e| storage(&format!("reading {table} for the backup"), e))?;
        Ok(Cursor { client, table, fetch: format!("FETCH {page} FROM backup"), done: false })
    }

    /// The next page, or `None` at the end (the cursor is closed then).
    async fn next(&mut self) -> Result<Option<Vec<Row>>> {
        if self.done {
            return Ok(None);
        }
        let failed = |e| storage(&format!("reading {} for the backup", self.table), e);
        let rows = self.client.query(self.fetch.as_str(), &[]).await.map_err(failed)?;
        if rows.is_empty() {
            self.done = true;
            self.client.batch_execute("CLOSE backup").await.map_err(failed)?;
            return Ok(None);
        }
        Ok(Some(rows))
    }
}

/// Writes into the copy in chunks.
struct Copier<'r> {
    to: &'r RocksStore,
    batch: WriteBatch,
    bytes: usize,
}

impl Copier<'_> {
    async fn write(&mut self, write: Write, bytes: usize) -> Result<()> {
        self.batch.push(write);
        self.bytes += bytes;
        self.maybe_commit().await
    }

    /// Each instance's fence once: checked against the empty copy's 0.
    async fn fence(&mut self, instance: &str, fence: u64) -> Result<()> {
        self.batch.fence(instance, 0, fence);
        self.maybe_commit().await
    }

    async fn maybe_commit(&mut self) -> Result<()> {
        if self.batch.writes.len() + self.batch.fences.len() >= BACKUP_CHUNK || self.bytes >= BACKUP_CHUNK_BYTES {
            self.commit().await?;
        }
        Ok(())
    }

    async fn commit(&mut self) -> Result<()> {
        self.bytes = 0;
        let batch = std::mem::take(&mut self.batch);
        if batch.is_empty() {
            return Ok(());
        }
        self.to.commit(batch).await
    }
}

/// Copies every table, read in one repeatable-read transaction.
async fn copy_store(client: &Client, to: &RocksStore) -> Result<()> {
    client
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET LOCAL idle_in_transaction_session_timeout = 0")
        .await
        .map_err(|e| storage("starting the backup transaction", e))?;
    // Cluster mode's sessions end a transaction left idle for a lease (so
    // that a host cut off keeps no rows locked); this one locks no rows and
    // may wait on the copy's writes for longer than that: it is exempt.
    crate::failpoint::pause("backup-begun").await;
    let mut out = Copier { to, batch: WriteBatch::new(), bytes: 0 };

    let mut c = Cursor::open(client, "definitions", "SELECT version, record, component FROM definitions", 16).await?;
    while let Some(rows) = c.next().await? {
        for r in rows {
            let (record, component): (&[u8], Vec<u8>) = (r.get(1), r.get(2));
            let bytes = record.len() + component.len();
            let record = decode("definitions", &r.get::<_, &str>(0), record)?;
            out.write(Write::Definition { record: Box::new(record), component }, bytes).await?;
        }
    }
    let mut c = Cursor::open(client, "instances", "SELECT id, snapshot FROM instances", 500).await?;
    while let Some(rows) = c.next().await? {
        for r in rows {
            let body: &[u8] = r.get(1);
            let snap: Snapshot = decode("instances", &r.get::<_, &str>(0), body)?;
            out.write(Write::Instance(Box::new(snap)), body.len()).await?;
        }
    }
    let mut c = Cursor::open(client, "fences", "SELECT instance, fence FROM fences", 1000).await?;
    while let Some(rows) = c.next().await? {
        for r in rows {
            out.fence(r.get(0), uint(&r, 1)).await?;
        }
    }
    let mut c = Cursor::open(client, "inbox", "SELECT instance, seq, delivery FROM inbox", 500).await?;
    while let Some(rows) = c.next().await? {
        for r in rows {
            let (instance, body): (String, &[u8]) = (r.get(0), r.get(2));
            let delivery = decode("inbox", &scoped(&instance, uint(&r, 1)), body)?;
            out.write(Write::Inbox { instance, delivery }, body.len()).await?;
        }
    }
    let mut c = Cursor::open(client, "outbox", "SELECT instance, call_id, effect FROM outbox", 500).await?;
    while let Some(rows) = c.next().await? {
        for r in rows {
            let (instance, call_id, body): (String, u64, &[u8]) = (r.get(0), uint(&r, 1), r.get(2));
            let effect = decode("outbox", &scoped(&instance, call_id), body)?;
            out.write(Write::Outbox { instance, call_id, effect: Box::new(effect) }, body.len()).await?;
        }
    }
    let mut c = Cursor::open(client, "timers", "SELECT due_ms, instance, timer_id FROM timers", 1000).await?;
    while let Some(rows) = c.next().await? {
        for r in rows {
            out.write(Write::Timer(TimerKey { due_ms: uint(&r, 0), instance: r.get(1), timer_id: uint(&r, 2) }), 0).await?;
        }
    }
    let mut c =
        Cursor::open(client, "correlations", "SELECT process, set_name, vals, instance FROM correlations", 1000).await?;
    while let Some(rows) = c.next().await? {
        for r in rows {
            let key = CorrelationKey { process: r.get(0), set: r.get(1), values: r.get(2) };
            out.write(Write::Correlation { key, instance: r.get(3) }, 0).await?;
        }
    }
    let mut c = Cursor::open(client, "messages", "SELECT id, record FROM messages", 1000).await?;
    while let Some(rows) = c.next().await? {
        for r in rows {
            let (id, body): (String, &[u8]) = (r.get(0), r.get(1));
            let record = decode("messages", &id, body)?;
            out.write(Write::Message { id, record }, body.len()).await?;
        }
    }
    let mut c = Cursor::open(client, "history", "SELECT instance, fence, entry FROM history", 1000).await?;
    while let Some(rows) = c.next().await? {
        for r in rows {
            let (instance, body): (String, &[u8]) = (r.get(0), r.get(2));
            let entry = decode("history", &scoped(&instance, uint(&r, 1)), body)?;
            out.write(Write::History { instance, entry }, body.len()).await?;
        }
    }
    let mut c = Cursor::open(client, "replies", "SELECT message_id, reply FROM replies", 1000).await?;
    while let Some(rows) = c.next().await? {
        for r in rows {
            let (message_id, body): (String, &[u8]) = (r.get(0), r.get(1));
            let reply = decode("replies", &message_id, body)?;
            out.write(Write::Reply { message_id, reply }, body.len()).await?;
        }
    }
    let mut c = Cursor::open(client, "in_transit", "SELECT instance, call_id, record FROM in_transit", 1000).await?;
    while let Some(rows) = c.next().await? {
        for r in rows {
            let body: &[u8] = r.get(2);
            let record = decode("in_transit", &scoped(r.get(0), uint(&r, 1)), body)?;
            out.write(Write::InTransit(Box::new(record)), body.len()).await?;
        }
    }
    let mut c = Cursor::open(client, "breakpoints", "SELECT process, path FROM breakpoints", 1000).await?;
    while let Some(rows) = c.next().await? {
        for r in rows {
            out.write(Write::Breakpoint { process: r.get(0), path: r.get(1), set: true }, 0).await?;
        }
    }
    let mut c = Cursor::open(client, "parked", "SELECT instance FROM parked", 1000).await?;
    while let Some(rows) = c.next().await? {
        for r in rows {
            out.write(Write::Parked { instance: r.get(0), parked: true }, 0).await?;
        }
    }
    // Of the meta table the clean-shutdown and isolated marks carry over; the copy
    // stamps its own store format.
    let mut c = Cursor::open(client, "meta", "SELECT name FROM meta", 100).await?;
    while let Some(rows) = c.next().await? {
        for r in rows {
            match r.get::<_, &str>(0) {
                CLEAN_SHUTDOWN => out.write(Write::CleanShutdown(true), 0).await?,
                ISOLATED => out.write(Write::Isolated(true), 0).await?,
                _ => {}
            }
        }
    }
    let mut c = Cursor::open(client, "tokens", "SELECT id, record FROM tokens", 1000).await?;
    while let Some(rows) = c.next().await? {
        for r in rows {
            let body: &[u8] = r.get(1);
            let token = decode("tokens", &r.get::<_, &str>(0), body)?;
            out.write(Write::Token(token), body.len()).await?;
        }
    }
    let mut c = Cursor::open(client, "resource_names", "SELECT name, info FROM resource_names", 1000).await?;
    while let Some(rows) = c.next().await? {
        for r in rows {
            let body: &[u8] = r.get(1);
            let info = decode("resource_names", &r.get::<_, &str>(0), body)?;
            out.write(Write::ResourceCreate(info), body.len()).await?;
        }
    }
    // Every row with its version, tombstones too, so that the copy's versions
    // are the original's; placeholders of checked absent keys (version 0) read
    // as absent either way and stay behind.
    let sql = "SELECT name, key, version, value FROM resource_rows WHERE version > 0";
    let mut c = Cursor::open(client, "resource_rows", sql, 1000).await?;
    while let Some(rows) = c.next().await? {
        for r in rows {
            let (name, key, version, body): (String, String, u64, Option<&[u8]>) = (r.get(0), r.get(1), uint(&r, 2), r.get(3));
            let bytes = body.map_or(0, <[u8]>::len);
            let value = body.map(|v| decode("resource_rows", &row_key(&name, &key), v)).transpose()?;
            out.write(Write::ResourceRestore { name, key, version, value }, bytes).await?;
        }
    }
    out.commit().await?;
    client.batch_execute("COMMIT").await.map_err(|e| storage("ending the backup transaction", e))
}
