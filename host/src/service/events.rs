//! Events: a live stream of instances' persistence points, for the web
//! console (`GET /v1/events`, server-sent events).
//!
//! Owns one tokio broadcast channel and the count of open subscriptions.
//! A driver publishes after each persistence point commits
//! (`driver::commit`), and only while someone listens (`listening`: one
//! relaxed atomic load), so that the hot path pays next to nothing when
//! nobody does. Events are a hint to look again, never a record: a
//! slow subscriber that falls behind is told it lagged and reloads what it
//! shows; nothing is stored or replayed.

use cairn_engine::{Reason, Status};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::{broadcast, watch};

/// How many events a subscriber may fall behind before it is told it lagged.
const CAPACITY: usize = 1024;

/// One persistence point of an instance, as the event stream tells it.
#[derive(Clone, Debug)]
pub struct InstanceEvent {
    pub id: String,
    pub process: String,
    pub version: String,
    pub status: Status,
    /// The activity path of the point (the innermost activity).
    pub path: String,
    pub reason: Reason,
    pub fence: u64,
    pub at_ms: u64,
}

pub struct Events {
    tx: broadcast::Sender<InstanceEvent>,
    /// Set at shutdown: open streams end, so that they do not hold the grace period.
    closed: watch::Sender<bool>,
    /// Subscriptions alive now (each decrements it when dropped).
    subscribers: Arc<AtomicUsize>,
}

/// One open stream: its events, the shutdown signal, and its place in the count.
pub struct Subscription {
    pub events: broadcast::Receiver<InstanceEvent>,
    pub closed: watch::Receiver<bool>,
    subscribers: Arc<AtomicUsize>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.subscribers.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Default for Events {
    fn default() -> Events {
        Events { tx: broadcast::channel(CAPACITY).0, closed: watch::channel(false).0, subscribers: Arc::new(AtomicUsize::new(0)) }
    }
}

impl Events {
    /// Whether any stream is open: events are built only then. A stream
    /// opened just after a `false` misses that one event, as it would have
    /// if it had opened a moment later.
    pub fn listening(&self) -> bool {
        self.subscribers.load(Ordering::Relaxed) > 0
    }

    pub fn publish(&self, event: InstanceEvent) {
        // No subscriber left since `listening`: nothing to do.
        let _ = self.tx.send(event);
    }

    /// A new subscription, with the signal that ends it at shutdown.
    pub fn subscribe(&self) -> Subscription {
        self.subscribers.fetch_add(1, Ordering::Relaxed);
        Subscription { events: self.tx.subscribe(), closed: self.closed.subscribe(), subscribers: self.subscribers.clone() }
    }

    /// Ends every open stream (the host is shutting down).
    pub fn close(&self) {
        self.closed.send_replace(true);
    }
}
