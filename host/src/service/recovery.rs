//! Recovery at start: which instances resume, which stay parked.
//!
//! Owns nothing: it reads the store once and wakes drivers. Recovery reads
//! snapshots, inboxes and outboxes only, never the history.

use super::Service;
use cairn_engine::Status;
use cairn_store::{InstanceFilter, Write, WriteBatch};
use std::collections::BTreeSet;

/// Resumes every instance that has something to do: running ones, waiting
/// ones with messages pending, and any with outbox entries (a finished
/// instance's last sends go out again). Timers resume the rest. After a
/// crash, running instances of definitions with deferred recovery are
/// parked until an operator releases them.
pub async fn recover(svc: &Service) -> anyhow::Result<()> {
    let crashed = !svc.clean_start();
    let mut resume = BTreeSet::new();
    let mut park = Vec::new();
    let running = InstanceFilter { status: Some(Status::Running), process: None };
    for s in svc.store.instances(&running, usize::MAX).await? {
        let deferred = svc.registry.deployed(&s.version).and_then(|d| d.definition().map(|d| d.deferred_recovery));
        if crashed && deferred == Some(true) {
            park.push(s.id);
        } else {
            resume.insert(s.id);
        }
    }
    for id in svc.store.inbox_owners().await? {
        if svc.load_snapshot(&id).await?.is_some_and(|s| s.status == Status::Waiting) {
            resume.insert(id);
        }
    }
    for (id, effect) in svc.store.all_outbox().await? {
        match svc.load_snapshot(&id).await? {
            Some(s) if s.status.is_terminal() => svc.dispatch(&id, effect, 1),
            _ => {
                resume.insert(id);
            }
        }
    }
    if !park.is_empty() {
        eprintln!("cairn: deferred recovery: {} instances parked until released (cairn release ID)", park.len());
        let mut b = WriteBatch::new();
        for id in &park {
            b.push(Write::Parked { instance: id.clone(), parked: true });
            resume.remove(id);
        }
        // Parked in memory first, so that no timer or message loads one meanwhile.
        svc.operator.park(park);
        if let Err(e) = svc.store.commit(b).await {
            eprintln!("cairn: recording parked instances (they stay parked until this host stops): {e}");
        }
    }
    if !resume.is_empty() {
        eprintln!("cairn: resuming {} instances", resume.len());
    }
    for id in resume {
        svc.wake(&id);
    }
    Ok(())
}
