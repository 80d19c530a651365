//! The store's specification, written once and held against every backend
//! (`tests/rocks.rs`, `tests/postgres.rs`): fences, group commit, and what
//! each table reads back after a write.
//!
//! Each `check_*` function takes a fresh, empty store. `tables` leaves its
//! data in place so that `same_contents` can compare a copy (a backup) with
//! the original table by table.

#![allow(dead_code)]

use cairn_engine::{Delivery, Effect, Fault, Reason, Snapshot, Status, Target};
use cairn_store::{
    ComponentKind, CorrelationKey, DeployedRecord, HistoryEntry, InTransit, InTransitState, InstanceFilter, IntakeRecord,
    Reply, Store, StoreError, TimerKey, Write, WriteBatch,
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
    HistoryEntry { fence, at_ms: 100 + fence, reason: Reason::Waiting, status: Status::Waiting, path: "main/wait".into() }
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
    WriteBatch { writes, fences: Vec::new() }
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
        allow_http: Vec::new(),
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
    let waiting = InstanceFilter { status: Some(Status::Waiting), process: None };
    assert_eq!(ids(store.instances(&waiting, 10).await.unwrap()), ["i-a", "i-c"]);
    let orders = InstanceFilter { status: None, process: Some("orders".into()) };
    assert_eq!(ids(store.instances(&orders, 10).await.unwrap()), ["i-a", "i-b"]);
    let both = InstanceFilter { status: Some(Status::Waiting), process: Some("billing".into()) };
    assert_eq!(ids(store.instances(&both, 10).await.unwrap()), ["i-c"]);
    assert_eq!(store.count_instances(Status::Waiting).await.unwrap(), 2);
    assert_eq!(store.count_instances(Status::Faulted).await.unwrap(), 0);

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

    // fences, for the copy
    let mut b = WriteBatch::new();
    b.fence("i-a", 0, 3);
    b.fence("i-b", 0, 1);
    store.commit(b).await.unwrap();
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
    tables(&store).await;
    store.close().await;
}
