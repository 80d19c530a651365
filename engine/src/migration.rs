//! Version migration: a waiting or suspended instance moves to another
//! version of its definition, its position mapped by activity path.
//!
//! Rules:
//! - Each frame (set-aside flow branches included) is mapped to the node of
//!   the target version with the same activity path, or the path an
//!   operator's mapping gives (`OLD_PATH=NEW_PATH`, the longest old path
//!   that is a prefix of the frame's wins, and the rest of the path
//!   follows). A frame with no counterpart refuses the migration, naming it.
//! - A sequence running a child goes on after that child in the target
//!   version's order (activities inserted before it do not run).
//! - Registered compensations and queued compensation steps name the
//!   handler of their scope: they take the target's scope of the same name
//!   and its compensation handler, or refuse, naming the scope.
//! - The result must fit the target version (`Snapshot::check`), or the
//!   migration is refused with why. Timer and call ids, correlations and
//!   requests are kept: they do not depend on the version.
//! - Whether the variables decode in the target version is for the guest to
//!   say; the host asks it before it stores the migrated snapshot.

use crate::definition::{Activity, Definition, NodeId};
use crate::snapshot::{Frame, Phase, Registered, Snapshot};
use std::collections::BTreeMap;

/// Every node's activity path, and the node at each path.
struct Paths {
    of: BTreeMap<NodeId, String>,
    at: BTreeMap<String, NodeId>,
}

impl Paths {
    fn new(def: &Definition) -> Paths {
        let mut paths = Paths { of: BTreeMap::new(), at: BTreeMap::new() };
        let mut todo = vec![(def.root, String::new())];
        while let Some((id, parent)) = todo.pop() {
            let node = def.node(id);
            let path = if parent.is_empty() { node.name.clone() } else { format!("{parent}/{}", node.name) };
            for child in node.activity.children() {
                todo.push((child, path.clone()));
            }
            paths.of.insert(id, path.clone());
            paths.at.insert(path, id);
        }
        paths
    }
}

/// `snap` (of `from`) as an instance of `to`, with `map` (old path -> new
/// path) for activities that moved; or why it cannot be.
pub fn migrate(snap: &Snapshot, from: &Definition, to: &Definition, map: &BTreeMap<String, String>) -> Result<Snapshot, String> {
    if from.name != to.name {
        return Err(format!("version of process '{}' cannot take an instance of process '{}'", to.name, from.name));
    }
    let (old, new) = (Paths::new(from), Paths::new(to));
    let m = Mapper { old, new, map, to };
    let mut out = snap.clone();
    m.stack(&mut out.stack, "the stack")?;
    for r in &mut out.compensations {
        m.registered(r)?;
    }
    if out.retry.take().is_some() {
        return Err("a faulted instance is not migrated; retry it, or end it".into());
    }
    out.check(to).map_err(|e| format!("the position does not fit the target version: {e}"))?;
    Ok(out)
}

struct Mapper<'a> {
    old: Paths,
    new: Paths,
    map: &'a BTreeMap<String, String>,
    to: &'a Definition,
}

impl Mapper<'_> {
    /// The target path of `path`: the longest mapped prefix replaced.
    fn target(&self, path: &str) -> String {
        let mapped = self
            .map
            .iter()
            .filter(|(old, _)| path == old.as_str() || path.starts_with(&format!("{old}/")))
            .max_by_key(|(old, _)| old.len());
        match mapped {
            Some((old, new)) => format!("{new}{}", &path[old.len()..]),
            None => path.to_string(),
        }
    }

    fn stack(&self, stack: &mut [Frame], what: &str) -> Result<(), String> {
        for (i, f) in stack.iter_mut().enumerate() {
            let path = self.old.of.get(&f.node).cloned().ok_or_else(|| format!("{what}: frame {i} is of no activity"))?;
            let target = self.target(&path);
            let Some(&node) = self.new.at.get(&target) else {
                return Err(format!(
                    "{what}: frame {i} at '{path}' has no activity at '{target}' in the target version; map it with --map {path}=NEW_PATH"
                ));
            };
            f.node = node;
            match &mut f.phase {
                Phase::Flow { branches } => {
                    for (b, branch) in branches.iter_mut().enumerate() {
                        self.stack(&mut branch.stack, &format!("{what}: frame {i} at '{path}', branch {b}"))?;
                    }
                }
                Phase::Compensating { queue, .. } => {
                    for step in queue {
                        step.handler = self.compensation(&step.scope)?;
                    }
                }
                _ => {}
            }
            for r in &mut f.completed {
                self.registered(r)?;
            }
        }
        // A sequence's next child follows the child running, wherever the
        // target version put it.
        let nodes: Vec<NodeId> = stack.iter().map(|f| f.node).collect();
        for (below, &running) in stack.iter_mut().zip(nodes.iter().skip(1)) {
            if let (Phase::Child { next }, Activity::Sequence { children }) = (&mut below.phase, &self.to.node(below.node).activity) {
                if let Some(p) = children.iter().position(|&c| c == running) {
                    *next = p as u32 + 1;
                }
            }
        }
        Ok(())
    }

    fn registered(&self, r: &mut Registered) -> Result<(), String> {
        if r.handler.is_some() {
            r.handler = Some(self.compensation(&r.scope)?);
        }
        r.inner.iter_mut().try_for_each(|i| self.registered(i))
    }

    /// The compensation handler of the target's scope named `scope`.
    fn compensation(&self, scope: &str) -> Result<u32, String> {
        self.to
            .nodes
            .iter()
            .find_map(|n| match &n.activity {
                Activity::Scope { compensation: Some(h), .. } if n.name == scope => Some(*h),
                _ => None,
            })
            .ok_or_else(|| format!("the completed scope '{scope}' has no scope with a compensation handler of that name in the target version"))
    }
}
