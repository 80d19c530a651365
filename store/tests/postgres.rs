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
    assert_eq!(version, 3);
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
        .batch_execute("DROP TABLE tokens, resource_rows, resource_names; UPDATE cairn_schema_version SET version = 1")
        .await
        .unwrap();
    let store = open(&url).await;
    let version: i32 = sql(&url).await.query_one("SELECT version FROM cairn_schema_version", &[]).await.unwrap().get(0);
    assert_eq!(version, 3);
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
    sql(&url).await.batch_execute("DROP TABLE tokens; UPDATE cairn_schema_version SET version = 2").await.unwrap();
    let store = open(&url).await;
    let version: i32 = sql(&url).await.query_one("SELECT version FROM cairn_schema_version", &[]).await.unwrap().get(0);
    assert_eq!(version, 3);
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
