//! The guest log: structured records written by guests through
//! `cairn:log/logging`, one JSON object per line, stamped by the host with
//! their source, instance and activity path (or idempotency key).
//!
//! It is the observable trace of what guests did: tests count activity
//! effects in it. It is written outside the store and is not transactional.
//! Each handler or activity call may write at most
//! `--guest-log-max-bytes-per-call` bytes of it, and each instance (its own
//! handler calls and the activity calls it makes) at most
//! `--guest-log-max-bytes-per-instance` while the host runs; records beyond
//! are dropped, and one notice at the end of the call says how many.
//!
//! Echoed (unless `--quiet-guests`), each record is also an event of the
//! host's `tracing` pipeline (`crate::telemetry`), with target `guest` and
//! the fields `instance`, `source`, `at` and `fields`: `--log-format json`
//! and `RUST_LOG` (e.g. `guest=warn`) apply to it as to the host's own events.
//!
//! Owns the log file and the bytes each instance wrote (at most
//! `TRACKED_INSTANCES` instances are tracked; past that the count restarts).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

/// What one call may still write to the guest log, and what it dropped.
#[derive(Debug, Clone, Default)]
pub struct Quota {
    remaining: usize,
    dropped: u64,
    /// Of `dropped`, those dropped for the instance's quota.
    dropped_for_instance: u64,
}

impl Quota {
    pub fn new(bytes: usize) -> Quota {
        Quota { remaining: bytes, dropped: 0, dropped_for_instance: 0 }
    }
}

/// The `tracing` target of guest log records.
pub const TARGET: &str = "guest";

/// Instances whose written bytes are counted at once, at most.
const TRACKED_INSTANCES: usize = 100_000;

pub struct GuestLog {
    file: Option<Mutex<File>>,
    /// Echo records to stderr too.
    echo: bool,
    /// Bytes one instance may write while the host runs.
    per_instance: usize,
    /// Bytes written so far, by instance.
    written: Mutex<HashMap<String, usize>>,
}

impl GuestLog {
    pub fn open(path: &Path, echo: bool, per_instance: usize) -> anyhow::Result<GuestLog> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| anyhow::anyhow!("opening guest log {}: {e}", path.display()))?;
        Ok(GuestLog { file: Some(Mutex::new(file)), echo, per_instance, written: Mutex::default() })
    }

    /// A log that drops everything (benchmarks).
    pub fn discard() -> GuestLog {
        GuestLog { file: None, echo: false, per_instance: usize::MAX, written: Mutex::default() }
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
        if !ctx.instance.is_empty() && self.per_instance != usize::MAX {
            let mut written = self.written.lock().unwrap();
            if written.len() >= TRACKED_INSTANCES && !written.contains_key(&ctx.instance) {
                written.clear();
            }
            let used = written.entry(ctx.instance.clone()).or_default();
            if *used + line.len() > self.per_instance {
                quota.dropped += 1;
                quota.dropped_for_instance += 1;
                return;
            }
            *used += line.len();
        }
        quota.remaining -= line.len();
        self.emit(ctx, level, message, &line, &record);
    }

    /// At the end of a call: one notice if its quota dropped records.
    pub fn notice_dropped(&self, ctx: &crate::runtime::LogContext, quota: &Quota) {
        if quota.dropped > 0 {
            let message = match quota.dropped_for_instance {
                0 => format!("guest log quota exceeded: {} records dropped (per call: --guest-log-max-bytes-per-call)", quota.dropped),
                n => format!(
                    "guest log quota exceeded: {} records dropped, {n} of them for the instance's quota (--guest-log-max-bytes-per-instance)",
                    quota.dropped
                ),
            };
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
            let fields = &record["fields"];
            macro_rules! emit {
                ($level:expr) => {
                    tracing::event!(target: TARGET, $level, instance = %ctx.instance, source = %ctx.source, at = %ctx.at, %fields, "{message}")
                };
            }
            match level {
                "error" => emit!(tracing::Level::ERROR),
                "warn" => emit!(tracing::Level::WARN),
                "debug" => emit!(tracing::Level::DEBUG),
                "trace" => emit!(tracing::Level::TRACE),
                _ => emit!(tracing::Level::INFO),
            }
        }
    }
}
