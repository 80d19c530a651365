//! A typed, blocking client of Cairn's HTTP API, and the API's types.
//!
//! `types` holds every request and response shape the API documents (the
//! host serializes them, this client deserializes them, and the host's
//! OpenAPI document is generated from them). `Client` has one method per
//! route; it sends the bearer token, trusts `--ca-cert` roots for HTTPS,
//! and turns the API's JSON errors into `Error::Api` (status, code,
//! message).
//!
//! ```no_run
//! let client = cairn_client::Client::new("http://127.0.0.1:7700", None, None);
//! let started = client.start("hello", Some(serde_json::json!({ "name": "Ada" })))?;
//! let instance = client.instance(&started.id)?;
//! println!("{} is {:?}", instance.summary.id, instance.summary.status);
//! # Ok::<(), cairn_client::Error>(())
//! ```

pub mod types;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::Duration;
use types::*;

/// What went wrong with a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Error {
    /// The server answered with an error: its HTTP status, its `code`
    /// (`not-found`, `conflict`, …; absent on errors of the HTTP layer) and
    /// its message.
    Api { status: u16, code: Option<String>, message: String },
    /// The server could not be reached: no connection, DNS, or TLS (`tls`
    /// says so; the message says why and what to do about it).
    Unreachable { tls: bool, message: String },
    /// The client itself is not set up right (an unreadable `--ca-cert`).
    Config { message: String },
    /// The server answered with something that is not the API's JSON.
    BadResponse { status: u16, message: String },
}

impl Error {
    /// The HTTP status of an answer, if there was one.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Api { status, .. } | Error::BadResponse { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The error's message (the API's own, for `Api`).
    pub fn message(&self) -> &str {
        match self {
            Error::Api { message, .. } | Error::Unreachable { message, .. } | Error::Config { message } | Error::BadResponse { message, .. } => message,
        }
    }

    /// A 404: no such instance, process, route, ….
    pub fn is_not_found(&self) -> bool {
        self.status() == Some(404)
    }

