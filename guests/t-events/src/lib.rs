//! Test guest "events": event handlers. A case opens with a message; its
//! scope "work" waits for "close" while handlers on "note" messages, a
//! one-time alarm, a deadline alarm and a repeating alarm run beside it;
//! the process scope listens for "ping" for the whole life of the instance.

use cairn_guest::{Activity, Alarm, Process};
use serde::{Deserialize, Serialize};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Serialize, Deserialize, Default)]
struct Vars {
    case: String,
    opened_ms: u64,
    notes: Vec<String>,
    handled: u32,
    once: u32,
    at_deadline: u32,
    ticks: u32,
    ticks_at_close: u32,
    pings: u32,
    closed: bool,
}

#[derive(Deserialize)]
struct Open {
    case: String,
}

#[derive(Deserialize)]
struct Note {
    text: String,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn define(p: &mut Process<Vars>) -> Activity {
    p.correlation_set("case", &[("case", "/case")]);
    let open = p
        .receive("open", "open", |v: &mut Vars, m: Open| {
            v.case = m.case;
            v.opened_ms = now_ms();
            Ok(())
        })
        .creates_instance()
        .correlate("case");

    let close = p
        .receive("close", "close", |v: &mut Vars, _: serde_json::Value| {
            v.closed = true;
            v.ticks_at_close = v.ticks;
            Ok(())
        })
        .correlate("case");
    let work = p.scope("work", close);
    let handle = p.snippet("handle-note", |v| {
        v.handled += 1;
        Ok(())
    });
    let work = p.on_event(
        work,
        "note",
        "case",
        |v: &mut Vars, n: Note| {
            v.notes.push(n.text);
            Ok(())
        },
        handle,
    );
    let once = p.snippet("once", |v| {
        v.once += 1;
        Ok(())
    });
    let work = p.on_alarm(work, Alarm::After(Duration::from_millis(100)), once);
    let at = p.snippet("at-deadline", |v| {
        v.at_deadline += 1;
        Ok(())
    });
    let work = p.on_alarm_at(work, |v| UNIX_EPOCH + Duration::from_millis(v.opened_ms + 150), at);
    let tick = p.snippet("tick", |v| {
        v.ticks += 1;
        Ok(())
    });
    let work = p.on_alarm(work, Alarm::Every(Duration::from_millis(100)), tick);

    // After "work": the instance waits for "finish", and only the process's
    // own "ping" handler still listens.
    let finish = p.receive_any("finish", "finish").correlate("case");
    let main = p.sequence("main", vec![open, work, finish]);
    let process = p.process_scope(main);
    let ping = p.snippet("pinged", |_| Ok(()));
    p.on_event(
        process,
        "ping",
        "case",
        |v: &mut Vars, _: serde_json::Value| {
            v.pings += 1;
            Ok(())
        },
        ping,
    )
}

cairn_guest::export_process!("events", Vars, define);
