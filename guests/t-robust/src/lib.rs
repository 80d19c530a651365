//! Test guest "robust": after a first step committed on its own, a snippet
//! grows the variables to `size` bytes, logs `count` records of `size`
//! bytes, sleeps `ms` milliseconds, or spins `count` million rounds of
//! arithmetic, as the `mode` variable asks; the host must bound each
//! (variables cap, guest log quota, call deadline, fuel).

use cairn_guest::{Activity, Process, Transaction};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Default)]
#[serde(default)]
struct Vars {
    mode: String,
    size: usize,
    count: u32,
    ms: u64,
    step: u32,
    blob: String,
}

fn define(p: &mut Process<Vars>) -> Activity {
    let first = p
        .snippet("first", |v| {
            v.step = 1;
            Ok(())
        })
        .transaction(Transaction::CommitAfter);
    let act = p.snippet("act", |v| {
        match v.mode.as_str() {
            "grow" => v.blob = "x".repeat(v.size),
            "log" => {
                let text = "y".repeat(v.size);
                for i in 0..v.count {
                    cairn_guest::log::info(&text, &[("i", &i.to_string())]);
                }
            }
            "sleep" => std::thread::sleep(std::time::Duration::from_millis(v.ms)),
            "spin" => {
                let mut x: u64 = 1;
                for i in 0..u64::from(v.count) * 1_000_000 {
                    x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(i));
                }
                v.size = (x % 7) as usize;
            }
            _ => {}
        }
        v.step = 2;
        Ok(())
    });
    p.sequence("main", vec![first, act])
}

cairn_guest::export_process!("robust", Vars, define);
