//! Test guest "versioned", version 2: same process, different bytes.
include!("../../t-versioned-1/src/body.rs");
versioned_process!(2, "go");
