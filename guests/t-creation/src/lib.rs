//! Test guest "creation": two instance-creating receives in a flow, of
//! different operations, both correlated by the deal. Whichever message
//! comes first creates the instance; the other routes to it by the
//! correlation set the first initialised.

use cairn_guest::{Activity, Process};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Default)]
struct Vars {
    deal: String,
    arrived: Vec<String>,
    done: bool,
}

#[derive(Deserialize)]
struct Part {
    deal: String,
}

fn define(p: &mut Process<Vars>) -> Activity {
    p.correlation_set("deal", &[("deal", "/deal")]);
    let order = p
        .receive("order", "order", |v: &mut Vars, m: Part| {
            v.deal = m.deal;
            v.arrived.push("order".into());
            Ok(())
        })
        .creates_instance()
        .correlate("deal");
    let payment = p
        .receive("payment", "payment", |v: &mut Vars, m: Part| {
            v.deal = m.deal;
            v.arrived.push("payment".into());
            Ok(())
        })
        .creates_instance()
        .correlate("deal");
    let both = p.flow("both", vec![order, payment]);
    let done = p.snippet("done", |v| {
        v.done = true;
        Ok(())
    });
    p.sequence("main", vec![both, done])
}

cairn_guest::export_process!("creation", Vars, define);
