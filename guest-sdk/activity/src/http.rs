//! Outbound HTTP for activity components: a small blocking client over the
//! standard `wasi:http/outgoing-handler` interface (WASI 0.2).
//!
//! An activity's `invoke` is synchronous, so every call here blocks until
//! the whole response (status, headers and body) is in memory. Underneath
//! are the `wasi:http` bindings of the [`wasip2`](https://docs.rs/wasip2)
//! crate (what `wasi` 0.14 re-exports); a component imports
//! `wasi:http/outgoing-handler` only if it calls this module.
//!
//! What the host does with each request:
//! - it checks the URL against the grants given at deploy or serve time
//!   (`cairn deploy FILE --allow-http PREFIX`, `cairn serve --allow-http
//!   PREFIX`); a request outside them fails with an [`HttpError`] whose
//!   message starts `cairn.capability-denied: `;
//! - it adds the header `Idempotency-Key` with the call's idempotency key
//!   (`instance/activity-path/call/attempt`), the same for every request one
//!   attempt makes, so a partner can recognise a call sent again;
//! - it enforces its limits (time, sizes), which also fail as an
//!   [`HttpError`] carrying the host's message.
//!
//! Redirects are not followed: a `302` is a [`Response`] like any other. A
//! status that is not 2xx is not an error either; see [`Response::is_success`].
//!
//! ```no_run
//! use cairn_activity::{http, Fault, Operations};
//!
//! #[derive(serde::Deserialize)]
//! struct Notice { url: String, order_id: String }
//!
//! fn operations(ops: &mut Operations) {
//!     ops.operation("notify", |n: Notice| -> Result<u16, Fault> {
//!         // `?` turns an HttpError into the fault `http-failed`.
//!         let response = http::post_json(&n.url, &serde_json::json!({ "order": n.order_id }))?;
//!         Ok(response.status)
//!     });
//! }
//! cairn_activity::export_activity!(operations);
//! ```

use crate::Fault;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fmt;
use std::time::Duration;
use wasip2::http::outgoing_handler;
use wasip2::http::types::{
    ErrorCode, Fields, HeaderError, IncomingResponse, Method, OutgoingBody, OutgoingRequest, RequestOptions, Scheme,
};
use wasip2::io::streams::StreamError;

/// The prefix of the message of a request the host's grants do not allow.
///
/// ```
/// assert!(cairn_activity::http::DENIED_PREFIX.starts_with("cairn."));
/// ```
pub const DENIED_PREFIX: &str = "cairn.capability-denied";

/// Sends a `GET` to `url` and waits for the whole response.
///
/// ```no_run
/// let response = cairn_activity::http::get("http://127.0.0.1:7702/status/204")?;
/// assert_eq!(response.status, 204);
/// # Ok::<(), cairn_activity::http::HttpError>(())
/// ```
pub fn get(url: &str) -> Result<Response, HttpError> {
    Request::get(url).send()
}

/// Sends a `POST` to `url` with `body` as JSON (`Content-Type:
/// application/json`) and waits for the whole response.
///
/// ```no_run
/// let body = serde_json::json!({ "order_id": "o-1", "status": "rejected" });
/// let response = cairn_activity::http::post_json("http://127.0.0.1:7702/notify", &body)?;
/// assert!(response.is_success());
/// # Ok::<(), cairn_activity::http::HttpError>(())
/// ```
pub fn post_json(url: &str, body: &impl Serialize) -> Result<Response, HttpError> {
    Request::post(url).json(body)?.send()
}

/// A request to build up and [`send`](Request::send): method, URL, headers,
/// body and an optional timeout.
///
/// ```no_run
/// use cairn_activity::http::Request;
/// use std::time::Duration;
///
/// let response = Request::new("PUT", "http://127.0.0.1:7702/orders/o-1")
///     .header("x-source", "cairn")
///     .body("shipped")
///     .timeout(Duration::from_secs(2))
///     .send()?;
/// println!("{}", response.text());
/// # Ok::<(), cairn_activity::http::HttpError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    method: String,
    url: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    timeout: Option<Duration>,
}

