//! "Did you mean …?": the deployed name closest to one that is not
//! deployed, so that every client (the CLI, the console, a script reading
//! the API's error) gets the hint in the error message itself.

use super::Service;
use cairn_store::ComponentKind;

/// The Levenshtein distance of `a` and `b` (by characters).
pub fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = if ca == *cb { diagonal } else { 1 + diagonal.min(above).min(row[j]) };
            diagonal = above;
        }
    }
    row[b.len()]
}

/// The candidate closest to `word`, if it is close enough to be a typo:
/// at most a third of the longer name's characters differ (at least one),
/// or one name holds the other (`order` for `order-handling`).
pub fn closest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let lower = word.to_lowercase();
    candidates
        .into_iter()
        .filter(|c| *c != word)
        .filter_map(|c| {
            let d = distance(&lower, &c.to_lowercase());
            let most = (word.chars().count().max(c.chars().count()) / 3).max(1);
            let contains = word.len() >= 3 && (c.contains(word) || word.contains(c));
            (d <= most || contains).then_some((d, c))
        })
        .min_by_key(|(d, c)| (*d, *c))
        .map(|(_, c)| c)
}

/// `" (did you mean 'X'?)"`, or nothing.
fn hint(found: Option<&str>) -> String {
    found.map(|c| format!(" (did you mean '{c}'?)")).unwrap_or_default()
}

impl Service {
    /// The hint for a process name that is not deployed.
    pub fn suggest_process(&self, name: &str) -> String {
        let names: Vec<String> = self.registry.processes().iter().map(|d| d.record.name.clone()).collect();
        hint(closest(name, names.iter().map(String::as_str)))
    }

    /// The hint for an operation no deployed process receives.
    pub fn suggest_operation(&self, operation: &str) -> String {
        let mut operations: Vec<String> = self
            .registry
            .processes()
            .iter()
            .filter(|d| self.registry.latest(ComponentKind::Process, &d.record.name).is_some_and(|l| l.record.version == d.record.version))
            .filter_map(|d| d.definition().map(|def| def.subscriptions()))
            .flatten()
            .map(|s| s.operation)
            .collect();
        operations.sort();
        operations.dedup();
        hint(closest(operation, operations.iter().map(String::as_str)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_names_are_suggested_and_far_ones_are_not() {
        assert_eq!(distance("kitten", "sitting"), 3);
        assert_eq!(distance("", "abc"), 3);
        let names = ["order-handling", "hello", "approve", "t-basics"];
        assert_eq!(closest("helo", names), Some("hello"));
        assert_eq!(closest("order-handlign", names), Some("order-handling"));
        assert_eq!(closest("aprove", names), Some("approve"));
        assert_eq!(closest("basics", names), Some("t-basics"));
        assert_eq!(closest("zzzzzzzz", names), None);
        assert_eq!(closest("hello", names), None, "the name itself is no suggestion");
    }
}
