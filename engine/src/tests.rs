//! Unit tests of the pure engine: one per persistence-point rule of
//! docs/semantics.md section 3 that this engine implements, plus resumability,
//! validation, the persistence-point contract with the driver and the stored
//! format. No Wasm, no RocksDB: handlers are answered from a script.

use super::*;
use crate::definition::{Property, Transaction as T};

/// Builds arena definitions tersely; node names double as activity paths.
struct Tree {
    nodes: Vec<Node>,
    handlers: u32,
}

impl Tree {
    fn new() -> Tree {
        Tree { nodes: Vec::new(), handlers: 0 }
    }
    fn add(&mut self, name: &str, activity: Activity, transaction: T) -> NodeId {
        self.nodes.push(Node { name: name.into(), activity, transaction });
        (self.nodes.len() - 1) as NodeId
    }
    fn handler(&mut self) -> u32 {
        self.handlers += 1;
        self.handlers - 1
    }
    fn snippet(&mut self, name: &str, t: T) -> NodeId {
        let handler = self.handler();
        self.add(name, Activity::Snippet { handler }, t)
    }
    fn receive(&mut self, name: &str, op: &str, creates: bool) -> NodeId {
        let a = Activity::Receive {
            operation: op.into(),
            correlation: Some("order".into()),
            creates_instance: creates,
            request_response: false,
            reader: None,
            timeout: None,
        };
        self.add(name, a, T::Default)
    }
    fn invoke(&mut self, name: &str) -> NodeId {
        let input = self.handler();
        let a = Activity::Invoke {
            target: Target::Activity("pricing".into()),
            operation: "quote".into(),
            input,
            output: None,
            policy: Default::default(),
        };
        self.add(name, a, T::Default)
    }
    fn wait(&mut self, name: &str, ms: u64) -> NodeId {
        self.add(name, Activity::Wait { wait: WaitFor::DurationMs(ms) }, T::Default)
    }
    fn seq(mut self, children: Vec<NodeId>, kind: ProcessKind) -> Definition {
        let root = self.add("main", Activity::Sequence { children }, T::Default);
        Definition {
            name: "test".into(),
            kind,
            keep_final_state: true,
            deferred_recovery: false,
            initial_variables: "{}".into(),
            correlation_sets: vec![CorrelationSet {
                name: "order".into(),
                properties: vec![Property { name: "id".into(), pointer: "/id".into() }],
            }],
            nodes: self.nodes,
            root,
            handler_count: self.handlers,
        }
    }
}

/// What the driver saw, in order: `call`, `persist:<reason>`, `await:<kind>`, `finished:<reason>`.
fn trace_of(y: &Yield) -> String {
    match y {
        Yield::Call(c) => format!("call:{}", c.handler),
        Yield::Persist(r) => format!("persist:{}", reason(*r)),
        Yield::Await(Wait::Message { operation, .. }) => format!("await:message:{operation}"),
        Yield::Await(Wait::Timer { .. }) => "await:timer".into(),
        Yield::Await(Wait::Invoke { .. }) => "await:invoke".into(),
        Yield::Await(Wait::Pick { operations }) => format!("await:pick:{}", operations.join(",")),
        Yield::Await(Wait::Many(ws)) => format!("await:many:{}", ws.len()),
        Yield::Finished(r) => format!("finished:{}", reason(*r)),
        Yield::Sleep(ms) => format!("sleep:{ms}"),
        Yield::Suspended => "suspended".into(),
    }
}

fn reason(r: Reason) -> String {
    serde_json::to_value(r).unwrap().as_str().unwrap().to_string()
}