impl Request {
    /// A request with any method (`GET`, `POST`, `PUT`, `DELETE`, ...) and
    /// an absolute `http://` or `https://` URL, with no headers and an empty
    /// body.
    ///
    /// ```
    /// let r = cairn_activity::http::Request::new("DELETE", "http://127.0.0.1:7702/orders/o-1");
    /// assert_eq!(r.method(), "DELETE");
    /// ```
    pub fn new(method: &str, url: &str) -> Request {
        Request { method: method.to_string(), url: url.to_string(), headers: Vec::new(), body: Vec::new(), timeout: None }
    }

    /// A `GET` request.
    ///
    /// ```
    /// let r = cairn_activity::http::Request::get("http://127.0.0.1:7702/");
    /// assert_eq!(r.method(), "GET");
    /// ```
    pub fn get(url: &str) -> Request {
        Request::new("GET", url)
    }

    /// A `POST` request.
    ///
    /// ```
    /// let r = cairn_activity::http::Request::post("http://127.0.0.1:7702/notify");
    /// assert_eq!(r.url(), "http://127.0.0.1:7702/notify");
    /// ```
    pub fn post(url: &str) -> Request {
        Request::new("POST", url)
    }

    /// The method.
    ///
    /// ```
    /// assert_eq!(cairn_activity::http::Request::post("http://x/").method(), "POST");
    /// ```
    pub fn method(&self) -> &str {
        &self.method
    }

    /// The URL.
    ///
    /// ```
    /// assert_eq!(cairn_activity::http::Request::get("http://x/a?b=1").url(), "http://x/a?b=1");
    /// ```
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Adds a header (a name may be given more than once). The host sets
    /// `Idempotency-Key` itself.
    ///
    /// ```
    /// let r = cairn_activity::http::Request::get("http://x/").header("accept", "text/plain");
    /// # let _ = r;
    /// ```
    pub fn header(mut self, name: &str, value: &str) -> Request {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// Sets the body to these bytes.
    ///
    /// ```
    /// let r = cairn_activity::http::Request::post("http://x/").body("plain text");
    /// # let _ = r;
    /// ```
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Request {
        self.body = body.into();
        self
    }

    /// Sets the body to `value` as JSON and `Content-Type` to
    /// `application/json`.
    ///
    /// ```
    /// let r = cairn_activity::http::Request::post("http://x/").json(&serde_json::json!({ "a": 1 }))?;
    /// # let _ = r;
    /// # Ok::<(), cairn_activity::http::HttpError>(())
    /// ```
    pub fn json(self, value: &impl Serialize) -> Result<Request, HttpError> {
        let body = serde_json::to_vec(value).map_err(|e| HttpError::new(format!("the request body is not JSON: {e}")))?;
        Ok(self.header("content-type", "application/json").body(body))
    }

    /// Gives up if the partner does not connect, or does not start or go on
    /// answering, within `timeout` (each of the three, not in total). The
    /// host's own limits apply as well.
    ///
    /// ```
    /// let r = cairn_activity::http::Request::get("http://x/").timeout(std::time::Duration::from_millis(500));
    /// # let _ = r;
    /// ```
    pub fn timeout(mut self, timeout: Duration) -> Request {
        self.timeout = Some(timeout);
        self
    }

    /// Sends the request and waits for the whole response.
    ///
    /// ```no_run
    /// let response = cairn_activity::http::Request::get("http://127.0.0.1:7702/big/10").send()?;
    /// assert_eq!(response.body.len(), 10);
    /// # Ok::<(), cairn_activity::http::HttpError>(())
    /// ```
    pub fn send(self) -> Result<Response, HttpError> {
        let context = format!("{} {}", self.method, self.url);
        let invalid = |what: String| HttpError::new(format!("invalid request {context}: {what}"));
        let url = Url::parse(&self.url).map_err(invalid)?;
        let headers = Fields::new();
        for (name, value) in &self.headers {
            headers.append(name, value.as_bytes()).map_err(|e| invalid(header_refused(name, e)))?;
        }
        // A known length, so the body is not sent chunked (some partners
        // refuse that).
        let has_length = self.headers.iter().any(|(name, _)| name.eq_ignore_ascii_case("content-length"));
        if !has_length && (!self.body.is_empty() || matches!(self.method.to_ascii_uppercase().as_str(), "POST" | "PUT" | "PATCH")) {
            let length = self.body.len().to_string();
            headers.append("content-length", length.as_bytes()).map_err(|e| invalid(header_refused("content-length", e)))?;
        }
        let request = OutgoingRequest::new(headers);
        let method = wasi_method(&self.method);
        request.set_method(&method).map_err(|()| invalid(format!("the method {} is refused", self.method)))?;
        request.set_scheme(Some(&url.scheme)).map_err(|()| invalid("the scheme is refused".into()))?;
        request.set_authority(Some(&url.authority)).map_err(|()| invalid("the host and port are refused".into()))?;
        request.set_path_with_query(Some(&url.path_with_query)).map_err(|()| invalid("the path is refused".into()))?;
        let options = match self.timeout {
            Some(timeout) => Some(request_options(timeout).map_err(invalid)?),
            None => None,
        };
        let body = request.body().map_err(|()| invalid("the body was taken twice".into()))?;

        let pending = outgoing_handler::handle(request, options).map_err(|code| HttpError::from_code(&code, &context))?;
        // A body not sent whole is not itself the error: a host that refuses
        // the request closes the body, and the reason arrives as the
        // response's error code; a partner that answers before reading the
        // whole body has answered.
        let _ = write_body(body, &self.body);
        let incoming = loop {
            match pending.get() {
                Some(Ok(Ok(incoming))) => break incoming,
                Some(Ok(Err(code))) => return Err(HttpError::from_code(&code, &context)),
                Some(Err(())) => return Err(HttpError::new(format!("the response was taken twice ({context})"))),
                None => pending.subscribe().block(),
            }
        };
        read_response(incoming).map_err(|message| HttpError::with_context(message, &context))
    }
}

/// The parts of an absolute `http://` or `https://` URL that `wasi:http`
/// takes.
struct Url {
    scheme: Scheme,
    authority: String,
    path_with_query: String,
}

impl Url {
    fn parse(url: &str) -> Result<Url, String> {
        let (scheme, rest) = url.split_once("://").ok_or_else(|| format!("'{url}' is not an absolute URL"))?;
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "http" => Scheme::Http,
            "https" => Scheme::Https,
            other => return Err(format!("the scheme '{other}' is not http or https")),
        };
        let rest = rest.split('#').next().unwrap_or_default();
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(end);
        if authority.is_empty() {
            return Err(format!("'{url}' names no host"));
        }
        if authority.contains('@') {
            return Err("credentials in the URL are not supported; send an Authorization header".into());
        }
        let path_with_query = match path.chars().next() {
            None => "/".to_string(),
            Some('?') => format!("/{path}"),
            Some(_) => path.to_string(),
        };
        Ok(Url { scheme, authority: authority.to_string(), path_with_query })
    }
}

