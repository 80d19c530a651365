//! The command line: `cairn serve` starts the host; the commands that talk
//! to a server take `--server` (env `CAIRN_SERVER`), `--token` and
//! `--ca-cert` (the `Connection` arguments) and speak the HTTP API through
//! the typed client of `cairn-client`. Commands that do not talk to a
//! server (`serve`, `new`, `check`, `bench`, …) do not take them.
//!
//! Exit codes (`EXIT_CODES`, printed by `--help`): 0 success; 1 the server
//! refused the request (its error is printed) or the command failed; 2
//! usage error; 3 the server could not be reached; 4 `--wait` saw the
//! instance end faulted or terminated; 5 the data directory is in use by
//! another cairn process. With `--json`, an error is one JSON object on
//! stderr: `{"error", "exit_code", "kind", "status"?, "code"?}`.

use crate::runtime::Limits;
use crate::service::Config;
use cairn_client::types::{FaultView, HistoryView, InstanceStatus, Positions};
use cairn_client::{Client, ListInstances, SendMessage};
use clap::{Parser, Subcommand};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
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


pub const EXIT_OK: i32 = 0;
pub const EXIT_REFUSED: i32 = 1;
pub const EXIT_USAGE: i32 = 2;
pub const EXIT_UNREACHABLE: i32 = 3;
pub const EXIT_INSTANCE_FAILED: i32 = 4;
pub const EXIT_DATA_IN_USE: i32 = 5;

/// The exit codes, as `cairn --help` prints them (and docs/cli.md lists them).
pub const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  the server refused the request (its error is printed), or the command failed
  2  usage error: a bad flag or argument, unreadable file, invalid JSON
  3  the server could not be reached (connection or TLS)
  4  `start --wait` saw the instance end faulted or terminated
  5  the data directory is in use by another cairn process
  (`check` and `repair` say 0 clean, 1 problems left, 2 not checked.)
