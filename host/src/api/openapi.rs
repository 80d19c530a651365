//! The API's contract: the OpenAPI 3.1 document served at
//! `GET /v1/openapi.json`, generated from the code with utoipa.
//!
//! Each handler carries its `#[utoipa::path]` (method, path, parameters,
//! request body, the responses it gives itself); `ApiDoc` lists the
//! handlers, and `Contract` adds what every route shares, derived from the
//! same code that enforces it: the bearer-token security scheme and each
//! operation's role (`auth::required_role`), 401 and 403 where a token is
//! needed, 400 where a request carries parameters or a body, 413 where it
//! carries a body, and the store's errors (500, 503, 507).
//!
//! The shapes here describe bodies that handlers build with `json!`; the
//! response types of `types` describe themselves (`ToSchema`). Schemathesis
//! (tests/api_contract.rs) checks live responses against all of them, and
//! `tests::every_route_is_documented` checks that the document has exactly
//! the routes of `api::routes`.

pub use super::types::*;
use axum::http::{header, Method};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::OnceLock;
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{Content, OpenApi as Document, Ref, RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi, ToSchema};

/// The name of the bearer-token security scheme in the document.
pub const SECURITY_SCHEME: &str = "bearer";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Cairn",
        description = "The HTTP API of Cairn, a durable process host for WebAssembly components. Every error is `{\"error\": MESSAGE}` (the `Error` schema). Send `Authorization: Bearer TOKEN` once the host has a token or listens beyond loopback (each operation names the role it needs); a host on loopback with no token takes requests without one.",
        license(name = "Apache-2.0", identifier = "Apache-2.0")
    ),
    paths(
        super::health,
        document,
        super::metrics,
        super::cluster_status,
        super::deploy,
        super::list_definitions,
        super::tasks::deploy_external,
        super::tasks::list_tasks,
        super::tasks::poll,
        super::tasks::finish,
        super::start,
        super::list_instances,
        super::show_instance,
        super::instance_history,
        super::set_variables,
        super::retry_instance,
        super::retry_faulted,
        super::migrate_instance,
        super::migrate_version,
        super::control_instance,
        super::send_message,
        super::backup,
        super::list_breakpoints,
        super::set_breakpoint,
        super::clear_breakpoint,
        super::list_resources,
        super::create_resource,
        super::scan_resource,
        super::get_resource_key,
        super::list_in_transit,
        super::resolve_in_transit,
        super::list_tokens,
        super::create_token,
        super::revoke_token,
        crate::console::index_html,
        crate::console::app_js,
        crate::console::diagram_js,
        crate::console::app_css,
        crate::console::icon_svg,
        crate::console::events,
        crate::console::views::tree,
        crate::console::views::heat,
        crate::console::views::search,
        crate::console::views::positions,
    ),
    components(schemas(ErrorBody, InstanceEvent, InstanceVerb, TaskVerb, InTransitVerb)),
    modifiers(&Contract),
    tags(
        (name = "host", description = "Health, metrics and this document"),
        (name = "definitions", description = "Deployed process and activity components"),
        (name = "instances", description = "Process instances: start, list, inspect, control"),
        (name = "messages", description = "Messages to processes"),
        (name = "tasks", description = "Tasks of external activities, for workers"),
        (name = "operator", description = "Breakpoints, held calls, resources and backups"),
        (name = "tokens", description = "Bearer tokens of the API"),
        (name = "console", description = "The web console's page and the read routes it uses"),
    )
)]
pub struct ApiDoc;

/// The document, built once.
pub fn spec() -> &'static Document {
    static SPEC: OnceLock<Document> = OnceLock::new();
    SPEC.get_or_init(ApiDoc::openapi)
}

/// `GET /v1/openapi.json`.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "host", responses((status = 200, description = "This OpenAPI 3.1 document", body = Object)))]
pub(super) async fn document() -> Response {
    static JSON: OnceLock<String> = OnceLock::new();
    let body = JSON.get_or_init(|| spec().to_json().expect("the OpenAPI document serializes"));
    ([(header::CONTENT_TYPE, "application/json")], body.as_str()).into_response()
}

/// What every operation shares (see the module's comment).
struct Contract;

impl Modify for Contract {
    fn modify(&self, doc: &mut Document) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            SECURITY_SCHEME,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("A token made by `cairn token create` or `POST /v1/tokens`, of role worker, reader, operator or admin"))
                    .build(),
            ),
        );
        for (path, item) in doc.paths.paths.iter_mut() {
            let operations = [
                (Method::GET, &mut item.get),
                (Method::POST, &mut item.post),
                (Method::PUT, &mut item.put),
                (Method::DELETE, &mut item.delete),
                (Method::PATCH, &mut item.patch),
            ];
            for (method, op) in operations {
                if let Some(op) = op.as_mut() {
                    share(&method, path, op);
                }
            }
        }
    }
}

