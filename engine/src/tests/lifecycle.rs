//! The lifecycle verbs on the pure engine: retry of a faulted instance from
//! the activity that faulted, and cancel running the handlers.

use super::*;

/// Steps on, answering handler calls with `answer`, until the machine
/// awaits, finishes or is suspended; persistence points are taken and
/// returned with the final yield.
fn run_until_stop(m: &mut Machine, mut input: Input, answer: &mut dyn FnMut(&HandlerCall, &str) -> Result<HandlerOutput, Fault>) -> (Yield, Vec<PersistencePoint>) {
    let mut points = Vec::new();
    for _ in 0..100 {
        let y = m.step(input, 5_000);
        input = match &y {
            Yield::Call(c) => Input::Handler(answer(c, &m.snapshot().variables)),
            Yield::Persist(r) => {
                points.push(m.persistence_point(*r, 5_000));
                Input::Continue
            }
            Yield::Finished(r) => {
                points.push(m.persistence_point(*r, 5_000));
                return (y, points);
            }
            _ => return (y, points),
        };
    }
    panic!("did not stop");
}

fn ok(variables: &str) -> Result<HandlerOutput, Fault> {
    Ok(HandlerOutput { variables: variables.into(), output: Some("true".into()) })
}

#[test]
fn a_retried_instance_resumes_at_the_activity_that_faulted_with_new_variables() {
    // a; take (creating receive, correlated); check (faults while n < 1); after
    let mut t = Tree::new();
    let a = t.snippet("a", T::Default);
    let take = t.receive("take", "order", true);
    let check = t.snippet("check", T::Default);
    let after = t.snippet("after", T::Default);
    let def = t.seq(vec![a, take, check, after], ProcessKind::LongRunning);
    let mut m = Machine::new(&def, Snapshot::new("i1".into(), &def, "v1".into(), r#"{"n":0}"#.into(), 0));
    let calls = std::cell::RefCell::new(Vec::new());
    let mut answer = |c: &HandlerCall, v: &str| {
        calls.borrow_mut().push(c.handler);
        let n: serde_json::Value = serde_json::from_str(v).unwrap();
        if c.handler == 1 && n["n"] == 0 {
            return Err(Fault::new("not-yet", "n is 0"));
        }
        ok(v)
    };
    let (y, _) = run_until_stop(&mut m, Input::Continue, &mut answer);
    assert!(matches!(y, Yield::Await(Wait::Message { .. })), "{y:?}");
    let delivery = Delivery { seq: 1, message_id: "m1".into(), operation: "order".into(), body: r#"{"id":"o-1"}"#.into() };
    let (y, points) = run_until_stop(&mut m, Input::Message(delivery), &mut answer);
    assert_eq!(y, Yield::Finished(Reason::Faulted));
    let faulted = points.last().unwrap();
    assert!(faulted.effects.iter().any(|e| matches!(e, Effect::Uncorrelate { .. })), "the fault released the correlation");
    let point = faulted.snapshot.retry.clone().expect("a retry point is kept");
    assert_eq!(point.stack.iter().map(|f| def.node(f.node).name.as_str()).collect::<Vec<_>>(), ["main", "check"]);
    assert_eq!(point.correlations.len(), 1);

    // Stored and loaded again, then retried with variables that let it pass.
    let stored: Snapshot = serde_json::from_str(&serde_json::to_string(&faulted.snapshot).unwrap()).unwrap();
    let mut m = Machine::resume(&def, stored).expect("a faulted snapshot with a retry point fits its definition");
    calls.borrow_mut().clear();
    let retry = Input::Control(Control::Retry { variables: Some(r#"{"n":1}"#.into()) });
    let (y, points) = run_until_stop(&mut m, retry, &mut answer);
    assert_eq!(y, Yield::Finished(Reason::Completed));
    assert_eq!(points[0].reason, Reason::Retried);
    assert_eq!(points[0].path, "main/check");
    assert!(points[0].effects.iter().any(|e| matches!(e, Effect::Correlate { set, .. } if set == "order")), "correlation set again");
    assert_eq!(*calls.borrow(), [1, 2], "the faulted snippet runs again, then the next activity; nothing before it");
    assert_eq!(m.snapshot().fault, None);
    assert_eq!(m.snapshot().retry, None);
}

#[test]
fn a_fault_a_handler_catches_keeps_no_retry_point_and_a_microflow_keeps_none() {
    let mut t = Tree::new();
    let boom = t.add("boom", Activity::Throw { fault: "x".into(), message: "m".into(), data: None }, T::Default);
    let def = t.seq(vec![boom], ProcessKind::Microflow);
    let (_, snap) = drive(&def);
    assert_eq!(snap.status, Status::Faulted);
    assert_eq!(snap.retry, None, "a microflow is one transaction: nothing to retry from");
    let mut m = Machine::new(&def, snap);
    assert_eq!(m.step(Input::Control(Control::Retry { variables: None }), 0), Yield::Finished(Reason::Faulted), "retry changes nothing");
}

#[test]
fn a_fault_inside_an_atomic_scope_is_retried_from_the_scope_start() {
    let def = atomic_def((T::Default, T::Default), definition::AtomicPolicy { max_attempts: 1, backoff_ms: 0 });
    let mut m = Machine::new(&def, Snapshot::new("i1".into(), &def, "v1".into(), r#"{"n":0}"#.into(), 0));
    let mut answer = |c: &HandlerCall, v: &str| {
        if c.handler == 2 {
            return Err(Fault::new("late", "b failed"));
        }
        ok(v)
    };
    let (y, points) = run_until_stop(&mut m, Input::Continue, &mut answer);
    assert_eq!(y, Yield::Finished(Reason::Faulted));
    let snap = points.last().unwrap().snapshot.clone();
    let names: Vec<_> = snap.retry.as_ref().unwrap().stack.iter().map(|f| def.node(f.node).name.clone()).collect();
    assert_eq!(names, ["main", "batch", "body", "b"]);
    let mut m = Machine::resume(&def, serde_json::from_str(&serde_json::to_string(&snap).unwrap()).unwrap()).unwrap();
    let mut calls = Vec::new();
    let mut answer = |c: &HandlerCall, v: &str| {
        calls.push(c.handler);
        ok(v)
    };
    let (y, points) = run_until_stop(&mut m, Input::Control(Control::Retry { variables: None }), &mut answer);
    assert_eq!(y, Yield::Finished(Reason::Completed));
    assert_eq!(points[0].path, "main/batch", "the retry starts at the atomic scope");
    assert_eq!(calls, [0, 1, 2], "the whole scope runs again");
}

#[test]
fn cancel_runs_the_scope_handlers_then_compensates_completed_scopes_and_terminates() {
    // done { a } (compensation 1); waiting { receive } with a catch-all handler { h }
    let mut t = Tree::new();
    let a = t.snippet("a", T::Default);
    let done = scope(&mut t, "done", a, vec![]);
    let r = t.receive("wait-for-it", "later", false);
    let h = t.snippet("h", T::Default);
    let handlers = vec![definition::FaultHandler { fault: None, condition: None, reader: None, body: Some(h) }];
    let waiting = t.add("waiting", Activity::Scope { body: r, atomic: None, handlers, compensation: None, timeout_ms: None, events: vec![] }, T::Default);
    let def = t.seq(vec![done, waiting], ProcessKind::LongRunning);
    let mut m = Machine::new(&def, correlated(Snapshot::new("i1".into(), &def, "v1".into(), r#"{"n":0,"trace":[]}"#.into(), 0)));
    let calls = std::cell::RefCell::new(Vec::new());
    let mut answer = |c: &HandlerCall, v: &str| {
        calls.borrow_mut().push(c.handler);
        Ok(scope_handler(v, c, &[1]))
    };
    let (y, _) = run_until_stop(&mut m, Input::Continue, &mut answer);
    assert!(matches!(y, Yield::Await(Wait::Message { .. })), "{y:?}");
    calls.borrow_mut().clear();
    let (y, points) = run_until_stop(&mut m, Input::Control(Control::Cancel), &mut answer);
    assert_eq!(y, Yield::Finished(Reason::Cancelled));
    assert_eq!(*calls.borrow(), [2, 1], "the waiting scope's handler, then the completed scope's compensation");
    let reasons: Vec<_> = points.iter().map(|p| p.reason).collect();
    assert_eq!(reasons, [Reason::Compensated, Reason::Cancelled]);
    let end = m.snapshot();
    assert_eq!(end.status, Status::Terminated);
    assert_eq!(end.fault.as_ref().unwrap().fault.name, CANCELLED);
    assert_eq!(end.retry, None, "a cancelled instance is not retried");
    assert_eq!(m.step(Input::Continue, 6_000), Yield::Finished(Reason::Cancelled), "a finished instance stays finished");
    // The compensation step's snapshot (on the root's frame) fits its definition.
    Machine::resume(&def, points[0].snapshot.clone()).expect("resumable mid-compensation");
}

#[test]
fn a_terminate_during_a_cancel_ends_the_instance_terminated_for_good() {
    // A scope waiting for a message, whose catch-all handler suspends: a
    // cancel runs the handler, which stops; the operator then terminates.
    let mut t = Tree::new();
    let r = t.receive("wait-for-it", "later", false);
    let stop = t.add("stop", Activity::Suspend { reason: "look first".into() }, T::Default);
    let handlers = vec![definition::FaultHandler { fault: None, condition: None, reader: None, body: Some(stop) }];
    let waiting = t.add("waiting", Activity::Scope { body: r, atomic: None, handlers, compensation: None, timeout_ms: None, events: vec![] }, T::Default);
    let def = t.seq(vec![waiting], ProcessKind::LongRunning);
    let mut m = Machine::new(&def, correlated(Snapshot::new("i1".into(), &def, "v1".into(), r#"{"n":0,"trace":[]}"#.into(), 0)));
    let mut answer = |c: &HandlerCall, v: &str| Ok(scope_handler(v, c, &[]));
    let (y, _) = run_until_stop(&mut m, Input::Continue, &mut answer);
    assert!(matches!(y, Yield::Await(Wait::Message { .. })), "{y:?}");
    let (y, _) = run_until_stop(&mut m, Input::Control(Control::Cancel), &mut answer);
    assert_eq!(y, Yield::Suspended, "the cancel's handler suspended the instance");
    let (y, _) = run_until_stop(&mut m, Input::Control(Control::Terminate), &mut answer);
    assert_eq!(y, Yield::Finished(Reason::Terminated));
    assert_eq!(m.step(Input::Continue, 6_000), Yield::Finished(Reason::Terminated), "a finished instance stays finished");
}

#[test]
fn a_migrated_instance_goes_on_after_its_activity_in_the_target_order_or_is_refused_naming_the_frame() {
    // v1: a; wait-here; b      v2: a; inserted; wait-here; b      v3: a; elsewhere; b
    let v1 = {
        let mut t = Tree::new();
        let a = t.snippet("a", T::Default);
        let r = t.receive("wait-here", "go", false);
        let b = t.snippet("b", T::Default);
        t.seq(vec![a, r, b], ProcessKind::LongRunning)
    };
    let v2 = {
        let mut t = Tree::new();
        let a = t.snippet("a", T::Default);
        let x = t.snippet("inserted", T::Default);
        let r = t.receive("wait-here", "go", false);
        let b = t.snippet("b", T::Default);
        t.seq(vec![a, x, r, b], ProcessKind::LongRunning)
    };
    let v3 = {
        let mut t = Tree::new();
        let a = t.snippet("a", T::Default);
        let r = t.receive("elsewhere", "go", false);
        let b = t.snippet("b", T::Default);
        t.seq(vec![a, r, b], ProcessKind::LongRunning)
    };
    let mut m = Machine::new(&v1, correlated(Snapshot::new("i1".into(), &v1, "v1".into(), "{}".into(), 0)));
    let (y, _) = run_until_stop(&mut m, Input::Continue, &mut |_, v| ok(v));
    assert!(matches!(y, Yield::Await(Wait::Message { .. })), "{y:?}");
    let waiting = m.persistence_point(Reason::Waiting, 0).snapshot;
    let none = std::collections::BTreeMap::new();

    let moved = crate::migration::migrate(&waiting, &v1, &v2, &none).expect("same paths");
    let mut m = Machine::resume(&v2, moved).unwrap();
    let calls = std::cell::RefCell::new(Vec::new());
    let delivery = Delivery { seq: 1, message_id: "m1".into(), operation: "go".into(), body: "{}".into() };
    let (y, _) = run_until_stop(&mut m, Input::Message(delivery), &mut |c, v| {
        calls.borrow_mut().push(c.handler);
        ok(v)
    });
    assert_eq!(y, Yield::Finished(Reason::Completed));
    assert_eq!(*calls.borrow(), [2], "b (handler 2 of v2) runs; the inserted snippet before the receive does not");

    let refused = crate::migration::migrate(&waiting, &v1, &v3, &none).unwrap_err();
    assert!(refused.contains("frame 1 at 'main/wait-here'"), "{refused}");
    let map = std::collections::BTreeMap::from([("main/wait-here".to_string(), "main/elsewhere".to_string())]);
    let moved = crate::migration::migrate(&waiting, &v1, &v3, &map).expect("mapped");
    assert_eq!(moved.path(&v3), "main/elsewhere");
}

/// The timers a wait is for, flows included.
fn awaited_timers(wait: &Wait) -> Vec<u64> {
    match wait {
        Wait::Timer { timer_id, .. } => vec![*timer_id],
        Wait::Many(waits) => waits.iter().flat_map(awaited_timers).collect(),
        _ => Vec::new(),
    }
}

#[test]
fn a_retry_sets_again_the_timer_of_an_alarm_event_handler_that_was_listening() {
    // Scope "work": pause 50 ms, check (faults the first time), hold 500 ms;
    // beside it, an alarm every 100 ms. The fault withdraws the alarm's
    // timer; the retry must set it again, or the alarm never fires.
    let mut t = Tree::new();
    let pause = t.wait("pause", 50);
    let check = t.snippet("check", T::Default);
    let hold = t.wait("hold", 500);
    let body = t.add("body", Activity::Sequence { children: vec![pause, check, hold] }, T::Default);
    let tick = t.snippet("tick", T::Default);
    let events = vec![definition::EventHandler { trigger: definition::EventTrigger::EveryMs(100), body: tick }];
    let work = t.add(
        "work",
        Activity::Scope { body, atomic: None, handlers: vec![], compensation: None, timeout_ms: None, events },
        T::Default,
    );
    let def = t.seq(vec![work], ProcessKind::LongRunning);
    def.validate().unwrap();
    let mut m = Machine::new(&def, Snapshot::new("i1".into(), &def, "v1".into(), "{}".into(), 0));
    let mut effects = Vec::new();
    let mut input = Input::Continue;
    let mut now = 0;
    let mut faulted_once = false;
    let mut retried = false;
    for _ in 0..100 {
        match m.step(input, now) {
            Yield::Call(c) => {
                let fail = c.handler == 0 && !faulted_once;
                faulted_once |= fail;
                input = Input::Handler(if fail { Err(Fault::new("not-yet", "first check")) } else { ok(&m.snapshot().variables) });
            }
            Yield::Persist(r) => {
                effects.extend(m.persistence_point(r, now).effects);
                input = Input::Continue;
            }
            Yield::Finished(Reason::Faulted) if !retried => {
                m.persistence_point(Reason::Faulted, now);
                retried = true;
                effects.clear();
                now += 10;
                input = Input::Control(Control::Retry { variables: None });
            }
            Yield::Await(wait) if retried => {
                if m.needs_persistence() {
                    effects.extend(m.persistence_point(Reason::Waiting, now).effects);
                }
                let set: Vec<u64> = effects.iter().filter_map(|e| if let Effect::SetTimer { timer_id, .. } = e { Some(*timer_id) } else { None }).collect();
                let awaited = awaited_timers(&wait);
                assert_eq!(awaited.len(), 2, "the hold and the alarm: {wait:?}");
                for id in awaited {
                    assert!(set.contains(&id), "timer {id} is awaited but was not set again after the retry: {wait:?}, set {set:?}");
                }
                return;
            }
            Yield::Await(wait) => {
                if m.needs_persistence() {
                    m.persistence_point(Reason::Waiting, now);
                }
                now = wait_due(&wait).expect("a timer");
                input = Input::Continue;
            }
            y => panic!("unexpected {y:?}"),
        }
    }
    panic!("did not get to the retry");
}

/// The earliest due time a wait is for.
fn wait_due(wait: &Wait) -> Option<u64> {
    match wait {
        Wait::Timer { due_ms, .. } => Some(*due_ms),
        Wait::Many(waits) => waits.iter().filter_map(wait_due).min(),
        _ => None,
    }
}

#[test]
fn a_scope_compensated_while_the_fault_went_out_is_not_compensated_again_after_a_retry() {
    // process scope { outer scope { inner scope (a; compensation undo); check }; last }
    // check faults the first time: outer's default handler compensates
    // inner. Retried, check passes and last faults: the process scope
    // compensates outer, whose inner was already compensated.
    let mut t = Tree::new();
    let a = t.snippet("a", T::Default);
    let undo = t.handler();
    let inner = t.add(
        "inner",
        Activity::Scope { body: a, atomic: None, handlers: vec![], compensation: Some(undo), timeout_ms: None, events: vec![] },
        T::Default,
    );
    let check = t.snippet("check", T::Default);
    let outer_body = t.add("body", Activity::Sequence { children: vec![inner, check] }, T::Default);
    let outer = t.add(
        "outer",
        Activity::Scope { body: outer_body, atomic: None, handlers: vec![], compensation: None, timeout_ms: None, events: vec![] },
        T::Default,
    );
    let last = t.snippet("last", T::Default);
    let steps = t.add("steps", Activity::Sequence { children: vec![outer, last] }, T::Default);
    let mut def = t.seq(vec![], ProcessKind::LongRunning);
    def.nodes.pop();
    def.nodes.push(Node {
        name: "process".into(),
        activity: Activity::Scope { body: steps, atomic: None, handlers: vec![], compensation: None, timeout_ms: None, events: vec![] },
        transaction: T::Default,
    });
    def.root = (def.nodes.len() - 1) as NodeId;
    def.validate().unwrap();
    let (check_h, last_h) = (2, 3);
    let calls = std::cell::RefCell::new(Vec::new());
    let mut answer = |c: &HandlerCall, v: &str| {
        calls.borrow_mut().push(c.handler);
        let first_check = c.handler == check_h && calls.borrow().iter().filter(|h| **h == check_h).count() == 1;
        if first_check || c.handler == last_h {
            return Err(Fault::new("boom", "fails"));
        }
        ok(v)
    };
    let mut m = Machine::new(&def, Snapshot::new("i1".into(), &def, "v1".into(), "{}".into(), 0));
    let (y, _) = run_until_stop(&mut m, Input::Continue, &mut answer);
    assert_eq!(y, Yield::Finished(Reason::Faulted));
    assert_eq!(calls.borrow().iter().filter(|h| **h == undo).count(), 1, "inner compensated as the fault went out: {:?}", calls.borrow());
    let (y, _) = run_until_stop(&mut m, Input::Control(Control::Retry { variables: None }), &mut answer);
    assert_eq!(y, Yield::Finished(Reason::Faulted), "last faults");
    assert_eq!(
        calls.borrow().iter().filter(|h| **h == undo).count(),
        1,
        "inner's compensation ran once, not again when the process compensated outer: {:?}",
        calls.borrow()
    );
}
