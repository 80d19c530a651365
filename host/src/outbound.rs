//! Outbound HTTP for activity components: the policy that decides which URLs
//! an activity call may reach, and the `wasi:http` hooks that enforce it.
//!
//! Owns: `HttpPolicy` (host-wide, from `cairn serve` flags), `OutboundCall`
//! (what one activity call may do), `UrlPrefix` (a granted URL prefix), and
//! `Hooks`, the per-store `WasiHttpHooks` through which every request an
//! activity makes with `wasi:http/outgoing-handler` passes (`runtime.rs`
//! links that interface for activity components only: process handlers
//! decide, activities act).
//!
//! Rules, each enforced in `Hooks::send_request` before anything leaves:
//! - A URL is reached only if both the host's ceiling (`--allow-http` of
//!   `cairn serve`) and the deployment's grant have a prefix matching it
//!   (`UrlPrefix::matches`: scheme and host equal, port equal with the
//!   scheme's default when absent, path a prefix on a segment boundary; a
//!   path under a non-root prefix with dot segments or encoded slashes never
//!   matches). Otherwise the guest's request fails with
//!   `error-code.internal-error("cairn.capability-denied: …")` and the call
//!   remembers it.
//! - Loopback and private addresses (127/8, ::1, 10/8, 172.16/12,
//!   192.168/16, 169.254/16, fc00::/7, fe80::/10, 0.0.0.0/8, ::, and their
//!   IPv4-mapped forms) are reached only when the URL names them literally:
//!   the IP literal itself, or `localhost` resolving to loopback only. The
//!   host name is resolved before sending and the request denied if any
//!   address is such and the name is not literal. Known limit: the
//!   connection resolves the name again, so a DNS answer that changes
//!   between the check and the connect (rebinding) is not caught.
//! - The host sets `Idempotency-Key: <the call's key>` on every request,
//!   replacing any other; `idempotency-key` is a forbidden header for the
//!   guest, so it can neither set nor read one (response headers of that
//!   name are dropped too).
//! - Limits (`HttpLimits`): connect timeout; a total time per request that
//!   never goes past the activity call's deadline (the guest's own
//!   request-options can only shorten them); at most `max_requests` per
//!   activity call, refused ones included (then `cairn.http-limit`); a
//!   response body over
//!   `max_response_bytes` makes the body stream fail (`cairn.http-limit`).
//! - Redirects are not followed (wasi:http does not follow them); a guest
//!   that follows one makes a new request, checked like any other.
//! - A 5xx is a response like any other, for the guest to judge.
//!
//! Faults: the guest sees every refusal as an `error-code` and may handle
//! it. If the activity call then ends in an error anyway (the guest returns
//! a fault or traps; not when it ran out of memory), the call's fault is the
//! host's account of what happened instead of the guest's, in this order:
//! `cairn.capability-denied`, `cairn.http-limit`, then the last transport
//! error if no later request got a response: `cairn.http-timeout` (connect,
//! response or total time ran out) or `cairn.http-unreachable` (DNS,
//! refused, reset, TLS or protocol error). The guest's own fault is kept in
//! the fault's data as `{"guest": {name, message, data}}`.
//!
//! Isolated environment (`HttpPolicy::isolated`, a restored backup): no
//! request reaches its host. The hooks read the whole request body (at most
//! `max_response_bytes`), record one JSON object through `HttpPolicy::record`
//! (`{"effect": "http", method, url, headers, body, idempotency_key,
//! instance, at, stand_in}`; a non-UTF-8 body is given as `body_base64`, and
//! the values of `authorization`, `proxy-authorization` and `cookie` are
//! recorded as `(redacted)`), then: if a stand-in prefix (`--stand-in
//! PREFIX=URL`) matches, the request goes to the stand-in URL instead (the
//! path after the prefix appended, the query kept, with the same method,
//! headers, body and Idempotency-Key) and its response is returned;
//! otherwise the guest gets a synthetic `200` with header
//! `cairn-isolated: true`, `content-type: application/json` and body
//! `{"cairn":"isolated","note":"an isolated environment answered this request; nothing was sent"}`.
//! The ceiling, the grant and the request limit apply there as in the
//! primary, so an activity behaves the same in both.

use anyhow::{anyhow, bail, Result};
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Uri};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use std::fmt;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::pin::Pin;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use wasmtime_wasi_http::{Error, ForbiddenHeaderFilter, RequestOptions, WasiBody, WasiHttpHooks, DEFAULT_FORBIDDEN_HEADERS};

/// The header the host sets on every outbound request.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// What the isolated environment answers when no stand-in matches.
pub const ISOLATED_BODY: &str =
    r#"{"cairn":"isolated","note":"an isolated environment answered this request; nothing was sent"}"#;

