//! The engine: a pure state machine over process instances.
//!
//! `(snapshot, input) -> (snapshot, effects, yield)`. Architecture invariant:
//! this crate never imports wasmtime, tokio, rocksdb or an HTTP crate. Time
//! and ids enter as fields of inputs; handler calls and commits leave as
//! `Yield`s that the host's driver carries out.
//!
//! Code map:
//! - `definition`: the activity tree a process deployed, and its validation.
//! - `snapshot`: the stored format of an instance (what survives a
//!   persistence point). API boundary: existing data directories hold it.
//! - `contract`: what the driver feeds the machine and what it gets back,
//!   including the `PersistencePoint` it commits. API boundary.
//! - `machine`: the interpreter, `Machine`, one file per activity family.
//! - `from_wit`: the `definition_from_wit!` macro, the one conversion from a
//!   component's WIT definition types to `Definition` (host and testkit).

pub mod contract;
pub mod definition;
mod from_wit;
pub mod machine;
pub mod migration;
pub mod snapshot;

pub use contract::{
    Control, Delivery, Effect, HandlerCall, HandlerOutput, Input, PersistencePoint, Reason, ResourceAccesses, ResourceRead, ResourceWrite, Wait,
    Yield,
};
pub use definition::{Activity, CorrelationSet, Definition, Node, NodeId, ProcessKind, Target, Transaction, WaitFor};
pub use machine::{correlation_values, Machine, CANCELLED};
pub use snapshot::{Fault, FaultRecord, Frame, Phase, RetryPoint, Snapshot, Status};

#[cfg(test)]
mod tests;

#[cfg(test)]
mod fuzz_regressions;

#[cfg(test)]
mod language_tests;