fn share(method: &Method, path: &str, op: &mut Operation) {
    let role = super::auth::required_role(method, path);
    let note = match role {
        None => "Needs no token.".to_string(),
        Some(cairn_store::Role::Worker) => "Needs a token of role worker, operator or admin.".to_string(),
        Some(role) => format!("Needs a token of role {} or higher.", role.name()),
    };
    op.description = Some(match op.description.take() {
        Some(d) if !d.is_empty() => format!("{d}\n\n{note}"),
        _ => note,
    });
    op.security = Some(match role {
        None => vec![SecurityRequirement::default()],
        Some(_) => vec![SecurityRequirement::new::<_, _, &str>(SECURITY_SCHEME, [])],
    });
    let has_params = op.parameters.as_ref().is_some_and(|p| !p.is_empty());
    let has_body = op.request_body.is_some();
    let mut errors: Vec<(&str, &str)> = Vec::new();
    if has_params || has_body {
        errors.push(("400", "The request is not valid: a parameter, the query string or the body (the message says which)"));
    }
    if role.is_some() {
        errors.push(("401", "A bearer token is required, or the one given is not valid (unknown or revoked)"));
        errors.push(("403", "The token's role is too low for this route"));
    }
    if has_body {
        errors.push(("413", "The request body is larger than the host takes (cairn serve --max-body-bytes, --max-component-bytes)"));
    }
    if role.is_some() {
        errors.push(("500", "An internal error of the host (the message says what failed)"));
        errors.push(("503", "The host is shutting down, or the store is unavailable"));
        errors.push(("507", "The store's disk is full"));
    }
    for (status, description) in errors {
        if !op.responses.responses.contains_key(status) {
            op.responses.responses.insert(status.to_string(), RefOr::T(error_response(description)));
        }
    }
}

fn error_response(description: &str) -> utoipa::openapi::Response {
    ResponseBuilder::new()
        .description(description)
        .content("application/json", Content::new(Some(RefOr::<utoipa::openapi::schema::Schema>::Ref(Ref::from_schema_name("Error")))))
        .build()
}

// ---- Shapes of the bodies handlers build with `json!` ----

/// Every error: `{"error": MESSAGE}`, and for errors of the service a
/// `code` (`bad-input`, `not-found`, `conflict`, `invalid`, `unavailable`,
/// `no-space`, `too-large`, `internal`).
#[derive(ToSchema)]
#[schema(as = Error)]
pub struct ErrorBody {
    /// What went wrong, and what to do about it.
    pub error: String,
    /// What kind of error it is (absent on errors of the HTTP layer: 401, 403, 405, 413).
    pub code: Option<String>,
}

/// The data of an `instance` event of `GET /v1/events`.
#[derive(ToSchema)]
pub struct InstanceEvent {
    pub id: String,
    pub process: String,
    pub version: String,
    pub status: InstanceStatus,
    /// The activity path of the point.
    pub path: String,
    /// Why the persistence point was taken (`created`, `waiting`, `completed`, …).
    pub reason: String,
    pub fence: u64,
    pub at_ms: u64,
}

/// `GET /v1/cluster`.
#[derive(ToSchema)]
pub struct ClusterStatus {
    /// The node that answered.
    pub node: String,
    /// The partition count, fixed when the cluster was created.
    pub partitions: u32,
    /// How long a lease lasts without renewal, in milliseconds.
    pub lease_ms: u64,
    pub nodes: Vec<ClusterNode>,
    /// Every partition, in order.
    pub owners: Vec<ClusterPartition>,
}

/// One host of the cluster.
#[derive(ToSchema)]
pub struct ClusterNode {
    pub name: String,
    /// Where its API is reached.
    pub advertise: String,
    /// Milliseconds since its last heartbeat (on the database's clock).
    pub heartbeat_age_ms: i64,
    /// Its heartbeat is younger than one lease.
    pub live: bool,
    /// Partitions it holds under an unexpired lease.
    pub partitions: u32,
}

/// One partition and its lease.
#[derive(ToSchema)]
pub struct ClusterPartition {
    pub partition: u32,
    /// The node that claimed it last (its lease may have expired).
    pub owner: Option<String>,
    /// One more at every claim; writes are fenced by it.
    pub epoch: u64,
    /// Milliseconds until the lease expires (negative: expired).
    pub lease_remaining_ms: i64,
    /// Milliseconds since its owner claimed it.
    pub lease_age_ms: Option<i64>,
}

/// A task of an external activity.
#[derive(serde::Serialize, ToSchema)]
pub struct Task {
    /// `INSTANCE:CALL`.
    pub id: String,
    pub instance: String,
    pub activity: String,
    pub operation: String,
    /// The call's input (JSON).
    pub input: Value,
    pub idempotency_key: String,
    pub attempt: u32,
    pub lease_deadline_ms: Option<u64>,
    /// The lease token: send it back with complete, fail and heartbeat.
    pub lease: Option<String>,
    pub worker: Option<String>,
}

/// `POST /v1/tasks/poll`: the tasks leased.
#[derive(ToSchema)]
pub struct TaskBatch {
    pub count: u64,
    pub tasks: Vec<Task>,
}

/// A task's completion or failure acknowledged.
#[derive(serde::Serialize, ToSchema)]
pub struct TaskFinished {
    pub id: String,
    pub attempt: u32,
    /// The task was finished before (a retried request).
    pub duplicate: bool,
    /// A retryable failure: the call is to run again.
    pub retrying: bool,
}

