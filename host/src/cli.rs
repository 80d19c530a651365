//! The command line: `cairn serve` starts the host; every other command is a
//! client of the HTTP API at `--server` (env `CAIRN_SERVER`).
//!
//! Exit codes: 0 success; 1 the server refused the request (its error is
//! printed); 2 usage error; 3 the server could not be reached; 4 `--wait`
//! saw the instance end faulted or terminated.

use crate::runtime::Limits;
use crate::service::Config;
use clap::{Parser, Subcommand};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Outbound HTTP of activity components: the host's ceiling, stand-ins for
/// an isolated environment, and limits per activity call.
#[derive(clap::Args, Clone, Debug)]
struct HttpArgs {
    /// Let activities call URLs under PREFIX (scheme://host[:port][/path]) over
    /// HTTP, if their deployment grants it too (`deploy --allow-http`); repeatable.
    /// Without it, no activity reaches anything.
    #[arg(long = "allow-http", value_name = "PREFIX")]
    allow_http: Vec<String>,
    /// In an isolated environment, answer requests under PREFIX from URL (a
    /// test double of the partner) instead of a synthetic response; repeatable.
    #[arg(long = "stand-in", value_name = "PREFIX=URL")]
    stand_in: Vec<String>,
    /// Connect timeout of one outbound request, in milliseconds.
    #[arg(long, default_value_t = 5_000)]
    http_connect_timeout_ms: u64,
    /// Total time of one outbound request, in milliseconds (never beyond the call's deadline).
    #[arg(long, default_value_t = 30_000)]
    http_timeout_ms: u64,
    /// Largest response body an activity may receive, in bytes.
    #[arg(long, default_value_t = 8 << 20)]
    http_max_response_bytes: u64,
    /// Most outbound requests in one activity call.
    #[arg(long, default_value_t = 16)]
    http_max_requests: u32,
}

impl From<HttpArgs> for crate::service::HttpConfig {
    fn from(a: HttpArgs) -> Self {
        crate::service::HttpConfig {
            allow_http: a.allow_http,
            stand_ins: a.stand_in,
            limits: crate::outbound::HttpLimits {
                connect_timeout: Duration::from_millis(a.http_connect_timeout_ms),
                total: Duration::from_millis(a.http_timeout_ms),
                max_response_bytes: a.http_max_response_bytes,
                max_requests: a.http_max_requests,
            },
        }
    }
}

/// What the API takes: request size limits, and where backups go.
#[derive(clap::Args, Clone, Debug)]
struct ApiArgs {
    /// Where `cairn backup NAME` writes (BACKUP_DIR/NAME); created on demand. Default: DATA/backups.
    #[arg(long, value_name = "DIR")]
    backup_dir: Option<PathBuf>,
    /// Largest component `cairn deploy` may send, in bytes (default 64 MiB).
    #[arg(long, default_value_t = crate::api::DEFAULT_MAX_COMPONENT_BYTES)]
    max_component_bytes: usize,
    /// Largest request body of every other route, in bytes (default 4 MiB).
    #[arg(long, default_value_t = crate::api::DEFAULT_MAX_BODY_BYTES)]
    max_body_bytes: usize,
}

impl From<ApiArgs> for crate::api::ApiConfig {
    fn from(a: ApiArgs) -> Self {
        crate::api::ApiConfig {
            max_component_bytes: a.max_component_bytes,
            max_body_bytes: a.max_body_bytes,
            backup_dir: a.backup_dir,
            require_token: false,
        }
    }
}

/// HTTPS for the API (rustls): both files or neither; without them, plain HTTP.
#[derive(clap::Args, Clone, Debug)]
struct TlsArgs {
    /// Serve HTTPS with this certificate chain (PEM, the server's certificate first).
    #[arg(long, value_name = "CERT.pem", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, value_name = "KEY.pem", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

impl TlsArgs {
    /// The TLS acceptor, if asked for; an error names the file and what is wrong.
    fn load(&self) -> anyhow::Result<Option<tokio_rustls::TlsAcceptor>> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => crate::server::load_tls(cert, key).map(Some),
            (None, None) => Ok(None),
            _ => anyhow::bail!("--tls-cert and --tls-key go together: give both, or neither for plain HTTP"),
        }
    }
}

pub const EXIT_REFUSED: i32 = 1;
pub const EXIT_USAGE: i32 = 2;
pub const EXIT_UNREACHABLE: i32 = 3;
pub const EXIT_INSTANCE_FAILED: i32 = 4;

