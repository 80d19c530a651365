//! Process definitions as the engine sees them, and their deploy-time validation.
//!
//! A definition is the activity tree a process component described at deploy,
//! as an arena of nodes with child indices (the shape it crosses WIT in).
//! It is immutable once deployed and is stored as JSON beside its component.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashSet};

pub type NodeId = u32;
pub type HandlerId = u32;

/// Most activities a definition may have.
pub const MAX_NODES: usize = 10_000;

/// Deepest nesting of activities (the root is at depth 1). The tree is
/// walked recursively, and an instance's stack is a path down it.
pub const MAX_DEPTH: usize = 64;

/// Most flows, parallel for-eachs and scopes nested in one another on one
/// path down the tree. A set-aside flow branch nests the stored snapshot's
/// JSON four levels deeper and a registered compensation two; the store
/// decodes at most 128 (serde_json's recursion limit), so an instance of a
/// deeper definition could write a snapshot it could not load again.
pub const MAX_NESTED_SCOPES_AND_FLOWS: usize = 24;

/// Longest activity path (`main/approval/wait`), in bytes: paths are part
/// of history entries, errors, breakpoints and idempotency keys.
pub const MAX_PATH_BYTES: usize = 1024;

/// Most problems one validation lists; the rest are counted.
const MAX_PROBLEMS: usize = 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProcessKind {
    LongRunning,
    Microflow,
}

