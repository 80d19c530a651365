//! Regression tests for what the fuzz targets (`fuzz/`, see FUZZING.md)
//! found in the engine: one test per crash, each on the smallest input that
//! showed it. Tests marked "(size)" pin crashes that need inputs larger than
//! libFuzzer's default length (deep trees, thousands of branches): they were
//! found while writing the targets' simulated driver, not by a run.

use crate::definition::RetryPolicy;

/// `definition_json`: a retry policy asked for the wait before attempt 0 or
/// 1 subtracted past zero (`next - 2`) and panicked. No wait comes before
/// the first attempt.
#[test]
fn a_retry_backoff_before_the_first_attempt_is_none() {
    let p = RetryPolicy { max_attempts: 3, initial_backoff_ms: 100, max_backoff_ms: 1_000, faults: Vec::new() };
    assert_eq!(p.backoff(0, "cairn.timeout"), None);
    assert_eq!(p.backoff(1, "cairn.timeout"), None);
    assert_eq!(p.backoff(2, "cairn.timeout"), Some(100));
    assert_eq!(p.backoff(u32::MAX, "cairn.timeout"), None);
}

use crate::definition::{Activity, FaultHandler, Node, NodeId, ProcessKind, Transaction, WaitFor};
use crate::{Definition, Input, Machine, Snapshot, Wait, Yield};

fn node(name: &str, activity: Activity) -> Node {
    Node { name: name.into(), activity, transaction: Transaction::Default }
}

fn definition(nodes: Vec<Node>, root: NodeId, handler_count: u32) -> Definition {
    Definition {
        name: "fuzzed".into(),
        kind: ProcessKind::LongRunning,
        keep_final_state: true,
        deferred_recovery: false,
        initial_variables: "{}".into(),
        correlation_sets: Vec::new(),
        nodes,
        root,
        handler_count,
    }
}

/// Runs `f` on a thread with a small stack, as the host's drivers run on
/// tokio's worker threads (2 MiB): a recursion that grows with the input
/// overflows it and aborts the test process.
fn on_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new().stack_size(256 << 10).spawn(f).unwrap().join().unwrap()
}

/// `definition_arena` (size): every branch of a flow that waits set itself aside
/// and ran the next branch by calling the run loop again, one level of
/// recursion per branch. A parallel for-each over a large array (its size
/// is data, not definition) overflowed the stack of the driver's thread.
#[test]
fn a_parallel_for_each_over_many_items_waits_without_recursing_per_branch() {
    let def = definition(
        vec![
            node("main", Activity::ForEach { items: "/items".into(), parallel: true, body: 1, completion: None }),
            node("wait", Activity::Wait { wait: WaitFor::DurationMs(1_000) }),
        ],
        0,
        0,
    );
    let items = vec![0; 20_000];
    let variables = serde_json::json!({ "items": items }).to_string();
    let waits = on_small_stack(move || {
        let snap = Snapshot::new("i".into(), &def, "v".into(), variables, 0);
        let mut m = Machine::new(&def, snap);
        loop {
            match m.step(Input::Continue, 0) {
                Yield::Persist(_) => continue,
                Yield::Await(Wait::Many(waits)) => return waits.len(),
                other => panic!("unexpected {other:?}"),
            }
        }
    });
    assert_eq!(waits, 20_000);
}

