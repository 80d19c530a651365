//! Definition validation from an arbitrary node arena: nodes with child and
//! handler indices (in range or not, shared, cyclic), names and operations
//! drawn mostly from small sets (`cairn_fuzz::arena`). As `definition_json`:
//! validation must answer, and a valid definition must run under the
//! simulated driver with every persistence point decodable and resumable.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use cairn_fuzz::arena::ArbDefinition;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok(arb) = ArbDefinition::arbitrary(&mut u) else { return };
    let def = arb.build();
    cairn_fuzz::exercise_definition(&def, &mut u);
});
