//! `GET /openapi.json`: the OpenAPI description of the client, status and admin API.
//!
//! The document is derived from the code: the operations, parameters and responses from the
//! `#[utoipa::path]` attributes on the handlers in [`crate::api`] and [`crate::admin`], the
//! bodies from the wire types in [`wire::api`]. The bounds that code or flags set (`top` up to
//! [`crate::api::MAX_TOP`], `iterations` up to `--max-iterations`, the body up to
//! `--max-body-bytes`, the Idempotency-Key's length) are filled in from those constants and from
//! this coordinator's configuration when the document is served, so the document states the
//! limits this coordinator enforces. Whether the client API asks for a token follows
//! `--client-token` the same way.
//!
//! The worker routes (`/worker/...`) and the Raft routes (`/raft/...`) are internal (MessagePack,
//! behind the cluster secret) and are left out.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

use crate::App;
use crate::api::{DEFAULT_TOP, MAX_IDEMPOTENCY_KEY_LEN, MAX_TOP};
use crate::config::Config;

/// What the document says of itself.
const DESCRIPTION: &str = "Tandem's client API (enqueue a job, pull completed results, a job's \
state), its status routes (cluster status, health, readiness, metrics, the status page) and its \
operator routes under `/admin/`. Every client and admin error answers a JSON `{\"error\": \
\"...\"}` body; an unknown path answers 404 and a known path with another method 405, both with \
that body. Both coordinators serve the whole API: a follower forwards writes to the leader, and \
reads are linearizable on either. Bounds that flags set are those of the coordinator that served \
this document. Not described: the worker routes (`/worker/...`) and the Raft routes \
(`/raft/...`), which are internal (MessagePack bodies, behind the cluster secret).";

/// The derived part of the document.
#[derive(OpenApi)]
#[openapi(
    info(title = "Tandem", description = DESCRIPTION),
    paths(
        crate::api::enqueue,
        crate::api::pull_completed,
        crate::api::job,
        crate::api::cluster,
        crate::api::status_page,
        crate::api::healthz,
        crate::api::readyz,
        crate::api::metrics,
        document,
        crate::admin::failover,
        crate::admin::replace_member,
        crate::admin::drain_worker,
        crate::admin::resume_worker,
    ),
    components(schemas(wire::api::ErrorBody)),
    modifiers(&SecuritySchemes),
    tags(
        (name = "client", description = "Jobs and their results (`--client-token` when set)."),
        (name = "status", description = "Open to operators, probes and Prometheus: no job data."),
        (name = "admin", description = "Operator routes (`--admin-token`; disabled without it)."),
    ),
)]
struct ApiDoc;

/// The two bearer tokens.
struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let bearer = |description: &str| {
            SecurityScheme::Http(
                HttpBuilder::new().scheme(HttpAuthScheme::Bearer).description(Some(description)).build(),
            )
        };
        components.add_security_scheme(
            "client_token",
            bearer("`--client-token`: required on the client API when the coordinator is started with it."),
        );
        components.add_security_scheme("admin_token", bearer("`--admin-token`: required on every admin route."));
    }
}

/// The body of `PUT /enqueue` as bytes.
#[derive(ToSchema)]
#[schema(value_type = String, format = Binary)]
pub struct JobBytes(pub Vec<u8>);

/// The body of `PUT /enqueue` as a `multipart/form-data` form: exactly one part, whatever its
/// name, whose bytes are the job's.
#[derive(ToSchema)]
pub struct EnqueueForm {
    /// The job's bytes.
    #[schema(value_type = String, format = Binary)]
    pub file: Vec<u8>,
}

/// `GET /healthz` and `GET /readyz` answer.
#[derive(ToSchema)]
pub struct Health {
    /// `ok` (`/healthz`) or `ready` (`/readyz`).
    #[schema(pattern = "^(ok|ready)$")]
    pub status: String,
}

