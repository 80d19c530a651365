//! Test guest "faults": a scope whose snippet raises the fault the `mode`
//! names; handlers catch "known" (with a recovery step), "fatal" (and
//! rethrow it), and anything else (catch-all). Mode "slow" runs a scope
//! whose deadline passes while it waits.

use cairn_guest::{Activity, Fault, Process};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Default)]
struct Vars {
    mode: String,
    caught: Option<String>,
    caught_data: serde_json::Value,
    recovered: bool,
    after: bool,
    timed_out: bool,
}

fn define(p: &mut Process<Vars>) -> Activity {
    let act = p.snippet("act", |v| match v.mode.as_str() {
        "known" => Err(Fault::new("known", "a known problem").with_data(serde_json::json!({ "x": 1 }))),
        "fatal" => Err(Fault::new("fatal", "cannot go on").with_data("why")),
        "other" => Err(Fault::new("other", "something else")),
        _ => Ok(()),
    });
    let work = p.scope("work", act);
    let recover = p.snippet("recover", |v| {
        v.recovered = true;
        Ok(())
    });
    let work = p.on_fault(
        work,
        Some("known"),
        |v, f| {
            v.caught = Some(f.name.clone());
            v.caught_data = f.data.clone();
            Ok(())
        },
        Some(recover),
    );
    let again = p.rethrow("again");
    let work = p.on_fault(
        work,
        Some("fatal"),
        |v, f| {
            v.caught = Some(f.name.clone());
            Ok(())
        },
        Some(again),
    );
    let work = p.on_fault(
        work,
        None,
        |v, f| {
            v.caught = Some(format!("any:{}", f.name));
            Ok(())
        },
        None,
    );
    // Mode "slow": a scope with a 300 ms deadline waits an hour; the
    // timeout fault is caught by the scope's own handler.
    let never = p.wait_for("never", std::time::Duration::from_secs(3600));
    let window = p.scope("window", never).timeout(std::time::Duration::from_millis(300));
    let window = p.on_fault(
        window,
        Some("cairn.scope-timeout"),
        |v, _| {
            v.timed_out = true;
            Ok(())
        },
        None,
    );
    let slow = p.if_else("slow?", |v| v.mode == "slow", window, None);
    let after = p.snippet("after", |v| {
        v.after = true;
        Ok(())
    });
    p.sequence("main", vec![work, slow, after])
}

cairn_guest::export_process!("faults", Vars, define);