#[derive(Parser)]
#[command(name = "cairn", version, about = "Cairn: a durable process host for WebAssembly components")]
struct Cli {
    /// URL of the Cairn server the client commands talk to.
    #[arg(long, global = true, env = "CAIRN_SERVER", default_value = "http://127.0.0.1:7700")]
    server: String,
    /// Bearer token sent with every request (`cairn token create` makes one).
    #[arg(long, global = true, env = "CAIRN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Trust the server's TLS certificate if it is signed by one in this PEM
    /// file (or is one of them: a self-signed certificate), instead of the
    /// usual public roots. For `--server https://…`.
    #[arg(long, global = true, env = "CAIRN_CA_CERT", value_name = "FILE")]
    ca_cert: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the host: serve the HTTP API and run instances.
    Serve {
        /// Data directory (the embedded RocksDB store, compiled components, guest log).
        #[arg(long, default_value = "./cairn-data")]
        data: PathBuf,
        /// The store: leave it out for the embedded RocksDB store in --data, or
        /// give a PostgreSQL database as postgres://USER[:PASSWORD]@HOST:PORT/DATABASE.
        #[arg(long, env = "CAIRN_STORE")]
        store: Option<String>,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:7700")]
        listen: String,
        /// Do not fsync commits (faster; a machine crash may lose recent persistence points).
        #[arg(long)]
        no_fsync: bool,
        /// Open the store even if its write-ahead log is damaged, dropping every write after the damage.
        #[arg(long)]
        salvage_wal: bool,
        /// Wall-clock limit of one guest call, in milliseconds.
        #[arg(long, default_value_t = 10_000)]
        call_timeout_ms: u64,
        /// Memory limit of one guest instance, in MiB.
        #[arg(long, default_value_t = 128)]
        memory_limit_mb: usize,
        /// Largest variables, message body or activity result, in bytes: a handler call or activity call over it faults with cairn.too-large; a message sent over it is refused (413).
        #[arg(long, default_value_t = 1 << 20)]
        max_variables_bytes: usize,
        /// Meter fuel (about one unit per WebAssembly instruction) beside the call deadline: a call that burns more faults with cairn.out-of-fuel. Off by default.
        #[arg(long)]
        fuel_per_call: Option<u64>,
        /// Guest log bytes one handler or activity call may write; records beyond are dropped, with one notice.
        #[arg(long, default_value_t = 1 << 20)]
        guest_log_max_bytes_per_call: usize,
        /// Guest log bytes the calls of one instance (its handlers and the activity calls it makes) may write while the host runs; records beyond are dropped, with one notice per call.
        #[arg(long, default_value_t = 16 << 20)]
        guest_log_max_bytes_per_instance: usize,
        /// History entries kept per instance.
        #[arg(long, default_value_t = 1000)]
        history_limit: u64,
        /// Do not echo guest log records to stderr (they still go to DATA/guest-log.jsonl).
        #[arg(long)]
        quiet_guests: bool,
        /// Milliseconds an instance waiting for a message or timer stays in memory before it is dehydrated.
        #[arg(long, default_value_t = 0)]
        idle_ms: u64,
        /// Run as an isolated environment (a restored backup): every outbound
        /// effect is recorded in DATA/isolated-effects.jsonl and printed. The
        /// store remembers it: only `cairn promote` ends isolation.
        #[arg(long)]
        isolated: bool,
        /// On SIGTERM/SIGINT, milliseconds requests in flight get to finish before their connections are closed.
        #[arg(long, default_value_t = 10_000)]
        shutdown_grace_ms: u64,
        /// Read serve options from this TOML file (keys are the flags' names, e.g. idle-ms = 5000); flags given here win.
        #[arg(long, env = "CAIRN_CONFIG", value_name = "FILE")]
        config: Option<PathBuf>,
        /// How the host's log lines on stderr look: text, or one JSON object per line. Filter them with RUST_LOG (default info).
        #[arg(long, value_enum, default_value = "text")]
        log_format: crate::telemetry::LogFormat,
        #[command(flatten)]
        http: HttpArgs,
        #[command(flatten)]
        api: ApiArgs,
        #[command(flatten)]
        tls: TlsArgs,
        #[command(flatten)]
        cluster: crate::cluster_cli::ClusterArgs,
    },
    /// Cluster mode: see the hosts sharing a PostgreSQL store and who owns which partition.
    #[command(subcommand)]
    Cluster(crate::cluster_cli::ClusterCommand),
    /// Write an online, consistent backup of definitions and instances to
    /// NAME under the server's backup root (`serve --backup-dir`, default
    /// DATA/backups, on the server's machine); prints where it went.
    Backup {
        /// A plain name (no '/', '..' or absolute path).
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Restore a backup into a new data directory and serve it as an isolated environment.
    Restore {
        /// The backup directory (`cairn backup` wrote it).
        backup: PathBuf,
        /// The new data directory; it must not exist.
        #[arg(long)]
        data: PathBuf,
        /// Address to listen on (give it a port of its own).
        #[arg(long, default_value = "127.0.0.1:7701")]
        listen: String,
        #[arg(long)]
        quiet_guests: bool,
        /// On SIGTERM/SIGINT, milliseconds requests in flight get to finish before their connections are closed.
        #[arg(long, default_value_t = 10_000)]
        shutdown_grace_ms: u64,
        /// How the host's log lines on stderr look: text, or one JSON object per line.
        #[arg(long, value_enum, default_value = "text")]
        log_format: crate::telemetry::LogFormat,
        #[command(flatten)]
        http: HttpArgs,
        #[command(flatten)]
        api: ApiArgs,
        #[command(flatten)]
        tls: TlsArgs,
    },
    /// End the isolation of a restored environment: its outbound effects reach the world again.
    ///
    /// Run it on a stopped host's data directory (or store). The environment
    /// becomes a primary: calls its instances make will reach real partners.
    Promote {
        /// The data directory of the isolated environment.
        data: PathBuf,
        /// Its PostgreSQL store, if it is not the embedded one in DATA.
        #[arg(long, env = "CAIRN_STORE")]
        store: Option<String>,
        /// Confirm: without it, nothing changes.
        #[arg(long)]
        yes: bool,
    },
    /// Check a stopped host's embedded store record by record: checksums,
    /// decoding, and tables agreeing with the snapshots. Changes nothing.
    ///
    /// Prints one line per problem (table, key, what is wrong, what `repair`
    /// does about it) and a summary per table. Exit 0 clean, 1 problems
    /// found, 2 not checked (no store, a host holds it, …).
    Check {
        /// The data directory of a stopped host (`serve --data`), or a backup.
        data: PathBuf,
        /// Not checked here: a PostgreSQL store has its own tools (pg_amcheck).
        #[arg(long)]
        store: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Repair a stopped host's embedded store in place, keeping the original
    /// as DATA/before-repair-MS: rebuild it from what reads, drop records
    /// that do not decode and entries of missing instances, align fences.
    ///
    /// Prints one line per record dropped, lost or changed. Exit 0 when
    /// nothing is left, 1 when problems repair does not fix are left, 2 not
    /// repaired (or without --yes: what it would do).
    Repair {
        /// The data directory of a stopped host (`serve --data`).
        data: PathBuf,
        /// Confirm: without it, prints what it would do and changes nothing.
        #[arg(long)]
        yes: bool,
        #[arg(long)]
        json: bool,
    },
    /// Deploy a process or activity component (.wasm), or an external
    /// activity (`--external NAME --operation OP…`) whose tasks workers take.
    Deploy {
        #[arg(required_unless_present = "external")]
        file: Option<PathBuf>,
        /// Deploy an external activity NAME (no component): workers outside
        /// the host take its tasks (`POST /v1/tasks/poll`).
        #[arg(long, value_name = "NAME", conflicts_with_all = ["file", "name", "allow_http", "resources"])]
        external: Option<String>,
        /// An operation of the external activity; repeatable (none: any operation).
        #[arg(long = "operation", value_name = "OP", requires = "external")]
        operations: Vec<String>,
        /// Name of an activity component (default: the file name without .wasm, '_' as '-').
        #[arg(long)]
        name: Option<String>,
        /// Grant an activity component outbound HTTP to URLs under PREFIX
        /// (scheme://host[:port][/path]); repeatable. The host's own
        /// `serve --allow-http` must allow them too.
        #[arg(long = "allow-http", value_name = "PREFIX")]
        allow_http: Vec<String>,
        /// Grant an activity component a resource: NAME (read and write),
        /// NAME:read or NAME:write; repeatable. The resource must exist.
        #[arg(long = "resource", value_name = "NAME[:read|write]")]
        resources: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// List deployed definitions and activity components.
    Definitions {
        #[arg(long)]
        json: bool,
    },
    /// Start an instance of a process.
    Start {
        process: String,
        /// JSON input: the message of the process's instance-creating receive, or initial variables.
        #[arg(long)]
        input: Option<String>,
        /// Wait until the instance completes and print its final variables.
        #[arg(long)]
        wait: bool,
        /// With --wait: give up after this many seconds.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
        #[arg(long)]
        json: bool,
    },
    /// Send a message; it is routed by correlation or creates an instance.
    Send {
        operation: String,
        /// JSON body of the message.
        #[arg(long)]
        body: String,
        /// Message id; a message id seen before is acknowledged and not delivered again.
        #[arg(long)]
        id: Option<String>,
        /// Wait for the reply of a request-response receive.
        #[arg(long)]
        wait_reply: bool,
        #[arg(long)]
        json: bool,
    },
    /// List instances.
    Ls {
        /// Only instances in this status: running, waiting, suspended, completed, faulted or terminated.
        #[arg(long)]
        status: Option<String>,
        /// Only instances of this process.
        #[arg(long)]
        process: Option<String>,
        /// At most this many (a page; at most 10000).
        #[arg(long, default_value_t = 1000)]
        limit: usize,
        /// The next page: instances whose id comes after this one (as the previous page's hint says).
        #[arg(long)]
        after: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Show one instance: status, position, variables, history.
    Show {
        instance: String,
        #[arg(long)]
        json: bool,
    },
    /// Suspend an instance: it stops at its next transition until resumed (messages still queue).
    Suspend {
        instance: String,
        #[arg(long)]
        json: bool,
    },
    /// Resume a suspended instance.
    Resume {
        instance: String,
        #[arg(long)]
        json: bool,
    },
    /// Release an instance parked by deferred recovery after a crash: it is loaded and goes on.
    #[command(alias = "resubmit")]
    Release {
        instance: String,
        #[arg(long)]
        json: bool,
    },
    /// End an instance at once; what it waited for is withdrawn.
    Terminate {
        instance: String,
        #[arg(long)]
        json: bool,
    },
    /// Cancel an instance: `cairn.cancelled` is raised where it stands, the
    /// scopes running run their fault handlers (or compensate), the completed
    /// top-level scopes are compensated, then it ends terminated.
    Cancel {
        instance: String,
        #[arg(long)]
        json: bool,
    },
    /// Retry a faulted instance from the activity that faulted, optionally
    /// with new variables; or, with --process (and --fault), every faulted
    /// instance of a process.
    Retry {
        /// The faulted instance (or use --process).
        #[arg(required_unless_present = "process", conflicts_with = "process")]
        instance: Option<String>,
        /// Replace the variables first (JSON; checked against the process's variables type).
        #[arg(long, value_name = "JSON", conflicts_with = "process")]
        variables: Option<String>,
        /// Retry every faulted instance of this process.
        #[arg(long)]
        process: Option<String>,
        /// With --process: only instances faulted with this fault name.
        #[arg(long, requires = "process")]
        fault: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Move a waiting or suspended instance to another version of its
    /// definition, mapping its position by activity path; or, with --from,
    /// every instance of a version that can move.
    Migrate {
        /// The instance (or use --from).
        #[arg(required_unless_present = "from", conflicts_with = "from")]
        instance: Option<String>,
        /// The target version (as `cairn definitions` prints it).
        #[arg(long)]
        to: String,
        /// Migrate every waiting or suspended instance of this version.
        #[arg(long)]
        from: Option<String>,
        /// An activity that moved: OLD_PATH=NEW_PATH (repeatable).
        #[arg(long = "map", value_name = "OLD_PATH=NEW_PATH")]
        map: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// An instance's history of persistence points, with the activity path and the reason for each.
    History {
        instance: String,
        #[arg(long)]
        json: bool,
    },
    /// Variables of a suspended instance.
    #[command(subcommand)]
    Vars(VarsCommand),
    /// Breakpoints: an instance reaching one is persisted and suspended before the activity.
    #[command(name = "break", subcommand)]
    Break(BreakCommand),
    /// Non-idempotent calls found in flight after a crash, held for an operator.
    #[command(name = "in-transit", subcommand)]
    InTransit(InTransitCommand),
    /// Tasks of external activities: waiting, leased (with worker and attempt) and held.
    #[command(subcommand)]
    Tasks(TasksCommand),
    /// Resources: named tables of JSON documents that activities read and
    /// write in the same persistence point as the instance that calls them.
    #[command(subcommand)]
    Resource(ResourceCommand),
    /// API bearer tokens (admin): create, list, revoke. Through the server,
    /// or offline on a stopped host's store with --data DIR [--store URL].
    #[command(subcommand)]
    Token(TokenCommand),
    /// Run the benchmarks in-process on a temporary data directory.
    Bench(crate::bench::Args),
    /// Run a small local HTTP partner that records every request it receives (for demos and tests).
    Partner(crate::partner::Args),
    /// Create a process crate that builds on its own (the SDK and WIT vendored in it), with a README and a test.
    New(crate::scaffold::Args),
    /// Print a shell completion script: cairn completions bash > /etc/bash_completion.d/cairn
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
}

#[derive(Subcommand)]
enum BreakCommand {
    /// Set a breakpoint on an activity path (as `cairn show` prints it) of a process.
    Set { process: String, path: String },
    /// Clear a breakpoint.
    Clear { process: String, path: String },
    /// List breakpoints.
    Ls {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum VarsCommand {
    /// Replace the variables of a suspended instance with JSON.
    Set {
        instance: String,
        variables: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum ResourceCommand {
    /// Create a resource (nothing changes if it exists).
    Create {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// List resources.
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Show one key of a resource: its version and value.
    Get {
        name: String,
        key: String,
        #[arg(long)]
        json: bool,
    },
    /// List the keys of a resource in key order.
    Scan {
        name: String,
        /// Only keys that start with this.
        #[arg(long, default_value = "")]
        prefix: String,
        /// Only keys after this one (paging: pass the last key shown).
        #[arg(long)]
        after: Option<String>,
        /// At most this many rows (the server caps it at 1000).
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
}

/// Where a token command works: through the server, or offline on a store.
#[derive(clap::Args, Clone, Debug)]
struct OfflineStore {
    /// Work offline on this (stopped) host's data directory instead of through the server.
    #[arg(long)]
    data: Option<PathBuf>,
    /// With --data: the host's PostgreSQL store, if it is not the embedded one in DATA.
    #[arg(long)]
    store: Option<String>,
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a token; it is printed once (only its hash is kept).
    Create {
        /// worker (only takes and completes tasks of external activities), reader (lists and shows), operator (also deploys, starts, sends, operator verbs) or admin (also backups and tokens).
        #[arg(long)]
        role: String,
        /// What the token is for.
        #[arg(long, default_value = "")]
        note: String,
        #[command(flatten)]
        offline: OfflineStore,
        #[arg(long)]
        json: bool,
    },
    /// List tokens (ids and roles, never the tokens).
    Ls {
        #[command(flatten)]
        offline: OfflineStore,
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token by id.
    Revoke {
        id: String,
        #[command(flatten)]
        offline: OfflineStore,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum TasksCommand {
    /// List the tasks of external activities: waiting, leased and held.
    Ls {
        /// Only the tasks of this external activity.
        #[arg(long)]
        activity: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum InTransitCommand {
    /// List held calls.
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Send a held call again (with the next attempt number in its idempotency key).
    Resubmit {
        /// INSTANCE:CALL, as `ls` shows.
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Give up a held call: the instance gets the fault `cairn.abandoned` at the invoke.
    Abandon {
        /// INSTANCE:CALL, as `ls` shows.
        id: String,
        #[arg(long)]
        json: bool,
    },
}

pub fn main() -> i32 {
    use clap::{CommandFactory, FromArgMatches};
    let argv = match crate::config::expand(&Cli::command(), std::env::args_os().collect()) {
        Ok(argv) => argv,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_USAGE;
        }
    };
    let cli = match Cli::command().try_get_matches_from(argv).and_then(|m| Cli::from_arg_matches(&m)) {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_USAGE } else { 0 };
            let _ = e.print();
            return code;
        }
    };
    // Commands that open a store themselves (offline tokens, check, bench)
    // report through the same pipeline as the host; serve and restore choose
    // their own format.
    if !matches!(cli.command, Command::Serve { .. } | Command::Restore { .. }) {
        let _ = crate::telemetry::init(crate::telemetry::LogFormat::Text);
    }
    let client = Client::new(&cli.server, cli.token.as_deref(), cli.ca_cert.as_deref());
    let result = match cli.command {
        Command::Restore { backup, data, listen, quiet_guests, shutdown_grace_ms, log_format, http, api, tls } => {
            if let Err(e) = crate::telemetry::init(log_format) {
                eprintln!("error: {e:#}");
                return EXIT_USAGE;
            }
            let tls = match tls.load() {
                Ok(tls) => tls,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    return EXIT_USAGE;
                }
            };
            if let Err(e) = copy_dir(&backup, &data) {
                eprintln!("error: restoring {} into {}: {e}", backup.display(), data.display());
                return EXIT_USAGE;
            }
            eprintln!("cairn: restored {} into {}; starting an isolated environment", backup.display(), data.display());
            let store = cairn_store::Location::Embedded { data_dir: data.clone() };
            let config = Config {
                data_dir: data,
                store,
                fsync: true,
                salvage_wal: false,
                limits: Limits::default(),
                history_limit: 1000,
                echo_guest_log: !quiet_guests,
                idle: Duration::ZERO,
                isolated: true,
                http: http.into(),
                cluster: None,
            };
            let mut api: crate::api::ApiConfig = api.into();
            api.require_token = !crate::server::is_loopback(&listen);
            return match crate::server::serve(config, api, &listen, Duration::from_millis(shutdown_grace_ms), tls) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("cairn restore: {e:#}");
                    1
                }
            };
        }
        Command::Backup { name, json } => backup(&client, &name, json),
        Command::Cluster(crate::cluster_cli::ClusterCommand::Status { json }) => client.get("/v1/cluster").map(|v| crate::cluster_cli::print_status(&v, json)),
        Command::Serve { data, store, listen, no_fsync, salvage_wal, call_timeout_ms, memory_limit_mb, max_variables_bytes, fuel_per_call, guest_log_max_bytes_per_call, guest_log_max_bytes_per_instance, history_limit, quiet_guests, idle_ms, isolated, shutdown_grace_ms, config: _, log_format, http, api, tls, cluster } => {
            if let Err(e) = crate::telemetry::init(log_format) {
                eprintln!("error: {e:#}");
                return EXIT_USAGE;
            }
            let tls = match tls.load() {
                Ok(tls) => tls,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    return EXIT_USAGE;
                }
            };
            let store = match cairn_store::Location::parse(store.as_deref(), &data) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("error: {e}");
                    return EXIT_USAGE;
                }
            };
            let config = Config {
                data_dir: data,
                store,
                fsync: !no_fsync,
                salvage_wal,
                limits: Limits {
                    memory_bytes: memory_limit_mb << 20,
                    call_timeout: Duration::from_millis(call_timeout_ms),
                    max_variables_bytes,
                    guest_log_bytes_per_call: guest_log_max_bytes_per_call,
                    guest_log_bytes_per_instance: guest_log_max_bytes_per_instance,
                    fuel_per_call,
                },
                history_limit,
                echo_guest_log: !quiet_guests,
                idle: Duration::from_millis(idle_ms),
                isolated,
                http: http.into(),
                cluster: cluster.config(&listen),
            };
            let mut api: crate::api::ApiConfig = api.into();
            api.require_token = !crate::server::is_loopback(&listen);
            return match crate::server::serve(config, api, &listen, Duration::from_millis(shutdown_grace_ms), tls) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("cairn serve: {e:#}");
                    1
                }
            };
        }
        Command::Deploy { external: Some(name), operations, json, .. } => deploy_external(&client, &name, &operations, json),
        Command::Deploy { file, name, allow_http, resources, json, .. } => {
            deploy(&client, &file.unwrap_or_default(), name, &allow_http, &resources, json)
        }
        Command::Tasks(TasksCommand::Ls { activity, json }) => tasks_ls(&client, activity, json),
        Command::Definitions { json } => definitions(&client, json),
        Command::Start { process, input, wait, timeout, json } => start(&client, &process, input, wait, timeout, json),
        Command::Send { operation, body, id, wait_reply, json } => send(&client, &operation, &body, id, wait_reply, json),
        Command::Ls { status, process, limit, after, json } => ls(&client, status, process, limit, after, json),
        Command::Show { instance, json } => show(&client, &instance, json),
        Command::Suspend { instance, json } => control(&client, &instance, "suspend", json),
        Command::Resume { instance, json } => control(&client, &instance, "resume", json),
        Command::Terminate { instance, json } => control(&client, &instance, "terminate", json),
        Command::Cancel { instance, json } => control(&client, &instance, "cancel", json),
        Command::Migrate { instance, to, from, map, json } => migrate(&client, instance, &to, from, &map, json),
        Command::Retry { instance, variables, process, fault, json } => retry(&client, instance, variables, process, fault, json),
        Command::Release { instance, json } => control(&client, &instance, "release", json),
        Command::History { instance, json } => history(&client, &instance, json),
        Command::Vars(VarsCommand::Set { instance, variables, json }) => set_vars(&client, &instance, &variables, json),
        Command::InTransit(cmd) => in_transit(&client, cmd),
        Command::Resource(cmd) => resource(&client, cmd),
        Command::Token(cmd) => token(&client, cmd),
        Command::Break(cmd) => breakpoints(&client, cmd),
        Command::Bench(args) => return crate::bench::run(args),
        Command::New(args) => return crate::scaffold::run(args),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "cairn", &mut std::io::stdout());
            return 0;
        }
        Command::Partner(args) => return crate::partner::run(args),
        Command::Promote { data, store, yes } => return promote(&data, store.as_deref(), yes),
        Command::Check { data, store, json } => return crate::check::run_check(&data, store.as_deref(), json),
        Command::Repair { data, yes, json } => return crate::check::run_repair(&data, yes, json),
    };
    match result {
        Ok(code) => code,
        Err(CliError(code, message)) => {
            eprintln!("error: {message}");
            code
        }
    }
}

struct CliError(i32, String);

struct Client {
    base: String,
    /// The HTTP(S) agent, or why it could not be made (an unreadable
    /// --ca-cert), reported by the first request, so that commands that
    /// send none (`serve`, offline ones) are not held to it.
    agent: Result<ureq::Agent, String>,
    /// `Authorization: Bearer …`, sent with every request.
    authorization: Option<String>,
}

impl Client {
    fn new(base: &str, token: Option<&str>, ca_cert: Option<&std::path::Path>) -> Client {
        let agent = Client::tls_config(ca_cert).map(|tls| {
            ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(Duration::from_secs(600)))
                .tls_config(tls)
                .build()
                .into()
        });
        let authorization = token.map(str::trim).filter(|t| !t.is_empty()).map(|t| format!("Bearer {t}"));
        Client { base: base.trim_end_matches('/').to_string(), agent, authorization }
    }

    /// TLS for `https://` servers (rustls, ring): the certificates of
    /// `--ca-cert` as the only roots if given, else Mozilla's public roots.
    fn tls_config(ca_cert: Option<&std::path::Path>) -> Result<ureq::tls::TlsConfig, String> {
        let mut tls = ureq::tls::TlsConfig::builder().provider(ureq::tls::TlsProvider::Rustls);
        if let Some(path) = ca_cert {
            let pem = std::fs::read(path).map_err(|e| format!("cannot read the CA certificate file {} (--ca-cert): {e}", path.display()))?;
            let mut roots = Vec::new();
            for item in ureq::tls::parse_pem(&pem) {
                match item {
                    Ok(ureq::tls::PemItem::Certificate(c)) => roots.push(c),
                    Ok(_) => {}
                    Err(e) => return Err(format!("the CA certificate file {} (--ca-cert) is not valid PEM: {e}", path.display())),
                }
            }
            if roots.is_empty() {
                return Err(format!(
                    "the CA certificate file {} (--ca-cert) holds no certificate (expected a PEM block '-----BEGIN CERTIFICATE-----')",
                    path.display()
                ));
            }
            tls = tls.root_certs(ureq::tls::RootCerts::new_with_certs(&roots));
        }
        Ok(tls.build())
    }

    fn agent(&self) -> Result<&ureq::Agent, CliError> {
        self.agent.as_ref().map_err(|e| CliError(EXIT_USAGE, e.clone()))
    }

    fn auth<B>(&self, r: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        match &self.authorization {
            Some(a) => r.header("authorization", a),
            None => r,
        }
    }

    fn finish(&self, r: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Result<Value, CliError> {
        let mut resp = r.map_err(|e| match tls_failure(&e) {
            Some(why) => CliError(EXIT_UNREACHABLE, format!("TLS with the Cairn server at {} failed: {why}", self.base)),
            None => CliError(EXIT_UNREACHABLE, format!("cannot reach the Cairn server at {}: {e} (start it with `cairn serve`, or set --server / CAIRN_SERVER)", self.base)),
        })?;
        let status = resp.status().as_u16();
        let body: Value = resp
            .body_mut()
            .read_json()
            .map_err(|e| CliError(EXIT_REFUSED, format!("the server answered {status} with a body that is not JSON: {e}")))?;
        if status >= 400 {
            let msg = body["error"].as_str().map(str::to_string).unwrap_or_else(|| body.to_string());
            return Err(CliError(EXIT_REFUSED, msg));
        }
        Ok(body)
    }

    fn get(&self, path: &str) -> Result<Value, CliError> {
        self.finish(self.auth(self.agent()?.get(format!("{}{path}", self.base))).call())
    }

    fn post_json(&self, path: &str, body: &Value) -> Result<Value, CliError> {
        self.finish(
            self.auth(self.agent()?.post(format!("{}{path}", self.base)))
                .header("content-type", "application/json")
                .send(body.to_string().as_bytes()),
        )
    }

    fn put_json(&self, path: &str, body: &Value) -> Result<Value, CliError> {
        self.finish(
            self.auth(self.agent()?.put(format!("{}{path}", self.base)))
                .header("content-type", "application/json")
                .send(body.to_string().as_bytes()),
        )
    }

    fn delete_json(&self, path: &str, body: &Value) -> Result<Value, CliError> {
        self.finish(
            self.auth(self.agent()?.delete(format!("{}{path}", self.base)))
                .force_send_body()
                .header("content-type", "application/json")
                .send(body.to_string().as_bytes()),
        )
    }

    fn post_bytes(&self, path: &str, bytes: &[u8]) -> Result<Value, CliError> {
        self.finish(self.auth(self.agent()?.post(format!("{}{path}", self.base))).header("content-type", "application/wasm").send(bytes))
    }
}

/// A TLS failure (rustls's error, as such or inside an I/O error), said with what to do about it.
fn tls_failure(e: &ureq::Error) -> Option<String> {
    use tokio_rustls::rustls::{self, CertificateError};
    let e: &rustls::Error = match e {
        ureq::Error::Rustls(e) => e,
        ureq::Error::Io(io) => io.get_ref()?.downcast_ref::<rustls::Error>()?,
        _ => return None,
    };
    let hint = match e {
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer | CertificateError::BadSignature) => {
            "the server's certificate is not signed by a trusted root: if it is self-signed or from a private CA, trust it with --ca-cert FILE / CAIRN_CA_CERT"
        }
        rustls::Error::InvalidCertificate(CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }) => {
            "the server's certificate does not name the host in --server: use a name or address its subjectAltName lists"
        }
        rustls::Error::InvalidCertificate(CertificateError::Expired | CertificateError::ExpiredContext { .. }) => "the server's certificate has expired",
        rustls::Error::InvalidCertificate(CertificateError::Other(other)) if other.to_string().contains("CaUsedAsEndEntity") => {
            "the server's certificate is a CA certificate (basicConstraints CA:TRUE) used as the server's own: make it with CA:FALSE (see the README's TLS section)"
        }
        _ => "is the server serving HTTPS at this address, and is --ca-cert the right certificate?",
    };
    Some(format!("{e}: {hint}"))
}

fn parse_json_arg(flag: &str, text: &str) -> Result<Value, CliError> {
    serde_json::from_str(text).map_err(|e| CliError(EXIT_USAGE, format!("{flag} is not valid JSON: {e}")))
}

fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap());
}

fn query_escape(s: &str) -> String {
    s.bytes()
        .map(|b| if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}

fn deploy_external(client: &Client, name: &str, operations: &[String], json_out: bool) -> Result<i32, CliError> {
    let v = client.post_json("/v1/definitions/external", &json!({ "name": name, "operations": operations }))?;
    if json_out {
        print_json(&v);
    } else {
        let verb = if v["created"].as_bool() == Some(true) { "deployed" } else { "already deployed" };
        println!("{verb} external activity {} {}", v["name"].as_str().unwrap_or(""), v["version"].as_str().unwrap_or(""));
        for op in v["external"].as_array().into_iter().flatten() {
            println!("  operation {}", op.as_str().unwrap_or(""));
        }
    }
    Ok(0)
}

fn tasks_ls(client: &Client, activity: Option<String>, json_out: bool) -> Result<i32, CliError> {
    let path = match &activity {
        Some(a) => format!("/v1/tasks?activity={}", query_escape(a)),
        None => "/v1/tasks".to_string(),
    };
    let v = client.get(&path)?;
    if json_out {
        print_json(&v);
        return Ok(0);
    }
    println!("{:<48} {:<8} {:<24} {:<7} {:<16} IDEMPOTENCY KEY", "ID", "STATE", "OPERATION", "ATTEMPT", "WORKER");
    for t in v["tasks"].as_array().into_iter().flatten() {
        let op = format!("{} on {}", t["operation"].as_str().unwrap_or(""), t["activity"].as_str().unwrap_or(""));
        println!(
            "{:<48} {:<8} {:<24} {:<7} {:<16} {}",
            t["id"].as_str().unwrap_or(""),
            t["state"].as_str().unwrap_or(""),
            op,
            t["attempt"].as_u64().map(|a| a.to_string()).unwrap_or_else(|| "-".into()),
            t["worker"].as_str().unwrap_or("-"),
            t["idempotency_key"].as_str().unwrap_or("")
        );
    }
    Ok(0)
}

fn deploy(
    client: &Client,
    file: &PathBuf,
    name: Option<String>,
    allow_http: &[String],
    resources: &[String],
    json_out: bool,
) -> Result<i32, CliError> {
    let bytes = std::fs::read(file).map_err(|e| CliError(EXIT_USAGE, format!("cannot read {}: {e}", file.display())))?;
    let name = name.unwrap_or_else(|| {
        file.file_stem().map(|s| s.to_string_lossy().replace('_', "-")).unwrap_or_default()
    });
    let mut path = format!("/v1/definitions?name={}", query_escape(&name));
    for prefix in allow_http {
        path.push_str(&format!("&allow_http={}", query_escape(prefix)));
    }
    for grant in resources {
        path.push_str(&format!("&resource={}", query_escape(grant)));
    }
    let v = client.post_bytes(&path, &bytes)?;
    if json_out {
        print_json(&v);
    } else {
        let verb = if v["created"].as_bool() == Some(true) { "deployed" } else { "already deployed" };
        println!("{verb} {} {} {}", v["kind"].as_str().unwrap_or(""), v["name"].as_str().unwrap_or(""), v["version"].as_str().unwrap_or(""));
        for prefix in v["allow_http"].as_array().into_iter().flatten() {
            println!("  may call {}", prefix.as_str().unwrap_or(""));
        }
        for grant in v["resources"].as_array().into_iter().flatten() {
            println!("  may use resource {}", grant.as_str().unwrap_or(""));
        }
    }
    Ok(0)
}

fn definitions(client: &Client, json_out: bool) -> Result<i32, CliError> {
    let v = client.get("/v1/definitions")?;
    if json_out {
        print_json(&v);
        return Ok(0);
    }
    println!("{:<10} {:<32} {:<18} {:<7} {:>9}", "KIND", "NAME", "VERSION", "LATEST", "SIZE");
    for d in v["definitions"].as_array().into_iter().flatten() {
        println!(
            "{:<10} {:<32} {:<18} {:<7} {:>9}",
            d["kind"].as_str().unwrap_or(""),
            d["name"].as_str().unwrap_or(""),
            d["version"].as_str().unwrap_or(""),
            if d["latest"].as_bool() == Some(true) { "yes" } else { "" },
            d["size"]
        );
        for prefix in d["allow_http"].as_array().into_iter().flatten() {
            println!("{:<10} may call {}", "", prefix.as_str().unwrap_or(""));
        }
    }
    Ok(0)
}

fn start(client: &Client, process: &str, input: Option<String>, wait: bool, timeout: u64, json_out: bool) -> Result<i32, CliError> {
    let mut req = json!({ "process": process });
    if let Some(i) = input {
        req["input"] = parse_json_arg("--input", &i)?;
    }
    let v = client.post_json("/v1/instances", &req)?;
    let id = v["id"].as_str().unwrap_or_default().to_string();
    if !wait {
        if json_out {
            print_json(&v);
        } else {
            println!("{id}");
        }
        return Ok(0);
    }
    let started = Instant::now();
    let mut said_waiting = false;
    loop {
        let inst = match client.get(&format!("/v1/instances/{id}")) {
            Ok(i) => i,
            // It was there a moment ago: a microflow that keeps no final state.
            Err(CliError(EXIT_REFUSED, msg)) if msg.starts_with("no instance with id") => {
                if json_out {
                    print_json(&json!({ "id": id, "status": "completed", "kept": false }));
                } else {
                    println!("{id} completed (its final state is not kept)");
                }
                return Ok(0);
            }
            Err(e) => return Err(e),
        };
        let status = inst["status"].as_str().unwrap_or("");
        match status {
            "completed" | "faulted" | "terminated" => {
                if json_out {
                    print_json(&inst);
                } else {
                    println!("{id} {status}");
                    if let Some(f) = inst["fault"].as_object() {
                        println!("fault {} at {}: {}", f["name"].as_str().unwrap_or(""), f["path"].as_str().unwrap_or(""), f["message"].as_str().unwrap_or(""));
                    }
                    println!("{}", serde_json::to_string_pretty(&inst["variables"]).unwrap());
                }
                return Ok(if status == "completed" { 0 } else { EXIT_INSTANCE_FAILED });
            }
            _ => {
                if started.elapsed() > Duration::from_secs(timeout) {
                    return Err(CliError(EXIT_REFUSED, format!("instance {id} is still {status} after {timeout}s")));
                }
                if !said_waiting && started.elapsed() > Duration::from_secs(2) && !json_out {
                    eprintln!("waiting for {id} ({status} at {})...", inst["position"].as_str().unwrap_or(""));
                    said_waiting = true;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

fn send(client: &Client, operation: &str, body: &str, id: Option<String>, wait_reply: bool, json_out: bool) -> Result<i32, CliError> {
    let mut req = json!({ "operation": operation, "body": parse_json_arg("--body", body)?, "wait_reply": wait_reply });
    if let Some(id) = id {
        req["id"] = json!(id);
    }
    let v = client.post_json("/v1/messages", &req)?;
    if json_out {
        print_json(&v);
    } else {
        let what = if v["duplicate"].as_bool() == Some(true) {
            "duplicate (already accepted) for"
        } else if v["created"].as_bool() == Some(true) {
            "accepted; created"
        } else {
            "accepted for"
        };
        println!("message {} {what} instance {}", v["message_id"].as_str().unwrap_or(""), v["instance"].as_str().unwrap_or(""));
        if let Some(reply) = v.get("reply") {
            match reply["fault"].as_object() {
                Some(f) => println!("reply: fault {}: {}", f["name"].as_str().unwrap_or(""), f["message"].as_str().unwrap_or("")),
                None => println!("reply: {}", reply["body"]),
            }
        }
    }
    Ok(0)
}

fn ls(client: &Client, status: Option<String>, process: Option<String>, limit: usize, after: Option<String>, json_out: bool) -> Result<i32, CliError> {
    let mut q = format!("/v1/instances?limit={limit}");
    if let Some(a) = &after {
        q.push_str(&format!("&after={}", query_escape(a)));
    }
    let filters = format!(
        "{}{}",
        status.as_ref().map(|s| format!(" --status {s}")).unwrap_or_default(),
        process.as_ref().map(|p| format!(" --process {p}")).unwrap_or_default()
    );
    if let Some(s) = status {
        q.push_str(&format!("&status={}", query_escape(&s)));
    }
    if let Some(p) = process {
        q.push_str(&format!("&process={}", query_escape(&p)));
    }
    let v = client.get(&q)?;
    if json_out {
        print_json(&v);
        return Ok(0);
    }
    println!("{:<36}  {:<24} {:<11} POSITION", "ID", "PROCESS", "STATUS");
    for i in v["instances"].as_array().into_iter().flatten() {
        println!(
            "{:<36}  {:<24} {:<11} {}",
            i["id"].as_str().unwrap_or(""),
            i["process"].as_str().unwrap_or(""),
            i["status"].as_str().unwrap_or(""),
            i["position"].as_str().unwrap_or("")
        );
    }
    let shown = v["count"].as_u64().unwrap_or(0);
    match (v["total"].as_u64(), v["next_after"].as_str()) {
        (Some(total), Some(next)) => eprintln!("{shown} shown of {total}; next page: cairn ls{filters} --after {next}"),
        (None, Some(next)) => eprintln!("{shown} shown; more may follow: cairn ls{filters} --after {next}"),
        (Some(total), None) => eprintln!("{shown} shown of {total}"),
        (None, None) => {}
    }
    Ok(0)
}

fn show(client: &Client, id: &str, json_out: bool) -> Result<i32, CliError> {
    let v = client.get(&format!("/v1/instances/{}", query_escape(id)))?;
    if json_out {
        print_json(&v);
        return Ok(0);
    }
    println!("instance   {}", v["id"].as_str().unwrap_or(""));
    println!("process    {} (version {})", v["process"].as_str().unwrap_or(""), v["version"].as_str().unwrap_or(""));
    println!("status     {}", v["status"].as_str().unwrap_or(""));
    println!("position   {}", v["position"].as_str().unwrap_or(""));
    println!("in memory  {}", v["in_memory"]);
    if v["parked"] == true {
        println!("parked     by deferred recovery: `cairn release {}` lets it go on", v["id"].as_str().unwrap_or(""));
    }
    for t in v["in_transit"].as_array().into_iter().flatten() {
        println!("in transit {} ({}): {} on {}", t["id"].as_str().unwrap_or(""), t["state"].as_str().unwrap_or(""), t["operation"].as_str().unwrap_or(""), t["target"]["name"].as_str().unwrap_or(""));
    }
    if let Some(f) = v["fault"].as_object() {
        println!("fault      {} at {}: {} (data {})", f["name"].as_str().unwrap_or(""), f["path"].as_str().unwrap_or(""), f["message"].as_str().unwrap_or(""), f["data"].as_str().unwrap_or("null"));
    }
    println!("variables  {}", serde_json::to_string_pretty(&v["variables"]).unwrap().replace('\n', "\n           "));
    println!("history");
    for h in v["history"].as_array().into_iter().flatten() {
        println!("  #{:<4} {:<14} {:<10} {}", h["fence"], h["reason"].as_str().unwrap_or(""), h["status"].as_str().unwrap_or(""), h["path"].as_str().unwrap_or(""));
    }
    Ok(0)
}

fn in_transit(client: &Client, cmd: InTransitCommand) -> Result<i32, CliError> {
    let (v, json_out) = match cmd {
        InTransitCommand::Ls { json } => {
            let v = client.get("/v1/in-transit")?;
            if !json {
                println!("{:<48} {:<12} {:<28} IDEMPOTENCY KEY", "ID", "STATE", "CALL");
                for c in v["calls"].as_array().into_iter().flatten() {
                    let call = format!("{} on {}", c["operation"].as_str().unwrap_or(""), c["target"]["name"].as_str().unwrap_or(""));
                    println!(
                        "{:<48} {:<12} {:<28} {}",
                        c["id"].as_str().unwrap_or(""),
                        c["state"].as_str().unwrap_or(""),
                        call,
                        c["idempotency_key"].as_str().unwrap_or("")
                    );
                }
                return Ok(0);
            }
            (v, json)
        }
        InTransitCommand::Resubmit { id, json } => (client.post_json(&format!("/v1/in-transit/{}/resubmit", query_escape(&id)), &json!({}))?, json),
        InTransitCommand::Abandon { id, json } => (client.post_json(&format!("/v1/in-transit/{}/abandon", query_escape(&id)), &json!({}))?, json),
    };
    if json_out {
        print_json(&v);
    } else {
        println!("{} {}", v["id"].as_str().unwrap_or(""), v["state"].as_str().unwrap_or(""));
    }
    Ok(0)
}

fn control(client: &Client, id: &str, verb: &str, json_out: bool) -> Result<i32, CliError> {
    let v = client.post_json(&format!("/v1/instances/{}/{verb}", query_escape(id)), &json!({}))?;
    if json_out {
        print_json(&v);
    } else {
        println!("{} {} at {}", v["id"].as_str().unwrap_or(""), v["status"].as_str().unwrap_or(""), v["position"].as_str().unwrap_or(""));
    }
    Ok(0)
}

fn retry(
    client: &Client,
    instance: Option<String>,
    variables: Option<String>,
    process: Option<String>,
    fault: Option<String>,
    json_out: bool,
) -> Result<i32, CliError> {
    if let Some(process) = process {
        let v = client.post_json("/v1/retry", &json!({ "process": process, "fault": fault }))?;
        if json_out {
            print_json(&v);
        } else {
            for id in v["retried"].as_array().into_iter().flatten() {
                println!("retried {}", id.as_str().unwrap_or(""));
            }
            for r in v["refused"].as_array().into_iter().flatten() {
                println!("refused {}: {}", r["id"].as_str().unwrap_or(""), r["error"].as_str().unwrap_or(""));
            }
            println!("{} retried, {} refused", v["retried"].as_array().map_or(0, Vec::len), v["refused"].as_array().map_or(0, Vec::len));
        }
        return Ok(0);
    }
    let id = instance.unwrap_or_default();
    let body = match variables {
        Some(text) => json!({ "variables": parse_json_arg("--variables", &text)? }),
        None => json!({}),
    };
    let v = client.post_json(&format!("/v1/instances/{}/retry", query_escape(&id)), &body)?;
    if json_out {
        print_json(&v);
    } else {
        println!("{} {} at {}", v["id"].as_str().unwrap_or(""), v["status"].as_str().unwrap_or(""), v["position"].as_str().unwrap_or(""));
    }
    Ok(0)
}

fn migrate(client: &Client, instance: Option<String>, to: &str, from: Option<String>, map: &[String], json_out: bool) -> Result<i32, CliError> {
    let mut paths = serde_json::Map::new();
    for m in map {
        let Some((old, new)) = m.split_once('=') else {
            return Err(CliError(EXIT_USAGE, format!("--map {m}: expected OLD_PATH=NEW_PATH")));
        };
        paths.insert(old.to_string(), json!(new));
    }
    if let Some(from) = from {
        let v = client.post_json("/v1/migrate", &json!({ "from": from, "to": to, "map": paths }))?;
        if json_out {
            print_json(&v);
        } else {
            for id in v["migrated"].as_array().into_iter().flatten() {
                println!("migrated {}", id.as_str().unwrap_or(""));
            }
            for r in v["refused"].as_array().into_iter().flatten() {
                println!("refused {}: {}", r["id"].as_str().unwrap_or(""), r["error"].as_str().unwrap_or(""));
            }
            println!("{} migrated, {} refused", v["migrated"].as_array().map_or(0, Vec::len), v["refused"].as_array().map_or(0, Vec::len));
        }
        return Ok(0);
    }
    let id = instance.unwrap_or_default();
    let v = client.post_json(&format!("/v1/instances/{}/migrate", query_escape(&id)), &json!({ "to": to, "map": paths }))?;
    if json_out {
        print_json(&v);
    } else {
        println!("{} {} at {} on version {}", v["id"].as_str().unwrap_or(""), v["status"].as_str().unwrap_or(""), v["position"].as_str().unwrap_or(""), v["version"].as_str().unwrap_or(""));
    }
    Ok(0)
}

fn set_vars(client: &Client, id: &str, variables: &str, json_out: bool) -> Result<i32, CliError> {
    let body = parse_json_arg("VARIABLES", variables)?;
    let v = client.put_json(&format!("/v1/instances/{}/variables", query_escape(id)), &body)?;
    if json_out {
        print_json(&v);
    } else {
        println!("{} variables set; still suspended (cairn resume {id})", v["id"].as_str().unwrap_or(""));
    }
    Ok(0)
}

fn history(client: &Client, id: &str, json_out: bool) -> Result<i32, CliError> {
    let v = client.get(&format!("/v1/instances/{}/history", query_escape(id)))?;
    if json_out {
        print_json(&v);
        return Ok(0);
    }
    println!("{:<6} {:<24} {:<16} {:<11} ACTIVITY", "FENCE", "AT (ms since epoch)", "REASON", "STATUS");
    for h in v["history"].as_array().into_iter().flatten() {
        println!(
            "{:<6} {:<24} {:<16} {:<11} {}",
            h["fence"],
            h["at_ms"],
            h["reason"].as_str().unwrap_or(""),
            h["status"].as_str().unwrap_or(""),
            h["path"].as_str().unwrap_or("")
        );
    }
    Ok(0)
}

fn breakpoints(client: &Client, cmd: BreakCommand) -> Result<i32, CliError> {
    match cmd {
        BreakCommand::Set { process, path } => {
            client.post_json("/v1/breakpoints", &json!({ "process": process, "path": path }))?;
            println!("breakpoint set on {process} {path}");
        }
        BreakCommand::Clear { process, path } => {
            client.delete_json("/v1/breakpoints", &json!({ "process": process, "path": path }))?;
            println!("breakpoint cleared on {process} {path}");
        }
        BreakCommand::Ls { json } => {
            let v = client.get("/v1/breakpoints")?;
            if json {
                print_json(&v);
            } else {
                for b in v["breakpoints"].as_array().into_iter().flatten() {
                    println!("{} {}", b["process"].as_str().unwrap_or(""), b["path"].as_str().unwrap_or(""));
                }
            }
        }
    }
    Ok(0)
}

fn backup(client: &Client, name: &str, json_out: bool) -> Result<i32, CliError> {
    let message = format!("backup {name}: the server is writing it");
    let v = crate::progress::while_waiting(&message, json_out, || client.post_json("/v1/backup", &json!({ "name": name })))?;
    if json_out {
        print_json(&v);
    } else {
        let dir = v["dir"].as_str().unwrap_or(name);
        println!("backup written to {dir} on the server's machine (restore it there with: cairn restore {dir} --data NEW_DIR)");
    }
    Ok(0)
}

/// Copies a backup directory into a new data directory, which must not exist.
fn copy_dir(from: &std::path::Path, to: &std::path::Path) -> std::io::Result<()> {
    if to.exists() {
        return Err(std::io::Error::new(std::io::ErrorKind::AlreadyExists, "the new data directory already exists"));
    }
    if !from.join("db").is_dir() {
        return Err(std::io::Error::new(std::io::ErrorKind::NotFound, "not a Cairn backup (no db/ inside)"));
    }
    let progress = crate::progress::bar(dir_bytes(from), &format!("restore: copying {}", from.display()), true);
    copy_dir_all(from, to, &progress)?;
    progress.finish_and_clear();
    Ok(())
}

/// The bytes of the files under `dir` (for the progress bar; unreadable entries count nothing).
fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| match e.file_type() {
                    Ok(t) if t.is_dir() => dir_bytes(&e.path()),
                    _ => e.metadata().map(|m| m.len()).unwrap_or(0),
                })
                .sum()
        })
        .unwrap_or(0)
}

fn copy_dir_all(from: &std::path::Path, to: &std::path::Path, progress: &indicatif::ProgressBar) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir_all(&entry.path(), &target, progress)?;
        } else {
            progress.inc(std::fs::copy(entry.path(), target)?);
        }
    }
    Ok(())
}