/// Host-wide outbound HTTP policy (from `cairn serve` flags).
#[derive(Clone)]
pub struct HttpPolicy {
    /// `--allow-http PREFIX` (repeatable): the most any deployment may be
    /// granted. Empty: nothing is allowed.
    pub ceiling: Vec<UrlPrefix>,
    /// `--stand-in PREFIX=URL`: in an isolated environment, requests under
    /// PREFIX go to URL instead (the path after the prefix appended).
    pub stand_ins: Vec<(UrlPrefix, String)>,
    pub limits: HttpLimits,
    /// A restored backup: nothing reaches its host (see the module doc).
    pub isolated: bool,
    /// Where an isolated environment records each intercepted request (one
    /// JSON object); the host passes a closure that writes
    /// isolated-effects.jsonl and prints.
    pub record: Arc<dyn Fn(serde_json::Value) + Send + Sync>,
}

impl Default for HttpPolicy {
    /// Nothing allowed, default limits, not isolated, records dropped.
    fn default() -> HttpPolicy {
        HttpPolicy {
            ceiling: Vec::new(),
            stand_ins: Vec::new(),
            limits: HttpLimits::default(),
            isolated: false,
            record: Arc::new(|_| {}),
        }
    }
}

impl fmt::Debug for HttpPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpPolicy")
            .field("ceiling", &self.ceiling)
            .field("stand_ins", &self.stand_ins)
            .field("limits", &self.limits)
            .field("isolated", &self.isolated)
            .finish_non_exhaustive()
    }
}

/// Bounds on the outbound HTTP of one activity call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpLimits {
    /// Time to establish a connection (TCP and TLS). Default 5 s.
    pub connect_timeout: Duration,
    /// Time for one request, from sending to the end of its response body;
    /// never beyond the activity call's deadline. Default 30 s.
    pub total: Duration,
    /// Largest response body (and, isolated, request body). Default 8 MiB.
    pub max_response_bytes: u64,
    /// Requests one activity call may make. Default 16.
    pub max_requests: u32,
}

impl Default for HttpLimits {
    fn default() -> HttpLimits {
        HttpLimits {
            connect_timeout: Duration::from_secs(5),
            total: Duration::from_secs(30),
            max_response_bytes: 8 << 20,
            max_requests: 16,
        }
    }
}

/// What one activity call may do (built by the service per call).
#[derive(Clone, Debug)]
pub struct OutboundCall {
    pub policy: Arc<HttpPolicy>,
    /// The deployment's `--allow-http` prefixes.
    pub grant: Vec<UrlPrefix>,
    /// Sent as `Idempotency-Key` on every request of the call.
    pub idempotency_key: String,
    /// For the isolated record.
    pub instance: String,
    /// For the isolated record: the activity path or call.
    pub at: String,
}

/// A URL prefix such as `https://api.example.com:8443/v1`: a scheme (http
/// or https), a host (a name, lowercased, or an IP literal), an optional
/// port, and a path that matches on segment boundaries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UrlPrefix {
    scheme: String,
    /// Lowercase; an IPv6 literal without its brackets.
    host: String,
    port: Option<u16>,
    /// No trailing slash: `/v1/` is kept as `/v1`, `/` as the empty string.
    path: String,
}

impl UrlPrefix {
    /// Parses `scheme://host[:port][/path]`. Refuses other schemes, user
    /// information, queries, fragments, wildcards and dot segments.
    pub fn parse(s: &str) -> Result<UrlPrefix> {
        let s = s.trim();
        let what = || format!("'{s}' is not a URL prefix");
        if !s.contains("://") {
            bail!("{}: it names no scheme; write it as https://host[:port][/path]", what());
        }
        if s.contains('#') {
            bail!("{}: a prefix has no fragment (#…)", what());
        }
        let uri: Uri = s.parse().map_err(|e| anyhow!("{}: {e}; write it as https://host[:port][/path]", what()))?;
        let scheme = match uri.scheme_str() {
            Some(sc) if sc.eq_ignore_ascii_case("http") || sc.eq_ignore_ascii_case("https") => sc.to_ascii_lowercase(),
            Some(sc) => bail!("{}: the scheme must be http or https, not '{sc}'", what()),
            None => bail!("{}: it names no scheme; write it as https://host[:port][/path]", what()),
        };
        let Some(authority) = uri.authority() else {
            bail!("{}: it names no host", what());
        };
        if authority.as_str().contains('@') {
            bail!("{}: a prefix carries no user information (user@)", what());
        }
        let host = normalize_host(authority.host());
        if host.is_empty() {
            bail!("{}: it names no host", what());
        }
        if host.contains('*') {
            bail!("{}: host wildcards are not supported; list each host", what());
        }
        if uri.query().is_some() {
            bail!("{}: a prefix has no query (?…)", what());
        }
        let path = uri.path().trim_end_matches('/').to_string();
        if has_unsafe_segments(&path) {
            bail!("{}: its path has dot segments or encoded slashes", what());
        }
        Ok(UrlPrefix { scheme, host, port: authority.port_u16(), path })
    }

