//! `cairn bench --only http-api`: the side-by-side harness. It drives the real
//! `cairn serve` binary (this executable, spawned on a fresh temporary data
//! directory and a free loopback port) through its HTTP API with a closed-loop
//! load generator of blocking ureq agents on OS threads, on the workloads of
//! the Restate peer harness (bench/restate/):
//!
//! - load: `bench-order` (a request-response receive, three invokes of the
//!   `bench-steps` activity: validate, charge, ship; a reply) and
//!   `bench-single` (receive, one invoke, reply), each at concurrency 1 and
//!   32, N requests after 50 warm-up, fsync on; every request is
//!   `POST /v1/messages` with a unique id and `wait_reply: true`, done when
//!   the reply arrives. Throughput, p50/p99 latency and the server's CPU
//!   (utime + stime of its /proc/PID/stat) per workflow;
//! - the server's resident memory after the load runs and after listing
//!   instances, and its data directory's size;
//! - kill -9 with K instances of `bench-sleeper` waiting on a 60 s timer, then
//!   the time from the kill to the first health answer, the first message
//!   accepted and the first workflow completed; whether the sleepers survive
//!   and complete;
//! - restart (SIGTERM, start again) after 0, 20,000 and 50,000 completed
//!   instances: time to the first health answer and to the first completed
//!   workflow.
//!
//! Results are printed as Markdown rows, then one `json:` line with every
//! figure. The server is stopped by its pid at the end (SIGTERM, SIGKILL
//! after 20 s), and its data directory deleted.

use crate::loadgen::{self, LoadRun};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// What `cairn bench --only http-api` runs.
pub struct Options {
    /// Requests per measured load run (after the warm-up).
    pub requests: usize,
    /// Warm-up requests before each load run, not counted.
    pub warmup: usize,
    /// Instances waiting on a timer at the kill -9.
    pub sleepers: usize,
    /// Their timer.
    pub sleep_ms: u64,
    /// Completed instances after which a restart is timed (0 is always measured first).
    pub restart_after: Vec<usize>,
    /// No new request of a load run after this many seconds.
    pub max_seconds: u64,
}

/// A temporary directory of the run, deleted when dropped.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A copy of this executable, taken at the start, that every `cairn serve`
/// of the run is spawned from: a build that replaces the binary meanwhile
/// (other work on the machine) changes nothing in the run.
static EXE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// A `cairn serve` child process on a loopback port.
struct Server {
    child: Option<Child>,
    data: PathBuf,
    log: PathBuf,
    port: u16,
    base: String,
}

