//! Test guest "t-lifecycle": an instance is created by `lifecycle-start`
//! (correlated by `key`), completes a compensable scope `book`, runs one
//! snippet per transactional behaviour, faults with `not-allowed` at `check`
//! unless `allow` is set, then waits in scope `waiting` for `lifecycle-go`;
//! the scope's catch-all handler records `handled` (a cancel runs it).

use cairn_guest::{Activity, Fault, Process, Transaction};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Default)]
struct Vars {
    /// No default: variables without it do not decode.
    key: String,
    #[serde(default)]
    allow: bool,
    #[serde(default)]
    steps: Vec<String>,
}

#[derive(Deserialize)]
struct Start {
    key: String,
    #[serde(default)]
    allow: bool,
}

fn step(name: &'static str) -> impl Fn(&mut Vars) -> Result<(), Fault> {
    move |v| {
        v.steps.push(name.into());
        Ok(())
    }
}

fn define(p: &mut Process<Vars>) -> Activity {
    p.correlation_set("key", &[("key", "/key")]);
    let start = p
        .receive("start", "lifecycle-start", |v: &mut Vars, m: Start| {
            v.key = m.key;
            v.allow = m.allow;
            Ok(())
        })
        .creates_instance()
        .correlate("key");
    let book = p.snippet("book-work", step("book"));
    let book = p.scope("book", book);
    let book = p.on_compensate(book, |v, _| {
        v.steps.push("undo-book".into());
        Ok(())
    });
    let before = p.snippet("before", step("before")).transaction(Transaction::CommitBefore);
    let after = p.snippet("after", step("after")).transaction(Transaction::CommitAfter);
    let own = p.snippet("own", step("own")).transaction(Transaction::RequiresOwn);
    let part = p.snippet("part", step("part")).transaction(Transaction::Participates);
    let check = p.snippet("check", |v| {
        if !v.allow {
            return Err(Fault::new("not-allowed", format!("{} is not allowed", v.key)));
        }
        v.steps.push("check".into());
        Ok(())
    });
    let go = p.receive_any("go", "lifecycle-go").correlate("key");
    let waiting = p.scope("waiting", go);
    let handled = p.snippet("on-fault", step("handled"));
    let waiting = p.on_fault(waiting, None, |_, _| Ok(()), Some(handled));
    let done = p.snippet("done", step("done"));
    p.sequence("main", vec![start, book, before, after, own, part, check, waiting, done])
}

cairn_guest::export_process!("t-lifecycle", Vars, define);
