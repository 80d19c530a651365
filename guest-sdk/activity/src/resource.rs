//! Resources: named tables of JSON documents by key, kept in Cairn's own
//! store, read and written through the host interface `cairn:resource/tables`.
//!
//! A [`Table<T>`] holds documents of one serde type. What the host does:
//! - it lets a call use only the tables its deployment is granted; any other
//!   operation fails with a [`ResourceError`] whose message starts
//!   `cairn.resource-denied: ` (and if the operation then fails, its fault is
//!   `cairn.resource-denied`, whatever fault the operation returned);
//! - it buffers the call's writes: they commit with the calling instance's
//!   next persistence point, together with the call's result, so an
//!   operation that returns a fault (or traps, or times out) leaves no write
//!   behind;
//! - reads see the committed data plus the call's own writes.
//!
//! ```no_run
//! use cairn_activity::resource::Table;
//! use cairn_activity::{Fault, Operations};
//!
//! #[derive(serde::Serialize, serde::Deserialize)]
//! struct Order { status: String }
//!
//! #[derive(serde::Deserialize)]
//! struct Ship { order_id: String }
//!
//! fn operations(ops: &mut Operations) {
//!     ops.operation("ship", |s: Ship| -> Result<bool, Fault> {
//!         let orders = Table::<Order>::open("orders");
//!         // `?` turns a ResourceError into the fault `resource-failed`.
//!         let Some(mut order) = orders.get(&s.order_id)? else { return Ok(false) };
//!         order.status = "shipped".into();
//!         orders.put(&s.order_id, &order)?;
//!         Ok(true)
//!     });
//! }
//! cairn_activity::export_activity!(operations);
//! ```

use crate::bindings::cairn::resource::tables;
use crate::Fault;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fmt;
use std::marker::PhantomData;

/// The prefix of the message of an operation the call may not do (its
/// deployment is not granted the table).
///
/// ```
/// assert!(cairn_activity::resource::DENIED_PREFIX.starts_with("cairn."));
/// ```
pub const DENIED_PREFIX: &str = "cairn.resource-denied";

/// The most documents one [`Table::scan`] returns, whatever limit it asks.
///
/// ```
/// assert_eq!(cairn_activity::resource::MAX_SCAN, 1000);
/// ```
pub const MAX_SCAN: u32 = 1000;

/// A resource table whose documents are `T`, serialized as JSON.
///
/// Opening checks nothing: each operation asks the host, which checks the
/// grant.
///
/// ```no_run
/// use cairn_activity::resource::Table;
///
/// let counters = Table::<u64>::open("counters");
/// let n = counters.get("visits")?.unwrap_or(0);
/// counters.put("visits", &(n + 1))?;
/// # Ok::<(), cairn_activity::resource::ResourceError>(())
/// ```
pub struct Table<T> {
    name: String,
    documents: PhantomData<fn() -> T>,
}

impl<T> Clone for Table<T> {
    fn clone(&self) -> Table<T> {
        Table { name: self.name.clone(), documents: PhantomData }
    }
}

impl<T> fmt::Debug for Table<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Table").field("name", &self.name).finish()
    }
}

impl<T: Serialize + DeserializeOwned> Table<T> {
    /// The table `name`.
    ///
    /// ```
    /// let orders = cairn_activity::resource::Table::<serde_json::Value>::open("orders");
    /// assert_eq!(orders.name(), "orders");
    /// ```
    pub fn open(name: &str) -> Table<T> {
        Table { name: name.to_string(), documents: PhantomData }
    }

    /// The table's name.
    ///
    /// ```
    /// assert_eq!(cairn_activity::resource::Table::<u64>::open("counters").name(), "counters");
    /// ```
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The document under `key`, if there is one.
    ///
    /// ```no_run
    /// let orders = cairn_activity::resource::Table::<serde_json::Value>::open("orders");
    /// if let Some(order) = orders.get("o-1")? {
    ///     println!("{}", order["status"]);
    /// }
    /// # Ok::<(), cairn_activity::resource::ResourceError>(())
    /// ```
    pub fn get(&self, key: &str) -> Result<Option<T>, ResourceError> {
        match tables::get(&self.name, key).map_err(ResourceError::new)? {
            Some(text) => self.decode(key, &text).map(Some),
            None => Ok(None),
        }
    }

