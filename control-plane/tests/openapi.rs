//! The API's OpenAPI description, as `GET /v1/openapi.json` serves it:
//! every API route the router has is described, with exactly its methods.
//!
//! The routes are read from the router itself, not from a list kept here:
//! a route added without a description fails this test.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::path::Path;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use serde_json::Value;
use tower::ServiceExt as _;

use warden_control_plane::server::app;
use warden_control_plane::state::{AppState, ServerConfig};

async fn state(dir: &Path, dev: bool) -> AppState {
    let config = ServerConfig {
        data_dir: dir.to_path_buf(),
        database_url: None,
        dev,
        public_url: "http://127.0.0.1:8080".to_owned(),
        ..ServerConfig::default()
    };
    AppState::build(&config).await.unwrap()
}

/// Whether `path` is the JSON API, which the description covers. Not
/// covered: the approvers' page and its assets (HTML, script, style, icon)
/// and the dev issuer (`/dev/...`, an OpenID Provider whose protocol the
/// OpenID and OAuth specifications describe, only with `--dev`).
fn is_api(path: &str) -> bool {
    path == "/healthz" || path.starts_with("/v1/")
}

/// Every path the router routes. axum has no public way to list them; its
/// `Debug` output names each one as `RouteId(n): "/path"` (the test below
/// checks that this finds the routes it must, so a change in that output
/// fails loudly rather than passing with nothing to compare).
fn routed_paths(router: &Router) -> BTreeSet<String> {
    let text = format!("{router:?}");
    text.split("RouteId(")
        .skip(1)
        .filter_map(|entry| {
            let (_, rest) = entry.split_once("): \"")?;
            let (path, _) = rest.split_once('"')?;
            Some(path.to_owned())
        })
        .collect()
}

/// The methods the router answers on `path`: what its 405 to a method no
/// route has lists in `Allow` (a parameter is filled with `x`). HEAD comes
/// with every GET and is left out, as the description leaves it out.
async fn routed_methods(router: &Router, path: &str) -> BTreeSet<String> {
    let concrete: String = path
        .split('/')
        .map(|segment| {
            if segment.starts_with('{') {
                "x"
            } else {
                segment
            }
        })
        .collect::<Vec<_>>()
        .join("/");
    let request = Request::builder()
        .method(Method::from_bytes(b"PROBE").unwrap())
        .uri(&concrete)
        .body(Body::empty())
        .unwrap();
    let response = router.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED, "{path}");
    let allow = response.headers()[header::ALLOW].to_str().unwrap();
    allow
        .split(',')
        .map(str::trim)
        .filter(|method| !method.is_empty() && *method != "HEAD")
        .map(str::to_owned)
        .collect()
}

async fn served_description(router: &Router) -> Value {
    let request = Request::get("/v1/openapi.json")
        .body(Body::empty())
        .unwrap();
    let response = router.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 22)
        .await
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

/// `(path, METHOD)` of every operation in `description`.
fn described_operations(description: &Value) -> BTreeSet<(String, String)> {
    description["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .filter(|key| {
                    [
                        "get", "put", "post", "delete", "options", "head", "patch", "trace",
                    ]
                    .contains(&key.as_str())
                })
                .map(|method| (path.clone(), method.to_uppercase()))
                .collect::<Vec<_>>()
        })
        .collect()
}

#[tokio::test]
async fn every_api_route_is_described_with_its_methods() {
    for dev in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let router = app(state(dir.path(), dev).await);
        let paths = routed_paths(&router);
        // What the reading of the router must find, or it reads nothing.
        for expected in ["/healthz", "/v1/openapi.json", "/approvals"] {
            assert!(paths.contains(expected), "{expected} not in {paths:?}");
        }
        assert_eq!(
            paths.iter().any(|path| path.starts_with("/dev/")),
            dev,
            "{paths:?}"
        );
        let mut routed = BTreeSet::new();
        for path in paths.iter().filter(|path| is_api(path)) {
            for method in routed_methods(&router, path).await {
                routed.insert((path.clone(), method));
            }
        }
        let description = served_description(&router).await;
        assert_eq!(description["openapi"], "3.1.0");
        let described = described_operations(&description);
        let undescribed: Vec<_> = routed.difference(&described).collect();
        assert!(
            undescribed.is_empty(),
            "routes without a description: {undescribed:?}"
        );
        let unrouted: Vec<_> = described.difference(&routed).collect();
        assert!(
            unrouted.is_empty(),
            "described but not routed: {unrouted:?}"
        );
    }
}

