//! The README tutorial's process: greets whoever says hello, after a pause.

use cairn_guest::{log, Activity, Process};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The variables: everything that survives between activities.
#[derive(Serialize, Deserialize, Default)]
struct Greeting {
    name: String,
    text: String,
}

/// The message that starts an instance.
#[derive(Deserialize)]
struct Hello {
    name: String,
}

fn define(p: &mut Process<Greeting>) -> Activity {
    let take = p
        .receive("take", "hello", |v: &mut Greeting, m: Hello| {
            v.name = m.name;
            Ok(())
        })
        .creates_instance();
    let pause = p.wait_for("pause", Duration::from_millis(500));
    let greet = p.snippet("greet", |v| {
        v.text = format!("Hello, {}!", v.name);
        log::info("greeted", &[("name", &v.name)]);
        Ok(())
    });
    p.sequence("main", vec![take, pause, greet])
}

cairn_guest::export_process!("hello", Greeting, define);
