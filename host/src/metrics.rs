//! Metrics: what `GET /metrics` serves, in the Prometheus text format
//! (OpenMetrics), through the `prometheus-client` crate.
//!
//! Owns one `Registry` per service. Most series are kept as they happen
//! (counters and histograms updated by the driver, `Calls`, the timer loop
//! and recovery); a few are read at scrape time, where they already live:
//! the store's commit counters (`StoreCollector`), the live-index counts of
//! running, waiting and suspended instances (one key scan of the store's
//! `live` index, not of the instances), the timers due and the dispatch
//! queue, the store's memtables and block cache, and the resident memory.
//!
//! Names start with `cairn_`; times are seconds. Label values are bounded:
//! statuses, and deployed process and activity names.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::sync::Mutex;
use std::time::Duration;

/// One label: its name and value.
type Labels = Vec<(&'static str, String)>;

/// Every series the host keeps itself; `render` adds the ones read at scrape time.
pub struct Metrics {
    registry: Mutex<Registry>,
    /// Live instances by status (`running`, `waiting`, `suspended`), set at scrape time.
    pub instances: Family<Labels, Gauge>,
    /// Instances created, by process, since the host started.
    pub instances_started: Family<Labels, Counter>,
    /// Instances that ended, by process and final status, since the host started.
    pub instances_ended: Family<Labels, Counter>,
    /// Instance drivers in memory (instances not dehydrated).
    pub instances_in_memory: Gauge,
    /// Persistence points committed, by process.
    pub persistence_points: Family<Labels, Counter>,
    /// Handler calls, by process: how long each took.
    pub handler_calls: Family<Labels, Histogram, fn() -> Histogram>,
    /// Activity calls (one attempt each), by activity: how long each took.
    pub activity_calls: Family<Labels, Histogram, fn() -> Histogram>,
    /// Outbox entries being carried out now (activity calls and sends dispatched, not finished).
    pub dispatch_queue: Gauge,
    /// Durable timers the host holds in memory, and those already due but not yet fired.
    pub timers_pending: Gauge,
    pub timers_due: Gauge,
    /// Timers fired since the host started.
    pub timers_fired: Counter,
    /// Recovery at start: instances found to resume, woken so far, parked; 1 once done.
    pub recovery_found: Gauge,
    pub recovery_resumed: Gauge,
    pub recovery_parked: Gauge,
    pub recovery_done: Gauge,
}

fn latency() -> Histogram {
    // 0.5 ms to about 16 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

impl Metrics {
    pub fn new(store: cairn_store::Store) -> Metrics {
        let m = Metrics {
            registry: Mutex::new(Registry::default()),
            instances: Family::default(),
            instances_started: Family::default(),
            instances_ended: Family::default(),
            instances_in_memory: Gauge::default(),
            persistence_points: Family::default(),
            handler_calls: Family::new_with_constructor(latency as fn() -> Histogram),
            activity_calls: Family::new_with_constructor(latency as fn() -> Histogram),
            dispatch_queue: Gauge::default(),
            timers_pending: Gauge::default(),
            timers_due: Gauge::default(),
            timers_fired: Counter::default(),
            recovery_found: Gauge::default(),
            recovery_resumed: Gauge::default(),
            recovery_parked: Gauge::default(),
            recovery_done: Gauge::default(),
        };
        {
            let mut r = m.registry.lock().unwrap();
            let c = r.sub_registry_with_prefix("cairn");
            c.register("instances", "Live instances by status (the store's live index, read at scrape time)", m.instances.clone());
            c.register("instances_started", "Instances created since the host started, by process", m.instances_started.clone());
            c.register("instances_ended", "Instances that ended since the host started, by process and final status", m.instances_ended.clone());
            c.register("instances_in_memory", "Instances whose driver is in memory (not dehydrated)", m.instances_in_memory.clone());
            c.register("persistence_points", "Persistence points committed, by process", m.persistence_points.clone());
            c.register("handler_call_seconds", "Handler calls (a process's own code), by process", m.handler_calls.clone());
            c.register("activity_call_seconds", "Activity calls (one attempt each), by activity", m.activity_calls.clone());
            c.register("dispatch_queue_depth", "Activity calls and sends dispatched after their commit and not finished", m.dispatch_queue.clone());
            c.register("timers_pending", "Durable timers held in memory", m.timers_pending.clone());
            c.register("timers_due", "Timers due and not fired yet", m.timers_due.clone());
            c.register("timers_fired", "Timers fired since the host started", m.timers_fired.clone());
            c.register("recovery_instances_found", "Instances recovery found to resume at start", m.recovery_found.clone());
            c.register("recovery_instances_resumed", "Instances recovery has resumed so far", m.recovery_resumed.clone());
            c.register("recovery_instances_parked", "Instances deferred recovery parked until released", m.recovery_parked.clone());
            c.register("recovery_done", "1 once recovery at start has finished", m.recovery_done.clone());
            c.register_collector(Box::new(StoreCollector(store)));
        }
        m
    }

    /// Records one handler call of `process` that took `took`.
    pub fn handler_call(&self, process: &str, took: Duration) {
        self.handler_calls.get_or_create(&vec![("process", process.to_string())]).observe(took.as_secs_f64());
    }

    /// Records one activity-call attempt on `activity` that took `took`.
    pub fn activity_call(&self, activity: &str, took: Duration) {
        self.activity_calls.get_or_create(&vec![("activity", activity.to_string())]).observe(took.as_secs_f64());
    }

    /// Records an instance of `process` created (stored) outside its driver's first persistence point.
    pub fn instance_started(&self, process: &str) {
        self.instances_started.get_or_create(&vec![("process", process.to_string())]).inc();
    }

    /// Records a committed persistence point of an instance of `process`
    /// whose status is now `status`; `created`: its first one.
    pub fn persistence_point(&self, process: &str, status: cairn_engine::Status, created: bool) {
        let process_label = vec![("process", process.to_string())];
        self.persistence_points.get_or_create(&process_label).inc();
        if created {
            self.instances_started.get_or_create(&process_label).inc();
        }
        if status.is_terminal() {
            self.instances_ended.get_or_create(&vec![("process", process.to_string()), ("status", status.as_str().to_string())]).inc();
        }
    }

    /// The text a scrape gets.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry.lock().unwrap()).expect("writing to a String does not fail");
        out
    }
}

/// The store's group-commit counters, read at scrape time.
struct StoreCollector(cairn_store::Store);

impl std::fmt::Debug for StoreCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StoreCollector({})", self.0.kind())
    }
}

