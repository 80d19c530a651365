//! Test guest "microflow-wait": a microflow with a wait, which deploy rejects.
use cairn_guest::{Activity, Process};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Default)]
struct Vars {}

fn define(p: &mut Process<Vars>) -> Activity {
    p.microflow();
    let pause = p.wait_for("pause", std::time::Duration::from_secs(1));
    p.sequence("main", vec![pause])
}

cairn_guest::export_process!("microflow-wait", Vars, define);
