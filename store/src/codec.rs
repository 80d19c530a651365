//! Record encoding: one format-version byte, then JSON.
//!
//! Format 1 is the first versioned format. Records written before versions
//! existed are plain JSON objects (their first byte is `{`) and decode as
//! format 1's JSON: the types did not change, only the envelope.

use crate::error::StoreError;
use serde::{de::DeserializeOwned, Serialize};

/// The record format this host writes.
pub const FORMAT: u8 = 1;

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.push(FORMAT);
    serde_json::to_writer(&mut out, value).expect("store records serialize");
    out
}

/// Decodes a record of `table` stored under `key` (named in the error).
pub fn decode<T: DeserializeOwned>(table: &'static str, key: &dyn std::fmt::Display, bytes: &[u8]) -> Result<T, StoreError> {
    let integrity = |reason: String| StoreError::Integrity { table, key: key.to_string(), reason };
    let json = match bytes.first() {
        Some(&FORMAT) => &bytes[1..],
        Some(b'{') => bytes,
        Some(v) => return Err(integrity(format!("unknown record format {v} (this host reads format {FORMAT})"))),
        None => return Err(integrity("the record is empty".into())),
    };
    serde_json::from_slice(json).map_err(|e| integrity(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_round_trips_with_its_format_byte() {
        let bytes = encode(&serde_json::json!({"a": 1}));
        assert_eq!(bytes[0], FORMAT);
        let v: serde_json::Value = decode("t", &"k", &bytes).unwrap();
        assert_eq!(v["a"], 1);
    }

    #[test]
    fn a_record_written_before_versions_decodes() {
        let v: serde_json::Value = decode("t", &"k", br#"{"a":2}"#).unwrap();
        assert_eq!(v["a"], 2);
    }

    #[test]
    fn damage_is_an_integrity_error_naming_table_and_key() {
        let e = decode::<serde_json::Value>("instances", &"abc", &[1, b'{', b'x']).unwrap_err();
        assert!(e.to_string().contains("'abc' of table instances"), "{e}");
        let e = decode::<serde_json::Value>("instances", &"abc", &[9, b'{']).unwrap_err();
        assert!(e.to_string().contains("unknown record format 9"), "{e}");
    }
}