/// Drives a machine to the end: handlers append their id to `variables.log`,
/// messages and timers and invoke results arrive when awaited.
fn drive(def: &Definition) -> (Vec<String>, Snapshot) {
    drive_from(def, Snapshot::new("i1".into(), def, "v1".into(), r#"{"log":[]}"#.into(), 1000))
}

fn drive_from(def: &Definition, snap: Snapshot) -> (Vec<String>, Snapshot) {
    let mut m = Machine::new(def, snap);
    let mut trace = Vec::new();
    let mut input = Input::Continue;
    let mut now = 1000;
    for _ in 0..200 {
        let y = m.step(input, now);
        trace.push(trace_of(&y));
        input = match y {
            Yield::Call(c) => Input::Handler(Ok(run_handler(&m.snapshot().variables, c.handler))),
            Yield::Persist(_) => Input::Continue,
            Yield::Await(Wait::Message { operation, .. }) => Input::Message(Delivery {
                seq: 1,
                message_id: "m1".into(),
                operation,
                body: r#"{"id":"o-1"}"#.into(),
            }),
            Yield::Await(Wait::Timer { due_ms, .. }) => {
                now = due_ms;
                Input::Continue
            }
            Yield::Await(Wait::Invoke { call_id }) => Input::InvokeResult { call_id, result: Ok("{}".into()), resources: Default::default() },
            Yield::Sleep(_) => Input::Continue,
            Yield::Await(Wait::Pick { operations }) => Input::Message(Delivery {
                seq: 1,
                message_id: "m1".into(),
                operation: operations[0].clone(),
                body: r#"{"id":"o-1"}"#.into(),
            }),
            Yield::Suspended => Input::Control(Control::Resume),
            Yield::Await(Wait::Many(_)) => panic!("no flows here"),
            Yield::Finished(_) => return (trace, m.snapshot().clone()),
        };
    }
    panic!("did not finish: {trace:?}");
}

fn run_handler(variables: &str, handler: u32) -> HandlerOutput {
    let mut v: serde_json::Value = serde_json::from_str(variables).unwrap();
    v["log"].as_array_mut().unwrap().push(handler.into());
    HandlerOutput { variables: v.to_string(), output: Some("true".into()) }
}

#[test]
fn participating_snippets_share_one_transaction_with_no_persistence_point() {
    let mut t = Tree::new();
    let a = t.snippet("a", T::Default);
    let b = t.snippet("b", T::Participates);
    let def = t.seq(vec![a, b], ProcessKind::LongRunning);
    let (trace, snap) = drive(&def);
    assert_eq!(trace, ["call:0", "call:1", "finished:completed"]);
    assert_eq!(snap.status, Status::Completed);
    assert_eq!(snap.variables, r#"{"log":[0,1]}"#);
}

#[test]
fn commit_before_persists_before_the_activity_runs() {
    let mut t = Tree::new();
    let a = t.snippet("a", T::Default);
    let b = t.snippet("b", T::CommitBefore);
    let def = t.seq(vec![a, b], ProcessKind::LongRunning);
    let (trace, _) = drive(&def);
    assert_eq!(trace, ["call:0", "persist:commit-before", "call:1", "finished:completed"]);
}

#[test]
fn commit_after_persists_right_after_the_activity_completes() {
    let mut t = Tree::new();
    let a = t.snippet("a", T::CommitAfter);
    let b = t.snippet("b", T::Default);
    let def = t.seq(vec![a, b], ProcessKind::LongRunning);
    let (trace, _) = drive(&def);
    assert_eq!(trace, ["call:0", "persist:commit-after", "call:1", "finished:completed"]);
}

#[test]
fn requires_own_persists_before_and_after() {
    let mut t = Tree::new();
    let a = t.snippet("a", T::RequiresOwn);
    let def = t.seq(vec![a], ProcessKind::LongRunning);
    let (trace, _) = drive(&def);
    assert_eq!(trace, ["persist:commit-before", "call:0", "persist:commit-after", "finished:completed"]);
}

#[test]
fn receive_commits_after_by_default_and_consumes_the_message_in_that_batch() {
    let mut t = Tree::new();
    let r = t.receive("take", "submit", true);
    let def = t.seq(vec![r], ProcessKind::LongRunning);
    let snap = Snapshot::new("i1".into(), &def, "v1".into(), "{}".into(), 0);
    let mut m = Machine::new(&def, snap);
    assert_eq!(m.step(Input::Continue, 0), Yield::Await(Wait::Message { operation: "submit".into(), due_ms: None }));
    let d = Delivery { seq: 7, message_id: "m".into(), operation: "submit".into(), body: r#"{"id":"o-1"}"#.into() };
    assert_eq!(m.step(Input::Message(d), 0), Yield::Persist(Reason::CommitAfter));
    assert_eq!(
        m.persistence_point(Reason::CommitAfter, 0).effects,
        [
            Effect::ConsumeMessage { seq: 7 },
            Effect::Correlate { set: "order".into(), values: r#"["o-1"]"#.into() }
        ]
    );
}

#[test]
fn wait_commits_before_and_then_awaits_its_timer() {
    let mut t = Tree::new();
    let w = t.wait("pause", 500);
    let def = t.seq(vec![w], ProcessKind::LongRunning);
    let snap = Snapshot::new("i1".into(), &def, "v1".into(), "{}".into(), 0);
    let mut m = Machine::new(&def, snap);
    assert_eq!(m.step(Input::Continue, 1000), Yield::Persist(Reason::CommitBefore));
    assert_eq!(m.step(Input::Continue, 1000), Yield::Await(Wait::Timer { timer_id: 1, due_ms: 1500 }));
    assert_eq!(m.snapshot().status, Status::Waiting);
    assert_eq!(m.persistence_point(Reason::Waiting, 1000).effects, [Effect::SetTimer { timer_id: 1, due_ms: 1500 }]);
}

#[test]
fn a_timer_already_due_on_resume_fires_at_once() {
    let mut t = Tree::new();
    let w = t.wait("pause", 500);
    let def = t.seq(vec![w], ProcessKind::LongRunning);
    let mut m = Machine::new(&def, Snapshot::new("i1".into(), &def, "v1".into(), "{}".into(), 0));
    m.step(Input::Continue, 1000);
    m.step(Input::Continue, 1000);
    let persisted = m.persistence_point(Reason::Waiting, 1000).snapshot;
    // A restart long after the deadline: the same snapshot resumes past the wait.
    let mut m = Machine::new(&def, persisted);
    assert_eq!(m.step(Input::Continue, 9000), Yield::Finished(Reason::Completed));
    assert_eq!(m.persistence_point(Reason::Completed, 9000).effects, [Effect::ClearTimer { timer_id: 1, due_ms: 1500 }]);
}

#[test]
fn invoke_persists_its_outbox_entry_before_dispatch_and_commits_after_its_result() {
    let mut t = Tree::new();
    let i = t.invoke("price");
    let def = t.seq(vec![i], ProcessKind::LongRunning);
    let (trace, _) = drive(&def);
    assert_eq!(trace, ["call:0", "persist:dispatch", "await:invoke", "persist:commit-after", "finished:completed"]);

    let mut m = Machine::new(&def, Snapshot::new("i1".into(), &def, "v1".into(), "{}".into(), 0));
    m.step(Input::Continue, 0);
    let y = m.step(Input::Handler(Ok(HandlerOutput { variables: "{}".into(), output: Some("{\"n\":1}".into()) })), 0);
    assert_eq!(y, Yield::Persist(Reason::Dispatch));
    assert_eq!(
        m.persistence_point(Reason::Dispatch, 0).effects,
        [Effect::Invoke {
            call_id: 1,
            target: Target::Activity("pricing".into()),
            operation: "quote".into(),
            input: "{\"n\":1}".into(),
            idempotency_key: "i1/main/price/1".into(),
            policy: Default::default(),
        }]
    );
}

#[test]
fn an_invoke_of_a_pure_activity_takes_no_dispatch_point_and_is_pending_until_its_result() {
    let mut t = Tree::new();
    let i = t.invoke("price");
    let def = t.seq(vec![i], ProcessKind::LongRunning);
    let mut m = Machine::new(&def, Snapshot::new("i1".into(), &def, "v1".into(), "{}".into(), 0));
    m.set_pure_activities(std::sync::Arc::new(["pricing".to_string()].into()));
    m.step(Input::Continue, 0);
    let y = m.step(Input::Handler(Ok(HandlerOutput { variables: "{}".into(), output: Some("{}".into()) })), 0);
    // No dispatch point: the call is awaited at once, still pending (not in any batch).
    assert_eq!(y, Yield::Await(Wait::Invoke { call_id: 1 }));
    assert!(m.invoke_pending(1));
    let Some(Effect::Invoke { idempotency_key, .. }) = m.take_invoke(1) else { panic!("the invoke is pending") };
    assert_eq!(idempotency_key, "i1/main/price/1");
    // Its result is persisted by the invoke's own commit.
    let y = m.step(Input::InvokeResult { call_id: 1, result: Ok("{}".into()), resources: Default::default() }, 0);
    assert_eq!(y, Yield::Persist(Reason::CommitAfter));
    // Another activity still takes its dispatch point.
    let mut m = Machine::new(&def, Snapshot::new("i1".into(), &def, "v1".into(), "{}".into(), 0));
    m.set_pure_activities(std::sync::Arc::new(["other".to_string()].into()));
    m.step(Input::Continue, 0);
    let y = m.step(Input::Handler(Ok(HandlerOutput { variables: "{}".into(), output: Some("{}".into()) })), 0);
    assert_eq!(y, Yield::Persist(Reason::Dispatch));
}

#[test]
fn send_is_a_persistence_point_carrying_the_message() {
    let mut t = Tree::new();
    let body = t.handler();
    let s = t.add(
        "notify",
        Activity::Send { target: Target::Process("other".into()), operation: "note".into(), body },
        T::Default,
    );
    let def = t.seq(vec![s], ProcessKind::LongRunning);
    let (trace, _) = drive(&def);
    assert_eq!(trace, ["call:0", "persist:dispatch", "finished:completed"]);
}

#[test]
fn microflow_has_no_persistence_point_before_its_end() {
    let mut t = Tree::new();
    let r = t.receive("take", "submit", true);
    let a = t.snippet("a", T::RequiresOwn);
    let i = t.invoke("price");
    let def = t.seq(vec![r, a, i], ProcessKind::Microflow);
    let (trace, _) = drive(&def);
    assert_eq!(trace, ["await:message:submit", "call:0", "call:1", "await:invoke", "finished:completed"]);
}

#[test]
fn an_uncaught_fault_marks_the_instance_faulted_with_its_path_and_data() {
    let mut t = Tree::new();
    let a = t.snippet("a", T::Default);
    let def = t.seq(vec![a], ProcessKind::LongRunning);
    let mut m = Machine::new(&def, Snapshot::new("i1".into(), &def, "v1".into(), "{}".into(), 0));
    assert!(matches!(m.step(Input::Continue, 0), Yield::Call(_)));
    let fault = Fault { name: "invalid-order".into(), message: "no lines".into(), data: "{\"lines\":0}".into() };
    assert_eq!(m.step(Input::Handler(Err(fault.clone())), 0), Yield::Finished(Reason::Faulted));
    assert_eq!(m.snapshot().status, Status::Faulted);
    assert_eq!(m.snapshot().fault, Some(FaultRecord { fault, path: "main/a".into() }));
}

#[test]
fn throw_raises_its_named_fault() {
    let mut t = Tree::new();
    let th = t.add("boom", Activity::Throw { fault: "bad".into(), message: "went bad".into(), data: None }, T::Default);
    let def = t.seq(vec![th], ProcessKind::LongRunning);
    let (trace, snap) = drive(&def);
    assert_eq!(trace, ["finished:faulted"]);
    assert_eq!(snap.fault.unwrap().fault.name, "bad");
}

#[test]
fn terminate_ends_the_instance_and_releases_its_correlations() {
    let mut t = Tree::new();
    let r = t.receive("take", "submit", true);
    let x = t.add("stop", Activity::Terminate, T::Default);
    let after = t.snippet("never", T::Default);
    let def = t.seq(vec![r, x, after], ProcessKind::LongRunning);
    let (trace, snap) = drive(&def);
    assert_eq!(trace, ["await:message:submit", "persist:commit-after", "finished:terminated"]);
    assert_eq!(snap.status, Status::Terminated);
    assert!(snap.correlations.is_empty());
}

#[test]
fn if_and_while_follow_their_conditions() {
    let mut t = Tree::new();
    let then_s = t.snippet("yes", T::Default);
    let cond = t.handler();
    let iff = t.add("check", Activity::IfElse { condition: cond, then_branch: then_s, else_branch: None }, T::Default);
    let def = t.seq(vec![iff], ProcessKind::LongRunning);
    let (trace, _) = drive(&def);
    assert_eq!(trace, ["call:1", "call:0", "finished:completed"]);

    // A while whose condition turns false once the log holds three entries.
    let mut t = Tree::new();
    let body = t.snippet("body", T::Default);
    let cond = t.handler();
    let w = t.add("loop", Activity::While { condition: cond, body }, T::Default);
    let def = t.seq(vec![w], ProcessKind::LongRunning);
    let mut m = Machine::new(&def, Snapshot::new("i1".into(), &def, "v1".into(), r#"{"n":0}"#.into(), 0));
    let mut input = Input::Continue;
    let mut bodies = 0;
    loop {
        match m.step(input, 0) {
            Yield::Call(c) if c.handler == cond => {
                input = Input::Handler(Ok(HandlerOutput { variables: m.snapshot().variables.clone(), output: Some((bodies < 3).to_string()) }))
            }
            Yield::Call(_) => {
                bodies += 1;
                input = Input::Handler(Ok(HandlerOutput { variables: m.snapshot().variables.clone(), output: None }))
            }
            Yield::Finished(r) => {
                assert_eq!(r, Reason::Completed);
                break;
            }
            y => panic!("unexpected {y:?}"),
        }
    }
    assert_eq!(bodies, 3);
}

#[test]
fn every_persisted_snapshot_resumes_to_the_same_outcome() {
    // Crash recovery in miniature: stop after each persistence point, reload
    // the snapshot as the store would, and check the instance still finishes
    // with the same variables.
    let mut t = Tree::new();
    let r = t.receive("take", "submit", true);
    let a = t.snippet("a", T::Default);
    let i = t.invoke("price");
    let w = t.wait("pause", 10);
    let b = t.snippet("b", T::CommitAfter);
    let def = t.seq(vec![r, a, i, w, b], ProcessKind::LongRunning);
    let (_, reference) = drive(&def);

    let mut m = Machine::new(&def, Snapshot::new("i1".into(), &def, "v1".into(), r#"{"log":[]}"#.into(), 0));
    let mut persisted = Vec::new();
    let mut input = Input::Continue;
    let mut now = 1000;
    loop {
        let y = m.step(input, now);
        input = match y {
            Yield::Call(c) => Input::Handler(Ok(run_handler(&m.snapshot().variables, c.handler))),
            Yield::Persist(reason) => {
                persisted.push(m.persistence_point(reason, now).snapshot);
                Input::Continue
            }
            Yield::Await(Wait::Message { operation, .. }) => {
                Input::Message(Delivery { seq: 1, message_id: "m".into(), operation, body: r#"{"id":"o"}"#.into() })
            }
            Yield::Await(Wait::Timer { due_ms, .. }) => {
                now = due_ms;
                Input::Continue
            }
            Yield::Await(Wait::Invoke { call_id }) => Input::InvokeResult { call_id, result: Ok("{}".into()), resources: Default::default() },
            Yield::Sleep(_) => Input::Continue,
            Yield::Await(Wait::Pick { operations }) => Input::Message(Delivery {
                seq: 1,
                message_id: "m1".into(),
                operation: operations[0].clone(),
                body: r#"{"id":"o-1"}"#.into(),
            }),
            Yield::Suspended => Input::Control(Control::Resume),
            Yield::Await(Wait::Many(_)) => panic!("no flows here"),
            Yield::Finished(_) => break,
        };
    }
    assert!(persisted.len() >= 4, "expected several persistence points, saw {}", persisted.len());
    for snap in persisted {
        let (_, end) = drive_from(&def, snap);
        assert_eq!(end.variables, reference.variables);
        assert_eq!(end.status, Status::Completed);
    }
}

#[test]
fn validation_rejects_what_design_section_2_lists() {
    let mut t = Tree::new();
    let a = Activity::Receive {
        operation: "approve".into(),
        correlation: None,
        creates_instance: false,
        request_response: false,
        reader: None,
        timeout: None,
    };
    let r = t.add("lonely", a, T::Default);
    let def = t.seq(vec![r], ProcessKind::LongRunning);
    let err = def.validate().unwrap_err();
    assert!(err.contains("activity 'main/lonely' (receive)") && err.contains("no correlation set"), "{err}");

    let mut t = Tree::new();
    let body = t.handler();
    let r = t.add("answer", Activity::Reply { operation: "quote".into(), body }, T::Default);
    let err = t.seq(vec![r], ProcessKind::LongRunning).validate().unwrap_err();
    assert!(err.contains("no request-response receive of operation 'quote'"), "{err}");

    let mut t = Tree::new();
    let r = t.receive("take", "submit", true);
    let w = t.wait("pause", 5);
    let err = t.seq(vec![r, w], ProcessKind::Microflow).validate().unwrap_err();
    assert!(err.contains("activity 'main/pause' (wait): a microflow cannot wait"), "{err}");

    let mut t = Tree::new();
    let a = t.snippet("a", T::Default);
    let r = t.receive("late", "submit", true);
    let err = t.seq(vec![a, r], ProcessKind::LongRunning).validate().unwrap_err();
    assert!(err.contains("must be the first activity"), "{err}");

    let mut t = Tree::new();
    let a = t.snippet("a", T::Default);
    let b = t.snippet("a", T::Default);
    let err = t.seq(vec![a, b], ProcessKind::LongRunning).validate().unwrap_err();
    assert!(err.contains("two children are named 'a'"), "{err}");

    let mut t = Tree::new();
    let c = t.add("undo", Activity::Compensate { scope: Some("payment".into()) }, T::Default);
    let err = t.seq(vec![c], ProcessKind::LongRunning).validate().unwrap_err();
    assert!(err.contains("activity 'main/undo' (compensate): there is no scope named 'payment'"), "{err}");

    let mut t = Tree::new();
    let a = t.snippet("a", T::Default);
    let mut def = t.seq(vec![a, a], ProcessKind::LongRunning);
    def.nodes[a as usize].name = "a".into();
    assert!(def.validate().is_err());

    let mut t = Tree::new();
    let w = t.wait("pause", 5);
    let policy = definition::AtomicPolicy { max_attempts: 1, backoff_ms: 0 };
    let s = t.add("tx", Activity::Scope { body: w, atomic: Some(policy), handlers: vec![], compensation: None, timeout_ms: None, events: vec![] }, T::Default);
    let err = t.seq(vec![s], ProcessKind::LongRunning).validate().unwrap_err();
    assert!(err.contains("activity 'main/tx/pause' (wait): an atomic scope cannot wait"), "{err}");

    let mut t = Tree::new();
    let r = t.add("again", Activity::Rethrow, T::Default);
    let err = t.seq(vec![r], ProcessKind::LongRunning).validate().unwrap_err();
    assert!(err.contains("rethrow outside a fault handler"), "{err}");
}

#[test]
fn a_receive_with_a_timeout_runs_its_timeout_handler_when_the_deadline_passes_first() {
    let mut t = Tree::new();
    let deadline = t.handler();
    let on_timeout = t.handler();
    let a = Activity::Receive {
        operation: "approve".into(),
        correlation: Some("order".into()),
        creates_instance: false,
        request_response: false,
        reader: None,
        timeout: Some(definition::ReceiveTimeout { deadline, on_timeout: Some(on_timeout) }),
    };
    let r = t.add("approval", a, T::Default);
    let def = t.seq(vec![r], ProcessKind::LongRunning);
    let mut m = Machine::new(&def, correlated(Snapshot::new("i1".into(), &def, "v1".into(), "{}".into(), 0)));
    assert_eq!(m.step(Input::Continue, 0), Yield::Call(HandlerCall { handler: deadline, message: None, item: None }));
    let y = m.step(Input::Handler(Ok(HandlerOutput { variables: "{}".into(), output: Some("5000".into()) })), 0);
    assert_eq!(y, Yield::Await(Wait::Message { operation: "approve".into(), due_ms: Some(5000) }));
    // Time passes the deadline with no message: the timeout handler runs.
    assert_eq!(m.step(Input::Continue, 5000), Yield::Call(HandlerCall { handler: on_timeout, message: None, item: None }));
    let y = m.step(Input::Handler(Ok(HandlerOutput { variables: r#"{"timed_out":true}"#.into(), output: None })), 5000);
    assert_eq!(y, Yield::Persist(Reason::CommitAfter));
    assert_eq!(
        m.persistence_point(Reason::CommitAfter, 5000).effects,
        [Effect::SetTimer { timer_id: 1, due_ms: 5000 }, Effect::ClearTimer { timer_id: 1, due_ms: 5000 }]
    );
}

#[test]
fn a_faulted_instance_answers_waiting_requests_with_its_fault() {
    let mut t = Tree::new();
    let a = Activity::Receive {
        operation: "quote".into(),
        correlation: None,
        creates_instance: true,
        request_response: true,
        reader: None,
        timeout: None,
    };
    let r = t.add("take", a, T::Default);
    let th = t.add("boom", Activity::Throw { fault: "no-stock".into(), message: "none left".into(), data: None }, T::Default);
    let def = t.seq(vec![r, th], ProcessKind::LongRunning);
    let mut m = Machine::new(&def, Snapshot::new("i1".into(), &def, "v1".into(), "{}".into(), 0));
    m.step(Input::Continue, 0);
    let d = Delivery { seq: 1, message_id: "req-1".into(), operation: "quote".into(), body: "{}".into() };
    assert_eq!(m.step(Input::Message(d), 0), Yield::Persist(Reason::CommitAfter));
    m.persistence_point(Reason::CommitAfter, 0);
    assert_eq!(m.step(Input::Continue, 0), Yield::Finished(Reason::Faulted));
    let effects = m.persistence_point(Reason::Faulted, 0).effects;
    assert!(
        matches!(&effects[..], [Effect::Reply { message_id, fault: Some(f), .. }] if message_id == "req-1" && f.name == "no-stock"),
        "{effects:?}"
    );
}

/// A scope around `body` with a compensation handler.
fn scope(t: &mut Tree, name: &str, body: NodeId, handlers: Vec<definition::FaultHandler>) -> NodeId {
    let compensation = Some(t.handler());
    t.add(name, Activity::Scope { body, atomic: None, handlers, compensation, timeout_ms: None, events: vec![] }, T::Default)
}

/// Drives to the end, answering compensation handlers by appending
/// "undo <scope-variables.n>" and snippets by bumping `n`; returns the trace
/// of yields and the final snapshot.
fn drive_scopes(def: &Definition, compensations: &[u32]) -> (Vec<String>, Snapshot) {
    let snap = Snapshot::new("i1".into(), def, "v1".into(), r#"{"n":0,"trace":[]}"#.into(), 0);
    drive_scopes_from(def, snap, compensations)
}

#[test]
fn a_completed_long_running_scope_persists_and_registers_its_compensation() {
    let mut t = Tree::new();
    let a = t.snippet("a", T::Default);
    let s = scope(&mut t, "pay", a, vec![]);
    let def = t.seq(vec![s], ProcessKind::LongRunning);
    let (trace, snap) = drive_scopes(&def, &[1]);
    assert_eq!(trace, ["call:0", "persist:scope-completed", "finished:completed"]);
    assert_eq!(snap.compensations.len(), 1);
    assert_eq!(snap.compensations[0].scope, "pay");
    assert_eq!(snap.compensations[0].variables, r#"{"n":1,"trace":[]}"#);
}

#[test]
fn an_uncaught_fault_compensates_completed_inner_scopes_newest_first_and_inside_out_then_rethrows() {
    // outer { a{}; b{ b1{} }; c{ throw } } : c fails, so outer's default
    // handler undoes b1, b (inside-out), then a, each with the variables it
    // had at its end, one persistence point per step, and the fault leaves.
    let mut t = Tree::new();
    let sa = t.snippet("a-work", T::Default);
    let a = scope(&mut t, "a", sa, vec![]);
    let sb1 = t.snippet("b1-work", T::Default);
    let b1 = scope(&mut t, "b1", sb1, vec![]);
    let sb = t.snippet("b-work", T::Default);
    let b_body = t.add("b-body", Activity::Sequence { children: vec![b1, sb] }, T::Default);
    let b = scope(&mut t, "b", b_body, vec![]);
    let boom = t.add("boom", Activity::Throw { fault: "boom".into(), message: "c failed".into(), data: None }, T::Default);
    let c = scope(&mut t, "c", boom, vec![]);
    let outer_body = t.add("outer-body", Activity::Sequence { children: vec![a, b, c] }, T::Default);
    let outer = t.add("outer", Activity::Scope { body: outer_body, atomic: None, handlers: vec![], compensation: None, timeout_ms: None, events: vec![] }, T::Default);
    let def = t.seq(vec![outer], ProcessKind::LongRunning);
    let comp = [1, 3, 5, 7];
    let (trace, snap) = drive_scopes(&def, &comp);
    let v: serde_json::Value = serde_json::from_str(&snap.variables).unwrap();
    assert_eq!(v["trace"], serde_json::json!(["undo 2", "undo 3", "undo 1"]));
    assert_eq!(trace.iter().filter(|t| *t == "persist:compensated").count(), 3);
    assert_eq!(snap.status, Status::Faulted);
    let f = snap.fault.unwrap();
    assert_eq!((f.fault.name.as_str(), f.path.as_str()), ("boom", "main/outer/outer-body/c/boom"));
}

#[test]
fn a_fault_handler_catches_by_name_before_catch_all_and_receives_the_fault() {
    let mut t = Tree::new();
    let th = t.add(
        "fail",
        Activity::Throw { fault: "known".into(), message: "m".into(), data: None },
        T::Default,
    );
    let reader_all = t.handler();
    let reader_known = t.handler();
    let handlers = vec![
        definition::FaultHandler { fault: None, condition: None, reader: Some(reader_all), body: None },
        definition::FaultHandler { fault: Some("known".into()), condition: None, reader: Some(reader_known), body: None },
    ];
    let s = t.add("work", Activity::Scope { body: th, atomic: None, handlers, compensation: None, timeout_ms: None, events: vec![] }, T::Default);
    let after = t.snippet("after", T::Default);
    let def = t.seq(vec![s, after], ProcessKind::LongRunning);
    let mut m = Machine::new(&def, Snapshot::new("i1".into(), &def, "v1".into(), "{}".into(), 0));
    let y = m.step(Input::Continue, 0);
    let Yield::Call(c) = y else { panic!("{y:?}") };
    assert_eq!(c.handler, reader_known);
    let fault: serde_json::Value = serde_json::from_str(c.message.as_deref().unwrap()).unwrap();
    assert_eq!(fault["name"], "known");
    let y = m.step(Input::Handler(Ok(HandlerOutput { variables: "{}".into(), output: None })), 0);
    assert_eq!(y, Yield::Persist(Reason::ScopeCompleted), "a handled scope ends and the process goes on");
    assert!(matches!(m.step(Input::Continue, 0), Yield::Call(c) if c.handler == 2), "the activity after the scope runs");
}

#[test]
fn compensation_resumed_from_a_snapshot_does_not_run_a_step_twice() {
    let mut t = Tree::new();
    let sa = t.snippet("a-work", T::Default);
    let a = scope(&mut t, "a", sa, vec![]);
    let sb = t.snippet("b-work", T::Default);
    let b = scope(&mut t, "b", sb, vec![]);
    let comp = t.add("undo", Activity::Compensate { scope: None }, T::Default);
    let def = t.seq(vec![a, b, comp], ProcessKind::LongRunning);
    let mut m = Machine::new(&def, Snapshot::new("i1".into(), &def, "v1".into(), r#"{"n":0,"trace":[]}"#.into(), 0));
    let mut input = Input::Continue;
    let mut after_first_step = None;
    loop {
        match m.step(input, 0) {
            Yield::Call(c) => input = Input::Handler(Ok(scope_handler(&m.snapshot().variables, &c, &[1, 3]))),
            Yield::Persist(Reason::Compensated) if after_first_step.is_none() => {
                after_first_step = Some(m.persistence_point(Reason::Compensated, 0).snapshot);
                input = Input::Continue;
            }
            Yield::Persist(_) => input = Input::Continue,
            Yield::Finished(_) => break,
            y => panic!("{y:?}"),
        }
    }
    // A crash right after the first compensation step: the resumed instance
    // runs only the remaining one.
    let (_, end) = drive_scopes(&def, &[1, 3]);
    let (_, resumed) = drive_scopes_from(&def, after_first_step.unwrap(), &[1, 3]);
    assert_eq!(resumed.variables, end.variables);
    let v: serde_json::Value = serde_json::from_str(&end.variables).unwrap();
    assert_eq!(v["trace"], serde_json::json!(["undo 2", "undo 1"]));
}

/// Drives to the end, answering compensation handlers by appending
/// "undo <scope-variables.n>" and snippets by bumping `n`; returns the trace
/// of yields and the final snapshot.
fn drive_scopes_from(def: &Definition, snap: Snapshot, compensations: &[u32]) -> (Vec<String>, Snapshot) {
    let mut m = Machine::new(def, snap);
    let mut trace = Vec::new();
    let mut input = Input::Continue;
    loop {
        let y = m.step(input, 0);
        trace.push(trace_of(&y));
        input = match y {
            Yield::Call(c) => Input::Handler(Ok(scope_handler(&m.snapshot().variables, &c, compensations))),
            Yield::Persist(_) => Input::Continue,
            Yield::Finished(_) => return (trace, m.snapshot().clone()),
            y => panic!("unexpected {y:?}"),
        };
    }
}

/// A compensation handler records what it undoes; any other handler bumps `n`.
fn scope_handler(variables: &str, c: &HandlerCall, compensations: &[u32]) -> HandlerOutput {
    let mut v: serde_json::Value = serde_json::from_str(variables).unwrap();
    if compensations.contains(&c.handler) {
        let at_end: serde_json::Value = serde_json::from_str(c.message.as_deref().unwrap()).unwrap();
        v["trace"].as_array_mut().unwrap().push(format!("undo {}", at_end["n"]).into());
    } else {
        v["n"] = (v["n"].as_u64().unwrap() + 1).into();
    }
    HandlerOutput { variables: v.to_string(), output: None }
}

/// atomic scope "batch" { snippet (handler 0); send (handler 1); snippet (handler 2) },
/// the two snippets with the given transactional behaviours.
fn atomic_def(snippets: (T, T), policy: definition::AtomicPolicy) -> Definition {
    let mut t = Tree::new();
    let a = t.snippet("a", snippets.0);
    let body_h = t.handler();
    let send = t.add("tell", Activity::Send { target: Target::Process("p".into()), operation: "op".into(), body: body_h }, T::Default);
    let b = t.snippet("b", snippets.1);
    let body = t.add("body", Activity::Sequence { children: vec![a, send, b] }, T::Default);
    let scope = Activity::Scope { body, atomic: Some(policy), handlers: vec![], compensation: None, timeout_ms: None, events: vec![] };
    let s = t.add("batch", scope, T::Default);
    t.seq(vec![s], ProcessKind::LongRunning)
}

#[test]
fn an_atomic_scope_takes_one_persistence_point_at_its_end_and_buffers_its_sends() {
    let def = atomic_def((T::RequiresOwn, T::CommitAfter), definition::AtomicPolicy { max_attempts: 1, backoff_ms: 0 });
    let mut m = Machine::new(&def, Snapshot::new("i1".into(), &def, "v1".into(), r#"{"n":0,"trace":[]}"#.into(), 0));
    let mut trace = Vec::new();
    let mut input = Input::Continue;
    loop {
        let y = m.step(input, 0);
        trace.push(trace_of(&y));
        if matches!(y, Yield::Call(_)) {
            assert!(m.in_atomic().is_some(), "every call inside shares the scope's instance");
        }
        input = match y {
            Yield::Call(_) => Input::Handler(Ok(HandlerOutput { variables: m.snapshot().variables.clone(), output: Some("{}".into()) })),
            Yield::Persist(reason) => {
                let point = m.persistence_point(reason, 0);
                assert!(point.effects.iter().any(|e| matches!(e, Effect::Send { .. })), "the send commits with the scope");
                Input::Continue
            }
            Yield::Finished(_) => break,
            y => panic!("{y:?}"),
        };
    }
    assert_eq!(trace, ["call:0", "call:1", "call:2", "persist:scope-completed", "finished:completed"]);
}

#[test]
fn a_fault_in_an_atomic_scope_rolls_back_and_retries_by_its_policy_then_propagates() {
    let def = atomic_def((T::Default, T::Default), definition::AtomicPolicy { max_attempts: 3, backoff_ms: 100 });
    let mut m = Machine::new(&def, Snapshot::new("i1".into(), &def, "v1".into(), r#"{"n":0}"#.into(), 0));
    let mut trace = Vec::new();
    let mut input = Input::Continue;
    loop {
        let y = m.step(input, 0);
        trace.push(trace_of(&y));
        input = match y {
            Yield::Call(c) if c.handler == 2 => {
                assert_eq!(m.snapshot().variables, r#"{"n":1}"#, "each attempt starts from the variables at scope start");
                Input::Handler(Err(Fault::new("flaky", "always")))
            }
            Yield::Call(c) if c.handler == 0 => {
                Input::Handler(Ok(HandlerOutput { variables: r#"{"n":1}"#.into(), output: None }))
            }
            Yield::Call(_) => Input::Handler(Ok(HandlerOutput { variables: m.snapshot().variables.clone(), output: Some("{}".into()) })),
            Yield::Sleep(_) => {
                assert_eq!(m.snapshot().variables, r#"{"n":0}"#, "rolled back");
                assert!(m.pending_effects().is_empty(), "the buffered send is dropped");
                Input::Continue
            }
            Yield::Finished(_) => break,
            y => panic!("{y:?}"),
        };
    }
    let attempts = ["call:0", "call:1", "call:2"];
    let mut expected: Vec<String> = Vec::new();
    for (i, sleep) in ["sleep:100", "sleep:200", ""].iter().enumerate() {
        expected.extend(attempts.iter().map(|s| s.to_string()));
        if i < 2 {
            expected.push(sleep.to_string());
        }
    }
    expected.push("finished:faulted".into());
    assert_eq!(trace, expected);
    assert_eq!(m.snapshot().variables, r#"{"n":0}"#);
    assert!(m.persistence_point(Reason::Faulted, 0).effects.iter().all(|e| !matches!(e, Effect::Send { .. })));
    assert_eq!(m.snapshot().fault.as_ref().unwrap().fault.name, "flaky");
}

#[test]
fn a_non_idempotent_invoke_commits_right_after_its_result_even_when_told_to_participate() {
    let mut t = Tree::new();
    let input = t.handler();
    let policy = definition::InvokePolicy { idempotent: false, ..Default::default() };
    let a = Activity::Invoke { target: Target::Activity("bank".into()), operation: "pay".into(), input, output: None, policy };
    let i = t.add("pay", a, T::Participates);
    let def = t.seq(vec![i], ProcessKind::LongRunning);
    let (trace, _) = drive(&def);
    assert_eq!(trace, ["call:0", "persist:dispatch", "await:invoke", "persist:commit-after", "finished:completed"]);
}

#[test]
fn an_invoke_retry_policy_backs_off_exponentially_up_to_its_cap_for_listed_faults() {
    let p = definition::RetryPolicy { max_attempts: 4, initial_backoff_ms: 100, max_backoff_ms: 250, faults: vec!["busy".into()] };
    assert_eq!(p.backoff(2, "busy"), Some(100));
    assert_eq!(p.backoff(3, "busy"), Some(200));
    assert_eq!(p.backoff(4, "busy"), Some(250));
    assert_eq!(p.backoff(5, "busy"), None, "four attempts in all");
    assert_eq!(p.backoff(2, "bad-input"), None, "only the listed faults retry");
}

#[test]
fn a_scope_deadline_interrupts_its_waiting_body_and_faults_the_scope() {
    let mut t = Tree::new();
    let r = t.receive("never", "never-comes", false);
    let s = t.add(
        "window",
        Activity::Scope { body: r, atomic: None, handlers: vec![], compensation: None, timeout_ms: Some(1000), events: vec![] },
        T::Default,
    );
    let def = t.seq(vec![s], ProcessKind::LongRunning);
    let mut m = Machine::new(&def, correlated(Snapshot::new("i1".into(), &def, "v1".into(), "{}".into(), 0)));
    assert_eq!(m.step(Input::Continue, 0), Yield::Await(Wait::Message { operation: "never-comes".into(), due_ms: None }));
    assert_eq!(m.persistence_point(Reason::Waiting, 0).effects, [Effect::SetTimer { timer_id: 1, due_ms: 1000 }]);
    assert_eq!(m.step(Input::Continue, 999), Yield::Await(Wait::Message { operation: "never-comes".into(), due_ms: None }));
    assert_eq!(m.step(Input::Continue, 1000), Yield::Finished(Reason::Faulted));
    let f = m.snapshot().fault.clone().unwrap();
    assert_eq!((f.fault.name.as_str(), f.path.as_str()), ("cairn.scope-timeout", "main/window"));
    assert!(m.persistence_point(Reason::Faulted, 1000).effects.contains(&Effect::ClearTimer { timer_id: 1, due_ms: 1000 }));
}

#[test]
fn a_suspended_instance_does_nothing_until_resumed_and_may_have_its_variables_set() {
    let mut t = Tree::new();
    let w = t.wait("pause", 10);
    let a = t.snippet("a", T::Default);
    let def = t.seq(vec![w, a], ProcessKind::LongRunning);
    let mut m = Machine::new(&def, Snapshot::new("i1".into(), &def, "v1".into(), r#"{"n":0}"#.into(), 0));
    assert_eq!(m.step(Input::Continue, 0), Yield::Persist(Reason::CommitBefore));
    assert!(matches!(m.step(Input::Continue, 0), Yield::Await(Wait::Timer { .. })));
    assert_eq!(m.step(Input::Control(Control::Suspend), 0), Yield::Persist(Reason::Suspended));
    assert_eq!(m.snapshot().status, Status::Suspended);
    assert_eq!(m.step(Input::Continue, 50), Yield::Suspended, "even with its timer due");
    let y = m.step(Input::Control(Control::SetVariables(r#"{"n":41}"#.into())), 50);
    assert_eq!(y, Yield::Persist(Reason::VariablesSet));
    assert_eq!(m.step(Input::Control(Control::Resume), 50), Yield::Persist(Reason::Resumed));
    assert_eq!(m.step(Input::Continue, 50), Yield::Call(HandlerCall { handler: 0, message: None, item: None }));
    assert_eq!(m.snapshot().variables, r#"{"n":41}"#);
}

#[test]
fn terminating_a_waiting_instance_withdraws_its_timer() {
    let mut t = Tree::new();
    let w = t.wait("pause", 10);
    let def = t.seq(vec![w], ProcessKind::LongRunning);
    let mut m = Machine::new(&def, Snapshot::new("i1".into(), &def, "v1".into(), "{}".into(), 0));
    m.step(Input::Continue, 0);
    m.step(Input::Continue, 0);
    m.persistence_point(Reason::Waiting, 0);
    assert_eq!(m.step(Input::Control(Control::Terminate), 0), Yield::Finished(Reason::Terminated));
    assert_eq!(m.persistence_point(Reason::Terminated, 0).effects, [Effect::ClearTimer { timer_id: 1, due_ms: 10 }]);
}

fn pick_def() -> Definition {
    let mut t = Tree::new();
    let approved = t.snippet("approved", T::Default);
    let late = t.snippet("late", T::Default);
    let reader = t.handler();
    let branches = vec![
        definition::PickBranch {
            trigger: definition::PickTrigger::Message { operation: "approve".into(), correlation: Some("order".into()), reader: Some(reader) },
            body: approved,
        },
        definition::PickBranch { trigger: definition::PickTrigger::AfterMs(500), body: late },
    ];
    let p = t.add("decide", Activity::Pick { branches, creates_instance: false }, T::Default);
    t.seq(vec![p], ProcessKind::LongRunning)
}

fn approve(seq: u64) -> Delivery {
    Delivery { seq, message_id: "m".into(), operation: "approve".into(), body: r#"{"id":"o-1"}"#.into() }
}

#[test]
fn pick_runs_the_branch_of_the_first_message_and_withdraws_its_timers() {
    let def = pick_def();
    let mut m = Machine::new(&def, correlated(Snapshot::new("i1".into(), &def, "v1".into(), "{}".into(), 0)));
    assert_eq!(m.step(Input::Continue, 0), Yield::Persist(Reason::CommitBefore));
    assert_eq!(m.step(Input::Continue, 0), Yield::Await(Wait::Pick { operations: vec!["approve".into()] }));
    assert_eq!(m.persistence_point(Reason::Waiting, 0).effects, [Effect::SetTimer { timer_id: 1, due_ms: 500 }]);
    assert_eq!(m.step(Input::Message(approve(4)), 100), Yield::Call(HandlerCall { handler: 2, message: Some(r#"{"id":"o-1"}"#.into()), item: None }));
    let y = m.step(Input::Handler(Ok(HandlerOutput { variables: "{}".into(), output: None })), 100);
    assert_eq!(y, Yield::Call(HandlerCall { handler: 0, message: None, item: None }), "the message's branch runs");
    let effects = m.pending_effects();
    assert!(effects.contains(&Effect::ClearTimer { timer_id: 1, due_ms: 500 }), "{effects:?}");
    assert!(effects.contains(&Effect::ConsumeMessage { seq: 4 }), "{effects:?}");
}

#[test]
fn pick_runs_the_timer_branch_when_its_timer_comes_first_even_with_a_message_then_queued() {
    let def = pick_def();
    let mut m = Machine::new(&def, correlated(Snapshot::new("i1".into(), &def, "v1".into(), "{}".into(), 0)));
    m.step(Input::Continue, 0);
    m.step(Input::Continue, 0);
    m.persistence_point(Reason::Waiting, 0);
    // Resumed at the timer's instant, with a message in the inbox as well:
    // the timer wins and the message is not consumed (it stays queued).
    let y = m.step(Input::Continue, 500);
    assert_eq!(y, Yield::Call(HandlerCall { handler: 1, message: None, item: None }), "the timer's branch runs");
    let effects = m.pending_effects();
    assert_eq!(effects, [Effect::ClearTimer { timer_id: 1, due_ms: 500 }]);
}

/// flow "both" { a: [snippet, receive "x"], b: [snippet, wait 100 ms] }
fn flow_def(throw_in_a: bool) -> Definition {
    let mut t = Tree::new();
    let a1 = t.snippet("a1", T::Default);
    let a2 = if throw_in_a {
        t.add("boom", Activity::Throw { fault: "boom".into(), message: "a failed".into(), data: None }, T::Default)
    } else {
        t.receive("x", "x", false)
    };
    let a = t.add("a", Activity::Sequence { children: vec![a1, a2] }, T::Default);
    let b1 = t.snippet("b1", T::Default);
    let b2 = t.wait("pause", 100);
    let b = t.add("b", Activity::Sequence { children: vec![b1, b2] }, T::Default);
    // With a throw, b goes first so that it is waiting when a fails.
    let branches = if throw_in_a { vec![b, a] } else { vec![a, b] };
    let f = t.add("both", Activity::Flow { branches }, T::Default);
    let after = t.snippet("after", T::Default);
    t.seq(vec![f, after], ProcessKind::LongRunning)
}

/// Drives a flow, round-tripping the snapshot through JSON at every
/// persistence point as the store would; answers messages and timers as
/// they are awaited. Returns the trace and the final snapshot.
fn drive_flow(def: &Definition) -> (Vec<String>, Snapshot) {
    let mut m = Machine::new(def, correlated(Snapshot::new("i1".into(), def, "v1".into(), r#"{"log":[]}"#.into(), 0)));
    let mut trace = Vec::new();
    let mut input = Input::Continue;
    let mut now = 0;
    for _ in 0..100 {
        let y = m.step(input, now);
        trace.push(trace_of(&y));
        input = match y {
            Yield::Call(c) => Input::Handler(Ok(run_handler(&m.snapshot().variables, c.handler))),
            Yield::Persist(reason) => {
                let point = m.persistence_point(reason, now);
                let json = serde_json::to_string(&point.snapshot).unwrap();
                m = Machine::new(def, serde_json::from_str(&json).unwrap());
                Input::Continue
            }
            Yield::Await(Wait::Many(ws)) => {
                match ws.iter().find(|w| matches!(w, Wait::Message { .. })) {
                    Some(Wait::Message { operation, .. }) => Input::Message(Delivery {
                        seq: 9,
                        message_id: "m".into(),
                        operation: operation.clone(),
                        body: r#"{"id":"o-1"}"#.into(),
                    }),
                    _ => {
                        now = 100;
                        Input::Continue
                    }
                }
            }
            Yield::Finished(_) => return (trace, m.snapshot().clone()),
            y => panic!("unexpected {y:?} after {trace:?}"),
        };
    }
    panic!("did not finish: {trace:?}");
}

#[test]
fn a_flow_runs_its_branches_interleaved_at_their_waits_and_joins_when_all_finish() {
    let def = flow_def(false);
    let (trace, snap) = drive_flow(&def);
    assert_eq!(
        trace,
        [
            "call:0", // a1
            "call:1", // b1, once branch a waits at its receive
            "persist:commit-before",
            "await:many:2", // both branches wait: the message of a, the timer of b
            "persist:commit-after", // a takes its message
            "await:many:1",
            "call:2", // after the join
            "finished:completed",
        ]
    );
    assert_eq!(snap.variables, r#"{"log":[0,1,2]}"#);
}

#[test]
fn a_fault_in_one_branch_cancels_the_others() {
    let def = flow_def(true);
    let mut m = Machine::new(&def, correlated(Snapshot::new("i1".into(), &def, "v1".into(), r#"{"log":[]}"#.into(), 0)));
    let mut input = Input::Continue;
    let mut effects = Vec::new();
    loop {
        match m.step(input, 0) {
            Yield::Call(c) => input = Input::Handler(Ok(run_handler(&m.snapshot().variables, c.handler))),
            Yield::Persist(reason) => {
                effects.extend(m.persistence_point(reason, 0).effects);
                input = Input::Continue
            }
            Yield::Finished(r) => {
                assert_eq!(r, Reason::Faulted);
                effects.extend(m.persistence_point(r, 0).effects);
                break;
            }
            y => panic!("unexpected {y:?}"),
        }
    }
    // b ran to its wait, then a threw: b's timer is withdrawn with the flow.
    assert_eq!(m.snapshot().fault.as_ref().unwrap().path, "main/both/a/boom");
    assert_eq!(m.snapshot().variables, r#"{"log":[1,0]}"#);
    assert!(effects.contains(&Effect::SetTimer { timer_id: 1, due_ms: 100 }), "{effects:?}");
    assert!(effects.contains(&Effect::ClearTimer { timer_id: 1, due_ms: 100 }), "{effects:?}");
}

fn each_def(parallel: bool) -> Definition {
    let mut t = Tree::new();
    let body = t.snippet("line", T::Default);
    let each = t.add("lines", Activity::ForEach { items: "/lines".into(), parallel, body, completion: None }, T::Default);
    t.seq(vec![each], ProcessKind::LongRunning)
}

#[test]
fn for_each_runs_its_body_once_per_item_with_the_item_at_hand() {
    for parallel in [false, true] {
        let def = each_def(parallel);
        let mut m = Machine::new(&def, Snapshot::new("i1".into(), &def, "v1".into(), r#"{"lines":["a","b","c"]}"#.into(), 0));
        let mut items = Vec::new();
        let mut input = Input::Continue;
        loop {
            match m.step(input, 0) {
                Yield::Call(c) => {
                    items.push(c.item.clone().unwrap());
                    input = Input::Handler(Ok(HandlerOutput { variables: m.snapshot().variables.clone(), output: None }));
                }
                Yield::Finished(r) => {
                    assert_eq!(r, Reason::Completed);
                    break;
                }
                y => panic!("{y:?}"),
            }
        }
        assert_eq!(items, [r#""a""#, r#""b""#, r#""c""#], "parallel: {parallel}");
    }
}

#[test]
fn for_each_over_something_that_is_not_an_array_faults() {
    let def = each_def(false);
    let mut m = Machine::new(&def, Snapshot::new("i1".into(), &def, "v1".into(), r#"{"lines":7}"#.into(), 0));
    assert_eq!(m.step(Input::Continue, 0), Yield::Finished(Reason::Faulted));
    assert_eq!(m.snapshot().fault.as_ref().unwrap().fault.name, "cairn.for-each-not-array");
}

#[test]
fn a_persistence_point_bumps_the_fence_and_takes_the_effects_decided_since_the_last_one() {
    let mut t = Tree::new();
    let w = t.wait("pause", 500);
    let def = t.seq(vec![w], ProcessKind::LongRunning);
    let mut m = Machine::new(&def, Snapshot::new("i1".into(), &def, "v1".into(), "{}".into(), 0));
    assert_eq!(m.step(Input::Continue, 1000), Yield::Persist(Reason::CommitBefore));
    let first = m.persistence_point(Reason::CommitBefore, 1001);
    assert_eq!((first.based_on, first.snapshot.fence, m.snapshot().fence), (0, 1, 1));
    assert_eq!((first.reason, first.at_ms), (Reason::CommitBefore, 1001));
    assert_eq!(first.effects, []);
    assert_eq!(first.snapshot, *m.snapshot(), "the record holds the snapshot as it stands");

    assert_eq!(m.step(Input::Continue, 1000), Yield::Await(Wait::Timer { timer_id: 1, due_ms: 1500 }));
    let second = m.persistence_point(Reason::Waiting, 1002);
    assert_eq!((second.based_on, second.snapshot.fence), (1, 2), "each point is based on the one before");
    assert_eq!(second.effects, [Effect::SetTimer { timer_id: 1, due_ms: 1500 }]);
    assert_eq!(m.persistence_point(Reason::Shutdown, 1003).effects, [], "effects leave in one point only");
}

#[test]
fn a_persistence_point_records_the_path_of_the_activity_it_belongs_to() {
    let mut t = Tree::new();
    let a = t.snippet("a", T::CommitAfter);
    let r = t.receive("take", "submit", false);
    let th = t.add("boom", Activity::Throw { fault: "bad".into(), message: "went bad".into(), data: None }, T::Default);
    let def = t.seq(vec![a, r, th], ProcessKind::LongRunning);
    let mut m = Machine::new(&def, correlated(Snapshot::new("i1".into(), &def, "v1".into(), r#"{"log":[]}"#.into(), 0)));
    let Yield::Call(c) = m.step(Input::Continue, 0) else { panic!() };
    let y = m.step(Input::Handler(Ok(run_handler(&m.snapshot().variables, c.handler))), 0);
    assert_eq!(y, Yield::Persist(Reason::CommitAfter));
    assert_eq!(m.snapshot().path(&def), "main", "the snippet has left the stack");
    assert_eq!(m.persistence_point(Reason::CommitAfter, 0).path, "main/a", "a commit-after belongs to its activity");

    assert!(matches!(m.step(Input::Continue, 0), Yield::Await(Wait::Message { .. })));
    assert_eq!(m.persistence_point(Reason::Waiting, 0).path, "main/take", "a wait is recorded where it waits");

    let d = Delivery { seq: 1, message_id: "m".into(), operation: "submit".into(), body: r#"{"id":"o-1"}"#.into() };
    assert_eq!(m.step(Input::Message(d), 0), Yield::Persist(Reason::CommitAfter));
    m.persistence_point(Reason::CommitAfter, 0);
    assert_eq!(m.step(Input::Continue, 0), Yield::Finished(Reason::Faulted));
    assert_eq!(m.persistence_point(Reason::Faulted, 0).path, "main/boom", "a fault is recorded where it was raised");
}

#[test]
fn needs_persistence_tells_whether_the_instance_moved_since_the_last_point() {
    let mut t = Tree::new();
    let w = t.wait("pause", 500);
    let def = t.seq(vec![w], ProcessKind::LongRunning);
    let mut m = Machine::new(&def, Snapshot::new("i1".into(), &def, "v1".into(), "{}".into(), 0));
    assert!(!m.needs_persistence(), "a fresh machine stands where its snapshot does");
    assert_eq!(m.step(Input::Continue, 0), Yield::Persist(Reason::CommitBefore));
    assert!(m.needs_persistence(), "the position moved");
    m.persistence_point(Reason::CommitBefore, 0);
    assert!(!m.needs_persistence());
    assert!(matches!(m.step(Input::Continue, 0), Yield::Await(Wait::Timer { .. })));
    assert!(m.needs_persistence(), "the timer is set and the instance now waits");
    let stored = m.persistence_point(Reason::Waiting, 0).snapshot;

    // Woken before the timer is due, it waits again where it was: nothing to commit.
    let mut m = Machine::new(&def, stored);
    assert!(matches!(m.step(Input::Continue, 100), Yield::Await(Wait::Timer { .. })));
    assert!(!m.needs_persistence());
}

#[test]
fn a_microflow_takes_its_invoke_out_to_run_inline_so_it_never_reaches_the_outbox() {
    let mut t = Tree::new();
    let i = t.invoke("price");
    let def = t.seq(vec![i], ProcessKind::Microflow);
    let mut m = Machine::new(&def, Snapshot::new("i1".into(), &def, "v1".into(), "{}".into(), 0));
    assert!(matches!(m.step(Input::Continue, 0), Yield::Call(_)));
    assert!(!m.awaits_call());
    let y = m.step(Input::Handler(Ok(HandlerOutput { variables: "{}".into(), output: None })), 0);
    assert_eq!(y, Yield::Await(Wait::Invoke { call_id: 1 }), "no dispatch point in a microflow");
    assert!(m.awaits_call());
    assert!(matches!(m.take_invoke(1), Some(Effect::Invoke { call_id: 1, .. })));
    assert_eq!(m.take_invoke(1), None, "taken once");
    let y = m.step(Input::InvokeResult { call_id: 1, result: Ok("{}".into()), resources: Default::default() }, 0);
    assert_eq!(y, Yield::Finished(Reason::Completed));
    assert_eq!(m.persistence_point(Reason::Completed, 0).effects, [Effect::InvokeDone { call_id: 1 }]);
}

#[test]
fn a_successful_call_s_resource_writes_commit_with_its_persistence_point_and_a_failed_call_s_are_dropped() {
    use crate::contract::{ResourceAccesses, ResourceRead, ResourceWrite};
    let accesses = ResourceAccesses {
        reads: vec![ResourceRead { table: "counters".into(), key: "k".into(), version: 3 }],
        writes: vec![ResourceWrite { table: "counters".into(), key: "k".into(), value: Some("4".into()) }],
    };
    for ok in [true, false] {
        let mut t = Tree::new();
        let i = t.invoke("count");
        let def = t.seq(vec![i], ProcessKind::Microflow);
        let mut m = Machine::new(&def, Snapshot::new("i1".into(), &def, "v1".into(), "{}".into(), 0));
        m.step(Input::Continue, 0);
        m.step(Input::Handler(Ok(HandlerOutput { variables: "{}".into(), output: None })), 0);
        m.take_invoke(1);
        let result = if ok { Ok("{}".into()) } else { Err(Fault::new("count-failed", "no")) };
        m.step(Input::InvokeResult { call_id: 1, result, resources: accesses.clone() }, 0);
        let effects = m.persistence_point(Reason::Completed, 0).effects;
        let wrote = effects.iter().any(|e| matches!(e, Effect::ResourceWrites { call_id: 1, accesses: a } if *a == accesses));
        assert_eq!(wrote, ok, "{effects:?}");
    }
}

/// The stored forms, byte for byte: existing data directories hold them.
/// A change here breaks them; see `crate::snapshot`.
mod stored_format {
    use crate::contract::{Delivery, Effect, Reason};
    use crate::definition::Target;
    use crate::snapshot::*;
    use std::collections::BTreeMap;

    const SNAPSHOT: &str = r#"{"id":"i1","process":"p","version":"v1","status":"waiting","variables":"{\"n\":1}","stack":[{"node":0,"phase":"child","next":2,"completed":[{"scope":"pay","handler":4,"variables":"{\"n\":2}","inner":[{"scope":"hold","handler":null,"variables":"{}"}]}],"deadline":{"timer_id":3,"due_ms":500},"broke":true,"item":"\"x\""},{"node":1,"phase":"enter"},{"node":2,"phase":"started"},{"node":3,"phase":"await-message","operation":"approve","timer":{"timer_id":3,"due_ms":500}},{"node":4,"phase":"await-message","operation":"approve","timer":null},{"node":5,"phase":"await-timer","timer_id":3,"due_ms":500},{"node":6,"phase":"await-invoke","call_id":9},{"node":7,"phase":"await-pick","timers":[[1,{"timer_id":3,"due_ms":500}]]},{"node":8,"phase":"each","items":["1","2"],"next":1},{"node":9,"phase":"flow","branches":[{"state":"ready","stack":[{"node":10,"phase":"enter"}]},{"state":"active"},{"state":"waiting","stack":[{"node":11,"phase":"await-timer","timer_id":1,"due_ms":2}]},{"state":"done"}]},{"node":12,"phase":"handling","caught":{"name":"boom","message":"went bad","data":"{\"n\":1}","path":"main/a"}},{"node":13,"phase":"compensating","queue":[{"scope":"pay","handler":4,"variables":"{\"n\":2}"}],"then":"done"},{"node":14,"phase":"compensating","queue":[],"then":{"rethrow":{"name":"boom","message":"went bad","data":"{\"n\":1}","path":"main/a"}}},{"node":15,"phase":"done"}],"correlations":{"order":"[\"o-1\"]"},"requests":[{"operation":"quote","message_id":"m-1"}],"compensations":[{"scope":"pay","handler":4,"variables":"{\"n\":2}","inner":[{"scope":"hold","handler":null,"variables":"{}"}]}],"fault":{"name":"boom","message":"went bad","data":"{\"n\":1}","path":"main/a"},"next_id":10,"fence":4,"created_ms":1,"updated_ms":2}"#;

    const EFFECTS: &str = r#"[{"effect":"consume-message","seq":1},{"effect":"correlate","set":"order","values":"[1]"},{"effect":"uncorrelate","set":"order","values":"[1]"},{"effect":"set-timer","timer_id":1,"due_ms":2},{"effect":"clear-timer","timer_id":1,"due_ms":2},{"effect":"invoke","call_id":2,"target":{"kind":"activity","name":"pricing"},"operation":"quote","input":"{}","idempotency_key":"i1/main/price/2","policy":{"idempotent":true,"retry_on_recovery":false,"retry":null,"timeout_ms":null}},{"effect":"invoke-done","call_id":2},{"effect":"send","call_id":3,"target":{"kind":"process","name":"other"},"operation":"note","body":"{}","message_id":"i1:3"},{"effect":"send","call_id":4,"target":{"kind":"process","name":"other"},"operation":"start","body":"{}","message_id":"i1:4","start":true},{"effect":"reply","message_id":"m-1","body":"null","fault":{"name":"boom","message":"went bad","data":"{\"n\":1}"}},{"effect":"reply","message_id":"m-2","body":"{}","fault":null}]"#;

    fn fault() -> Fault {
        Fault { name: "boom".into(), message: "went bad".into(), data: "{\"n\":1}".into() }
    }

    fn frame(node: u32, phase: Phase) -> Frame {
        Frame { phase, ..Frame::new(node, None) }
    }

    /// One of every stored shape: each phase, branch state, registry and fault form.
    fn snapshot() -> Snapshot {
        let record = FaultRecord { fault: fault(), path: "main/a".into() };
        let timer = TimerRef { timer_id: 3, due_ms: 500 };
        let registered = Registered {
            scope: "pay".into(),
            handler: Some(4),
            variables: "{\"n\":2}".into(),
            inner: vec![Registered { scope: "hold".into(), handler: None, variables: "{}".into(), inner: Vec::new() }],
        };
        let step = CompensationStep { scope: "pay".into(), handler: 4, variables: "{\"n\":2}".into() };
        let branches = vec![
            Branch { state: BranchState::Ready, stack: vec![frame(10, Phase::Enter)] },
            Branch { state: BranchState::Active, stack: Vec::new() },
            Branch { state: BranchState::Waiting, stack: vec![frame(11, Phase::AwaitTimer { timer_id: 1, due_ms: 2 })] },
            Branch { state: BranchState::Done, stack: Vec::new() },
        ];
        let stack = vec![
            Frame {
                completed: vec![registered.clone()],
                deadline: Some(timer),
                broke: true,
                item: Some("\"x\"".into()),
                ..frame(0, Phase::Child { next: 2 })
            },
            frame(1, Phase::Enter),
            frame(2, Phase::Started),
            frame(3, Phase::AwaitMessage { operation: "approve".into(), timer: Some(timer) }),
            frame(4, Phase::AwaitMessage { operation: "approve".into(), timer: None }),
            frame(5, Phase::AwaitTimer { timer_id: 3, due_ms: 500 }),
            frame(6, Phase::AwaitInvoke { call_id: 9 }),
            frame(7, Phase::AwaitPick { timers: vec![(1, timer)] }),
            frame(8, Phase::Each { items: vec!["1".into(), "2".into()], next: 1 }),
            frame(9, Phase::Flow { branches }),
            frame(12, Phase::Handling { caught: record.clone() }),
            frame(13, Phase::Compensating { queue: vec![step], then: AfterCompensation::Done }),
            frame(14, Phase::Compensating { queue: Vec::new(), then: AfterCompensation::Rethrow(record.clone()) }),
            frame(15, Phase::Done),
        ];
        Snapshot {
            id: "i1".into(),
            process: "p".into(),
            version: "v1".into(),
            status: Status::Waiting,
            variables: "{\"n\":1}".into(),
            stack,
            correlations: BTreeMap::from([("order".to_string(), "[\"o-1\"]".to_string())]),
            requests: vec![PendingRequest { operation: "quote".into(), message_id: "m-1".into() }],
            compensations: vec![registered],
            fault: Some(record),
            retry: None,
            cancelling: false,
            next_id: 10,
            fence: 4,
            created_ms: 1,
            updated_ms: 2,
        }
    }

    fn effects() -> Vec<Effect> {
        let send = |call_id: u64, operation: &str, start: bool| Effect::Send {
            call_id,
            target: Target::Process("other".into()),
            operation: operation.into(),
            body: "{}".into(),
            message_id: format!("i1:{call_id}"),
            start,
        };
        vec![
            Effect::ConsumeMessage { seq: 1 },
            Effect::Correlate { set: "order".into(), values: "[1]".into() },
            Effect::Uncorrelate { set: "order".into(), values: "[1]".into() },
            Effect::SetTimer { timer_id: 1, due_ms: 2 },
            Effect::ClearTimer { timer_id: 1, due_ms: 2 },
            Effect::Invoke {
                call_id: 2,
                target: Target::Activity("pricing".into()),
                operation: "quote".into(),
                input: "{}".into(),
                idempotency_key: "i1/main/price/2".into(),
                policy: Default::default(),
            },
            Effect::InvokeDone { call_id: 2 },
            send(3, "note", false),
            send(4, "start", true),
            Effect::Reply { message_id: "m-1".into(), body: "null".into(), fault: Some(fault()) },
            Effect::Reply { message_id: "m-2".into(), body: "{}".into(), fault: None },
        ]
    }

    #[test]
    fn a_snapshot_is_stored_and_loaded_in_the_same_form() {
        assert_eq!(serde_json::to_string(&snapshot()).unwrap(), SNAPSHOT);
        assert_eq!(serde_json::from_str::<Snapshot>(SNAPSHOT).unwrap(), snapshot());
    }

    #[test]
    fn statuses_are_stored_by_their_kebab_case_names() {
        let all = [Status::Running, Status::Waiting, Status::Suspended, Status::Completed, Status::Faulted, Status::Terminated];
        let names = r#"["running","waiting","suspended","completed","faulted","terminated"]"#;
        assert_eq!(serde_json::to_string(&all).unwrap(), names);
        for s in all {
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
    }

    #[test]
    fn outbox_effects_are_stored_and_loaded_in_the_same_form() {
        assert_eq!(serde_json::to_string(&effects()).unwrap(), EFFECTS);
        assert_eq!(serde_json::from_str::<Vec<Effect>>(EFFECTS).unwrap(), effects());
    }

    #[test]
    fn inbox_deliveries_and_history_reasons_keep_their_stored_names() {
        let d = Delivery { seq: 7, message_id: "m".into(), operation: "submit".into(), body: "{}".into() };
        assert_eq!(serde_json::to_string(&d).unwrap(), r#"{"seq":7,"message_id":"m","operation":"submit","body":"{}"}"#);
        let reasons = [
            Reason::Created,
            Reason::CommitBefore,
            Reason::CommitAfter,
            Reason::Dispatch,
            Reason::Waiting,
            Reason::Shutdown,
            Reason::ScopeCompleted,
            Reason::Compensated,
            Reason::Suspended,
            Reason::Resumed,
            Reason::VariablesSet,
            Reason::Breakpoint,
            Reason::Completed,
            Reason::Faulted,
            Reason::Terminated,
        ];
        let names = r#"["created","commit-before","commit-after","dispatch","waiting","shutdown","scope-completed","compensated","suspended","resumed","variables-set","breakpoint","completed","faulted","terminated"]"#;
        assert_eq!(serde_json::to_string(&reasons).unwrap(), names);
    }
}

mod lifecycle;

/// A fresh instance whose correlation set "order" was initialised (by the
/// message that created it): its receives on "order" may wait.
fn correlated(mut snap: Snapshot) -> Snapshot {
    snap.correlations.insert("order".into(), r#"["o-1"]"#.into());
    snap
}
