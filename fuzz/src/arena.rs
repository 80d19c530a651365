//! A definition arena from `arbitrary` input: the shape a component's
//! `describe` hands the host (nodes with child and handler indices), with
//! indices, names and pointers drawn from small sets so that most inputs come
//! close to valid, and some are out of range, cyclic, shared or misnamed.
//! It covers every construct of the engine's `Definition`: event handlers
//! (message and alarms), repeat-until, switch, for-each with a completion
//! condition, fault handlers with data conditions, a process scope around
//! the root (the process's own fault, compensation and event handlers),
//! several instance-creating receives and creating picks.

use arbitrary::{Arbitrary, Result, Unstructured};
use cairn_engine::definition::{
    AtomicPolicy, CorrelationSet, EventHandler, EventTrigger, FaultHandler, InvokePolicy, PickBranch, PickTrigger, Property,
    ReceiveTimeout, RetryPolicy, SwitchCase, Transaction, WaitFor,
};
use cairn_engine::{Activity, Definition, Node, ProcessKind, Target};

/// A name: mostly from a few, sometimes empty, with '/', or anything.
#[derive(Debug)]
pub struct Name(pub String);

impl<'a> Arbitrary<'a> for Name {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Name> {
        const NAMES: &[&str] = &["main", "a", "b", "c", "approve", "scope", "", "x/y", "order-1", "a.b_c"];
        Ok(Name(match u.int_in_range(0..=15u8)? {
            i @ 0..=9 => NAMES[i as usize].to_string(),
            _ => String::arbitrary(u)?,
        }))
    }
}

/// An operation or set name: a few, so that receives, replies and sets meet.
#[derive(Debug)]
pub struct Op(pub String);

impl<'a> Arbitrary<'a> for Op {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Op> {
        const OPS: &[&str] = &["submit", "approve", "cancel", "orders", ""];
        Ok(Op(match u.int_in_range(0..=7u8)? {
            i @ 0..=4 => OPS[i as usize].to_string(),
            _ => String::arbitrary(u)?,
        }))
    }
}

/// A JSON pointer: a few, some not pointers at all.
#[derive(Debug)]
pub struct Pointer(pub String);

impl<'a> Arbitrary<'a> for Pointer {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Pointer> {
        const POINTERS: &[&str] = &["/order_id", "/items", "/a/0", "", "/", "id", "/~1x/~0y"];
        Ok(Pointer(match u.int_in_range(0..=8u8)? {
            i @ 0..=6 => POINTERS[i as usize].to_string(),
            _ => String::arbitrary(u)?,
        }))
    }
}

#[derive(Debug, Arbitrary)]
pub struct ArbDefinition {
    name: Name,
    microflow: bool,
    keep_final_state: bool,
    deferred_recovery: bool,
    variables: u8,
    sets: Vec<(Op, Vec<(Name, Pointer)>)>,
    nodes: Vec<ArbNode>,
    root: u8,
    handler_count: u8,
    /// A process scope wrapped around the root: the process's handlers.
    process_scope: Option<ArbScopeHandlers>,
}

/// A scope's handlers: fault handlers (name, data condition, reader, body),
/// compensation, timeout and event handlers.
#[derive(Debug, Arbitrary)]
struct ArbScopeHandlers {
    handlers: Vec<(Option<Op>, Option<u8>, Option<u8>, Option<u8>)>,
    compensation: Option<u8>,
    timeout_ms: Option<u64>,
    events: Vec<ArbEvent>,
}

/// An event handler: its trigger and body.
#[derive(Debug, Arbitrary)]
enum ArbEvent {
    Message { operation: Op, correlation: Option<Op>, reader: Option<u8>, body: u8 },
    AfterMs(u64, u8),
    Deadline(u8, u8),
    EveryMs(u64, u8),
}

#[derive(Debug, Arbitrary)]
struct ArbNode {
    name: Name,
    activity: ArbActivity,
    transaction: u8,
}

