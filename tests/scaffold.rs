//! `cairn new NAME`: the crate it writes builds outside this repository (its
//! SDK and WIT vendored), its own test passes, and its component deploys to a
//! real host and runs.
//!
//! The nested cargo runs use a target directory of their own beside this
//! test's (`TARGET/cairn-new`), so they never touch the workspace's build, and
//! reach crates.io for serde and wit-bindgen (the README's test command runs
//! the tests under the shared Cargo lock, so this build takes no lock itself).

use cairn_tests::{cairn_bin, target_dir, Host, TempDir};
use std::path::Path;
use std::process::Command;

/// `cargo ARGS` in `dir`, as a user would run it there: none of the
/// variables cargo set for this test leak into it.
fn cargo(dir: &Path, args: &[&str]) {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args(args).current_dir(dir);
    for (k, _) in std::env::vars() {
        if k.starts_with("CARGO_") || k == "RUSTFLAGS" || k == "RUSTC_WRAPPER" {
            cmd.env_remove(k);
        }
    }
    cmd.env("CARGO_TARGET_DIR", target_dir().join("cairn-new"));
    let out = cmd.output().expect("run cargo");
    assert!(
        out.status.success(),
        "cargo {args:?} in {} failed:\n{}{}",
        dir.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_new_process_crate_builds_outside_the_repository_and_runs_on_a_host() {
    let dir = TempDir::new("new");
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().canonicalize().unwrap();
    assert!(!dir.path().canonicalize().unwrap().starts_with(&repo), "the scaffold is made outside the repository");

    let out = Command::new(cairn_bin()).args(["new", "greeter", "--dir"]).arg(dir.path()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("cairn deploy target/wasm32-wasip2/release/greeter.wasm"), "{stdout}");
    let root = dir.path().join("greeter");
    for file in ["Cargo.toml", "src/lib.rs", "README.md", "vendor/cairn-guest/src/lib.rs", "vendor/wit/process/process.wit", "vendor/wit/process/deps/log/log.wit"] {
        assert!(root.join(file).is_file(), "{file} is written");
    }
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    assert!(!manifest.contains(".."), "nothing points outside the crate: {manifest}");

    // Its own test, natively; then the component.
    cargo(&root, &["test", "--quiet"]);
    cargo(&root, &["build", "--release", "--target", "wasm32-wasip2"]);
    let wasm = target_dir().join("cairn-new/wasm32-wasip2/release/greeter.wasm");
    assert!(wasm.is_file(), "{} is built", wasm.display());

    let data = TempDir::new("new-host");
    let h = Host::start(data.path(), &["--quiet-guests"], &[]);
    let deployed = h.ok_json(&["deploy", wasm.to_str().unwrap()]);
    assert_eq!(deployed["name"], "greeter", "{deployed}");
    let v = h.ok_json(&["start", "greeter", "--input", r#"{"name":"Ada"}"#, "--wait"]);
    assert_eq!(v["status"], "completed", "{v}");
    assert_eq!(v["variables"]["text"], "Hello, Ada!");

    // A second scaffold of the same name is refused, and so is a bad name.
    let again = Command::new(cairn_bin()).args(["new", "greeter", "--dir"]).arg(dir.path()).output().unwrap();
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
    let bad = Command::new(cairn_bin()).args(["new", "Bad_Name", "--dir"]).arg(dir.path()).output().unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("is not a valid name"));
}
