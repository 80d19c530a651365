//! `cairn`: the durable process host and its command-line client.
//!
//! `cairn serve` runs the host: the engine (the `cairn-engine` crate, pure), the Wasm runtime
//! (`runtime`), the store (the `cairn-store` crate: RocksDB or PostgreSQL), the service that drives
//! instances (`service`) and the HTTP API (`api`). Every other subcommand is
//! a client of that API (`cli`). See ARCHITECTURE.md for the code map.

pub mod api;
pub mod bench;
pub mod bench_http;
pub mod check;
pub mod cli;
pub use cairn_store::failpoint;
pub mod guestlog;
pub mod isolated;
pub mod outbound;
pub mod partner;
pub mod resources;
pub mod runtime;
pub mod server;
pub mod service;

/// Milliseconds since the Unix epoch: the only clock the engine sees, and it
/// sees it as a field of its inputs.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn main() {
    std::process::exit(cli::main());
}
