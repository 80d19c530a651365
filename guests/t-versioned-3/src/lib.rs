//! Test guest "versioned", version 3, for migration: the receive `go` is
//! renamed `await-go`, and the variables gain `region`, which has no serde
//! default (variables of version 1 without it do not decode).
include!("../../t-versioned-1/src/body.rs");
versioned_process!(3, "await-go", region: String);
