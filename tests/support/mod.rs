//! Test support: start the real `cairn` binary on a fresh data directory,
//! run CLI commands against it, and find the guest components.
//!
//! The binary and the guests are built by `scripts/test.sh` (the README's
//! test command) into the Cargo target directory these tests run from.
//!
//! The store: RocksDB inside the data directory, unless
//! `CAIRN_TEST_STORE=postgres`, in which case `cairn serve` gets
//! `--store $CAIRN_TEST_PG/<database>`, one database per data directory
//! (`scripts/test.sh` starts the cluster and sets `CAIRN_TEST_PG`).

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The Cargo target directory: tests run from `<target>/release/deps/`.
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent().and_then(Path::parent).and_then(Path::parent).expect("target dir").to_path_buf()
}

pub fn cairn_bin() -> PathBuf {
    let p = target_dir().join("release").join("cairn");
    assert!(p.exists(), "{} is missing: run scripts/test.sh, which builds it", p.display());
    p
}

/// A guest component by file name (without `.wasm`).
pub fn guest(file: &str) -> PathBuf {
    let p = target_dir().join("wasm32-wasip2").join("release").join(format!("{file}.wasm"));
    assert!(p.exists(), "{} is missing: run scripts/test.sh, which builds the guests", p.display());
    p
}

/// A scratch directory removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let p = std::env::temp_dir().join(format!("cairn-test-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The store the hosts run on: "rocksdb" (the default) or "postgres"
/// (`CAIRN_TEST_STORE=postgres`, with `CAIRN_TEST_PG` set). Tests of
/// RocksDB-only features return early on "postgres".
pub fn store_kind() -> &'static str {
    match std::env::var("CAIRN_TEST_STORE").as_deref() {
        Err(_) | Ok("") | Ok("rocksdb") => "rocksdb",
        Ok("postgres") => {
            assert!(
                std::env::var("CAIRN_TEST_PG").is_ok_and(|u| !u.is_empty()),
                "CAIRN_TEST_STORE=postgres needs CAIRN_TEST_PG=postgres://USER@HOST:PORT (scripts/test.sh starts a cluster and sets it)"
            );
            "postgres"
        }
        Ok(other) => panic!("CAIRN_TEST_STORE={other}: expected rocksdb or postgres"),
    }
}

/// With `CAIRN_TEST_STORE=postgres`: the `--store` URL for the data
/// directory `data`, creating its database if it does not exist yet. The
/// name depends only on the path, so a restart on the same directory (after
/// `kill -9`, say) finds the same database. The whole cluster is thrown away
/// after the run, so databases are never dropped.
pub fn postgres_store(data: &Path) -> Option<String> {
    if store_kind() != "postgres" {
        return None;
    }
    let server = std::env::var("CAIRN_TEST_PG").unwrap();
    Some(create_database(&server, data))
}

/// A database for a cluster of hosts sharing one store (tests/cluster.rs),
/// named after `dir`, on the server of `CAIRN_TEST_PG` whatever
/// `CAIRN_TEST_STORE` says; None (the test skips) without a server.
pub fn cluster_database(dir: &Path) -> Option<String> {
    let server = std::env::var("CAIRN_TEST_PG").ok().filter(|s| !s.is_empty())?;
    Some(create_database(&server, dir))
}

/// Creates (if it does not exist) the database named after `data` on `server`; returns its URL.
fn create_database(server: &str, data: &Path) -> String {
    let server = server.trim_end_matches('/');
    // FNV-1a, 64 bits: deterministic across runs and processes.
    let hash = data
        .as_os_str()
        .as_encoded_bytes()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3));
    let name = format!("cairn_{hash:016x}");
    let (user, host, port) = parse_server(server);
    let out = Command::new("createdb")
        .args(["-h", host, "-p", port, "-U", user, &name])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run createdb (the PostgreSQL client programs must be on PATH): {e}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() || stderr.contains("already exists"), "createdb {name} on {server} failed: {stderr}");
    format!("{server}/{name}")
}

/// `postgres://USER@HOST:PORT` into its parts.
fn parse_server(url: &str) -> (&str, &str, &str) {
    let parsed = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))
        .and_then(|rest| rest.split_once('@'))
        .and_then(|(user, addr)| addr.rsplit_once(':').map(|(host, port)| (user, host, port)));
    parsed.unwrap_or_else(|| panic!("CAIRN_TEST_PG={url}: expected postgres://USER@HOST:PORT"))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Output of one CLI run.
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}\n{}", self.stdout, self.stderr))
    }
}

