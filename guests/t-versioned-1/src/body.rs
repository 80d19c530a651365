// Shared body of the "versioned" test process. Each version's crate
// includes this file and calls `versioned_process!` with what differs: the
// version number written into the variables, the name of the receive that
// waits for `versioned-go`, and any variables the version adds.
macro_rules! versioned_process {
    ($version:expr, $go:literal $(, $extra:ident: $extra_ty:ty)*) => {
        use cairn_guest::{Activity, Process};
        use serde::{Deserialize, Serialize};

        #[derive(Serialize, Deserialize, Default)]
        struct Vars {
            key: String,
            started_on: u32,
            finished_on: u32,
            $($extra: $extra_ty,)*
        }

        #[derive(Deserialize)]
        struct Key {
            key: String,
        }

        fn define(p: &mut Process<Vars>) -> Activity {
            p.correlation_set("key", &[("key", "/key")]);
            let start = p
                .receive("start", "versioned-start", |v: &mut Vars, k: Key| {
                    v.key = k.key;
                    v.started_on = $version;
                    Ok(())
                })
                .creates_instance()
                .correlate("key");
            let go = p.receive_any($go, "versioned-go").correlate("key");
            let finish = p.snippet("finish", |v| {
                v.finished_on = $version;
                Ok(())
            });
            p.sequence("main", vec![start, go, finish])
        }

        cairn_guest::export_process!("versioned", Vars, define);
    };
}