    /// Whether a request URL falls under this prefix.
    pub fn matches(&self, uri: &Uri) -> bool {
        let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
            return false;
        };
        if !scheme.eq_ignore_ascii_case(&self.scheme) || authority.as_str().contains('@') {
            return false;
        }
        if !same_host(&self.host, &normalize_host(authority.host())) {
            return false;
        }
        if authority.port_u16().or(default_port(scheme)) != self.port() {
            return false;
        }
        if self.path.is_empty() {
            return true;
        }
        let path = uri.path();
        let under = path == self.path || path.strip_prefix(self.path.as_str()).is_some_and(|rest| rest.starts_with('/'));
        under && !has_unsafe_segments(path)
    }

    /// The host: a lowercase name, or an IP literal without brackets.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port, the scheme's default when the prefix names none.
    pub fn port(&self) -> Option<u16> {
        self.port.or(default_port(&self.scheme))
    }

    /// The part of a matching request's path and query after this prefix.
    fn rest_of(&self, uri: &Uri) -> String {
        let rest = uri.path().strip_prefix(self.path.as_str()).unwrap_or("");
        match uri.query() {
            Some(q) => format!("{rest}?{q}"),
            None => rest.to_string(),
        }
    }
}

impl FromStr for UrlPrefix {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<UrlPrefix> {
        UrlPrefix::parse(s)
    }
}

impl fmt::Display for UrlPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://", self.scheme)?;
        if self.host.contains(':') {
            write!(f, "[{}]", self.host)?;
        } else {
            write!(f, "{}", self.host)?;
        }
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        write!(f, "{}", if self.path.is_empty() { "/" } else { &self.path })
    }
}

/// Parses `--stand-in PREFIX=URL`; the URL must be an http(s) URL with a host.
pub fn parse_stand_in(s: &str) -> Result<(UrlPrefix, String)> {
    let Some((prefix, url)) = s.split_once('=') else {
        bail!("'{s}' is not a stand-in: write PREFIX=URL, e.g. https://api.example.com/v1=http://127.0.0.1:9000");
    };
    let prefix = UrlPrefix::parse(prefix).map_err(|e| anyhow!("stand-in '{s}': {e:#}"))?;
    let target: Uri = url.trim().parse().map_err(|e| anyhow!("stand-in '{s}': '{url}' is not a URL: {e}"))?;
    if !matches!(target.scheme_str(), Some("http" | "https")) || target.host().is_none() {
        bail!("stand-in '{s}': '{url}' must be an http or https URL with a host");
    }
    Ok((prefix, url.trim().to_string()))
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme.to_ascii_lowercase().as_str() {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    }
}

/// Lowercase, IPv6 brackets removed.
fn normalize_host(host: &str) -> String {
    host.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase()
}

/// Equal names, or equal addresses when both are IP literals.
fn same_host(a: &str, b: &str) -> bool {
    match (a.parse::<IpAddr>(), b.parse::<IpAddr>()) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

/// Dot segments (`.`, `..`, also percent-encoded) or encoded slashes and
/// backslashes, which a server may resolve out from under a prefix.
fn has_unsafe_segments(path: &str) -> bool {
    let lower = path.to_ascii_lowercase();
    if lower.contains("%2f") || lower.contains("%5c") || lower.contains('\\') {
        return true;
    }
    lower.split('/').any(|seg| {
        let seg = seg.replace("%2e", ".");
        seg == "." || seg == ".."
    })
}

/// Loopback, private, link-local, unique-local or unspecified: addresses
/// reachable only when named literally.
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_private_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_private_v4(v4);
            }
            let seg0 = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || (seg0 & 0xfe00) == 0xfc00 // fc00::/7 unique local
                || (seg0 & 0xffc0) == 0xfe80 // fe80::/10 link local
        }
    }
}

fn is_private_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    a == 127 || a == 10 || a == 0 || (a == 172 && (16..32).contains(&b)) || (a == 192 && b == 168) || (a == 169 && b == 254)
}

/// Loopback, also as an IPv4-mapped IPv6 address.
pub fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
    }
}

