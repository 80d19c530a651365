//! Concurrent branches: a flow, and a parallel for-each (one branch per
//! item), run in one instance by interleaving.
//!
//! Rules:
//! - One branch runs at a time: the active branch's frames are on the stack
//!   above the flow frame; the others are set aside in `Phase::Flow`, ready,
//!   waiting or done.
//! - A branch that must wait is set aside (`Machine::await_`) and the flow goes
//!   on with another; only when no branch can go on does the flow yield
//!   `Wait::Many` with what every waiting branch waits for.
//! - An input (a message, an activity result) first makes the branch that
//!   waits for it the active one, through nested flows.
//! - The flow is done when all its branches are; a fault in one branch
//!   withdraws the others with the flow frame (`Machine::truncate_stack`).

use super::messages::pick_operations;
use super::Machine;
use crate::contract::{Input, Wait, Yield};
use crate::definition::{Activity, Definition, EventTrigger};
use crate::snapshot::{Branch, BranchState, Frame, Phase, Status};

impl Machine<'_> {
    /// A flow or a parallel for-each begins: one ready branch per stack.
    pub(super) fn start_branches(&mut self, stacks: Vec<Frame>) {
        let branches = stacks.into_iter().map(|frame| Branch { state: BranchState::Ready, stack: vec![frame] }).collect();
        self.top_mut().phase = Phase::Flow { branches };
    }

    /// A wait of the running branch: set it aside and let the flow go on with
    /// another (`None`: the run loop goes on with the flow frame on top, never
    /// the run loop itself, which would recurse once per waiting branch);
    /// outside a flow, the wait goes to the driver.
    pub(super) fn await_(&mut self, wait: Wait) -> Option<Yield> {
        let Some(f) = self.enclosing_flow() else { return Some(Yield::Await(wait)) };
        let frames = self.snap.stack.split_off(f + 1);
        let Phase::Flow { branches } = &mut self.snap.stack[f].phase else { unreachable!() };
        let active = branches.iter_mut().find(|b| b.state == BranchState::Active).expect("a flow runs one branch");
        active.state = BranchState::Waiting;
        active.stack = frames;
        None
    }

    /// The flow frame is on top: its active branch (if any) has finished.
    /// Run the next ready branch, join when all are done, or wait for any.
    pub(super) fn flow_step(&mut self) -> Option<Yield> {
        if let Some(y) = self.parallel_completion() {
            return Some(y);
        }
        let now = self.now_ms;
        let def = self.def;
        let Phase::Flow { branches } = &mut self.top_mut().phase else { unreachable!() };
        for b in branches.iter_mut() {
            match b.state {
                BranchState::Active => b.state = BranchState::Done,
                BranchState::Waiting if stack_ready(&b.stack, now) => b.state = BranchState::Ready,
                _ => {}
            }
        }
        if let Some(b) = branches.iter_mut().find(|b| b.state == BranchState::Ready) {
            b.state = BranchState::Active;
            let frames = std::mem::take(&mut b.stack);
            self.snap.stack.extend(frames);
            return None;
        }
        if branches.iter().all(|b| b.state == BranchState::Done) {
            self.top_mut().phase = Phase::Done;
            return None;
        }
        let waits: Vec<Wait> =
            branches.iter().filter(|b| b.state == BranchState::Waiting).flat_map(|b| stack_waits(&b.stack, def)).collect();
        self.snap.status = if waits.iter().any(|w| matches!(w, Wait::Invoke { .. })) { Status::Running } else { Status::Waiting };
        self.await_(Wait::Many(waits))
    }

    /// Makes the branch that waits for `input` the active one (through
    /// nested flows), so that the input applies to its top frame.
    pub(super) fn activate_branch_for(&mut self, input: &Input) {
        let def = self.def;
        loop {
            let Some(Frame { phase: Phase::Flow { branches }, .. }) = self.snap.stack.last_mut() else { return };
            let Some(b) = branches.iter_mut().find(|b| b.state == BranchState::Waiting && stack_takes(&b.stack, input, def)) else {
                return;
            };
            b.state = BranchState::Active;
            let frames = std::mem::take(&mut b.stack);
            self.snap.stack.extend(frames);
        }
    }

    /// The flow frame the top frame's branch belongs to, if any.
    fn enclosing_flow(&self) -> Option<usize> {
        let top = self.snap.stack.len().checked_sub(1)?;
        self.snap.stack[..top].iter().rposition(|f| matches!(f.phase, Phase::Flow { .. }))
    }
}

/// Whether a set-aside branch has something to do now: a due timer at its top,
/// or a scope deadline passed anywhere in it.
pub(super) fn stack_ready(stack: &[Frame], now: u64) -> bool {
    if stack.iter().any(|f| f.deadline.is_some_and(|d| d.due_ms <= now)) {
        return true;
    }
    match stack.last().map(|f| &f.phase) {
        Some(Phase::AwaitTimer { due_ms, .. }) => *due_ms <= now,
        Some(Phase::AwaitMessage { timer: Some(t), .. }) => t.due_ms <= now,
        Some(Phase::AwaitPick { timers }) => timers.iter().any(|(_, t)| t.due_ms <= now),
        Some(Phase::Listening { timer, .. }) => timer.is_some_and(|t| t.due_ms <= now),
        Some(Phase::Flow { branches }) => branches.iter().any(|b| b.state == BranchState::Waiting && stack_ready(&b.stack, now)),
        _ => false,
    }
}

/// What a set-aside branch waits for.
pub(super) fn stack_waits(stack: &[Frame], def: &Definition) -> Vec<Wait> {
    let Some(top) = stack.last() else { return Vec::new() };
    match &top.phase {
        Phase::AwaitMessage { operation, timer } => {
            vec![Wait::Message { operation: operation.clone(), due_ms: timer.map(|t| t.due_ms) }]
        }
        Phase::AwaitTimer { timer_id, due_ms } => vec![Wait::Timer { timer_id: *timer_id, due_ms: *due_ms }],
        Phase::AwaitInvoke { call_id } => vec![Wait::Invoke { call_id: *call_id }],
        Phase::AwaitPick { .. } => match &def.node(top.node).activity {
            Activity::Pick { branches, .. } => vec![Wait::Pick { operations: pick_operations(branches) }],
            _ => Vec::new(),
        },
        Phase::Listening { timer: Some(t), .. } => vec![Wait::Timer { timer_id: t.timer_id, due_ms: t.due_ms }],
        Phase::Listening { timer: None, .. } => match def.event_trigger(top.node) {
            Some(EventTrigger::Message { operation, .. }) => vec![Wait::Message { operation: operation.clone(), due_ms: None }],
            _ => Vec::new(),
        },
        Phase::Flow { branches } => {
            branches.iter().filter(|b| b.state == BranchState::Waiting).flat_map(|b| stack_waits(&b.stack, def)).collect()
        }
        _ => Vec::new(),
    }
}

/// Whether a set-aside branch waits for this message or call result.
fn stack_takes(stack: &[Frame], input: &Input, def: &Definition) -> bool {
    stack_waits(stack, def).iter().any(|w| match (w, input) {
        (Wait::Message { operation, .. }, Input::Message(d)) => *operation == d.operation,
        (Wait::Pick { operations }, Input::Message(d)) => operations.contains(&d.operation),
        (Wait::Invoke { call_id }, Input::InvokeResult { call_id: c, .. }) => call_id == c,
        _ => false,
    })
}
