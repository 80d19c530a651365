//! Test guest "misbehave": a snippet that traps, loops forever or allocates
//! 4 GiB, as the `mode` variable asks; the host must fault the instance and
//! carry on.

use cairn_guest::{Activity, Process};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Default)]
struct Vars {
    mode: String,
    survived: bool,
}

fn define(p: &mut Process<Vars>) -> Activity {
    let act = p.snippet("act", |v| {
        match v.mode.as_str() {
            "trap" => panic!("misbehave: trapping on purpose"),
            "loop" => {
                let mut i: u64 = 0;
                loop {
                    i = std::hint::black_box(i.wrapping_add(1));
                }
            }
            "alloc" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                for _ in 0..64 {
                    // 64 chunks of 64 MiB: 4 GiB, touched so it is real.
                    let mut chunk = vec![0u8; 64 << 20];
                    chunk[0] = 1;
                    hoard.push(std::hint::black_box(chunk));
                }
                v.survived = hoard.len() == 64;
            }
            _ => v.survived = true,
        }
        Ok(())
    });
    p.sequence("main", vec![act])
}

cairn_guest::export_process!("misbehave", Vars, define);
