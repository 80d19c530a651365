//! The store's specification, written once and held against every backend
//! (`tests/rocks.rs`, `tests/postgres.rs`): fences, group commit, resources
//! and their versions, and what each table reads back after a write.
//!
//! Each `check_*` function takes a fresh, empty store. `tables` leaves its
//! data in place so that `same_contents` can compare a copy (a backup) with
//! the original table by table.

#![allow(dead_code)]

use cairn_engine::{Delivery, Effect, Fault, Reason, Snapshot, Status, Target};
use cairn_store::{
    ComponentKind, CorrelationKey, DeployedRecord, HistoryEntry, InTransit, InTransitState, InstanceFilter, IntakeRecord,
    Reply, ResourceInfo, ResourceRow, Role, Store, StoreError, TimerKey, TokenRecord, Write, WriteBatch,
};
use serde::Serialize;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::Poll;

// ---------------------------------------------------------------------------
// Records

pub fn snapshot(id: &str, process: &str, status: Status, fence: u64) -> Snapshot {
    serde_json::from_value(serde_json::json!({
        "id": id, "process": process, "version": "v1", "status": status, "variables": "{\"n\":1}",
        "stack": [], "correlations": {}, "requests": [], "fault": null,
        "next_id": 7, "fence": fence, "created_ms": 1000, "updated_ms": 2000,
    }))
    .expect("a snapshot")
}

pub fn delivery(seq: u64) -> Delivery {
    Delivery { seq, message_id: format!("m{seq}"), operation: "order".into(), body: format!("{{\"seq\":{seq}}}") }
}

pub fn entry(fence: u64) -> HistoryEntry {
    HistoryEntry { fence, at_ms: 100 + fence, reason: Reason::Waiting, status: Status::Waiting, path: "main/wait".into(), resource_conflicts: 0, moved_by: Vec::new() }
}

pub fn held(instance: &str, call_id: u64) -> InTransit {
    InTransit {
        instance: instance.into(),
        call_id,
        state: InTransitState::Held,
        since_ms: 5,
        target: Target::Activity("charge".into()),
        operation: "run".into(),
        idempotency_key: format!("{instance}/main/{call_id}"),
        result: None,
    }
}

pub fn timer(due_ms: u64, instance: &str, timer_id: u64) -> TimerKey {
    TimerKey { due_ms, instance: instance.into(), timer_id }
}

pub fn correlation(values: &str) -> CorrelationKey {
    CorrelationKey { process: "orders".into(), set: "by-id".into(), values: values.into() }
}

/// For records without `PartialEq`: compared as their JSON.
pub fn json<T: Serialize>(v: &T) -> serde_json::Value {
    serde_json::to_value(v).expect("serializes")
}

pub fn batch(writes: Vec<Write>) -> WriteBatch {
    WriteBatch { writes, ..WriteBatch::default() }
}

pub async fn commit(store: &Store, writes: Vec<Write>) {
    store.commit(batch(writes)).await.expect("the batch commits");
}

/// Runs `futures` concurrently, first-polled in order (so commits are queued in order).
pub async fn in_order<'a, T>(mut futures: Vec<Pin<Box<dyn Future<Output = T> + Send + 'a>>>) -> Vec<T> {
    let mut out: Vec<Option<T>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        for (f, slot) in futures.iter_mut().zip(out.iter_mut()) {
            if slot.is_none() {
                if let Poll::Ready(v) = f.as_mut().poll(cx) {
                    *slot = Some(v);
                }
            }
        }
        if out.iter().all(Option::is_some) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
    out.into_iter().map(Option::unwrap).collect()
}

pub fn assert_stale(result: Result<(), StoreError>, instance: &str, expected: u64, found: u64) {
    match result {
        Err(StoreError::Stale { instance: i, expected: e, found: f }) => {
            assert_eq!((i.as_str(), e, f), (instance, expected, found), "the stale error names the fence")
        }
        other => panic!("expected a stale fence on {instance} (based on {expected}, store holds {found}), got {other:?}"),
    }
}

pub fn assert_conflict(result: Result<(), StoreError>, resource: &str, key: &str, expected: u64, found: u64) {
    match result {
        Err(StoreError::Conflict { resource: r, key: k, expected: e, found: f }) => assert_eq!(
            (r.as_str(), k.as_str(), e, f),
            (resource, key, expected, found),
            "the conflict names the resource, the key and both versions"
        ),
        other => panic!("expected a conflict on {resource}/{key} (read at {expected}, now {found}), got {other:?}"),
    }
}

pub fn assert_integrity<T: std::fmt::Debug>(result: Result<T, StoreError>, table: &str, key: &str) {
    match result {
        Err(StoreError::Integrity { table: t, key: k, reason }) => {
            assert_eq!(t, table, "the integrity error names the table");
            assert!(k.contains(key), "the integrity error names the key: {k:?} should contain {key:?}");
            assert!(!reason.is_empty());
        }
        other => panic!("expected an integrity error in {table} for {key}, got {other:?}"),
    }
}

/// A directory under the system temp dir that does not exist yet, removed when dropped.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Scratch {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        Scratch(std::env::temp_dir().join(format!("cairn-store-{tag}-{}-{nanos}", std::process::id())))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---------------------------------------------------------------------------
// Fences and group commit