fn wasi_method(method: &str) -> Method {
    match method.to_ascii_uppercase().as_str() {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        "POST" => Method::Post,
        "PUT" => Method::Put,
        "DELETE" => Method::Delete,
        "CONNECT" => Method::Connect,
        "OPTIONS" => Method::Options,
        "TRACE" => Method::Trace,
        "PATCH" => Method::Patch,
        _ => Method::Other(method.to_string()),
    }
}

fn header_refused(name: &str, e: HeaderError) -> String {
    match e {
        HeaderError::Forbidden => format!("the header '{name}' is not allowed (the host sets it, or it is hop-by-hop)"),
        HeaderError::InvalidSyntax => format!("the header '{name}' is not a valid header"),
        HeaderError::Immutable => format!("the header '{name}' cannot be set"),
    }
}

/// The same timeout to connect, for the first byte and between bytes.
fn request_options(timeout: Duration) -> Result<RequestOptions, String> {
    let nanos = Some(timeout.as_nanos().min(u64::MAX as u128) as u64);
    let options = RequestOptions::new();
    let refused = |what: &str| format!("the host does not take a {what} timeout");
    options.set_connect_timeout(nanos).map_err(|()| refused("connect"))?;
    options.set_first_byte_timeout(nanos).map_err(|()| refused("first-byte"))?;
    options.set_between_bytes_timeout(nanos).map_err(|()| refused("between-bytes"))?;
    Ok(options)
}

/// Writes the whole request body and finishes it.
fn write_body(body: OutgoingBody, bytes: &[u8]) -> Result<(), String> {
    {
        let stream = body.write().map_err(|()| "the request body cannot be written".to_string())?;
        // blocking-write-and-flush takes at most 4096 bytes at a time.
        for chunk in bytes.chunks(4096) {
            stream.blocking_write_and_flush(chunk).map_err(|e| stream_error(e, "writing the request body"))?;
        }
    }
    OutgoingBody::finish(body, None).map_err(|code| describe(&code))
}