With --json, an error is one JSON object on stderr:
  {\"error\": MESSAGE, \"exit_code\": N, \"kind\": ..., \"status\": HTTP, \"code\": API_CODE}";

/// Where the server is and how to talk to it: the commands that talk to a
/// server flatten this in (`serve`, `new`, `check`, … do not take it).
#[derive(clap::Args, Clone, Debug)]
struct Connection {
    /// URL of the Cairn server (http://HOST:PORT or https://HOST:PORT).
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
}

impl Connection {
    fn client(&self) -> Client {
        Client::new(&self.server, self.token.as_deref(), self.ca_cert.as_deref())
    }
}

#[derive(Parser)]
#[command(name = "cairn", version, about = "Cairn: a durable process host for WebAssembly components", after_help = EXIT_CODES)]
struct Cli {
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
    Cluster {
        #[command(subcommand)]
        cmd: crate::cluster_cli::ClusterCommand,
        #[command(flatten)]
        conn: Connection,
    },
    /// Write an online, consistent backup of definitions and instances to
    /// NAME under the server's backup root (`serve --backup-dir`, default
    /// DATA/backups, on the server's machine); prints where it went.
    Backup {
        /// A plain name (no '/', '..' or absolute path).
        name: String,
        /// Print the server's answer as JSON (errors too, on stderr).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: Connection,
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
        /// Do not echo guest log records to stderr (they still go to DATA/guest-log.jsonl).
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
    /// Compile a component for a host's cache (the host runs this itself:
    /// compiling in a child process keeps the compiler out of the host).
    /// Reads the component on standard input and writes the cache file.
    /// Exit 0 compiled, 1 not a component it can compile (why on stderr),
    /// 3 another engine configuration than the host's.
    #[command(hide = true)]
    CompileComponent {
        /// The cache file to write.
        #[arg(long)]
        out: PathBuf,
        /// The host's engine fingerprint, which this executable's must match.
        #[arg(long)]
        fingerprint: String,
        /// The host's cap on a guest's linear memory, in bytes (part of the engine configuration).
        #[arg(long)]
        memory_bytes: usize,
        /// The host's engine uses the pooling allocator.
        #[arg(long)]
        pooling: bool,
        /// The host's engine meters fuel.
        #[arg(long)]
        fuel: bool,
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
        /// Print the report as JSON.
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
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Deploy a process or activity component (.wasm), or an external
    /// activity (`--external NAME --operation OP…`) whose tasks workers take.
    Deploy {
        /// The component file (.wasm), built for wasm32-wasip2.
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
        /// Print the server's answer as JSON (errors too, on stderr).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: Connection,
    },
    /// List deployed definitions and activity components.
    Definitions {
        /// Print the server's answer as JSON (errors too, on stderr).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: Connection,
    },
    /// Start an instance of a process.
    Start {
        /// The process to start (its latest version), as `cairn definitions` lists it.
        process: String,
        /// JSON input: the message of the process's instance-creating receive, or initial variables.
        #[arg(long, value_name = "JSON")]
        input: Option<String>,
        /// Wait until the instance completes and print its final variables.
        #[arg(long)]
        wait: bool,
        /// With --wait: give up after this many seconds.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
        /// Print the server's answer as JSON (errors too, on stderr).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: Connection,
    },
    /// Send a message; it is routed by correlation or creates an instance.
    Send {
        /// The operation the message is for (a receive's operation).
        operation: String,
        /// JSON body of the message.
        #[arg(long, value_name = "JSON")]
        body: String,
        /// Message id; a message id seen before is acknowledged and not delivered again.
        #[arg(long)]
        id: Option<String>,
        /// Wait for the reply of a request-response receive.
        #[arg(long)]
        wait_reply: bool,
        /// Print the server's answer as JSON (errors too, on stderr).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: Connection,
    },
    /// List instances, a page at a time, with the total and the command for the next page.
    Ls {
        /// Only instances in this status: running, waiting, suspended, completed, faulted or terminated.
        #[arg(long)]
        status: Option<String>,
        /// Only instances of this process.
        #[arg(long)]
        process: Option<String>,
        /// Instances per page (the server caps it at 10000).
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Which page: 1 is the first (oldest, or newest with --newest-first).
        #[arg(long, default_value_t = 1, conflicts_with = "after", value_parser = clap::value_parser!(u64).range(1..))]
        page: u64,
        /// Instances after this id instead of a page number (the cheapest way through many pages).
        #[arg(long, value_name = "ID")]
        after: Option<String>,
        /// The newest instances first.
        #[arg(long)]
        newest_first: bool,
        /// Print the server's answer as JSON (errors too, on stderr).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: Connection,
    },
    /// Show one instance: status, position, what it waits for or where it faulted, variables, history.
    Show {
        /// The instance id (as `cairn ls` prints it).
        instance: String,
        /// Print the server's answer as JSON (errors too, on stderr).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: Connection,
    },
    /// Suspend an instance: it stops at its next transition until resumed (messages still queue).
    Suspend {
        /// The instance id.
        instance: String,
        /// Print the server's answer as JSON (errors too, on stderr).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: Connection,
    },
    /// Resume a suspended instance.
    Resume {
        /// The instance id.
        instance: String,
        /// Print the server's answer as JSON (errors too, on stderr).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: Connection,
    },
    /// Release an instance parked by deferred recovery after a crash: it is loaded and goes on.
    #[command(alias = "resubmit")]
    Release {
        /// The instance id.
        instance: String,
        /// Print the server's answer as JSON (errors too, on stderr).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: Connection,
    },
    /// End an instance at once; what it waited for is withdrawn.
    Terminate {
        /// The instance id.
        instance: String,
        /// Print the server's answer as JSON (errors too, on stderr).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: Connection,
    },
    /// Cancel an instance: `cairn.cancelled` is raised where it stands, the
    /// scopes running run their fault handlers (or compensate), the completed
    /// top-level scopes are compensated, then it ends terminated.
    Cancel {
        /// The instance id.
        instance: String,
        /// Print the server's answer as JSON (errors too, on stderr).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: Connection,
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
        /// Print the server's answer as JSON (errors too, on stderr).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: Connection,
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
        /// Print the server's answer as JSON (errors too, on stderr).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: Connection,
    },
    /// An instance's history of persistence points, with the time, the activity path and the reason for each.
    History {
        /// The instance id.
        instance: String,
        /// Print the server's answer as JSON (errors too, on stderr).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: Connection,
    },
    /// Variables of a suspended instance.
    Vars {
        #[command(subcommand)]
        cmd: VarsCommand,
        #[command(flatten)]
        conn: Connection,
    },
    /// Breakpoints: an instance reaching one is persisted and suspended before the activity.
    #[command(name = "break")]
    Break {
        #[command(subcommand)]
        cmd: BreakCommand,
        #[command(flatten)]
        conn: Connection,
    },
    /// Non-idempotent calls found in flight after a crash, held for an operator.
    #[command(name = "in-transit")]
    InTransit {
        #[command(subcommand)]
        cmd: InTransitCommand,
        #[command(flatten)]
        conn: Connection,
    },
    /// Tasks of external activities: waiting, leased (with worker and attempt) and held.
    Tasks {
        #[command(subcommand)]
        cmd: TasksCommand,
        #[command(flatten)]
        conn: Connection,
    },
    /// Resources: named tables of JSON documents that activities read and
    /// write in the same persistence point as the instance that calls them.
    Resource {
        #[command(subcommand)]
        cmd: ResourceCommand,
        #[command(flatten)]
        conn: Connection,
    },
    /// API bearer tokens (admin): create, list, revoke. Through the server,
    /// or offline on a stopped host's store with --data DIR [--store URL].
    Token {
        #[command(subcommand)]
        cmd: TokenCommand,
        #[command(flatten)]
        conn: Connection,
    },
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
    Set {
        /// The process (its name).
        process: String,
        /// The activity path, e.g. main/approval/wait.
        path: String,
        /// Print the server's answer as JSON (errors too, on stderr).
        #[arg(long)]
        json: bool,
    },
    /// Clear a breakpoint.
    Clear {
        /// The process (its name).
        process: String,
        /// The activity path.
        path: String,
        /// Print the server's answer as JSON (errors too, on stderr).
        #[arg(long)]
        json: bool,
    },
    /// List breakpoints.
    Ls {
        /// Print the server's answer as JSON (errors too, on stderr).
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum VarsCommand {
    /// Replace the variables of a suspended instance with JSON.
    Set {
        /// The (suspended) instance id.
        instance: String,
        /// The new variables (JSON; checked against the process's variables type).
        variables: String,
        /// Print the server's answer as JSON (errors too, on stderr).
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum ResourceCommand {
    /// Create a resource (nothing changes if it exists).
    Create {
        /// The resource's name.
        name: String,
        /// Print the server's answer as JSON (errors too, on stderr).
        #[arg(long)]
        json: bool,
    },
    /// List resources.
    Ls {
        /// Print the server's answer as JSON (errors too, on stderr).
        #[arg(long)]
        json: bool,
    },
    /// Show one key of a resource: its version and value.
    Get {
        /// The resource's name.
        name: String,
        /// The key.
        key: String,
        /// Print the server's answer as JSON (errors too, on stderr).
        #[arg(long)]
        json: bool,
    },
    /// List the keys of a resource in key order.
    Scan {
        /// The resource's name.
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
        /// Print the server's answer as JSON (errors too, on stderr).
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
        /// Print the answer as JSON (errors too, on stderr).
        #[arg(long)]
        json: bool,
    },
    /// List tokens (ids and roles, never the tokens).
    Ls {
        #[command(flatten)]
        offline: OfflineStore,
        /// Print the answer as JSON (errors too, on stderr).
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token by id.
    Revoke {
        /// The token's id (`tok-…`, as `token ls` prints it).
        id: String,
        #[command(flatten)]
        offline: OfflineStore,
        /// Print the answer as JSON (errors too, on stderr).
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
        /// Print the server's answer as JSON (errors too, on stderr).
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum InTransitCommand {
    /// List held calls.
    Ls {
        /// Print the server's answer as JSON (errors too, on stderr).
        #[arg(long)]
        json: bool,
    },
    /// Send a held call again (with the next attempt number in its idempotency key).
    Resubmit {
        /// INSTANCE:CALL, as `ls` shows.
        id: String,
        /// Print the server's answer as JSON (errors too, on stderr).
        #[arg(long)]
        json: bool,
    },
    /// Give up a held call: the instance gets the fault `cairn.abandoned` at the invoke.
    Abandon {
        /// INSTANCE:CALL, as `ls` shows.
        id: String,
        /// Print the server's answer as JSON (errors too, on stderr).
        #[arg(long)]
        json: bool,
    },
}

pub fn main() -> i32 {
    use clap::{CommandFactory, FromArgMatches};
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    // `--json` anywhere asks for errors as JSON too, usage errors included.
    let json_errors = args.iter().skip(1).any(|a| a == "--json");
    let argv = match crate::config::expand(&Cli::command(), args) {
        Ok(argv) => argv,
        Err(e) => return report(json_errors, CliError::new(EXIT_USAGE, e.to_string())),
    };
    let cli = match Cli::command().try_get_matches_from(argv).and_then(|m| Cli::from_arg_matches(&m)) {
        Ok(c) => c,
        Err(e) => {
            if !e.use_stderr() {
                let _ = e.print();
                return EXIT_OK;
            }
            if json_errors {
                let text = e.render().to_string();
                let message = text.trim().trim_start_matches("error: ").lines().next().unwrap_or("").to_string();
                return report(true, CliError::new(EXIT_USAGE, message));
            }
            let _ = e.print();
            return EXIT_USAGE;
        }
    };
    // A client's output piped into `head` ends quietly when the pipe
    // closes, as other Unix tools do, rather than panicking in println!.
    // The host and the partner keep SIGPIPE ignored: their sockets report
    // a closed peer as an error instead.
    if !matches!(cli.command, Command::Serve { .. } | Command::Restore { .. } | Command::Partner(_) | Command::Bench(_)) {
        restore_sigpipe();
    }
    // Commands that open a store themselves (offline tokens, check, bench)
    // report through the same pipeline as the host; serve and restore choose
    // their own format.
    if !matches!(cli.command, Command::Serve { .. } | Command::Restore { .. }) {
        let _ = crate::telemetry::init(crate::telemetry::LogFormat::Text);
    }
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
                data_dir: data.clone(),
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
                compile_in: std::env::current_exe().ok(),
            };
            let mut api: crate::api::ApiConfig = api.into();
            api.require_token = !crate::server::is_loopback(&listen);
            return match crate::server::serve(config, api, &listen, Duration::from_millis(shutdown_grace_ms), tls) {
                Ok(()) => EXIT_OK,
                Err(e) => serve_failed("cairn restore", &data, &e),
            };
        }
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
                data_dir: data.clone(),
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
                compile_in: std::env::current_exe().ok(),
            };
            let mut api: crate::api::ApiConfig = api.into();
            api.require_token = !crate::server::is_loopback(&listen);
            return match crate::server::serve(config, api, &listen, Duration::from_millis(shutdown_grace_ms), tls) {
                Ok(()) => EXIT_OK,
                Err(e) => serve_failed("cairn serve", &data, &e),
            };
        }
        Command::Backup { name, json, conn } => backup(&conn.client(), &name, json),
        Command::Cluster { cmd: crate::cluster_cli::ClusterCommand::Status { json }, conn } => {
            conn.client().cluster().map(|v| crate::cluster_cli::print_status(&v, json)).map_err(CliError::from)
        }
        Command::Deploy { external: Some(name), operations, json, conn, .. } => deploy_external(&conn.client(), &name, &operations, json),
        Command::Deploy { file, name, allow_http, resources, json, conn, .. } => {
            deploy(&conn.client(), &file.unwrap_or_default(), name, &allow_http, &resources, json)
        }
        Command::Tasks { cmd: TasksCommand::Ls { activity, json }, conn } => tasks_ls(&conn.client(), activity, json),
        Command::Definitions { json, conn } => definitions(&conn.client(), json),
        Command::Start { process, input, wait, timeout, json, conn } => start(&conn.client(), &process, input, wait, timeout, json),
        Command::Send { operation, body, id, wait_reply, json, conn } => send(&conn.client(), operation, &body, id, wait_reply, json),
        Command::Ls { status, process, limit, page, after, newest_first, json, conn } => {
            ls(&conn.client(), LsArgs { status, process, limit, page, after, newest_first }, json)
        }
        Command::Show { instance, json, conn } => show(&conn.client(), &instance, json),
        Command::Suspend { instance, json, conn } => control(&conn.client(), &instance, "suspend", json),
        Command::Resume { instance, json, conn } => control(&conn.client(), &instance, "resume", json),
        Command::Terminate { instance, json, conn } => control(&conn.client(), &instance, "terminate", json),
        Command::Cancel { instance, json, conn } => control(&conn.client(), &instance, "cancel", json),
        Command::Migrate { instance, to, from, map, json, conn } => migrate(&conn.client(), instance, &to, from, &map, json),
        Command::Retry { instance, variables, process, fault, json, conn } => retry(&conn.client(), instance, variables, process, fault, json),
        Command::Release { instance, json, conn } => control(&conn.client(), &instance, "release", json),
        Command::History { instance, json, conn } => history(&conn.client(), &instance, json),
        Command::Vars { cmd: VarsCommand::Set { instance, variables, json }, conn } => set_vars(&conn.client(), &instance, &variables, json),
        Command::InTransit { cmd, conn } => in_transit(&conn.client(), cmd),
        Command::Resource { cmd, conn } => resource(&conn.client(), cmd),
        Command::Token { cmd, conn } => token(&conn.client(), cmd),
        Command::Break { cmd, conn } => breakpoints(&conn.client(), cmd),
        Command::Bench(args) => return crate::bench::run(args),
        Command::New(args) => return crate::scaffold::run(args),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "cairn", &mut std::io::stdout());
            return EXIT_OK;
        }
        Command::Partner(args) => return crate::partner::run(args),
        Command::Promote { data, store, yes } => return promote(&data, store.as_deref(), yes),
        Command::CompileComponent { out, fingerprint, memory_bytes, pooling, fuel } => {
            return crate::runtime::compile_component_main(&out, &fingerprint, memory_bytes, pooling, fuel)
        }
        Command::Check { data, store, json } => return crate::check::run_check(&data, store.as_deref(), json),
        Command::Repair { data, yes, json } => return crate::check::run_repair(&data, yes, json),
    };
    match result {
        Ok(code) => code,
        Err(e) => report(json_errors, e),
    }
}

/// Prints an error (as JSON on stderr with `--json`) and returns its exit code.
fn report(json_errors: bool, e: CliError) -> i32 {
    if json_errors {
        let mut v = e.api.unwrap_or_else(|| json!({ "kind": if e.code == EXIT_USAGE { "usage" } else { "error" } }));
        v["error"] = json!(e.message);
        v["exit_code"] = json!(e.code);
        eprintln!("{v}");
    } else {
        eprintln!("error: {}", e.message);
    }
    e.code
}

/// SIGPIPE back to its default (end the process) for client commands.
#[cfg(unix)]
#[allow(unsafe_code)]
fn restore_sigpipe() {
    // SAFETY: setting a signal's disposition to SIG_DFL installs no handler
    // of ours; it is done before any other thread runs.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

#[cfg(not(unix))]
fn restore_sigpipe() {}

/// Whether a store error says another process holds the data directory
/// (RocksDB's lock file).
pub fn is_lock_error(text: &str) -> bool {
    text.contains("While lock file") || text.contains("lock hold by current process") || text.contains("LOCK: Resource temporarily unavailable")
}

/// Says why `serve`/`restore` could not run; a data directory another
/// process holds gets its own message and exit code.
fn serve_failed(what: &str, data: &Path, e: &anyhow::Error) -> i32 {
    let text = format!("{e:#}");
    if is_lock_error(&text) {
        eprintln!("error: {}", in_use_message(data));
        return EXIT_DATA_IN_USE;
    }
    eprintln!("{what}: {text}");
    EXIT_REFUSED
}

/// "the data directory X is in use by another cairn process (pid N)…".
fn in_use_message(data: &Path) -> String {
    let pid = lock_holder(data).map(|p| format!(" (pid {p})")).unwrap_or_default();
    format!(
        "the data directory {} is in use by another cairn process{pid}: stop that host first, or give this one a data directory of its own (--data)",
        data.display()
    )
}

/// The process holding RocksDB's lock file in `data`, if the system says (fcntl F_GETLK).
#[cfg(unix)]
#[allow(unsafe_code)]
fn lock_holder(data: &Path) -> Option<i32> {
    use std::os::fd::AsRawFd;
    for lock in [data.join("db").join("LOCK"), data.join("LOCK")] {
        let Ok(file) = std::fs::OpenOptions::new().read(true).write(true).open(&lock) else { continue };
        // SAFETY: an all-zero `flock` is a valid value; fcntl(F_GETLK) only
        // writes into it, and the descriptor stays open for the call.
        let mut fl: libc::flock = unsafe { std::mem::zeroed() };
        fl.l_type = libc::F_WRLCK as libc::c_short;
        fl.l_whence = libc::SEEK_SET as libc::c_short;
        // SAFETY: as above.
        let r = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETLK, &mut fl) };
        if r == 0 && fl.l_type != libc::F_UNLCK as libc::c_short && fl.l_pid > 0 {
            return Some(fl.l_pid);
        }
    }
    None
}

#[cfg(not(unix))]
fn lock_holder(_data: &Path) -> Option<i32> {
    None
}

/// A failed command: its exit code, its message, and the API's error as JSON (for `--json`).
struct CliError {
    code: i32,
    message: String,
    api: Option<Value>,
}

impl CliError {
    fn new(code: i32, message: impl Into<String>) -> CliError {
        CliError { code, message: message.into(), api: None }
    }
}

impl From<cairn_client::Error> for CliError {
    fn from(e: cairn_client::Error) -> CliError {
        use cairn_client::Error as E;
        let code = match &e {
            E::Api { .. } | E::BadResponse { .. } => EXIT_REFUSED,
            E::Unreachable { .. } => EXIT_UNREACHABLE,
            E::Config { .. } => EXIT_USAGE,
        };
        let mut message = e.message().to_string();
        if let E::Unreachable { tls: false, .. } = e {
            message.push_str(" (start it with `cairn serve`, or set --server / CAIRN_SERVER)");
        }
        CliError { code, message, api: Some(e.to_json()) }
    }
}

fn parse_json_arg(flag: &str, text: &str) -> Result<Value, CliError> {
    serde_json::from_str(text).map_err(|e| CliError::new(EXIT_USAGE, format!("{flag} is not valid JSON: {e}")))
}

fn print_json(v: &impl serde::Serialize) {
    println!("{}", serde_json::to_string_pretty(v).unwrap());
}

// ---- Times and tables for people ----

/// `2026-11-23 18:20:01` (UTC) of milliseconds since the Unix epoch.
pub fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = crate::civil_from_days(days as i64);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}", rest / 3600, rest / 60 % 60, rest % 60)
}

