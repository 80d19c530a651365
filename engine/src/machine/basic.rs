//! Basic activities: sequence, if, while, sequential for-each (a parallel
//! one starts as flow branches, see `flow`), throw, rethrow, suspend.
//! Snippets and terminate need nothing beyond the run loop (`mod.rs`).

use super::{parse_output, Expect, Machine};
use crate::contract::{Reason, Yield};
use crate::definition::{Activity, Node, NodeId};
use crate::snapshot::{Fault, Frame, Phase, Status};

impl Machine<'_> {
    /// A sequence runs its children in order, then is done.
    pub(super) fn next_child(&mut self, children: &[NodeId], next: u32) {
        match children.get(next as usize) {
            Some(&child) => {
                self.top_mut().phase = Phase::Child { next: next + 1 };
                self.push(child);
            }
            None => self.top_mut().phase = Phase::Done,
        }
    }

    /// An if's or a while's condition returned: run its branch or body, or
    /// finish. A condition that is not a boolean faults.
    pub(super) fn condition_decided(&mut self, node: &Node, output: &Option<String>) -> Option<Yield> {
        let truth = match parse_output::<bool>(output) {
            Ok(t) => t,
            Err(e) => return self.raise(Fault::new("cairn.bad-handler-output", format!("condition: {e}"))),
        };
        let child = match &node.activity {
            Activity::IfElse { then_branch, else_branch, .. } => {
                if truth {
                    Some(*then_branch)
                } else {
                    *else_branch
                }
            }
            Activity::While { body, .. } => truth.then_some(*body),
            // Repeat-until: the body ran once more; it ends once the condition holds.
            Activity::RepeatUntil { body, .. } => (!truth).then_some(*body),
            _ => unreachable!("condition on a node without one"),
        };
        match child {
            Some(c) => {
                self.top_mut().phase = Phase::Child { next: 1 };
                self.push(c);
            }
            None => self.top_mut().phase = Phase::Done,
        }
        None
    }

    /// A for-each begins: its items are the array at `pointer` in the
    /// variables. Sequential: one body at a time; parallel: one flow branch
    /// per item. Items that are not an array fault.
    pub(super) fn start_for_each(&mut self, pointer: &str, parallel: bool, body: NodeId) -> Option<Yield> {
        let items = match self.items_at(pointer) {
            Ok(items) => items,
            Err(fault) => return self.raise(fault),
        };
        if parallel {
            self.start_branches(items.into_iter().map(|item| Frame::new(body, Some(item))).collect());
        } else {
            self.top_mut().phase = Phase::Each { items, next: 0 };
        }
        None
    }

    /// A sequential for-each runs its body for the next item, or is done.
    /// The items stay in the frame (never copied whole per item).
    pub(super) fn next_item(&mut self, node: &Node) -> Option<Yield> {
        let Activity::ForEach { body, .. } = &node.activity else { unreachable!() };
        let body = *body;
        let frame = self.top_mut();
        let Phase::Each { items, next } = &mut frame.phase else { unreachable!() };
        match items.get(*next as usize).cloned() {
            Some(item) => {
                *next += 1;
                self.snap.stack.push(Frame::new(body, Some(item)));
            }
            None => frame.phase = Phase::Done,
        }
        None
    }

    /// The elements of the array at `pointer` in the variables, as JSON texts.
    fn items_at(&self, pointer: &str) -> Result<Vec<String>, Fault> {
        let variables: serde_json::Value = serde_json::from_str(&self.snap.variables).unwrap_or(serde_json::Value::Null);
        match variables.pointer(pointer) {
            Some(serde_json::Value::Array(items)) => Ok(items.iter().map(|i| i.to_string()).collect()),
            other => Err(Fault::new(
                "cairn.for-each-not-array",
                format!("for-each items at '{pointer}' are not a JSON array (found {})", other.map_or("nothing".into(), |v| v.to_string())),
            )),
        }
    }

    /// A throw raises its fault, with data from its handler if it has one.
    pub(super) fn start_throw(&mut self, fault: &str, message: &str, data: Option<u32>) -> Option<Yield> {
        match data {
            Some(h) => Some(self.call(h, None, Expect::ThrowData)),
            None => self.raise(Fault::new(fault, message)),
        }
    }

    /// A throw's data handler returned: raise the fault with that data.
    pub(super) fn throw_with_data(&mut self, node: &Node, output: Option<String>) -> Option<Yield> {
        let Activity::Throw { fault, message, .. } = &node.activity else { unreachable!() };
        let fault = Fault { name: fault.clone(), message: message.clone(), data: output.unwrap_or_else(|| "null".into()) };
        self.raise(fault)
    }

    /// A rethrow raises the fault the nearest enclosing fault handler caught,
    /// with its original path.
    pub(super) fn rethrow(&mut self) -> Option<Yield> {
        let caught = self.snap.stack.iter().rev().find_map(|f| match &f.phase {
            Phase::Handling { caught } => Some(caught.clone()),
            _ => None,
        });
        match caught {
            Some(record) => self.propagate(record),
            None => self.raise(Fault::new("cairn.rethrow-outside-handler", "rethrow outside a fault handler")),
        }
    }

    /// A suspend activity is done at once and suspends the instance; resumed,
    /// it goes on after it.
    pub(super) fn suspend(&mut self) -> Yield {
        self.top_mut().phase = Phase::Done;
        self.snap.status = Status::Suspended;
        self.persist(Reason::Suspended)
    }
}