/// `definition_arena` (size): a caught fault ran the rest of the instance by
/// calling the run loop again from inside the fault's propagation, one level
/// of recursion per fault raised without a handler call in between. A
/// sequence of scopes whose bodies throw overflowed the stack.
#[test]
fn faults_caught_one_after_another_in_one_step_do_not_recurse_per_fault() {
    let scopes = 3_000;
    let mut nodes = Vec::new();
    let mut children = Vec::new();
    for i in 0..scopes {
        let scope = nodes.len() as NodeId;
        let handlers = vec![FaultHandler { fault: None, condition: None, reader: None, body: None }];
        let activity = Activity::Scope { body: scope + 1, atomic: None, handlers, compensation: None, timeout_ms: None, events: vec![] };
        nodes.push(Node { transaction: Transaction::Participates, ..node(&format!("s{i}"), activity) });
        nodes.push(node("throw", Activity::Throw { fault: "f".into(), message: "m".into(), data: None }));
        children.push(scope);
    }
    let root = nodes.len() as NodeId;
    nodes.push(node("main", Activity::Sequence { children }));
    let def = definition(nodes, root, 0);
    let finished = on_small_stack(move || {
        let snap = Snapshot::new("i".into(), &def, "v".into(), "{}".into(), 0);
        let mut m = Machine::new(&def, snap);
        loop {
            match m.step(Input::Continue, 0) {
                Yield::Persist(_) => continue,
                Yield::Finished(r) => return (r, m.snapshot().status),
                other => panic!("unexpected {other:?}"),
            }
        }
    });
    assert_eq!(finished, (crate::Reason::Completed, crate::Status::Completed));
}

/// A chain of `depth` sequences, each the only child of the one above.
fn chain(depth: usize) -> Definition {
    let nodes = (0..depth)
        .map(|i| {
            let children = if i + 1 < depth { vec![(i + 1) as NodeId] } else { Vec::new() };
            node("a", Activity::Sequence { children })
        })
        .collect();
    definition(nodes, 0, 0)
}

/// `definition_arena` (size): validation walked the tree recursively and built
/// every activity path in full, so a deep arena (a component describes
/// whatever it likes) overflowed the stack, or with long names ran out of
/// memory, before any rule was checked. Nesting is bounded now, and
/// checked first, without recursion.
#[test]
fn a_deeply_nested_definition_is_refused_without_recursing() {
    let deep = chain(crate::definition::MAX_NODES);
    let e = on_small_stack(move || deep.validate()).unwrap_err();
    assert!(e.contains("nested") && e.contains(&crate::definition::MAX_DEPTH.to_string()), "{e}");
    assert!(chain(crate::definition::MAX_DEPTH).validate().is_ok());
    assert!(chain(crate::definition::MAX_DEPTH + 1).validate().is_err());
}

/// `definition_arena` (size): activity paths had no bound; a path is now at most
/// `MAX_PATH_BYTES` (it is part of every history entry, error and
/// idempotency key).
#[test]
fn an_overlong_activity_path_is_refused() {
    let mut def = chain(3);
    def.nodes[2].name = "x".repeat(crate::definition::MAX_PATH_BYTES);
    let e = def.validate().unwrap_err();
    assert!(e.contains("path"), "{e}");
}

/// `definition_arena` (size): a definition of more than `MAX_NODES` activities is
/// refused before anything walks it.
#[test]
fn a_definition_with_too_many_nodes_is_refused() {
    let n = crate::definition::MAX_NODES + 1;
    let mut nodes: Vec<Node> = (1..n).map(|i| node(&format!("s{i}"), Activity::Snippet { handler: 0 })).collect();
    nodes.insert(0, node("main", Activity::Sequence { children: (1..n as NodeId).collect() }));
    let e = definition(nodes, 0, 1).validate().unwrap_err();
    assert!(e.contains(&crate::definition::MAX_NODES.to_string()), "{e}");
}

/// `k` flows nested in one another, each with a waiting branch, so that
/// when all wait every inner flow is set aside inside the outer one.
fn nested_flows(k: usize) -> Definition {
    let mut nodes = Vec::new();
    for i in 0..k {
        let flow = nodes.len() as NodeId;
        let mut branches = vec![flow + 1];
        if i + 1 < k {
            branches.push(flow + 2);
        }
        nodes.push(node(&format!("f{i}"), Activity::Flow { branches }));
        nodes.push(node("wait", Activity::Wait { wait: WaitFor::DurationMs(1_000) }));
    }
    definition(nodes, 0, 0)
}

