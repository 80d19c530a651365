//! Test guest "microflow-discard": the same microflow, final state not kept.
const NAME: &str = "microflow-discard";
const OPERATION: &str = "micro-discard-start";
const KEEP_FINAL_STATE: bool = false;
include!("../../t-microflow/src/body.rs");
