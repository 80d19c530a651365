//! `cairn check DATA` and `cairn repair DATA --yes`: the store's check and
//! repair (`cairn_store::check`) of a stopped host's embedded store, printed.
//!
//! Exit codes: 0 clean (after a repair: nothing left); 1 problems found (or
//! left after a repair); 2 not checked: a usage error, no store, a host
//! holds it, a newer format, a store that cannot be opened for a reason
//! other than damage, or `repair` without `--yes`.

use cairn_store::check::{self, CheckError, Fix, Report};
use std::io::IsTerminal;
use std::path::Path;
use std::time::{Duration, Instant};

pub const EXIT_CLEAN: i32 = 0;
pub const EXIT_PROBLEMS: i32 = 1;
pub const EXIT_NOT_CHECKED: i32 = 2;

/// Progress lines on stderr, at most one every two seconds (large stores only).
fn progress(command: &'static str) -> impl FnMut(&str) {
    let mut last = Instant::now();
    move |line: &str| {
        if last.elapsed() >= Duration::from_secs(2) || std::io::stderr().is_terminal() {
            eprintln!("cairn {command}: {line}");
            last = Instant::now();
        }
    }
}

/// A PostgreSQL store is not checked here.
fn refuse_postgres(command: &str, store: Option<&str>) -> Option<i32> {
    let url = store.filter(|s| !s.is_empty() && *s != "rocksdb")?;
    eprintln!(
        "error: cairn {command} covers the embedded RocksDB store only, not {}: check a PostgreSQL database with its own tools \
         (pg_amcheck), and its records by `cairn backup NAME` from a host on it (which decodes every row, naming the first that does not) \
         and `cairn check` on the directory the backup prints",
        if url.starts_with("postgres") { "a PostgreSQL store" } else { url }
    );
    Some(EXIT_NOT_CHECKED)
}

fn not_checked(command: &str, e: CheckError) -> i32 {
    eprintln!("error: cairn {command}: {e}");
    EXIT_NOT_CHECKED
}

/// `cairn check DATA [--json]`.
pub fn run_check(data: &Path, store: Option<&str>, json: bool) -> i32 {
    if let Some(code) = refuse_postgres("check", store) {
        return code;
    }
    let mut progress = progress("check");
    let report = match check::check_with(data, &mut progress) {
        Ok(r) => r,
        Err(e) => return not_checked("check", e),
    };
    if json {
        print_json(&report);
    } else {
        print_problems(&report);
        print_tables(&report);
        print_notes(&report);
        if report.clean {
            println!("{}: clean", data.display());
        } else {
            println!("{}: {} problem(s); {}", data.display(), report.problems.len(), plan(&report));
        }
    }
    if report.clean {
        EXIT_CLEAN
    } else {
        EXIT_PROBLEMS
    }
}

/// `cairn repair DATA --yes [--json]`; without `--yes`, what it would do.
pub fn run_repair(data: &Path, yes: bool, json: bool) -> i32 {
    if !yes {
        let mut progress = progress("repair");
        let report = match check::check_with(data, &mut progress) {
            Ok(r) => r,
            Err(e) => return not_checked("repair", e),
        };
        if json {
            print_json(&report);
        } else {
            for p in &report.problems {
                let what = match p.repair {
                    Fix::Drop => "would drop",
                    Fix::SetFence => "would set the fence of",
                    Fix::SetIndex => "would rewrite from the snapshot",
                    Fix::Rebuild => "would rebuild the store around",
                    Fix::None => "would leave (an operator must act)",
                };
                println!("{what}  {}  {}  {}", p.table, p.key, p.what);
            }
            print_notes(&report);
        }
        if report.clean {
            eprintln!("{}: clean, nothing to repair", data.display());
            return EXIT_CLEAN;
        }
        eprintln!(
            "error: {}: {} problem(s); {}. Nothing was changed: run again with --yes to repair. The repair changes {} in place \
             and keeps the original as {} (stop the host first)",
            data.display(),
            report.problems.len(),
            plan(&report),
            data.join("db").display(),
            data.join("before-repair-MS").display()
        );
        return EXIT_NOT_CHECKED;
    }
    let mut progress = progress("repair");
    let report = match check::repair_with(data, &mut progress) {
        Ok(r) => r,
        Err(e) => return not_checked("repair", e),
    };
    if json {
        print_json(&report);
    } else {
        for a in &report.actions {
            println!("{}  {}  {}  {}", a.action, a.table, a.key, a.reason);
        }
        print_notes(&report);
        let count = |action: &str| report.actions.iter().filter(|a| a.action == action).count();
        let kept = report.actions.iter().find(|a| a.action == "kept").map(|a| a.key.clone());
        if report.actions.is_empty() {
            println!("{}: clean, nothing to repair", data.display());
        } else {
            println!(
                "repaired {}: {} record(s) dropped, {} lost, {} changed, {} fence(s) set, {} index entry(ies) rewritten{}",
                data.display(),
                count("dropped"),
                count("lost"),
                count("changed"),
                count("set-fence"),
                count("set-index"),
                kept.map(|k| format!("; the original store is kept in {k}")).unwrap_or_default()
            );
        }
        if !report.clean {
            print_problems(&report);
            println!("{} problem(s) left that repair does not fix", report.problems.len());
        }
    }
    if report.clean {
        EXIT_CLEAN
    } else {
        EXIT_PROBLEMS
    }
}

fn print_json(report: &Report) {
    println!("{}", serde_json::to_string_pretty(report).expect("a report serializes"));
}

/// One line per problem: table, key, what is wrong, what repair does.
fn print_problems(report: &Report) {
    for p in &report.problems {
        let fix = match p.repair {
            Fix::Drop => "repair drops it",
            Fix::SetFence => "repair sets the fence to the snapshot's",
            Fix::SetIndex => "repair rewrites it from the snapshot",
            Fix::Rebuild => "repair rebuilds the store from what reads",
            Fix::None => "repair leaves it",
        };
        println!("problem  {}  {}  {} ({fix})", p.table, p.key, p.what);
    }
}

fn print_tables(report: &Report) {
    if report.tables.is_empty() {
        return;
    }
    let width = report.tables.iter().map(|t| t.table.len()).max().unwrap_or(5).max(5);
    println!("{:<width$}  {:>10}  PROBLEMS", "TABLE", "RECORDS");
    for t in &report.tables {
        println!("{:<width$}  {:>10}  {}", t.table, t.records, t.problems);
    }
}

fn print_notes(report: &Report) {
    for n in &report.notes {
        println!("note: {n}");
    }
}

/// What `cairn repair` would do about the problems.
fn plan(report: &Report) -> String {
    let count = |fix: Fix| report.problems.iter().filter(|p| p.repair == fix).count();
    let mut parts = Vec::new();
    if count(Fix::Rebuild) > 0 {
        parts.push("rebuild the store from what reads".to_string());
    }
    if count(Fix::Drop) > 0 {
        parts.push(format!("drop {} record(s)", count(Fix::Drop)));
    }
    if count(Fix::SetFence) > 0 {
        parts.push(format!("set {} fence(s)", count(Fix::SetFence)));
    }
    if count(Fix::SetIndex) > 0 {
        parts.push(format!("rewrite {} index entry(ies)", count(Fix::SetIndex)));
    }
    let mut out = if parts.is_empty() { String::from("`cairn repair` fixes none of them") } else { format!("`cairn repair --yes` would {}", parts.join(", ")) };
    if count(Fix::None) > 0 {
        out.push_str(&format!("; {} need an operator (see each)", count(Fix::None)));
    }
    out
}
