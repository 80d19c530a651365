//! Test guest "invalid": every definition error of docs/semantics.md section 2 that
//! applies to a long-running process, at once. Deploy must reject it and
//! name each activity.

use cairn_guest::{Activity, Process, Retry};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Default)]
struct Vars {}

fn define(p: &mut Process<Vars>) -> Activity {
    let first = p.snippet("first", |_| Ok(()));
    // A receive no message could reach: no correlation, creates nothing.
    let lost = p.receive_any("unreachable", "nobody-sends-this");
    // An instance-creating receive that is not the first activity.
    let late = p.receive_any("late-start", "late").creates_instance();
    // A reply with no request-response receive of its operation.
    let answer = p.reply("answer", "never-asked", |_| Ok(serde_json::json!({})));
    // A wait inside an atomic scope.
    let pause = p.wait_for("pause", std::time::Duration::from_secs(1));
    let tx = p.atomic_scope("tx", pause, Retry::none());
    // A compensate naming a scope that does not exist.
    let undo = p.compensate_scope("undo", "no-such-scope");
    // A receive on a correlation set that nothing initialises (no
    // instance-creating receive or pick uses it).
    p.correlation_set("never-set", &[("id", "/id")]);
    let orphan = p.receive_any("orphan", "orphaned").correlate("never-set");
    p.sequence("main", vec![first, lost, late, answer, tx, undo, orphan])
}

cairn_guest::export_process!("invalid", Vars, define);
