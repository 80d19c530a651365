//! Resources, runtime side: the `cairn:resource/tables` host functions of one
//! activity call, delegating to the service's `ResourceAccess`.
//!
//! Owns: `ResourceAccess` (what one activity call may do with resources: the
//! service implements it with the deployment's grants, reads of the store
//! and the call's buffered writes), `Access` (how the runtime holds it: the
//! service keeps a clone to take the buffered writes out after the call) and
//! `ResourceCall`, the per-store state behind the host functions
//! (`runtime.rs` links `cairn:resource/tables` for activity components
//! only; process handlers decide, activities act).
//!
//! Rules, each enforced in the host functions before the service sees a
//! request:
//! - A call without access (`Runtime::invoke` given `None`) fails every
//!   operation with `cairn.resource-denied: this activity call has no
//!   resource access`.
//! - A scan asks for at most `MAX_SCAN` documents, whatever the guest asked,
//!   and never returns more than it asked for.
//!
//! Errors are messages for the guest, which may handle them. One the host
//! names starts `cairn.resource-<name>: ` (the service says
//! `cairn.resource-denied: …` for a table the deployment is not granted).
//! Such an error is remembered; if the activity call then ends in an error
//! anyway (the guest returns a fault or traps; not when it ran out of
//! memory), the call's fault is `cairn.resource-<name>` with that message
//! instead of the guest's, a denial before any other (and before the HTTP
//! faults of `outbound.rs`); the guest's own fault is kept in the fault's
//! data as `{"guest": {name, message, data}}`, as `outbound.rs` does.

use crate::runtime::bindings::activity::cairn::resource::tables;
use std::sync::{Arc, Mutex};

/// What one activity call may do with resources; the service implements it
/// (grants, reads, the buffered writes).
///
/// Values are JSON text. Errors are messages for the guest; a denial starts
/// with [`DENIED`]`: `.
pub trait ResourceAccess: Send {
    /// The document under `key` in `table`, if any.
    fn get(&mut self, table: &str, key: &str) -> Result<Option<String>, String>;
    /// Buffers a write of `value` under `key` in `table`.
    fn put(&mut self, table: &str, key: &str, value: &str) -> Result<(), String>;
    /// Buffers the removal of `key` from `table`.
    fn delete(&mut self, table: &str, key: &str) -> Result<(), String>;
    /// The documents of `table` whose keys start with `prefix`, after
    /// `after` if given, in key order, at most `limit` (never more than
    /// [`MAX_SCAN`]).
    fn scan(&mut self, table: &str, prefix: &str, after: Option<&str>, limit: u32) -> Result<Vec<(String, String)>, String>;
}

/// How `Runtime::invoke` is given an activity call's resource access; the
/// caller keeps a clone to take the buffered writes out after the call.
pub type Access = Arc<Mutex<dyn ResourceAccess>>;

/// The most documents one scan returns.
pub const MAX_SCAN: u32 = 1000;

/// The fault (and error prefix) of a resource operation the call may not do.
pub const DENIED: &str = "cairn.resource-denied";

/// The prefix of every resource error the host names.
const NAMED: &str = "cairn.resource-";

/// The resource state of one store: the call's access (`None`: every
/// operation denied) and the errors the host gave so far.
#[derive(Default)]
pub struct ResourceCall {
    access: Option<Access>,
    /// The first denial; sticky.
    denied: Option<String>,
    /// The first other named error (fault name, message); sticky.
    other: Option<(String, String)>,
}

impl ResourceCall {
    /// The state of a call with this access (`None`: none at all).
    pub fn new(access: Option<Access>) -> ResourceCall {
        ResourceCall { access, denied: None, other: None }
    }

    /// Runs `f` on the access, or denies; remembers a named error.
    fn with<R>(&mut self, f: impl FnOnce(&mut dyn ResourceAccess) -> Result<R, String>) -> Result<R, String> {
        let result = match &self.access {
            Some(access) => f(&mut *access.lock().unwrap_or_else(|p| p.into_inner())),
            None => Err(format!("{DENIED}: this activity call has no resource access")),
        };
        if let Err(message) = &result {
            self.note(message);
        }
        result
    }

    fn note(&mut self, message: &str) {
        let Some((name, text)) = message.split_once(": ") else { return };
        if !name.starts_with(NAMED) || name.len() == NAMED.len() || name.contains(char::is_whitespace) {
            return;
        }
        if name == DENIED {
            self.denied.get_or_insert_with(|| text.to_string());
        } else {
            self.other.get_or_insert_with(|| (name.to_string(), text.to_string()));
        }
    }

    /// Whether a resource operation got a named error, so that a failure of
    /// the call is the host's account rather than the guest's.
    pub fn has_account(&self) -> bool {
        self.denied.is_some() || self.other.is_some()
    }

    /// The fault an activity call that failed with `guest` ends with: the
    /// host's account if a resource operation got a named error, else the
    /// guest's own.
    pub fn fault_instead(&self, guest: cairn_engine::Fault) -> cairn_engine::Fault {
        let chosen = match (&self.denied, &self.other) {
            (Some(m), _) => (DENIED.to_string(), m.clone()),
            (None, Some((n, m))) => (n.clone(), m.clone()),
            (None, None) => return guest,
        };
        let data = serde_json::from_str::<serde_json::Value>(&guest.data).unwrap_or(serde_json::Value::String(guest.data));
        let data = serde_json::json!({ "guest": { "name": guest.name, "message": guest.message, "data": data } });
        cairn_engine::Fault { name: chosen.0, message: chosen.1, data: data.to_string() }
    }
}