/// `GET /openapi.json`
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "status",
    summary = "This document",
    responses((status = 200, description = "The OpenAPI description of this API, with this coordinator's bounds.", body = serde_json::Value)),
)]
pub async fn document(State(app): State<App>) -> Response {
    match document_for(&app.config) {
        Ok(doc) => Json(doc).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "the OpenAPI document does not match its handlers");
            (StatusCode::INTERNAL_SERVER_ERROR, Json(wire::api::ErrorBody { error: e })).into_response()
        }
    }
}

/// The document for a coordinator with `config`.
pub fn document_for(config: &Config) -> Result<Value, String> {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).map_err(|e| e.to_string())?;
    doc["info"]["version"] = json!(env!("CARGO_PKG_VERSION"));

    // A parameter is absent or has a value: utoipa describes an optional one as nullable, which
    // a query string or a header cannot express.
    for item in doc["paths"].as_object_mut().into_iter().flat_map(|paths| paths.values_mut()) {
        for op in item.as_object_mut().into_iter().flat_map(|item| item.values_mut()) {
            for param in op.get_mut("parameters").and_then(Value::as_array_mut).into_iter().flatten() {
                if let Some(types) = param.pointer_mut("/schema/type").and_then(Value::as_array_mut) {
                    types.retain(|t| t != "null");
                    if types.len() == 1 {
                        param["schema"]["type"] = types[0].clone();
                    }
                }
            }
        }
    }

    let max_body = config.max_body_bytes;
    let enqueue = operation(&mut doc, "/enqueue", "put")?;
    bound(param(enqueue, "iterations")?, json!({"minimum": 1, "maximum": config.max_iterations}));
    bound(
        param(enqueue, "Idempotency-Key")?,
        // Visible ASCII; surrounding spaces are trimmed, so none are described.
        json!({"minLength": 1, "maxLength": MAX_IDEMPOTENCY_KEY_LEN, "pattern": "^[!-~]([ -~]*[!-~])?$"}),
    );
    let content = enqueue.pointer_mut("/requestBody/content").ok_or("PUT /enqueue has no request body")?;
    bound(
        content.pointer_mut("/application~1octet-stream/schema").ok_or("no raw body")?,
        json!({"minLength": 1, "maxLength": max_body}),
    );
    let part = content.pointer_mut("/multipart~1form-data/schema").ok_or("no multipart body")?;
    bound(part, json!({"additionalProperties": false}));
    bound(part.pointer_mut("/properties/file").ok_or("no file part")?, json!({"minLength": 1, "maxLength": max_body}));

    let pull = operation(&mut doc, "/pullCompleted", "post")?;
    bound(param(pull, "top")?, json!({"minimum": 1, "maximum": MAX_TOP, "default": DEFAULT_TOP}));

    // What the layers in front of the client and admin routes answer (see `crate::router`: the
    // token checks and the request timeouts), described once for every operation behind them.
    let error = |description: &str| {
        json!({
            "description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
        })
    };
    let mut client_401 = error(
        "Only with `--client-token`: the `Authorization: Bearer` token is missing or wrong (refused before the body \
         is read).",
    );
    client_401["headers"] = json!({"WWW-Authenticate": {"description": "`Bearer`", "schema": {"type": "string"}}});
    let client_408 = error("The request, its body's upload included, took longer than `--client-request-timeout-ms`.");
    let client = [("/enqueue", "put"), ("/pullCompleted", "post"), ("/jobs/{id}", "get")];
    for (path, method) in client {
        let op = operation(&mut doc, path, method)?;
        op["security"] = if config.client_token.is_some() { json!([{"client_token": []}]) } else { json!([{}]) };
        op["responses"]["401"] = client_401.clone();
        op["responses"]["408"] = client_408.clone();
    }
    let admin_401 = error(
        "No `--admin-token` is configured (the admin routes are disabled), or the `Authorization: Bearer` token is \
         missing or wrong.",
    );
    let admin_408 = error(
        "The request, its body's upload included, took longer than the admin request timeout (long enough for a \
         voter replacement to catch up).",
    );
    let admin = [
        ("/admin/failover", "post"),
        ("/admin/members/replace", "post"),
        ("/admin/workers/{id}/drain", "post"),
        ("/admin/workers/{id}/resume", "post"),
    ];
    for (path, method) in admin {
        let op = operation(&mut doc, path, method)?;
        op["responses"]["401"] = admin_401.clone();
        op["responses"]["408"] = admin_408.clone();
    }
    Ok(doc)
}

