//! Shared parts of the fuzz targets (`fuzz_targets/`): a definition arena
//! built from `arbitrary` input, a simulated driver that runs the engine the
//! way `host/src/service/driver.rs` does, and the store's record codec.
//!
//! The codec is compiled from its own source file (`store/src/codec.rs`,
//! with the `StoreError` it returns), so the targets decode records exactly
//! as the store does without building RocksDB or PostgreSQL.

#[path = "../../store/src/error.rs"]
pub mod error;

#[path = "../../store/src/codec.rs"]
pub mod codec;

pub mod arena;
pub mod driver;

use cairn_engine::definition::Activity;
use cairn_engine::{Definition, Snapshot};
use std::sync::OnceLock;

/// The definitions of the real guests (`fuzz/definitions/`, taken from a
/// store they were deployed to), read once.
pub fn definitions() -> &'static [Definition] {
    static DEFS: OnceLock<Vec<Definition>> = OnceLock::new();
    DEFS.get_or_init(|| {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/definitions");
        let mut files: Vec<_> = std::fs::read_dir(dir).expect("fuzz/definitions").map(|e| e.unwrap().path()).collect();
        files.sort();
        files
            .iter()
            .map(|f| {
                let def: Definition = serde_json::from_slice(&std::fs::read(f).unwrap()).expect("a stored definition");
                def.validate().unwrap_or_else(|e| panic!("{}: {e}", f.display()));
                def
            })
            .collect()
    })
}

/// Everything the host does with a definition at deploy and when it routes
/// messages: validate it, and if it is valid, ask the questions the host
/// asks of valid definitions and run a fresh instance of it.
pub fn exercise_definition(def: &Definition, u: &mut arbitrary::Unstructured) {
    if std::env::var_os("CAIRN_FUZZ_DEBUG").is_some() {
        eprintln!("definition: {}", serde_json::to_string(def).unwrap());
        eprintln!("validation: {:?}", def.validate());
    }
    if def.validate().is_err() {
        return;
    }
    let subs = def.subscriptions();
    for s in &subs {
        if let Some(set) = &s.correlation {
            assert!(def.correlation_set(set).is_some(), "a valid definition's receive names an undeclared set");
        }
    }
    if let Some((_, node)) = def.creating_receive() {
        assert!(matches!(node.activity, Activity::Receive { creates_instance: true, .. }));
    }
    let _ = def.paths();
    for n in &def.nodes {
        let _ = n.commits();
        if let Activity::Invoke { policy, .. } = &n.activity {
            let _ = policy.held_on_recovery();
            if let Some(retry) = &policy.retry {
                let next: u32 = u.arbitrary().unwrap_or(2);
                let _ = retry.backoff(next, "cairn.timeout");
            }
        }
    }
    let snap = Snapshot::new("i-fuzz".into(), def, "v1".into(), def.initial_variables.clone(), 1_000);
    driver::Driver::new(def, true).run(snap, u, 300);
}
