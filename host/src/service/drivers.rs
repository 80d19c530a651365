//! Live drivers: which instances are in memory, and how wakes reach them.
//!
//! Owns the live map (instance id -> driver generation and wake channel),
//! behind one mutex that is never held while taking another lock or across
//! an await. At most one driver per instance runs; a wake for an instance
//! not in memory starts one (rehydration). A driver with nothing to do
//! leaves the map (dehydration) only if no wake slipped in meanwhile.

use super::{driver, Service, Wake};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use tokio::sync::{mpsc, Notify};

#[derive(Default)]
pub struct Drivers {
    live: Mutex<HashMap<String, (u64, mpsc::UnboundedSender<Wake>)>>,
    next_generation: AtomicU64,
    /// Notified whenever the live map becomes empty.
    emptied: Notify,
}

impl Drivers {
    /// Hands `wake` to the driver of `id`, starting one if none runs.
    pub fn wake(&self, svc: &Service, id: &str, wake: Wake) {
        // An instance parked by deferred recovery is not loaded until it is
        // resubmitted; an operator verb still reaches it.
        if !matches!(wake, Wake::Control(..)) && svc.operator.is_parked(id) {
            return;
        }
        let mut live = self.live.lock().unwrap();
        let wake = match live.get(id) {
            Some((_, tx)) => match tx.send(wake) {
                Ok(()) => return,
                Err(mpsc::error::SendError(w)) => w,
            },
            None => wake,
        };
        if svc.is_shutting_down() {
            return;
        }
        // Cluster mode: another host runs it.
        if !svc.owns(id) {
            drop(live);
            match wake {
                Wake::Resume => svc.notify_owner(id),
                Wake::Control(_, responder) => {
                    let _ = responder.send(Err(format!(
                        "instance {id} runs on another host of the cluster now: send the verb to its owner (cairn cluster status)"
                    )));
                }
                _ => {}
            }
            return;
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = tx.send(wake);
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
        live.insert(id.to_string(), (generation, tx));
        drop(live);
        tokio::spawn(driver::run(svc.clone(), id.to_string(), generation, rx, None));
    }

    /// Starts the driver of a new instance, not yet stored (`Creation`);
    /// its ack is told when the first persistence point commits, or dropped
    /// if the host is shutting down.
    pub fn create(&self, svc: &Service, id: &str, creation: driver::Creation) {
        if svc.is_shutting_down() || !svc.owns(id) {
            return;
        }
        let mut live = self.live.lock().unwrap();
        if live.contains_key(id) {
            return;
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
        live.insert(id.to_string(), (generation, tx));
        drop(live);
        tokio::spawn(driver::run(svc.clone(), id.to_string(), generation, rx, Some(creation)));
    }

    /// Hands a wake to the live driver of `id` only; a driver that is gone
    /// (shutdown) will dispatch the call again from the outbox.
    pub fn deliver(&self, id: &str, wake: Wake) {
        if let Some((_, tx)) = self.live.lock().unwrap().get(id) {
            let _ = tx.send(wake);
        }
    }

    /// Dehydrates an idle driver: it leaves memory unless a wake slipped in
    /// meanwhile, in which case the wakes are handed back and it stays.
    pub fn dehydrate(&self, id: &str, rx: &mut mpsc::UnboundedReceiver<Wake>) -> Vec<Wake> {
        let mut live = self.live.lock().unwrap();
        let mut pending = Vec::new();
        while let Ok(w) = rx.try_recv() {
            pending.push(w);
        }
        if pending.is_empty() {
            live.remove(id);
            if live.is_empty() {
                self.emptied.notify_waiters();
            }
        }
        pending
    }

    /// Removes the driver of `generation` from the live map once it ended; a
    /// newer driver of the same instance stays.
    pub fn ended(&self, id: &str, generation: u64) {
        let mut live = self.live.lock().unwrap();
        if live.get(id).is_some_and(|(g, _)| *g == generation) {
            live.remove(id);
        }
        if live.is_empty() {
            self.emptied.notify_waiters();
        }
    }

    pub fn in_memory(&self, id: &str) -> bool {
        self.live.lock().unwrap().contains_key(id)
    }

    pub fn count(&self) -> usize {
        self.live.lock().unwrap().len()
    }

    /// Tells the live drivers of the instances `of` selects to look again,
    /// so that those that must stop (`Service::must_stop`) do.
    pub fn signal_where(&self, of: impl Fn(&str) -> bool) -> usize {
        let live = self.live.lock().unwrap();
        let mut n = 0;
        for (_, (_, tx)) in live.iter().filter(|(id, _)| of(id)) {
            let _ = tx.send(Wake::Shutdown);
            n += 1;
        }
        n
    }

    /// Stops the live drivers of the instances `of` selects (their
    /// partition is being handed over: each takes a persistence point) and
    /// waits, at most `limit`, until none is left.
    pub async fn stop_where(&self, of: impl Fn(&str) -> bool, limit: std::time::Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        while self.signal_where(&of) > 0 {
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!("some instances of a partition handed over did not stop in time (their writes are fenced once it is released)");
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Tells every live driver to take a persistence point and stop, and
    /// waits (at most `limit`) until all have.
    pub async fn stop_all(&self, limit: std::time::Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let emptied = self.emptied.notified();
            {
                let live = self.live.lock().unwrap();
                if live.is_empty() {
                    return;
                }
                for (_, tx) in live.values() {
                    let _ = tx.send(Wake::Shutdown);
                }
            }
            if tokio::time::timeout_at(deadline, emptied).await.is_err() {
                tracing::warn!("{} instances did not stop in time", self.count());
                return;
            }
        }
    }
}