/// Transactional behaviour of one activity (docs/semantics.md section 2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Transaction {
    /// The activity kind's default.
    Default,
    CommitBefore,
    CommitAfter,
    Participates,
    RequiresOwn,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Property {
    pub name: String,
    /// JSON pointer into message bodies (RFC 6901).
    pub pointer: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CorrelationSet {
    pub name: String,
    pub properties: Vec<Property>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind", content = "name")]
pub enum Target {
    Activity(String),
    Process(String),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Activity(n) => write!(f, "activity '{n}'"),
            Target::Process(n) => write!(f, "process '{n}'"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WaitFor {
    DurationMs(u64),
    /// Handler whose output is a deadline in ms since the Unix epoch.
    Deadline(HandlerId),
}

/// A receive that gives up when a deadline computed by `deadline` passes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiveTimeout {
    pub deadline: HandlerId,
    pub on_timeout: Option<HandlerId>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "type")]
pub enum Activity {
    Sequence {
        children: Vec<NodeId>,
    },
    Snippet {
        handler: HandlerId,
    },
    IfElse {
        condition: HandlerId,
        then_branch: NodeId,
        else_branch: Option<NodeId>,
    },
    While {
        condition: HandlerId,
        body: NodeId,
    },
    /// Runs `body`, then again until `condition` holds: at least once.
    RepeatUntil {
        condition: HandlerId,
        body: NodeId,
    },
    /// Runs the body of the first case whose condition holds, else
    /// `otherwise` (if any): an if / else-if chain.
    Switch {
        cases: Vec<SwitchCase>,
        otherwise: Option<NodeId>,
    },
    Receive {
        operation: String,
        correlation: Option<String>,
        creates_instance: bool,
        request_response: bool,
        reader: Option<HandlerId>,
        timeout: Option<ReceiveTimeout>,
    },
    Reply {
        operation: String,
        body: HandlerId,
    },
    Invoke {
        target: Target,
        operation: String,
        input: HandlerId,
        output: Option<HandlerId>,
        #[serde(default)]
        policy: InvokePolicy,
    },
    Send {
        target: Target,
        operation: String,
        body: HandlerId,
    },
    Wait {
        wait: WaitFor,
    },
    Throw {
        fault: String,
        message: String,
        data: Option<HandlerId>,
    },
    Terminate,
    /// A scope: long-running, or atomic when `atomic` holds its retry policy.
    Scope {
        body: NodeId,
        atomic: Option<AtomicPolicy>,
        handlers: Vec<FaultHandler>,
        /// Handler run as `(current variables, variables at scope end)` when
        /// the completed scope is compensated.
        compensation: Option<HandlerId>,
        /// A long-running scope's deadline, from its start: when it passes
        /// the scope faults with `cairn.scope-timeout`.
        #[serde(default)]
        timeout_ms: Option<u64>,
        /// Event handlers: they run beside the body and end with it.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        events: Vec<EventHandler>,
    },
    /// Compensates completed inner scopes (all, newest first, inside-out),
    /// or only the named one.
    Compensate {
        scope: Option<String>,
    },
    /// Raises again the fault the enclosing fault handler caught.
    Rethrow,
    /// Suspends the instance until an operator resumes it.
    Suspend {
        reason: String,
    },
    /// Starts an instance of `process` with a message of `operation` that
    /// must create it; the child runs on its own.
    StartProcess {
        process: String,
        operation: String,
        body: HandlerId,
    },
    /// Waits for the first of several messages and timers, and runs its branch.
    Pick {
        branches: Vec<PickBranch>,
        /// Its messages create instances (it must be a start activity).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        creates_instance: bool,
    },
    /// Runs branches in parallel within the instance; joins when all finish.
    Flow {
        branches: Vec<NodeId>,
    },
    /// Runs `body` once per element of the JSON array at pointer `items` in
    /// the variables (taken when it starts), one after another or in parallel.
    ForEach {
        items: String,
        parallel: bool,
        body: NodeId,
        /// Condition checked after each iteration: once it holds, the
        /// for-each ends (in parallel, its unfinished iterations are cancelled).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        completion: Option<HandlerId>,
    },
}

/// One case of a switch: its body runs if its condition is the first to hold.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwitchCase {
    pub condition: HandlerId,
    pub body: NodeId,
}

/// An event handler of a scope (or of the process: of its root scope). It
/// runs its body each time its trigger fires while the scope's body runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventHandler {
    pub trigger: EventTrigger,
    pub body: NodeId,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventTrigger {
    /// A message of `operation`, correlated like a receive; fires for every
    /// such message while the scope runs (one body at a time).
    Message { operation: String, correlation: Option<String>, reader: Option<HandlerId> },
    /// Once, this long after the scope starts.
    AfterMs(u64),
    /// Once, at the deadline a handler computes (ms since the Unix epoch)
    /// when the scope starts.
    Deadline(HandlerId),
    /// Repeatedly: this long after the scope starts, and after each run.
    EveryMs(u64),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PickBranch {
    pub trigger: PickTrigger,
    pub body: NodeId,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PickTrigger {
    Message { operation: String, correlation: Option<String>, reader: Option<HandlerId> },
    AfterMs(u64),
}

/// How an invoke is performed: idempotency, retries and a time limit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvokePolicy {
    pub idempotent: bool,
    pub retry_on_recovery: bool,
    pub retry: Option<RetryPolicy>,
    pub timeout_ms: Option<u64>,
}

impl Default for InvokePolicy {
    fn default() -> InvokePolicy {
        InvokePolicy { idempotent: true, retry_on_recovery: false, retry: None, timeout_ms: None }
    }
}

impl InvokePolicy {
    /// Whether a call found in flight after a crash is held for an operator.
    pub fn held_on_recovery(&self) -> bool {
        !self.idempotent && !self.retry_on_recovery
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub initial_backoff_ms: u64,
    pub max_backoff_ms: u64,
    /// Fault names that retry; empty retries every fault.
    pub faults: Vec<String>,
}

impl RetryPolicy {
    /// The wait before attempt `next` (2, 3, ...), if `fault` after attempt
    /// `next - 1` is worth retrying. Nothing comes before attempt 1 (or 0).
    pub fn backoff(&self, next: u32, fault: &str) -> Option<u64> {
        if next < 2 || next > self.max_attempts || !(self.faults.is_empty() || self.faults.iter().any(|f| f == fault)) {
            return None;
        }
        let doubled = self.initial_backoff_ms.saturating_mul(1 << (next - 2).min(30));
        Some(doubled.min(self.max_backoff_ms.max(self.initial_backoff_ms)))
    }
}

/// How an atomic scope retries after a fault: `max_attempts` in all, waiting
/// `backoff_ms` before the second, twice that before the third, and so on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AtomicPolicy {
    pub max_attempts: u32,
    pub backoff_ms: u64,
}

/// A fault handler of a scope: catches by fault name, or every fault.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultHandler {
    /// `None` catches all.
    pub fault: Option<String>,
    /// Condition on the fault (its JSON, as the message): the handler
    /// catches only if it holds. A handler with one is more specific than
    /// one without for the same name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<HandlerId>,
    /// Handler that receives the fault (name, message, data) as its message.
    pub reader: Option<HandlerId>,
    pub body: Option<NodeId>,
}

impl Activity {
    pub fn kind_name(&self) -> &'static str {
        match self {
            Activity::Sequence { .. } => "sequence",
            Activity::Snippet { .. } => "snippet",
            Activity::IfElse { .. } => "if",
            Activity::While { .. } => "while",
            Activity::RepeatUntil { .. } => "repeat-until",
            Activity::Switch { .. } => "switch",
            Activity::Receive { .. } => "receive",
            Activity::Reply { .. } => "reply",
            Activity::Invoke { .. } => "invoke",
            Activity::Send { .. } => "send",
            Activity::Wait { .. } => "wait",
            Activity::Throw { .. } => "throw",
            Activity::Terminate => "terminate",
            Activity::Scope { .. } => "scope",
            Activity::Compensate { .. } => "compensate",
            Activity::Rethrow => "rethrow",
            Activity::Suspend { .. } => "suspend",
            Activity::StartProcess { .. } => "start-process",
            Activity::Pick { .. } => "pick",
            Activity::Flow { .. } => "flow",
            Activity::ForEach { .. } => "for-each",
        }
    }

    /// Child nodes in execution order.
    pub fn children(&self) -> Vec<NodeId> {
        match self {
            Activity::Sequence { children } => children.clone(),
            Activity::IfElse { then_branch, else_branch, .. } => {
                let mut c = vec![*then_branch];
                c.extend(else_branch);
                c
            }
            Activity::While { body, .. } | Activity::RepeatUntil { body, .. } => vec![*body],
            Activity::Switch { cases, otherwise } => {
                let mut c: Vec<NodeId> = cases.iter().map(|c| c.body).collect();
                c.extend(otherwise);
                c
            }
            Activity::Pick { branches, .. } => branches.iter().map(|b| b.body).collect(),
            Activity::Flow { branches } => branches.clone(),
            Activity::ForEach { body, .. } => vec![*body],
            Activity::Scope { body, handlers, events, .. } => {
                let mut c = vec![*body];
                c.extend(handlers.iter().filter_map(|h| h.body));
                c.extend(events.iter().map(|e| e.body));
                c
            }
            _ => Vec::new(),
        }
    }

    fn handlers(&self) -> Vec<HandlerId> {
        match self {
            Activity::Snippet { handler } => vec![*handler],
            Activity::IfElse { condition, .. } | Activity::While { condition, .. } | Activity::RepeatUntil { condition, .. } => {
                vec![*condition]
            }
            Activity::Switch { cases, .. } => cases.iter().map(|c| c.condition).collect(),
            Activity::ForEach { completion, .. } => completion.iter().copied().collect(),
            Activity::Receive { reader, timeout, .. } => {
                let mut h: Vec<HandlerId> = reader.iter().copied().collect();
                if let Some(t) = timeout {
                    h.push(t.deadline);
                    h.extend(t.on_timeout);
                }
                h
            }
            Activity::Reply { body, .. } | Activity::Send { body, .. } | Activity::StartProcess { body, .. } => vec![*body],
            Activity::Invoke { input, output, .. } => {
                let mut h = vec![*input];
                h.extend(output);
                h
            }
            Activity::Wait { wait: WaitFor::Deadline(h) } => vec![*h],
            Activity::Throw { data, .. } => data.iter().copied().collect(),
            Activity::Pick { branches, .. } => branches
                .iter()
                .filter_map(|b| match &b.trigger {
                    PickTrigger::Message { reader, .. } => *reader,
                    PickTrigger::AfterMs(_) => None,
                })
                .collect(),
            Activity::Scope { handlers, compensation, events, .. } => {
                let mut h: Vec<HandlerId> = handlers.iter().flat_map(|f| f.reader.into_iter().chain(f.condition)).collect();
                h.extend(compensation);
                for e in events {
                    match &e.trigger {
                        EventTrigger::Message { reader: Some(r), .. } | EventTrigger::Deadline(r) => h.push(*r),
                        _ => {}
                    }
                }
                h
            }
            _ => Vec::new(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub name: String,
    pub activity: Activity,
    pub transaction: Transaction,
}

/// Where persistence points fall around one activity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Commits {
    pub before: bool,
    pub after: bool,
}

impl Node {
    /// The activity's transactional behaviour with its kind's default applied.
    pub fn commits(&self) -> Commits {
        // A non-idempotent call's result is persisted at once (rule 8).
        let non_idempotent = matches!(&self.activity, Activity::Invoke { policy, .. } if !policy.idempotent);
        let effective = match self.transaction {
            Transaction::Default => match self.activity {
                // A long-running scope persists at its end (rule 1).
                Activity::Receive { .. } | Activity::Invoke { .. } | Activity::Scope { .. } => Transaction::CommitAfter,
                Activity::Wait { .. } | Activity::Suspend { .. } | Activity::Pick { .. } => Transaction::CommitBefore,
                _ => Transaction::Participates,
            },
            t => t,
        };
        let commits = match effective {
            Transaction::CommitBefore => Commits { before: true, after: false },
            Transaction::CommitAfter => Commits { before: false, after: true },
            Transaction::RequiresOwn => Commits { before: true, after: true },
            Transaction::Participates | Transaction::Default => Commits { before: false, after: false },
        };
        Commits { after: commits.after || non_idempotent, ..commits }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Definition {
    pub name: String,
    pub kind: ProcessKind,
    /// Whether a completed microflow's final state is stored.
    #[serde(default = "keep_by_default")]
    pub keep_final_state: bool,
    /// After a crash, in-flight instances wait for an operator to resubmit them.
    #[serde(default)]
    pub deferred_recovery: bool,
    /// JSON text of the variables a new instance starts with.
    pub initial_variables: String,
    pub correlation_sets: Vec<CorrelationSet>,
    pub nodes: Vec<Node>,
    pub root: NodeId,
    pub handler_count: u32,
}

fn keep_by_default() -> bool {
    true
}

/// A receive through which messages reach instances of a definition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subscription {
    pub operation: String,
    pub correlation: Option<String>,
    pub creates_instance: bool,
}

impl Definition {
    pub fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id as usize]
    }

    pub fn correlation_set(&self, name: &str) -> Option<&CorrelationSet> {
        self.correlation_sets.iter().find(|c| c.name == name)
    }

    /// Every receive of the definition, in tree order, with the message
    /// branches of picks and the message event handlers of scopes.
    pub fn subscriptions(&self) -> Vec<Subscription> {
        let mut subs = Vec::new();
        self.walk(self.root, &mut |_, _, node| subs.extend(node_subscriptions(&node.activity)));
        subs
    }

    /// The ways a message creates an instance: the instance-creating
    /// receives and the message branches of an instance-creating pick.
    pub fn creating_subscriptions(&self) -> Vec<Subscription> {
        self.subscriptions().into_iter().filter(|s| s.creates_instance).collect()
    }

    /// How many instance-creating receives the definition has: with more
    /// than one (in a flow), the messages after the first route to the
    /// instance it created.
    pub fn creating_receive_count(&self) -> usize {
        self.nodes.iter().filter(|n| matches!(n.activity, Activity::Receive { creates_instance: true, .. })).count()
    }

    /// The activities that may run first: through the first child of a
    /// sequence, the body of a scope and every branch of a flow.
    pub fn start_activities(&self) -> Vec<NodeId> {
        let mut out = Vec::new();
        let mut stack = vec![self.root];
        while let Some(id) = stack.pop() {
            out.push(id);
            match &self.node(id).activity {
                Activity::Sequence { children } => stack.extend(children.first()),
                Activity::Scope { body, .. } => stack.push(*body),
                Activity::Flow { branches } => stack.extend(branches),
                _ => {}
            }
        }
        out
    }

    /// The instance-creating receive, if the definition starts with one.
    pub fn creating_receive(&self) -> Option<(NodeId, &Node)> {
        let mut id = self.root;
        loop {
            let node = self.node(id);
            match &node.activity {
                Activity::Sequence { children } if !children.is_empty() => id = children[0],
                Activity::Receive { creates_instance: true, .. } => return Some((id, node)),
                _ => return None,
            }
        }
    }

    /// Visits every node below `id` in tree order with its activity path.
    fn walk<'a>(&'a self, id: NodeId, f: &mut dyn FnMut(&str, NodeId, &'a Node)) {
        self.walk_path(id, "", f)
    }

    fn walk_path<'a>(&'a self, id: NodeId, parent: &str, f: &mut dyn FnMut(&str, NodeId, &'a Node)) {
        let node = self.node(id);
        let path = if parent.is_empty() { node.name.clone() } else { format!("{parent}/{}", node.name) };
        f(&path, id, node);
        for child in node.activity.children() {
            self.walk_path(child, &path, f);
        }
    }

    /// The trigger of the event handler whose body is `body`, if it is one.
    pub fn event_trigger(&self, body: NodeId) -> Option<&EventTrigger> {
        self.nodes.iter().find_map(|n| match &n.activity {
            Activity::Scope { events, .. } => events.iter().find(|e| e.body == body).map(|e| &e.trigger),
            _ => None,
        })
    }

    /// Every activity path of the definition, in tree order.
    pub fn paths(&self) -> Vec<String> {
        let mut out = Vec::new();
        self.walk(self.root, &mut |path, _, _| out.push(path.to_string()));
        out
    }

    /// Marks every node below the given roots (included): one walk, however
    /// many roots share a subtree's nodes.
    fn below(&self, roots: impl IntoIterator<Item = NodeId>) -> Vec<bool> {
        let mut marked = vec![false; self.nodes.len()];
        let mut stack: Vec<NodeId> = roots.into_iter().collect();
        while let Some(n) = stack.pop() {
            if !std::mem::replace(&mut marked[n as usize], true) {
                stack.extend(self.node(n).activity.children());
            }
        }
        marked
    }

    /// Deploy-time validation: structure first (so the walk below is safe),
    /// then the semantic rules of docs/semantics.md section 2.
    pub fn validate(&self) -> Result<(), String> {
        if self.name.is_empty()
            || !self.name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(format!(
                "process name '{}' must be non-empty and use only letters, digits, '-', '_' and '.'",
                self.name
            ));
        }
        if serde_json::from_str::<serde_json::Value>(&self.initial_variables).is_err() {
            return Err("initial variables are not valid JSON".into());
        }
        self.validate_structure()?;
        let mut problems = Vec::new();
        let starts = self.start_activities();
        let creating = self.creating_subscriptions();
        // Correlation sets an instance-creating message initialises: the
        // only way a set gets its values.
        let initialised: HashSet<&str> = creating.iter().filter_map(|s| s.correlation.as_deref()).collect();
        // Several instance-creating receives (in a flow): the first message
        // creates the instance, the others must route to it by the set it
        // initialised. (A creating pick's branches are alternatives: one
        // message takes it, so they may name different sets.)
        let creating_receives: Vec<(&str, Option<&str>)> = self
            .nodes
            .iter()
            .filter_map(|n| match &n.activity {
                Activity::Receive { operation, correlation, creates_instance: true, .. } => Some((operation.as_str(), correlation.as_deref())),
                _ => None,
            })
            .collect();
        if creating_receives.len() > 1 {
            let sets: BTreeSet<Option<&str>> = creating_receives.iter().map(|(_, c)| *c).collect();
            if sets.len() != 1 || sets.contains(&None) {
                problems.push(format!(
                    "the process has {} instance-creating receives (operations {}); each must name a correlation set, the same one, so that the messages after the first route to the instance it created",
                    creating_receives.len(),
                    creating_receives.iter().map(|(o, _)| format!("'{o}'")).collect::<Vec<_>>().join(", ")
                ));
            }
        }
        let violation = |at: &str, set: &str| {
            format!(
                "{at}: waits on correlation set '{set}', which nothing before it can have initialised (a set gets its values from the message that creates the instance, and no instance-creating receive or pick uses '{set}')"
            )
        };
        let request_ops: BTreeSet<String> = self
            .nodes
            .iter()
            .filter_map(|n| match &n.activity {
                Activity::Receive { operation, request_response: true, .. } => Some(operation.clone()),
                _ => None,
            })
            .collect();
        for set in &self.correlation_sets {
            if set.properties.is_empty() {
                problems.push(format!("correlation set '{}' has no properties", set.name));
            }
            for p in &set.properties {
                if !(p.pointer.is_empty() || p.pointer.starts_with('/')) {
                    problems.push(format!(
                        "correlation set '{}': property '{}' has pointer '{}', which is not a JSON pointer (it must start with '/')",
                        set.name, p.name, p.pointer
                    ));
                }
            }
        }
        let mut visited: Vec<(String, NodeId)> = Vec::new();
        self.walk(self.root, &mut |path, id, _| visited.push((path.to_string(), id)));
        // Everything inside an atomic scope, and inside a fault handler's body.
        let in_atomic = self.below(visited.iter().flat_map(|(_, id)| match &self.node(*id).activity {
            Activity::Scope { atomic: Some(_), .. } => self.node(*id).activity.children(),
            _ => Vec::new(),
        }));
        let in_fault_handler = self.below(visited.iter().flat_map(|(_, id)| match &self.node(*id).activity {
            Activity::Scope { handlers, .. } => handlers.iter().filter_map(|h| h.body).collect(),
            _ => Vec::new(),
        }));
        let scope_names: HashSet<&str> =
            self.nodes.iter().filter(|n| matches!(n.activity, Activity::Scope { .. })).map(|n| n.name.as_str()).collect();
        for (path, id) in &visited {
            let node = self.node(*id);
            let at = format!("activity '{path}' ({})", node.activity.kind_name());
            if in_atomic[*id as usize] {
                match &node.activity {
                    Activity::Receive { .. } | Activity::Wait { .. } | Activity::Suspend { .. } | Activity::Pick { .. } => {
                        problems.push(format!("{at}: an atomic scope cannot wait (it holds one transaction)"))
                    }
                    Activity::Scope { atomic: None, .. } => {
                        problems.push(format!("{at}: a long-running scope cannot be inside an atomic scope"))
                    }
                    _ => {}
                }
            }
            if let Activity::Scope { atomic: Some(_), timeout_ms: Some(_), .. } = &node.activity {
                problems.push(format!("{at}: an atomic scope takes no timeout (it cannot wait; its calls have their own)"));
            }
            match &node.activity {
                Activity::Rethrow if !in_fault_handler[*id as usize] => {
                    problems.push(format!("{at}: rethrow outside a fault handler has no fault to raise"))
                }
                Activity::Receive { operation, correlation, creates_instance, .. } => {
                    if operation.is_empty() {
                        problems.push(format!("{at}: operation name is empty"));
                    }
                    if let Some(c) = correlation {
                        if self.correlation_set(c).is_none() {
                            problems.push(format!("{at}: correlation set '{c}' is not declared"));
                        }
                    } else if !creates_instance {
                        problems.push(format!(
                            "{at}: operation '{operation}' has no correlation set and does not create instances, so no message could ever reach it"
                        ));
                    }
                    if *creates_instance && !starts.contains(id) {
                        problems.push(format!(
                            "{at}: an instance-creating receive must be the first activity of the process (or of a branch of a flow that is)"
                        ));
                    }
                    if let (Some(c), false) = (correlation, creates_instance) {
                        if self.correlation_set(c).is_some() && !initialised.contains(c.as_str()) {
                            problems.push(violation(&at, c));
                        }
                    }
                    if self.kind == ProcessKind::Microflow && !creates_instance {
                        problems.push(format!("{at}: a microflow cannot wait for a message"));
                    }
                }
                Activity::Reply { operation, .. } if !request_ops.contains(operation) => {
                    problems.push(format!("{at}: no request-response receive of operation '{operation}' to reply to"));
                }
                Activity::Pick { branches, creates_instance } => {
                    if self.kind == ProcessKind::Microflow {
                        problems.push(format!("{at}: a microflow cannot wait"));
                    }
                    if *creates_instance && !starts.contains(id) {
                        problems.push(format!(
                            "{at}: an instance-creating pick must be the first activity of the process (or of a branch of a flow that is)"
                        ));
                    }
                    if *creates_instance && branches.iter().any(|b| !matches!(b.trigger, PickTrigger::Message { .. })) {
                        problems.push(format!("{at}: an instance-creating pick waits for messages only (no instance exists to set a timer)"));
                    }
                    if branches.is_empty() {
                        problems.push(format!("{at}: a pick needs at least one branch"));
                    }
                    for b in branches {
                        if let PickTrigger::Message { operation, correlation, .. } = &b.trigger {
                            match correlation {
                                None if !creates_instance => problems.push(format!(
                                    "{at}: branch on '{operation}' has no correlation set, so no message could ever reach it"
                                )),
                                Some(c) if self.correlation_set(c).is_none() => {
                                    problems.push(format!("{at}: correlation set '{c}' is not declared"))
                                }
                                Some(c) if !creates_instance && !initialised.contains(c.as_str()) => problems.push(violation(&at, c)),
                                _ => {}
                            }
                        }
                    }
                }
                Activity::Scope { events, atomic, .. } => {
                    if !events.is_empty() && (atomic.is_some() || self.kind == ProcessKind::Microflow) {
                        problems.push(format!("{at}: event handlers wait for messages and timers, which an atomic scope or a microflow cannot"));
                    }
                    for e in events {
                        match &e.trigger {
                            EventTrigger::Message { operation, correlation, .. } => match correlation {
                                None => problems.push(format!(
                                    "{at}: event handler on '{operation}' has no correlation set, so no message could ever reach it"
                                )),
                                Some(c) if self.correlation_set(c).is_none() => {
                                    problems.push(format!("{at}: correlation set '{c}' is not declared"))
                                }
                                Some(c) if !initialised.contains(c.as_str()) => problems.push(violation(&at, c)),
                                Some(_) => {}
                            },
                            EventTrigger::EveryMs(0) => problems.push(format!("{at}: a repeating alarm needs an interval above 0 ms")),
                            _ => {}
                        }
                    }
                }
                Activity::Switch { cases, .. } if cases.is_empty() => {
                    problems.push(format!("{at}: a switch needs at least one case"));
                }
                Activity::Wait { .. } | Activity::Suspend { .. } if self.kind == ProcessKind::Microflow => {
                    problems.push(format!("{at}: a microflow cannot wait"));
                }
                Activity::Invoke { target, operation, .. } | Activity::Send { target, operation, .. } => {
                    let name = match target {
                        Target::Activity(n) | Target::Process(n) => n,
                    };
                    if name.is_empty() {
                        problems.push(format!("{at}: target name is empty"));
                    }
                    if operation.is_empty() {
                        problems.push(format!("{at}: operation name is empty"));
                    }
                }
                Activity::ForEach { items, .. } if !items.starts_with('/') => {
                    problems.push(format!("{at}: items '{items}' is not a JSON pointer into the variables (it must start with '/')"));
                }
                Activity::StartProcess { process, operation, .. } if process.is_empty() || operation.is_empty() => {
                    problems.push(format!("{at}: start-process needs a process and an operation"));
                }
                Activity::Throw { fault, .. } if fault.is_empty() => {
                    problems.push(format!("{at}: fault name is empty"));
                }
                Activity::Compensate { scope: Some(name) } if !scope_names.contains(name.as_str()) => {
                    problems.push(format!("{at}: there is no scope named '{name}' to compensate"));
                }
                _ => {}
            }
        }
        if problems.is_empty() {
            return Ok(());
        }
        let more = problems.len().saturating_sub(MAX_PROBLEMS);
        problems.truncate(MAX_PROBLEMS);
        if more > 0 {
            problems.push(format!("and {more} more problems"));
        }
        Err(problems.join("; "))
    }

    fn validate_structure(&self) -> Result<(), String> {
        if self.nodes.len() > MAX_NODES {
            return Err(format!("the definition has {} activities; at most {MAX_NODES} are allowed", self.nodes.len()));
        }
        let count = self.nodes.len() as u32;
        if self.root >= count {
            return Err(format!("root node {} does not exist ({count} nodes)", self.root));
        }
        for (i, node) in self.nodes.iter().enumerate() {
            if node.name.is_empty() || node.name.contains('/') {
                return Err(format!("node {i} ({}): name must be non-empty and contain no '/'", node.activity.kind_name()));
            }
            for c in node.activity.children() {
                if c >= count {
                    return Err(format!("activity '{}': child node {c} does not exist", node.name));
                }
            }
            for h in node.activity.handlers() {
                if h >= self.handler_count {
                    return Err(format!(
                        "activity '{}': handler {h} does not exist ({} handlers)",
                        node.name, self.handler_count
                    ));
                }
            }
            let mut names = HashSet::new();
            for c in node.activity.children() {
                let child = &self.nodes[c as usize].name;
                let siblings = matches!(node.activity, Activity::Sequence { .. } | Activity::Flow { .. });
                if siblings && !names.insert(child.clone()) {
                    return Err(format!(
                        "activity '{}': two children are named '{child}'; names must be unique among siblings so that activity paths are",
                        node.name
                    ));
                }
            }
        }
        // Every node reachable from the root exactly once: a tree, no cycles.
        // Without recursion, and before anything walks the tree recursively:
        // its nesting and path lengths are bounded here.
        let mut seen = vec![false; self.nodes.len()];
        let root = self.node(self.root);
        let mut stack = vec![(self.root, 1, root.name.len(), nests(&root.activity))];
        while let Some((id, depth, path_bytes, nesting)) = stack.pop() {
            let node = self.node(id);
            if std::mem::replace(&mut seen[id as usize], true) {
                return Err(format!("activity '{}' is reached twice: the activity graph must be a tree", node.name));
            }
            if depth > MAX_DEPTH {
                return Err(format!("activity '{}' is nested {depth} deep; activities may be nested at most {MAX_DEPTH} deep", node.name));
            }
            if path_bytes > MAX_PATH_BYTES {
                return Err(format!("the activity path to '{}' is longer than {MAX_PATH_BYTES} bytes", node.name));
            }
            if nesting > MAX_NESTED_SCOPES_AND_FLOWS {
                return Err(format!(
                    "activity '{}' is inside {} nested scopes, flows and parallel for-eachs; at most {MAX_NESTED_SCOPES_AND_FLOWS} may be nested",
                    node.name,
                    nesting - nests(&node.activity)
                ));
            }
            for c in node.activity.children() {
                let child = self.node(c);
                stack.push((c, depth + 1, path_bytes + 1 + child.name.len(), nesting + nests(&child.activity)));
            }
        }
        Ok(())
    }
}

