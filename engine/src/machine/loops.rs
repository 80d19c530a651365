//! Conditional loops and choices beyond if and while: repeat-until (its
//! body runs at least once; `basic::condition_decided` decides the next
//! turn), switch (the first case whose condition holds), and the completion
//! condition of a for-each, checked after each iteration.
//!
//! Rules:
//! - A switch asks its cases' conditions in order, one handler call each,
//!   with no persistence point in between: the case being asked lives only
//!   in `Expect::SwitchCase`. A resumed switch (still `Started`) asks again
//!   from the first case.
//! - A sequential for-each asks its completion condition before each item
//!   but the first; a parallel one asks it each time an iteration finishes,
//!   and once it holds, cancels the unfinished iterations as a fault
//!   cancels a flow's branches (`Machine::withdraw`).

use super::{parse_output, Expect, Machine};
use crate::contract::Yield;
use crate::definition::{Activity, Node};
use crate::snapshot::{BranchState, Fault, Phase};

impl Machine<'_> {
    /// A switch's case `case` answered: run its body if it holds, else ask
    /// the next case, else run the otherwise branch (if any).
    pub(super) fn switch_case_decided(&mut self, node: &Node, output: &Option<String>, case: u32) -> Option<Yield> {
        let Activity::Switch { cases, otherwise } = &node.activity else { unreachable!("switch case on another activity") };
        let truth = match parse_output::<bool>(output) {
            Ok(t) => t,
            Err(e) => return self.raise(Fault::new("cairn.bad-handler-output", format!("switch case {case}: {e}"))),
        };
        let next = case as usize + 1;
        let body = match (truth, cases.get(next)) {
            (true, _) => Some(cases[case as usize].body),
            (false, Some(c)) => return Some(self.call(c.condition, None, Expect::SwitchCase(next as u32))),
            (false, None) => *otherwise,
        };
        match body {
            Some(b) => {
                self.top_mut().phase = Phase::Child { next: 1 };
                self.push(b);
            }
            None => self.top_mut().phase = Phase::Done,
        }
        None
    }

    /// A sequential for-each between items: with a completion condition and
    /// an iteration behind it, the condition decides whether another runs.
    pub(super) fn each_step(&mut self, node: &Node) -> Option<Yield> {
        let Activity::ForEach { completion: Some(condition), .. } = &node.activity else { return self.next_item(node) };
        let Phase::Each { items, next } = &self.top().phase else { unreachable!() };
        if *next == 0 || *next as usize >= items.len() {
            return self.next_item(node);
        }
        Some(self.call(*condition, None, Expect::Completion))
    }

    /// A sequential for-each's completion condition answered: it ends, or
    /// runs its next item.
    pub(super) fn completion_decided(&mut self, node: &Node, output: &Option<String>) -> Option<Yield> {
        match parse_output::<bool>(output) {
            Ok(true) => {
                self.top_mut().phase = Phase::Done;
                None
            }
            Ok(false) => self.next_item(node),
            Err(e) => self.raise(Fault::new("cairn.bad-handler-output", format!("completion condition: {e}"))),
        }
    }

    /// A parallel for-each with a completion condition: an iteration has
    /// just finished (the active branch). Marks it done and asks the
    /// condition; `None` if the for-each has none (the flow goes on).
    pub(super) fn parallel_completion(&mut self) -> Option<Yield> {
        let node = self.def.node(self.top().node);
        let Activity::ForEach { completion: Some(condition), .. } = &node.activity else { return None };
        let Phase::Flow { branches } = &mut self.top_mut().phase else { unreachable!() };
        let active = branches.iter_mut().find(|b| b.state == BranchState::Active)?;
        active.state = BranchState::Done;
        Some(self.call(*condition, None, Expect::FlowCompletion))
    }

    /// A parallel for-each's completion condition answered: once it holds,
    /// the unfinished iterations are cancelled and the for-each is done.
    pub(super) fn flow_completion_decided(&mut self, output: &Option<String>) -> Option<Yield> {
        match parse_output::<bool>(output) {
            Ok(true) => {
                self.cancel_branches();
                self.top_mut().phase = Phase::Done;
                None
            }
            Ok(false) => None,
            Err(e) => self.raise(Fault::new("cairn.bad-handler-output", format!("completion condition: {e}"))),
        }
    }

    /// Withdraws every set-aside branch of the flow frame on top (what they
    /// wait for is given up), leaving it with none.
    pub(super) fn cancel_branches(&mut self) {
        let Phase::Flow { branches } = &mut self.top_mut().phase else { return };
        let branches = std::mem::take(branches);
        for b in branches {
            for frame in b.stack.into_iter().rev() {
                self.withdraw(frame);
            }
        }
    }
}