#[tokio::test]
async fn the_description_names_each_operations_group_and_callers() {
    let dir = tempfile::tempdir().unwrap();
    let router = app(state(dir.path(), true).await);
    let description = served_description(&router).await;
    let schemes = &description["components"]["securitySchemes"];
    assert_eq!(schemes["person"]["scheme"], "bearer");
    assert_eq!(schemes["gateway"]["in"], "header");
    assert_eq!(schemes["gateway"]["name"], "x-warden-gateway-key");
    // Only these answer anyone; every other operation names its callers.
    let open: BTreeSet<(String, String)> = [
        ("/healthz", "GET"),
        ("/v1/openapi.json", "GET"),
        ("/v1/policy/schema", "GET"),
        ("/v1/ui/config", "GET"),
        ("/v1/login", "GET"),
    ]
    .into_iter()
    .map(|(path, method)| (path.to_owned(), method.to_owned()))
    .collect();
    let tags: Vec<&Value> = description["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|tag| &tag["name"])
        .collect();
    for (path, method) in described_operations(&description) {
        let operation = &description["paths"][&path][method.to_lowercase()];
        // Each in one of the groups the description names.
        let tag = &operation["tags"][0];
        assert!(tags.contains(&tag), "{method} {path}: tag {tag}");
        let security = operation["security"].as_array();
        if open.contains(&(path.clone(), method.clone())) {
            assert!(security.is_none(), "{method} {path}");
            continue;
        }
        let named: Vec<&str> = security
            .unwrap_or_else(|| panic!("{method} {path} names no caller"))
            .iter()
            .flat_map(|requirement| requirement.as_object().unwrap().keys())
            .map(String::as_str)
            .collect();
        assert!(
            named == ["person"] || named == ["gateway"],
            "{method} {path}: {named:?}"
        );
        // A caller without credentials is answered 401, and that is described.
        assert!(operation["responses"]["401"].is_object(), "{method} {path}");
    }
}

/// The schema of query parameter `name` of `GET path`.
fn query_parameter<'a>(description: &'a Value, path: &str, name: &str) -> &'a Value {
    description["paths"][path]["get"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|parameter| parameter["name"] == name && parameter["in"] == "query")
        .map(|parameter| &parameter["schema"])
        .unwrap_or_else(|| panic!("no query parameter {name} on GET {path}"))
}

/// What schemathesis found the description ruling out while the server
/// (rightly) accepts it; each was a failure of `tests/e2e/test_api_schema.py`.
#[tokio::test]
async fn the_description_admits_what_the_server_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let router = app(state(dir.path(), true).await);
    let description = served_description(&router).await;

    // `until=` (an empty form field) is no bound, not a bad time.
    for name in ["since", "until"] {
        let schema = query_parameter(&description, "/v1/sessions", name);
        let choices = schema["oneOf"].as_array().unwrap();
        assert!(
            choices.iter().any(|choice| choice["format"] == "date-time"),
            "{schema}"
        );
        assert!(
            choices.iter().any(|choice| choice["pattern"] == r"^\s*$"),
            "{schema}"
        );
    }

    // Every u64 is described as one, not as `format: int64`, which ends
    // at i64::MAX: `timeout_ms=9223372036854775808` and a session record's
    // `policy_version` of 2^63 were taken, as a u64 is.
    let timeout = query_parameter(&description, "/v1/approvals/{id}/wait", "timeout_ms");
    let schemas = &description["components"]["schemas"];
    for (what, schema) in [
        ("timeout_ms", timeout),
        (
            "SessionRecord.policy_version",
            &schemas["SessionRecord"]["properties"]["policy_version"],
        ),
        (
            "ApprovalRequest.policy_version",
            &schemas["ApprovalRequest"]["properties"]["policy_version"],
        ),
    ] {
        assert_eq!(schema["format"], "uint64", "{what}: {schema}");
        assert_eq!(schema["minimum"], 0, "{what}: {schema}");
        assert!(schema.get("maximum").is_none(), "{what}: {schema}");
    }
}