/// What `POST /v1/tasks/{id}/{verb}` answers: a heartbeat's task, or a
/// completion's or failure's acknowledgement.
#[derive(serde::Serialize, ToSchema)]
#[serde(untagged)]
pub enum TaskOrFinished {
    Task(Task),
    Finished(TaskFinished),
}

/// `GET /v1/definitions/{version}/tree`.
#[derive(ToSchema)]
pub struct ActivityTree {
    pub name: String,
    pub version: String,
    pub latest: bool,
    /// The root activity: `name`, `path`, `kind`, `commit_before`,
    /// `commit_after`, `detail`, `children` (activities of the same shape)
    /// and, by kind, `label`, `handlers`, `compensation`, `atomic`, `parallel`.
    pub root: BTreeMap<String, Value>,
    /// Activity paths of the process with a breakpoint.
    pub breakpoints: Vec<String>,
}

/// `GET /v1/definitions/{version}/heat`.
#[derive(ToSchema)]
pub struct Heat {
    pub version: String,
    /// Activity path -> status (or `faulted`: faults raised there) -> instances.
    pub activities: BTreeMap<String, BTreeMap<String, u64>>,
    /// Status -> instances of the version.
    pub by_status: BTreeMap<String, u64>,
    /// The scan stopped at its limit: the counts are of the first instances.
    pub partial: bool,
}

/// `GET /v1/instances/search`.
#[derive(ToSchema)]
pub struct SearchPage {
    pub instances: Vec<InstanceSummary>,
    pub count: u64,
    /// All matches.
    pub total: u64,
    /// The scan stopped at its limit: `total` counts the first instances.
    pub partial: bool,
    /// Present when more follow: pass it as `after`.
    pub next_after: Option<String>,
}

/// What `POST /v1/instances/{id}/{verb}` does.
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
pub enum InstanceVerb {
    Suspend,
    Resume,
    Terminate,
    Cancel,
    Release,
    Resubmit,
}

/// What `POST /v1/in-transit/{id}/{verb}` does.
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
pub enum InTransitVerb {
    Resubmit,
    Abandon,
}

/// What `POST /v1/tasks/{id}/{verb}` does.
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
pub enum TaskVerb {
    Complete,
    Fail,
    Heartbeat,
}

/// A component's bytes (`application/wasm`).
#[derive(ToSchema)]
#[schema(value_type = String, format = Binary)]
pub struct ComponentBytes(pub Vec<u8>);

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn documented() -> BTreeSet<(String, String)> {
        let mut out = BTreeSet::new();
        for (path, item) in &spec().paths.paths {
            let ops = [("GET", &item.get), ("POST", &item.post), ("PUT", &item.put), ("DELETE", &item.delete), ("PATCH", &item.patch), ("HEAD", &item.head), ("OPTIONS", &item.options), ("TRACE", &item.trace)];
            for (method, op) in ops {
                if op.is_some() {
                    out.insert((method.to_string(), path.clone()));
                }
            }
        }
        out
    }

    fn routed() -> BTreeSet<(String, String)> {
        super::super::routes(&super::super::ApiConfig::default()).iter().map(|r| (r.method.to_string(), r.path.to_string())).collect()
    }

    #[test]
    fn every_route_is_documented_and_every_documented_route_exists() {
        let (documented, routed) = (documented(), routed());
        let undocumented: Vec<_> = routed.difference(&documented).collect();
        let unrouted: Vec<_> = documented.difference(&routed).collect();
        assert!(undocumented.is_empty(), "routes missing from the OpenAPI document: {undocumented:?}");
        assert!(unrouted.is_empty(), "documented routes the router does not have: {unrouted:?}");
    }

    #[test]
    fn the_document_is_openapi_3_1_with_a_bearer_scheme() {
        let json: Value = serde_json::from_str(&spec().to_json().unwrap()).unwrap();
        assert!(json["openapi"].as_str().unwrap().starts_with("3.1"), "{}", json["openapi"]);
        assert_eq!(json["components"]["securitySchemes"][SECURITY_SCHEME]["scheme"], "bearer");
        // A route that needs a token says so and documents 401; health needs none.
        let show = &json["paths"]["/v1/instances/{id}"]["get"];
        assert_eq!(show["security"][0][SECURITY_SCHEME], serde_json::json!([]));
        assert!(show["responses"]["401"].is_object() && show["responses"]["404"].is_object());
        assert_eq!(json["paths"]["/v1/health"]["get"]["security"], serde_json::json!([{}]));
    }

    #[test]
    fn every_schema_reference_resolves() {
        let text = spec().to_json().unwrap();
        let json: Value = serde_json::from_str(&text).unwrap();
        let schemas = json["components"]["schemas"].as_object().unwrap();
        let mut missing = BTreeSet::new();
        for part in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
            let name = &part[..part.find('"').unwrap()];
            if !schemas.contains_key(name) {
                missing.insert(name.to_string());
            }
        }
        assert!(missing.is_empty(), "schemas referenced but not in the document: {missing:?}");
    }
}
