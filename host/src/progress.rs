//! Progress of long work (recovery at start, `cairn restore`, `cairn
//! backup`, `cairn bench`), drawn with indicatif on stderr, and only when
//! stderr is a terminal: in a pipe, a log file or CI, and under `--json`,
//! the bars are hidden and cost nothing.

use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::time::Duration;

/// Whether progress is drawn: stderr is a terminal.
pub fn visible() -> bool {
    std::io::stderr().is_terminal()
}

/// A spinner with a message (`set_length` and `inc` add a count).
pub fn spinner(message: &str) -> ProgressBar {
    if !visible() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new_spinner();
    pb.set_style(ProgressStyle::with_template("{spinner} {msg} [{elapsed}]").expect("a valid template"));
    pb.set_message(message.to_string());
    pb.enable_steady_tick(Duration::from_millis(120));
    pb
}

/// A bar of `len` steps (`bytes`: counted in bytes).
pub fn bar(len: u64, message: &str, bytes: bool) -> ProgressBar {
    if !visible() {
        return ProgressBar::hidden();
    }
    let template = if bytes {
        "{msg} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta} left)"
    } else {
        "{msg} [{bar:30}] {pos}/{len} ({per_sec}, {eta} left)"
    };
    let pb = ProgressBar::new(len);
    pb.set_style(ProgressStyle::with_template(template).expect("a valid template").progress_chars("=> "));
    pb.set_message(message.to_string());
    pb
}

/// A spinner while `work` runs (a request the server takes long to answer).
pub fn while_waiting<T>(message: &str, hidden: bool, work: impl FnOnce() -> T) -> T {
    let pb = if hidden { ProgressBar::hidden() } else { spinner(message) };
    let out = work();
    pb.finish_and_clear();
    out
}
