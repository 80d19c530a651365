//! The snapshot decoder: a record of the instances table as the store reads
//! it (`cairn_store::codec::decode::<Snapshot>`: a format byte, then JSON;
//! or plain JSON from before format bytes), from arbitrary bytes.
//!
//! Decoding must answer (an `Integrity` error for damage, never a panic).
//! A decoded snapshot must encode and decode back to itself. Then it is
//! resumed as the host's driver would, against the real definition its
//! `process` names (`fuzz/definitions/`): `Machine::resume` either refuses
//! it or the machine runs it under the simulated driver without panicking,
//! with every persistence point decodable and resumable again.
#![no_main]

use arbitrary::Unstructured;
use cairn_engine::Snapshot;
use cairn_fuzz::{codec, driver::Driver};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(snap) = codec::decode::<Snapshot>("instances", &"fuzz", data) else { return };
    let bytes = codec::encode(&snap);
    let back: Snapshot = codec::decode("instances", &"fuzz", &bytes).expect("an encoded snapshot decodes");
    assert_eq!(back, snap, "a snapshot does not survive encode and decode");
    let defs = cairn_fuzz::definitions();
    let Some(def) = defs.iter().find(|d| d.name == snap.process) else { return };
    // The driver's choices come from the bytes themselves: any input
    // steers it, and a seed that is a real record runs as it is.
    let mut u = Unstructured::new(data);
    Driver::new(def, false).run(snap, &mut u, 200);
});