/// The messages one activity waits for.
fn node_subscriptions(activity: &Activity) -> Vec<Subscription> {
    match activity {
        Activity::Receive { operation, correlation, creates_instance, .. } => {
            vec![Subscription { operation: operation.clone(), correlation: correlation.clone(), creates_instance: *creates_instance }]
        }
        Activity::Pick { branches, creates_instance } => branches
            .iter()
            .filter_map(|b| match &b.trigger {
                PickTrigger::Message { operation, correlation, .. } => Some(Subscription {
                    operation: operation.clone(),
                    correlation: correlation.clone(),
                    creates_instance: *creates_instance,
                }),
                PickTrigger::AfterMs(_) => None,
            })
            .collect(),
        Activity::Scope { events, .. } => events
            .iter()
            .filter_map(|e| match &e.trigger {
                EventTrigger::Message { operation, correlation, .. } => {
                    Some(Subscription { operation: operation.clone(), correlation: correlation.clone(), creates_instance: false })
                }
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// Whether an activity nests what runs inside it deeper in a stored
/// snapshot: a flow or parallel for-each (its set-aside branches), or a
/// scope (its registered compensations). See `MAX_NESTED_SCOPES_AND_FLOWS`.
fn nests(activity: &Activity) -> usize {
    match activity {
        // Its event handlers are set aside like a flow's branches.
        Activity::Scope { events, .. } if !events.is_empty() => 2,
        Activity::Flow { .. } | Activity::ForEach { parallel: true, .. } | Activity::Scope { .. } => 1,
        _ => 0,
    }
}