    /// Stores `value` under `key`, replacing any document there. The write
    /// commits with the calling instance (see the [module](self) doc).
    ///
    /// ```no_run
    /// let orders = cairn_activity::resource::Table::open("orders");
    /// orders.put("o-1", &serde_json::json!({ "status": "new" }))?;
    /// # Ok::<(), cairn_activity::resource::ResourceError>(())
    /// ```
    pub fn put(&self, key: &str, value: &T) -> Result<(), ResourceError> {
        let text = serde_json::to_string(value)
            .map_err(|e| ResourceError::new(format!("the document for key '{key}' of table '{}' is not JSON: {e}", self.name)))?;
        tables::put(&self.name, key, &text).map_err(ResourceError::new)
    }

    /// Removes the document under `key`; removing an absent key is not an
    /// error.
    ///
    /// ```no_run
    /// cairn_activity::resource::Table::<serde_json::Value>::open("orders").delete("o-1")?;
    /// # Ok::<(), cairn_activity::resource::ResourceError>(())
    /// ```
    pub fn delete(&self, key: &str) -> Result<(), ResourceError> {
        tables::delete(&self.name, key).map_err(ResourceError::new)
    }

    /// The documents whose keys start with `prefix` and come after `after`
    /// (if given), in key order, at most `limit` of them (and at most
    /// [`MAX_SCAN`]). Fewer than `limit` means there are no more; otherwise
    /// pass the last key as `after` to read the next page.
    ///
    /// ```no_run
    /// let orders = cairn_activity::resource::Table::<serde_json::Value>::open("orders");
    /// let mut after: Option<String> = None;
    /// loop {
    ///     let page = orders.scan("o-", after.as_deref(), 100)?;
    ///     for (key, order) in &page {
    ///         println!("{key}: {}", order["status"]);
    ///     }
    ///     if page.len() < 100 { break; }
    ///     after = page.last().map(|(key, _)| key.clone());
    /// }
    /// # Ok::<(), cairn_activity::resource::ResourceError>(())
    /// ```
    pub fn scan(&self, prefix: &str, after: Option<&str>, limit: u32) -> Result<Vec<(String, T)>, ResourceError> {
        let rows = tables::scan(&self.name, prefix, after, limit).map_err(ResourceError::new)?;
        rows.into_iter().map(|(key, text)| self.decode(&key, &text).map(|value| (key, value))).collect()
    }

    fn decode(&self, key: &str, text: &str) -> Result<T, ResourceError> {
        serde_json::from_str(text).map_err(|e| {
            ResourceError::new(format!("the document under key '{key}' of table '{}' is not of the expected type: {e}", self.name))
        })
    }
}

/// Why a resource operation failed: refused by the host (its message kept as
/// it is, e.g. `cairn.resource-denied: …`), or a document that does not
/// match the table's type.
///
/// Its `Display` is the message. Converted into a [`Fault`] (by `?` in an
/// operation), it becomes the fault `resource-failed` with that message.
///
/// ```
/// let f: cairn_activity::Fault = cairn_activity::resource::ResourceError::new("no such table").into();
/// assert_eq!(f.name, "resource-failed");
/// assert_eq!(f.message, "no such table");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceError {
    message: String,
}

impl ResourceError {
    /// An error with this message.
    ///
    /// ```
    /// let e = cairn_activity::resource::ResourceError::new("bad key");
    /// assert_eq!(e.to_string(), "bad key");
    /// ```
    pub fn new(message: impl Into<String>) -> ResourceError {
        ResourceError { message: message.into() }
    }

    /// The message, as the host gave it where the host refused.
    ///
    /// ```
    /// let e = cairn_activity::resource::ResourceError::new("cairn.resource-denied: table 'orders' is not granted");
    /// assert!(e.message().ends_with("not granted"));
    /// ```
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether the host refused because the call may not use the table.
    ///
    /// ```
    /// let e = cairn_activity::resource::ResourceError::new("cairn.resource-denied: table 'orders' is not granted");
    /// assert!(e.is_denied());
    /// ```
    pub fn is_denied(&self) -> bool {
        self.message.starts_with(DENIED_PREFIX)
    }
}

impl fmt::Display for ResourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ResourceError {}

impl From<ResourceError> for Fault {
    fn from(e: ResourceError) -> Fault {
        Fault::new("resource-failed", e.message)
    }
}
