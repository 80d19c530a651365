//! Provisioning PostgreSQL databases for benchmarks and tests: a fresh,
//! empty database on a server, by URL.

use crate::error::{Result, StoreError};
use std::sync::atomic::{AtomicU64, Ordering};

/// Creates a new empty database on the PostgreSQL server at `server`
/// (`postgres://USER@HOST:PORT`, no database) and returns its URL.
pub async fn fresh_postgres_database(server: &str) -> Result<String> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let server = server.trim_end_matches('/');
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let name = format!("cairn_{}_{}_{}", std::process::id(), nanos % 1_000_000_000, NEXT.fetch_add(1, Ordering::Relaxed));
    let admin = format!("{server}/postgres");
    let (client, connection) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
        .await
        .map_err(|e| StoreError::Storage(format!("connecting to {server} to create a database: {e}")))?;
    let conn = tokio::spawn(connection);
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .map_err(|e| StoreError::Storage(format!("creating database {name} on {server}: {e}")))?;
    drop(client);
    let _ = conn.await;
    Ok(format!("{server}/{name}"))
}