impl tables::Host for ResourceCall {
    fn get(&mut self, table: String, key: String) -> Result<Option<String>, String> {
        self.with(|a| a.get(&table, &key))
    }

    fn put(&mut self, table: String, key: String, value: String) -> Result<(), String> {
        self.with(|a| a.put(&table, &key, &value))
    }

    fn delete(&mut self, table: String, key: String) -> Result<(), String> {
        self.with(|a| a.delete(&table, &key))
    }

    fn scan(&mut self, table: String, prefix: String, after: Option<String>, limit: u32) -> Result<Vec<(String, String)>, String> {
        let limit = limit.min(MAX_SCAN);
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut rows = self.with(|a| a.scan(&table, &prefix, after.as_deref(), limit))?;
        rows.truncate(limit as usize);
        Ok(rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use tables::Host;

    /// A granted table "t" in memory, everything else denied.
    #[derive(Default)]
    struct Memory(BTreeMap<String, String>);

    impl Memory {
        fn granted(table: &str) -> Result<(), String> {
            if table == "t" {
                Ok(())
            } else {
                Err(format!("{DENIED}: table '{table}' is not granted"))
            }
        }
    }

    impl ResourceAccess for Memory {
        fn get(&mut self, table: &str, key: &str) -> Result<Option<String>, String> {
            Memory::granted(table)?;
            Ok(self.0.get(key).cloned())
        }
        fn put(&mut self, table: &str, key: &str, value: &str) -> Result<(), String> {
            Memory::granted(table)?;
            if value.len() > 10 {
                return Err("cairn.resource-limit: the document is too large".into());
            }
            self.0.insert(key.into(), value.into());
            Ok(())
        }
        fn delete(&mut self, table: &str, key: &str) -> Result<(), String> {
            Memory::granted(table)?;
            self.0.remove(key);
            Ok(())
        }
        fn scan(&mut self, table: &str, prefix: &str, after: Option<&str>, _limit: u32) -> Result<Vec<(String, String)>, String> {
            Memory::granted(table)?;
            // Ignores the limit, to show the host bounds what it returns.
            let rows = self.0.iter().filter(|(k, _)| k.starts_with(prefix) && after.is_none_or(|a| k.as_str() > a));
            Ok(rows.map(|(k, v)| (k.clone(), v.clone())).collect())
        }
    }

    fn call() -> (ResourceCall, Arc<Mutex<Memory>>) {
        let memory = Arc::new(Mutex::new(Memory::default()));
        (ResourceCall::new(Some(memory.clone())), memory)
    }

    fn s(x: &str) -> String {
        x.to_string()
    }

    #[test]
    fn a_call_without_access_is_denied_and_its_failure_says_so() {
        let mut call = ResourceCall::new(None);
        let err = call.get(s("t"), s("k")).unwrap_err();
        assert_eq!(err, "cairn.resource-denied: this activity call has no resource access");
        let fault = call.fault_instead(cairn_engine::Fault::new("resource-failed", err));
        assert_eq!(fault.name, "cairn.resource-denied");
        assert_eq!(fault.message, "this activity call has no resource access");
        let data: serde_json::Value = serde_json::from_str(&fault.data).unwrap();
        assert_eq!(data["guest"]["name"], "resource-failed");
    }

    #[test]
    fn operations_reach_the_access_and_the_caller_keeps_what_was_written() {
        let (mut call, memory) = call();
        call.put(s("t"), s("a"), s("1")).unwrap();
        call.put(s("t"), s("b"), s("2")).unwrap();
        assert_eq!(call.get(s("t"), s("a")).unwrap(), Some(s("1")));
        call.delete(s("t"), s("a")).unwrap();
        assert_eq!(call.get(s("t"), s("a")).unwrap(), None);
        assert_eq!(memory.lock().unwrap().0.len(), 1);
        let guest = cairn_engine::Fault::new("app.failed", "x");
        assert_eq!(call.fault_instead(guest.clone()), guest);
    }

    #[test]
    fn a_scan_never_returns_more_than_asked_nor_more_than_the_cap() {
        let (mut call, memory) = call();
        for i in 0..1005 {
            memory.lock().unwrap().0.insert(format!("k{i:04}"), s("0"));
        }
        assert_eq!(call.scan(s("t"), s("k"), None, 3).unwrap().len(), 3);
        assert_eq!(call.scan(s("t"), s("k"), None, 5000).unwrap().len(), MAX_SCAN as usize);
        assert!(call.scan(s("t"), s("k"), None, 0).unwrap().is_empty());
        let page = call.scan(s("t"), s("k"), Some(s("k1002")), 10).unwrap();
        assert_eq!(page.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(), ["k1003", "k1004"]);
    }

    #[test]
    fn a_denial_comes_before_other_named_errors_and_plain_errors_are_not_remembered() {
        let (mut call, _memory) = call();
        assert!(call.put(s("t"), s("big"), s("12345678901")).is_err());
        let fault = call.fault_instead(cairn_engine::Fault::new("app.failed", "x"));
        assert_eq!((fault.name.as_str(), fault.message.as_str()), ("cairn.resource-limit", "the document is too large"));
        assert!(call.get(s("other"), s("k")).is_err());
        let fault = call.fault_instead(cairn_engine::Fault::new("app.failed", "x"));
        assert_eq!((fault.name.as_str(), fault.message.as_str()), ("cairn.resource-denied", "table 'other' is not granted"));

        let mut plain = ResourceCall::default();
        plain.note("the store is unavailable: retry later");
        plain.note("cairn.resource-: nameless");
        let guest = cairn_engine::Fault::new("app.failed", "x");
        assert_eq!(plain.fault_instead(guest.clone()), guest);
    }
}
