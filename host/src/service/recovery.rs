//! Recovery at start: which instances resume, which stay parked.
//!
//! Owns nothing: it reads the store once and wakes drivers. Recovery reads
//! snapshots, inboxes and outboxes only, never the history. Damage does not
//! stop it: what cannot be read is reported, and every other instance resumes.

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
    recover_scope(svc, Scope { keep: Box::new(|_| true), crashed: Box::new(move |_| crashed) }).await
}

/// Which instances a recovery looks at, and whether each one's last host
/// crashed (deferred recovery parks running instances only after a crash).
/// In cluster mode, the partitions just claimed; otherwise every instance.
pub struct Scope {
    pub keep: Box<dyn Fn(&str) -> bool + Send + Sync>,
    pub crashed: Box<dyn Fn(&str) -> bool + Send + Sync>,
}

/// `recover` for the instances of `scope`.
pub async fn recover_scope(svc: &Service, scope: Scope) -> anyhow::Result<()> {
    let progress = crate::progress::spinner("recovery: listing running instances");
    let found = recover_with(svc, &progress, &scope).await;
    progress.finish_and_clear();
    svc.metrics.recovery_done.set(1);
    found
}

async fn recover_with(svc: &Service, progress: &indicatif::ProgressBar, scope: &Scope) -> anyhow::Result<()> {
    let keep = &scope.keep;
    let mut resume = BTreeSet::new();
    let mut park = Vec::new();
    // Each step goes on past damage: a record that does not decode is
    // reported by the store and skipped, and a step that fails (a damaged
    // table block) is reported here, so every other instance still resumes.
    let running = InstanceFilter { status: Some(Status::Running), process: None, after: None, newest_first: false };
    match svc.store.instances(&running, usize::MAX).await {
        Ok(snapshots) => {
            for s in snapshots.into_iter().filter(|s| keep(&s.id)) {
                let crashed = (scope.crashed)(&s.id);
                let deferred = svc.registry.deployed(&s.version).and_then(|d| d.definition().map(|d| d.deferred_recovery));
                if crashed && deferred == Some(true) {
                    park.push(s.id);
                } else {
                    resume.insert(s.id);
                }
            }
        }
        Err(e) => tracing::error!("recovery: listing running instances: {e} (going on with the rest)"),
    }
    progress.set_message("recovery: listing inboxes");
    match svc.store.inbox_owners().await {
        Ok(owners) => {
            for id in owners.into_iter().filter(|id| keep(id)) {
                match svc.load_snapshot(&id).await {
                    Ok(Some(s)) if s.status == Status::Waiting => {
                        resume.insert(id);
                    }
                    Ok(_) => {}
                    Err(e) => tracing::error!(instance = %id, "recovery: instance {id} is not resumed: {e}"),
                }
            }
        }
        Err(e) => {
            // A damaged block ends the scan: look up each waiting instance's
            // own inbox instead, so only the instances in the block are missed.
            tracing::error!("recovery: listing inboxes: {e} (looking at each waiting instance instead)");
            for id in waiting_with(svc, Table::Inbox).await.into_iter().filter(|id| keep(id)) {
                resume.insert(id);
            }
        }
    }
    progress.set_message("recovery: reading the outbox");
    match svc.store.all_outbox().await {
        Ok(outbox) => {
            for (id, effect) in outbox.into_iter().filter(|(id, _)| keep(id)) {
                match svc.load_snapshot(&id).await {
                    Ok(Some(s)) if s.status.is_terminal() => svc.dispatch(&id, effect, 1),
                    Ok(_) => {
                        resume.insert(id);
                    }
                    Err(e) => tracing::error!(instance = %id, "recovery: instance {id} is not resumed: {e}"),
                }
            }
        }
        Err(e) => {
            tracing::error!("recovery: reading the outbox: {e} (looking at each waiting instance's instead)");
            for id in waiting_with(svc, Table::Outbox).await.into_iter().filter(|id| keep(id)) {
                resume.insert(id);
            }
        }
    }
    if !park.is_empty() {
        tracing::warn!("deferred recovery: {} instances parked until released (cairn release ID)", park.len());
        svc.metrics.recovery_parked.set(park.len() as i64);
        let mut b = WriteBatch::new();
        for id in &park {
            b.push(Write::Parked { instance: id.clone(), parked: true });
            resume.remove(id);
        }
        // Parked in memory first, so that no timer or message loads one meanwhile.
        svc.operator.park(park);
        if let Err(e) = svc.store.commit(b).await {
            tracing::error!("recording parked instances (they stay parked until this host stops): {e}");
        }
    }
    if !resume.is_empty() {
        tracing::info!("resuming {} instances", resume.len());
    }
    svc.metrics.recovery_found.set(resume.len() as i64);
    progress.set_length(resume.len() as u64);
    progress.set_message(format!("recovery: resuming {} instances", resume.len()));
    for id in resume {
        svc.wake(&id);
        svc.metrics.recovery_resumed.inc();
        progress.inc(1);
    }
    Ok(())
}

enum Table {
    Inbox,
    Outbox,
}

/// The waiting instances whose own inbox (or outbox) holds something, each
/// read on its own: a damaged block then hides only the instances in it.
async fn waiting_with(svc: &Service, table: Table) -> Vec<String> {
    let waiting = InstanceFilter { status: Some(Status::Waiting), process: None, after: None, newest_first: false };
    let mut found = Vec::new();
    for s in svc.store.instances(&waiting, usize::MAX).await.unwrap_or_default() {
        let entries = match table {
            Table::Inbox => svc.store.inbox(&s.id).await.map(|v| v.len()),
            Table::Outbox => svc.store.outbox(&s.id).await.map(|v| v.len()),
        };
        match entries {
            Ok(0) => {}
            Ok(_) => found.push(s.id),
            Err(e) => tracing::error!(instance = %s.id, "recovery: instance {} is not resumed: {e}", s.id),
        }
    }
    found
}