/// What happened to the outbound HTTP of one activity call, shared between
/// the hooks (and the tasks they spawn) and the runtime that turns it into a
/// fault.
#[derive(Default, Debug)]
struct Outcome {
    /// Requests handed to `send_request`, allowed or not.
    requests: u32,
    /// The first capability denial; sticky.
    denied: Option<String>,
    /// The first limit exceeded; sticky.
    limit: Option<String>,
    /// The last transport error (fault name, message), cleared when a later
    /// request gets a response.
    transport: Option<(&'static str, String)>,
}

const DENIED: &str = "cairn.capability-denied";
const LIMIT: &str = "cairn.http-limit";
const TIMEOUT: &str = "cairn.http-timeout";
const UNREACHABLE: &str = "cairn.http-unreachable";

type Shared = Arc<Mutex<Outcome>>;

fn with<R>(outcome: &Shared, f: impl FnOnce(&mut Outcome) -> R) -> R {
    f(&mut outcome.lock().unwrap_or_else(|p| p.into_inner()))
}

fn deny(outcome: &Shared, message: String) -> Error {
    let err = Error::InternalError(Some(format!("{DENIED}: {message}")));
    with(outcome, |o| {
        o.denied.get_or_insert(message);
    });
    err
}

fn over_limit(outcome: &Shared, message: String) -> Error {
    let err = Error::InternalError(Some(format!("{LIMIT}: {message}")));
    note_limit(outcome, message);
    err
}

fn note_limit(outcome: &Shared, message: String) {
    with(outcome, |o| {
        o.limit.get_or_insert(message);
    });
}

fn transport(outcome: &Shared, url: &str, err: Error) -> Error {
    let (name, message) = match &err {
        Error::ConnectionTimeout => (TIMEOUT, format!("{url}: could not connect in time ({err})")),
        Error::ConnectionReadTimeout
        | Error::ConnectionWriteTimeout
        | Error::HttpResponseTimeout
        | Error::DnsTimeout => (TIMEOUT, format!("{url}: no answer in time ({err})")),
        _ => (UNREACHABLE, format!("{url}: {err}")),
    };
    with(outcome, |o| o.transport = Some((name, message)));
    err
}

type IoFuture = Box<dyn Future<Output = Result<(), Error>> + Send>;
type SendResult = wasmtime_wasi_http::Result<(http::Response<WasiBody>, IoFuture)>;
type SendFuture = Box<dyn Future<Output = SendResult> + Send>;

/// The `wasi:http` hooks of one store: the policy of its activity call (or
/// none: every request denied) and what happened so far.
pub struct Hooks {
    call: Option<Arc<OutboundCall>>,
    /// The activity call's deadline: no request runs past it.
    deadline: Instant,
    outcome: Shared,
}

impl Hooks {
    /// Hooks for a call with this policy (`None`: no outbound at all),
    /// whose deadline is `deadline`.
    pub fn new(call: Option<OutboundCall>, deadline: Instant) -> Hooks {
        Hooks { call: call.map(Arc::new), deadline, outcome: Shared::default() }
    }

    /// The fault an activity call that failed with `guest` ends with: the
    /// host's account if an outbound request was refused or failed, else
    /// the guest's own.
    pub fn fault_instead(&self, guest: cairn_engine::Fault) -> cairn_engine::Fault {
        let chosen = with(&self.outcome, |o| {
            if let Some(m) = &o.denied {
                Some((DENIED, m.clone()))
            } else if let Some(m) = &o.limit {
                Some((LIMIT, m.clone()))
            } else {
                o.transport.as_ref().map(|(n, m)| (*n, m.clone()))
            }
        });
        let Some((name, message)) = chosen else { return guest };
        let data = serde_json::from_str::<serde_json::Value>(&guest.data).unwrap_or(serde_json::Value::String(guest.data));
        let data = serde_json::json!({ "guest": { "name": guest.name, "message": guest.message, "data": data } });
        cairn_engine::Fault { name: name.to_string(), message, data: data.to_string() }
    }

    fn refuse(err: Error) -> SendFuture {
        Box::new(async move { Err(err) })
    }
}

fn list(prefixes: &[UrlPrefix]) -> String {
    if prefixes.is_empty() {
        "nothing".to_string()
    } else {
        prefixes.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(", ")
    }
}

fn forbidden(name: &HeaderName) -> bool {
    name.as_str() == IDEMPOTENCY_KEY || DEFAULT_FORBIDDEN_HEADERS.contains(name)
}

fn min_opt(guest: Option<Duration>, host: Duration) -> Option<Duration> {
    Some(guest.map_or(host, |g| g.min(host)))
}

impl WasiHttpHooks for Hooks {
    fn is_forbidden_header(&mut self, name: &HeaderName) -> bool {
        forbidden(name)
    }

    fn forbidden_header_filter(&mut self) -> ForbiddenHeaderFilter {
        Arc::new(forbidden)
    }

