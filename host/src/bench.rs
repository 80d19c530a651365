//! `cairn bench`: benchmarks run in-process, each against a fresh temporary
//! data directory, with the real runtime, store and guest components.
//! Results are printed as Markdown rows for BENCHMARKS.md.
//!
//! Benchmarks measure; they never assert. Timed assertions do not belong in tests.

use cairn_engine::Status;
use crate::runtime::{Limits, Loaded, LogContext};
use crate::service::{Config, MessageIn, Service};
use cairn_store::{HistoryEntry, Location, Write, WriteBatch};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct Args {
    /// Directory holding the built guest components (default: $CARGO_TARGET_DIR/wasm32-wasip2/release).
    #[arg(long)]
    guests: Option<PathBuf>,
    /// Which benchmarks: all, call, commit, throughput, atomic, http, memory;
    /// or http-api (not in all): the real `cairn serve` through its HTTP API,
    /// on the workloads of the Restate peer harness (bench_http.rs); or
    /// peer-load: the same closed-loop load generator against the Restate
    /// peer's ingress (bench/restate/run.sh with LOADGEN), printing load.mjs's JSON.
    #[arg(long, default_value = "all")]
    only: String,
    /// http-api: requests per load run (after 50 warm-up).
    #[arg(long, default_value_t = 2000)]
    requests: usize,
    /// http-api: instances waiting on a 60 s timer at the kill -9.
    #[arg(long, default_value_t = 1000)]
    sleepers: usize,
    /// http-api: completed instances after which a restart is timed, comma-separated (0 is always timed).
    #[arg(long, default_value = "20000,50000", value_delimiter = ',')]
    restart_after: Vec<usize>,
    /// Instances for the memory benchmark.
    #[arg(long, default_value_t = 100_000)]
    instances: usize,
    /// Instances per throughput run at concurrency 64.
    #[arg(long, default_value_t = 5_000)]
    throughput_instances: usize,
    /// Also measure throughput with fsync off.
    #[arg(long)]
    with_fsync_off: bool,
    /// Run against a PostgreSQL server instead of the embedded RocksDB store:
    /// postgres://USER@HOST:PORT (each benchmark creates a fresh database on it).
    #[arg(long)]
    store: Option<String>,
    /// peer-load: the peer's ingress, on loopback (the Restate peer harness's).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    ingress: String,
    /// peer-load: the workload, order (three steps) or single (one).
    #[arg(long, default_value = "order")]
    target: String,
    /// peer-load: concurrent clients.
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// peer-load: warm-up requests before the measured ones.
    #[arg(long, default_value_t = 50)]
    warmup: usize,
    /// peer-load: no new request after this many seconds.
    #[arg(long, default_value_t = 300)]
    max_seconds: u64,
    /// peer-load: what makes this run's keys unique (default: the time).
    #[arg(long)]
    tag: Option<String>,
}

struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let p = std::env::temp_dir().join(format!("cairn-bench-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        Scratch(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn guests_dir(args: &Args) -> PathBuf {
    if let Some(g) = &args.guests {
        return g.clone();
    }
    let target = std::env::var("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|_| PathBuf::from("target"));
    target.join("wasm32-wasip2").join("release")
}

fn read_guest(dir: &Path, file: &str) -> anyhow::Result<Vec<u8>> {
    let p = dir.join(format!("{file}.wasm"));
    std::fs::read(&p).map_err(|e| anyhow::anyhow!("{}: {e} (build the guests first: scripts/test.sh or scripts/demo.sh)", p.display()))
}

/// The store of one benchmark: a fresh embedded store in `dir`, or a fresh database on the PostgreSQL server.
async fn location(dir: &Path) -> anyhow::Result<Location> {
    match STORE.get().cloned().flatten() {
        None => Ok(Location::Embedded { data_dir: dir.to_path_buf() }),
        Some(server) => Ok(Location::Postgres { url: cairn_store::fresh_postgres_database(&server).await? }),
    }
}

static STORE: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();

async fn config(dir: &Path, fsync: bool) -> anyhow::Result<Config> {
    Ok(Config {
        data_dir: dir.to_path_buf(),
        store: location(dir).await?,
        fsync,
        salvage_wal: false,
        limits: Limits::default(),
        history_limit: 1000,
        echo_guest_log: false,
        idle: Duration::ZERO,
        isolated: false,
        http: Default::default(),
        cluster: None,
        compile_in: None,
    })
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn us(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

fn rss_mib() -> f64 {
    crate::metrics::status_kib("self", "VmRSS") as f64 / 1024.0
}

pub fn run(args: Args) -> i32 {
    if args.only == "peer-load" {
        let load = crate::bench_http::PeerLoad {
            ingress: args.ingress.clone(),
            target: args.target.clone(),
            requests: args.requests,
            concurrency: args.concurrency,
            warmup: args.warmup,
            max_seconds: args.max_seconds,
            tag: args.tag.clone(),
        };
        return match crate::bench_http::peer_load(&load) {
            Ok(summary) => {
                println!("{summary}");
                0
            }
            Err(e) => {
                eprintln!("cairn bench --only peer-load: {e:#}");
                2
            }
        };
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    match rt.block_on(run_all(args)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("cairn bench: {e:#}");
            1
        }
    }
}

async fn run_all(args: Args) -> anyhow::Result<()> {
    let dir = guests_dir(&args);
    STORE.get_or_init(|| args.store.clone());
    let store = if args.store.is_some() { "PostgreSQL" } else { "RocksDB" };
    println!("store: {store}");
    let want = |name: &str| args.only == "all" || args.only == name;
    println!("| benchmark | result |");
    println!("|---|---|");
    if want("call") {
        bench_call(&dir).await?;
    }
    if want("commit") {
        bench_commit(true).await?;
        bench_commit(false).await?;
    }
    if want("throughput") {
        bench_throughput(&dir, 1, 300, true).await?;
        bench_throughput(&dir, 64, args.throughput_instances, true).await?;
        if args.with_fsync_off {
            bench_throughput(&dir, 64, args.throughput_instances, false).await?;
        }
    }
    if want("atomic") {
        bench_atomic(&dir, true).await?;
        bench_atomic(&dir, false).await?;
    }
    if want("http") {
        bench_http(&dir, 1, 200).await?;
        bench_http(&dir, 32, 2000).await?;
    }
    if want("memory") {
        bench_memory(&dir, args.instances).await?;
    }
    if args.only == "http-api" {
        anyhow::ensure!(args.store.is_none(), "--only http-api runs on the embedded store");
        let opts = crate::bench_http::Options {
            requests: args.requests,
            warmup: 50,
            sleepers: args.sleepers,
            sleep_ms: 60_000,
            restart_after: args.restart_after.clone(),
            max_seconds: 300,
        };
        tokio::task::block_in_place(|| crate::bench_http::run(&dir, &opts))?;
    }
    Ok(())
}

async fn service(tag: &str, fsync: bool) -> anyhow::Result<(Scratch, Service)> {
    let scratch = Scratch::new(tag);
    let svc = Service::start(config(&scratch.0, fsync).await?).await?;
    Ok((scratch, svc))
}

async fn deploy(svc: &Service, dir: &Path, file: &str, name: Option<&str>) -> anyhow::Result<String> {
    let (record, _) = svc
        .deploy(read_guest(dir, file)?, name.map(str::to_string), Vec::new(), Vec::new())
        .await
        .map_err(|e| anyhow::anyhow!("deploying {file}: {}", e.message))?;
    Ok(record.version)
}

/// One handler call in a fresh sandboxed instance, end to end through `Runtime::call`.
async fn bench_call(dir: &Path) -> anyhow::Result<()> {
    let (_s, svc) = service("call", false).await?;
    let version = deploy(&svc, dir, "t_bench", None).await?;
    let deployed = svc.registry.deployed(&version).unwrap();
    let Loaded::Process(component) = svc.registry.component(&deployed).await? else { unreachable!() };
    let def = deployed.record.definition.as_ref().unwrap();
    // Handler 1 is the "work" snippet (0 is the receive's reader).
    let log = LogContext { sink: svc.guest_log(), source: def.name.clone(), instance: "bench".into(), at: "main/work".into() };
    let vars = r#"{"n":1,"echoed":0}"#;
    let mut samples = Vec::with_capacity(5000);
    for i in 0..5500 {
        let t = Instant::now();
        let out = svc.runtime.call(component, 1, vars, None, None, log.clone()).await;
        let d = t.elapsed();
        assert!(out.is_ok(), "bench handler failed: {out:?}");
        if i >= 500 {
            samples.push(d);
        }
    }
    samples.sort();
    println!(
        "| handler call, fresh instance ({} KB guest), 5,000 calls | median {}, p99 {} |",
        deployed.record.size / 1024,
        us(percentile(&samples, 0.5)),
        us(percentile(&samples, 0.99))
    );
    svc.shutdown().await;
    Ok(())
}

/// Latency of one persistence point: a snapshot, its fence and history entry in one batch.
async fn bench_commit(fsync: bool) -> anyhow::Result<()> {
    let scratch = Scratch::new(if fsync { "commit-fsync" } else { "commit-nofsync" });
    let store = cairn_store::open(&location(&scratch.0).await?, fsync).await?;
    let mut samples = Vec::new();
    for i in 0..2000u64 {
        let id = format!("instance-{}", i % 100);
        let fence = i / 100;
        let snapshot: cairn_engine::Snapshot = serde_json::from_value(serde_json::json!({
            "id": id, "process": "bench", "version": "bench", "status": "waiting",
            "variables": format!(r#"{{"payload":"{}"}}"#, "x".repeat(400)),
            "stack": [{ "node": 0, "phase": "await-timer", "timer_id": 1, "due_ms": 0 }],
            "correlations": {}, "requests": [], "fault": null, "next_id": 2, "fence": fence + 1, "created_ms": 0, "updated_ms": 0,
        }))?;
        let mut b = WriteBatch::new();
        b.fence(&id, fence, fence + 1);
        let entry = HistoryEntry { fence: fence + 1, at_ms: 0, reason: cairn_engine::Reason::Waiting, status: snapshot.status, path: "main/wait".into(), resource_conflicts: 0, moved_by: Vec::new() };
        b.push(Write::History { instance: id.clone(), entry });
        b.push(Write::Instance(Box::new(snapshot)));
        let t = Instant::now();
        store.commit(b).await.map_err(|e| anyhow::anyhow!("{e}"))?;
        samples.push(t.elapsed());
    }
    samples.sort();
    println!(
        "| persistence point commit, fsync {}, 2,000 sequential | median {}, p99 {} |",
        if fsync { "on" } else { "off" },
        us(percentile(&samples, 0.5)),
        us(percentile(&samples, 0.99))
    );
    store.close().await;
    Ok(())
}

/// Completed instances per second of receive + snippet + invoke, fsync on.
async fn bench_throughput(dir: &Path, concurrency: usize, total: usize, fsync: bool) -> anyhow::Result<()> {
    let (_s, svc) = service(&format!("throughput-{concurrency}"), fsync).await?;
    deploy(&svc, dir, "t_recorder", Some("recorder")).await?;
    deploy(&svc, dir, "t_bench", None).await?;
    let run_one = |svc: Service, n: usize| async move {
        let m = MessageIn::new("bench-start", format!(r#"{{"n":{n}}}"#));
        let a = svc.accept_message(m, None).await.map_err(|e| anyhow::anyhow!(e.message))?;
        svc.await_reply(&a.message_id, Duration::from_secs(60)).await.map_err(|e| anyhow::anyhow!(e.message))?;
        anyhow::Ok(())
    };
    for n in 0..20 {
        run_one(svc.clone(), n).await?;
    }
    let before = svc.store.commit_stats();
    let next = Arc::new(AtomicUsize::new(0));
    let progress = crate::progress::bar(total as u64, &format!("throughput, concurrency {concurrency}"), false);
    let t = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (svc, next, progress) = (svc.clone(), next.clone(), progress.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= total {
                    return anyhow::Ok(());
                }
                run_one(svc.clone(), n).await?;
                progress.inc(1);
            }
        }));
    }
    for task in tasks {
        task.await??;
    }
    progress.finish_and_clear();
    let elapsed = t.elapsed();
    let after = svc.store.commit_stats();
    let batches = after.batches - before.batches;
    let writes = after.writes - before.writes;
    println!(
        "| completed instances/s, receive + snippet + invoke, fsync {}, concurrency {concurrency}, {total} instances | {:.0}/s ({} batches in {} group writes, {:.1} per write) |",
        if fsync { "on" } else { "off" },
        total as f64 / elapsed.as_secs_f64(),
        batches,
        writes,
        batches as f64 / writes.max(1) as f64
    );
    svc.shutdown().await;
    Ok(())
}

/// Ten snippets in one atomic scope (one persistence point) against ten
/// snippets that each commit after themselves (ten), fsync on.
async fn bench_atomic(dir: &Path, atomic: bool) -> anyhow::Result<()> {
    let (_s, svc) = service(if atomic { "atomic" } else { "separate" }, true).await?;
    deploy(&svc, dir, "t_ten", None).await?;
    let body = format!(r#"{{"atomic":{atomic}}}"#);
    for (concurrency, total) in [(1usize, 200usize), (16, 2000)] {
        let before = svc.store.commit_stats();
        let next = Arc::new(AtomicUsize::new(0));
        let t = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..concurrency {
            let (svc, next, body) = (svc.clone(), next.clone(), body.clone());
            tasks.push(tokio::spawn(async move {
                while next.fetch_add(1, Ordering::Relaxed) < total {
                    let m = MessageIn::new("ten-start", body.clone());
                    let a = svc.accept_message(m, None).await.map_err(|e| anyhow::anyhow!(e.message))?;
                    svc.await_reply(&a.message_id, Duration::from_secs(60)).await.map_err(|e| anyhow::anyhow!(e.message))?;
                }
                anyhow::Ok(())
            }));
        }
        for task in tasks {
            task.await??;
        }
        let elapsed = t.elapsed();
        let writes = svc.store.commit_stats().batches - before.batches;
        println!(
            "| ten snippets {}, fsync on, concurrency {concurrency}, {total} instances | {:.0} instances/s, {:.2} ms per instance; {:.1} writes per instance |",
            if atomic { "in one atomic scope" } else { "each committing after itself" },
            total as f64 / elapsed.as_secs_f64(),
            elapsed.as_secs_f64() * 1000.0 / total as f64 * concurrency as f64,
            writes as f64 / total as f64
        );
    }
    svc.shutdown().await;
    Ok(())
}

/// Resident memory with `n` instances waiting at a receive, then a message to each.
async fn bench_memory(dir: &Path, n: usize) -> anyhow::Result<()> {
    let (_s, svc) = service("memory", false).await?;
    deploy(&svc, dir, "t_versioned_1", None).await?;
    let rss_start = rss_mib();
    let send_all = |op: &'static str| {
        let svc = svc.clone();
        async move {
            let next = Arc::new(AtomicUsize::new(0));
            let mut tasks = Vec::new();
            for _ in 0..64 {
                let (svc, next) = (svc.clone(), next.clone());
                tasks.push(tokio::spawn(async move {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= n {
                            return anyhow::Ok(());
                        }
                        let m = MessageIn::new(op, format!(r#"{{"key":"k{i}"}}"#));
                        svc.accept_message(m, None).await.map_err(|e| anyhow::anyhow!(e.message))?;
                    }
                }));
            }
            for t in tasks {
                t.await??;
            }
            anyhow::Ok(())
        }
    };
    let settle = |status: Status| {
        let svc = svc.clone();
        async move {
            let progress = crate::progress::bar(n as u64, &format!("memory: {n} instances reaching {}", status.as_str()), false);
            loop {
                let count = svc.store.count_instances(status).await? as usize;
                progress.set_position(count.min(n) as u64);
                if count >= n && svc.drivers.count() == 0 {
                    progress.finish_and_clear();
                    return anyhow::Ok(());
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    };
    let t = Instant::now();
    send_all("versioned-start").await?;
    settle(Status::Waiting).await?;
    let created = t.elapsed();
    let rss_waiting = rss_mib();
    let t = Instant::now();
    send_all("versioned-go").await?;
    settle(Status::Completed).await?;
    let finished = t.elapsed();
    println!(
        "| {n} instances waiting at a receive (fsync off) | RSS {rss_start:.0} MiB at start, {rss_waiting:.0} MiB with all waiting; {} in memory; created and dehydrated in {:.1} s ({:.0}/s) |",
        svc.drivers.count(),
        created.as_secs_f64(),
        n as f64 / created.as_secs_f64()
    );
    println!(
        "| then one correlated message to each | all {n} completed in {:.1} s ({:.0}/s); RSS {:.0} MiB |",
        finished.as_secs_f64(),
        n as f64 / finished.as_secs_f64(),
        rss_mib()
    );
    svc.shutdown().await;
    Ok(())
}

/// CPU time this process has used (user + system), from /proc/self/stat.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<u64> = rest.split_whitespace().map(|f| f.parse().unwrap_or(0)).collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after ')'.
    let ticks = fields.get(11).copied().unwrap_or(0) + fields.get(12).copied().unwrap_or(0);
    #[allow(unsafe_code)]
    // SAFETY: sysconf reads a constant of the system.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_micros(ticks * 1_000_000 / per_second)
}

/// A `cairn partner` child process on a free loopback port, killed when dropped.
struct PartnerProcess {
    child: std::process::Child,
    url: String,
}

impl PartnerProcess {
    fn start() -> anyhow::Result<PartnerProcess> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let child = std::process::Command::new(std::env::current_exe()?)
            .args(["partner", "--listen", &format!("127.0.0.1:{port}")])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            anyhow::ensure!(Instant::now() < deadline, "cairn partner did not listen within 10 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(PartnerProcess { child, url: format!("http://127.0.0.1:{port}") })
    }
}

impl Drop for PartnerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Completed instances per second of a process making three HTTP calls (three
/// invokes of an activity that POSTs to a local partner, a `cairn partner`
/// process), fsync on; and the host's CPU per outbound call.
async fn bench_http(dir: &Path, concurrency: usize, total: usize) -> anyhow::Result<()> {
    let partner = PartnerProcess::start()?;
    let scratch = Scratch::new(&format!("http-{concurrency}"));
    let mut config = config(&scratch.0, true).await?;
    config.http.allow_http = vec![partner.url.clone()];
    let svc = Service::start(config).await?;
    svc.deploy(read_guest(dir, "t_http")?, Some("t-http".into()), vec![partner.url.clone()], Vec::new())
        .await
        .map_err(|e| anyhow::anyhow!("deploying t_http: {}", e.message))?;
    deploy(&svc, dir, "t_http_flow", None).await?;
    let url = format!("{}/bench", partner.url);
    let run_one = |svc: Service, n: usize, url: String| async move {
        let m = MessageIn::new("http-start", serde_json::json!({ "key": format!("k{n}"), "url": url, "mode": "three" }).to_string());
        let a = svc.accept_message(m, None).await.map_err(|e| anyhow::anyhow!(e.message))?;
        let reply = svc.await_reply(&a.message_id, Duration::from_secs(60)).await.map_err(|e| anyhow::anyhow!(e.message))?;
        anyhow::ensure!(reply.body["fault"].is_null(), "an HTTP call failed: {}", reply.body);
        anyhow::Ok(())
    };
    for n in 0..10 {
        run_one(svc.clone(), n, url.clone()).await?;
    }
    let next = Arc::new(AtomicUsize::new(0));
    let (t, cpu) = (Instant::now(), cpu_time());
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (svc, next, url) = (svc.clone(), next.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= total {
                    return anyhow::Ok(());
                }
                run_one(svc.clone(), n, url.clone()).await?;
            }
        }));
    }
    for task in tasks {
        task.await??;
    }
    let (elapsed, cpu) = (t.elapsed(), cpu_time() - cpu);
    println!(
        "| three HTTP calls to a local partner (three invokes), fsync on, concurrency {concurrency}, {total} instances | {:.0} instances/s ({:.0} calls/s); host CPU {:.2} ms per instance, {:.2} ms per outbound call |",
        total as f64 / elapsed.as_secs_f64(),
        3.0 * total as f64 / elapsed.as_secs_f64(),
        cpu.as_secs_f64() * 1000.0 / total as f64,
        cpu.as_secs_f64() * 1000.0 / (3 * total) as f64
    );
    svc.shutdown().await;
    drop(partner);
    Ok(())
}