    /// The error as JSON: `{"error", "kind", "status"?, "code"?}`.
    pub fn to_json(&self) -> Value {
        let mut v = json!({ "error": self.message() });
        v["kind"] = json!(match self {
            Error::Api { .. } => "api",
            Error::Unreachable { .. } => "unreachable",
            Error::Config { .. } => "config",
            Error::BadResponse { .. } => "bad-response",
        });
        if let Some(status) = self.status() {
            v["status"] = json!(status);
        }
        if let Error::Api { code: Some(code), .. } = self {
            v["code"] = json!(code);
        }
        v
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;

/// `GET /v1/instances`: which instances, and which page.
#[derive(Clone, Debug, Default)]
pub struct ListInstances {
    /// `running`, `waiting`, `suspended`, `completed`, `faulted` or `terminated`.
    pub status: Option<String>,
    pub process: Option<String>,
    /// Page size (the server's default is 1000, its most 10000).
    pub limit: Option<usize>,
    /// Instances after this id (the `next_after` of the page before).
    pub after: Option<String>,
    /// Skip this many first (page N of size L: offset (N-1)·L).
    pub offset: Option<usize>,
    /// Newest first rather than oldest first (ids are time-ordered).
    pub newest_first: bool,
}

/// `POST /v1/messages`.
#[derive(Clone, Debug, Serialize)]
pub struct SendMessage {
    pub operation: String,
    pub body: Value,
    /// A message id: one seen before is acknowledged and not delivered again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Wait for the reply of a request-response receive.
    pub wait_reply: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

/// A blocking client of one Cairn server.
pub struct Client {
    base: String,
    /// The HTTP(S) agent, or why it could not be made (an unreadable
    /// `--ca-cert`), reported by the first request.
    agent: std::result::Result<ureq::Agent, String>,
    /// `Authorization: Bearer …`, sent with every request.
    authorization: Option<String>,
}

/// Escapes a path segment or query value.
pub fn escape(s: &str) -> String {
    s.bytes()
        .map(|b| if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}

impl Client {
    /// A client of the server at `base` (`http://HOST:PORT` or `https://…`),
    /// sending `token` as a bearer token, trusting the certificates of the
    /// PEM file `ca_cert` (instead of the public roots) for HTTPS.
    pub fn new(base: &str, token: Option<&str>, ca_cert: Option<&Path>) -> Client {
        let agent = tls_config(ca_cert).map(|tls| {
            ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(Duration::from_secs(600)))
                .tls_config(tls)
                .build()
                .into()
        });
        let authorization = token.map(str::trim).filter(|t| !t.is_empty()).map(|t| format!("Bearer {t}"));
        Client { base: base.trim_end_matches('/').to_string(), agent, authorization }
    }

    /// The server's URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    fn agent(&self) -> Result<&ureq::Agent> {
        self.agent.as_ref().map_err(|e| Error::Config { message: e.clone() })
    }

    fn auth<B>(&self, r: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        match &self.authorization {
            Some(a) => r.header("authorization", a),
            None => r,
        }
    }

    fn finish(&self, r: std::result::Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Result<Value> {
        let mut resp = r.map_err(|e| match tls_failure(&e) {
            Some(why) => Error::Unreachable { tls: true, message: format!("TLS with the Cairn server at {} failed: {why}", self.base) },
            None => Error::Unreachable { tls: false, message: format!("cannot reach the Cairn server at {}: {e}", self.base) },
        })?;
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .with_config()
            .limit(256 << 20)
            .read_to_string()
            .map_err(|e| Error::BadResponse { status, message: format!("the server answered {status}, and its body could not be read: {e}") })?;
        let body: Value = match serde_json::from_str(&text) {
            Ok(v) => v,
            Err(e) => {
                let shown: String = text.trim().chars().take(500).collect();
                return Err(Error::BadResponse { status, message: format!("the server answered {status} with a body that is not JSON ({e}): {shown}") });
            }
        };
        if status >= 400 {
            let message = body["error"].as_str().map(str::to_string).unwrap_or_else(|| body.to_string());
            let code = body["code"].as_str().map(str::to_string);
            return Err(Error::Api { status, code, message });
        }
        Ok(body)
    }

    fn typed<T: DeserializeOwned>(v: Value) -> Result<T> {
        serde_json::from_value(v).map_err(|e| Error::BadResponse { status: 200, message: format!("the server's answer does not have the API's shape: {e}") })
    }

    /// `GET path` (path and query, e.g. `/v1/instances?limit=5`), as JSON.
    pub fn get_json(&self, path: &str) -> Result<Value> {
        self.finish(self.auth(self.agent()?.get(format!("{}{path}", self.base))).call())
    }

    fn send_json(&self, method: &str, path: &str, body: &Value) -> Result<Value> {
        let url = format!("{}{path}", self.base);
        let agent = self.agent()?;
        let request = match method {
            "POST" => self.auth(agent.post(url)),
            "PUT" => self.auth(agent.put(url)),
            _ => self.auth(agent.delete(url).force_send_body()),
        };
        self.finish(request.header("content-type", "application/json").send(body.to_string().as_bytes()))
    }

    /// `POST path` with a JSON body.
    pub fn post_json(&self, path: &str, body: &Value) -> Result<Value> {
        self.send_json("POST", path, body)
    }

    fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        Self::typed(self.get_json(path)?)
    }

    fn post<T: DeserializeOwned>(&self, path: &str, body: &Value) -> Result<T> {
        Self::typed(self.send_json("POST", path, body)?)
    }

    /// `GET /v1/health`.
    pub fn health(&self) -> Result<Health> {
        self.get("/v1/health")
    }

    /// `POST /v1/definitions`: deploys a component (its bytes) under `name`
    /// (default: its own), granting HTTP prefixes and resources.
    pub fn deploy(&self, component: &[u8], name: Option<&str>, allow_http: &[String], resources: &[String]) -> Result<Deployed> {
        let mut query = Vec::new();
        if let Some(name) = name {
            query.push(format!("name={}", escape(name)));
        }
        query.extend(allow_http.iter().map(|p| format!("allow_http={}", escape(p))));
        query.extend(resources.iter().map(|r| format!("resource={}", escape(r))));
        let path = if query.is_empty() { "/v1/definitions".to_string() } else { format!("/v1/definitions?{}", query.join("&")) };
        let request = self.auth(self.agent()?.post(format!("{}{path}", self.base))).header("content-type", "application/wasm");
        Self::typed(self.finish(request.send(component))?)
    }

    /// `POST /v1/definitions/external`: an external activity whose tasks workers take.
    pub fn deploy_external(&self, name: &str, operations: &[String]) -> Result<DeployedExternal> {
        self.post("/v1/definitions/external", &json!({ "name": name, "operations": operations }))
    }

    /// `GET /v1/definitions`.
    pub fn definitions(&self) -> Result<DefinitionList> {
        self.get("/v1/definitions")
    }

    /// `POST /v1/instances`: starts an instance of the latest version of `process`.
    pub fn start(&self, process: &str, input: Option<Value>) -> Result<Started> {
        let mut body = json!({ "process": process });
        if let Some(input) = input {
            body["input"] = input;
        }
        self.post("/v1/instances", &body)
    }

    /// `POST /v1/messages`.
    pub fn send(&self, message: &SendMessage) -> Result<MessageAccepted> {
        self.post("/v1/messages", &json!(message))
    }

    /// `GET /v1/instances`: one page.
    pub fn instances(&self, q: &ListInstances) -> Result<InstanceList> {
        let mut query = Vec::new();
        if let Some(s) = &q.status {
            query.push(format!("status={}", escape(s)));
        }
        if let Some(p) = &q.process {
            query.push(format!("process={}", escape(p)));
        }
        if let Some(l) = q.limit {
            query.push(format!("limit={l}"));
        }
        if let Some(a) = &q.after {
            query.push(format!("after={}", escape(a)));
        }
        if let Some(o) = q.offset {
            query.push(format!("offset={o}"));
        }
        if q.newest_first {
            query.push("order=newest-first".to_string());
        }
        let path = if query.is_empty() { "/v1/instances".to_string() } else { format!("/v1/instances?{}", query.join("&")) };
        self.get(&path)
    }

    /// `GET /v1/instances/{id}`.
    pub fn instance(&self, id: &str) -> Result<InstanceDetail> {
        self.get(&format!("/v1/instances/{}", escape(id)))
    }

    /// `GET /v1/instances/{id}/positions`: where each branch stands and
    /// what it waits for (message and correlation, timer, call with its
    /// attempt and last fault), why it stopped, its parent and children.
    pub fn positions(&self, id: &str) -> Result<Positions> {
        self.get(&format!("/v1/instances/{}/positions", escape(id)))
    }

    /// `GET /v1/instances/{id}/history`.
    pub fn history(&self, id: &str) -> Result<InstanceHistory> {
        self.get(&format!("/v1/instances/{}/history", escape(id)))
    }

    /// `PUT /v1/instances/{id}/variables` (a suspended instance).
    pub fn set_variables(&self, id: &str, variables: &Value) -> Result<WithVariables> {
        Self::typed(self.send_json("PUT", &format!("/v1/instances/{}/variables", escape(id)), variables)?)
    }

    /// `POST /v1/instances/{id}/{verb}`: `suspend`, `resume`, `terminate`, `cancel` or `release`.
    pub fn control(&self, id: &str, verb: &str) -> Result<InstanceSummary> {
        self.post(&format!("/v1/instances/{}/{}", escape(id), escape(verb)), &json!({}))
    }

    pub fn suspend(&self, id: &str) -> Result<InstanceSummary> {
        self.control(id, "suspend")
    }

    pub fn resume(&self, id: &str) -> Result<InstanceSummary> {
        self.control(id, "resume")
    }

    pub fn terminate(&self, id: &str) -> Result<InstanceSummary> {
        self.control(id, "terminate")
    }

    pub fn cancel(&self, id: &str) -> Result<InstanceSummary> {
        self.control(id, "cancel")
    }

    pub fn release(&self, id: &str) -> Result<InstanceSummary> {
        self.control(id, "release")
    }

    /// `POST /v1/instances/{id}/retry`, with new variables or as it is.
    pub fn retry(&self, id: &str, variables: Option<Value>) -> Result<InstanceSummary> {
        let body = match variables {
            Some(v) => json!({ "variables": v }),
            None => json!({}),
        };
        self.post(&format!("/v1/instances/{}/retry", escape(id)), &body)
    }

    /// `POST /v1/retry`: every faulted instance of a process (of one fault name).
    pub fn retry_faulted(&self, process: &str, fault: Option<&str>) -> Result<RetryReport> {
        self.post("/v1/retry", &json!({ "process": process, "fault": fault }))
    }

    /// `POST /v1/instances/{id}/migrate`.
    pub fn migrate(&self, id: &str, to: &str, map: &BTreeMap<String, String>) -> Result<InstanceSummary> {
        self.post(&format!("/v1/instances/{}/migrate", escape(id)), &json!({ "to": to, "map": map }))
    }

    /// `POST /v1/migrate`: every instance of a version that can move.
    pub fn migrate_version(&self, from: &str, to: &str, map: &BTreeMap<String, String>) -> Result<MigrateReport> {
        self.post("/v1/migrate", &json!({ "from": from, "to": to, "map": map }))
    }

    /// `GET /v1/tasks`: tasks of external activities (of one, if given).
    pub fn tasks(&self, activity: Option<&str>) -> Result<TaskList> {
        match activity {
            Some(a) => self.get(&format!("/v1/tasks?activity={}", escape(a))),
            None => self.get("/v1/tasks"),
        }
    }

    /// `GET /v1/in-transit`.
    pub fn in_transit(&self) -> Result<HeldCallList> {
        self.get("/v1/in-transit")
    }

    /// `POST /v1/in-transit/{id}/{verb}`: `resubmit` or `abandon`.
    pub fn resolve_in_transit(&self, id: &str, verb: &str) -> Result<HeldCallView> {
        self.post(&format!("/v1/in-transit/{}/{}", escape(id), escape(verb)), &json!({}))
    }

    /// `GET /v1/breakpoints`.
    pub fn breakpoints(&self) -> Result<BreakpointList> {
        self.get("/v1/breakpoints")
    }

    /// `POST /v1/breakpoints`.
    pub fn set_breakpoint(&self, process: &str, path: &str) -> Result<BreakpointChanged> {
        self.post("/v1/breakpoints", &json!({ "process": process, "path": path }))
    }

    /// `DELETE /v1/breakpoints`.
    pub fn clear_breakpoint(&self, process: &str, path: &str) -> Result<BreakpointChanged> {
        Self::typed(self.send_json("DELETE", "/v1/breakpoints", &json!({ "process": process, "path": path }))?)
    }

    /// `GET /v1/resources`.
    pub fn resources(&self) -> Result<ResourceList> {
        self.get("/v1/resources")
    }

    /// `POST /v1/resources`.
    pub fn create_resource(&self, name: &str) -> Result<ResourceCreated> {
        self.post("/v1/resources", &json!({ "name": name }))
    }

    /// `GET /v1/resources/{name}/keys/{key}`.
    pub fn resource_key(&self, name: &str, key: &str) -> Result<ResourceKey> {
        self.get(&format!("/v1/resources/{}/keys/{}", escape(name), escape(key)))
    }

    /// `GET /v1/resources/{name}`: a page of keys.
    pub fn scan_resource(&self, name: &str, prefix: &str, after: Option<&str>, limit: usize) -> Result<ResourceScan> {
        let mut path = format!("/v1/resources/{}?prefix={}&limit={limit}", escape(name), escape(prefix));
        if let Some(after) = after {
            path.push_str(&format!("&after={}", escape(after)));
        }
        self.get(&path)
    }

    /// `GET /v1/tokens`.
    pub fn tokens(&self) -> Result<TokenList> {
        self.get("/v1/tokens")
    }

    /// `POST /v1/tokens`: the token is in the answer, this once.
    pub fn create_token(&self, role: &str, note: &str) -> Result<TokenCreated> {
        self.post("/v1/tokens", &json!({ "role": role, "note": note }))
    }

    /// `DELETE /v1/tokens/{id}`.
    pub fn revoke_token(&self, id: &str) -> Result<TokenRevoked> {
        Self::typed(self.send_json("DELETE", &format!("/v1/tokens/{}", escape(id)), &json!({}))?)
    }

    /// `GET /v1/cluster`: nodes, partitions, owners, epochs and lease ages
    /// (cluster mode; a single host answers 404).
    pub fn cluster(&self) -> Result<Value> {
        self.get_json("/v1/cluster")
    }

    /// `POST /v1/backup`: a backup named `name` under the server's backup root.
    pub fn backup(&self, name: &str) -> Result<BackupMade> {
        self.post("/v1/backup", &json!({ "name": name }))
    }
}

/// TLS for `https://` servers (rustls, ring): the certificates of
/// `ca_cert` as the only roots if given, else Mozilla's public roots.
fn tls_config(ca_cert: Option<&Path>) -> std::result::Result<ureq::tls::TlsConfig, String> {
    let mut tls = ureq::tls::TlsConfig::builder().provider(ureq::tls::TlsProvider::Rustls);
    if let Some(path) = ca_cert {
        let pem = std::fs::read(path).map_err(|e| format!("cannot read the CA certificate file {} (--ca-cert): {e}", path.display()))?;
        let mut roots = Vec::new();
        for item in ureq::tls::parse_pem(&pem) {
            match item {
                Ok(ureq::tls::PemItem::Certificate(c)) => roots.push(c),
                Ok(_) => {}
                Err(e) => return Err(format!("the CA certificate file {} (--ca-cert) is not valid PEM: {e}", path.display())),
            }
        }
        if roots.is_empty() {
            return Err(format!(
                "the CA certificate file {} (--ca-cert) holds no certificate (expected a PEM block '-----BEGIN CERTIFICATE-----')",
                path.display()
            ));
        }
        tls = tls.root_certs(ureq::tls::RootCerts::new_with_certs(&roots));
    }
    Ok(tls.build())
}

/// A TLS failure (rustls's error, as such or inside an I/O error), said with what to do about it.
fn tls_failure(e: &ureq::Error) -> Option<String> {
    use rustls::CertificateError;
    let e: &rustls::Error = match e {
        ureq::Error::Rustls(e) => e,
        ureq::Error::Io(io) => io.get_ref()?.downcast_ref::<rustls::Error>()?,
        _ => return None,
    };
    let hint = match e {
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer | CertificateError::BadSignature) => {
            "the server's certificate is not signed by a trusted root: if it is self-signed or from a private CA, trust it with --ca-cert FILE / CAIRN_CA_CERT"
        }
        rustls::Error::InvalidCertificate(CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }) => {
            "the server's certificate does not name the host in --server: use a name or address its subjectAltName lists"
        }
        rustls::Error::InvalidCertificate(CertificateError::Expired | CertificateError::ExpiredContext { .. }) => "the server's certificate has expired",
        rustls::Error::InvalidCertificate(CertificateError::Other(other)) if other.to_string().contains("CaUsedAsEndEntity") => {
            "the server's certificate is a CA certificate (basicConstraints CA:TRUE) used as the server's own: make it with CA:FALSE (see the README's TLS section)"
        }
        _ => "is the server serving HTTPS at this address, and is --ca-cert the right certificate?",
    };
    Some(format!("{e}: {hint}"))
}