#[derive(Debug, Arbitrary)]
enum ArbActivity {
    Sequence(Vec<u8>),
    Snippet(u8),
    IfElse(u8, u8, Option<u8>),
    While(u8, u8),
    Receive { operation: Op, correlation: Option<Op>, creates: bool, request_response: bool, reader: Option<u8>, timeout: Option<(u8, Option<u8>)> },
    Reply(Op, u8),
    Invoke { process: bool, target: Name, operation: Op, input: u8, output: Option<u8>, idempotent: bool, retry: Option<(u32, u64, u64)>, timeout_ms: Option<u64> },
    Send(bool, Name, Op, u8),
    WaitMs(u64),
    WaitDeadline(u8),
    Throw(Op, Option<u8>),
    Terminate,
    Scope { body: u8, atomic: Option<(u32, u64)>, handlers: ArbScopeHandlers },
    Compensate(Option<Name>),
    Rethrow,
    Suspend,
    StartProcess(Name, Op, u8),
    Pick(Vec<ArbPickBranch>, bool),
    Flow(Vec<u8>),
    ForEach(Pointer, bool, u8, Option<u8>),
    RepeatUntil(u8, u8),
    Switch(Vec<(u8, u8)>, Option<u8>),
}

/// A pick branch: a message trigger (operation, set, reader) or else a
/// timer of so many ms, and the body.
type ArbPickBranch = (Option<(Op, Option<Op>, Option<u8>)>, u64, u8);

