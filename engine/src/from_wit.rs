//! The one converter from a process component's definition, as the WIT
//! types of `cairn:process/types` carry it, to the engine's [`Definition`].
//!
//! Two code generators make Rust types from that WIT: wasmtime's `bindgen!`
//! in the host (what `describe` returns from a component) and wit-bindgen's
//! `generate!` in the guest SDK (what `cairn-testkit` gets when it runs the
//! SDK's builder natively). They are distinct types with the same names and
//! shapes, sharing no trait, so the conversion is a macro instantiated over
//! each generated `types` module. The host also instantiates it over the
//! first release of the world (`wit/process-legacy`), whose definitions have
//! none of the later constructs.
//!
//! [`Definition`]: crate::Definition

/// Defines `fn NAME(d: WIT::Definition) -> cairn_engine::Definition`, where
/// `WIT` is a module in scope holding the generated types of
/// `cairn:process/types` (of `wit/process`), e.g.
/// `use cairn_guest::bindings::cairn::process::types as wit;
/// cairn_engine::definition_from_wit!(fn definition_from_wit(wit));`.
/// `legacy fn NAME(WIT)` does the same for the types of the first release
/// (`wit/process-legacy`).
#[macro_export]
macro_rules! definition_from_wit {
    ($vis:vis fn $name:ident($wit:ident)) => {
        $crate::__definition_from_wit! {
            $vis fn $name($wit);
            fault_condition: |h| h.condition;
            events: |sc| sc
                .events
                .into_iter()
                .map(|e| $crate::definition::EventHandler {
                    trigger: match e.trigger {
                        $wit::EventTrigger::Message(m) => $crate::definition::EventTrigger::Message {
                            operation: m.operation,
                            correlation: m.correlation,
                            reader: m.reader,
                        },
                        $wit::EventTrigger::AfterMs(ms) => $crate::definition::EventTrigger::AfterMs(ms),
                        $wit::EventTrigger::Deadline(h) => $crate::definition::EventTrigger::Deadline(h),
                        $wit::EventTrigger::EveryMs(ms) => $crate::definition::EventTrigger::EveryMs(ms),
                    },
                    body: e.body,
                })
                .collect();
            completion: |f| f.completion;
            later_activities: {
                $wit::Activity::CreatingPick(branches) => $crate::Activity::Pick { branches: pick_branches(branches), creates_instance: true },
                $wit::Activity::RepeatUntil(w) => $crate::Activity::RepeatUntil { condition: w.condition, body: w.body },
                $wit::Activity::Switch(sw) => $crate::Activity::Switch {
                    cases: sw.cases.into_iter().map(|c| $crate::definition::SwitchCase { condition: c.condition, body: c.body }).collect(),
                    otherwise: sw.otherwise,
                },
            }
        }
    };
    (legacy $vis:vis fn $name:ident($wit:ident)) => {
        $crate::__definition_from_wit! {
            $vis fn $name($wit);
            fault_condition: |h| None;
            events: |sc| Vec::new();
            completion: |f| None;
            later_activities: {}
        }
    };
}