/// `cairn promote DATA --yes`: removes the store's isolated mark.
fn promote(data: &std::path::Path, store: Option<&str>, yes: bool) -> i32 {
    if !yes {
        eprintln!(
            "error: promoting {} makes it a primary: its instances' calls will reach real partners. Run again with --yes to do it",
            data.display()
        );
        return EXIT_USAGE;
    }
    let location = match cairn_store::Location::parse(store, data) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_USAGE;
        }
    };
    if matches!(location, cairn_store::Location::Embedded { .. }) && !data.join("db").exists() {
        eprintln!("error: {} holds no store (no db directory): nothing to promote", data.display());
        return EXIT_USAGE;
    }
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    let result = rt.block_on(async {
        let store = cairn_store::open(&location, true).await?;
        let was = store.isolated().await?;
        let mut b = cairn_store::WriteBatch::new();
        b.push(cairn_store::Write::Isolated(false));
        store.commit(b).await?;
        store.close().await;
        Ok::<bool, cairn_store::StoreError>(was)
    });
    match result {
        Ok(true) => {
            println!("promoted {}: it is no longer isolated; `cairn serve` on it sends outbound calls for real", data.display());
            0
        }
        Ok(false) => {
            println!("{} was not isolated: nothing changed", data.display());
            0
        }
        Err(e) => {
            eprintln!("error: promoting {}: {e} (is a host still serving it? stop it first)", data.display());
            1
        }
    }
}