    fn send_request(
        &mut self,
        mut request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: IoFuture,
    ) -> SendFuture {
        let url = request.uri().to_string();
        let requests = with(&self.outcome, |o| {
            o.requests += 1;
            o.requests
        });
        let Some(call) = self.call.clone() else {
            return Hooks::refuse(deny(
                &self.outcome,
                format!("{url} is not granted; this activity call may reach nothing (no outbound HTTP is configured for it)"),
            ));
        };
        let policy = &call.policy;
        let limits = policy.limits.clone();
        if requests > limits.max_requests {
            let n = limits.max_requests;
            return Hooks::refuse(over_limit(&self.outcome, format!("more than {n} requests in one activity call")));
        }
        let uri = request.uri().clone();
        let in_ceiling = policy.ceiling.iter().any(|p| p.matches(&uri));
        let in_grant = call.grant.iter().any(|p| p.matches(&uri));
        if !(in_ceiling && in_grant) {
            return Hooks::refuse(deny(
                &self.outcome,
                format!(
                    "{url} is not granted; this activity may reach: {}; the host allows: {}",
                    list(&call.grant),
                    list(&policy.ceiling)
                ),
            ));
        }
        let key = match HeaderValue::from_str(&call.idempotency_key) {
            Ok(v) => v,
            Err(_) => {
                let msg = format!("the idempotency key '{}' cannot be an HTTP header value", call.idempotency_key);
                return Hooks::refuse(Error::InternalError(Some(msg)));
            }
        };
        request.headers_mut().remove(IDEMPOTENCY_KEY);
        request.headers_mut().insert(HeaderName::from_static(IDEMPOTENCY_KEY), key);

        let now = Instant::now();
        let remaining = self.deadline.saturating_duration_since(now);
        let total = limits.total.min(remaining);
        let deadline = tokio::time::Instant::from_std(now + total);
        let guest = options.unwrap_or_default();
        let options = RequestOptions {
            connect_timeout: min_opt(guest.connect_timeout, limits.connect_timeout.min(total)),
            first_byte_timeout: min_opt(guest.first_byte_timeout, total),
            between_bytes_timeout: min_opt(guest.between_bytes_timeout, total),
        };
        let send = Outgoing { outcome: self.outcome.clone(), url, deadline, options, max_bytes: limits.max_response_bytes };
        if policy.isolated {
            Box::new(send.isolated(request, call))
        } else {
            Box::new(send.checked_send(request))
        }
    }
}

/// One allowed request on its way.
struct Outgoing {
    outcome: Shared,
    /// As the guest asked for it.
    url: String,
    deadline: tokio::time::Instant,
    options: RequestOptions,
    max_bytes: u64,
}

impl Outgoing {
    /// Checks the resolved addresses, then sends.
    async fn checked_send(self, request: http::Request<WasiBody>) -> SendResult {
        let uri = request.uri().clone();
        let host = normalize_host(uri.host().unwrap_or(""));
        if host.parse::<IpAddr>().is_err() {
            let port = uri.port_u16().or(default_port(uri.scheme_str().unwrap_or(""))).unwrap_or(443);
            let addrs: Vec<IpAddr> = match tokio::time::timeout_at(self.deadline, tokio::net::lookup_host((host.as_str(), port))).await {
                Err(_) => return Err(transport(&self.outcome, &self.url, Error::DnsTimeout)),
                Ok(Err(e)) => {
                    let err = Error::DnsError { rcode: Some(format!("cannot resolve '{host}': {e}")), info_code: None };
                    return Err(transport(&self.outcome, &self.url, err));
                }
                Ok(Ok(addrs)) => addrs.map(|a| a.ip()).collect(),
            };
            let private: Vec<String> = addrs.iter().filter(|ip| is_private(**ip)).map(|ip| ip.to_string()).collect();
            let localhost = host == "localhost" && addrs.iter().all(|ip| is_loopback(*ip));
            if !private.is_empty() && !localhost {
                return Err(deny(
                    &self.outcome,
                    format!(
                        "{} resolves to a loopback or private address ({}); only a prefix naming that address literally (or localhost) may reach it",
                        self.url,
                        private.join(", ")
                    ),
                ));
            }
        }
        self.send(request).await
    }

    /// Sends within the deadline; wraps the response body in the limits.
    async fn send(self, request: http::Request<WasiBody>) -> SendResult {
        let sent = tokio::time::timeout_at(self.deadline, wasmtime_wasi_http::default_send_request(request, Some(self.options)));
        match sent.await {
            Err(_) => Err(transport(&self.outcome, &self.url, Error::HttpResponseTimeout)),
            Ok(Err(e)) => Err(transport(&self.outcome, &self.url, e)),
            Ok(Ok((response, io))) => {
                with(&self.outcome, |o| o.transport = None);
                let (parts, body) = response.into_parts();
                let body = Limited {
                    inner: body.boxed_unsync(),
                    read: 0,
                    max: self.max_bytes,
                    deadline: Box::pin(tokio::time::sleep_until(self.deadline)),
                    outcome: self.outcome,
                    url: self.url,
                    done: false,
                };
                Ok((http::Response::from_parts(parts, body.boxed_unsync()), Box::new(io) as IoFuture))
            }
        }
    }

