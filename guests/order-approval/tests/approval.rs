//! The order-approval process, run natively on the pure engine with
//! `cairn-testkit`: no server, no WebAssembly, a virtual clock.

use cairn_testkit::{Fault, ProcessTest, Reason, Status};
use order_approval::{define, Order};
use serde_json::{json, Value};

/// A test of the process with `pricing` answering `total`.
fn approval(total: f64) -> ProcessTest<Order> {
    let mut t = ProcessTest::new("order-approval", define);
    t.stub_activity("pricing", "quote", move |_| Ok(json!({ "total": total })));
    t
}

fn submit(window_ms: u64) -> Value {
    json!({ "order_id": "o-1", "customer": "ada", "lines": [{ "sku": "tea", "qty": 3 }], "approval_window_ms": window_ms })
}

#[test]
fn a_small_order_is_approved_automatically_and_confirmed() {
    let mut t = approval(20.0);
    t.send("submit-order", submit(60_000));
    assert_eq!(t.status(), Status::Completed);
    let v = t.variables();
    assert_eq!((v.status.as_str(), v.approver.as_deref()), ("confirmed", Some("auto")));
    assert_eq!(t.replies()[0].body, json!({ "order_id": "o-1", "total": 20.0, "needs_approval": false }));
    assert!(t.sent().is_empty(), "no rejection is sent");
}

#[test]
fn a_large_order_waits_for_approval_and_an_approval_confirms_it() {
    let mut t = approval(1500.0);
    t.send("submit-order", submit(60_000));
    assert_eq!(t.status(), Status::Waiting);
    assert_eq!(t.position(), "main/needs-approval/await-approval");
    assert_eq!(t.replies()[0].body["needs_approval"], true, "the submitter has the quote before the approval");
    t.send("approve", json!({ "order_id": "o-1", "approved": true, "approver": "grace" }));
    assert_eq!(t.status(), Status::Completed);
    assert_eq!(t.variables().approver.as_deref(), Some("grace"));
    assert_eq!(t.variables().status, "confirmed");
}

#[test]
fn a_large_order_not_approved_within_its_window_is_rejected_and_the_notifier_told() {
    let mut t = approval(1500.0);
    // A window of a week: the virtual clock skips it at once.
    t.send("submit-order", submit(7 * 24 * 3600 * 1000));
    assert_eq!(t.position(), "main/needs-approval/await-approval");
    let before = t.now();
    assert!(t.skip_to_next_timer(), "the approval's timeout is a timer");
    assert!(t.now().duration_since(before).unwrap().as_secs() >= 7 * 24 * 3600 - 60, "a week passed on the virtual clock");
    assert_eq!(t.status(), Status::Completed);
    let v = t.variables();
    assert_eq!((v.status.as_str(), v.approver.as_deref(), v.approved), ("rejected", Some("timeout"), Some(false)));
    let sent = &t.sent()[0];
    assert_eq!((sent.target.as_str(), sent.operation.as_str()), ("activity 'notifier'", "order-rejected"));
    assert_eq!(sent.body["by"], "timeout");
    // The history of persistence points: the invoke's dispatch and result,
    // the wait for the approval, its timeout and the send.
    let reasons = t.reasons();
    assert_eq!(reasons.first().map(String::as_str), Some("created"));
    assert!(reasons.iter().any(|r| r == "waiting"), "{reasons:?}");
    assert_eq!(t.history().last().unwrap().reason, Reason::Completed);
}

#[test]
fn an_order_without_lines_faults_with_invalid_order_at_validate() {
    let mut t = approval(20.0);
    t.send("submit-order", json!({ "order_id": "o-2", "customer": "ada", "lines": [] }));
    assert_eq!(t.status(), Status::Faulted);
    let fault = t.fault().unwrap();
    assert_eq!((fault.fault.name.as_str(), fault.path.as_str()), ("invalid-order", "main/validate"));
    assert_eq!(t.replies()[0].fault.as_ref().map(|f| f.name.as_str()), Some("invalid-order"), "the submitter learns of the fault");
}

#[test]
fn a_pricing_fault_faults_the_instance_and_a_retry_with_a_working_pricing_completes_it() {
    let mut t = ProcessTest::new("order-approval", define);
    let mut calls = 0;
    t.stub_activity("pricing", "quote", move |_| {
        calls += 1;
        if calls == 1 {
            Err(Fault::new("pricing-down", "the price list is being updated"))
        } else {
            Ok(json!({ "total": 20.0 }))
        }
    });
    t.send("submit-order", submit(60_000));
    assert_eq!(t.status(), Status::Faulted);
    assert_eq!(t.fault().unwrap().path, "main/price");
    t.retry(None);
    assert_eq!(t.status(), Status::Completed);
    assert_eq!(t.variables().status, "confirmed");
    assert!(t.reasons().iter().any(|r| r == "retried"));
}