fn resource(client: &Client, cmd: ResourceCommand) -> Result<i32, CliError> {
    match cmd {
        ResourceCommand::Create { name, json } => {
            let v = client.post_json("/v1/resources", &json!({ "name": name }))?;
            if json {
                print_json(&v);
            } else if v["created"] == true {
                println!("created resource {name}");
            } else {
                println!("resource {name} already exists");
            }
        }
        ResourceCommand::Ls { json } => {
            let v = client.get("/v1/resources")?;
            if json {
                print_json(&v);
            } else {
                for r in v["resources"].as_array().into_iter().flatten() {
                    println!("{}", r["name"].as_str().unwrap_or(""));
                }
            }
        }
        ResourceCommand::Get { name, key, json } => {
            let v = client.get(&format!("/v1/resources/{}/keys/{}", query_escape(&name), query_escape(&key)))?;
            if json {
                print_json(&v);
            } else {
                println!("{} (version {})", v["value"], v["version"]);
            }
        }
        ResourceCommand::Scan { name, prefix, after, limit, json } => {
            let mut path = format!("/v1/resources/{}?prefix={}&limit={limit}", query_escape(&name), query_escape(&prefix));
            if let Some(after) = &after {
                path.push_str(&format!("&after={}", query_escape(after)));
            }
            let v = client.get(&path)?;
            if json {
                print_json(&v);
            } else {
                let rows = v["rows"].as_array().cloned().unwrap_or_default();
                let width = rows.iter().filter_map(|r| r["key"].as_str()).map(str::len).max().unwrap_or(3).max(3);
                println!("{:<width$}  {:>7}  VALUE", "KEY", "VERSION");
                for r in &rows {
                    println!("{:<width$}  {:>7}  {}", r["key"].as_str().unwrap_or(""), r["version"], r["value"]);
                }
                if let Some(next) = v["next_after"].as_str() {
                    println!("(more: --after {next})");
                }
            }
        }
    }
    Ok(0)
}

