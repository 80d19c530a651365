//! Test guest "versioned", version 1.
include!("body.rs");
versioned_process!(1, "go");
