//! The isolated-effects record of an isolated environment (a restored
//! backup): every outbound effect its instances attempt, one JSON object a
//! line in `DATA/isolated-effects.jsonl`, also printed with `[isolated]`.
//!
//! Owns the file; one lock serializes whole lines, so concurrent calls
//! never interleave.

use crate::now_ms;
use serde_json::Value;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;

pub struct IsolatedEffects {
    path: PathBuf,
    lock: Mutex<()>,
}

impl IsolatedEffects {
    pub fn new(path: PathBuf) -> IsolatedEffects {
        IsolatedEffects { path, lock: Mutex::new(()) }
    }

    /// Records one effect: `effect` names its kind (`call`, `http`), `detail` what it carried.
    pub fn record(&self, instance: &str, effect: &str, detail: Value) {
        let record = serde_json::json!({ "ts_ms": now_ms(), "instance": instance, "effect": effect, "detail": detail });
        self.write(&record);
    }

    fn write(&self, record: &Value) {
        println!("[isolated] {record}");
        let _guard = self.lock.lock().unwrap();
        if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(&self.path) {
            let _ = f.write_all(format!("{record}\n").as_bytes());
        }
    }
}
