//! Test guest "microflow": one transaction, final state kept.
const NAME: &str = "microflow";
const OPERATION: &str = "micro-start";
const KEEP_FINAL_STATE: bool = true;
include!("body.rs");
