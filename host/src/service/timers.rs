//! Timers: durable timers that come due, in due order.
//!
//! Owns the set of due times in memory (loaded from the store at start, kept
//! in step by committed `SetTimer`/`ClearTimer` effects) behind one mutex
//! held briefly. The timer loop wakes each instance whose timer is due; the
//! instance's driver decides what the timer means.

use super::Service;
use crate::now_ms;
use cairn_store::{Store, TimerKey};
use std::collections::BTreeSet;
use std::sync::Mutex;
use tokio::sync::Notify;

pub struct Timers {
    due: Mutex<BTreeSet<TimerKey>>,
    changed: Notify,
}

impl Timers {
    pub async fn load(store: &Store) -> anyhow::Result<Timers> {
        let due = store.timers().await?.into_iter().collect();
        Ok(Timers { due: Mutex::new(due), changed: Notify::new() })
    }

    /// No timers yet (cluster mode: each claimed partition's are loaded by `load_where`).
    pub fn empty() -> Timers {
        Timers { due: Mutex::new(BTreeSet::new()), changed: Notify::new() }
    }

    /// Adds the stored timers of the instances `of` selects.
    pub async fn load_where(&self, store: &Store, of: impl Fn(&str) -> bool) -> anyhow::Result<()> {
        let found: Vec<TimerKey> = store.timers().await?.into_iter().filter(|t| of(&t.instance)).collect();
        self.due.lock().unwrap().extend(found);
        self.changed.notify_waiters();
        Ok(())
    }

    /// Forgets the timers of the instances `of` selects (their partition left this host).
    pub fn drop_where(&self, of: impl Fn(&str) -> bool) {
        self.due.lock().unwrap().retain(|t| !of(&t.instance));
    }

    pub fn set(&self, timer: TimerKey) {
        self.due.lock().unwrap().insert(timer);
        self.changed.notify_waiters();
    }

    pub fn clear(&self, timer: &TimerKey) {
        self.due.lock().unwrap().remove(timer);
    }

    /// How many timers are held, and how many of them are due at `now`.
    pub fn counts(&self, now: u64) -> (usize, usize) {
        let due = self.due.lock().unwrap();
        (due.len(), due.iter().take_while(|t| t.due_ms <= now).count())
    }

    /// Wakes the loop so it sees the host is shutting down.
    pub fn stop(&self) {
        self.changed.notify_waiters();
    }

    /// Takes the timers due at `now`; returns them and the next due time.
    fn take_due(&self, now: u64) -> (Vec<TimerKey>, Option<u64>) {
        let mut due = self.due.lock().unwrap();
        let mut out = Vec::new();
        while due.first().is_some_and(|t| t.due_ms <= now) {
            out.push(due.pop_first().expect("checked above"));
        }
        (out, due.first().map(|t| t.due_ms))
    }
}

/// Fires due timers in due order by waking their instances.
pub async fn run(svc: Service) {
    loop {
        if svc.is_shutting_down() {
            return;
        }
        let changed = svc.timers.changed.notified();
        let (due, next) = svc.timers.take_due(now_ms());
        svc.metrics.timers_fired.inc_by(due.len() as u64);
        for t in due {
            svc.wake(&t.instance);
        }
        match next {
            Some(due) => {
                let wait = std::time::Duration::from_millis(due.saturating_sub(now_ms()));
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = changed => {}
                }
            }
            None => changed.await,
        }
    }
}
