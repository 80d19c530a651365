//! Unit tests of the definition language beyond the basics: repeat-until,
//! switch, for-each completion conditions, fault matching on data, the
//! process scope, event handlers, correlation violations and the ways to
//! create an instance. Every persistence point is round-tripped through
//! JSON and `Machine::resume`, as the store would, so each test also checks
//! that what these activities persist resumes.

use super::*;
use crate::definition::{EventHandler, EventTrigger, FaultHandler, PickBranch, PickTrigger, Property, SwitchCase, Transaction as T};
use serde_json::{json, Value};
use std::collections::VecDeque;

/// Builds arena definitions; node names double as activity path steps.
#[derive(Default)]
struct Tree {
    nodes: Vec<Node>,
    handlers: u32,
}

impl Tree {
    fn add(&mut self, name: &str, activity: Activity) -> NodeId {
        self.nodes.push(Node { name: name.into(), activity, transaction: T::Default });
        (self.nodes.len() - 1) as NodeId
    }
    fn handler(&mut self) -> u32 {
        self.handlers += 1;
        self.handlers - 1
    }
    fn snippet(&mut self, name: &str) -> (NodeId, u32) {
        let handler = self.handler();
        (self.add(name, Activity::Snippet { handler }), handler)
    }
    fn receive(&mut self, name: &str, op: &str, set: &str, creates: bool) -> NodeId {
        let a = Activity::Receive {
            operation: op.into(),
            correlation: Some(set.into()),
            creates_instance: creates,
            request_response: false,
            reader: None,
            timeout: None,
        };
        self.add(name, a)
    }
    fn scope(&mut self, name: &str, body: NodeId, handlers: Vec<FaultHandler>, compensation: Option<u32>, events: Vec<EventHandler>) -> NodeId {
        self.add(name, Activity::Scope { body, atomic: None, handlers, compensation, timeout_ms: None, events })
    }
    fn def(self, root: NodeId) -> Definition {
        let set = |name: &str| CorrelationSet { name: name.into(), properties: vec![Property { name: "id".into(), pointer: "/id".into() }] };
        Definition {
            name: "language".into(),
            kind: ProcessKind::LongRunning,
            keep_final_state: true,
            deferred_recovery: false,
            initial_variables: "{}".into(),
            correlation_sets: vec![set("order"), set("other")],
            nodes: self.nodes,
            root,
            handler_count: self.handlers,
        }
    }
}

type Handler<'a> = Box<dyn FnMut(u32, &mut Value, Option<&str>) -> Option<String> + 'a>;

/// What a driven instance did.
struct Run {
    /// `call:N`, `persist:REASON:PATH`, `finished:REASON`.
    trace: Vec<String>,
    snap: Snapshot,
    effects: Vec<Effect>,
}

