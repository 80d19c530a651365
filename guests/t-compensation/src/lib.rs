//! Test guest "compensation". Mode "fail": an outer scope holds scopes a,
//! b (with b1 nested) and c; c fails, so the default handlers undo b1, b and
//! a, each compensation handler recording the step its scope had reached at
//! its end. Mode "refund": a fault handler compensates one named scope.

use cairn_guest::{Activity, Fault, Process};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Default)]
struct Vars {
    mode: String,
    step: u32,
    trace: Vec<String>,
    noted: bool,
}

fn step(p: &mut Process<Vars>, name: &str, n: u32) -> Activity {
    p.snippet(name, move |v| {
        v.step = n;
        Ok(())
    })
}

fn undoable(p: &mut Process<Vars>, name: &'static str, body: Activity) -> Activity {
    let s = p.scope(name, body);
    p.on_compensate(s, move |v, at_end| {
        v.trace.push(format!("undo {name} at step {}", at_end.step));
        Ok(())
    })
}

fn define(p: &mut Process<Vars>) -> Activity {
    // Mode "fail".
    let s1 = step(p, "work-a", 1);
    let a = undoable(p, "a", s1);
    let s2 = step(p, "work-b1", 2);
    let b1 = undoable(p, "b1", s2);
    let s3 = step(p, "work-b", 3);
    let b_body = p.sequence("b-body", vec![b1, s3]);
    let b = undoable(p, "b", b_body);
    let s4 = step(p, "work-c", 4);
    let boom = p.throw("boom", "boom", "the last scope failed");
    let c_body = p.sequence("c-body", vec![s4, boom]);
    let c = undoable(p, "c", c_body);
    let outer_body = p.sequence("outer-body", vec![a, b, c]);
    let outer = p.scope("outer", outer_body);

    // Mode "refund".
    let s5 = step(p, "reserve-stock", 5);
    let reserve = undoable(p, "reserve", s5);
    let decline = p.snippet("charge-card", |_| Err(Fault::new("declined", "card declined")));
    let charge = undoable(p, "charge", decline);
    let order_body = p.sequence("order-body", vec![reserve, charge]);
    let order = p.scope("order", order_body);
    let refund = p.compensate_scope("refund", "reserve");
    let noted = p.snippet("noted", |v| {
        v.noted = true;
        Ok(())
    });
    let handler = p.sequence("on-declined", vec![refund, noted]);
    let order = p.on_fault(order, Some("declined"), |_, _| Ok(()), Some(handler));

    let choose = p.if_else("mode", |v| v.mode == "refund", order, Some(outer));
    p.sequence("main", vec![choose])
}

cairn_guest::export_process!("compensation", Vars, define);