/// The conversion both worlds share; `definition_from_wit!` fills in what
/// the later world added (a fault handler's condition, a scope's event
/// handlers, a for-each's completion condition, the later activities).
#[doc(hidden)]
#[macro_export]
macro_rules! __definition_from_wit {
    (
        $vis:vis fn $name:ident($wit:ident);
        fault_condition: |$h:ident| $condition:expr;
        events: |$sc:ident| $events:expr;
        completion: |$f:ident| $completion:expr;
        later_activities: { $($later:tt)* }
    ) => {
        $vis fn $name(d: $wit::Definition) -> $crate::Definition {
            use $crate::definition::{PickBranch, PickTrigger, Property, ReceiveTimeout};
            fn pick_branches(branches: Vec<$wit::PickBranch>) -> Vec<PickBranch> {
                branches
                    .into_iter()
                    .map(|b| PickBranch {
                        trigger: match b.trigger {
                            $wit::PickTrigger::Message(m) => {
                                PickTrigger::Message { operation: m.operation, correlation: m.correlation, reader: m.reader }
                            }
                            $wit::PickTrigger::AfterMs(ms) => PickTrigger::AfterMs(ms),
                        },
                        body: b.body,
                    })
                    .collect()
            }
            let target = |t: $wit::Target| match t {
                $wit::Target::Activity(n) => $crate::Target::Activity(n),
                $wit::Target::Process(n) => $crate::Target::Process(n),
            };
            let nodes = d
                .nodes
                .into_iter()
                .map(|n| $crate::Node {
                    name: n.name,
                    transaction: match n.transaction {
                        $wit::Transaction::Default => $crate::Transaction::Default,
                        $wit::Transaction::CommitBefore => $crate::Transaction::CommitBefore,
                        $wit::Transaction::CommitAfter => $crate::Transaction::CommitAfter,
                        $wit::Transaction::Participates => $crate::Transaction::Participates,
                        $wit::Transaction::RequiresOwn => $crate::Transaction::RequiresOwn,
                    },
                    activity: match n.activity {
                        $wit::Activity::Sequence(children) => $crate::Activity::Sequence { children },
                        $wit::Activity::Snippet(handler) => $crate::Activity::Snippet { handler },
                        $wit::Activity::IfElse(i) => $crate::Activity::IfElse {
                            condition: i.condition,
                            then_branch: i.then_branch,
                            else_branch: i.else_branch,
                        },
                        $wit::Activity::WhileLoop(w) => $crate::Activity::While { condition: w.condition, body: w.body },
                        $wit::Activity::Receive(r) => $crate::Activity::Receive {
                            operation: r.operation,
                            correlation: r.correlation,
                            creates_instance: r.creates_instance,
                            request_response: r.request_response,
                            reader: r.reader,
                            timeout: r.timeout.map(|t| ReceiveTimeout { deadline: t.deadline, on_timeout: t.on_timeout }),
                        },
                        $wit::Activity::Reply(r) => $crate::Activity::Reply { operation: r.operation, body: r.body },
                        $wit::Activity::Invoke(i) => $crate::Activity::Invoke {
                            target: target(i.target),
                            operation: i.operation,
                            input: i.input,
                            output: i.output,
                            policy: $crate::definition::InvokePolicy {
                                idempotent: i.policy.idempotent,
                                retry_on_recovery: i.policy.retry_on_recovery,
                                retry: i.policy.retry.map(|r| $crate::definition::RetryPolicy {
                                    max_attempts: r.max_attempts.max(1),
                                    initial_backoff_ms: r.initial_backoff_ms,
                                    max_backoff_ms: r.max_backoff_ms,
                                    faults: r.faults,
                                }),
                                timeout_ms: i.policy.timeout_ms,
                            },
                        },
                        $wit::Activity::Send(s) => {
                            $crate::Activity::Send { target: target(s.target), operation: s.operation, body: s.body }
                        }
                        $wit::Activity::Wait(w) => $crate::Activity::Wait {
                            wait: match w {
                                $wit::WaitNode::DurationMs(ms) => $crate::WaitFor::DurationMs(ms),
                                $wit::WaitNode::Deadline(h) => $crate::WaitFor::Deadline(h),
                            },
                        },
                        $wit::Activity::Throw(t) => $crate::Activity::Throw { fault: t.fault, message: t.message, data: t.data },
                        $wit::Activity::Terminate => $crate::Activity::Terminate,
                        $wit::Activity::Scope($sc) => $crate::Activity::Scope {
                            body: $sc.body,
                            atomic: $sc.atomic.map(|a| $crate::definition::AtomicPolicy {
                                max_attempts: a.max_attempts.max(1),
                                backoff_ms: a.backoff_ms,
                            }),
                            handlers: $sc
                                .handlers
                                .into_iter()
                                .map(|$h| $crate::definition::FaultHandler {
                                    condition: $condition,
                                    fault: $h.fault,
                                    reader: $h.reader,
                                    body: $h.body,
                                })
                                .collect(),
                            compensation: $sc.compensation,
                            timeout_ms: $sc.timeout_ms,
                            events: $events,
                        },
                        $wit::Activity::Compensate(scope) => $crate::Activity::Compensate { scope },
                        $wit::Activity::Rethrow => $crate::Activity::Rethrow,
                        $wit::Activity::Suspend(reason) => $crate::Activity::Suspend { reason },
                        $wit::Activity::Flow(branches) => $crate::Activity::Flow { branches },
                        $wit::Activity::ForEach($f) => $crate::Activity::ForEach {
                            completion: $completion,
                            items: $f.items,
                            parallel: $f.parallel,
                            body: $f.body,
                        },
                        $wit::Activity::Pick(branches) => $crate::Activity::Pick { branches: pick_branches(branches), creates_instance: false },
                        $wit::Activity::StartProcess(sp) => $crate::Activity::StartProcess {
                            process: match sp.target {
                                $wit::Target::Process(n) | $wit::Target::Activity(n) => n,
                            },
                            operation: sp.operation,
                            body: sp.body,
                        },
                        $($later)*
                    },
                })
                .collect();
            $crate::Definition {
                name: d.name,
                kind: match d.kind {
                    $wit::ProcessKind::LongRunning => $crate::ProcessKind::LongRunning,
                    $wit::ProcessKind::Microflow => $crate::ProcessKind::Microflow,
                },
                keep_final_state: d.keep_final_state,
                deferred_recovery: d.deferred_recovery,
                initial_variables: d.initial_variables,
                correlation_sets: d
                    .correlation_sets
                    .into_iter()
                    .map(|c| $crate::CorrelationSet {
                        name: c.name,
                        properties: c.properties.into_iter().map(|p| Property { name: p.name, pointer: p.pointer }).collect(),
                    })
                    .collect(),
                nodes,
                root: d.root,
                handler_count: d.handler_count,
            }
        }
    };
}
