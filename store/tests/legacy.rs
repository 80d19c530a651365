//! Data directories written before record format versions existed are
//! served as they are; a store written by a newer format is refused with a
//! message that says what to do.

use cairn_engine::{Delivery, Snapshot, Status};
use cairn_store::{InstanceFilter, Location};
use std::path::PathBuf;

const FAMILIES: [&str; 13] = [
    "definitions",
    "components",
    "instances",
    "fences",
    "inbox",
    "outbox",
    "timers",
    "correlations",
    "messages",
    "history",
    "replies",
    "meta",
    "in_transit",
];

struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        Scratch(std::env::temp_dir().join(format!("cairn-store-{tag}-{}-{nanos}", std::process::id())))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Opens `dir/db` with raw RocksDB, as a host before this change laid it out.
fn raw(dir: &std::path::Path) -> rocksdb::DB {
    let mut opts = rocksdb::Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    rocksdb::DB::open_cf(&opts, dir.join("db"), FAMILIES).unwrap()
}

fn snapshot(id: &str) -> Snapshot {
    serde_json::from_value(serde_json::json!({
        "id": id, "process": "orders", "version": "v1", "status": "waiting",
        "variables": r#"{"order":"A-1"}"#,
        "stack": [{ "node": 0, "phase": "await-message", "operation": "approve", "timer": null }],
        "correlations": {}, "requests": [], "fault": null, "next_id": 2, "fence": 3, "created_ms": 1, "updated_ms": 2,
    }))
    .unwrap()
}

#[tokio::test]
async fn a_directory_written_before_format_versions_is_served_as_it_is() {
    let dir = Scratch::new("legacy");
    {
        let db = raw(&dir.0);
        let cf = |n: &str| db.cf_handle(n).unwrap();
        // Before format versions, records were plain JSON.
        db.put_cf(cf("instances"), b"i-1", serde_json::to_vec(&snapshot("i-1")).unwrap()).unwrap();
        db.put_cf(cf("fences"), b"i-1", 3u64.to_be_bytes()).unwrap();
        let delivery = Delivery { seq: 7, message_id: "m-1".into(), operation: "approve".into(), body: "{}".into() };
        let mut key = b"i-1\0".to_vec();
        key.extend_from_slice(&7u64.to_be_bytes());
        db.put_cf(cf("inbox"), key, serde_json::to_vec(&delivery).unwrap()).unwrap();
    }
    let store = cairn_store::open(&Location::Embedded { data_dir: dir.0.clone() }, true).await.unwrap();
    let s = store.instance("i-1").await.unwrap().expect("the old snapshot is there");
    assert_eq!((s.status, s.fence, s.variables.as_str()), (Status::Waiting, 3, r#"{"order":"A-1"}"#));
    assert_eq!(store.inbox("i-1").await.unwrap()[0].message_id, "m-1");
    let all = store.instances(&InstanceFilter::default(), 10).await.unwrap();
    assert_eq!(all.len(), 1);
    // A write on top of the old fence is accepted, in the new format.
    let mut b = cairn_store::WriteBatch::new();
    b.fence("i-1", 3, 4);
    let mut next = s.clone();
    next.fence = 4;
    b.push(cairn_store::Write::Instance(Box::new(next)));
    store.commit(b).await.unwrap();
    assert_eq!(store.instance("i-1").await.unwrap().unwrap().fence, 4);
    // Families added since (resources) are created on open.
    assert!(store.resources().await.unwrap().is_empty());
    assert_eq!(store.resource_get("stock", "w").await.unwrap(), (0, None));
    let mut b = cairn_store::WriteBatch::new();
    b.push(cairn_store::Write::ResourceCreate(cairn_store::ResourceInfo { name: "stock".into(), created_ms: 1 }));
    b.push(cairn_store::Write::ResourcePut { name: "stock".into(), key: "w".into(), value: "1".into() });
    b.check("stock", "w", 0);
    store.commit(b).await.unwrap();
    assert_eq!(store.resource_get("stock", "w").await.unwrap(), (1, Some("1".into())));
    store.close().await;
}

#[tokio::test]
async fn a_store_of_a_newer_format_is_refused_with_what_to_do() {
    let dir = Scratch::new("newer");
    {
        let db = raw(&dir.0);
        db.put_cf(db.cf_handle("meta").unwrap(), b"store-format", [9u8]).unwrap();
    }
    let err = match cairn_store::open(&Location::Embedded { data_dir: dir.0.clone() }, true).await {
        Ok(_) => panic!("a newer store must be refused"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("format 9") && err.contains("newer cairn"), "{err}");
}

#[tokio::test]
async fn a_damaged_record_is_an_integrity_error_naming_table_and_key() {
    let dir = Scratch::new("damaged");
    {
        let db = raw(&dir.0);
        db.put_cf(db.cf_handle("instances").unwrap(), b"i-9", [1u8, b'{', b'x']).unwrap();
    }
    let store = cairn_store::open(&Location::Embedded { data_dir: dir.0.clone() }, true).await.unwrap();
    let err = store.instance("i-9").await.unwrap_err().to_string();
    assert!(err.contains("'i-9' of table instances"), "{err}");
    store.close().await;
}