const VARIABLES: &[&str] = &["{}", r#"{"items":[1,2,3],"n":0}"#, "[]", "null", "{", r#"{"items":"no"}"#];

impl ArbDefinition {
    pub fn build(self) -> Definition {
        let kind = if self.microflow { ProcessKind::Microflow } else { ProcessKind::LongRunning };
        let correlation_sets = self
                .sets
                .into_iter()
                .map(|(name, props)| CorrelationSet {
                    name: name.0,
                    properties: props.into_iter().map(|(n, p)| Property { name: n.0, pointer: p.0 }).collect(),
                })
                .collect();
        let mut nodes: Vec<Node> = self.nodes.into_iter().map(ArbNode::build).collect();
        let mut root = self.root.into();
        if let Some(process) = self.process_scope {
            nodes.push(Node { name: "process".into(), activity: process.scope(root, None), transaction: Transaction::Default });
            root = (nodes.len() - 1) as u32;
        }
        Definition {
            name: self.name.0,
            kind,
            keep_final_state: self.keep_final_state,
            deferred_recovery: self.deferred_recovery,
            initial_variables: VARIABLES[self.variables as usize % VARIABLES.len()].to_string(),
            correlation_sets,
            nodes,
            root,
            handler_count: self.handler_count.into(),
        }
    }
}

impl ArbScopeHandlers {
    fn scope(self, body: u32, atomic: Option<AtomicPolicy>) -> Activity {
        let id = u32::from;
        Activity::Scope {
            body,
            atomic,
            handlers: self
                .handlers
                .into_iter()
                .map(|(f, c, r, b)| FaultHandler { fault: f.map(|f| f.0), condition: c.map(id), reader: r.map(id), body: b.map(id) })
                .collect(),
            compensation: self.compensation.map(id),
            timeout_ms: self.timeout_ms,
            events: self.events.into_iter().map(ArbEvent::build).collect(),
        }
    }
}

impl ArbEvent {
    fn build(self) -> EventHandler {
        let (trigger, body) = match self {
            ArbEvent::Message { operation, correlation, reader, body } => {
                (EventTrigger::Message { operation: operation.0, correlation: correlation.map(|c| c.0), reader: reader.map(u32::from) }, body)
            }
            ArbEvent::AfterMs(ms, body) => (EventTrigger::AfterMs(ms), body),
            ArbEvent::Deadline(h, body) => (EventTrigger::Deadline(h.into()), body),
            ArbEvent::EveryMs(ms, body) => (EventTrigger::EveryMs(ms), body),
        };
        EventHandler { trigger, body: body.into() }
    }
}

impl ArbNode {
    fn build(self) -> Node {
        let transaction = match self.transaction % 5 {
            0 => Transaction::Default,
            1 => Transaction::CommitBefore,
            2 => Transaction::CommitAfter,
            3 => Transaction::Participates,
            _ => Transaction::RequiresOwn,
        };
        Node { name: self.name.0, activity: self.activity.build(), transaction }
    }
}

fn target(process: bool, name: Name) -> Target {
    if process {
        Target::Process(name.0)
    } else {
        Target::Activity(name.0)
    }
}

impl ArbActivity {
    fn build(self) -> Activity {
        let id = u32::from;
        match self {
            ArbActivity::Sequence(c) => Activity::Sequence { children: c.into_iter().map(id).collect() },
            ArbActivity::Snippet(h) => Activity::Snippet { handler: h.into() },
            ArbActivity::IfElse(c, t, e) => Activity::IfElse { condition: c.into(), then_branch: t.into(), else_branch: e.map(id) },
            ArbActivity::While(c, b) => Activity::While { condition: c.into(), body: b.into() },
            ArbActivity::Receive { operation, correlation, creates, request_response, reader, timeout } => Activity::Receive {
                operation: operation.0,
                correlation: correlation.map(|c| c.0),
                creates_instance: creates,
                request_response,
                reader: reader.map(id),
                timeout: timeout.map(|(d, t)| ReceiveTimeout { deadline: d.into(), on_timeout: t.map(id) }),
            },
            ArbActivity::Reply(op, b) => Activity::Reply { operation: op.0, body: b.into() },
            ArbActivity::Invoke { process, target: t, operation, input, output, idempotent, retry, timeout_ms } => Activity::Invoke {
                target: target(process, t),
                operation: operation.0,
                input: input.into(),
                output: output.map(id),
                policy: InvokePolicy {
                    idempotent,
                    retry_on_recovery: !idempotent && timeout_ms.is_some(),
                    retry: retry.map(|(max_attempts, initial_backoff_ms, max_backoff_ms)| RetryPolicy {
                        max_attempts,
                        initial_backoff_ms,
                        max_backoff_ms,
                        faults: Vec::new(),
                    }),
                    timeout_ms,
                },
            },
            ArbActivity::Send(p, t, op, b) => Activity::Send { target: target(p, t), operation: op.0, body: b.into() },
            ArbActivity::WaitMs(ms) => Activity::Wait { wait: WaitFor::DurationMs(ms) },
            ArbActivity::WaitDeadline(h) => Activity::Wait { wait: WaitFor::Deadline(h.into()) },
            ArbActivity::Throw(f, d) => Activity::Throw { fault: f.0, message: "thrown".into(), data: d.map(id) },
            ArbActivity::Terminate => Activity::Terminate,
            ArbActivity::Scope { body, atomic, handlers } => handlers.scope(
                body.into(),
                atomic.map(|(max_attempts, backoff_ms)| AtomicPolicy { max_attempts, backoff_ms: backoff_ms % 100 }),
            ),
            ArbActivity::Compensate(s) => Activity::Compensate { scope: s.map(|s| s.0) },
            ArbActivity::Rethrow => Activity::Rethrow,
            ArbActivity::Suspend => Activity::Suspend { reason: "fuzz".into() },
            ArbActivity::StartProcess(p, op, b) => Activity::StartProcess { process: p.0, operation: op.0, body: b.into() },
            ArbActivity::Pick(branches, creates_instance) => Activity::Pick {
                branches: branches
                    .into_iter()
                    .map(|(m, ms, body)| PickBranch {
                        trigger: match m {
                            Some((op, c, r)) => PickTrigger::Message { operation: op.0, correlation: c.map(|c| c.0), reader: r.map(id) },
                            None => PickTrigger::AfterMs(ms),
                        },
                        body: body.into(),
                    })
                    .collect(),
                creates_instance,
            },
            ArbActivity::Flow(b) => Activity::Flow { branches: b.into_iter().map(id).collect() },
            ArbActivity::ForEach(p, parallel, body, completion) => {
                Activity::ForEach { items: p.0, parallel, body: body.into(), completion: completion.map(id) }
            }
            ArbActivity::RepeatUntil(c, b) => Activity::RepeatUntil { condition: c.into(), body: b.into() },
            ArbActivity::Switch(cases, otherwise) => Activity::Switch {
                cases: cases.into_iter().map(|(c, b)| SwitchCase { condition: c.into(), body: b.into() }).collect(),
                otherwise: otherwise.map(id),
            },
        }
    }
}
