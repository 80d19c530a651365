//! Tidy: every Rust source file in the workspace opens with a `//!` line
//! that says what the file is for, and nothing in the docs, sources or
//! scripts points outside the repository (a clone must stand alone). A file pasted into others with
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

/// Every text file of the repository that people read or that names paths
/// (docs, sources, manifests, scripts), skipping hidden directories, build
/// output and installed packages.
fn text_files(dir: &Path, out: &mut Vec<PathBuf>) {
    const KINDS: &[&str] = &["md", "rs", "toml", "sh", "wit", "py", "yml", "yaml", "json", "js", "ts", "html", "css", "txt"];
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display()));
    for entry in entries {
        let entry = entry.unwrap();
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let kind = entry.file_type().unwrap();
        if kind.is_dir() {
            if !name.starts_with('.') && name != "target" && name != "node_modules" {
                text_files(&path, out);
            }
        } else if kind.is_file() && path.extension().is_some_and(|x| KINDS.contains(&&*x.to_string_lossy())) {
            out.push(path);
        }
    }
}

/// `rel` resolved against `base` without touching the file system: None if
/// it climbs above the filesystem root.
fn resolve(base: &Path, rel: &str) -> Option<PathBuf> {
    let mut out = base.to_path_buf();
    for part in rel.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if !out.pop() {
                    return None;
                }
            }
            p => out.push(p),
        }
    }
    Some(out)
}

/// What in `text` (the file `file` under `root`) points outside the
/// repository: a relative path that climbs out of it, an absolute path of
/// the machine it was written on, or a design note that only lives there.
fn outside_pointers(root: &Path, file: &Path, text: &str) -> Vec<String> {
    // Paths of the machine the repository was written on, and design notes
    // kept there, whole path tokens (`main/work/act` is an activity path).
    let machine_roots = ["/work/", "/home/"];
    let machine_notes = ["DESIGN.md", "STYLE.md", "/shared/"];
    let dir = file.parent().unwrap();
    let mut found = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let at = |what: String| format!("  {}:{}: {what}", file.strip_prefix(root).unwrap_or(file).display(), n + 1);
        let tokens = line.split(|c: char| !(c.is_ascii_alphanumeric() || "._-/".contains(c)));
        for token in tokens {
            if let Some(p) = machine_roots.iter().find(|p| token.starts_with(**p) && token.len() > p.len()) {
                found.push(at(format!("'{token}' is a path under {p} of one machine, not in the repository")));
            } else if let Some(p) = machine_notes.iter().find(|p| token.contains(**p)) {
                found.push(at(format!("'{token}' names {p}, which is not in the repository")));
            } else if token.starts_with("../") {
                // Relative paths that climb must stay inside.
                match resolve(dir, token) {
                    Some(p) if p.starts_with(root) => {}
                    _ => found.push(at(format!("'{token}' points outside the repository"))),
                }
            }
        }
        // Markdown links: relative targets must exist inside the repository.
        if file.extension().is_some_and(|x| x == "md") {
            for part in line.split("](").skip(1) {
                let target = part.split(')').next().unwrap_or("").split('#').next().unwrap_or("").trim();
                if target.is_empty() || target.contains("://") || target.starts_with("mailto:") {
                    continue;
                }
                match resolve(dir, target) {
                    Some(p) if p.starts_with(root) && p.exists() => {}
                    Some(p) if p.starts_with(root) => found.push(at(format!("the link '{target}' names a file that does not exist"))),
                    _ => found.push(at(format!("the link '{target}' points outside the repository"))),
                }
            }
        }
    }
    found
}

#[test]
fn nothing_in_docs_sources_or_scripts_points_outside_the_repository() {
    let root = canonical(&workspace_root());
    let mut files = Vec::new();
    text_files(&root, &mut files);
    files.sort();
    for must in ["README.md", "ARCHITECTURE.md", "docs/semantics.md"] {
        assert!(files.contains(&root.join(must)), "{must} is part of the repository");
    }
    // This file holds examples of what the check catches.
    let offenders: Vec<String> = files
        .iter()
        .filter(|f| !f.ends_with("tests/tidy.rs"))
        .flat_map(|f| outside_pointers(&root, f, &std::fs::read_to_string(f).unwrap_or_default()))
        .collect();
    assert!(offenders.is_empty(), "these point outside the repository (a clone must stand alone):\n{}", offenders.join("\n"));
}

#[test]
fn the_outside_pointer_check_catches_what_it_should() {
    let root = Path::new("/repo");
    let file = Path::new("/repo/docs/a.md");
    let bad = outside_pointers(root, file, "see [design](../../shared/DESIGN.md), `../../etc/passwd` and /work/notes.txt");
    let all = bad.join("\n");
    assert!(all.contains("'../../shared/DESIGN.md' names DESIGN.md, which is not in the repository"), "{all}");
    assert!(all.contains("the link '../../shared/DESIGN.md' points outside the repository"), "{all}");
    assert!(all.contains("'../../etc/passwd' points outside the repository"), "{all}");
    assert!(all.contains("'/work/notes.txt' is a path under /work/ of one machine"), "{all}");
    assert!(outside_pointers(root, file, "the activity path `main/work/act`").is_empty());
    let inside = outside_pointers(root, file, "see [the code map](../ARCHITECTURE.md) and `../host/src`");
    assert_eq!(inside.len(), 1, "{inside:?}");
    assert!(inside[0].contains("the link '../ARCHITECTURE.md' names a file that does not exist"), "{inside:?}");
}
