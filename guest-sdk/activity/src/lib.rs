//! Cairn guest SDK for activity components.
//!
//! An activity is a sandboxed function the host calls once per attempt, in a
//! fresh instance, with an operation name and a JSON input. Register typed
//! operations with [`Operations`] and export them with [`export_activity!`].
//!
//! ```no_run
//! use cairn_activity::{Fault, Operations};
//!
//! #[derive(serde::Deserialize)]
//! struct QuoteRequest { qty: u32 }
//! #[derive(serde::Serialize)]
//! struct Quote { price: f64 }
//!
//! fn operations(ops: &mut Operations) {
//!     ops.operation("quote", |r: QuoteRequest| {
//!         if r.qty == 0 { return Err(Fault::new("bad-quantity", "qty must be positive")); }
//!         Ok(Quote { price: r.qty as f64 * 9.5 })
//!     });
//! }
//!
//! cairn_activity::export_activity!(operations);
//! ```
//!
//! An activity may call partners over HTTP with [`http`] (`wasi:http`,
//! checked against the host's grants), and read and write resources, tables
//! of JSON documents kept by Cairn, with [`resource`] (`cairn:resource`,
//! granted per table; writes commit with the calling instance).

pub mod http;
pub mod resource;

use serde::de::DeserializeOwned;
use serde::Serialize;

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "cairn:activity/activity",
        path: "../../wit/activity",
        pub_export_macro: true,
        export_macro_name: "__export_activity_world",
        default_bindings_module: "cairn_activity::bindings",
        generate_all,
    });
}

use bindings::cairn::activity::types as wit;

/// A named fault with a message and JSON data; it is raised in the calling
/// instance at the invoke.
///
/// ```
/// let f = cairn_activity::Fault::new("declined", "card declined").with_data(402);
/// assert_eq!(f.name, "declined");
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Fault {
    pub name: String,
    pub message: String,
    pub data: serde_json::Value,
}

impl Fault {
    /// A fault with a name for handlers to match and a message for people.
    ///
    /// ```
    /// let f = cairn_activity::Fault::new("timeout", "upstream did not answer");
    /// assert_eq!(f.message, "upstream did not answer");
    /// ```
    pub fn new(name: impl Into<String>, message: impl Into<String>) -> Fault {
        Fault { name: name.into(), message: message.into(), data: serde_json::Value::Null }
    }

    /// Attaches JSON data.
    ///
    /// ```
    /// let f = cairn_activity::Fault::new("bad", "bad").with_data(serde_json::json!({"field": "qty"}));
    /// assert_eq!(f.data["field"], "qty");
    /// ```
    pub fn with_data(mut self, data: impl Serialize) -> Fault {
        self.data = serde_json::to_value(data).unwrap_or(serde_json::Value::Null);
        self
    }
}

/// Logging to the host, stamped with the calling instance and idempotency key.
///
/// ```no_run
/// cairn_activity::log::info("charged card", &[("amount", "42.00")]);
/// ```
pub mod log {
    use super::bindings::cairn::log::logging::{self, Level};

    fn write(level: Level, message: &str, fields: &[(&str, &str)]) {
        let fields: Vec<(String, String)> = fields.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        logging::log(level, message, &fields);
    }
    /// Logs at info level.
    ///
    /// ```no_run
    /// cairn_activity::log::info("done", &[]);
    /// ```
    pub fn info(message: &str, fields: &[(&str, &str)]) {
        write(Level::Info, message, fields)
    }
    /// Logs at warn level.
    ///
    /// ```no_run
    /// cairn_activity::log::warn("slow upstream", &[]);
    /// ```
    pub fn warn(message: &str, fields: &[(&str, &str)]) {
        write(Level::Warn, message, fields)
    }
    /// Logs at error level.
    ///
    /// ```no_run
    /// cairn_activity::log::error("failed", &[]);
    /// ```
    pub fn error(message: &str, fields: &[(&str, &str)]) {
        write(Level::Error, message, fields)
    }
}

type OperationFn = Box<dyn Fn(&str) -> Result<String, Fault>>;

/// The builder of an activity component's operations.
pub struct Operations {
    wanted: String,
    found: Option<OperationFn>,
    names: Vec<String>,
}

impl Operations {
    /// Registers operation `name` with typed input and output.
    ///
    /// ```
    /// # fn f(ops: &mut cairn_activity::Operations) {
    /// ops.operation("double", |n: i64| Ok(n * 2));
    /// # }
    /// ```
    pub fn operation<I: DeserializeOwned, O: Serialize>(
        &mut self,
        name: &str,
        f: impl Fn(I) -> Result<O, Fault> + 'static,
    ) {
        self.names.push(name.to_string());
        if name != self.wanted {
            return;
        }
        let what = format!("the input of operation '{name}'");
        self.found = Some(Box::new(move |input| {
            let i: I = serde_json::from_str(input)
                .map_err(|e| Fault::new("cairn.deserialize", format!("{what} does not match the expected type: {e}")))?;
            let o = f(i)?;
            serde_json::to_string(&o).map_err(|e| Fault::new("cairn.serialize", e.to_string()))
        }));
    }
}

#[doc(hidden)]
pub fn __invoke(define: fn(&mut Operations), operation: String, input: String) -> Result<String, wit::Fault> {
    let mut ops = Operations { wanted: operation, found: None, names: Vec::new() };
    define(&mut ops);
    let into_wit = |f: Fault| wit::Fault { name: f.name, message: f.message, data: f.data.to_string() };
    match ops.found {
        Some(f) => f(&input).map_err(into_wit),
        None => Err(into_wit(
            Fault::new(
                "cairn.unknown-operation",
                format!("operation '{}' does not exist; this activity has: {}", ops.wanted, ops.names.join(", ")),
            ),
        )),
    }
}

/// Exports an activity component from the function that registers its operations.
///
/// ```no_run
/// fn operations(ops: &mut cairn_activity::Operations) {
///     ops.operation("echo", |s: String| Ok(s));
/// }
/// cairn_activity::export_activity!(operations);
/// ```
#[macro_export]
macro_rules! export_activity {
    ($define:path) => {
        struct __CairnActivity;
        impl $crate::bindings::Guest for __CairnActivity {
            fn invoke(
                operation: ::std::string::String,
                input: ::std::string::String,
            ) -> ::std::result::Result<::std::string::String, $crate::bindings::cairn::activity::types::Fault> {
                $crate::__invoke($define, operation, input)
            }
        }
        $crate::bindings::__export_activity_world!(__CairnActivity with_types_in $crate::bindings);
    };
}