/// Reads status, headers and the whole body.
fn read_response(incoming: IncomingResponse) -> Result<Response, String> {
    let status = incoming.status();
    let headers = incoming
        .headers()
        .entries()
        .into_iter()
        .map(|(name, value)| (name.to_ascii_lowercase(), String::from_utf8_lossy(&value).into_owned()))
        .collect();
    let mut body = Vec::new();
    {
        let incoming_body = incoming.consume().map_err(|()| "the response body was taken twice".to_string())?;
        {
            let stream = incoming_body.stream().map_err(|()| "the response body cannot be read".to_string())?;
            loop {
                match stream.blocking_read(64 * 1024) {
                    Ok(chunk) => body.extend_from_slice(&chunk),
                    Err(StreamError::Closed) => break,
                    Err(e) => return Err(stream_error(e, "reading the response body")),
                }
            }
        }
        drop(incoming_body);
    }
    Ok(Response { status, headers, body })
}

/// A failed stream operation: the `wasi:http` error code behind it if there
/// is one (the host's message for a limit), else the stream's own account.
fn stream_error(e: StreamError, doing: &str) -> String {
    match e {
        StreamError::Closed => format!("{doing}: the stream closed"),
        StreamError::LastOperationFailed(error) => match wasip2::http::types::http_error_code(&error) {
            Some(code) => describe(&code),
            None => format!("{doing}: {}", error.to_debug_string()),
        },
    }
}

/// A response, read whole: status, headers (names in lower case, in the
/// order received) and body.
///
/// ```
/// let r = cairn_activity::http::Response { status: 200, headers: vec![], body: b"{\"ok\":true}".to_vec() };
/// assert!(r.is_success());
/// assert_eq!(r.json::<serde_json::Value>()?["ok"], true);
/// # Ok::<(), cairn_activity::http::HttpError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// Whether the status is 2xx.
    ///
    /// ```
    /// let r = cairn_activity::http::Response { status: 503, headers: vec![], body: vec![] };
    /// assert!(!r.is_success());
    /// ```
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The first value of header `name` (any case).
    ///
    /// ```
    /// let r = cairn_activity::http::Response {
    ///     status: 302,
    ///     headers: vec![("location".into(), "http://x/next".into())],
    ///     body: vec![],
    /// };
    /// assert_eq!(r.header("Location"), Some("http://x/next"));
    /// ```
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The body as text (bytes that are not UTF-8 become `U+FFFD`).
    ///
    /// ```
    /// let r = cairn_activity::http::Response { status: 200, headers: vec![], body: b"done".to_vec() };
    /// assert_eq!(r.text(), "done");
    /// ```
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as JSON into `T`.
    ///
    /// ```
    /// #[derive(serde::Deserialize)]
    /// struct Ack { received: u64 }
    /// let r = cairn_activity::http::Response { status: 200, headers: vec![], body: br#"{"received":3}"#.to_vec() };
    /// assert_eq!(r.json::<Ack>()?.received, 3);
    /// # Ok::<(), cairn_activity::http::HttpError>(())
    /// ```
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, HttpError> {
        serde_json::from_slice(&self.body)
            .map_err(|e| HttpError::new(format!("the response body (status {}) is not the expected JSON: {e}", self.status)))
    }
}

/// Why a request got no response: refused by the host (its message is kept
/// as it is, e.g. `cairn.capability-denied: …`), a transport failure, a
/// timeout, or a request or response that could not be encoded or decoded.
///
/// Its `Display` is the message. Converted into a [`Fault`] (by `?` in an
/// operation), it becomes the fault `http-failed` with that message.
///
/// ```
/// let f: cairn_activity::Fault = cairn_activity::http::HttpError::new("connection refused").into();
/// assert_eq!(f.name, "http-failed");
/// assert_eq!(f.message, "connection refused");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpError {
    message: String,
}

impl HttpError {
    /// An error with this message.
    ///
    /// ```
    /// let e = cairn_activity::http::HttpError::new("no partner configured");
    /// assert_eq!(e.to_string(), "no partner configured");
    /// ```
    pub fn new(message: impl Into<String>) -> HttpError {
        HttpError { message: message.into() }
    }

