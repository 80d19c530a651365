//! The `hello` process: greets whoever says hello, after a pause. It is
//! the README tutorial's process, and the template of `cairn new NAME`,
//! which writes this file with NAME in place of the process name.
//!
//! Build: `cargo build --release --target wasm32-wasip2`; deploy the
//! component `target/wasm32-wasip2/release/*.wasm` with `cairn deploy`.

use cairn_guest::{log, Activity, Process};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The variables: everything that survives between activities.
#[derive(Serialize, Deserialize, Default)]
pub struct Greeting {
    pub name: String,
    pub text: String,
}

/// The message that starts an instance (operation `hello`).
#[derive(Deserialize)]
pub struct Hello {
    pub name: String,
}

/// What the process says: plain Rust, tested natively (`cargo test`).
pub fn greeting(name: &str) -> String {
    format!("Hello, {name}!")
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
        v.text = greeting(&v.name);
        log::info("greeted", &[("name", &v.name)]);
        Ok(())
    });
    p.sequence("main", vec![take, pause, greet])
}

cairn_guest::export_process!("hello", Greeting, define);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greets_by_name() {
        assert_eq!(greeting("Ada"), "Hello, Ada!");
    }
}