impl Server {
    fn spawn(data: &Path, log: &Path, port: u16) -> anyhow::Result<Child> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
        let exe = EXE.get().ok_or_else(|| anyhow::anyhow!("no copy of the cairn binary"))?;
        let child = Command::new(exe)
            .arg("serve")
            .arg("--data")
            .arg(data)
            .args(["--listen", &format!("127.0.0.1:{port}"), "--quiet-guests"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        Ok(child)
    }

    /// Starts a server on `data`; returns it and the time from the spawn to its first health answer.
    fn start(data: &Path, log: &Path, port: u16) -> anyhow::Result<(Server, Duration)> {
        let t = Instant::now();
        let child = Server::spawn(data, log, port)?;
        let mut server = Server { child: Some(child), data: data.into(), log: log.into(), port, base: format!("http://127.0.0.1:{port}") };
        let up = server.wait_health(t, Duration::from_secs(120))?;
        Ok((server, up))
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Polls `GET /v1/health` every 5 ms until it answers 200; the time since `since`.
    fn wait_health(&mut self, since: Instant, limit: Duration) -> anyhow::Result<Duration> {
        let agent = agent(Duration::from_secs(1));
        loop {
            if let Ok((200, _)) = get(&agent, &self.url("/v1/health")) {
                return Ok(since.elapsed());
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                anyhow::bail!("cairn serve exited with {status}:\n{}", self.log_tail());
            }
            anyhow::ensure!(since.elapsed() < limit, "cairn serve did not answer health within {limit:?}:\n{}", self.log_tail());
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// SIGTERM, then SIGKILL if it has not exited after 20 s; the time until it exited.
    fn stop(&mut self) -> Duration {
        let Some(mut child) = self.child.take() else { return Duration::ZERO };
        let t = Instant::now();
        signal(child.id(), libc::SIGTERM);
        while t.elapsed() < Duration::from_secs(20) {
            if let Ok(Some(_)) = child.try_wait() {
                return t.elapsed();
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        eprintln!("cairn serve (pid {}) still alive 20 s after SIGTERM: SIGKILL", child.id());
        let _ = child.kill();
        let _ = child.wait();
        t.elapsed()
    }

    /// kill -9; returns the instant of the kill once the process is reaped
    /// (all its threads gone) and its port refuses connections.
    fn kill9(&mut self) -> anyhow::Result<(Instant, Duration)> {
        let mut child = self.child.take().ok_or_else(|| anyhow::anyhow!("no server to kill"))?;
        let t = Instant::now();
        child.kill()?;
        child.wait()?;
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
            anyhow::ensure!(t.elapsed() < Duration::from_secs(10), "port {} still accepts 10 s after kill -9", self.port);
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok((t, t.elapsed()))
    }

    /// Respawns on the same data directory and port (again, up to 5 times, if it exits at once, e.g. the port still bound).
    fn respawn(&mut self) -> anyhow::Result<u32> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            let mut child = Server::spawn(&self.data, &self.log, self.port)?;
            std::thread::sleep(Duration::from_millis(1));
            match child.try_wait()? {
                Some(status) if attempts < 5 => {
                    eprintln!("respawned cairn serve exited at once ({status}); again");
                    std::thread::sleep(Duration::from_millis(100));
                }
                _ => {
                    self.child = Some(child);
                    return Ok(attempts);
                }
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

#[allow(unsafe_code)]
fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) on the pid of a child this harness spawned and has not reaped.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(timeout)).build().into()
}

fn answer(r: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Result<(u16, Value), String> {
    let mut resp = r.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().map_err(|e| e.to_string())?;
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Ok((status, body))
}

fn get(agent: &ureq::Agent, url: &str) -> Result<(u16, Value), String> {
    answer(agent.get(url).call())
}

fn post(agent: &ureq::Agent, url: &str, body: &Value) -> Result<(u16, Value), String> {
    answer(agent.post(url).header("content-type", "application/json").send(body.to_string().as_bytes()))
}

/// User + system CPU time a process has used, from /proc/PID/stat.
fn cpu_of(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<u64> = rest.split_whitespace().map(|f| f.parse().unwrap_or(0)).collect();
    // utime and stime are fields 14 and 15 of the line: 12 and 13 after ')'.
    let ticks = fields.get(11).copied().unwrap_or(0) + fields.get(12).copied().unwrap_or(0);
    Duration::from_micros(ticks * 1_000_000 / clock_ticks())
}

#[allow(unsafe_code)]
fn clock_ticks() -> u64 {
    // SAFETY: sysconf reads a constant of the system.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64
}

/// VmRSS and VmHWM of a process, in MiB.
fn rss_of(pid: u32) -> (f64, f64) {
    let mib = |field: &str| crate::metrics::status_kib(&pid.to_string(), field) as f64 / 1024.0;
    (mib("VmRSS"), mib("VmHWM"))
}

/// Bytes under `dir`, files and directories, as `du -sb` counts them.
fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    for e in entries.flatten() {
        let Ok(meta) = e.path().symlink_metadata() else { continue };
        total += meta.len();
        if meta.is_dir() {
            total += dir_bytes(&e.path());
        }
    }
    total
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn deploy(server: &Server, guests: &Path, file: &str, name: Option<&str>) -> anyhow::Result<()> {
    let p = guests.join(format!("{file}.wasm"));
    let bytes = std::fs::read(&p).map_err(|e| anyhow::anyhow!("{}: {e} (build the guests first: source scripts/env.sh; build_all)", p.display()))?;
    let url = match name {
        Some(n) => server.url(&format!("/v1/definitions?name={n}")),
        None => server.url("/v1/definitions"),
    };
    let r = agent(Duration::from_secs(120)).post(&url).header("content-type", "application/wasm").send(&bytes[..]);
    let (status, body) = answer(r).map_err(|e| anyhow::anyhow!("deploying {file}: {e}"))?;
    anyhow::ensure!(status < 300, "deploying {file}: {status} {body}");
    Ok(())
}

#[derive(Clone, Copy, PartialEq)]
enum Workflow {
    /// bench-order: three steps.
    Order,
    /// bench-single: one step.
    Single,
}

impl Workflow {
    fn name(self) -> &'static str {
        match self {
            Workflow::Order => "order",
            Workflow::Single => "single",
        }
    }

    /// The `POST /v1/messages` body of request `i`: a unique id (the key), and wait for the reply.
    fn message(self, key: &str, i: usize, wait: bool) -> Value {
        match self {
            Workflow::Order => json!({ "operation": "bench-order", "id": key, "wait_reply": wait,
                "body": { "key": key, "amount": 10 + (i % 90) } }),
            Workflow::Single => json!({ "operation": "bench-single", "id": key, "wait_reply": wait,
                "body": { "i": i, "key": key } }),
        }
    }
}

/// One request through the API; Ok(()) when the reply came back without a fault.
fn request(agent: &ureq::Agent, url: &str, body: &Value) -> Result<Value, String> {
    match post(agent, url, body)? {
        (202, b) if b["reply"].is_object() && b["reply"]["fault"].is_null() => Ok(b),
        (202, b) if body["wait_reply"] == json!(false) => Ok(b),
        (status, b) => Err(format!("{status} {}", b.to_string().chars().take(300).collect::<String>())),
    }
}

/// `count` requests of `workflow` from `concurrency` clients in a closed
/// loop (`loadgen`), each waiting for its workflow's reply.
fn closed_loop(server: &Server, workflow: Workflow, count: usize, concurrency: usize, tag: &str, deadline: Instant) -> LoadRun {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], server.port));
    let request = |i: usize| loadgen::Request { path: "/v1/messages".into(), body: workflow.message(&format!("{tag}-{i}"), i, true).to_string() };
    loadgen::closed_loop(addr, count, concurrency, deadline, Duration::from_secs(30), &request, &replied)
}

/// A closed-loop run against a peer's ingress: the workloads of the Restate
/// peer harness (bench/restate/load.mjs), sent by this generator instead of
/// Node's, so that both systems are measured with the same one.
pub struct PeerLoad {
    pub ingress: String,
    /// order or single.
    pub target: String,
    pub requests: usize,
    pub concurrency: usize,
    pub warmup: usize,
    pub max_seconds: u64,
    pub tag: Option<String>,
}

/// Runs `load` (its warm-up, then the measured requests) and returns
/// load.mjs's summary: throughput, percentiles, and this generator's CPU.
pub fn peer_load(load: &PeerLoad) -> anyhow::Result<Value> {
    let url: http::Uri = load.ingress.parse().map_err(|e| anyhow::anyhow!("--ingress {}: {e}", load.ingress))?;
    let host = url.host().unwrap_or("").trim_start_matches('[').trim_end_matches(']');
    let ip: std::net::IpAddr = host.parse().map_err(|_| anyhow::anyhow!("--ingress {}: give a loopback address, not {host:?}", load.ingress))?;
    anyhow::ensure!(ip.is_loopback(), "--ingress {}: refusing a non-loopback address", load.ingress);
    let addr = std::net::SocketAddr::new(ip, url.port_u16().unwrap_or(80));
    anyhow::ensure!(matches!(load.target.as_str(), "order" | "single"), "--target {}: order or single", load.target);
    anyhow::ensure!(load.requests > 0 && load.concurrency > 0, "--requests and --concurrency must be at least 1");
    let tag = load.tag.clone().unwrap_or_else(|| format!("{:x}", crate::now_ms()));
    let request = |phase: &'static str| {
        let (target, tag) = (load.target.clone(), tag.clone());
        move |i: usize| {
            let key = format!("{tag}-{phase}-{i}");
            if target == "order" {
                loadgen::Request { path: format!("/order/{key}/run"), body: json!({ "amount": 10 + (i % 90) }).to_string() }
            } else {
                loadgen::Request { path: "/single/step".into(), body: json!({ "i": i, "key": key }).to_string() }
            }
        }
    };
    let ok = |status: u16, body: &[u8]| -> loadgen::Verdict {
        if status == 200 {
            return Ok(());
        }
        Err(format!("{status} {}", String::from_utf8_lossy(body).chars().take(200).collect::<String>()))
    };
    let deadline = Instant::now() + Duration::from_secs(load.max_seconds);
    let timeout = Duration::from_secs(30);
    let cpu = cpu_of(std::process::id());
    if load.warmup > 0 {
        loadgen::closed_loop(addr, load.warmup, load.concurrency.min(load.warmup), deadline, timeout, &request("warm"), &ok);
    }
    let r = loadgen::closed_loop(addr, load.requests, load.concurrency, deadline, timeout, &request("m"), &ok);
    let cpu = cpu_of(std::process::id()) - cpu;
    let p = |q: f64| (loadgen::percentile(&r.latencies, q) * 100.0).round() / 100.0;
    Ok(json!({
        "target": load.target, "n_requested": load.requests, "concurrency": load.concurrency, "issued": r.issued,
        "completed": r.completed, "failed": r.failed, "first_error": r.first_error,
        "wall_s": (r.wall.as_secs_f64() * 1000.0).round() / 1000.0,
        "throughput_per_s": round1(r.completed as f64 / r.wall.as_secs_f64()),
        "p50_ms": p(50.0), "p90_ms": p(90.0), "p99_ms": p(99.0), "max_ms": r.latencies.last().copied(),
        "hit_time_cap": r.issued < load.requests,
        "loadgen": "cairn bench --only peer-load", "loadgen_cpu_s": (cpu.as_secs_f64() * 100.0).round() / 100.0,
    }))
}

/// Whether an answer of `POST /v1/messages` with `wait_reply` is the workflow's reply, without a fault.
fn replied(status: u16, body: &[u8]) -> loadgen::Verdict {
    let b: Value = serde_json::from_slice(body).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into()));
    if status == 202 && b["reply"].is_object() && b["reply"]["fault"].is_null() {
        return Ok(());
    }
    Err(format!("{status} {}", b.to_string().chars().take(300).collect::<String>()))
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e5).round() / 100.0
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// Instances of `process` in `status`, counted through the API.
fn count(server: &Server, status: &str, process: &str) -> Option<usize> {
    let url = server.url(&format!("/v1/instances?status={status}&process={process}&limit=1000000"));
    match get(&agent(Duration::from_secs(60)), &url) {
        Ok((200, b)) => b["count"].as_u64().map(|n| n as usize),
        _ => None,
    }
}

