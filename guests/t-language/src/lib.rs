//! Test guest "language": repeat-until, switch, for-each with a completion
//! condition (one after another and in parallel), fault handlers matching
//! on the fault's data, and the process scope's own fault and compensation
//! handlers. Started by name with `{"mode": ...}` and what the mode reads.

use cairn_guest::{Activity, Fault, Process};
use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Serialize, Deserialize, Default)]
struct Vars {
    mode: String,
    /// repeat: the body sets `done` once `tries` reaches `goal`.
    tries: u32,
    goal: u32,
    /// switch: the total decides the route.
    total: u32,
    route: String,
    /// for-each: the items, and those whose iteration ran to its end.
    items: Vec<u64>,
    visited: Vec<u64>,
    /// fault-data: the fault to raise, and which handler caught it.
    fault: String,
    code: u32,
    caught: String,
    trace: Vec<String>,
}

fn define(p: &mut Process<Vars>) -> Activity {
    // repeat: the body runs until the goal is reached, and at least once.
    let attempt = p.snippet("attempt", |v| {
        v.tries += 1;
        Ok(())
    });
    let repeat = p.repeat_until("repeat", attempt, |v| v.tries >= v.goal);

    // switch: the first case that holds, else otherwise.
    let board = p.snippet("board", |v| {
        v.route = "board".into();
        Ok(())
    });
    let manager = p.snippet("manager", |v| {
        v.route = "manager".into();
        Ok(())
    });
    let auto = p.snippet("auto", |v| {
        v.route = "auto".into();
        Ok(())
    });
    let (large, medium) = (p.case(|v| v.total > 100_000), p.case(|v| v.total > 1000));
    let route = p.switch("route", vec![(large, board), (medium, manager)], Some(auto));

    // each: one after another, until the visited items sum to 6 or more.
    let visit = p.snippet("visit", |v| {
        v.visited.extend(cairn_guest::item::<u64>());
        Ok(())
    });
    let each = p.for_each("each", "/items", visit);
    let each = p.until(each, |v| v.visited.iter().sum::<u64>() >= 6);

    // each-parallel: every item waits item x 100 ms, then is visited; once
    // two are, the others are cancelled (an item of 36000 waits an hour).
    let nap = p.wait_until("nap", |_| {
        let ms = cairn_guest::item::<u64>().unwrap_or(0) * 100;
        std::time::SystemTime::now() + Duration::from_millis(ms)
    });
    let seen = p.snippet("seen", |v| {
        v.visited.extend(cairn_guest::item::<u64>());
        Ok(())
    });
    let iteration = p.sequence("iteration", vec![nap, seen]);
    let parallel = p.for_each_parallel("each-parallel", "/items", iteration);
    let parallel = p.until(parallel, |v| v.visited.len() >= 2);

    // fault-data: the most specific handler catches.
    let raise = p.snippet("raise", |v| Err(Fault::new(v.fault.clone(), "raised").with_data(serde_json::json!({ "code": v.code }))));
    let risky = p.scope("risky", raise);
    let risky = p.on_fault(
        risky,
        None,
        |v, f| {
            v.caught = format!("any:{}", f.name);
            Ok(())
        },
        None,
    );
    let risky = p.on_fault(
        risky,
        Some("declined"),
        |v, _| {
            v.caught = "declined".into();
            Ok(())
        },
        None,
    );
    let risky = p.on_fault_where(
        risky,
        Some("declined"),
        |_, f| f.data["code"] == 51,
        |v, _| {
            v.caught = "declined:51".into();
            Ok(())
        },
        None,
    );
    let risky = p.on_fault_where(
        risky,
        None,
        |_, f| f.data["code"] == 7,
        |v, f| {
            v.caught = format!("any:{}:7", f.name);
            Ok(())
        },
        None,
    );

    // process-fault / process-compensate: a completed scope, then a fault
    // that no inner scope catches.
    let book = p.snippet("book", |v| {
        v.trace.push("booked".into());
        Ok(())
    });
    let booking = p.scope("booking", book);
    let booking = p.on_compensate(booking, |v, _| {
        v.trace.push("undo booking".into());
        Ok(())
    });
    let fail = p.snippet("fail", |v| Err(Fault::new(v.fault.clone(), "nobody here catches this")));
    let escalate = p.sequence("escalate", vec![booking, fail]);

    let mut cases = Vec::new();
    for (mode, body) in [
        ("repeat", repeat),
        ("switch", route),
        ("each", each),
        ("each-parallel", parallel),
        ("fault-data", risky),
        ("process", escalate),
    ] {
        cases.push((p.case(move |v| v.mode == mode), body));
    }
    let modes = p.switch("mode", cases, None);
    let main = p.sequence("main", vec![modes]);

    // The process's own handlers: "fatal" is caught here; anything else
    // compensates the completed scopes, then the process, and faults.
    let process = p.process_scope(main);
    let process = p.on_fault(
        process,
        Some("fatal"),
        |v, f| {
            v.caught = format!("process:{}", f.name);
            Ok(())
        },
        None,
    );
    p.on_compensate(process, |v, _| {
        v.trace.push("undo process".into());
        Ok(())
    })
}

cairn_guest::export_process!("language", Vars, define);