/// A running `cairn serve`, killed when dropped.
pub struct Host {
    child: Option<Child>,
    pub url: String,
    pub data: PathBuf,
    agent: ureq::Agent,
    /// A bearer token `cairn()`, `get()` and `post()` send (`CAIRN_TOKEN`,
    /// `Authorization: Bearer …`); None sends none.
    pub token: Option<String>,
    /// With TLS: the PEM file of the CA (or self-signed certificate) that
    /// `cairn()` (`CAIRN_CA_CERT`), `get()` and `post()` trust.
    pub ca_cert: Option<PathBuf>,
}

impl Host {
    /// Starts `cairn serve` on `data` with extra flags and environment, and
    /// waits until it answers.
    pub fn start(data: &Path, flags: &[&str], env: &[(&str, &str)]) -> Host {
        Host::launch(data, &["serve"], flags, env)
    }

    /// `cairn serve` on the embedded store of DATA/store whatever the test's
    /// store: a restored environment lives there.
    pub fn start_embedded(data: &Path, flags: &[&str], env: &[(&str, &str)]) -> Host {
        Host::launch(data, &["serve", "--store", "rocksdb"], flags, env)
    }

    /// `cairn serve --store STORE --node NODE` on `data`: one host of a
    /// cluster sharing the PostgreSQL store `store`.
    pub fn start_node(data: &Path, store: &str, node: &str, flags: &[&str]) -> Host {
        Host::start_node_with(data, store, node, flags, &[])
    }

    /// `start_node` with extra environment variables for the host process.
    pub fn start_node_with(data: &Path, store: &str, node: &str, flags: &[&str], env: &[(&str, &str)]) -> Host {
        std::fs::create_dir_all(data).unwrap();
        Host::launch(data, &["serve", "--store", store, "--node", node], flags, env)
    }

    /// `cairn restore BACKUP --data DATA/store`: an isolated environment.
    pub fn restore(backup: &Path, data: &Path) -> Host {
        Host::restore_with(backup, data, &[])
    }

    /// `cairn restore` with extra flags (`--stand-in PREFIX=URL`, say).
    pub fn restore_with(backup: &Path, data: &Path, flags: &[&str]) -> Host {
        let mut all = vec!["--quiet-guests"];
        all.extend_from_slice(flags);
        Host::launch(data, &["restore", backup.to_str().unwrap()], &all, &[])
    }

    /// `cairn serve --tls-cert CERT --tls-key KEY`: HTTPS, `url` is
    /// `https://127.0.0.1:PORT`, and the CLI and the test's own requests
    /// trust CA (for a self-signed certificate, CERT itself).
    pub fn start_tls(data: &Path, flags: &[&str], cert: &Path, key: &Path, ca: &Path) -> Host {
        let mut all = vec!["--tls-cert", cert.to_str().unwrap(), "--tls-key", key.to_str().unwrap()];
        all.extend_from_slice(flags);
        Host::launch_with(data, &["serve"], &all, &[], Some(ca))
    }

    fn launch(data: &Path, command: &[&str], flags: &[&str], env: &[(&str, &str)]) -> Host {
        Host::launch_with(data, command, flags, env, None)
    }

    fn launch_with(data: &Path, command: &[&str], flags: &[&str], env: &[(&str, &str)], ca: Option<&Path>) -> Host {
        let port = free_port();
        let scheme = if ca.is_some() { "https" } else { "http" };
        let url = format!("{scheme}://127.0.0.1:{port}");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(data.join("serve.log")).unwrap();
        let mut cmd = Command::new(cairn_bin());
        cmd.args(command).arg("--data").arg(data.join("store"));
        // Only `serve` takes another store; `restore` stays on RocksDB.
        if command == ["serve"] {
            if let Some(url) = postgres_store(&data.join("store")) {
                cmd.arg("--store").arg(url);
            }
        }
        cmd.arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .args(flags)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn cairn serve");
        let mut tls = ureq::tls::TlsConfig::builder();
        if let Some(ca) = ca {
            let pem = std::fs::read(ca).unwrap_or_else(|e| panic!("read {}: {e}", ca.display()));
            let certs: Vec<_> = ureq::tls::parse_pem(&pem)
                .filter_map(|item| match item.expect("PEM") {
                    ureq::tls::PemItem::Certificate(c) => Some(c),
                    _ => None,
                })
                .collect();
            tls = tls.root_certs(ureq::tls::RootCerts::new_with_certs(&certs));
        }
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .tls_config(tls.build())
            .build()
            .into();
        let ca_cert = ca.map(Path::to_path_buf);
        let mut host = Host { child: Some(child), url, data: data.to_path_buf(), agent, token: None, ca_cert };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if host.get("/v1/health").0 == 200 {
                return host;
            }
            if let Some(status) = host.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("cairn serve exited with {status}:\n{}", host.server_log());
            }
            assert!(Instant::now() < deadline, "cairn serve did not answer within 60s:\n{}", host.server_log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A typed client of this host (`cairn-client`), with its token and CA.
    pub fn client(&self) -> cairn_client::Client {
        cairn_client::Client::new(&self.url, self.token.as_deref(), self.ca_cert.as_deref())
    }

    /// The process id of `cairn serve`.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the host runs").id()
    }