pub fn run(guests: &Path, opts: &Options) -> anyhow::Result<()> {
    let scratch = Scratch(std::env::temp_dir().join(format!("cairn-bench-http-api-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&scratch.0);
    std::fs::create_dir_all(&scratch.0)?;
    let exe = std::env::current_exe()?;
    anyhow::ensure!(exe.exists(), "{} was replaced since it started (a build?): run again", exe.display());
    let copy = scratch.0.join("cairn");
    std::fs::copy(&exe, &copy)?;
    EXE.get_or_init(|| copy);
    let mut out = serde_json::Map::new();
    out.insert("n".into(), json!(opts.requests));
    out.insert("warmup".into(), json!(opts.warmup));
    out.insert("nproc".into(), json!(std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)));

    // 1. A fresh server: cold start, deploy, idle CPU.
    let data = scratch.0.join("data");
    let log = scratch.0.join("serve.log");
    let port = free_port()?;
    let (mut server, cold) = Server::start(&data, &log, port)?;
    println!("| cairn serve cold start on an empty data directory (spawn → health 200) | {:.1} ms |", ms(cold));
    out.insert("cold_start_ms".into(), json!(ms(cold)));
    deploy(&server, guests, "bench_steps_activity", Some("bench-steps"))?;
    deploy(&server, guests, "bench_order", None)?;
    deploy(&server, guests, "bench_single", None)?;
    deploy(&server, guests, "bench_sleeper", None)?;
    let pid = server.pid();
    // A sample reply, to see that the steps ran.
    let sample = request(&agent(Duration::from_secs(30)), &server.url("/v1/messages"), &Workflow::Order.message("sample-1", 1, true))
        .map_err(|e| anyhow::anyhow!("the first bench-order request failed: {e}"))?;
    println!("| sample reply of bench-order (key sample-1, amount 11) | `{}` |", sample["reply"]["body"]);
    let c0 = cpu_of(pid);
    std::thread::sleep(Duration::from_secs(5));
    let idle = (cpu_of(pid) - c0).as_secs_f64() / 5.0;
    println!("| server idle CPU (5 s sample) | {idle:.3} cores |");
    out.insert("idle_cpu_cores".into(), json!(idle));

    // 2. The load runs, as load.mjs runs them: order C=1, order C=32, single C=1, single C=32.
    println!();
    println!("| workload | concurrency | completed | throughput | p50 | p99 | server CPU per workflow | server RSS after |");
    println!("|---|---|---|---|---|---|---|---|");
    let mut loads = Vec::new();
    for (workflow, concurrency) in [(Workflow::Order, 1), (Workflow::Order, 32), (Workflow::Single, 1), (Workflow::Single, 32)] {
        let tag = format!("{}-c{concurrency}", workflow.name());
        let deadline = Instant::now() + Duration::from_secs(opts.max_seconds);
        if opts.warmup > 0 {
            let w = closed_loop(&server, workflow, opts.warmup, concurrency.min(opts.warmup), &format!("{tag}-warm"), deadline);
            anyhow::ensure!(w.failed == 0, "warm-up of {tag}: {} failed, first: {:?}", w.failed, w.first_error);
        }
        let cpu = cpu_of(pid);
        let r = closed_loop(&server, workflow, opts.requests, concurrency, &format!("{tag}-m"), deadline);
        let cpu = cpu_of(pid) - cpu;
        let (rss, hwm) = rss_of(pid);
        let throughput = r.completed as f64 / r.wall.as_secs_f64();
        let cpu_per = cpu.as_secs_f64() * 1000.0 / r.completed.max(1) as f64;
        println!(
            "| {} ({}) | {concurrency} | {}{} | {:.1}/s | {:.2} ms | {:.2} ms | {:.3} ms ({:.2} cores) | {:.1} MiB |",
            workflow.name(),
            if workflow == Workflow::Order { "receive, 3 invokes, reply" } else { "receive, 1 invoke, reply" },
            r.completed,
            if r.failed > 0 { format!(" ({} failed: {})", r.failed, r.first_error.clone().unwrap_or_default()) } else { String::new() },
            throughput,
            loadgen::percentile(&r.latencies, 50.0),
            loadgen::percentile(&r.latencies, 99.0),
            cpu_per,
            cpu.as_secs_f64() / r.wall.as_secs_f64(),
            rss
        );
        loads.push(json!({
            "target": workflow.name(), "concurrency": concurrency, "completed": r.completed, "failed": r.failed,
            "first_error": r.first_error, "wall_s": round1(r.wall.as_secs_f64() * 100.0) / 100.0,
            "throughput_per_s": round1(throughput), "p50_ms": loadgen::percentile(&r.latencies, 50.0), "p90_ms": loadgen::percentile(&r.latencies, 90.0),
            "p99_ms": loadgen::percentile(&r.latencies, 99.0), "max_ms": r.latencies.last().copied(),
            "server_cpu_s": cpu.as_secs_f64(), "server_cpu_ms_per_workflow": cpu_per, "server_rss_mib": rss, "server_hwm_mib": hwm,
            "hit_time_cap": r.completed + r.failed < opts.requests,
        }));
    }
    out.insert("loads".into(), json!(loads));

    // 3. Memory and disk after the load runs; memory after listing instances.
    std::thread::sleep(Duration::from_secs(2));
    let (rss, hwm) = rss_of(pid);
    let bytes = dir_bytes(&data);
    let listing = agent(Duration::from_secs(120));
    let t = Instant::now();
    let listed = match get(&listing, &server.url("/v1/instances?limit=1000000")) {
        Ok((200, b)) => b["count"].as_u64().unwrap_or(0),
        other => anyhow::bail!("listing instances: {other:?}"),
    };
    let list_time = t.elapsed();
    let (rss_listed, hwm_listed) = rss_of(pid);
    // The host hands freed memory back every 5 s (`trim_memory_every`): what stays after that.
    std::thread::sleep(Duration::from_secs(6));
    let (rss_listed_later, _) = rss_of(pid);
    println!();
    println!("| measure | value |");
    println!("|---|---|");
    println!("| server RSS after the load runs | {rss:.1} MiB (peak {hwm:.1} MiB) |");
    println!("| data directory after the load runs (live server) | {:.1} MB ({bytes} bytes) |", bytes as f64 / 1e6);
    println!(
        "| server RSS after listing all {listed} instances (`GET /v1/instances?limit=1000000`, {:.0} ms) | {rss_listed:.1} MiB (peak {hwm_listed:.1} MiB) |",
        ms(list_time)
    );
    println!("| server RSS 6 s after the listing (one trim later) | {rss_listed_later:.1} MiB |");
    out.insert("rss_after_load".into(), json!({ "rss_mib": rss, "hwm_mib": hwm }));
    out.insert("data_dir_bytes_after_load".into(), json!(bytes));
    out.insert("rss_after_listing".into(), json!({ "rss_mib": rss_listed, "hwm_mib": hwm_listed, "rss_6s_later_mib": rss_listed_later, "listed": listed, "list_ms": ms(list_time) }));

    // 4. kill -9 with the sleepers waiting on their timers.
    let crash = crash_test(&mut server, opts)?;
    out.insert("data_dir_bytes_after_crash_test".into(), json!(dir_bytes(&data)));
    out.insert("crash".into(), crash);
    server.stop();
    drop(server);

    // 5. Restart after 0, 20,000, 50,000 completed instances, on a data directory of its own.
    let restarts = restart_test(guests, &scratch.0, opts)?;
    out.insert("restarts".into(), restarts);
    println!();
    println!("json: {}", Value::Object(out));
    Ok(())
}

fn crash_test(server: &mut Server, opts: &Options) -> anyhow::Result<Value> {
    let k = opts.sleepers;
    let messages = server.url("/v1/messages");
    // 1. K sleepers, sent (fire and forget) from 32 threads.
    let t = Instant::now();
    let next = AtomicUsize::new(0);
    let failed = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..32 {
            s.spawn(|| {
                let agent = agent(Duration::from_secs(10));
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= k {
                        break;
                    }
                    let body = json!({ "operation": "bench-nap", "id": format!("crash-{i}"), "body": { "ms": opts.sleep_ms, "id": format!("crash-{i}") } });
                    if !matches!(post(&agent, &messages, &body), Ok((202, _))) {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    let send = t.elapsed();
    // 2. Until all K wait on their timers (bounded 120 s).
    let t = Instant::now();
    let mut waiting = 0;
    while t.elapsed() < Duration::from_secs(120) {
        waiting = count(server, "waiting", "bench-sleeper").unwrap_or(0);
        if waiting >= k {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let all_waiting = t.elapsed();
    anyhow::ensure!(waiting >= k, "only {waiting} of {k} sleepers waiting after 120 s");
    let (rss_before, _) = rss_of(server.pid());
    // 3. kill -9, respawn on the same data directory and port.
    let (t_kill, dead) = server.kill9()?;
    let attempts = server.respawn()?;
    let spawned = t_kill.elapsed();
    // 4. Kill → health 200, → first message accepted (202), → first workflow completed (reply), → a burst of 200 concurrent.
    let health = server.wait_health(t_kill, Duration::from_secs(120))?;
    let probe = agent(Duration::from_secs(20));
    let until = |f: &dyn Fn(usize) -> bool| -> Option<Duration> {
        for i in 0..6000 {
            if f(i) {
                return Some(t_kill.elapsed());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    };
    let accepted = until(&|i| request(&probe, &messages, &Workflow::Single.message(&format!("probe-accept-{i}"), i, false)).is_ok());
    let served = until(&|i| request(&probe, &messages, &Workflow::Single.message(&format!("probe-{i}"), i, true)).is_ok());
    let burst_failed = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for i in 0..200 {
            let (messages, burst_failed) = (&messages, &burst_failed);
            s.spawn(move || {
                if request(&agent(Duration::from_secs(20)), messages, &Workflow::Single.message(&format!("burst-{i}"), i, true)).is_err() {
                    burst_failed.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    });
    let burst = t_kill.elapsed();
    let present = count(server, "waiting", "bench-sleeper").unwrap_or(0);
    let (rss_after_restart, _) = rss_of(server.pid());
    // 5. Until all K complete (bounded: their timer + 120 s).
    let deadline = Instant::now() + Duration::from_millis(opts.sleep_ms) + Duration::from_secs(120);
    let mut completed = 0;
    while Instant::now() < deadline {
        completed = count(server, "completed", "bench-sleeper").unwrap_or(0);
        if completed >= k {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let all_completed = t_kill.elapsed();
    let (rss_drained, _) = rss_of(server.pid());
    let opt_ms = |d: Option<Duration>| d.map(ms);
    let show = |d: Option<Duration>| d.map(|d| format!("{:.1} ms", ms(d))).unwrap_or_else(|| "never".into());
    println!("| kill -9 with {k} instances waiting on a {} s timer: sent in | {:.0} ms ({} failed); all waiting {:.0} ms later; RSS {rss_before:.1} MiB |", opts.sleep_ms / 1000, ms(send), failed.load(Ordering::Relaxed), ms(all_waiting));
    println!("| kill -9 → process reaped and port free | {:.1} ms (respawned at {:.1} ms, {attempts} attempt(s)) |", ms(dead), ms(spawned));
    println!("| kill -9 → health 200 | **{:.1} ms** |", ms(health));
    println!("| kill -9 → first message accepted (202) | {} |", show(accepted));
    println!("| kill -9 → first workflow completed (bench-single, reply received) | **{}** |", show(served));
    println!("| kill -9 → a burst of 200 concurrent workflows all completed | {:.1} ms ({} failed) |", ms(burst), burst_failed.load(Ordering::Relaxed));
    println!("| sleepers waiting after the restart | {present} / {k} (RSS {rss_after_restart:.1} MiB) |");
    println!("| sleepers completed | {completed} / {k}, all {:.1} s after the kill (RSS {rss_drained:.1} MiB) |", all_completed.as_secs_f64());
    Ok(json!({
        "k": k, "sleep_ms": opts.sleep_ms, "send_ms": ms(send), "send_failed": failed.load(Ordering::Relaxed),
        "all_waiting_after_send_ms": ms(all_waiting), "rss_before_kill_mib": rss_before,
        "dead_after_ms": ms(dead), "spawned_after_ms": ms(spawned), "spawn_attempts": attempts,
        "kill_to_health_ms": ms(health), "kill_to_first_accepted_ms": opt_ms(accepted),
        "kill_to_first_workflow_ok_ms": opt_ms(served), "kill_to_200_burst_ok_ms": ms(burst),
        "burst_failed": burst_failed.load(Ordering::Relaxed), "sleepers_waiting_after_restart": present,
        "rss_after_restart_mib": rss_after_restart, "sleepers_completed": completed,
        "all_completed_after_kill_ms": ms(all_completed), "rss_after_drain_mib": rss_drained,
    }))
}

/// One timed restart.
struct Restart {
    stop: Duration,
    health: Duration,
    accepted: Option<Duration>,
    served: Option<Duration>,
    rss: f64,
}

/// Restarts after 0, then each of `opts.restart_after` completed instances
/// (bench-order at concurrency 32 fills the store): SIGTERM, start, time to
/// health and to the first completed workflow; three restarts at each point.
fn restart_test(guests: &Path, scratch: &Path, opts: &Options) -> anyhow::Result<Value> {
    let data = scratch.join("data-restart");
    let log = scratch.join("serve-restart.log");
    let port = free_port()?;
    let (mut server, _) = Server::start(&data, &log, port)?;
    deploy(&server, guests, "bench_steps_activity", Some("bench-steps"))?;
    deploy(&server, guests, "bench_order", None)?;
    deploy(&server, guests, "bench_single", None)?;
    println!();
    println!("| restart (SIGTERM, start) after | stop took | start → health 200 | start → first message accepted | start → first workflow completed | RSS after | data directory |");
    println!("|---|---|---|---|---|---|---|");
    let mut results = Vec::new();
    let mut completed = 0usize;
    let mut points = vec![0];
    points.extend(opts.restart_after.iter().copied());
    for (p, target) in points.into_iter().enumerate() {
        if target > completed {
            let deadline = Instant::now() + Duration::from_secs(3600);
            let r = closed_loop(&server, Workflow::Order, target - completed, 32, &format!("fill{p}"), deadline);
            anyhow::ensure!(r.failed == 0, "filling to {target}: {} failed, first: {:?}", r.failed, r.first_error);
            println!(
                "| (filled {} → {target} completed bench-order instances at concurrency 32: {:.0}/s) | | | | | | |",
                completed,
                r.completed as f64 / r.wall.as_secs_f64()
            );
            completed = target;
        }
        let mut tries = Vec::new();
        for attempt in 0..3 {
            let stop = server.stop();
            let t = Instant::now();
            server.respawn()?;
            let health = server.wait_health(t, Duration::from_secs(120))?;
            let messages = server.url("/v1/messages");
            let probe = agent(Duration::from_secs(20));
            let mut accepted = None;
            let mut served = None;
            for i in 0..6000 {
                if accepted.is_none() && request(&probe, &messages, &Workflow::Single.message(&format!("r{p}-{attempt}-accept-{i}"), i, false)).is_ok() {
                    accepted = Some(t.elapsed());
                }
                if accepted.is_some() && request(&probe, &messages, &Workflow::Single.message(&format!("r{p}-{attempt}-{i}"), i, true)).is_ok() {
                    served = Some(t.elapsed());
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            let (rss, _) = rss_of(server.pid());
            tries.push(Restart { stop, health, accepted, served, rss });
        }
        let bytes = dir_bytes(&data);
        let median = |f: &dyn Fn(&Restart) -> f64| -> (f64, f64, f64) {
            let mut v: Vec<f64> = tries.iter().map(f).collect();
            v.sort_by(|a, b| a.total_cmp(b));
            (v[v.len() / 2], v[0], v[v.len() - 1])
        };
        let stop = median(&|t| ms(t.stop));
        let health = median(&|t| ms(t.health));
        let accepted = median(&|t| t.accepted.map(ms).unwrap_or(f64::NAN));
        let served = median(&|t| t.served.map(ms).unwrap_or(f64::NAN));
        let rss = median(&|t| t.rss);
        let show = |(m, lo, hi): (f64, f64, f64)| format!("{m:.1} ms ({lo:.1}–{hi:.1})");
        println!(
            "| {completed} completed instances | {} | **{}** | {} | **{}** | {:.1} MiB | {:.1} MB |",
            show(stop),
            show(health),
            show(accepted),
            show(served),
            rss.0,
            bytes as f64 / 1e6
        );
        results.push(json!({
            "completed_instances": completed, "restarts": tries.len(),
            "stop_ms": stop.0, "start_to_health_ms": health.0, "start_to_health_ms_range": [health.1, health.2],
            "start_to_first_accepted_ms": accepted.0, "start_to_first_workflow_ok_ms": served.0,
            "start_to_first_workflow_ok_ms_range": [served.1, served.2], "rss_after_restart_mib": rss.0, "data_dir_bytes": bytes,
        }));
    }
    server.stop();
    Ok(json!(results))
}
