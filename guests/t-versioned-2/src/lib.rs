//! Test guest "versioned", version 2: same process, different bytes.
const VERSION: u32 = 2;
include!("../../t-versioned-1/src/body.rs");
