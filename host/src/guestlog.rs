//! The guest log: structured records written by guests through
//! `cairn:log/logging`, one JSON object per line, stamped by the host with
//! their source, instance and activity path (or idempotency key).
//!
//! It is the observable trace of what guests did: tests count activity
//! effects in it. It is written outside the store and is not transactional.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

pub struct GuestLog {
    file: Option<Mutex<File>>,
    /// Echo records to stderr too.
    echo: bool,
}

impl GuestLog {
    pub fn open(path: &Path, echo: bool) -> anyhow::Result<GuestLog> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| anyhow::anyhow!("opening guest log {}: {e}", path.display()))?;
        Ok(GuestLog { file: Some(Mutex::new(file)), echo })
    }

    /// A log that drops everything (benchmarks).
    pub fn discard() -> GuestLog {
        GuestLog { file: None, echo: false }
    }

    pub fn write(&self, ctx: &crate::runtime::LogContext, level: &str, message: &str, fields: &[(String, String)]) {
        let fields: serde_json::Map<String, serde_json::Value> =
            fields.iter().map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone()))).collect();
        let record = serde_json::json!({
            "ts_ms": crate::now_ms(),
            "level": level,
            "source": ctx.source,
            "instance": ctx.instance,
            "at": ctx.at,
            "message": message,
            "fields": fields,
        });
        let mut line = record.to_string();
        line.push('\n');
        if let Some(f) = &self.file {
            let _ = f.lock().unwrap().write_all(line.as_bytes());
        }
        if self.echo {
            eprintln!("guest {level} [{} {}] {message} {}", ctx.source, ctx.at, record["fields"]);
        }
    }
}