/// `definition_arena` (size): every flow (or parallel for-each) nested in a set-aside
/// branch of another nests the snapshot's JSON four levels deeper, every
/// scope's registered compensation two, and the store decodes JSON at most
/// 128 levels deep: a valid definition's instance wrote a snapshot that it
/// could never load again. Validation bounds that nesting now, and at the
/// bound a snapshot still decodes.
#[test]
fn nested_flows_whose_snapshot_could_not_be_decoded_are_refused() {
    let limit = crate::definition::MAX_NESTED_SCOPES_AND_FLOWS;
    let e = nested_flows(40).validate().unwrap_err();
    assert!(e.contains("flows"), "{e}");
    assert!(nested_flows(limit + 1).validate().is_err());
    let def = nested_flows(limit);
    def.validate().unwrap();
    let mut m = Machine::new(&def, Snapshot::new("i".into(), &def, "v".into(), "{}".into(), 0));
    loop {
        match m.step(Input::Continue, 0) {
            Yield::Persist(_) => continue,
            Yield::Await(Wait::Many(waits)) => {
                assert_eq!(waits.len(), limit);
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let point = m.persistence_point(crate::Reason::Waiting, 0);
    let text = serde_json::to_string(&point.snapshot).unwrap();
    let back: Snapshot = serde_json::from_str(&text).expect("the deepest snapshot validation allows decodes");
    assert_eq!(back, point.snapshot);
}

/// `definition_arena` (size): whether a rethrow sits in a fault handler was asked
/// of every scope's handler body for every rethrow, walking the body each
/// time, and a compensate's scope was looked for among all nodes: quadratic
/// and worse. Both are computed once per validation now.
#[test]
fn many_rethrows_in_nested_handlers_validate_quickly() {
    let scopes = crate::definition::MAX_NESTED_SCOPES_AND_FLOWS;
    let rethrows = crate::definition::MAX_NODES - 3 * scopes - 2;
    let mut nodes = Vec::new();
    for i in 0..scopes {
        let id = nodes.len() as NodeId;
        let handlers = vec![FaultHandler { fault: None, condition: None, reader: None, body: Some(id + 2) }];
        nodes.push(node(&format!("s{i}"), Activity::Scope { body: id + 1, atomic: None, handlers, compensation: None, timeout_ms: None, events: vec![] }));
        nodes.push(node("body", Activity::Throw { fault: "f".into(), message: "m".into(), data: None }));
        // The handler's body: the next scope, or at the bottom the rethrows.
        let children = if i + 1 < scopes { vec![id + 3] } else { ((id + 3)..(id + 3 + rethrows as NodeId)).collect() };
        nodes.push(node("handle", Activity::Sequence { children }));
    }
    for i in 0..rethrows {
        nodes.push(node(&format!("r{i}"), Activity::Rethrow));
    }
    nodes.push(node("c", Activity::Compensate { scope: Some("s3".into()) }));
    let root = nodes.len() as NodeId;
    nodes.push(node("main", Activity::Sequence { children: vec![0, root - 1] }));
    let def = definition(nodes, root, 0);
    let started = std::time::Instant::now();
    def.validate().unwrap();
    assert!(started.elapsed() < std::time::Duration::from_secs(10), "validation took {:?}", started.elapsed());
}

/// `message_intake`: without correctly rounded float parsing, one number
/// written two ways (`10e-30`, `1e-29`), or the same text parsed inside the
/// API's request and alone, became two different floats, so a message's
/// correlation values depended on how its sender wrote the number: one sent
/// through the API and one sent by another instance (delivered as written)
/// did not route to the same instance.
#[test]
fn correlation_values_do_not_depend_on_how_a_number_is_written() {
    use crate::definition::{CorrelationSet, Property};
    let set = CorrelationSet { name: "key".into(), properties: vec![Property { name: "key".into(), pointer: "/key".into() }] };
    let direct = crate::correlation_values(&set, r#"{"key":[10e-30,0]}"#).unwrap();
    assert_eq!(direct, crate::correlation_values(&set, r#"{"key":[1e-29,0]}"#).unwrap());
    // The API parses the body inside its request and writes it back as text.
    let request: serde_json::Value = serde_json::from_slice(br#"{"body":{"key":[10e-30,0]},"operation":"go"}"#).unwrap();
    let via_api = crate::correlation_values(&set, &request["body"].to_string()).unwrap();
    assert_eq!(via_api, direct);
}
