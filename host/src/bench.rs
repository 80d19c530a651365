//! `cairn bench`: benchmarks run in-process against a temporary data directory.

#[derive(clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> i32 {
    eprintln!("not yet");
    1
}
