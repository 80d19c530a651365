//! The guest log: structured records written by guests through
//! `cairn:log/logging`, one JSON object per line, stamped by the host with
//! their source, instance and activity path (or idempotency key).
//!
//! It is the observable trace of what guests did: tests count activity
//! effects in it. It is written outside the store and is not transactional.
//! Each handler or activity call may write at most
//! `--guest-log-max-bytes-per-call` bytes of it; records beyond are dropped,
//! and one notice at the end of the call says how many.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

/// What one call may still write to the guest log, and what it dropped.
#[derive(Debug, Clone, Default)]
pub struct Quota {
    remaining: usize,
    dropped: u64,
}

impl Quota {
    pub fn new(bytes: usize) -> Quota {
        Quota { remaining: bytes, dropped: 0 }
    }
}

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

    /// Writes a record if it fits in what is left of the call's quota
    /// (counted in bytes of the JSON line); else counts it as dropped.
    pub fn write_within(
        &self,
        ctx: &crate::runtime::LogContext,
        level: &str,
        message: &str,
        fields: &[(String, String)],
        quota: &mut Quota,
    ) {
        let (line, record) = Self::line(ctx, level, message, fields);
        if line.len() > quota.remaining {
            quota.remaining = 0;
            quota.dropped += 1;
            return;
        }
        quota.remaining -= line.len();
        self.emit(ctx, level, message, &line, &record);
    }

    /// At the end of a call: one notice if its quota dropped records.
    pub fn notice_dropped(&self, ctx: &crate::runtime::LogContext, quota: &Quota) {
        if quota.dropped > 0 {
            let message = format!("guest log quota exceeded: {} records dropped", quota.dropped);
            self.write(ctx, "warn", &message, &[]);
        }
    }

    pub fn write(&self, ctx: &crate::runtime::LogContext, level: &str, message: &str, fields: &[(String, String)]) {
        let (line, record) = Self::line(ctx, level, message, fields);
        self.emit(ctx, level, message, &line, &record);
    }

    /// A record as one JSON line (with its newline), and as JSON.
    fn line(ctx: &crate::runtime::LogContext, level: &str, message: &str, fields: &[(String, String)]) -> (String, serde_json::Value) {
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
        (line, record)
    }

    fn emit(&self, ctx: &crate::runtime::LogContext, level: &str, message: &str, line: &str, record: &serde_json::Value) {
        if let Some(f) = &self.file {
            let _ = f.lock().unwrap().write_all(line.as_bytes());
        }
        if self.echo {
            eprintln!("guest {level} [{} {}] {message} {}", ctx.source, ctx.at, record["fields"]);
        }
    }
}