impl Collector for StoreCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stats = self.0.commit_stats();
        let counter = |encoder: &mut DescriptorEncoder, name: &str, help: &str, v: u64| -> Result<(), std::fmt::Error> {
            let c: Counter = Counter::default();
            c.inc_by(v);
            c.encode(encoder.encode_descriptor(name, help, None, MetricType::Counter)?)
        };
        counter(&mut encoder, "store_batches", "Write batches committed (persistence points, intake and other writes)", stats.batches)?;
        counter(&mut encoder, "store_writes", "Store writes (RocksDB write batches or PostgreSQL transactions) that carried the batches", stats.writes)?;
        counter(
            &mut encoder,
            "store_fsyncs",
            "Syncs of the store's writes to disk (none with serve --no-fsync); a write of deferred persistence points is synced with a later one",
            stats.syncs,
        )?;
        let memory = self.0.memory();
        let gauge = |encoder: &mut DescriptorEncoder, name: &str, help: &str, v: u64| -> Result<(), std::fmt::Error> {
            let g: Gauge = Gauge::default();
            g.set(i64::try_from(v).unwrap_or(i64::MAX));
            g.encode(encoder.encode_descriptor(name, help, None, MetricType::Gauge)?)
        };
        gauge(&mut encoder, "store_memtable_bytes", "Bytes in the embedded store's memtables (0 for PostgreSQL)", memory.memtables)?;
        gauge(&mut encoder, "store_block_cache_bytes", "Bytes in the embedded store's block cache (0 for PostgreSQL)", memory.block_cache)?;
        gauge(&mut encoder, "process_resident_bytes", "The host process's resident memory (VmRSS)", resident_bytes())?;
        let mut buckets: Vec<(f64, u64)> =
            cairn_store::GROUP_SIZE_BUCKETS.iter().zip(stats.group_sizes).map(|(upper, n)| (*upper as f64, n)).collect();
        buckets.push((f64::MAX, 0));
        encoder
            .encode_descriptor("store_group_commit_batches", "Batches carried by each store write (group commit)", None, MetricType::Histogram)?
            .encode_histogram::<NoLabelSet>(stats.batches as f64, stats.writes, &buckets, None)
    }
}

/// A field of a process's `/proc/PROCESS/status` in KiB (`PROCESS`: a pid,
/// or `self`), such as `VmRSS`; 0 where there is none.
pub fn status_kib(process: &str, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{process}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix(field)?.strip_prefix(':')?.split_whitespace().next()?.parse::<u64>().ok())
        })
        .unwrap_or(0)
}

/// The process's resident memory (0 where `/proc` has none).
fn resident_bytes() -> u64 {
    status_kib("self", "VmRSS") * 1024
}