    /// Records the request; answers from a stand-in or synthetically.
    async fn isolated(self, request: http::Request<WasiBody>, call: Arc<OutboundCall>) -> SendResult {
        let (mut parts, body) = request.into_parts();
        let body = match tokio::time::timeout_at(self.deadline, read_body(body, self.max_bytes)).await {
            Err(_) => return Err(transport(&self.outcome, &self.url, Error::ConnectionReadTimeout)),
            Ok(Err(ReadError::TooLarge)) => {
                return Err(over_limit(&self.outcome, format!("request body over {} bytes", self.max_bytes)));
            }
            Ok(Err(ReadError::Body(e))) => return Err(e),
            Ok(Ok(b)) => b,
        };
        let stand_in = call.policy.stand_ins.iter().find(|(p, _)| p.matches(&parts.uri));
        let target = stand_in.map(|(p, url)| format!("{}{}", url.trim_end_matches('/'), p.rest_of(&parts.uri)));
        let mut record = serde_json::json!({
            "effect": "http",
            "method": parts.method.as_str(),
            "url": self.url,
            "headers": headers_json(&parts.headers),
            "idempotency_key": call.idempotency_key,
            "instance": call.instance,
            "at": call.at,
            "stand_in": target,
        });
        match std::str::from_utf8(&body) {
            Ok(text) => record["body"] = serde_json::Value::String(text.to_string()),
            Err(_) => record["body_base64"] = serde_json::Value::String(base64(&body)),
        }
        (call.policy.record)(record);
        let Some(target) = target else {
            let response = http::Response::builder()
                .status(200)
                .header("cairn-isolated", "true")
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(full(Bytes::from_static(ISOLATED_BODY.as_bytes())))
                .map_err(|e| Error::InternalError(Some(format!("building the isolated answer: {e}"))))?;
            return Ok((response, Box::new(async { Ok(()) }) as IoFuture));
        };
        let uri: Uri = target
            .parse()
            .map_err(|e| Error::InternalError(Some(format!("the stand-in URL '{target}' for {} is not a URL: {e}", self.url))))?;
        if let Some(authority) = uri.authority() {
            if let Ok(v) = HeaderValue::from_str(authority.as_str()) {
                parts.headers.insert(http::header::HOST, v);
            }
        }
        parts.uri = uri;
        let send = Outgoing { url: format!("{} (stand-in {target})", self.url), ..self };
        send.send(http::Request::from_parts(parts, full(body))).await
    }
}

/// A response body held to the byte limit and the request's deadline; an
/// overrun makes the stream fail and is remembered for the call's fault.
struct Limited {
    inner: WasiBody,
    read: u64,
    max: u64,
    deadline: Pin<Box<tokio::time::Sleep>>,
    outcome: Shared,
    url: String,
    /// An error was returned: nothing more is read.
    done: bool,
}

impl Limited {
    fn fail(&mut self, err: Error) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        self.done = true;
        Poll::Ready(Some(Err(err)))
    }

    fn too_large(&mut self) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        note_limit(&self.outcome, format!("response body over {} bytes (from {})", self.max, self.url));
        self.fail(Error::HttpResponseBodySize(Some(self.read)))
    }
}

impl Body for Limited {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        if this.read == 0 && this.inner.size_hint().lower() > this.max {
            this.read = this.inner.size_hint().lower();
            return this.too_large();
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.read += data.len() as u64;
                    if this.read > this.max {
                        return this.too_large();
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                let err = transport(&this.outcome, &this.url, e);
                this.fail(err)
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                if this.deadline.as_mut().poll(cx).is_ready() {
                    let err = transport(&this.outcome, &this.url, Error::ConnectionReadTimeout);
                    return this.fail(err);
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

enum ReadError {
    TooLarge,
    Body(Error),
}

/// Reads a whole request body, at most `max` bytes.
async fn read_body(mut body: WasiBody, max: u64) -> Result<Bytes, ReadError> {
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(ReadError::Body)?;
        if let Some(data) = frame.data_ref() {
            if (out.len() + data.len()) as u64 > max {
                return Err(ReadError::TooLarge);
            }
            out.extend_from_slice(data);
        }
    }
    Ok(Bytes::from(out))
}

fn full(bytes: Bytes) -> WasiBody {
    http_body_util::Full::new(bytes).map_err(|never| match never {}).boxed_unsync()
}

/// Headers as a JSON object; repeated names joined with ", ", credentials
/// redacted.
fn headers_json(headers: &http::HeaderMap) -> serde_json::Value {
    let mut map = serde_json::Map::new();
    for name in headers.keys() {
        let value = if matches!(name.as_str(), "authorization" | "proxy-authorization" | "cookie") {
            "(redacted)".to_string()
        } else {
            headers.get_all(name).iter().map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()).collect::<Vec<_>>().join(", ")
        };
        map.insert(name.as_str().to_string(), serde_json::Value::String(value));
    }
    serde_json::Value::Object(map)
}

/// Standard base64 with padding.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | (*b as u32) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefix(s: &str) -> UrlPrefix {
        UrlPrefix::parse(s).unwrap_or_else(|e| panic!("{s}: {e:#}"))
    }

    fn check_match(prefix_text: &str, url: &str, expected: bool) {
        let uri: Uri = url.parse().unwrap();
        assert_eq!(prefix(prefix_text).matches(&uri), expected, "{prefix_text} matching {url}");
    }

    fn check_parse_error(text: &str, expected: &str) {
        let err = UrlPrefix::parse(text).expect_err(text).to_string();
        assert!(err.contains(expected), "{text}: '{err}' should say '{expected}'");
    }

