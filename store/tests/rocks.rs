//! The embedded RocksDB backend against the store's specification (`spec`),
//! plus reopening, damaged records and backups.

mod spec;

use cairn_store::{InstanceFilter, Location, Store, Write};
use spec::Scratch;
use std::path::Path;

async fn open(dir: &Path) -> Store {
    cairn_store::open(&Location::Embedded { data_dir: dir.to_path_buf() }, true).await.expect("the store opens")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_rocksdb_store_conforms_to_the_specification() {
    let dirs = std::sync::Mutex::new(Vec::new());
    spec::conforms(|| {
        let dir = Scratch::new("rocks-spec");
        let path = dir.0.clone();
        dirs.lock().unwrap().push(dir);
        async move { open(&path).await }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_damaged_record_is_an_integrity_error_naming_table_and_key() {
    let dir = Scratch::new("rocks-damage");
    let store = open(&dir.0).await;
    spec::commit(
        &store,
        vec![Write::Instance(Box::new(spec::snapshot("i-bad", "orders", cairn_engine::Status::Waiting, 1)))],
    )
    .await;
    store.close().await;
    drop(store);
    {
        // Under the store: the column families as rocks.rs lays them out.
        let cfs = [
            "definitions", "components", "instances", "fences", "inbox", "outbox", "timers", "correlations", "messages",
            "history", "replies", "meta", "in_transit", "resources", "resource_names", "tokens", "live",
        ];
        let db = rocksdb::DB::open_cf(&rocksdb::Options::default(), dir.0.join("db"), cfs).expect("opens raw");
        db.put_cf(db.cf_handle("instances").unwrap(), b"i-bad", [9u8]).unwrap();
        let resources = db.cf_handle("resources").unwrap();
        db.put_cf(resources, b"stock\0short", [0u8, 1]).unwrap();
        db.put_cf(resources, b"stock\0bad", [0u8, 0, 0, 0, 0, 0, 0, 1, 1, b'{']).unwrap();
    }
    let store = open(&dir.0).await;
    spec::assert_integrity(store.instance("i-bad").await, "instances", "i-bad");
    // A scan skips the undecodable record and reports it: nothing is skipped silently.
    assert!(store.instances(&InstanceFilter::default(), 10).await.unwrap().iter().all(|s| s.id != "i-bad"));
    let (damage, damaged) = store.health().damage.reports();
    assert_eq!((damage[0].table.as_str(), damage[0].key.as_str(), damaged), ("instances", "i-bad", 1), "{damage:?}");
    spec::assert_integrity(store.resource_get("stock", "short").await, "resources", "stock/short");
    spec::assert_integrity(store.resource_get("stock", "bad").await, "resources", "stock/bad");
    spec::assert_integrity(store.resource_scan("stock", "", None, 10).await, "resources", "stock/bad");
    let mut b = spec::batch(vec![spec::put_row("stock", "bad", "1")]);
    b.check("stock", "bad", 1);
    let e = store.commit(b).await;
    assert!(matches!(e, Err(cairn_store::StoreError::Integrity { table: "resources", .. })), "{e:?}");
    spec::commit(&store, vec![spec::put_row("stock", "fine", "1")]).await;
    assert_eq!(spec::get(&store, "stock", "fine").await, (1, Some("1".into())), "the committer goes on");
    store.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reopened_store_keeps_its_data() {
    let dir = Scratch::new("rocks-reopen");
    let store = open(&dir.0).await;
    spec::tables(&store).await;
    store.close().await;
    drop(store);
    let again = open(&dir.0).await;
    let backup = Scratch::new("rocks-reopen-copy");
    again.backup(&backup.0).await.unwrap();
    let copy = open(&backup.0).await;
    spec::same_contents(&again, &copy).await;
    copy.close().await;
    again.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backup_is_a_data_directory_the_embedded_store_opens() {
    let dir = Scratch::new("rocks-live");
    let store = open(&dir.0).await;
    assert_eq!(store.kind(), "rocksdb");
    spec::tables(&store).await;
    let backup = Scratch::new("rocks-backup");
    store.backup(&backup.0).await.expect("the backup is written");
    let e = store.backup(&backup.0).await.unwrap_err();
    assert!(e.to_string().contains("already exists"), "{e}");
    let copy = open(&backup.0).await;
    spec::same_contents(&store, &copy).await;
    copy.close().await;
    store.close().await;
}

/// The newest write-ahead log file under `DIR/db`, with its length.
fn newest_wal(dir: &Path) -> (std::path::PathBuf, u64) {
    let mut logs: Vec<_> = std::fs::read_dir(dir.join("db"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    logs.sort();
    let log = logs.pop().expect("a write-ahead log file");
    let len = std::fs::metadata(&log).unwrap().len();
    (log, len)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_write_ahead_log_damaged_before_its_tail_fails_the_open_unless_salvaged() {
    let dir = Scratch::new("rocks-wal");
    let store = open(&dir.0).await;
    for i in 0..200 {
        let id = format!("i-{i:04}");
        spec::commit(&store, vec![Write::Instance(Box::new(spec::snapshot(&id, "orders", cairn_engine::Status::Waiting, 1)))])
            .await;
    }
    // No flush: the acknowledged writes live only in the write-ahead log.
    store.close().await;
    drop(store);
    let (log, len) = newest_wal(&dir.0);
    assert!(len > 20_000, "the write-ahead log holds the 200 instances ({len} bytes in {})", log.display());
    let mut bytes = std::fs::read(&log).unwrap();
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..mid + 32] {
        *b ^= 0xff;
    }
    std::fs::write(&log, &bytes).unwrap();
    let name = log.file_name().unwrap().to_string_lossy().into_owned();

    let location = Location::Embedded { data_dir: dir.0.clone() };
    let e = match cairn_store::open(&location, true).await {
        Ok(_) => panic!("a store with a damaged write-ahead log opens"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("write-ahead log") && e.contains(&name) && e.contains("--salvage-wal"), "{e}");

    let options = cairn_store::OpenOptions { fsync: true, salvage_wal: true };
    let store = cairn_store::open_with(&location, options).await.expect("the store opens with salvage");
    let kept = store.instances(&InstanceFilter::default(), 1000).await.expect("instances read").len();
    assert!(kept > 0 && kept < 200, "the instances before the damage are kept, those after it dropped: {kept}");
    store.close().await;
    drop(store);
    open(&dir.0).await.close().await;
}