    pub fn server_log(&self) -> String {
        std::fs::read_to_string(self.data.join("serve.log")).unwrap_or_default()
    }

    /// Runs `cairn ARGS` against this host.
    pub fn cairn(&self, args: &[&str]) -> Out {
        let mut cmd = Command::new(cairn_bin());
        cmd.args(args).env("CAIRN_SERVER", &self.url);
        if let Some(token) = &self.token {
            cmd.env("CAIRN_TOKEN", token);
        }
        if let Some(ca) = &self.ca_cert {
            cmd.env("CAIRN_CA_CERT", ca);
        }
        let out = cmd.output().expect("run cairn");
        Out {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Runs `cairn ARGS --json`, asserts success and parses the output.
    pub fn ok_json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.push("--json");
        let out = self.cairn(&a);
        assert_eq!(out.code, 0, "cairn {args:?} failed: {}{}", out.stdout, out.stderr);
        out.json()
    }

    pub fn deploy(&self, file: &str, name: Option<&str>) -> Value {
        let path = guest(file);
        let path = path.to_str().unwrap();
        match name {
            Some(n) => self.ok_json(&["deploy", path, "--name", n]),
            None => self.ok_json(&["deploy", path]),
        }
    }

    /// Deploys an activity component with an outbound capability (an HTTP
    /// grant to a loopback port nothing listens on, never used): its calls
    /// are not pure, so they go through the outbox with a dispatch
    /// persistence point, idempotency keys and in-transit holds, as calls
    /// that reach the world do. Without a capability a call runs inline.
    pub fn deploy_effectful(&self, file: &str, name: &str) -> Value {
        let path = guest(file);
        self.ok_json(&["deploy", path.to_str().unwrap(), "--name", name, "--allow-http", "http://127.0.0.1:9/"])
    }

    pub fn get(&self, path: &str) -> (u16, Value) {
        let mut r = self.agent.get(format!("{}{path}", self.url));
        if let Some(token) = &self.token {
            r = r.header("authorization", format!("Bearer {token}"));
        }
        match r.call() {
            Ok(mut r) => (r.status().as_u16(), r.body_mut().read_json().unwrap_or(Value::Null)),
            Err(_) => (0, Value::Null),
        }
    }

    pub fn post(&self, path: &str, body: &[u8]) -> (u16, Value) {
        let mut r = self.agent.post(format!("{}{path}", self.url)).header("content-type", "application/json");
        if let Some(token) = &self.token {
            r = r.header("authorization", format!("Bearer {token}"));
        }
        match r.send(body) {
            Ok(mut r) => (r.status().as_u16(), r.body_mut().read_json().unwrap_or(Value::Null)),
            Err(e) => panic!("POST {path}: {e}"),
        }
    }

    /// Sends a message over HTTP; returns the status and the answer.
    pub fn send(&self, operation: &str, body: Value, id: Option<&str>) -> (u16, Value) {
        let mut req = serde_json::json!({ "operation": operation, "body": body });
        if let Some(id) = id {
            req["id"] = id.into();
        }
        self.post("/v1/messages", req.to_string().as_bytes())
    }

    pub fn instance(&self, id: &str) -> Value {
        let (status, v) = self.get(&format!("/v1/instances/{id}"));
        assert_eq!(status, 200, "instance {id}: {v}");
        v
    }

    pub fn instances(&self, process: &str) -> Vec<Value> {
        let (_, v) = self.get(&format!("/v1/instances?process={process}&limit=100000"));
        v["instances"].as_array().cloned().unwrap_or_default()
    }

    /// Waits until there are `n` instances of `process` and every one is
    /// completed; panics with the ones that are not, and the server's log.
    pub fn wait_all_completed(&self, process: &str, n: usize, within: Duration) -> Vec<Value> {
        let deadline = Instant::now() + within;
        loop {
            let all = self.instances(process);
            let done = all.iter().filter(|i| i["status"] == "completed").count();
            if all.len() == n && done == n {
                return all;
            }
            if Instant::now() >= deadline {
                let stuck: Vec<Value> =
                    all.iter().filter(|i| i["status"] != "completed").map(|i| self.instance(i["id"].as_str().unwrap())).collect();
                panic!("{done}/{} of {process} completed (expected {n}); not completed: {stuck:#?}\n{}", all.len(), self.server_log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until the instance reaches `status`; panics with its state if not.
    pub fn wait_status(&self, id: &str, status: &str, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let v = self.instance(id);
            if v["status"] == status {
                return v;
            }
            assert!(Instant::now() < deadline, "instance {id} did not become {status}: {v:#}");
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Waits until the host stops answering (a fail point aborted it).
    pub fn wait_down(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.get("/v1/health").0 == 200 {
            assert!(Instant::now() < deadline, "the host is still up: the fail point was not reached");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `kill -9`: no shutdown, no flush.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// SIGTERM, then wait for the controlled shutdown to finish.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut c = self.child.take().expect("host running");
        #[allow(unsafe_code)]
        // SAFETY: sending a signal to our own child process by pid.
        unsafe {
            libc::kill(c.id() as i32, libc::SIGTERM);
        }
        c.wait().unwrap()
    }

    /// SIGTERM, then wait at most `limit` for the host to exit; None if it
    /// is still running then (it is killed when the Host drops).
    pub fn terminate_within(&mut self, limit: Duration) -> Option<ExitStatus> {
        let c = self.child.as_mut().expect("host running");
        #[allow(unsafe_code)]
        // SAFETY: sending a signal to our own child process by pid.
        unsafe {
            libc::kill(c.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = c.try_wait().unwrap() {
                self.child = None;
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Guest log records (one JSON object per line).
    pub fn guest_log(&self) -> Vec<Value> {
        std::fs::read_to_string(self.data.join("store").join("guest-log.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A running `cairn partner`: a local HTTP partner that records every
/// request it receives. Killed when dropped.
pub struct Partner {
    child: Child,
    pub url: String,
    agent: ureq::Agent,
}

impl Partner {
    /// Starts `cairn partner` on a free loopback port, logging to `DIR/partner-PORT.jsonl`.
    pub fn start(dir: &Path) -> Partner {
        let port = free_port();
        let url = format!("http://127.0.0.1:{port}");
        let log = dir.join(format!("partner-{port}.jsonl"));
        let out = std::fs::File::create(dir.join(format!("partner-{port}.out"))).unwrap();
        let child = Command::new(cairn_bin())
            .args(["partner", "--listen", &format!("127.0.0.1:{port}"), "--log"])
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("spawn cairn partner");
        let agent: ureq::Agent =
            ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(Duration::from_secs(10))).build().into();
        let partner = Partner { child, url, agent };
        let deadline = Instant::now() + Duration::from_secs(30);
        while partner.try_requests().is_none() {
            assert!(Instant::now() < deadline, "cairn partner did not answer within 30s");
            std::thread::sleep(Duration::from_millis(30));
        }
        partner
    }

    fn try_requests(&self) -> Option<Vec<Value>> {
        let mut r = self.agent.get(format!("{}/_requests", self.url)).call().ok()?;
        r.body_mut().read_json::<Vec<Value>>().ok()
    }

    /// Every request received so far, oldest first (method, path, headers, body, …).
    pub fn requests(&self) -> Vec<Value> {
        self.try_requests().expect("cairn partner answers /_requests")
    }

    /// The `idempotency-key` headers of the requests whose path starts with `path`.
    pub fn keys(&self, path: &str) -> Vec<String> {
        self.requests()
            .iter()
            .filter(|r| r["path"].as_str().is_some_and(|p| p.starts_with(path)))
            .map(|r| r["headers"]["idempotency-key"].as_str().unwrap_or("").to_string())
            .collect()
    }
}

impl Drop for Partner {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until `f` holds, polling every 20 ms; panics with `what` after `within`.
pub fn eventually(what: &str, within: Duration, f: impl Fn() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A host on a fresh data directory named after `tag`, with guest log lines
/// kept quiet and the extra environment `env`; the directory lives as long
/// as the returned `TempDir`.
pub fn quiet_host(tag: &str, env: &[(&str, &str)]) -> (TempDir, Host) {
    let dir = TempDir::new(tag);
    let host = Host::start(dir.path(), &["--quiet-guests"], env);
    (dir, host)
}

/// An instance view's history as (reason, path) pairs, oldest first.
pub fn history_steps(view: &serde_json::Value) -> Vec<(String, String)> {
    view["history"]
        .as_array()
        .expect("an instance view with a history")
        .iter()
        .map(|e| (e["reason"].as_str().unwrap().to_string(), e["path"].as_str().unwrap().to_string()))
        .collect()
}
