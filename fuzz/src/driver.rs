//! A simulated driver: runs a `Machine` by the protocol of
//! `cairn_engine::contract`, the way `host/src/service/driver.rs` does, with
//! handler results, messages, call results, time and operator verbs drawn
//! from the fuzz input.
//!
//! At every persistence point it checks what the store relies on: the
//! snapshot encodes, decodes back to itself through the store's codec, and
//! is one that `Machine::resume` accepts for its definition.

use crate::codec;
use arbitrary::Unstructured;
use cairn_engine::{
    Control, Definition, Delivery, Fault, HandlerCall, HandlerOutput, Input, Machine, ProcessKind, Reason, ResourceAccesses, Snapshot, Wait,
    Yield,
};

pub struct Driver<'d> {
    def: &'d Definition,
    /// A fresh instance of a validated definition: the engine must keep
    /// deploy validation's promises (a transaction waits only for calls).
    fresh: bool,
    now: u64,
    seq: u64,
    /// Every persisted snapshot as a store record, if asked (seeds).
    pub records: Option<Vec<Vec<u8>>>,
}

const VARIABLES: &[&str] = &["{}", r#"{"items":[1,2,3],"n":1}"#, r#"{"items":[]}"#, "[]", "null", r#"{"order_id":"A-1"}"#];
const OUTPUTS: &[&str] = &["true", "false", "null", "{}", "\"x\"", "5000", "99999999999", "[1,2]", r#"{"order_id":"A-1"}"#];
const BODIES: &[&str] = &[r#"{"order_id":"A-1","approved":true}"#, r#"{"order_id":"A-2"}"#, "{}", "null", r#"{"order_id":null}"#, "[1]"];

impl<'d> Driver<'d> {
    pub fn new(def: &'d Definition, fresh: bool) -> Driver<'d> {
        Driver { def, fresh, now: 1_000, seq: 1, records: None }
    }

    /// Runs `snap` for at most `max_steps` steps.
    pub fn run(&mut self, snap: Snapshot, u: &mut Unstructured, max_steps: usize) {
        let mut m = if self.fresh {
            Machine::new(self.def, snap)
        } else {
            match Machine::resume(self.def, snap) {
                Ok(m) => m,
                Err(_) => return,
            }
        };
        if u.ratio(1, 8).unwrap_or(false) {
            let paths = self.def.paths();
            if !paths.is_empty() {
                let i = u.choose_index(paths.len()).unwrap_or(0);
                m.set_breakpoints(vec![paths[i].clone()]);
            }
        }
        let mut input = Input::Continue;
        for _ in 0..max_steps {
            if input == Input::Continue && m.in_atomic().is_none() && u.ratio(1, 24).unwrap_or(false) {
                input = Input::Control(self.control(u));
            }
            self.now = self.now.saturating_add(u.int_in_range(0..=2_000u64).unwrap_or(0));
            let y = m.step(input, self.now);
            input = match y {
                Yield::Call(call) => Input::Handler(self.handler(u, &m, &call)),
                Yield::Persist(reason) => {
                    self.persist(&mut m, reason);
                    Input::Continue
                }
                Yield::Suspended => {
                    if m.needs_persistence() {
                        self.persist(&mut m, Reason::Suspended);
                    }
                    Input::Control(self.control(u))
                }
                Yield::Sleep(ms) => {
                    self.now = self.now.saturating_add(ms);
                    Input::Continue
                }
                Yield::Finished(reason) => {
                    self.persist(&mut m, reason);
                    let again = m.step(Input::Continue, self.now);
                    assert_eq!(again, Yield::Finished(reason), "a finished instance stays finished");
                    // A faulted instance that kept a retry point may be retried.
                    if m.snapshot().retry.is_none() || !u.ratio(1, 2).unwrap_or(false) {
                        return;
                    }
                    Input::Control(Control::Retry { variables: u.ratio(1, 2).unwrap_or(false).then(|| pick(u, VARIABLES)) })
                }
                Yield::Await(wait) => {
                    let transaction = self.def.kind == ProcessKind::Microflow || m.in_atomic().is_some();
                    if transaction && self.creating_message(&wait) {
                        // A microflow's first receive: intake put its message in the inbox.
                        self.satisfy(u, &wait).expect("a message wait")
                    } else if transaction {
                        // A transaction runs its calls inline (driver.rs `invoke_inline`).
                        let Some(call_id) = first_invoke(&wait) else {
                            assert!(!self.fresh, "a transaction of a valid definition waits for {wait:?}");
                            return;
                        };
                        assert!(m.take_invoke(call_id).is_some() || !self.fresh, "the inline call {call_id} is not pending");
                        Input::InvokeResult { call_id, result: self.call_result(u), resources: ResourceAccesses::default() }
                    } else {
                        if m.needs_persistence() {
                            self.persist(&mut m, Reason::Waiting);
                        }
                        match self.satisfy(u, &wait) {
                            Some(input) => input,
                            None => {
                                assert!(!self.fresh, "a valid definition's instance waits for nothing: {wait:?}");
                                return;
                            }
                        }
                    }
                }
            };
        }
    }

    /// Whether `wait` is for the message of one of the definition's
    /// instance-creating receives (first in the process, or in its process
    /// scope, or in a flow that is): intake put that message in the inbox,
    /// and the host's driver takes it from there.
    fn creating_message(&self, wait: &Wait) -> bool {
        match wait {
            Wait::Message { operation, .. } => self.def.creating_subscriptions().iter().any(|s| s.operation == *operation),
            Wait::Many(waits) => !waits.is_empty() && waits.iter().all(|w| self.creating_message(w)),
            _ => false,
        }
    }

    fn control(&self, u: &mut Unstructured) -> Control {
        match u.int_in_range(0..=5u8).unwrap_or(0) {
            0 => Control::Suspend,
            1 => Control::Terminate,
            2 => Control::SetVariables(pick(u, VARIABLES)),
            3 => Control::Cancel,
            _ => Control::Resume,
        }
    }

    fn handler(&self, u: &mut Unstructured, m: &Machine, call: &HandlerCall) -> Result<HandlerOutput, Fault> {
        assert!(call.handler < self.def.handler_count || !self.fresh, "handler {} called of {}", call.handler, self.def.handler_count);
        if u.ratio(1, 10).unwrap_or(false) {
            return Err(self.fault(u));
        }
        let variables = if u.ratio(1, 4).unwrap_or(false) { pick(u, VARIABLES) } else { m.snapshot().variables.clone() };
        let output = match u.int_in_range(0..=12u8).unwrap_or(0) {
            0 => None,
            1 => Some(self.now.saturating_add(1_500).to_string()),
            i => Some(OUTPUTS[(i as usize - 2) % OUTPUTS.len()].to_string()),
        };
        Ok(HandlerOutput { variables, output })
    }

    fn fault(&self, u: &mut Unstructured) -> Fault {
        const NAMES: &[&str] = &["cairn.trap", "cairn.timeout", "submit", "approve", "declined", ""];
        Fault::new(pick(u, NAMES), "fuzz")
    }

    fn call_result(&self, u: &mut Unstructured) -> Result<String, Fault> {
        if u.ratio(1, 4).unwrap_or(false) {
            Err(self.fault(u))
        } else {
            Ok(pick(u, OUTPUTS))
        }
    }

    /// What the host would feed for `wait`: a message, a call result, or
    /// time passing. `None` if the wait is for nothing at all.
    fn satisfy(&mut self, u: &mut Unstructured, wait: &Wait) -> Option<Input> {
        let message = |d: &mut Self, u: &mut Unstructured, operation: &str| {
            d.seq += 1;
            Input::Message(Delivery {
                seq: d.seq,
                message_id: format!("m{}", d.seq),
                operation: operation.to_string(),
                body: pick(u, BODIES),
            })
        };
        match wait {
            Wait::Message { operation, due_ms } => match due_ms {
                Some(due) if u.ratio(1, 3).unwrap_or(false) => {
                    self.now = self.now.max(*due);
                    Some(Input::Continue)
                }
                _ => Some(message(self, u, operation)),
            },
            Wait::Timer { due_ms, .. } => {
                self.now = self.now.max(*due_ms);
                Some(Input::Continue)
            }
            Wait::Invoke { call_id } => {
                Some(Input::InvokeResult { call_id: *call_id, result: self.call_result(u), resources: ResourceAccesses::default() })
            }
            Wait::Pick { operations } => {
                if operations.is_empty() || u.ratio(1, 3).unwrap_or(false) {
                    // A pick's timers: let time pass.
                    self.now = self.now.saturating_add(u.int_in_range(0..=1u64 << 40).unwrap_or(0));
                    Some(Input::Continue)
                } else {
                    let i = u.choose_index(operations.len()).unwrap_or(0);
                    Some(message(self, u, &operations[i]))
                }
            }
            Wait::Many(waits) => {
                if waits.is_empty() {
                    return None;
                }
                let i = u.choose_index(waits.len()).unwrap_or(0);
                self.satisfy(u, &waits[i])
            }
        }
    }

    /// Takes a persistence point and checks what the store relies on.
    fn persist(&mut self, m: &mut Machine, reason: Reason) {
        let point = m.persistence_point(reason, self.now);
        let bytes = codec::encode(&point.snapshot);
        let back: Snapshot = match codec::decode("instances", &point.snapshot.id, &bytes) {
            Ok(s) => s,
            Err(e) => panic!("a persisted snapshot does not decode: {e}"),
        };
        let mut expected = point.snapshot.clone();
        for f in &mut expected.stack {
            f.atomic = None;
        }
        assert_eq!(back, expected, "a persisted snapshot does not decode to itself");
        if let Err(e) = Machine::resume(self.def, back) {
            panic!("a persisted snapshot is refused on resume: {e}");
        }
        if let Some(records) = &mut self.records {
            records.push(bytes);
        }
    }
}

fn pick(u: &mut Unstructured, from: &[&str]) -> String {
    from[u.choose_index(from.len()).unwrap_or(0)].to_string()
}

/// The call a wait (or any of a flow's waits) is for, as driver.rs finds it.
fn first_invoke(wait: &Wait) -> Option<u64> {
    match wait {
        Wait::Invoke { call_id } => Some(*call_id),
        Wait::Many(waits) => waits.iter().find_map(first_invoke),
        _ => None,
    }
}