/// `3 min ago`, `in 2 h`, `just now`.
pub fn ago(ms: u64, now_ms: u64) -> String {
    let (d, future) = if ms > now_ms { (ms - now_ms, true) } else { (now_ms - ms, false) };
    let s = d / 1000;
    let span = match s {
        0 => return "just now".to_string(),
        1..=59 => format!("{s} s"),
        60..=3599 => format!("{} min", s / 60),
        3600..=86_399 => format!("{} h", s / 3600),
        _ => format!("{} d", s / 86_400),
    };
    if future {
        format!("in {span}")
    } else {
        format!("{span} ago")
    }
}

/// `2026-11-23 18:20:01 UTC (3 min ago)`.
fn when(ms: u64, now_ms: u64) -> String {
    format!("{} UTC ({})", utc(ms), ago(ms, now_ms))
}

/// `3,000`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Prints rows under a header, each column as wide as its widest cell (the
/// last one unpadded). Columns of our own: the cells are short ASCII, so
/// a table crate would add a dependency and nothing we use.
fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            }
        }
        println!("{}", out.trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

fn status_name(s: InstanceStatus) -> String {
    serde_json::to_value(s).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
}

// ---- Commands ----

fn deploy_external(client: &Client, name: &str, operations: &[String], json_out: bool) -> Result<i32, CliError> {
    let v = client.deploy_external(name, operations)?;
    if json_out {
        print_json(&v);
    } else {
        let verb = if v.created { "deployed" } else { "already deployed" };
        println!("{verb} external activity {} {}", v.name, v.version);
        for op in v.external.iter().flatten() {
            println!("  operation {op}");
        }
    }
    Ok(EXIT_OK)
}

fn tasks_ls(client: &Client, activity: Option<String>, json_out: bool) -> Result<i32, CliError> {
    let v = client.tasks(activity.as_deref())?;
    if json_out {
        print_json(&v);
        return Ok(EXIT_OK);
    }
    let rows: Vec<Vec<String>> = v
        .tasks
        .iter()
        .map(|t| {
            vec![
                t.id.clone(),
                t.state.clone(),
                format!("{} on {}", t.operation, t.activity),
                t.attempt.map(|a| a.to_string()).unwrap_or_else(|| "-".into()),
                t.worker.clone().unwrap_or_else(|| "-".into()),
                t.idempotency_key.clone(),
            ]
        })
        .collect();
    print_table(&["ID", "STATE", "OPERATION", "ATTEMPT", "WORKER", "IDEMPOTENCY KEY"], &rows);
    Ok(EXIT_OK)
}

fn deploy(client: &Client, file: &Path, name: Option<String>, allow_http: &[String], resources: &[String], json_out: bool) -> Result<i32, CliError> {
    let bytes = std::fs::read(file).map_err(|e| CliError::new(EXIT_USAGE, format!("cannot read {}: {e}", file.display())))?;
    let name = name.unwrap_or_else(|| file.file_stem().map(|s| s.to_string_lossy().replace('_', "-")).unwrap_or_default());
    let v = client.deploy(&bytes, Some(&name), allow_http, resources)?;
    if json_out {
        print_json(&v);
    } else {
        let verb = if v.created { "deployed" } else { "already deployed" };
        println!("{verb} {} {} {}", v.kind, v.name, v.version);
        for prefix in &v.allow_http {
            println!("  may call {prefix}");
        }
        for grant in &v.resources {
            println!("  may use resource {grant}");
        }
    }
    Ok(EXIT_OK)
}

fn definitions(client: &Client, json_out: bool) -> Result<i32, CliError> {
    let v = client.definitions()?;
    if json_out {
        print_json(&v);
        return Ok(EXIT_OK);
    }
    let now = crate::now_ms();
    let rows: Vec<Vec<String>> = v
        .definitions
        .iter()
        .map(|d| {
            vec![
                d.kind.clone(),
                d.name.clone(),
                d.version.clone(),
                if d.latest { "yes".into() } else { String::new() },
                d.size.to_string(),
                format!("{} ({})", utc(d.deployed_ms), ago(d.deployed_ms, now)),
            ]
        })
        .collect();
    print_table(&["KIND", "NAME", "VERSION", "LATEST", "SIZE", "DEPLOYED (UTC)"], &rows);
    // Grants after the table, so that a long URL does not widen a column.
    for d in &v.definitions {
        for prefix in &d.allow_http {
            println!("{} {} may call {prefix}", d.name, d.version);
        }
    }
    Ok(EXIT_OK)
}

fn start(client: &Client, process: &str, input: Option<String>, wait: bool, timeout: u64, json_out: bool) -> Result<i32, CliError> {
    let input = input.map(|i| parse_json_arg("--input", &i)).transpose()?;
    let v = client.start(process, input)?;
    let id = v.id.clone();
    if !wait {
        if json_out {
            print_json(&v);
        } else {
            println!("{id}");
        }
        return Ok(EXIT_OK);
    }
    let started = Instant::now();
    let mut said_waiting = false;
    loop {
        let inst = match client.instance(&id) {
            Ok(i) => i,
            // It was there a moment ago: a microflow that keeps no final state.
            Err(e) if e.is_not_found() => {
                if json_out {
                    print_json(&json!({ "id": id, "status": "completed", "kept": false }));
                } else {
                    println!("{id} completed (its final state is not kept)");
                }
                return Ok(EXIT_OK);
            }
            Err(e) => return Err(e.into()),
        };
        let status = status_name(inst.summary.status);
        match inst.summary.status {
            InstanceStatus::Completed | InstanceStatus::Faulted | InstanceStatus::Terminated => {
                if json_out {
                    print_json(&inst);
                } else {
                    println!("{id} {status}");
                    if let Some(f) = &inst.fault {
                        println!("fault {} at {}: {}", f.name, f.path.as_deref().unwrap_or(""), f.message);
                    }
                    println!("{}", serde_json::to_string_pretty(&inst.variables).unwrap());
                }
                return Ok(if inst.summary.status == InstanceStatus::Completed { EXIT_OK } else { EXIT_INSTANCE_FAILED });
            }
            _ => {
                if started.elapsed() > Duration::from_secs(timeout) {
                    return Err(CliError::new(EXIT_REFUSED, format!("instance {id} is still {status} after {timeout}s")));
                }
                if !said_waiting && started.elapsed() > Duration::from_secs(2) && !json_out {
                    eprintln!("waiting for {id} ({status} at {})...", inst.summary.position);
                    said_waiting = true;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

fn send(client: &Client, operation: String, body: &str, id: Option<String>, wait_reply: bool, json_out: bool) -> Result<i32, CliError> {
    let message = SendMessage { operation, body: parse_json_arg("--body", body)?, id, wait_reply, timeout_ms: None };
    let v = client.send(&message)?;
    if json_out {
        print_json(&v);
    } else {
        let what = if v.duplicate {
            "duplicate (already accepted) for"
        } else if v.created {
            "accepted; created"
        } else {
            "accepted for"
        };
        println!("message {} {what} instance {}", v.message_id, v.instance);
        if let Some(reply) = &v.reply {
            match &reply.fault {
                Some(f) => println!("reply: fault {}: {}", f.name, f.message),
                None => println!("reply: {}", reply.body),
            }
        }
    }
    Ok(EXIT_OK)
}

/// What `cairn ls` asks for.
struct LsArgs {
    status: Option<String>,
    process: Option<String>,
    limit: usize,
    page: u64,
    after: Option<String>,
    newest_first: bool,
}

fn ls(client: &Client, a: LsArgs, json_out: bool) -> Result<i32, CliError> {
    let offset = if a.after.is_some() { 0 } else { (a.page as usize - 1).saturating_mul(a.limit) };
    let q = ListInstances {
        status: a.status.clone(),
        process: a.process.clone(),
        limit: Some(a.limit),
        after: a.after.clone(),
        offset: (offset > 0).then_some(offset),
        newest_first: a.newest_first,
    };
    let v = client.instances(&q)?;
    if json_out {
        print_json(&v);
        return Ok(EXIT_OK);
    }
    let now = crate::now_ms();
    let rows: Vec<Vec<String>> = v
        .instances
        .iter()
        .map(|i| vec![i.id.clone(), i.process.clone(), status_name(i.status), format!("{} ({})", utc(i.updated_ms), ago(i.updated_ms, now)), i.position.clone()])
        .collect();
    print_table(&["ID", "PROCESS", "STATUS", "UPDATED (UTC)", "POSITION"], &rows);
    // The count, the total and the next page, on stderr (stdout stays the table).
    let mut filters = String::new();
    if let Some(s) = &a.status {
        filters.push_str(&format!(" --status {s}"));
    }
    if let Some(p) = &a.process {
        filters.push_str(&format!(" --process {p}"));
    }
    if a.limit != 50 {
        filters.push_str(&format!(" --limit {}", a.limit));
    }
    if a.newest_first {
        filters.push_str(" --newest-first");
    }
    let count = v.instances.len() as u64;
    let total = v.total.map(|t| format!(" of {}", thousands(t))).unwrap_or_default();
    let more = v.next_after.is_some() && v.total.is_none_or(|t| offset as u64 + count < t);
    let shown = match (&a.after, count) {
        (_, 0) => format!("no instances{}", if a.page > 1 { format!(" on page {}", a.page) } else { String::new() }),
        (Some(after), _) => format!("showing {} after {after}", thousands(count)),
        (None, _) => format!("showing {}-{}", thousands(offset as u64 + 1), thousands(offset as u64 + count)),
    };
    let next = match (&a.after, &v.next_after) {
        (_, Some(next)) if more && a.after.is_some() => format!("; next: cairn ls{filters} --after {next}"),
        (_, Some(next)) if more => format!("; next: cairn ls{filters} --page {} (or --after {next})", a.page + 1),
        _ => String::new(),
    };
    eprintln!("{shown}{total}{next}");
    Ok(EXIT_OK)
}

/// What a position waits for, in words (from `GET /v1/instances/{id}/positions`).
fn describe_wait(waits: &BTreeMap<String, Value>, now: u64) -> String {
    let s = |v: &Value| v.as_str().unwrap_or("").to_string();
    let due = |v: &Value| v.as_u64().map(|ms| when(ms, now));
    let correlation = |c: &Value| match c["set"].as_str() {
        Some(set) => format!(" with correlation {set} = {}", c["values"].as_str().map(str::to_string).unwrap_or_else(|| c["values"].to_string())),
        None => String::new(),
    };
    let what = waits.get("what").map(s).unwrap_or_default();
    match what.as_str() {
        "message" => {
            let mut out = format!("a message '{}'", waits.get("operation").map(s).unwrap_or_default());
            if let Some(c) = waits.get("correlation") {
                out.push_str(&correlation(c));
            }
            if let Some(t) = waits.get("timeout_due_ms").and_then(due) {
                out.push_str(&format!("; times out {t}"));
            }
            out
        }
        "timer" => format!("a timer due {}", waits.get("due_ms").and_then(due).unwrap_or_else(|| "(unknown)".into())),
        "call" => {
            let c = waits.get("call").cloned().unwrap_or(Value::Null);
            let mut out = format!("call {}: {} on {}", c["call_id"], s(&c["operation"]), s(&c["target"]["name"]));
            if let Some(attempt) = c["attempt"].as_u64() {
                out.push_str(&format!(", attempt {attempt}"));
            }
            if let Some(task) = c["task"].as_str() {
                out.push_str(&format!(", task {task}"));
            }
            if let Some(f) = c["last_fault"].as_object() {
                out.push_str(&format!(", last fault {}: {}", f["name"].as_str().unwrap_or(""), f["message"].as_str().unwrap_or("")));
            }
            out
        }
        "pick" => {
            let arms: Vec<String> = waits
                .get("arms")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|arm| match arm["what"].as_str() {
                    Some("message") => format!("a message '{}'{}", s(&arm["operation"]), correlation(&arm["correlation"])),
                    _ => format!("a timer due {}", due(&arm["due_ms"]).unwrap_or_else(|| "(unknown)".into())),
                })
                .collect();
            format!("the first of: {}", arms.join("; or "))
        }
        "handling" => {
            let f = waits.get("fault").cloned().unwrap_or(Value::Null);
            format!("its fault handler of {}: {} (running)", s(&f["name"]), s(&f["message"]))
        }
        "compensating" => "compensation to finish (running)".to_string(),
        _ => format!("nothing: it is running ({})", waits.get("phase").map(s).unwrap_or_default()),
    }
}

fn show(client: &Client, id: &str, json_out: bool) -> Result<i32, CliError> {
    let v = client.instance(id)?;
    if json_out {
        print_json(&v);
        return Ok(EXIT_OK);
    }
    // Where each branch stands and what it waits for; an older server may not have it.
    let positions: Option<Positions> = client.positions(id).ok();
    let now = crate::now_ms();
    let i = &v.summary;
    println!("instance   {}", i.id);
    println!("process    {} (version {})", i.process, i.version);
    println!("status     {}", status_name(i.status));
    println!("position   {}", i.position);
    println!("created    {}", when(i.created_ms, now));
    println!("updated    {}", when(i.updated_ms, now));
    if matches!(i.status, InstanceStatus::Waiting | InstanceStatus::Running | InstanceStatus::Suspended) {
        match &positions {
            Some(p) if !p.positions.is_empty() => {
                for (n, pos) in p.positions.iter().enumerate() {
                    let label = if n == 0 { "waits for " } else { "          " };
                    println!("{label} {}  (at {})", describe_wait(&pos.waits, now), pos.path);
                }
            }
            _ => {
                if let Some(wait) = &v.wait {
                    println!("waits for  {}", serde_json::to_string(wait).unwrap_or_default());
                }
            }
        }
        if let Some(stopped) = positions.as_ref().and_then(|p| p.stopped.as_ref()) {
            println!("stopped    at {} by {}: {} (cairn resume {})", stopped.path, stopped.why, stopped.detail, i.id);
        }
        for c in &v.pending_calls {
            println!("pending    {} {} on {} (call {}, key {})", c.effect, c.operation, c.target.name, c.call_id, c.key);
        }
        if v.inbox > 0 {
            println!("inbox      {} message(s) not yet consumed", v.inbox);
        }
    }
    if v.parked {
        println!("parked     by deferred recovery: `cairn release {}` lets it go on", i.id);
    }
    for t in &v.in_transit {
        println!("in transit {} ({}): {} on {}", t.id, t.state, t.operation, t.target.name);
    }
    if let Some(f) = &v.fault {
        print_fault(f, i.status == InstanceStatus::Faulted, &i.id);
    }
    if !v.correlations.is_empty() {
        let c: Vec<String> = v.correlations.iter().map(|(set, values)| format!("{set} = {values}")).collect();
        println!("correlated {}", c.join(", "));
    }
    println!("in memory  {}", if v.in_memory { "yes" } else { "no" });
    println!("variables  {}", serde_json::to_string_pretty(&v.variables).unwrap().replace('\n', "\n           "));
    println!("history");
    print_history(&v.history, now, "  ");
    Ok(EXIT_OK)
}

fn print_fault(f: &FaultView, ended: bool, id: &str) {
    let at = f.path.as_deref().unwrap_or("?");
    if ended {
        println!("faulted at {at}: {}: {}", f.name, f.message);
        if !f.data.is_empty() && f.data != "null" {
            println!("fault data {}", f.data);
        }
        println!("           retry it from there: cairn retry {id} [--variables JSON]");
    } else {
        println!("fault      {} at {at}: {} (data {})", f.name, f.message, f.data);
    }
}

fn print_history(history: &[HistoryView], now: u64, indent: &str) {
    let rows: Vec<Vec<String>> = history
        .iter()
        .map(|h| {
            vec![
                format!("{indent}#{}", h.fence),
                utc(h.at_ms),
                ago(h.at_ms, now),
                h.reason.clone(),
                status_name(h.status),
                h.path.clone(),
            ]
        })
        .collect();
    let fence = format!("{indent}FENCE");
    print_table(&[fence.as_str(), "AT (UTC)", "AGO", "REASON", "STATUS", "ACTIVITY"], &rows);
}

fn in_transit(client: &Client, cmd: InTransitCommand) -> Result<i32, CliError> {
    let (v, json_out) = match cmd {
        InTransitCommand::Ls { json } => {
            let list = client.in_transit()?;
            if json {
                print_json(&list);
            } else {
                let rows: Vec<Vec<String>> = list
                    .calls
                    .iter()
                    .map(|c| vec![c.id.clone(), c.state.clone(), format!("{} on {}", c.operation, c.target.name), c.idempotency_key.clone()])
                    .collect();
                print_table(&["ID", "STATE", "CALL", "IDEMPOTENCY KEY"], &rows);
            }
            return Ok(EXIT_OK);
        }
        InTransitCommand::Resubmit { id, json } => (client.resolve_in_transit(&id, "resubmit")?, json),
        InTransitCommand::Abandon { id, json } => (client.resolve_in_transit(&id, "abandon")?, json),
    };
    if json_out {
        print_json(&v);
    } else {
        println!("{} {}", v.id, v.state);
    }
    Ok(EXIT_OK)
}

fn control(client: &Client, id: &str, verb: &str, json_out: bool) -> Result<i32, CliError> {
    let v = client.control(id, verb)?;
    if json_out {
        print_json(&v);
    } else {
        println!("{} {} at {}", v.id, status_name(v.status), v.position);
    }
    Ok(EXIT_OK)
}

fn retry(client: &Client, instance: Option<String>, variables: Option<String>, process: Option<String>, fault: Option<String>, json_out: bool) -> Result<i32, CliError> {
    if let Some(process) = process {
        let v = client.retry_faulted(&process, fault.as_deref())?;
        if json_out {
            print_json(&v);
        } else {
            print_bulk("retried", &v.retried, &v.refused);
        }
        return Ok(EXIT_OK);
    }
    let id = instance.unwrap_or_default();
    let variables = variables.map(|text| parse_json_arg("--variables", &text)).transpose()?;
    let v = client.retry(&id, variables)?;
    if json_out {
        print_json(&v);
    } else {
        println!("{} {} at {}", v.id, status_name(v.status), v.position);
    }
    Ok(EXIT_OK)
}

/// A bulk verb's report: each instance it applied to (`done`, as `verb`),
/// each it refused with why, then the two counts.
fn print_bulk(verb: &str, done: &[String], refused: &[cairn_client::types::RefusedView]) {
    for id in done {
        println!("{verb} {id}");
    }
    for r in refused {
        println!("refused {}: {}", r.id, r.error);
    }
    println!("{} {verb}, {} refused", done.len(), refused.len());
}

fn migrate(client: &Client, instance: Option<String>, to: &str, from: Option<String>, map: &[String], json_out: bool) -> Result<i32, CliError> {
    let mut paths = BTreeMap::new();
    for m in map {
        let Some((old, new)) = m.split_once('=') else {
            return Err(CliError::new(EXIT_USAGE, format!("--map {m}: expected OLD_PATH=NEW_PATH")));
        };
        paths.insert(old.to_string(), new.to_string());
    }
    if let Some(from) = from {
        let v = client.migrate_version(&from, to, &paths)?;
        if json_out {
            print_json(&v);
        } else {
            print_bulk("migrated", &v.migrated, &v.refused);
        }
        return Ok(EXIT_OK);
    }
    let id = instance.unwrap_or_default();
    let v = client.migrate(&id, to, &paths)?;
    if json_out {
        print_json(&v);
    } else {
        println!("{} {} at {} on version {}", v.id, status_name(v.status), v.position, v.version);
    }
    Ok(EXIT_OK)
}

fn set_vars(client: &Client, id: &str, variables: &str, json_out: bool) -> Result<i32, CliError> {
    let body = parse_json_arg("VARIABLES", variables)?;
    let v = client.set_variables(id, &body)?;
    if json_out {
        print_json(&v);
    } else {
        println!("{} variables set; still suspended (cairn resume {id})", v.summary.id);
    }
    Ok(EXIT_OK)
}

fn history(client: &Client, id: &str, json_out: bool) -> Result<i32, CliError> {
    let v = client.history(id)?;
    if json_out {
        print_json(&v);
        return Ok(EXIT_OK);
    }
    print_history(&v.history, crate::now_ms(), "");
    Ok(EXIT_OK)
}

fn breakpoints(client: &Client, cmd: BreakCommand) -> Result<i32, CliError> {
    match cmd {
        BreakCommand::Set { process, path, json } => {
            let v = client.set_breakpoint(&process, &path)?;
            if json {
                print_json(&v);
            } else {
                println!("breakpoint set on {process} {path}");
            }
        }
        BreakCommand::Clear { process, path, json } => {
            let v = client.clear_breakpoint(&process, &path)?;
            if json {
                print_json(&v);
            } else {
                println!("breakpoint cleared on {process} {path}");
            }
        }
        BreakCommand::Ls { json } => {
            let v = client.breakpoints()?;
            if json {
                print_json(&v);
            } else {
                let rows: Vec<Vec<String>> = v.breakpoints.iter().map(|b| vec![b.process.clone(), b.path.clone()]).collect();
                print_table(&["PROCESS", "PATH"], &rows);
            }
        }
    }
    Ok(EXIT_OK)
}

fn backup(client: &Client, name: &str, json_out: bool) -> Result<i32, CliError> {
    let message = format!("backup {name}: the server is writing it");
    let v = crate::progress::while_waiting(&message, json_out, || client.backup(name))?;
    if json_out {
        print_json(&v);
    } else {
        println!("backup written to {} on the server's machine (restore it there with: cairn restore {} --data NEW_DIR)", v.dir, v.dir);
    }
    Ok(EXIT_OK)
}

fn resource(client: &Client, cmd: ResourceCommand) -> Result<i32, CliError> {
    match cmd {
        ResourceCommand::Create { name, json } => {
            let v = client.create_resource(&name)?;
            if json {
                print_json(&v);
            } else if v.created {
                println!("created resource {name}");
            } else {
                println!("resource {name} already exists");
            }
        }
        ResourceCommand::Ls { json } => {
            let v = client.resources()?;
            if json {
                print_json(&v);
            } else {
                let now = crate::now_ms();
                let rows: Vec<Vec<String>> = v.resources.iter().map(|r| vec![r.name.clone(), when(r.created_ms, now)]).collect();
                print_table(&["NAME", "CREATED"], &rows);
            }
        }
        ResourceCommand::Get { name, key, json } => {
            let v = client.resource_key(&name, &key)?;
            if json {
                print_json(&v);
            } else {
                println!("{} (version {})", v.value, v.version);
            }
        }
        ResourceCommand::Scan { name, prefix, after, limit, json } => {
            let v = client.scan_resource(&name, &prefix, after.as_deref(), limit)?;
            if json {
                print_json(&v);
            } else {
                let rows: Vec<Vec<String>> = v.rows.iter().map(|r| vec![r.key.clone(), r.version.to_string(), r.value.to_string()]).collect();
                print_table(&["KEY", "VERSION", "VALUE"], &rows);
                if let Some(next) = &v.next_after {
                    eprintln!("(more: cairn resource scan {name} --after {next})");
                }
            }
        }
    }
    Ok(EXIT_OK)
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
            TokenCommand::Create { role, note, .. } => json!(client.create_token(&role, &note)?),
            TokenCommand::Ls { .. } => json!(client.tokens()?),
            TokenCommand::Revoke { id, .. } => json!(client.revoke_token(&id)?),
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
        let now = crate::now_ms();
        let rows: Vec<Vec<String>> = list
            .iter()
            .map(|t| {
                vec![
                    t["id"].as_str().unwrap_or("").to_string(),
                    t["role"].as_str().unwrap_or("").to_string(),
                    t["created_ms"].as_u64().map(|ms| when(ms, now)).unwrap_or_default(),
                    t["note"].as_str().unwrap_or("").to_string(),
                ]
            })
            .collect();
        print_table(&["ID", "ROLE", "CREATED", "NOTE"], &rows);
    } else {
        println!("revoked token {}", v["id"].as_str().unwrap_or(""));
    }
    Ok(EXIT_OK)
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
        Err(e) if is_lock_error(&e.to_string()) => {
            eprintln!("error: {}", in_use_message(data));
            EXIT_DATA_IN_USE
        }
        Err(e) => {
            eprintln!("error: promoting {}: {e} (is a host still serving it? stop it first)", data.display());
            1
        }
    }
}


/// A token command on the store itself (the host must be stopped; a
/// running host sees the change only after a restart).
fn token_offline(offline: &OfflineStore, cmd: TokenCommand) -> Result<Value, CliError> {
    let data = offline.data.clone().unwrap_or_else(|| PathBuf::from("."));
    let location = cairn_store::Location::parse(offline.store.as_deref(), &data).map_err(|e| CliError::new(EXIT_USAGE, e))?;
    if matches!(location, cairn_store::Location::Embedded { .. }) && !data.is_dir() {
        return Err(CliError::new(EXIT_USAGE, format!("{} is not a data directory", data.display())));
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| CliError::new(EXIT_REFUSED, e.to_string()))?;
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
        Ok(Err(message)) => Err(CliError::new(EXIT_REFUSED, message)),
        Err(e) if is_lock_error(&e.to_string()) => Err(CliError::new(EXIT_DATA_IN_USE, in_use_message(&data))),
        Err(e) => Err(CliError::new(
            EXIT_REFUSED,
            format!("opening the store of {}: {e} (is a host still serving it? stop it first, or give the server and --token instead)", data.display()),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// Every argument of every command has help text, and only commands
    /// that talk to a server take --server.
    #[test]
    fn every_argument_has_help_and_only_server_commands_take_server() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>, with_server: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if matches!(id, "help" | "version") {
                    continue;
                }
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{path} {id}"));
                }
                if id == "server" && cmd.get_subcommands().next().is_none() {
                    with_server.push(path.to_string());
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()), missing, with_server);
            }
        }
        let mut cmd = Cli::command();
        cmd.build();
        let (mut missing, mut with_server) = (Vec::new(), Vec::new());
        walk(&cmd, "cairn", &mut missing, &mut with_server);
        assert!(missing.is_empty(), "arguments without help text: {missing:?}");
        for local in ["serve", "restore", "promote", "check", "repair", "bench", "partner", "new", "completions"] {
            assert!(!with_server.contains(&format!("cairn {local}")), "cairn {local} must not take --server");
        }
        for remote in ["cairn ls", "cairn show", "cairn start", "cairn vars set", "cairn token ls", "cairn tasks ls"] {
            assert!(with_server.iter().any(|c| c == remote), "{remote} must take --server: {with_server:?}");
        }
    }

    #[test]
    fn server_flags_parse_after_the_command_and_are_refused_on_local_ones() {
        assert!(Cli::try_parse_from(["cairn", "ls", "--server", "http://h:1", "--token", "t"]).is_ok());
        assert!(Cli::try_parse_from(["cairn", "vars", "set", "i", "{}", "--server", "http://h:1"]).is_ok());
        assert!(Cli::try_parse_from(["cairn", "serve", "--server", "http://h:1"]).is_err());
        assert!(Cli::try_parse_from(["cairn", "new", "x", "--server", "http://h:1"]).is_err());
        assert!(Cli::try_parse_from(["cairn", "check", "d", "--token", "t"]).is_err());
    }

    #[test]
    fn help_lists_the_exit_codes() {
        let help = Cli::command().render_help().to_string();
        assert!(help.contains("Exit codes:") && help.contains("5  the data directory is in use"), "{help}");
    }

    #[test]
    fn times_and_counts_read_as_people_write_them() {
        assert_eq!(utc(0), "1970-01-01 00:00:00");
        assert_eq!(utc(1_795_458_001_000), "2026-11-23 18:20:01");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00");
        assert_eq!(ago(1_000, 181_000), "3 min ago");
        assert_eq!(ago(7_300_000, 100_000), "in 2 h");
        assert_eq!(ago(5, 5), "just now");
        assert_eq!(thousands(3000), "3,000");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }

    #[test]
    fn waits_are_said_in_words() {
        let waits = |v: Value| -> BTreeMap<String, Value> { serde_json::from_value(v).unwrap() };
        let now = 1_795_458_001_000;
        let call = waits(json!({ "what": "call", "call": {
            "call_id": 3, "operation": "charge", "target": { "kind": "activity", "name": "payments" }, "key": "k",
            "attempt": 2, "last_fault": { "name": "net.down", "message": "connection refused", "data": "null" },
        }}));
        assert_eq!(describe_wait(&call, now), "call 3: charge on payments, attempt 2, last fault net.down: connection refused");
        let message = waits(json!({ "what": "message", "operation": "approve", "correlation": { "set": "order", "values": "[\"A-1\"]" }, "timeout_due_ms": now + 120_000 }));
        assert_eq!(describe_wait(&message, now), "a message 'approve' with correlation order = [\"A-1\"]; times out 2026-11-23 18:22:01 UTC (in 2 min)");
        let timer = waits(json!({ "what": "timer", "due_ms": now + 60_000 }));
        assert_eq!(describe_wait(&timer, now), "a timer due 2026-11-23 18:21:01 UTC (in 1 min)");
    }

    #[test]
    fn rocksdb_lock_errors_are_recognised() {
        assert!(is_lock_error("opening the store: IO error: While lock file: /d/db/LOCK: Resource temporarily unavailable"));
        assert!(!is_lock_error("no space left on device"));
    }
}
