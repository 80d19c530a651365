//! `cairn`: the durable process host and its command-line client.
//!
//! `cairn serve` runs the host: the engine (the `cairn-engine` crate, pure), the Wasm runtime
//! (`runtime`), the store (the `cairn-store` crate: RocksDB or PostgreSQL), the service that drives
//! instances (`service`) the HTTP API (`api`) and the web console (`console`). Every other subcommand is
//! a client of that API (`cli`). See ARCHITECTURE.md for the code map.

pub mod api;
pub mod bench;
pub mod bench_http;
pub mod check;
pub mod cli;
pub mod cluster_cli;
pub mod config;
pub mod console;
pub use cairn_store::failpoint;
pub mod guestlog;
pub mod isolated;
pub mod loadgen;
pub mod metrics;
pub mod outbound;
pub mod partner;
pub mod progress;
pub mod resources;
pub mod runtime;
pub mod scaffold;
pub mod server;
pub mod service;
pub mod telemetry;

/// Milliseconds since the Unix epoch: the only clock the engine sees, and it
/// sees it as a field of its inputs.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// The civil date (year, month, day) in UTC of a count of days since
/// 1970-01-01 (Howard Hinnant's `civil_from_days`): logs and the CLI print
/// dates without a clock crate.
pub fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

/// Rust's allocations go to jemalloc (see host/Cargo.toml for why); RocksDB's
/// C++ allocations still go to glibc's malloc, whose arenas are bounded
/// (`bound_malloc_arenas`) and trimmed (`trim_memory_every`).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read before `main`: a background thread hands pages
/// freed a second ago back to the system (`dirty_decay_ms`), idle or not. By
/// default they stay 10 s and go only when something allocates again, so a
/// listing of every instance left the idle host 13 MiB larger.
#[allow(unsafe_code)]
#[export_name = "_rjem_malloc_conf"]
pub static JEMALLOC_OPTIONS: &[u8; 60] = b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

fn main() {
    bound_malloc_arenas();
    std::process::exit(cli::main());
}

/// glibc's malloc gives threads that allocate at once arenas of their own
/// (up to eight per core) and keeps what each holds once it is freed: a
/// burst of instances on the runtime's worker and blocking threads left the
/// host at 266 MiB resident after 1,000 timers fired together, and 52 MiB
/// with two arenas (`cairn bench --only http-api`, BENCHMARKS.md), at no
/// measurable cost in throughput on two cores. `MALLOC_ARENA_MAX` in the
/// environment still decides when set.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn bound_malloc_arenas() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt sets an allocator parameter; it runs first in
        // main, before any other thread exists.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn bound_malloc_arenas() {}

/// Hands memory that glibc's malloc holds free back to the system, every
/// `every`, on a thread of its own (`cairn-trim`): after a burst (memtables
/// flushed, instances ended) the freed chunks stay in malloc's arenas,
/// resident, until something trims them. It takes each arena's lock for the
/// moment of one pass (well under a millisecond with tens of MiB held).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn trim_memory_every(every: std::time::Duration) {
    let _ = std::thread::Builder::new().name("cairn-trim".into()).spawn(move || loop {
        std::thread::sleep(every);
        // SAFETY: malloc_trim only returns free memory of the arenas to the system.
        unsafe {
            libc::malloc_trim(0);
        }
    });
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn trim_memory_every(_every: std::time::Duration) {}