/// `cairn token …`: through the server (admin), or offline on a stopped host's store.
fn token(client: &Client, cmd: TokenCommand) -> Result<i32, CliError> {
    let (offline, json_out) = match &cmd {
        TokenCommand::Create { offline, json, .. } | TokenCommand::Ls { offline, json } | TokenCommand::Revoke { offline, json, .. } => {
            (offline.clone(), *json)
        }
    };
    let v = if offline.data.is_some() || offline.store.is_some() {
        token_offline(&offline, cmd)?
    } else {
        match cmd {
            TokenCommand::Create { role, note, .. } => client.post_json("/v1/tokens", &json!({ "role": role, "note": note }))?,
            TokenCommand::Ls { .. } => client.get("/v1/tokens")?,
            TokenCommand::Revoke { id, .. } => client.delete_json(&format!("/v1/tokens/{}", query_escape(&id)), &json!({}))?,
        }
    };
    if json_out {
        print_json(&v);
    } else if let Some(token) = v["token"].as_str() {
        println!("{token}");
        eprintln!(
            "created token {} (role {}): it is shown only this once; send it with --token or CAIRN_TOKEN",
            v["id"].as_str().unwrap_or(""),
            v["role"].as_str().unwrap_or("")
        );
    } else if let Some(list) = v["tokens"].as_array() {
        println!("{:<18} {:<9} {:<15} NOTE", "ID", "ROLE", "CREATED (ms)");
        for t in list {
            println!("{:<18} {:<9} {:<15} {}", t["id"].as_str().unwrap_or(""), t["role"].as_str().unwrap_or(""), t["created_ms"], t["note"].as_str().unwrap_or(""));
        }
    } else {
        println!("revoked token {}", v["id"].as_str().unwrap_or(""));
    }
    Ok(0)
}