    #[test]
    fn prefix_parses_and_displays() {
        let p = prefix("https://API.Example.com:8443/v1/");
        assert_eq!(p.host(), "api.example.com");
        assert_eq!(p.port(), Some(8443));
        assert_eq!(p.to_string(), "https://api.example.com:8443/v1");
        assert_eq!(prefix("http://example.com").to_string(), "http://example.com/");
        assert_eq!(prefix("http://example.com").port(), Some(80));
        assert_eq!(prefix("https://example.com").port(), Some(443));
        assert_eq!(prefix("http://[::1]:9000/x").host(), "::1");
        assert_eq!(prefix("http://[::1]:9000/x").to_string(), "http://[::1]:9000/x");
        assert_eq!("http://127.0.0.1:8080".parse::<UrlPrefix>().unwrap().to_string(), "http://127.0.0.1:8080/");
    }

    #[test]
    fn prefix_parse_errors_say_what_is_wrong() {
        check_parse_error("ftp://example.com", "the scheme must be http or https");
        check_parse_error("example.com/v1", "names no scheme");
        check_parse_error("https://user:pw@example.com", "user information");
        check_parse_error("https://example.com/v1?x=1", "no query");
        check_parse_error("https://example.com/v1#top", "no fragment");
        check_parse_error("https://example.com/v1/../admin", "dot segments");
        check_parse_error("https://*.example.com", "wildcards");
        check_parse_error("not a url", "is not a URL prefix");
    }

    #[test]
    fn prefix_matches_scheme_host_port_and_path_segments() {
        check_match("https://api.example.com/v1", "https://api.example.com/v1", true);
        check_match("https://api.example.com/v1", "https://api.example.com/v1/orders?id=3", true);
        check_match("https://api.example.com/v1/", "https://api.example.com/v1/orders", true);
        check_match("https://api.example.com/v1", "https://API.EXAMPLE.COM/v1/orders", true);
        check_match("https://api.example.com/v1", "https://api.example.com/v10", false);
        check_match("https://api.example.com/v1", "https://api.example.com/", false);
        check_match("https://api.example.com/v1", "http://api.example.com/v1", false);
        check_match("https://api.example.com/v1", "https://api.example.com.evil.net/v1", false);
        check_match("https://api.example.com/v1", "https://other.example.com/v1", false);
        check_match("https://api.example.com", "https://api.example.com/anything/at/all", true);
        check_match("https://api.example.com", "https://api.example.com:443/x", true);
        check_match("https://api.example.com", "https://api.example.com:8443/x", false);
        check_match("https://api.example.com:8443", "https://api.example.com:8443/x", true);
        check_match("https://api.example.com:8443", "https://api.example.com/x", false);
        check_match("http://127.0.0.1:9000", "http://127.0.0.1:9000/x", true);
        check_match("http://[::1]:9000", "http://[0:0::1]:9000/x", true);
        check_match("http://localhost:9000", "http://127.0.0.1:9000/x", false);
    }

    #[test]
    fn prefix_refuses_paths_that_escape_it() {
        check_match("https://api.example.com/v1", "https://api.example.com/v1/../admin", false);
        check_match("https://api.example.com/v1", "https://api.example.com/v1/%2e%2e/admin", false);
        check_match("https://api.example.com/v1", "https://api.example.com/v1/.%2E/admin", false);
        check_match("https://api.example.com/v1", "https://api.example.com/v1%2f..%2fadmin", false);
        check_match("https://api.example.com/v1", "https://user@api.example.com/v1/x", false);
    }

    #[test]
    fn rest_of_a_path_goes_after_the_stand_in() {
        let p = prefix("https://api.example.com/v1");
        assert_eq!(p.rest_of(&"https://api.example.com/v1/orders?id=3".parse().unwrap()), "/orders?id=3");
        assert_eq!(p.rest_of(&"https://api.example.com/v1".parse().unwrap()), "");
        let (sp, url) = parse_stand_in("https://api.example.com/v1=http://127.0.0.1:9000/fake/").unwrap();
        assert_eq!(sp, p);
        assert_eq!(url, "http://127.0.0.1:9000/fake/");
        assert!(parse_stand_in("https://api.example.com").is_err());
        assert!(parse_stand_in("https://api.example.com=ftp://x").is_err());
    }

    #[test]
    fn private_ranges_are_classified() {
        for ip in [
            "127.0.0.1", "127.5.6.7", "10.1.2.3", "172.16.0.1", "172.31.255.255", "192.168.1.1", "169.254.169.254",
            "0.0.0.0", "::1", "::", "fc00::1", "fd12:3456::1", "fe80::1", "::ffff:127.0.0.1", "::ffff:10.0.0.1",
        ] {
            assert!(is_private(ip.parse().unwrap()), "{ip} is private");
        }
        for ip in ["8.8.8.8", "172.15.0.1", "172.32.0.1", "192.169.0.1", "169.255.0.1", "2001:db8::1", "fec0::1", "::ffff:8.8.8.8"] {
            assert!(!is_private(ip.parse().unwrap()), "{ip} is public");
        }
        assert!(is_loopback("::ffff:127.0.0.1".parse().unwrap()));
        assert!(is_loopback("127.0.0.2".parse().unwrap()));
        assert!(!is_loopback("10.0.0.1".parse().unwrap()));
    }

