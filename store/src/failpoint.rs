//! Named fail points for deterministic crash tests.
//!
//! `CAIRN_FAILPOINT=NAME[:N]` makes the process abort (as `kill -9` would:
//! no destructors, no flush) the N-th time (default: the first) execution
//! reaches the point called NAME. The thread that reaches it goes no
//! further; the abort comes 100 ms later, so that answers other threads had
//! already on their way (an acknowledgement just committed) can leave, as
//! they could before a real crash. Points: `before-commit` (a persistence
//! point's batch is built but not written), `pipelined` (a persistence point
//! is submitted without waiting for the points before it to be written),
//! `before-write` (the committer is about to write a group holding an
//! instance's persistence point: it and everything queued behind it are
//! lost), `after-commit` (a group of batches
//! written, effects not yet dispatched), `after-point` (an instance's
//! persistence point is known written, its effects not yet released), `after-commit-dispatch` (a committed invoke or send
//! about to be dispatched), `mid-dispatch` (an activity ran, its result not
//! yet delivered to the instance), `after-compensation-step` (one compensation
//! handler's persistence point committed), `atomic-call` (a handler call inside
//! an atomic scope is about to run), `inline-call` (a microflow's or atomic
//! scope's activity call returned), `compile-component` (the child process
//! compiling a component is about to compile it: a compiler that crashes).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

static ARMED: OnceLock<Option<(String, u64)>> = OnceLock::new();
static HITS: AtomicU64 = AtomicU64::new(0);

fn armed() -> &'static Option<(String, u64)> {
    ARMED.get_or_init(|| {
        let spec = std::env::var("CAIRN_FAILPOINT").ok()?;
        let (name, n) = match spec.split_once(':') {
            Some((name, n)) => (name.to_string(), n.parse().unwrap_or(1)),
            None => (spec, 1),
        };
        Some((name, n))
    })
}

pub fn hit(name: &str) {
    if let Some((armed, n)) = armed() {
        if armed == name && HITS.fetch_add(1, Ordering::SeqCst) + 1 == *n {
            eprintln!("cairn: fail point '{name}' reached (hit {n}): aborting");
            let wait = || std::thread::sleep(std::time::Duration::from_millis(100));
            // On a runtime worker, hand its queued tasks to another thread
            // first: a task this one just woke (an answer on its way) waits
            // in the worker's own slot, where no other worker takes it.
            match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
                Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(wait),
                _ => wait(),
            }
            std::process::abort();
        }
    }
}

static PAUSE: OnceLock<Option<(String, u64)>> = OnceLock::new();

/// `CAIRN_PAUSE=NAME:MS` makes execution wait MS milliseconds each time it
/// reaches the pause point NAME: a test's way to make one step outlast a
/// timeout, or one write land alone. Points: `backup-begun` (a PostgreSQL
/// backup's read transaction is open, nothing read yet), `pipelined` (a
/// driver is about to make a persistence point behind others held or in
/// flight; a point it holds is written alone during the pause).
pub async fn pause(name: &str) {
    let armed = PAUSE.get_or_init(|| {
        let spec = std::env::var("CAIRN_PAUSE").ok()?;
        let (name, ms) = spec.split_once(':')?;
        Some((name.to_string(), ms.parse().ok()?))
    });
    if let Some((armed, ms)) = armed {
        if armed == name {
            tokio::time::sleep(std::time::Duration::from_millis(*ms)).await;
        }
    }
}