/// A token command on the store itself (the host must be stopped; a
/// running host sees the change only after a restart).
fn token_offline(offline: &OfflineStore, cmd: TokenCommand) -> Result<Value, CliError> {
    let data = offline.data.clone().unwrap_or_else(|| PathBuf::from("."));
    let location = cairn_store::Location::parse(offline.store.as_deref(), &data).map_err(|e| CliError(EXIT_USAGE, e))?;
    if matches!(location, cairn_store::Location::Embedded { .. }) && !data.is_dir() {
        return Err(CliError(EXIT_USAGE, format!("{} is not a data directory", data.display())));
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| CliError(EXIT_REFUSED, e.to_string()))?;
    let result = rt.block_on(async {
        let store = cairn_store::open(&location, true).await?;
        let out: Result<Result<Value, String>, cairn_store::StoreError> = async {
            match cmd {
                TokenCommand::Create { role, note, .. } => {
                    let Some(role) = cairn_store::Role::parse(&role) else {
                        return Ok(Err(format!("unknown role '{role}': use worker, reader, operator or admin")));
                    };
                    let (token, record) = crate::api::auth::new_token(role, &note, crate::now_ms());
                    let mut b = cairn_store::WriteBatch::new();
                    b.push(cairn_store::Write::Token(record.clone()));
                    store.commit(b).await?;
                    Ok(Ok(json!({ "id": record.id, "role": role.name(), "created_ms": record.created_ms, "note": record.note, "token": token })))
                }
                TokenCommand::Ls { .. } => {
                    let list: Vec<Value> = store
                        .tokens()
                        .await?
                        .iter()
                        .map(|t| json!({ "id": t.id, "role": t.role.name(), "created_ms": t.created_ms, "note": t.note }))
                        .collect();
                    Ok(Ok(json!({ "tokens": list })))
                }
                TokenCommand::Revoke { id, .. } => {
                    if !store.tokens().await?.iter().any(|t| t.id == id) {
                        return Ok(Err(format!("no token with id '{id}'")));
                    }
                    let mut b = cairn_store::WriteBatch::new();
                    b.push(cairn_store::Write::TokenRevoke { id: id.clone() });
                    store.commit(b).await?;
                    Ok(Ok(json!({ "id": id, "revoked": true })))
                }
            }
        }
        .await;
        store.close().await;
        out
    });
    match result {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(message)) => Err(CliError(EXIT_REFUSED, message)),
        Err(e) => Err(CliError(
            EXIT_REFUSED,
            format!("opening the store of {}: {e} (is a host still serving it? stop it first, or give the server and --token instead)", data.display()),
        )),
    }
}
