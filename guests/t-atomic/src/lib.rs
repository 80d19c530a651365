//! Test guest "atomic": an atomic scope whose two handlers share a
//! non-serializable connection object, with a buffered one-way call between
//! them. Mode "fail" makes the second handler fail every time, so the scope
//! is rolled back and retried three times before the fault leaves.

use cairn_guest::{log, scope_local, Activity, Fault, Process, Retry};
use serde::{Deserialize, Serialize};
use std::rc::Rc;
use std::time::Duration;

/// Not Serialize, not Send: it can only live inside the scope's instance.
struct Connection {
    opened_by: Rc<String>,
    uses: u32,
}

#[derive(Serialize, Deserialize, Default)]
struct Vars {
    mode: String,
    key: String,
    total: u32,
    uses_seen: Vec<u32>,
    opened_by: String,
}

fn define(p: &mut Process<Vars>) -> Activity {
    let open = p.snippet("open", |v| {
        v.total += 10;
        let who = v.key.clone();
        scope_local(
            || Connection { opened_by: Rc::new(who), uses: 0 },
            |c| {
                c.uses += 1;
                v.uses_seen.push(c.uses);
            },
        );
        log::info("atomic attempt", &[("key", &v.key)]);
        Ok(())
    });
    let tell = p.send_activity("tell", "recorder", "record", |v| Ok(serde_json::json!({ "key": v.key, "what": "buffered" })));
    let finish = p.snippet("use", |v| {
        scope_local(
            || Connection { opened_by: Rc::new("nobody: a new instance".into()), uses: 0 },
            |c| {
                c.uses += 1;
                v.uses_seen.push(c.uses);
                v.opened_by = c.opened_by.to_string();
            },
        );
        if v.mode == "fail" {
            return Err(Fault::new("flaky", "the second step always fails"));
        }
        Ok(())
    });
    let body = p.sequence("body", vec![open, tell, finish]);
    let batch = p.atomic_scope("batch", body, Retry { attempts: 3, backoff: Duration::from_millis(50) });
    let after = p.snippet("after", |v| {
        // A fresh instance: the scope's connection is gone.
        let fresh = scope_local(|| Connection { opened_by: Rc::new(String::new()), uses: 0 }, |c| c.uses);
        v.uses_seen.push(fresh);
        Ok(())
    });
    p.sequence("main", vec![batch, after])
}

cairn_guest::export_process!("atomic", Vars, define);