    /// The message, as the host gave it where the host refused.
    ///
    /// ```
    /// let e = cairn_activity::http::HttpError::new("cairn.capability-denied: http://x/ is not granted");
    /// assert!(e.message().starts_with("cairn.capability-denied"));
    /// ```
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether the host's grants refused the request.
    ///
    /// ```
    /// let e = cairn_activity::http::HttpError::new("cairn.capability-denied: http://x/ is not granted");
    /// assert!(e.is_denied());
    /// ```
    pub fn is_denied(&self) -> bool {
        self.message.starts_with(DENIED_PREFIX)
    }

    /// An error from a `wasi:http` error code about the request `context`
    /// (method and URL).
    fn from_code(code: &ErrorCode, context: &str) -> HttpError {
        HttpError::with_context(describe(code), context)
    }

    /// The message with `context` (method and URL) added, unless the host
    /// wrote the message (it starts `cairn.`): that one is kept as it is.
    fn with_context(message: String, context: &str) -> HttpError {
        if message.starts_with("cairn.") {
            HttpError::new(message)
        } else {
            HttpError::new(format!("{message} ({context})"))
        }
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for HttpError {}

impl From<HttpError> for Fault {
    fn from(e: HttpError) -> Fault {
        Fault::new("http-failed", e.message)
    }
}

/// A `wasi:http` error code in words; `internal-error` carries the host's
/// own message, which is kept as it is.
fn describe(code: &ErrorCode) -> String {
    match code {
        ErrorCode::InternalError(Some(message)) => message.clone(),
        ErrorCode::InternalError(None) => "internal error of the host's HTTP client".into(),
        ErrorCode::HttpRequestDenied => format!("{DENIED_PREFIX}: the host denied the request"),
        ErrorCode::DnsTimeout => "DNS lookup timed out".into(),
        ErrorCode::DnsError(p) => {
            format!("DNS error: {} {}", p.rcode.as_deref().unwrap_or(""), p.info_code.map(|c| c.to_string()).unwrap_or_default())
                .trim_end()
                .to_string()
        }
        ErrorCode::DestinationNotFound => "destination not found".into(),
        ErrorCode::DestinationUnavailable => "destination unavailable".into(),
        ErrorCode::DestinationIpProhibited => "destination IP address prohibited".into(),
        ErrorCode::DestinationIpUnroutable => "destination IP address unroutable".into(),
        ErrorCode::ConnectionRefused => "connection refused".into(),
        ErrorCode::ConnectionTerminated => "connection terminated".into(),
        ErrorCode::ConnectionTimeout => "connection timed out".into(),
        ErrorCode::ConnectionReadTimeout => "timed out reading the response".into(),
        ErrorCode::ConnectionWriteTimeout => "timed out writing the request".into(),
        ErrorCode::ConnectionLimitReached => "connection limit reached".into(),
        ErrorCode::HttpResponseTimeout => "no response in time".into(),
        ErrorCode::HttpRequestUriInvalid => "invalid request URI".into(),
        ErrorCode::HttpResponseIncomplete => "incomplete response".into(),
        ErrorCode::HttpRequestBodySize(Some(n)) => format!("request body too large ({n} bytes)"),
        ErrorCode::HttpResponseBodySize(Some(n)) => format!("response body too large ({n} bytes)"),
        ErrorCode::HttpResponseBodySize(None) => "response body too large".into(),
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_internal_error_keeps_the_hosts_message() {
        let code = ErrorCode::InternalError(Some("cairn.capability-denied: http://x/ is not granted".into()));
        assert_eq!(describe(&code), "cairn.capability-denied: http://x/ is not granted");
    }

    #[test]
    fn a_url_splits_into_what_wasi_http_takes() {
        let u = Url::parse("http://127.0.0.1:7702/notify?x=1#frag").unwrap();
        assert_eq!((u.authority.as_str(), u.path_with_query.as_str()), ("127.0.0.1:7702", "/notify?x=1"));
        assert_eq!(Url::parse("https://example.com").unwrap().path_with_query, "/");
        assert_eq!(Url::parse("http://h?q=1").unwrap().path_with_query, "/?q=1");
        assert!(Url::parse("ftp://h/").is_err());
        assert!(Url::parse("/relative").is_err());
        assert!(Url::parse("http://user:pw@h/").is_err());
    }
}