/// A fenced batch commits and moves the fence; one based on an old fence is
/// rejected whole, naming what the store holds; absent counts as 0.
pub async fn check_fences(store: &Store) {
    let mut b = batch(vec![Write::Inbox { instance: "f".into(), delivery: delivery(1) }]);
    b.fence("f", 0, 1);
    store.commit(b).await.expect("a batch based on the absent fence (0) commits");

    let mut b = batch(vec![Write::Inbox { instance: "f".into(), delivery: delivery(2) }]);
    b.fence("f", 1, 2);
    store.commit(b).await.expect("a batch based on the stored fence commits");

    let mut b = batch(vec![
        Write::Inbox { instance: "f".into(), delivery: delivery(3) },
        Write::InboxRemove { instance: "f".into(), seq: 1 },
        Write::Parked { instance: "f".into(), parked: true },
    ]);
    b.fence("f", 1, 3);
    assert_stale(store.commit(b).await, "f", 1, 2);
    let seqs: Vec<u64> = store.inbox("f").await.unwrap().iter().map(|d| d.seq).collect();
    assert_eq!(seqs, [1, 2], "nothing of a stale batch is written");
    assert!(store.parked().await.unwrap().is_empty(), "nothing of a stale batch is written");

    let mut b = WriteBatch::new();
    b.fence("f", 0, 9);
    assert_stale(store.commit(b).await, "f", 0, 2);

    // A batch with two fences, the second stale: the first does not move.
    let mut b = WriteBatch::new();
    b.fence("g", 0, 1);
    b.fence("f", 7, 8);
    assert_stale(store.commit(b).await, "f", 7, 2);
    let mut b = WriteBatch::new();
    b.fence("g", 0, 1);
    b.fence("f", 2, 3);
    store.commit(b).await.expect("both fences hold");

    // The fence survives the instance's removal, as the host relies on.
    commit(store, vec![Write::InstanceRemove { id: "f".into() }]).await;
    let mut b = WriteBatch::new();
    b.fence("f", 0, 1);
    assert_stale(store.commit(b).await, "f", 0, 3);
}

/// Concurrent batches: a stale one is rejected alone while the others in its
/// group commit, later batches see the fences earlier ones moved, and the
/// backend carries many batches per write.
/// Deferred batches (`WriteBatch::deferred`): each resolves only once it is
/// synced, by a later synced write, by a sync asked for, or alone within a
/// moment; a deferred batch behind a synced one, or a run of deferred ones
/// closed by a synced one, costs no sync of its own.
pub async fn check_deferred(store: &Store) {
    let deferred = |instance: &str, seq: u64| WriteBatch { deferred: true, ..batch(vec![Write::Inbox { instance: instance.into(), delivery: delivery(seq) }]) };
    // Alone: synced within a moment.
    store.commit(deferred("d", 1)).await.expect("a deferred batch alone resolves");
    // A run of deferred batches closed by a synced one: all resolve, in order.
    let run = vec![deferred("d", 2), deferred("d", 3), batch(vec![Write::Inbox { instance: "d".into(), delivery: delivery(4) }])];
    for r in in_order(run.into_iter().map(|b| store.commit(b)).collect()).await {
        r.expect("each batch of the run resolves");
    }
    // A sync asked for.
    let before = store.commit_stats();
    let pending = store.submit(deferred("d", 5));
    store.sync_deferred();
    pending.await.expect("resolves once synced");
    let after = store.commit_stats();
    let seqs: Vec<u64> = store.inbox("d").await.unwrap().iter().map(|d| d.seq).collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5]);
    if after.fsync {
        assert!(after.syncs > before.syncs, "resolved by a sync: {before:?} -> {after:?}");
    }
}

pub async fn check_group_commit(store: &Store) {
    const N: u64 = 40;
    let mut setup = WriteBatch::new();
    for i in 0..N {
        setup.fence(&format!("g{i}"), 0, 1);
    }
    store.commit(setup).await.unwrap();
    let before = store.commit_stats();

    let mut batches = Vec::new();
    for i in 0..N {
        let id = format!("g{i}");
        let mut b = batch(vec![Write::Inbox { instance: id.clone(), delivery: delivery(1) }]);
        b.fence(&id, 1, 2);
        batches.push(b);
        if i == N / 2 {
            // Stale: g0 is at 2 by then (its batch is queued first).
            let mut stale = batch(vec![Write::Inbox { instance: "g0".into(), delivery: delivery(99) }]);
            stale.fence("g0", 5, 6);
            batches.push(stale);
            // Based on what the batch for g1 (queued before) makes it.
            let mut next = batch(vec![Write::Inbox { instance: "g1".into(), delivery: delivery(2) }]);
            next.fence("g1", 2, 3);
            batches.push(next);
        }
    }
    let results = in_order(batches.into_iter().map(|b| store.commit(b)).collect()).await;
    let stale_at = N as usize / 2 + 1;
    for (i, r) in results.into_iter().enumerate() {
        if i == stale_at {
            assert_stale(r, "g0", 5, 2);
        } else {
            r.unwrap_or_else(|e| panic!("batch {i} commits: {e}"));
        }
    }
    let g0: Vec<u64> = store.inbox("g0").await.unwrap().iter().map(|d| d.seq).collect();
    assert_eq!(g0, [1], "the stale batch wrote nothing");
    let g1: Vec<u64> = store.inbox("g1").await.unwrap().iter().map(|d| d.seq).collect();
    assert_eq!(g1, [1, 2]);
    for i in 2..N {
        assert_eq!(store.inbox(&format!("g{i}")).await.unwrap().len(), 1);
    }
    let after = store.commit_stats();
    let (batches, writes) = (after.batches - before.batches, after.writes - before.writes);
    assert_eq!(batches, N + 1, "every accepted batch is counted");
    assert!(writes < batches, "concurrent batches share writes: {batches} batches in {writes} writes");

    let mut b = WriteBatch::new();
    b.fence("g1", 3, 4);
    b.fence("g0", 2, 3);
    store.commit(b).await.expect("the fences are where the accepted batches left them");
}

// ---------------------------------------------------------------------------
// Resources

pub fn info(name: &str, created_ms: u64) -> ResourceInfo {
    ResourceInfo { name: name.into(), created_ms }
}

pub fn put_row(name: &str, key: &str, value: &str) -> Write {
    Write::ResourcePut { name: name.into(), key: key.into(), value: value.into() }
}

pub fn delete_row(name: &str, key: &str) -> Write {
    Write::ResourceDelete { name: name.into(), key: key.into() }
}

pub fn row(key: &str, version: u64, value: &str) -> ResourceRow {
    ResourceRow { key: key.into(), version, value: value.into() }
}

pub async fn get(store: &Store, name: &str, key: &str) -> (u64, Option<String>) {
    store.resource_get(name, key).await.expect("the resource row reads")
}

