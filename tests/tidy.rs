//! Tidy: every Rust source file in the workspace opens with a `//!` line
//! that says what the file is for. A file pasted into others with
//! `include!` cannot hold inner doc comments (E0753): it opens with a plain
//! `//` comment instead.

use std::path::{Path, PathBuf};

/// The workspace root: this package lives in its `tests/` directory.
fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().expect("tests/ has a parent").to_path_buf()
}

/// Every `.rs` file under `dir`, skipping hidden directories and build
/// output (`target`).
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display()));
    for entry in entries {
        let entry = entry.unwrap();
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let kind = entry.file_type().unwrap();
        if kind.is_dir() {
            if !name.starts_with('.') && name != "target" {
                rust_files(&path, out);
            }
        } else if kind.is_file() && name.ends_with(".rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_source_file_opens_with_a_module_doc_line() {
    let root = workspace_root();
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    files.sort();
    assert!(
        files.iter().any(|f| f.ends_with("tests/tidy.rs")),
        "the walk from {} did not find this file: wrong workspace root?",
        root.display()
    );
    let included = included_files(&files);
    let offenders: Vec<String> = files
        .iter()
        .filter_map(|f| {
            let text = std::fs::read_to_string(f).unwrap_or_else(|e| panic!("read {}: {e}", f.display()));
            let first = text.lines().next().unwrap_or("");
            if first.starts_with("//!") || (included.contains(&canonical(f)) && first.starts_with("// ")) {
                return None;
            }
            let shown = f.strip_prefix(&root).unwrap_or(f).display().to_string();
            Some(format!("  {shown}: first line is {first:?}"))
        })
        .collect();
    assert!(
        offenders.is_empty(),
        "{} of {} source files do not open with a `//!` line:\n{}",
        offenders.len(),
        files.len(),
        offenders.join("\n")
    );
}

fn canonical(p: &Path) -> PathBuf {
    p.canonicalize().unwrap_or_else(|_| p.to_path_buf())
}

/// Files named by an `include!("…")` in another source file.
fn included_files(files: &[PathBuf]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(f).unwrap_or_default();
        for part in text.split("include!(\"").skip(1) {
            if let Some(rel) = part.split('"').next() {
                out.push(canonical(&f.parent().unwrap().join(rel)));
            }
        }
    }
    out
}
