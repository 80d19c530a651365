//! `cairn new NAME`: a process crate that builds on its own, outside this
//! repository. The guest SDK (`cairn-guest`) and the WIT packages it binds
//! to are vendored into the new crate from copies embedded in the `cairn`
//! binary (`include_str!`), so that the crate needs only crates.io and the
//! `wasm32-wasip2` target: `cargo build --release --target wasm32-wasip2`.
//!
//! Layout written under `DIR/NAME` (`--dir`, default `.`):
//! `Cargo.toml` (its own workspace), `src/lib.rs` (a greeting process with a
//! unit test), `README.md` (build, test, deploy, start), `.gitignore`,
//! `vendor/cairn-guest/` (the SDK) and `vendor/wit/` (`cairn:process`,
//! `cairn:log`).

use std::path::{Path, PathBuf};

/// Scaffold a process crate that builds outside this repository.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The process and crate name: lowercase letters, digits and '-', starting with a letter.
    pub name: String,
    /// The directory to create the crate in (as DIR/NAME).
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub dir: PathBuf,
}

const SDK_LIB: &str = include_str!("../../guest-sdk/src/lib.rs");
const PROCESS_WIT: &str = include_str!("../../wit/process/process.wit");
const LOG_WIT: &str = include_str!("../../wit/log/log.wit");

/// The SDK's manifest outside the workspace: versions spelled out.
const SDK_MANIFEST: &str = r#"[package]
name = "cairn-guest"
version = "0.1.0"
edition = "2021"
license = "Apache-2.0"
description = "Cairn guest SDK (vendored by `cairn new`): define durable processes in Rust"

[dependencies]
serde = { version = "1", features = ["derive"] }
serde_json = "1"
wit-bindgen = { version = "0.46", default-features = false, features = ["macros", "realloc", "std"] }
"#;

pub fn run(args: Args) -> i32 {
    match scaffold(&args.name, &args.dir) {
        Ok(root) => {
            let wasm = args.name.replace('-', "_");
            println!("created {}", root.display());
            println!();
            println!("next:");
            println!("  cd {}", root.display());
            println!("  cargo test                                       # the unit test, on this machine");
            println!("  cargo build --release --target wasm32-wasip2     # the component");
            println!("  cairn deploy target/wasm32-wasip2/release/{wasm}.wasm");
            println!("  cairn start {} --input '{{\"name\":\"Ada\"}}' --wait", args.name);
            0
        }
        Err(e) => {
            eprintln!("error: cairn new: {e:#}");
            crate::cli::EXIT_USAGE
        }
    }
}

/// Writes the crate; returns its directory.
pub fn scaffold(name: &str, dir: &Path) -> anyhow::Result<PathBuf> {
    let valid = name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.ends_with('-')
        && name.len() <= 64;
    anyhow::ensure!(
        valid,
        "'{name}' is not a valid name: use lowercase letters, digits and '-', starting with a letter (at most 64), e.g. order-intake"
    );
    let root = dir.join(name);
    anyhow::ensure!(!root.exists(), "{} already exists: choose another name or --dir", root.display());
    let files: Vec<(&str, String)> = vec![
        ("Cargo.toml", manifest(name)),
        ("src/lib.rs", lib(name)),
        ("README.md", README.replace("{{name}}", name).replace("{{wasm}}", &name.replace('-', "_"))),
        (".gitignore", "/target\n".to_string()),
        ("vendor/cairn-guest/Cargo.toml", SDK_MANIFEST.to_string()),
        ("vendor/cairn-guest/src/lib.rs", SDK_LIB.to_string()),
        ("vendor/wit/process/process.wit", PROCESS_WIT.to_string()),
        // In the repository this is a symlink to ../../log; a copy here.
        ("vendor/wit/process/deps/log/log.wit", LOG_WIT.to_string()),
        ("vendor/wit/log/log.wit", LOG_WIT.to_string()),
    ];
    for (path, text) in files {
        let path = root.join(path);
        let parent = path.parent().expect("a file under the root");
        std::fs::create_dir_all(parent).map_err(|e| anyhow::anyhow!("creating {}: {e}", parent.display()))?;
        std::fs::write(&path, text).map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
    }
    Ok(root)
}

fn manifest(name: &str) -> String {
    format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2021"
publish = false

[lib]
crate-type = ["cdylib"]

[dependencies]
cairn-guest = {{ path = "vendor/cairn-guest" }}
serde = {{ version = "1", features = ["derive"] }}
serde_json = "1"

# A workspace of its own, even when created inside another one.
[workspace]
"#
    )
}

/// The new crate's `src/lib.rs`: `guests/hello`'s, which the tests run,
/// with the new name in place of the process name `hello`.
fn lib(name: &str) -> String {
    HELLO
        .replace(HELLO_TITLE, &format!("//! The `{name}` process: greets whoever says hello, after a pause.\n"))
        .replace(HELLO_EXPORT, &format!("export_process!(\"{name}\""))
}

const HELLO: &str = include_str!("../../guests/hello/src/lib.rs");
const HELLO_TITLE: &str = "//! The `hello` process: greets whoever says hello, after a pause. It is
//! the README tutorial's process, and the template of `cairn new NAME`,
//! which writes this file with NAME in place of the process name.
";
const HELLO_EXPORT: &str = "export_process!(\"hello\"";

const README: &str = r#"# {{name}}

A Cairn process, made by `cairn new {{name}}`. It builds on its own: the
guest SDK and the WIT packages it needs are in `vendor/`.

## Build and test

```sh
rustup target add wasm32-wasip2                  # once
cargo test                                       # the unit test, natively
cargo build --release --target wasm32-wasip2     # the component
```

The component is `target/wasm32-wasip2/release/{{wasm}}.wasm`.

## Deploy and run

```sh
cairn serve --data ./cairn-data &                # http://127.0.0.1:7700
cairn deploy target/wasm32-wasip2/release/{{wasm}}.wasm
cairn start {{name}} --input '{"name":"Ada"}' --wait
```

`start --wait` prints the final variables (`"text": "Hello, Ada!"`);
`cairn ls` lists instances and `cairn show ID` shows one with its history.

## Where to go on

`src/lib.rs` holds the definition: variables, messages, and the activity
tree built with `Process` (receive, snippet, wait, scopes, invokes of
activities, flows). `cargo doc --open` shows the SDK's documentation, with an
example on every item.
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_template_names_the_new_process_and_nothing_of_hello_is_left() {
        let text = lib("order-intake");
        assert!(text.starts_with("//! The `order-intake` process: greets"), "{text}");
        assert!(text.contains("export_process!(\"order-intake\""), "{text}");
        assert!(!text.contains("export_process!(\"hello\""));
        assert!(!text.contains("template of `cairn new"));
    }
}
