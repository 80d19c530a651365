//! Test guest "versioned", version 1.
const VERSION: u32 = 1;
include!("body.rs");
