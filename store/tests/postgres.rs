//! The PostgreSQL backend against the store's specification (`spec`), plus
//! what only it has: migrations, connection errors, damaged rows, and a
//! backup into a RocksDB data directory.
//!
//! Runs against the server at `CAIRN_TEST_PG` (`postgres://USER@HOST:PORT`),
//! one fresh database per store; without it each test says it was skipped.

mod spec;

use cairn_store::{InstanceFilter, Location, Store, StoreError, Write};
use spec::Scratch;

fn server(test: &str) -> Option<String> {
    match std::env::var("CAIRN_TEST_PG") {
        Ok(s) if !s.is_empty() => Some(s.trim_end_matches('/').to_string()),
        _ => {
            eprintln!("{test}: skipped (set CAIRN_TEST_PG=postgres://USER@HOST:PORT to run it)");
            None
        }
    }
}

async fn fresh_url(server: &str) -> String {
    cairn_store::fresh_postgres_database(server).await.expect("a fresh database")
}

async fn open(url: &str) -> Store {
    cairn_store::open(&Location::Postgres { url: url.to_string() }, true).await.expect("the store opens")
}

/// A plain SQL session on the store's database, to look under the store.
async fn sql(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.expect("connects");
    tokio::spawn(conn);
    client
}

#[tokio::test(flavor = "multi_thread")]
async fn the_postgres_store_conforms_to_the_specification() {
    let Some(server) = server("the_postgres_store_conforms_to_the_specification") else { return };
    spec::conforms(|| async { open(&fresh_url(&server).await).await }).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_postgres_store_says_what_it_is() {
    let Some(server) = server("the_postgres_store_says_what_it_is") else { return };
    let store = open(&fresh_url(&server).await).await;
    assert_eq!(store.kind(), "postgres");
    store.flush().await.unwrap();
    store.close().await;
    let e = store.commit(spec::batch(vec![Write::CleanShutdown(true)])).await.unwrap_err();
    assert!(e.to_string().contains("the committer has stopped"), "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_damaged_row_is_an_integrity_error_naming_table_and_key() {
    let Some(server) = server("a_damaged_row_is_an_integrity_error_naming_table_and_key") else { return };
    let url = fresh_url(&server).await;
    let store = open(&url).await;
    spec::commit(
        &store,
        vec![
            Write::Instance(Box::new(spec::snapshot("i-bad", "orders", cairn_engine::Status::Waiting, 1))),
            Write::Inbox { instance: "i-bad".into(), delivery: spec::delivery(4) },
            Write::History { instance: "i-bad".into(), entry: spec::entry(2) },
        ],
    )
    .await;
    let db = sql(&url).await;
    db.batch_execute(
        r"UPDATE instances SET snapshot = '\x09' WHERE id = 'i-bad';
          UPDATE inbox SET delivery = '\x017b78' WHERE instance = 'i-bad';
          UPDATE history SET entry = '' WHERE instance = 'i-bad'",
    )
    .await
    .unwrap();
    spec::assert_integrity(store.instance("i-bad").await, "instances", "i-bad");
    // Scans skip undecodable records and report them: nothing is skipped silently.
    assert!(store.instances(&InstanceFilter::default(), 10).await.unwrap().is_empty());
    assert!(store.inbox("i-bad").await.unwrap().is_empty());
    let (damage, _) = store.health().damage.reports();
    let damaged: Vec<(&str, &str)> = damage.iter().map(|d| (d.table.as_str(), d.key.as_str())).collect();
    assert_eq!(damaged, [("inbox", "i-bad/4"), ("instances", "i-bad")], "{damage:?}");
    spec::assert_integrity(store.history("i-bad").await, "history", "i-bad/2");
    let e = store.instance("i-bad").await.unwrap_err().to_string();
    assert!(e.contains("unknown record format 9"), "{e}");
    // Counting reads the status column, not the record.
    assert_eq!(store.count_instances(cairn_engine::Status::Waiting).await.unwrap(), 1);
    store.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reopened_store_keeps_its_data_and_does_not_migrate_again() {
    let Some(server) = server("a_reopened_store_keeps_its_data_and_does_not_migrate_again") else { return };
    let url = fresh_url(&server).await;
    let store = open(&url).await;
    spec::tables(&store).await;
    store.close().await;
    drop(store);

    let again = open(&url).await;
    let version: i32 = sql(&url).await.query_one("SELECT version FROM cairn_schema_version", &[]).await.unwrap().get(0);
    assert_eq!(version, 4);
    let twice = open(&url).await;
    spec::same_contents(&again, &twice).await;
    again.close().await;
    twice.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_database_at_schema_version_1_migrates_to_resources_keeping_its_data() {
    let Some(server) = server("a_database_at_schema_version_1_migrates_to_resources_keeping_its_data") else { return };
    let url = fresh_url(&server).await;
    let store = open(&url).await;
    spec::commit(&store, vec![Write::Parked { instance: "p1".into(), parked: true }]).await;
    store.close().await;
    drop(store);
    // As a cairn before resources left it.
    sql(&url)
        .await
        .batch_execute(
            "DROP TABLE tokens, resource_rows, resource_names, cluster, partitions, nodes; UPDATE cairn_schema_version SET version = 1",
        )
        .await
        .unwrap();
    let store = open(&url).await;
    let version: i32 = sql(&url).await.query_one("SELECT version FROM cairn_schema_version", &[]).await.unwrap().get(0);
    assert_eq!(version, 4);
    assert_eq!(store.parked().await.unwrap(), ["p1"]);
    assert!(store.resources().await.unwrap().is_empty());
    let mut b = spec::batch(vec![Write::ResourceCreate(spec::info("stock", 1)), spec::put_row("stock", "w", "1")]);
    b.check("stock", "w", 0);
    store.commit(b).await.unwrap();
    assert_eq!(spec::get(&store, "stock", "w").await, (1, Some("1".into())));
    store.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_database_at_schema_version_2_migrates_to_tokens_keeping_its_data() {
    let Some(server) = server("a_database_at_schema_version_2_migrates_to_tokens_keeping_its_data") else { return };
    let url = fresh_url(&server).await;
    let store = open(&url).await;
    spec::commit(&store, vec![Write::ResourceCreate(spec::info("stock", 1))]).await;
    store.close().await;
    drop(store);
    // As a cairn before tokens left it.
    sql(&url)
        .await
        .batch_execute("DROP TABLE tokens, cluster, partitions, nodes; UPDATE cairn_schema_version SET version = 2")
        .await
        .unwrap();
    let store = open(&url).await;
    let version: i32 = sql(&url).await.query_one("SELECT version FROM cairn_schema_version", &[]).await.unwrap().get(0);
    assert_eq!(version, 4);
    assert_eq!(store.resources().await.unwrap(), [spec::info("stock", 1)]);
    assert!(store.tokens().await.unwrap().is_empty());
    spec::commit(&store, vec![Write::Token(spec::token("t-1", cairn_store::Role::Operator))]).await;
    assert_eq!(store.tokens().await.unwrap(), [spec::token("t-1", cairn_store::Role::Operator)]);
    store.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_damaged_resource_row_is_an_integrity_error_naming_table_and_key() {
    let Some(server) = server("a_damaged_resource_row_is_an_integrity_error_naming_table_and_key") else { return };
    let url = fresh_url(&server).await;
    let store = open(&url).await;
    spec::commit(&store, vec![spec::put_row("stock", "w", "1")]).await;
    sql(&url).await.batch_execute(r"UPDATE resource_rows SET value = '\x017b' WHERE key = 'w'").await.unwrap();
    spec::assert_integrity(store.resource_get("stock", "w").await, "resource_rows", "stock/w");
    spec::assert_integrity(store.resource_scan("stock", "", None, 10).await, "resource_rows", "stock/w");
    store.close().await;
}

/// Two hosts on one database are held to the same resource versions: a
/// batch based on a version another host's commit moved is rejected.
#[tokio::test(flavor = "multi_thread")]
async fn two_hosts_on_one_database_are_held_to_the_same_resource_versions() {
    let Some(server) = server("two_hosts_on_one_database_are_held_to_the_same_resource_versions") else { return };
    let url = fresh_url(&server).await;
    let (one, two) = (open(&url).await, open(&url).await);
    spec::commit(&one, vec![spec::put_row("stock", "w", "1")]).await;
    for round in 0..20u64 {
        let mut a = spec::batch(vec![spec::put_row("stock", "w", "\"one\"")]);
        a.check("stock", "w", round + 1);
        let mut b = spec::batch(vec![spec::put_row("stock", "w", "\"two\"")]);
        b.check("stock", "w", round + 1);
        let key = format!("new{round}");
        let mut c = spec::batch(vec![spec::put_row("stock", &key, "1")]);
        c.check("stock", &key, 0);
        let mut d = c.clone();
        d.writes = vec![spec::put_row("stock", &key, "2")];
        let results = spec::in_order(vec![one.commit(a), two.commit(b), one.commit(c), two.commit(d)]).await;
        assert_eq!(results[..2].iter().filter(|r| r.is_ok()).count(), 1, "round {round}: {results:?}");
        assert_eq!(results[2..].iter().filter(|r| r.is_ok()).count(), 1, "round {round}: {results:?}");
        assert!(results.iter().all(|r| matches!(r, Ok(()) | Err(StoreError::Conflict { .. }))), "{results:?}");
        assert_eq!(spec::get(&one, "stock", "w").await.0, round + 2);
        assert_eq!(spec::get(&two, "stock", &key).await.0, 1);
    }
    one.close().await;
    two.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_database_from_a_newer_cairn_is_refused() {
    let Some(server) = server("a_database_from_a_newer_cairn_is_refused") else { return };
    let url = fresh_url(&server).await;
    open(&url).await.close().await;
    sql(&url).await.batch_execute("UPDATE cairn_schema_version SET version = 99").await.unwrap();
    let e = cairn_store::open(&Location::Postgres { url: url.clone() }, true).await.err().expect("refused").to_string();
    assert!(e.contains("schema version 99") && e.contains("newer cairn"), "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_that_cannot_be_reached_is_named_without_its_password() {
    let url = "postgres://cairn:sekrit@127.0.0.1:1/orders";
    let e = match cairn_store::open(&Location::Postgres { url: url.into() }, true).await {
        Err(StoreError::Storage(e)) => e,
        Err(e) => panic!("expected a storage error, got {e}"),
        Ok(_) => panic!("nothing listens on port 1"),
    };
    assert!(e.starts_with("connecting to the PostgreSQL store at 127.0.0.1:1/orders: "), "{e}");
    assert!(!e.contains("sekrit"), "{e}");

    let url = "postgres://cairn:sekrit@db.example:port/orders";
    let e = cairn_store::open(&Location::Postgres { url: url.into() }, true).await.err().expect("not a URL").to_string();
    assert!(e.contains("the PostgreSQL store URL is not valid") && !e.contains("sekrit"), "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backup_is_a_data_directory_the_embedded_store_opens() {
    let Some(server) = server("a_backup_is_a_data_directory_the_embedded_store_opens") else { return };
    let store = open(&fresh_url(&server).await).await;
    spec::tables(&store).await;
    let dir = Scratch::new("pg-backup");
    store.backup(&dir.0).await.expect("the backup is written");
    let e = store.backup(&dir.0).await.unwrap_err();
    assert!(e.to_string().contains("already exists"), "{e}");

    let copy = cairn_store::open(&Location::Embedded { data_dir: dir.0.clone() }, true).await.expect("the copy opens");
    assert_eq!(copy.kind(), "rocksdb");
    spec::same_contents(&store, &copy).await;
    copy.close().await;
    store.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn without_fsync_commits_still_land() {
    let Some(server) = server("without_fsync_commits_still_land") else { return };
    let url = fresh_url(&server).await;
    let store = cairn_store::open(&Location::Postgres { url: url.clone() }, false).await.unwrap();
    spec::check_group_commit(&store).await;
    store.close().await;
    let store = open(&url).await;
    assert_eq!(store.inbox("g1").await.unwrap().len(), 2);
    store.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_whose_write_fails_is_rejected_alone() {
    let Some(server) = server("a_batch_whose_write_fails_is_rejected_alone") else { return };
    let store = open(&fresh_url(&server).await).await;
    // PostgreSQL text holds no NUL: the write fails in the server.
    let bad = spec::batch(vec![Write::Inbox { instance: "nul\0id".into(), delivery: spec::delivery(1) }]);
    let mut good = spec::batch(vec![Write::Inbox { instance: "fine".into(), delivery: spec::delivery(1) }]);
    good.fence("fine", 0, 1);
    let results = spec::in_order(vec![store.commit(good.clone()), store.commit(bad), store.commit(good)]).await;
    assert!(results[0].is_ok(), "{:?}", results[0]);
    match &results[1] {
        Err(StoreError::Storage(e)) => assert!(e.starts_with("writing inbox: "), "{e}"),
        other => panic!("expected a storage error, got {other:?}"),
    }
    spec::assert_stale(results[2].clone(), "fine", 0, 1);
    assert_eq!(store.inbox("fine").await.unwrap(), [spec::delivery(1)]);
    store.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_store_reconnects_after_the_server_drops_its_sessions() {
    let Some(server) = server("the_store_reconnects_after_the_server_drops_its_sessions") else { return };
    let url = fresh_url(&server).await;
    let store = open(&url).await;
    spec::commit(&store, vec![Write::Parked { instance: "p1".into(), parked: true }]).await;
    let db_name = url.rsplit('/').next().unwrap().to_string();
    let killed: i64 = sql(&url)
        .await
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = $1 AND application_name = 'cairn'",
            &[&db_name],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(killed, 5, "the committer's session and four readers");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    spec::commit(&store, vec![Write::Parked { instance: "p2".into(), parked: true }]).await;
    for _ in 0..8 {
        assert_eq!(store.parked().await.unwrap(), ["p1", "p2"]);
    }
    store.close().await;
}

fn member(node: &str, partitions: u32, lease_ms: u64) -> cairn_store::cluster::ClusterConfig {
    cairn_store::cluster::ClusterConfig { node: node.into(), advertise: format!("http://{node}"), partitions, lease_ms }
}

/// A batch that moves `instance` from fence `from` to `from + 1`.
fn step(instance: &str, from: u64) -> cairn_store::WriteBatch {
    let mut b = spec::batch(vec![Write::Instance(Box::new(spec::snapshot(instance, "orders", cairn_engine::Status::Waiting, from + 1)))]);
    b.fence(instance, from, from + 1);
    b
}

fn assert_fenced(result: Result<(), StoreError>, instance: &str) {
    match result {
        Err(StoreError::Fenced { instance: i, .. }) => assert_eq!(i, instance),
        other => panic!("expected a fenced write of {instance}, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn cluster_leases_fence_writes_by_partition_epoch() {
    use cairn_store::cluster::{join, partition_of};
    let Some(server) = server("cluster_leases_fence_writes_by_partition_epoch") else { return };
    let url = fresh_url(&server).await;
    // The first node fixes the partition count; the second's 64 is ignored.
    let (a, la) = join(&url, true, member("a", 4, 600)).await.expect("a joins");
    let (b, lb) = join(&url, true, member("b", 64, 600)).await.expect("b joins");
    assert_eq!(la.held().count(), 4);
    assert_eq!(lb.held().count(), 4);
    assert_eq!(lb.live_nodes().await.unwrap(), 2);
    // Before any claim the status reads (partitions never claimed: no owner, expired).
    let before = la.status().await.expect("the status of a cluster with no partition claimed yet");
    assert!(before.owners.iter().all(|o| o.owner.is_none() && o.lease_remaining_ms < 0), "{before:?}");

    // a claims everything, each partition at epoch 1; nothing is left for b.
    let claimed = la.claim(10).await.unwrap();
    assert_eq!(claimed.iter().map(|c| (c.partition, c.epoch, c.released)).collect::<Vec<_>>(), vec![(0, 1, true), (1, 1, true), (2, 1, true), (3, 1, true)]);
    for c in &claimed {
        la.held().hold(c.partition, c.epoch);
    }
    assert!(lb.claim(10).await.unwrap().is_empty());

    // Any node creates an instance (fence 0 -> 1); only the owner moves it on.
    let id = "i-cluster";
    let p = partition_of(id, 4);
    b.commit(step(id, 0)).await.expect("b creates the instance");
    a.commit(step(id, 1)).await.expect("the owner writes");
    assert_fenced(b.commit(step(id, 2)).await, id);

    // a's renewals keep its leases; they lapse once it stops renewing and b takes them.
    assert_eq!(la.renew().await.unwrap().len(), 4);
    // b claims one partition at a time (holding each, as a host does) until it has p.
    let mut first = None;
    let epoch = loop {
        let claimed = lb.claim(1).await.unwrap();
        for c in &claimed {
            lb.held().hold(c.partition, c.epoch);
            first.get_or_insert((c.epoch, c.released));
        }
        if let Some(c) = claimed.iter().find(|c| c.partition == p) {
            break c.epoch;
        }
        if claimed.is_empty() {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    };
    assert_eq!(first, Some((2, false)), "a lapsed lease is a crash for its partition");
    lb.held().hold(p, epoch);
    // a still believes it holds the partition: the database refuses its write.
    assert!(la.held().epoch(p).is_some());
    assert_fenced(a.commit(step(id, 2)).await, id);
    b.commit(step(id, 2)).await.expect("the new owner writes");
    assert_eq!(b.instance(id).await.unwrap().unwrap().fence, 3);
    // a's renewal tells it what it lost; forgotten, a's writes are refused before they leave.
    let kept = la.renew().await.unwrap();
    assert!(kept.is_empty(), "every lease of a had lapsed: {kept:?}");
    la.held().forget(p);
    assert_fenced(a.commit(step(id, 3)).await, id);

    // A released partition is claimed at once, as released.
    lb.release(p, epoch).await.unwrap();
    lb.held().forget(p);
    let again = la.claim(4).await.unwrap();
    let mine = again.iter().find(|c| c.partition == p).expect("a claims the released partition");
    assert!(mine.released);
    assert_eq!(mine.epoch, epoch + 1);

    // Exactly-once intake across hosts: a message id is stored once.
    let record = cairn_store::IntakeRecord { instance: id.into(), operation: "order".into(), accepted_ms: 1 };
    a.commit(spec::batch(vec![Write::Message { id: "m-1".into(), record: record.clone() }])).await.unwrap();
    match b.commit(spec::batch(vec![Write::Message { id: "m-1".into(), record }])).await {
        Err(StoreError::Duplicate { message_id }) => assert_eq!(message_id, "m-1"),
        other => panic!("expected a duplicate, got {other:?}"),
    }

    // The status names both nodes and every partition's owner and epoch.
    let status = la.status().await.unwrap();
    assert_eq!(status.partitions, 4);
    assert_eq!(status.nodes.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(), vec!["a", "b"]);
    assert_eq!(status.owners.len(), 4);
    let owner = status.owners.iter().find(|o| o.partition == p).unwrap();
    assert_eq!((owner.owner.as_deref(), owner.epoch), (Some("a"), epoch + 1));

    // Wake-ups reach every listener.
    let mut wakes = la.listen().await.unwrap();
    lb.notify(id).await.unwrap();
    assert_eq!(wakes.recv().await, Some((cairn_store::cluster::WAKE_CHANNEL.to_string(), id.to_string())));
    lb.leave().await.unwrap();
    assert_eq!(la.status().await.unwrap().nodes.len(), 1);
    a.close().await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_single_host_postgres_store_keeps_upserting_messages() {
    // Outside cluster mode nothing changes: a message record is overwritten.
    let Some(server) = server("a_single_host_postgres_store_keeps_upserting_messages") else { return };
    let store = open(&fresh_url(&server).await).await;
    let record = cairn_store::IntakeRecord { instance: "i".into(), operation: "order".into(), accepted_ms: 1 };
    store.commit(spec::batch(vec![Write::Message { id: "m".into(), record: record.clone() }])).await.unwrap();
    store.commit(spec::batch(vec![Write::Message { id: "m".into(), record }])).await.unwrap();
    store.close().await;
}

/// A batch that creates `instance` (fence 0 -> 1) holding correlation `key`.
fn create_correlated(instance: &str, key: &cairn_store::CorrelationKey) -> cairn_store::WriteBatch {
    let mut b = step(instance, 0);
    b.push(Write::Correlation { key: key.clone(), instance: instance.into() });
    b
}

#[tokio::test(flavor = "multi_thread")]
async fn two_hosts_creating_instances_with_the_same_correlation_values_do_not_both_win() {
    use cairn_store::cluster::join;
    use cairn_store::CorrelationKey;
    let Some(server) = server("two_hosts_creating_instances_with_the_same_correlation_values_do_not_both_win") else { return };
    let url = fresh_url(&server).await;
    let (a, _la) = join(&url, true, member("a", 4, 5000)).await.expect("a joins");
    let (b, _lb) = join(&url, true, member("b", 4, 5000)).await.expect("b joins");
    let key = |values: &str| CorrelationKey { process: "orders".into(), set: "order".into(), values: values.into() };

    // One after the other: the second creation is refused, naming the holder.
    a.commit(create_correlated("i-first", &key("[1]"))).await.expect("a creates the first instance");
    match b.commit(create_correlated("i-second", &key("[1]"))).await {
        Err(StoreError::Correlated { process, set, values, holder }) => {
            assert_eq!((process.as_str(), set.as_str(), values.as_str(), holder.as_str()), ("orders", "order", "[1]", "i-first"));
        }
        other => panic!("expected the second creation to be refused for its correlation, got {other:?}"),
    }
    assert!(b.instance("i-second").await.unwrap().is_none(), "nothing of the refused batch was written");
    assert_eq!(b.correlation(&key("[1]")).await.unwrap().as_deref(), Some("i-first"));
    // The holder writing its own correlation again (a new instance's first
    // point carries the intake's write and the receive's) is no conflict.
    let mut again = create_correlated("i-own", &key("[2]"));
    again.push(Write::Correlation { key: key("[2]"), instance: "i-own".into() });
    a.commit(again).await.expect("an instance's own correlation, written twice");
    // Other batches of the same group commit (the refused one is alone).
    let (x, y) = tokio::join!(b.commit(create_correlated("i-third", &key("[1]"))), b.commit(create_correlated("i-fourth", &key("[4]"))));
    assert!(matches!(x, Err(StoreError::Correlated { .. })), "{x:?}");
    y.expect("a batch grouped with a refused one commits");

    // At the same moment, many times: exactly one of the two creations wins.
    for round in 0..20 {
        let k = key(&format!("[\"race-{round}\"]"));
        let (ia, ib) = (format!("a-{round}"), format!("b-{round}"));
        let (ra, rb) = tokio::join!(a.commit(create_correlated(&ia, &k)), b.commit(create_correlated(&ib, &k)));
        let winner = match (&ra, &rb) {
            (Ok(()), Err(StoreError::Correlated { holder, .. })) => {
                assert_eq!(holder, &ia);
                &ia
            }
            (Err(StoreError::Correlated { holder, .. }), Ok(())) => {
                assert_eq!(holder, &ib);
                &ib
            }
            other => panic!("round {round}: exactly one creation wins, got {other:?}"),
        };
        assert_eq!(a.correlation(&k).await.unwrap().as_ref(), Some(winner));
        let loser = if winner == &ia { &ib } else { &ia };
        assert!(a.instance(loser).await.unwrap().is_none(), "round {round}: the loser {loser} was not created");
    }
    a.close().await;
    b.close().await;
}
