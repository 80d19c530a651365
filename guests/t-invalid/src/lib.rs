//! Test guest "invalid": a receive with no correlation that does not create
//! instances, which no message could ever reach. Deploy must reject it.

use cairn_guest::{Activity, Process};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Default)]
struct Vars {}

fn define(p: &mut Process<Vars>) -> Activity {
    let first = p.snippet("first", |_| Ok(()));
    let lost = p.receive_any("unreachable", "nobody-sends-this");
    p.sequence("main", vec![first, lost])
}

cairn_guest::export_process!("invalid", Vars, define);
