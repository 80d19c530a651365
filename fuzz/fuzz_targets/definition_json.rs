//! Definition validation from JSON: a definition as it is stored (and as a
//! component's `describe` reaches the engine), from arbitrary bytes.
//! `Definition::validate` must answer (never panic, hang or overflow the
//! stack); a valid definition must answer the host's routing questions and
//! run as a fresh instance under the simulated driver, with every
//! persistence point decodable and resumable. Bytes after the JSON value
//! steer the driver.
#![no_main]

use arbitrary::Unstructured;
use cairn_engine::Definition;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut values = serde_json::Deserializer::from_slice(data).into_iter::<Definition>();
    let Some(Ok(def)) = values.next() else { return };
    let rest = &data[values.byte_offset()..];
    cairn_fuzz::exercise_definition(&def, &mut Unstructured::new(rest));
});
