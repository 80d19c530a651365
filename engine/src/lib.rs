//! The engine: a pure state machine over process instances.
//!
//! `(snapshot, input) -> (snapshot, effects, yield)`. Architecture invariant:
//! this module never imports wasmtime, tokio, rocksdb or an HTTP crate. Time
//! and ids enter as fields of inputs; handler calls and commits leave as
//! `Yield`s that the driver (`crate::host`) carries out.

pub mod definition;
pub mod machine;

pub use definition::{Activity, CorrelationSet, Definition, Node, NodeId, ProcessKind, Target, Transaction, WaitFor};
pub use machine::{
    correlation_values, Control, Delivery, Effect, Fault, FaultRecord, HandlerCall, HandlerOutput, Input, Machine, Phase, Reason,
    Snapshot, Status, Wait, Yield,
};

#[cfg(test)]
mod tests;