/// Drives `def` from a fresh instance with `variables` and the correlation
/// sets in `correlations` initialised: handlers answer through `handler`;
/// `messages` (not before ms, operation) arrive when awaited and due;
/// timers fire by moving the clock to the earliest one.
fn run(def: &Definition, variables: Value, correlations: &[&str], messages: &[(u64, &str)], mut handler: Handler) -> Run {
    def.validate().unwrap_or_else(|e| panic!("invalid test definition: {e}"));
    let mut snap = Snapshot::new("i1".into(), def, "v1".into(), variables.to_string(), 0);
    for set in correlations {
        snap.correlations.insert(set.to_string(), r#"["o-1"]"#.into());
    }
    let mut queue: VecDeque<(u64, String)> = messages.iter().map(|(at, op)| (*at, op.to_string())).collect();
    let mut m = Machine::new(def, snap);
    let (mut trace, mut effects) = (Vec::new(), Vec::new());
    let mut input = Input::Continue;
    let mut now = 0;
    let mut seq = 0;
    for _ in 0..500 {
        let y = m.step(input, now);
        let persist = |m: &mut Machine, reason: Reason, trace: &mut Vec<String>, effects: &mut Vec<Effect>| {
            let point = m.persistence_point(reason, now);
            trace.push(format!("persist:{}:{}", serde_json::to_value(reason).unwrap().as_str().unwrap(), point.path));
            effects.extend(point.effects);
            let stored: Snapshot = serde_json::from_str(&serde_json::to_string(&point.snapshot).unwrap()).unwrap();
            Machine::resume(def, stored).unwrap_or_else(|e| panic!("a persisted snapshot does not resume: {e}; after {trace:?}"))
        };
        input = match y {
            Yield::Call(c) => {
                trace.push(format!("call:{}", c.handler));
                let mut v: Value = serde_json::from_str(&m.snapshot().variables).unwrap();
                let output = handler(c.handler, &mut v, c.message.as_deref());
                Input::Handler(Ok(HandlerOutput { variables: v.to_string(), output }))
            }
            Yield::Persist(reason) => {
                m = persist(&mut m, reason, &mut trace, &mut effects);
                Input::Continue
            }
            Yield::Finished(reason) => {
                let point = m.persistence_point(reason, now);
                trace.push(format!("finished:{}", serde_json::to_value(reason).unwrap().as_str().unwrap()));
                effects.extend(point.effects);
                return Run { trace, snap: point.snapshot, effects };
            }
            Yield::Await(wait) => {
                if m.needs_persistence() {
                    m = persist(&mut m, Reason::Waiting, &mut trace, &mut effects);
                }
                let waits = flatten(&wait);
                let takes = |op: &str| {
                    waits.iter().any(|w| match w {
                        Wait::Message { operation, .. } => operation == op,
                        Wait::Pick { operations } => operations.iter().any(|o| o == op),
                        _ => false,
                    })
                };
                let due = waits.iter().filter_map(|w| match w {
                    Wait::Timer { due_ms, .. } => Some(*due_ms),
                    Wait::Message { due_ms, .. } => *due_ms,
                    _ => None,
                });
                let next_timer = due.min();
                match queue.front() {
                    Some((at, op)) if *at <= now && takes(op) => {
                        let (_, operation) = queue.pop_front().unwrap();
                        seq += 1;
                        Input::Message(Delivery { seq, message_id: format!("m{seq}"), operation, body: r#"{"id":"o-1"}"#.into() })
                    }
                    front => {
                        let next_message = front.map(|(at, _)| *at).filter(|at| *at > now);
                        match next_timer.into_iter().chain(next_message).min() {
                            Some(t) => {
                                now = t.max(now);
                                Input::Continue
                            }
                            None => panic!("stuck waiting for {wait:?} after {trace:?}"),
                        }
                    }
                }
            }
            y => panic!("unexpected {y:?} after {trace:?}"),
        };
    }
    panic!("did not finish: {trace:?}");
}

fn flatten(w: &Wait) -> Vec<Wait> {
    match w {
        Wait::Many(ws) => ws.iter().flat_map(flatten).collect(),
        w => vec![w.clone()],
    }
}

/// Appends `name` to the variables' `log`.
fn log(v: &mut Value, name: &str) {
    if !v["log"].is_array() {
        v["log"] = json!([]);
    }
    v["log"].as_array_mut().unwrap().push(name.into());
}

fn logged(snap: &Snapshot) -> Vec<String> {
    let v: Value = serde_json::from_str(&snap.variables).unwrap();
    v["log"].as_array().map(|l| l.iter().map(|s| s.as_str().unwrap().to_string()).collect()).unwrap_or_default()
}

#[test]
fn repeat_until_runs_its_body_at_least_once_then_until_its_condition_holds() {
    for (goal, runs) in [(3, 3), (0, 1)] {
        let mut t = Tree::default();
        let (body, step) = t.snippet("step");
        let condition = t.handler();
        let root = t.add("again", Activity::RepeatUntil { condition, body });
        let def = t.def(root);
        let r = run(
            &def,
            json!({ "n": 0, "goal": goal }),
            &[],
            &[],
            Box::new(|h, v, _| {
                if h == step {
                    v["n"] = json!(v["n"].as_u64().unwrap() + 1);
                    return None;
                }
                Some((v["n"].as_u64() >= v["goal"].as_u64()).to_string())
            }),
        );
        let v: Value = serde_json::from_str(&r.snap.variables).unwrap();
        assert_eq!(v["n"], runs, "goal {goal}");
        assert_eq!(r.snap.status, Status::Completed);
    }
}

#[test]
fn switch_runs_the_first_case_that_holds_else_its_otherwise_branch() {
    for (total, route, asked) in [(200_000, "board", 1), (5000, "manager", 2), (10, "auto", 2)] {
        let mut t = Tree::default();
        let (board, hb) = t.snippet("board");
        let (manager, hm) = t.snippet("manager");
        let (auto, ha) = t.snippet("auto");
        let (c1, c2) = (t.handler(), t.handler());
        let cases = vec![SwitchCase { condition: c1, body: board }, SwitchCase { condition: c2, body: manager }];
        let root = t.add("route", Activity::Switch { cases, otherwise: Some(auto) });
        let def = t.def(root);
        let r = run(
            &def,
            json!({ "total": total }),
            &[],
            &[],
            Box::new(|h, v, _| {
                let total = v["total"].as_u64().unwrap();
                match h {
                    h if h == c1 => Some((total > 100_000).to_string()),
                    h if h == c2 => Some((total > 1000).to_string()),
                    h => {
                        log(v, [(hb, "board"), (hm, "manager"), (ha, "auto")].iter().find(|(x, _)| *x == h).unwrap().1);
                        None
                    }
                }
            }),
        );
        assert_eq!(logged(&r.snap), [route], "total {total}");
        let conditions = r.trace.iter().filter(|c| *c == &format!("call:{c1}") || *c == &format!("call:{c2}")).count();
        assert_eq!(conditions, asked, "the cases are asked in order, only until one holds");
    }
}

/// for-each "each" over `/items` (body: `visit`, or wait 100 ms then `visit`)
/// with a completion condition: the visited items sum to 3 or more.
fn each_until(parallel: bool) -> (Definition, u32, u32) {
    let mut t = Tree::default();
    let (visit, hv) = t.snippet("visit");
    let body = if parallel {
        let pause = t.add("pause", Activity::Wait { wait: WaitFor::DurationMs(100) });
        t.add("iteration", Activity::Sequence { children: vec![pause, visit] })
    } else {
        visit
    };
    let completion = t.handler();
    let root = t.add("each", Activity::ForEach { items: "/items".into(), parallel, body, completion: Some(completion) });
    (t.def(root), hv, completion)
}

fn visiting(visit: u32) -> Handler<'static> {
    Box::new(move |h, v, _| {
        if h == visit {
            // The item is not passed here; count visits instead.
            let n = v["visited"].as_u64().unwrap_or(0) + 1;
            v["visited"] = json!(n);
            v["sum"] = json!(v["sum"].as_u64().unwrap_or(0) + n);
            return None;
        }
        Some((v["sum"].as_u64().unwrap_or(0) >= 3).to_string())
    })
}

#[test]
fn a_for_each_ends_early_once_its_completion_condition_holds_after_an_iteration() {
    let (def, visit, completion) = each_until(false);
    let r = run(&def, json!({ "items": [1, 2, 3, 4] }), &[], &[], visiting(visit));
    let v: Value = serde_json::from_str(&r.snap.variables).unwrap();
    assert_eq!(v["visited"], 2, "1, then 1 + 2 = 3: the condition holds and no third iteration runs");
    assert_eq!(r.trace.iter().filter(|c| **c == format!("call:{completion}")).count(), 2);
    assert_eq!(r.snap.status, Status::Completed);
}

#[test]
fn a_parallel_for_each_cancels_its_unfinished_iterations_once_its_completion_condition_holds() {
    let (def, visit, _) = each_until(true);
    let r = run(&def, json!({ "items": [1, 2, 3, 4] }), &[], &[], visiting(visit));
    let v: Value = serde_json::from_str(&r.snap.variables).unwrap();
    assert_eq!(v["visited"], 2, "two iterations finish, then the condition holds: {:?}", r.trace);
    assert_eq!(r.snap.status, Status::Completed);
    let set = r.effects.iter().filter(|e| matches!(e, Effect::SetTimer { .. })).count();
    let cleared = r.effects.iter().filter(|e| matches!(e, Effect::ClearTimer { .. })).count();
    assert_eq!((set, cleared), (4, 4), "every iteration set a timer; the cancelled ones' are withdrawn with them");
}

/// Scope "risky" around a throw of `fault` with data `{"code": code}`, and
/// handlers: catch-all, "declined", "declined" if code is 51, catch-all if
/// code is 7. Returns which handler's reader ran.
fn caught(fault: &str, code: u64) -> String {
    let mut t = Tree::default();
    let data = t.handler();
    let throw = t.add("raise", Activity::Throw { fault: fault.into(), message: "m".into(), data: Some(data) });
    let readers: Vec<u32> = (0..4).map(|_| t.handler()).collect();
    let (c51, c7) = (t.handler(), t.handler());
    let handlers = vec![
        FaultHandler { fault: None, condition: None, reader: Some(readers[0]), body: None },
        FaultHandler { fault: Some("declined".into()), condition: None, reader: Some(readers[1]), body: None },
        FaultHandler { fault: Some("declined".into()), condition: Some(c51), reader: Some(readers[2]), body: None },
        FaultHandler { fault: None, condition: Some(c7), reader: Some(readers[3]), body: None },
    ];
    let root = t.scope("risky", throw, handlers, None, vec![]);
    let def = t.def(root);
    let names = ["catch-all", "by name", "by name and data", "catch-all with data"];
    let r = run(
        &def,
        json!({}),
        &[],
        &[],
        Box::new(move |h, v, message| {
            if h == data {
                return Some(json!({ "code": code }).to_string());
            }
            let fault: Value = serde_json::from_str(message.unwrap()).unwrap();
            match h {
                h if h == c51 => Some((fault["data"]["code"] == 51).to_string()),
                h if h == c7 => Some((fault["data"]["code"] == 7).to_string()),
                h => {
                    v["caught"] = json!(names[readers.iter().position(|r| *r == h).unwrap()]);
                    None
                }
            }
        }),
    );
    assert_eq!(r.snap.status, Status::Completed);
    let v: Value = serde_json::from_str(&r.snap.variables).unwrap();
    v["caught"].as_str().unwrap().to_string()
}

#[test]
fn the_most_specific_fault_handler_wins_name_and_data_then_name_then_catch_all() {
    assert_eq!(caught("declined", 51), "by name and data");
    assert_eq!(caught("declined", 52), "by name");
    assert_eq!(caught("other", 7), "catch-all with data");
    assert_eq!(caught("other", 8), "catch-all");
}

#[test]
fn a_fault_leaving_the_process_scope_compensates_its_completed_scopes_then_the_process() {
    let mut t = Tree::default();
    let (book, _) = t.snippet("book");
    let undo_booking = t.handler();
    let booking = t.scope("booking", book, vec![], Some(undo_booking), vec![]);
    let fail = t.add("fail", Activity::Throw { fault: "boom".into(), message: "m".into(), data: None });
    let main = t.add("main", Activity::Sequence { children: vec![booking, fail] });
    let undo_process = t.handler();
    let caught = t.handler();
    let handlers = vec![FaultHandler { fault: Some("fatal".into()), condition: None, reader: Some(caught), body: None }];
    let root = t.scope("process", main, handlers, Some(undo_process), vec![]);
    let def = t.def(root);
    let r = run(
        &def,
        json!({}),
        &[],
        &[],
        Box::new(|h, v, _| {
            match h {
                h if h == undo_booking => log(v, "undo booking"),
                h if h == undo_process => log(v, "undo process"),
                _ => {}
            }
            None
        }),
    );
    assert_eq!(r.snap.status, Status::Faulted);
    assert_eq!(r.snap.fault.as_ref().unwrap().fault.name, "boom");
    assert_eq!(r.snap.fault.as_ref().unwrap().path, "process/main/fail");
    assert_eq!(logged(&r.snap), ["undo booking", "undo process"]);
    let compensated: Vec<&String> = r.trace.iter().filter(|t| t.starts_with("persist:compensated")).collect();
    assert_eq!(compensated.len(), 2, "each step is a persistence point: {:?}", r.trace);
}

/// Scope "work" whose body waits for "close", with event handlers: every
/// "note" message runs `noted`; once after 150 ms, `once`; every 100 ms,
/// `tick`.
fn events_def() -> (Definition, [u32; 3]) {
    let mut t = Tree::default();
    let close = t.receive("close", "close", "order", false);
    let (noted, hn) = t.snippet("noted");
    let (once, ho) = t.snippet("once");
    let (tick, ht) = t.snippet("tick");
    let events = vec![
        EventHandler { trigger: EventTrigger::Message { operation: "note".into(), correlation: Some("order".into()), reader: None }, body: noted },
        EventHandler { trigger: EventTrigger::AfterMs(150), body: once },
        EventHandler { trigger: EventTrigger::EveryMs(100), body: tick },
    ];
    let work = t.scope("work", close, vec![], None, events);
    let start = t.receive("start", "start", "order", true);
    let root = t.add("main", Activity::Sequence { children: vec![start, work] });
    (t.def(root), [hn, ho, ht])
}

#[test]
fn event_handlers_run_beside_the_scope_body_as_often_as_they_fire_and_end_with_it() {
    let (def, [noted, once, tick]) = events_def();
    let messages = [(0, "start"), (50, "note"), (120, "note"), (350, "close")];
    let r = run(
        &def,
        json!({}),
        &["order"],
        &messages,
        Box::new(move |h, v, _| {
            let name = [(noted, "noted"), (once, "once"), (tick, "tick")].iter().find(|(x, _)| *x == h).unwrap().1;
            log(v, name);
            None
        }),
    );
    assert_eq!(r.snap.status, Status::Completed);
    assert_eq!(logged(&r.snap), ["noted", "tick", "noted", "once", "tick", "tick"], "{:?}", r.trace);
    let consumed = r.effects.iter().filter(|e| matches!(e, Effect::ConsumeMessage { .. })).count();
    assert_eq!(consumed, 4, "each message is consumed once, by the handler or the receive");
    let set = r.effects.iter().filter(|e| matches!(e, Effect::SetTimer { .. })).count();
    let cleared = r.effects.iter().filter(|e| matches!(e, Effect::ClearTimer { .. })).count();
    assert_eq!(set, cleared, "the repeating alarm's last timer is withdrawn when the body completes");
    let waits = r.trace.iter().filter(|t| *t == "persist:waiting:main/work").count();
    assert_eq!(waits, 7, "the instance persists each time body and listeners all wait: {:?}", r.trace);
}

#[test]
fn a_fault_in_an_event_handler_is_a_fault_of_its_scope_and_withdraws_the_listeners() {
    let mut t = Tree::default();
    let close = t.receive("close", "close", "order", false);
    let boom = t.add("boom", Activity::Throw { fault: "late".into(), message: "too late".into(), data: None });
    let events = vec![
        EventHandler { trigger: EventTrigger::AfterMs(100), body: boom },
        EventHandler { trigger: EventTrigger::Message { operation: "note".into(), correlation: Some("order".into()), reader: None }, body: t.snippet("noted").0 },
    ];
    let caught = t.handler();
    let handlers = vec![FaultHandler { fault: Some("late".into()), condition: None, reader: Some(caught), body: None }];
    let work = t.scope("work", close, handlers, None, events);
    let start = t.receive("start", "start", "order", true);
    let root = t.add("main", Activity::Sequence { children: vec![start, work] });
    let def = t.def(root);
    let r = run(
        &def,
        json!({}),
        &["order"],
        &[(0, "start")],
        Box::new(move |h, v, _| {
            if h == caught {
                log(v, "caught");
            }
            None
        }),
    );
    assert_eq!(r.snap.status, Status::Completed, "{:?}", r.trace);
    assert_eq!(logged(&r.snap), ["caught"]);
}

#[test]
fn a_receive_on_a_correlation_set_not_yet_initialised_faults_instead_of_waiting_forever() {
    let mut t = Tree::default();
    let first = t.receive("first", "first", "order", false);
    let second = t.receive("second", "second", "other", false);
    let root = t.add("main", Activity::Sequence { children: vec![first, second] });
    let def = t.def(root);
    // Deploy refuses this (nothing initialises either set); run it anyway,
    // as an instance whose "order" was initialised.
    assert!(def.validate().unwrap_err().contains("activity 'main/second' (receive): waits on correlation set 'other'"));
    let mut snap = Snapshot::new("i1".into(), &def, "v1".into(), "{}".into(), 0);
    snap.correlations.insert("order".into(), r#"["o-1"]"#.into());
    let mut m = Machine::new(&def, snap);
    assert!(matches!(m.step(Input::Continue, 0), Yield::Await(Wait::Message { .. })));
    let d = Delivery { seq: 1, message_id: "m1".into(), operation: "first".into(), body: r#"{"id":"o-1"}"#.into() };
    assert_eq!(m.step(Input::Message(d), 0), Yield::Persist(Reason::CommitAfter));
    assert_eq!(m.step(Input::Continue, 0), Yield::Finished(Reason::Faulted));
    let fault = m.snapshot().fault.clone().unwrap();
    assert_eq!(fault.fault.name, "cairn.correlation-violation");
    assert_eq!(fault.path, "main/second");
}

#[test]
fn validation_accepts_several_ways_to_create_an_instance_and_rejects_what_cannot_route() {
    // Two instance-creating receives in a flow, one correlation set: valid.
    let build = |second_set: &str| {
        let mut t = Tree::default();
        let a = t.receive("order", "order", "order", true);
        let b = t.receive("payment", "payment", second_set, true);
        let both = t.add("both", Activity::Flow { branches: vec![a, b] });
        let root = t.add("main", Activity::Sequence { children: vec![both] });
        t.def(root)
    };
    let def = build("order");
    def.validate().unwrap();
    let ops: Vec<String> = def.creating_subscriptions().into_iter().map(|s| s.operation).collect();
    assert_eq!(ops, ["order", "payment"]);
    let e = build("other").validate().unwrap_err();
    assert!(e.contains("2 instance-creating receives (operations 'order', 'payment'); each must name a correlation set, the same one"), "{e}");

    // An instance-creating pick: its branches may name different sets;
    // it must come first.
    let pick = |first: bool| {
        let mut t = Tree::default();
        let (a, _) = t.snippet("a");
        let (b, _) = t.snippet("b");
        let message = |op: &str, set: &str| PickTrigger::Message { operation: op.into(), correlation: Some(set.into()), reader: None };
        let branches = vec![PickBranch { trigger: message("quote", "order"), body: a }, PickBranch { trigger: message("order", "other"), body: b }];
        let p = t.add("start", Activity::Pick { branches, creates_instance: true });
        let (s, _) = t.snippet("s");
        let children = if first { vec![p, s] } else { vec![s, p] };
        let root = t.add("main", Activity::Sequence { children });
        t.def(root)
    };
    pick(true).validate().unwrap();
    let e = pick(false).validate().unwrap_err();
    assert!(e.contains("activity 'main/start' (pick): an instance-creating pick must be the first activity"), "{e}");

    // An event handler on a set that nothing initialises.
    let mut t = Tree::default();
    let start = t.receive("start", "start", "order", true);
    let (noted, _) = t.snippet("noted");
    let (body, _) = t.snippet("body");
    let events = vec![EventHandler { trigger: EventTrigger::Message { operation: "note".into(), correlation: Some("other".into()), reader: None }, body: noted }];
    let work = t.scope("work", body, vec![], None, events);
    let root = t.add("main", Activity::Sequence { children: vec![start, work] });
    let e = t.def(root).validate().unwrap_err();
    assert!(e.contains("activity 'main/work' (scope): waits on correlation set 'other', which nothing before it can have initialised"), "{e}");
}

#[test]
fn a_snapshot_stored_before_these_activities_existed_still_loads() {
    // The stored form of a frame and of a definition node from before:
    // no completion, events, condition or creates-instance fields.
    let frame: Frame = serde_json::from_str(r#"{"node":3,"phase":"child","next":1}"#).unwrap();
    assert_eq!(frame.phase, Phase::Child { next: 1 });
    let node: Node = serde_json::from_str(
        r#"{"name":"s","activity":{"type":"scope","body":1,"atomic":null,"handlers":[{"fault":null,"reader":null,"body":null}],"compensation":null},"transaction":"default"}"#,
    )
    .unwrap();
    let Activity::Scope { events, handlers, .. } = node.activity else { panic!() };
    assert!(events.is_empty() && handlers[0].condition.is_none());
    let each: Activity = serde_json::from_str(r#"{"type":"for-each","items":"/x","parallel":true,"body":1}"#).unwrap();
    assert!(matches!(each, Activity::ForEach { completion: None, .. }));
    let pick: Activity = serde_json::from_str(r#"{"type":"pick","branches":[]}"#).unwrap();
    assert!(matches!(pick, Activity::Pick { creates_instance: false, .. }));
}