fn at(version: u64, value: &str) -> (u64, Option<String>) {
    (version, Some(value.to_string()))
}

/// Resources: created and listed by name; every put or delete of a key moves
/// its version by one; a delete leaves a tombstone that reads as absent but
/// keeps its version; scans give live rows in key order by prefix, after a
/// key, up to a limit.
pub async fn check_resources(store: &Store) {
    assert!(store.resources().await.unwrap().is_empty());
    commit(store, vec![Write::ResourceCreate(info("orders", 5)), Write::ResourceCreate(info("customers", 7))]).await;
    commit(store, vec![Write::ResourceCreate(info("customers", 8))]).await;
    assert_eq!(
        store.resources().await.unwrap(),
        [info("customers", 8), info("orders", 5)],
        "by name; creating an existing one overwrites its info"
    );

    // versions
    assert_eq!(get(store, "orders", "o-1").await, (0, None), "never written: version 0");
    commit(store, vec![put_row("orders", "o-1", r#"{"n":1}"#)]).await;
    assert_eq!(get(store, "orders", "o-1").await, at(1, r#"{"n":1}"#));
    commit(store, vec![put_row("orders", "o-1", r#"{"n":2}"#)]).await;
    assert_eq!(get(store, "orders", "o-1").await, at(2, r#"{"n":2}"#));
    commit(store, vec![put_row("orders", "o-2", "\"a\""), put_row("orders", "o-2", "\"b\"")]).await;
    assert_eq!(get(store, "orders", "o-2").await, at(2, "\"b\""), "each write of a batch moves the version");
    assert_eq!(get(store, "customers", "o-1").await, (0, None), "a key is per resource");

    // a delete leaves a tombstone with its version; a put after it goes on from there
    commit(store, vec![delete_row("orders", "o-1")]).await;
    assert_eq!(get(store, "orders", "o-1").await, (3, None), "a tombstone reads as absent, at its version");
    assert_eq!(store.resource_scan("orders", "", None, 10).await.unwrap(), [row("o-2", 2, "\"b\"")], "a scan skips it");
    commit(store, vec![put_row("orders", "o-1", "[]")]).await;
    assert_eq!(get(store, "orders", "o-1").await, at(4, "[]"));
    commit(store, vec![delete_row("orders", "o-9")]).await;
    assert_eq!(get(store, "orders", "o-9").await, (1, None), "deleting an absent key moves its version too");
    commit(store, vec![put_row("orders", "o-3", "1"), delete_row("orders", "o-3")]).await;
    assert_eq!(get(store, "orders", "o-3").await, (2, None));
    let big = format!("{{\"text\":\"{}\"}}", "x".repeat(100_000));
    commit(store, vec![put_row("orders", "o-big", &big)]).await;
    assert_eq!(get(store, "orders", "o-big").await, at(1, &big));

    // scans: byte order of keys, prefix, after, limit; live rows only
    commit(store, vec![Write::ResourceCreate(info("scan", 1)), Write::ResourceCreate(info("scan-more", 1))]).await;
    for key in ["b/1", "a/2", "a", "é", "a/10", "ab", "a/1", "b", "a/3", "z"] {
        commit(store, vec![put_row("scan", key, &format!("\"{key}\""))]).await;
    }
    commit(store, vec![put_row("scan", "a/1", "\"a/1\"")]).await;
    commit(store, vec![delete_row("scan", "a/3")]).await;
    commit(store, vec![put_row("scan-more", "a/1", "0"), put_row("sca", "n", "0")]).await;
    let keys = |rows: Vec<ResourceRow>| rows.into_iter().map(|r| r.key).collect::<Vec<_>>();
    let scan = |prefix: &'static str, after: Option<&'static str>, limit: usize| async move {
        keys(store.resource_scan("scan", prefix, after, limit).await.unwrap())
    };
    assert_eq!(scan("", None, 100).await, ["a", "a/1", "a/10", "a/2", "ab", "b", "b/1", "z", "é"]);
    assert_eq!(
        store.resource_scan("scan", "a/", None, 100).await.unwrap(),
        [row("a/1", 2, "\"a/1\""), row("a/10", 1, "\"a/10\""), row("a/2", 1, "\"a/2\"")],
        "rows with their versions"
    );
    assert_eq!(scan("a/", Some("a/1"), 100).await, ["a/10", "a/2"], "after is exclusive");
    assert_eq!(scan("a/", Some("a/10"), 1).await, ["a/2"]);
    assert!(scan("a/", Some("a/2"), 100).await.is_empty(), "the tombstone after it is skipped");
    assert_eq!(scan("a", Some("0"), 100).await, ["a", "a/1", "a/10", "a/2", "ab"], "after before the prefix");
    assert_eq!(scan("", Some("a/2"), 1).await, ["ab"], "the limit counts live rows");
    assert_eq!(scan("", Some("ab"), 2).await, ["b", "b/1"]);
    assert_eq!(scan("", Some("a/25"), 1).await, ["ab"], "after need not be a key");
    assert!(scan("", Some("éé"), 10).await.is_empty());
    assert!(scan("", None, 0).await.is_empty());
    assert!(scan("c", None, 10).await.is_empty());
    assert_eq!(scan("b/1", None, 10).await, ["b/1"], "a key is its own prefix");
    assert!(store.resource_scan("nope", "", None, 10).await.unwrap().is_empty());
    assert_eq!(keys(store.resource_scan("scan-more", "", None, 10).await.unwrap()), ["a/1"], "a resource's rows are its own");
}

/// Resource checks: a batch commits only if every version it names is still
/// current, otherwise it is rejected whole with a conflict.
pub async fn check_resource_checks(store: &Store) {
    commit(store, vec![Write::ResourceCreate(info("stock", 1))]).await;
    let mut b = batch(vec![put_row("stock", "w", "1")]);
    b.check("stock", "w", 0);
    store.commit(b).await.expect("a batch based on the absent key (0) commits");
    let mut b = batch(vec![put_row("stock", "w", "2")]);
    b.check("stock", "w", 1);
    store.commit(b).await.expect("a batch based on the current version commits");
    assert_eq!(get(store, "stock", "w").await, at(2, "2"));

    // A stale check: nothing of the batch is written, its fence does not move.
    let mut b = batch(vec![
        put_row("stock", "w", "3"),
        put_row("stock", "x", "1"),
        Write::Parked { instance: "stock-i".into(), parked: true },
    ]);
    b.check("stock", "w", 1);
    b.fence("stock-i", 0, 1);
    let e = store.commit(b).await;
    assert_eq!(
        e.as_ref().unwrap_err().to_string(),
        "conflict on resource stock key w: read at version 1, now 2"
    );
    assert_conflict(e, "stock", "w", 1, 2);
    assert_eq!(get(store, "stock", "w").await, at(2, "2"), "nothing of a conflicting batch is written");
    assert_eq!(get(store, "stock", "x").await, (0, None), "nothing of a conflicting batch is written");
    assert!(store.parked().await.unwrap().is_empty(), "nothing of a conflicting batch is written");
    let mut b = WriteBatch::new();
    b.fence("stock-i", 0, 1);
    store.commit(b).await.expect("the fence of the rejected batch did not move");

    // Absent (0) does not hold for a key that exists, nor for a tombstone.
    let mut b = batch(vec![put_row("stock", "w", "9")]);
    b.check("stock", "w", 0);
    assert_conflict(store.commit(b).await, "stock", "w", 0, 2);
    commit(store, vec![delete_row("stock", "w")]).await;
    let mut b = batch(vec![put_row("stock", "w", "9")]);
    b.check("stock", "w", 0);
    assert_conflict(store.commit(b).await, "stock", "w", 0, 3);
    let mut b = batch(vec![put_row("stock", "w", "4")]);
    b.check("stock", "w", 3);
    store.commit(b).await.expect("a batch based on the tombstone's version commits");
    assert_eq!(get(store, "stock", "w").await, at(4, "4"));

    // Checks alone (what a call only read) commit and change nothing,
    // also for a key that was never written.
    let mut b = WriteBatch::new();
    b.check("stock", "w", 4);
    b.check("stock", "never", 0);
    b.check("elsewhere", "never", 0);
    store.commit(b).await.expect("checks that hold commit");
    assert_eq!(get(store, "stock", "w").await, at(4, "4"));
    assert_eq!(get(store, "stock", "never").await, (0, None));
    assert_eq!(keys_of(store, "stock").await, ["w"]);
    commit(store, vec![put_row("stock", "never", "1")]).await;
    assert_eq!(get(store, "stock", "never").await, at(1, "1"), "a checked absent key starts at version 1 all the same");

    // The second check stale: the batch is rejected, naming it.
    let mut b = batch(vec![put_row("stock", "w", "5")]);
    b.check("stock", "w", 4);
    b.check("stock", "never", 7);
    assert_conflict(store.commit(b).await, "stock", "never", 7, 1);
    assert_eq!(get(store, "stock", "w").await, at(4, "4"));
    // A check is compared before the batch's own writes.
    let mut b = batch(vec![put_row("stock", "w", "5"), put_row("stock", "w", "6")]);
    b.check("stock", "w", 4);
    store.commit(b).await.expect("checked before its writes");
    assert_eq!(get(store, "stock", "w").await, at(6, "6"));
}

async fn keys_of(store: &Store, name: &str) -> Vec<String> {
    store.resource_scan(name, "", None, 100).await.unwrap().into_iter().map(|r| r.key).collect()
}

/// Concurrent batches on resources: a batch whose check an earlier batch of
/// its group made stale is rejected alone (lost-update prevention), while the
/// others commit and later batches see the versions earlier ones produced.
pub async fn check_resource_group(store: &Store) {
    commit(store, vec![Write::ResourceCreate(info("acct", 1)), put_row("acct", "a", "100"), put_row("acct", "b", "0")]).await;
    let checked = |writes: Vec<Write>, checks: &[(&str, u64)]| {
        let mut b = batch(writes);
        for (key, version) in checks {
            b.check("acct", key, *version);
        }
        b
    };
    let mut batches = vec![
        // Both based on a@1: the first commits, the second is rejected.
        checked(vec![put_row("acct", "a", "90")], &[("a", 1)]),
        checked(vec![put_row("acct", "a", "80"), put_row("acct", "b", "x")], &[("a", 1)]),
        // Independent of them.
        checked(vec![put_row("acct", "b", "y")], &[("b", 1)]),
        // Based on what the first made a.
        checked(vec![put_row("acct", "a", "70")], &[("a", 2)]),
        // c is absent; the first based on that commits, the second is rejected.
        checked(vec![put_row("acct", "c", "1")], &[("c", 0)]),
        checked(vec![put_row("acct", "c", "2")], &[("c", 0)]),
        // A delete an earlier batch did moves the version a later one sees.
        checked(vec![delete_row("acct", "c")], &[("c", 1)]),
        checked(vec![put_row("acct", "c", "3")], &[("c", 2)]),
    ];
    for i in 0..30 {
        let key = format!("k{i}");
        batches.push(checked(vec![put_row("acct", &key, "1")], &[(&key, 0)]));
    }
    let results = in_order(batches.into_iter().map(|b| store.commit(b)).collect()).await;
    for (i, r) in results.into_iter().enumerate() {
        match i {
            1 => assert_conflict(r, "acct", "a", 1, 2),
            5 => assert_conflict(r, "acct", "c", 0, 1),
            _ => r.unwrap_or_else(|e| panic!("batch {i} commits: {e}")),
        }
    }
    assert_eq!(get(store, "acct", "a").await, at(3, "70"));
    assert_eq!(get(store, "acct", "b").await, at(2, "y"), "the rejected batch wrote nothing");
    assert_eq!(get(store, "acct", "c").await, at(3, "3"));
    for i in 0..30 {
        assert_eq!(get(store, "acct", &format!("k{i}")).await, at(1, "1"));
    }
}

// ---------------------------------------------------------------------------
// Tables

pub const COMPONENT: &[u8] = &[0, 1, 2, 254, 255];

/// Every table reads back what was written, in the documented order.
/// Leaves data in place (see `same_contents`).
pub async fn tables(store: &Store) {
    // definitions: the record and the component bytes, by version
    let record = DeployedRecord {
        name: "orders".into(),
        version: "orders@v1".into(),
        kind: ComponentKind::Process,
        deployed_ms: 42,
        size: COMPONENT.len() as u64,
        definition: None,
        external: None,
        allow_http: Vec::new(),
        resources: Vec::new(),
    };
    let mut activity = record.clone();
    activity.name = "charge".into();
    activity.allow_http = vec!["https://bank.example/v1".into()];
    activity.version = "charge@v1".into();
    activity.kind = ComponentKind::Activity;
    commit(store, vec![Write::Definition { record: Box::new(record.clone()), component: COMPONENT.to_vec() }]).await;
    commit(store, vec![Write::Definition { record: Box::new(activity.clone()), component: vec![7; 3] }]).await;
    let defs = store.definitions().await.unwrap();
    assert_eq!(defs.iter().map(json).collect::<Vec<_>>(), [json(&activity), json(&record)], "definitions in version order");
    assert_eq!(store.component("orders@v1").await.unwrap().as_deref(), Some(COMPONENT));
    assert_eq!(store.component("nope").await.unwrap(), None);

    // instances: round trip, id order, filters, limits, counts
    let a = snapshot("i-a", "orders", Status::Waiting, 3);
    let b = snapshot("i-b", "orders", Status::Running, 1);
    let c = snapshot("i-c", "billing", Status::Waiting, 1);
    let gone = snapshot("i-gone", "billing", Status::Completed, 9);
    commit(store, vec![Write::Instance(Box::new(c.clone())), Write::Instance(Box::new(gone.clone()))]).await;
    commit(store, vec![Write::Instance(Box::new(snapshot("i-a", "orders", Status::Running, 1)))]).await;
    commit(store, vec![Write::Instance(Box::new(b.clone())), Write::Instance(Box::new(a.clone()))]).await;
    assert_eq!(store.instance("i-a").await.unwrap(), Some(a.clone()), "the snapshot round-trips, the latest put wins");
    assert_eq!(store.instance("i-z").await.unwrap(), None);
    let ids = |v: Vec<Snapshot>| v.into_iter().map(|s| s.id).collect::<Vec<_>>();
    let all = InstanceFilter::default();
    assert_eq!(ids(store.instances(&all, 10).await.unwrap()), ["i-a", "i-b", "i-c", "i-gone"]);
    assert_eq!(ids(store.instances(&all, 2).await.unwrap()), ["i-a", "i-b"]);
    assert!(store.instances(&all, 0).await.unwrap().is_empty());
    let waiting = InstanceFilter { status: Some(Status::Waiting), process: None, after: None, newest_first: false };
    assert_eq!(ids(store.instances(&waiting, 10).await.unwrap()), ["i-a", "i-c"]);
    let orders = InstanceFilter { status: None, process: Some("orders".into()), after: None, newest_first: false };
    assert_eq!(ids(store.instances(&orders, 10).await.unwrap()), ["i-a", "i-b"]);
    let both = InstanceFilter { status: Some(Status::Waiting), process: Some("billing".into()), after: None, newest_first: false };
    assert_eq!(ids(store.instances(&both, 10).await.unwrap()), ["i-c"]);
    // Newest first: descending ids, a page at a time, "after" meaning smaller.
    let newest = InstanceFilter { newest_first: true, ..InstanceFilter::default() };
    assert_eq!(ids(store.instances(&newest, 10).await.unwrap()), ["i-gone", "i-c", "i-b", "i-a"]);
    assert_eq!(ids(store.instances(&newest, 2).await.unwrap()), ["i-gone", "i-c"]);
    let next = InstanceFilter { after: Some("i-c".into()), ..newest.clone() };
    assert_eq!(ids(store.instances(&next, 2).await.unwrap()), ["i-b", "i-a"]);
    let newest_waiting = InstanceFilter { newest_first: true, ..waiting.clone() };
    assert_eq!(ids(store.instances(&newest_waiting, 10).await.unwrap()), ["i-c", "i-a"]);
    let next_waiting = InstanceFilter { after: Some("i-c".into()), ..newest_waiting.clone() };
    assert_eq!(ids(store.instances(&next_waiting, 10).await.unwrap()), ["i-a"]);
    let newest_orders = InstanceFilter { newest_first: true, after: Some("i-b".into()), ..orders.clone() };
    assert_eq!(ids(store.instances(&newest_orders, 10).await.unwrap()), ["i-a"]);
    assert_eq!(store.count_instances(Status::Waiting).await.unwrap(), 2);
    assert_eq!(store.count_instances(Status::Faulted).await.unwrap(), 0);
    assert_eq!(store.count_all_instances().await.unwrap(), 4, "i-a, i-b, i-c and i-gone");

    // removing an instance removes its snapshot and its whole history, nobody else's
    commit(store, vec![Write::History { instance: "i-gone".into(), entry: entry(1) }]).await;
    commit(store, vec![Write::History { instance: "i-gone".into(), entry: entry(2) }]).await;
    commit(store, vec![Write::History { instance: "i-gone-too".into(), entry: entry(1) }]).await;
    commit(store, vec![Write::InstanceRemove { id: "i-gone".into() }]).await;
    assert_eq!(store.instance("i-gone").await.unwrap(), None);
    assert!(store.history("i-gone").await.unwrap().is_empty());
    assert_eq!(store.history("i-gone-too").await.unwrap().len(), 1);
    commit(store, vec![Write::HistoryPrune { instance: "i-gone-too".into(), below: u64::MAX }]).await;
    assert!(store.history("i-gone-too").await.unwrap().is_empty());
    assert_eq!(store.count_instances(Status::Completed).await.unwrap(), 0);

    // inbox: by seq (numeric), per instance (an id that prefixes another is its own)
    for seq in [3, 10, 1, 2] {
        commit(store, vec![Write::Inbox { instance: "i-a".into(), delivery: delivery(seq) }]).await;
    }
    commit(store, vec![Write::Inbox { instance: "i".into(), delivery: delivery(5) }]).await;
    commit(store, vec![Write::Inbox { instance: "i-b".into(), delivery: delivery(1) }]).await;
    commit(store, vec![Write::InboxRemove { instance: "i-a".into(), seq: 2 }]).await;
    assert_eq!(store.inbox("i-a").await.unwrap(), [delivery(1), delivery(3), delivery(10)]);
    assert_eq!(store.inbox("i").await.unwrap(), [delivery(5)]);
    assert!(store.inbox("i-z").await.unwrap().is_empty());
    assert_eq!(store.inbox_owners().await.unwrap(), ["i", "i-a", "i-b"]);
    // writes apply in batch order
    let put = |seq| Write::Inbox { instance: "i-order".into(), delivery: delivery(seq) };
    let remove = |seq| Write::InboxRemove { instance: "i-order".into(), seq };
    commit(store, vec![put(1), remove(1), remove(2), put(2)]).await;
    assert_eq!(store.inbox("i-order").await.unwrap(), [delivery(2)]);
    commit(store, vec![remove(2)]).await;

    // outbox: by call id, all of it by (instance, call id)
    let done = |call_id| Effect::InvokeDone { call_id };
    for (instance, call_id) in [("i-b", 1), ("i-a", 12), ("i-a", 2), ("i-a", 5)] {
        commit(store, vec![Write::Outbox { instance: instance.into(), call_id, effect: Box::new(done(call_id)) }]).await;
    }
    commit(store, vec![Write::OutboxRemove { instance: "i-a".into(), call_id: 5 }]).await;
    assert_eq!(store.outbox("i-a").await.unwrap(), [done(2), done(12)]);
    assert_eq!(
        store.all_outbox().await.unwrap(),
        [("i-a".to_string(), done(2)), ("i-a".to_string(), done(12)), ("i-b".to_string(), done(1))]
    );

    // timers: a set, keyed by (due, instance, timer id); a put is idempotent
    for t in [timer(500, "i-a", 2), timer(100, "i-b", 1), timer(300, "i-a", 1), timer(500, "i-a", 2), timer(900, "i-c", 4)] {
        commit(store, vec![Write::Timer(t)]).await;
    }
    commit(store, vec![Write::TimerRemove(timer(900, "i-c", 4)), Write::TimerRemove(timer(301, "i-a", 1))]).await;
    let mut timers = store.timers().await.unwrap();
    timers.sort();
    assert_eq!(timers, [timer(100, "i-b", 1), timer(300, "i-a", 1), timer(500, "i-a", 2)]);

    // correlations: the latest put wins; long values work
    let long = format!("[\"{}\"]", "x".repeat(5000));
    commit(store, vec![Write::Correlation { key: correlation("[\"o-1\"]"), instance: "i-b".into() }]).await;
    commit(store, vec![Write::Correlation { key: correlation("[\"o-1\"]"), instance: "i-a".into() }]).await;
    commit(store, vec![Write::Correlation { key: correlation(&long), instance: "i-b".into() }]).await;
    commit(store, vec![Write::Correlation { key: correlation("[\"o-2\"]"), instance: "i-c".into() }]).await;
    commit(store, vec![Write::CorrelationRemove(correlation("[\"o-2\"]"))]).await;
    assert_eq!(store.correlation(&correlation("[\"o-1\"]")).await.unwrap().as_deref(), Some("i-a"));
    assert_eq!(store.correlation(&correlation(&long)).await.unwrap().as_deref(), Some("i-b"));
    assert_eq!(store.correlation(&correlation("[\"o-2\"]")).await.unwrap(), None);
    let other_set = CorrelationKey { set: "by-customer".into(), ..correlation("[\"o-1\"]") };
    assert_eq!(store.correlation(&other_set).await.unwrap(), None);

    // messages and replies
    let intake = IntakeRecord { instance: "i-a".into(), operation: "order".into(), accepted_ms: 77 };
    commit(store, vec![Write::Message { id: "m-1".into(), record: intake.clone() }]).await;
    assert_eq!(store.message("m-1").await.unwrap().map(|m| json(&m)), Some(json(&intake)));
    assert!(store.message("m-2").await.unwrap().is_none());
    let reply = Reply {
        body: serde_json::json!({"ok": true, "n": [1, 2]}),
        fault: Some(Fault { name: "late".into(), message: "too late".into(), data: "{}".into() }),
    };
    commit(store, vec![Write::Reply { message_id: "m-1".into(), reply: reply.clone() }]).await;
    assert_eq!(store.reply("m-1").await.unwrap().map(|r| json(&r)), Some(json(&reply)));
    assert!(store.reply("m-2").await.unwrap().is_none());

    // history: by fence (numeric); prune removes the fences below
    for fence in [4, 1, 12, 2, 3] {
        commit(store, vec![Write::History { instance: "i-a".into(), entry: entry(fence) }]).await;
    }
    commit(store, vec![Write::History { instance: "i-b".into(), entry: entry(1) }]).await;
    let fences = |h: Vec<HistoryEntry>| h.into_iter().map(|e| e.fence).collect::<Vec<_>>();
    assert_eq!(fences(store.history("i-a").await.unwrap()), [1, 2, 3, 4, 12]);
    assert_eq!(json(&store.history("i-a").await.unwrap()[0]), json(&entry(1)));
    commit(store, vec![Write::HistoryPrune { instance: "i-a".into(), below: 3 }]).await;
    assert_eq!(fences(store.history("i-a").await.unwrap()), [3, 4, 12]);
    assert_eq!(fences(store.history("i-b").await.unwrap()), [1], "a prune is per instance");

    // held calls: by (instance, call id)
    for (instance, call_id) in [("i-b", 2), ("i-a", 7), ("i-a", 3), ("i-c", 1)] {
        commit(store, vec![Write::InTransit(Box::new(held(instance, call_id)))]).await;
    }
    let mut resubmitted = held("i-a", 7);
    resubmitted.state = InTransitState::Resubmitted;
    commit(store, vec![Write::InTransit(Box::new(resubmitted.clone()))]).await;
    commit(store, vec![Write::InTransitRemove { instance: "i-c".into(), call_id: 1 }]).await;
    let keys = |v: Vec<InTransit>| v.into_iter().map(|t| (t.instance, t.call_id)).collect::<Vec<_>>();
    assert_eq!(
        keys(store.in_transit(None).await.unwrap()),
        [("i-a".to_string(), 3), ("i-a".to_string(), 7), ("i-b".to_string(), 2)]
    );
    assert_eq!(keys(store.in_transit(Some("i-a")).await.unwrap()), [("i-a".to_string(), 3), ("i-a".to_string(), 7)]);
    assert_eq!(store.in_transit_call("i-a", 7).await.unwrap().map(|t| json(&t)), Some(json(&resubmitted)));
    assert!(store.in_transit_call("i-c", 1).await.unwrap().is_none());

    // breakpoints, parked instances, the clean-shutdown mark
    for (process, path) in [("orders", "main/b"), ("billing", "main"), ("orders", "main/a"), ("orders", "main/x")] {
        commit(store, vec![Write::Breakpoint { process: process.into(), path: path.into(), set: true }]).await;
    }
    commit(store, vec![Write::Breakpoint { process: "orders".into(), path: "main/x".into(), set: false }]).await;
    let pair = |a: &str, b: &str| (a.to_string(), b.to_string());
    assert_eq!(
        store.breakpoints().await.unwrap(),
        [pair("billing", "main"), pair("orders", "main/a"), pair("orders", "main/b")]
    );
    for instance in ["i-c", "i-a", "i-b"] {
        commit(store, vec![Write::Parked { instance: instance.into(), parked: true }]).await;
    }
    commit(store, vec![Write::Parked { instance: "i-b".into(), parked: false }]).await;
    assert_eq!(store.parked().await.unwrap(), ["i-a", "i-c"]);
    assert!(!store.clean_shutdown().await.unwrap());
    commit(store, vec![Write::CleanShutdown(true)]).await;
    assert!(store.clean_shutdown().await.unwrap());
    commit(store, vec![Write::CleanShutdown(false)]).await;
    assert!(!store.clean_shutdown().await.unwrap());
    assert!(!store.isolated().await.unwrap());
    commit(store, vec![Write::Isolated(true)]).await;
    assert!(store.isolated().await.unwrap());
    commit(store, vec![Write::Isolated(false)]).await;
    assert!(!store.isolated().await.unwrap());
    commit(store, vec![Write::CleanShutdown(true)]).await;

    // resources, for the copy: versions and tombstones
    commit(store, vec![Write::ResourceCreate(info("orders", 5)), Write::ResourceCreate(info("empty", 6))]).await;
    commit(store, vec![put_row("orders", "o-1", "1")]).await;
    commit(store, vec![put_row("orders", "o-1", "{\"n\":2}")]).await;
    commit(store, vec![put_row("orders", "o-2", "true"), delete_row("orders", "o-2")]).await;
    commit(store, vec![put_row("orders", "o-3", "\"three\"")]).await;
    let mut b = WriteBatch::new();
    b.check("orders", "o-4", 0);
    store.commit(b).await.unwrap();
    assert_eq!(
        store.resource_scan("orders", "", None, 10).await.unwrap(),
        [row("o-1", 2, "{\"n\":2}"), row("o-3", 1, "\"three\"")]
    );

    // tokens, for the copy
    commit(store, vec![Write::Token(token("t-1", Role::Admin)), Write::Token(token("t-2", Role::Reader))]).await;

    // fences, for the copy
    let mut b = WriteBatch::new();
    b.fence("i-a", 0, 3);
    b.fence("i-b", 0, 1);
    store.commit(b).await.unwrap();
}

pub fn token(id: &str, role: Role) -> TokenRecord {
    TokenRecord { id: id.into(), role, hash: format!("hash-of-{id}"), created_ms: 7, note: format!("note of {id}") }
}

/// Tokens: written by id, listed in id order, overwritten, revoked.
/// Listings and counts of live statuses follow each instance as it moves
/// and ends (the embedded store reads them from its index of live instances).
pub async fn check_live_listings(store: &Store) {
    let ids = |v: Vec<Snapshot>| v.into_iter().map(|s| s.id).collect::<Vec<_>>();
    let running = InstanceFilter { status: Some(Status::Running), process: None, after: None, newest_first: false };
    let waiting = InstanceFilter { status: Some(Status::Waiting), process: None, after: None, newest_first: false };
    for id in ["l-1", "l-2", "l-3"] {
        commit(store, vec![Write::Instance(Box::new(snapshot(id, "p", Status::Running, 1)))]).await;
    }
    assert_eq!(ids(store.instances(&running, 10).await.unwrap()), ["l-1", "l-2", "l-3"]);
    assert_eq!(ids(store.instances(&running, 2).await.unwrap()), ["l-1", "l-2"]);
    // Pages: the ids after the last one shown.
    let next = InstanceFilter { after: Some("l-2".into()), ..running.clone() };
    assert_eq!(ids(store.instances(&next, 2).await.unwrap()), ["l-3"]);
    let all_after = InstanceFilter { after: Some("l-1".into()), ..InstanceFilter::default() };
    assert_eq!(ids(store.instances(&all_after, 10).await.unwrap()), ["l-2", "l-3"]);
    commit(store, vec![Write::Instance(Box::new(snapshot("l-2", "p", Status::Waiting, 2)))]).await;
    commit(store, vec![Write::Instance(Box::new(snapshot("l-3", "p", Status::Completed, 2)))]).await;
    assert_eq!(ids(store.instances(&running, 10).await.unwrap()), ["l-1"]);
    assert_eq!(ids(store.instances(&waiting, 10).await.unwrap()), ["l-2"]);
    assert_eq!(store.count_instances(Status::Running).await.unwrap(), 1);
    assert_eq!(store.count_instances(Status::Waiting).await.unwrap(), 1);
    assert_eq!(store.count_instances(Status::Completed).await.unwrap(), 1);
    commit(store, vec![Write::InstanceRemove { id: "l-1".into() }]).await;
    assert!(store.instances(&running, 10).await.unwrap().is_empty());
    assert_eq!(store.count_instances(Status::Running).await.unwrap(), 0);
}

pub async fn check_tokens(store: &Store) {
    assert!(store.tokens().await.unwrap().is_empty());
    commit(store, vec![Write::Token(token("t-b", Role::Operator)), Write::Token(token("t-a", Role::Reader))]).await;
    assert_eq!(store.tokens().await.unwrap(), [token("t-a", Role::Reader), token("t-b", Role::Operator)]);
    commit(store, vec![Write::Token(token("t-a", Role::Admin))]).await;
    assert_eq!(store.tokens().await.unwrap(), [token("t-a", Role::Admin), token("t-b", Role::Operator)]);
    commit(store, vec![Write::TokenRevoke { id: "t-b".into() }, Write::TokenRevoke { id: "t-none".into() }]).await;
    assert_eq!(store.tokens().await.unwrap(), [token("t-a", Role::Admin)]);
}

/// Two stores hold the same data as `tables` left it, table by table.
pub async fn same_contents(a: &Store, b: &Store) {
    let instances = ["i", "i-a", "i-b", "i-c"];
    assert_eq!(
        a.definitions().await.unwrap().iter().map(json).collect::<Vec<_>>(),
        b.definitions().await.unwrap().iter().map(json).collect::<Vec<_>>()
    );
    for v in ["orders@v1", "charge@v1"] {
        assert_eq!(a.component(v).await.unwrap(), b.component(v).await.unwrap());
    }
    assert_eq!(a.instances(&InstanceFilter::default(), 100).await.unwrap(), b.instances(&InstanceFilter::default(), 100).await.unwrap());
    assert_eq!(a.inbox_owners().await.unwrap(), b.inbox_owners().await.unwrap());
    assert_eq!(a.all_outbox().await.unwrap(), b.all_outbox().await.unwrap());
    for i in instances {
        assert_eq!(a.inbox(i).await.unwrap(), b.inbox(i).await.unwrap());
        assert_eq!(json(&a.history(i).await.unwrap()), json(&b.history(i).await.unwrap()));
    }
    let (mut ta, mut tb) = (a.timers().await.unwrap(), b.timers().await.unwrap());
    ta.sort();
    tb.sort();
    assert_eq!(ta, tb);
    for values in ["[\"o-1\"]", "[\"o-2\"]"] {
        assert_eq!(a.correlation(&correlation(values)).await.unwrap(), b.correlation(&correlation(values)).await.unwrap());
    }
    assert_eq!(a.message("m-1").await.unwrap().map(|m| json(&m)), b.message("m-1").await.unwrap().map(|m| json(&m)));
    assert_eq!(a.reply("m-1").await.unwrap().map(|r| json(&r)), b.reply("m-1").await.unwrap().map(|r| json(&r)));
    assert_eq!(json(&a.in_transit(None).await.unwrap()), json(&b.in_transit(None).await.unwrap()));
    assert_eq!(a.breakpoints().await.unwrap(), b.breakpoints().await.unwrap());
    assert_eq!(a.parked().await.unwrap(), b.parked().await.unwrap());
    assert_eq!(a.clean_shutdown().await.unwrap(), b.clean_shutdown().await.unwrap());
    assert_eq!(b.tokens().await.unwrap(), [token("t-1", Role::Admin), token("t-2", Role::Reader)]);
    assert_eq!(a.tokens().await.unwrap(), b.tokens().await.unwrap());
    // Resources with their versions, tombstones too.
    assert_eq!(b.resources().await.unwrap(), [info("empty", 6), info("orders", 5)]);
    assert_eq!(a.resources().await.unwrap(), b.resources().await.unwrap());
    assert_eq!(get(b, "orders", "o-1").await, at(2, "{\"n\":2}"));
    assert_eq!(get(b, "orders", "o-2").await, (2, None), "the tombstone came along with its version");
    assert_eq!(get(b, "orders", "o-4").await, (0, None));
    for key in ["o-1", "o-2", "o-3", "o-4"] {
        assert_eq!(get(a, "orders", key).await, get(b, "orders", key).await);
    }
    assert_eq!(a.resource_scan("orders", "", None, 10).await.unwrap(), b.resource_scan("orders", "", None, 10).await.unwrap());
    assert_eq!(keys_of(b, "orders").await, ["o-1", "o-3"]);
    let mut stale = WriteBatch::new();
    stale.check("orders", "o-2", 0);
    assert_conflict(b.commit(stale).await, "orders", "o-2", 0, 2);
    let mut next = batch(vec![put_row("orders", "o-2", "null")]);
    next.check("orders", "o-2", 2);
    b.commit(next).await.expect("the copy's versions are the original's");
    assert_eq!(get(b, "orders", "o-2").await, at(3, "null"));
    // The fences came along: the copy accepts exactly what the original would.
    let mut stale = WriteBatch::new();
    stale.fence("i-a", 2, 3);
    assert_stale(b.commit(stale).await, "i-a", 2, 3);
    let mut next = WriteBatch::new();
    next.fence("i-a", 3, 4);
    next.fence("i-b", 1, 2);
    b.commit(next).await.expect("the copy's fences are the original's");
}

/// The whole specification, each part on a fresh store from `fresh`.
pub async fn conforms<F, Fut>(fresh: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Store>,
{
    let store = fresh().await;
    check_fences(&store).await;
    store.close().await;
    let store = fresh().await;
    check_group_commit(&store).await;
    store.close().await;
    let store = fresh().await;
    check_deferred(&store).await;
    store.close().await;
    let store = fresh().await;
    tables(&store).await;
    store.close().await;
    let store = fresh().await;
    check_resources(&store).await;
    store.close().await;
    let store = fresh().await;
    check_resource_checks(&store).await;
    store.close().await;
    let store = fresh().await;
    check_resource_group(&store).await;
    store.close().await;
    let store = fresh().await;
    check_tokens(&store).await;
    store.close().await;
    let store = fresh().await;
    check_live_listings(&store).await;
    store.close().await;
}