/// `method path` in `doc`.
fn operation<'a>(doc: &'a mut Value, path: &str, method: &str) -> Result<&'a mut Value, String> {
    let pointer = format!("/paths/{}/{method}", path.replace('~', "~0").replace('/', "~1"));
    doc.pointer_mut(&pointer).ok_or_else(|| format!("the document has no {method} {path}"))
}

/// The schema of the parameter `name` of `operation`.
fn param<'a>(operation: &'a mut Value, name: &str) -> Result<&'a mut Value, String> {
    operation
        .get_mut("parameters")
        .and_then(Value::as_array_mut)
        .and_then(|params| params.iter_mut().find(|p| p["name"] == name))
        .and_then(|p| p.get_mut("schema"))
        .ok_or_else(|| format!("no parameter {name}"))
}

/// Add `keywords` to `schema`.
fn bound(schema: &mut Value, keywords: Value) {
    if let (Some(schema), Value::Object(keywords)) = (schema.as_object_mut(), keywords) {
        schema.extend(keywords);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use axum::body::Body;
    use axum::http::Request;
    use clap::Parser;
    use tower::ServiceExt;

    use super::*;

    fn config(extra: &[&str]) -> Config {
        let mut args = vec!["coordinator", "--insecure-no-cluster-secret"];
        args.extend(extra);
        Config::parse_from(args)
    }

    /// Every documented operation, as `METHOD /path`.
    fn operations(doc: &Value) -> BTreeSet<String> {
        let mut found = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for method in item.as_object().expect("a path item").keys() {
                found.insert(format!("{} {path}", method.to_uppercase()));
            }
        }
        found
    }

    #[test]
    fn the_document_describes_the_client_status_and_admin_routes_and_nothing_internal() {
        let doc = document_for(&config(&[])).expect("the document");
        assert!(doc["openapi"].as_str().expect("a version").starts_with("3.1"));
        let expected = [
            "PUT /enqueue",
            "POST /pullCompleted",
            "GET /jobs/{id}",
            "GET /cluster",
            "GET /",
            "GET /healthz",
            "GET /readyz",
            "GET /metrics",
            "GET /openapi.json",
            "POST /admin/failover",
            "POST /admin/members/replace",
            "POST /admin/workers/{id}/drain",
            "POST /admin/workers/{id}/resume",
        ];
        assert_eq!(operations(&doc), expected.iter().map(|s| s.to_string()).collect());
        fn no_null(value: &Value, at: &str) {
            match value {
                Value::Null => panic!("null at {at}"),
                Value::Array(items) => items.iter().enumerate().for_each(|(i, v)| no_null(v, &format!("{at}/{i}"))),
                Value::Object(fields) => fields.iter().for_each(|(k, v)| no_null(v, &format!("{at}/{k}"))),
                _ => {}
            }
        }
        no_null(&doc, "");
    }

    #[test]
    fn bounds_come_from_the_constants_and_the_configuration() {
        let doc = document_for(&config(&["--max-iterations", "1234", "--max-body-bytes", "99"])).expect("document");
        let params = |path: &str, method: &str| {
            let op = &doc["paths"][path][method];
            op["parameters"].as_array().expect("parameters").clone()
        };
        let schema_of = |params: &[Value], name: &str| {
            params.iter().find(|p| p["name"] == name).expect("the parameter")["schema"].clone()
        };
        let enqueue = params("/enqueue", "put");
        assert_eq!(schema_of(&enqueue, "iterations")["minimum"], 1);
        assert_eq!(schema_of(&enqueue, "iterations")["maximum"], 1234);
        assert_eq!(schema_of(&enqueue, "Idempotency-Key")["maxLength"], MAX_IDEMPOTENCY_KEY_LEN);
        let body = &doc["paths"]["/enqueue"]["put"]["requestBody"]["content"];
        assert_eq!(body["application/octet-stream"]["schema"]["maxLength"], 99);
        assert_eq!(body["multipart/form-data"]["schema"]["properties"]["file"]["maxLength"], 99);
        let pull = params("/pullCompleted", "post");
        assert_eq!(schema_of(&pull, "top")["maximum"], MAX_TOP);
        assert_eq!(schema_of(&pull, "top")["default"], DEFAULT_TOP);

        let open = &doc["paths"]["/jobs/{id}"]["get"]["security"];
        assert_eq!(open, &json!([{}]), "no --client-token: the client API asks for none");
        let closed = document_for(&config(&["--client-token", "a-client-token-of-length"])).expect("document");
        assert_eq!(closed["paths"]["/jobs/{id}"]["get"]["security"], json!([{"client_token": []}]));
    }

    #[test]
    fn every_error_status_the_edge_gives_is_documented() {
        let doc = document_for(&config(&[])).expect("the document");
        let statuses = |path: &str, method: &str| -> BTreeSet<String> {
            doc["paths"][path][method]["responses"].as_object().expect("responses").keys().cloned().collect()
        };
        let set = |codes: &[&str]| codes.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        assert_eq!(statuses("/enqueue", "put"), set(&["200", "400", "401", "408", "413", "422", "503"]));
        assert_eq!(statuses("/pullCompleted", "post"), set(&["200", "400", "401", "408", "503"]));
        assert_eq!(statuses("/jobs/{id}", "get"), set(&["200", "400", "401", "404", "408", "503"]));
        assert_eq!(statuses("/readyz", "get"), set(&["200", "503"]));
        assert_eq!(statuses("/admin/failover", "post"), set(&["200", "400", "401", "408", "409", "503"]));
        assert_eq!(statuses("/admin/members/replace", "post"), set(&["200", "400", "401", "408", "409", "503"]));
        for verb in ["drain", "resume"] {
            let path = format!("/admin/workers/{{id}}/{verb}");
            assert_eq!(statuses(&path, "post"), set(&["200", "400", "401", "404", "408", "503"]));
        }
        // Every 503 says when to retry.
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for (method, op) in item.as_object().expect("a path item") {
                if let Some(unavailable) = op["responses"].get("503") {
                    assert!(
                        unavailable["headers"].get("Retry-After").is_some(),
                        "{method} {path}: 503 without Retry-After"
                    );
                }
            }
        }
    }

    /// Every documented operation reaches a handler of the real router: none falls through to
    /// the 404 or 405 fallbacks.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_documented_operation_is_routed() {
        let dir = tempfile::TempDir::new().expect("temp dir");
        let data = dir.path().join("c1").display().to_string();
        let config =
            config(&["--id", "1", "--member", "1=coordinator@127.0.0.1:9", "--data-dir", &data, "--initialize"]);
        let shutdown = tokio_util::sync::CancellationToken::new();
        let coordinator = crate::Coordinator::start(config, shutdown.child_token()).await.expect("a coordinator");
        coordinator.app.node.read_barrier().await.expect("a cluster of one leads at once");
        let router = crate::router(coordinator.app);
        let response = router
            .clone()
            .oneshot(Request::get("/openapi.json").body(Body::empty()).expect("request"))
            .await
            .expect("an answer");
        assert_eq!(response.status(), StatusCode::OK);
        let body = axum::body::to_bytes(response.into_body(), 1 << 20).await.expect("the body");
        let served: Value = serde_json::from_slice(&body).expect("JSON");
        for operation in operations(&served) {
            let (method, path) = operation.split_once(' ').expect("METHOD /path");
            let uri = path.replace("{id}", "1");
            let request = Request::builder().method(method).uri(&uri).body(Body::empty()).expect("request");
            let response = router.clone().oneshot(request).await.expect("an answer");
            let status = response.status();
            let body = axum::body::to_bytes(response.into_body(), 1 << 20).await.expect("the body");
            let text = String::from_utf8_lossy(&body);
            assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{operation}: {text}");
            assert!(!text.contains("no such route"), "{operation} is documented but not routed: {text}");
        }
        shutdown.cancel();
    }
}