    #[test]
    fn idempotency_key_is_forbidden_to_the_guest() {
        assert!(forbidden(&HeaderName::from_static("idempotency-key")));
        assert!(forbidden(&http::header::HOST));
        assert!(!forbidden(&http::header::AUTHORIZATION));
    }

    #[test]
    fn base64_encodes() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(&[0xff, 0xfe, 0x00, 0x01]), "//4AAQ==");
    }

    fn call(grant: &str, limits: HttpLimits, isolated: bool, record: Arc<dyn Fn(serde_json::Value) + Send + Sync>) -> OutboundCall {
        let policy = HttpPolicy { ceiling: vec![prefix(grant)], stand_ins: Vec::new(), limits, isolated, record };
        OutboundCall {
            policy: Arc::new(policy),
            grant: vec![prefix(grant)],
            idempotency_key: "i-1/main/call/1".into(),
            instance: "i-1".into(),
            at: "main/call".into(),
        }
    }

    fn request(url: &str, headers: &[(&str, &str)], body: &'static str) -> http::Request<WasiBody> {
        let mut b = http::Request::builder().method("POST").uri(url);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(full(Bytes::from_static(body.as_bytes()))).unwrap()
    }

    async fn send(hooks: &mut Hooks, req: http::Request<WasiBody>) -> SendResult {
        Pin::from(hooks.send_request(req, None, Box::new(async { Ok(()) }))).await
    }

    #[tokio::test]
    async fn isolated_records_with_the_hosts_key_and_answers_synthetically() {
        let records = Arc::new(Mutex::new(Vec::new()));
        let sink = records.clone();
        let record: Arc<dyn Fn(serde_json::Value) + Send + Sync> = Arc::new(move |v| sink.lock().unwrap().push(v));
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut hooks = Hooks::new(Some(call("https://api.example.com/v1", HttpLimits::default(), true, record)), deadline);
        let req = request("https://api.example.com/v1/orders", &[("idempotency-key", "forged"), ("authorization", "secret")], "{\"a\":1}");
        let (response, _io) = send(&mut hooks, req).await.expect("an isolated answer");
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["cairn-isolated"], "true");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, ISOLATED_BODY.as_bytes());
        let records = records.lock().unwrap();
        assert_eq!(records.len(), 1);
        let r = &records[0];
        assert_eq!(r["effect"], "http");
        assert_eq!(r["url"], "https://api.example.com/v1/orders");
        assert_eq!(r["headers"]["idempotency-key"], "i-1/main/call/1");
        assert_eq!(r["headers"]["authorization"], "(redacted)");
        assert_eq!(r["idempotency_key"], "i-1/main/call/1");
        assert_eq!(r["body"], "{\"a\":1}");
        assert_eq!((r["instance"].as_str(), r["at"].as_str()), (Some("i-1"), Some("main/call")));
    }

    #[tokio::test]
    async fn requests_past_the_limit_are_refused_with_http_limit() {
        let limits = HttpLimits { max_requests: 1, ..HttpLimits::default() };
        let mut hooks = Hooks::new(Some(call("https://api.example.com", limits, true, Arc::new(|_| {}))), Instant::now() + Duration::from_secs(5));
        assert!(send(&mut hooks, request("https://api.example.com/a", &[], "")).await.is_ok());
        let Err(Error::InternalError(Some(m))) = send(&mut hooks, request("https://api.example.com/b", &[], "")).await else {
            panic!("the second request should be refused");
        };
        assert_eq!(m, "cairn.http-limit: more than 1 requests in one activity call");
        let fault = hooks.fault_instead(cairn_engine::Fault::new("app.failed", "x"));
        assert_eq!(fault.name, "cairn.http-limit");
    }

    #[test]
    fn fault_names_the_denial_over_the_guest() {
        let hooks = Hooks::new(None, Instant::now());
        let guest = cairn_engine::Fault::new("app.failed", "no answer");
        assert_eq!(hooks.fault_instead(guest.clone()), guest);
        let mut hooks = hooks;
        let req = http::Request::builder().uri("https://api.example.com/v1").body(full(Bytes::new())).unwrap();
        drop(hooks.send_request(req, None, Box::new(async { Ok(()) })));
        let fault = hooks.fault_instead(guest);
        assert_eq!(fault.name, "cairn.capability-denied");
        assert!(fault.message.starts_with("https://api.example.com/v1 is not granted"), "{}", fault.message);
        assert!(fault.data.contains("app.failed"), "{}", fault.data);
    }
}
