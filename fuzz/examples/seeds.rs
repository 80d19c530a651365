//! Writes the generated part of the seed corpus (`fuzz/corpus/`):
//! - `snapshot_decode/sim-*`: snapshots (store records) persisted while the
//!   simulated driver runs each real definition (`fuzz/definitions/`), in
//!   flight: waiting, in flows, scopes and compensations;
//! - `message_intake/op-*`: a `POST /v1/messages` body for every operation
//!   a real definition receives, carrying its correlation properties;
//! - `definition_arena/valid-*`: with a working corpus directory as the
//!   argument, a few of its inputs that build valid definitions, the largest.
//!
//! `cargo run --release --example seeds [WORKING_CORPUS/definition_arena]`
//! in `fuzz/`. The real definitions themselves come from a store (see
//! FUZZING.md).

use arbitrary::{Arbitrary, Unstructured};
use cairn_engine::{Activity, Snapshot};
use cairn_fuzz::arena::ArbDefinition;
use cairn_fuzz::driver::Driver;
use std::collections::BTreeSet;
use std::path::Path;

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    snapshots(&root.join("snapshot_decode"));
    messages(&root.join("message_intake"));
    if let Some(dir) = std::env::args().nth(1) {
        arenas(Path::new(&dir), &root.join("definition_arena"));
    }
}

fn snapshots(dir: &Path) {
    let mut written = 0;
    for def in cairn_fuzz::definitions() {
        let mut kept: BTreeSet<Vec<u8>> = BTreeSet::new();
        // A few runs with different choices: handler outputs, faults, time.
        for seed in 0..12u8 {
            let choices: Vec<u8> = (0..512u32).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed.wrapping_mul(97)) ^ seed).collect();
            let mut driver = Driver::new(def, true);
            driver.records = Some(Vec::new());
            let snap = Snapshot::new("i-seed".into(), def, "v1".into(), def.initial_variables.clone(), 1_000);
            driver.run(snap, &mut Unstructured::new(&choices), 300);
            for r in driver.records.take().unwrap() {
                let s: Snapshot = serde_json::from_slice(&r[1..]).unwrap();
                if !s.stack.is_empty() {
                    kept.insert(r);
                }
            }
        }
        // The deepest stacks first, at most four per definition.
        let mut kept: Vec<Vec<u8>> = kept.into_iter().collect();
        kept.sort_by_key(|r| std::cmp::Reverse(r.len()));
        for (i, r) in kept.iter().take(4).enumerate() {
            std::fs::write(dir.join(format!("sim-{}-{i}", def.name)), r).unwrap();
            written += 1;
        }
    }
    eprintln!("snapshot_decode: {written} snapshots");
}

fn messages(dir: &Path) {
    let mut written = 0;
    for def in cairn_fuzz::definitions() {
        for sub in def.subscriptions() {
            let mut body = serde_json::json!({ "note": "seed", "n": 1.5, "tags": ["a", "b"] });
            if let Some(set) = sub.correlation.as_deref().and_then(|s| def.correlation_set(s)) {
                for p in &set.properties {
                    let key = p.pointer.trim_start_matches('/').to_string();
                    body[key] = serde_json::json!(format!("{}-1", p.name));
                }
            }
            let request = serde_json::json!({ "operation": sub.operation, "body": body, "id": format!("seed-{}", sub.operation) });
            std::fs::write(dir.join(format!("op-{}", sub.operation)), request.to_string()).unwrap();
            written += 1;
        }
        if let Some((_, node)) = def.creating_receive() {
            if let Activity::Receive { operation, .. } = &node.activity {
                let request = serde_json::json!({ "operation": operation, "body": {"order_id": "A-1", "key": 7}, "pointers": ["/order_id", "/key", "", "/a~1b"] });
                std::fs::write(dir.join(format!("op-{operation}-pointers")), request.to_string()).unwrap();
                written += 1;
            }
        }
    }
    eprintln!("message_intake: {written} requests");
}

fn arenas(from: &Path, dir: &Path) {
    let mut valid: Vec<(usize, Vec<u8>)> = Vec::new();
    for entry in std::fs::read_dir(from).unwrap() {
        let data = std::fs::read(entry.unwrap().path()).unwrap();
        let Ok(arb) = ArbDefinition::arbitrary(&mut Unstructured::new(&data)) else { continue };
        let def = arb.build();
        if def.validate().is_ok() {
            valid.push((def.nodes.len(), data));
        }
    }
    valid.sort_by_key(|(n, _)| std::cmp::Reverse(*n));
    for (i, (_, data)) in valid.iter().take(12).enumerate() {
        std::fs::write(dir.join(format!("valid-{i}")), data).unwrap();
    }
    eprintln!("definition_arena: {} of {} valid inputs", valid.len().min(12), valid.len());
}
