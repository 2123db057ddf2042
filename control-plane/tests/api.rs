//! End-to-end tests of the HTTP API: in-process through `app(state)`, and
//! over a real socket through `run`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashSet;
use std::path::Path;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jwt_simple::prelude::{
    ECDSAP256PublicKeyLike, ES256PublicKey, Ed25519PublicKey, EdDSAPublicKeyLike, JWTClaims,
    RS256PublicKey, RSAPublicKeyLike, Token, VerificationOptions,
};
use serde_json::{json, Map, Value};
use tower::ServiceExt as _;

use warden_control_plane::client::{request_token, ClientError};
use warden_control_plane::clock::{Clock, ManualClock};
use warden_control_plane::issuer::{SigningAlg, TokenRequest};
use warden_control_plane::server::{app, run};
use warden_control_plane::state::{AppState, ServerConfig};

const PUBLIC_URL: &str = "http://127.0.0.1:8080";
const ISSUER: &str = "http://127.0.0.1:8080/dev";

fn config(dir: &Path, dev: bool) -> ServerConfig {
    ServerConfig {
        data_dir: dir.to_path_buf(),
        database_url: None,
        dev,
        public_url: PUBLIC_URL.to_owned(),
        ..ServerConfig::default()
    }
}

async fn state(dir: &Path, dev: bool) -> AppState {
    AppState::build(&config(dir, dev)).await.unwrap()
}

async fn send(app: &Router, request: Request<Body>) -> (StatusCode, Value) {
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&bytes)))
    };
    (status, body)
}

async fn get(app: &Router, path: &str) -> (StatusCode, Value) {
    let request = Request::get(path).body(Body::empty()).unwrap();
    send(app, request).await
}

async fn post_json(app: &Router, path: &str, body: &Value) -> (StatusCode, Value) {
    let request = Request::post(path)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    send(app, request).await
}

fn assert_error(status: StatusCode, body: &Value, expected: StatusCode, code: &str) {
    assert_eq!(status, expected, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

fn b64(value: &Value) -> Vec<u8> {
    URL_SAFE_NO_PAD.decode(value.as_str().unwrap()).unwrap()
}

/// The JWK of `alg` in `jwks`.
fn jwk<'a>(jwks: &'a Value, alg: &str) -> &'a Value {
    jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|key| key["alg"] == alg)
        .unwrap_or_else(|| panic!("no {alg} key in {jwks}"))
}

/// Verifies `token` with the public key rebuilt from the JWKS (never from
/// the private key), the way a relying party would.
fn verify(
    jwks: &Value,
    alg: SigningAlg,
    token: &str,
    audience: &str,
) -> JWTClaims<Map<String, Value>> {
    let key = jwk(jwks, alg.as_str());
    let kid = key["kid"].as_str().unwrap();
    assert_eq!(key["use"], "sig");
    let metadata = Token::decode_metadata(token).unwrap();
    assert_eq!(metadata.algorithm(), alg.as_str());
    assert_eq!(metadata.key_id(), Some(kid));

    let options = VerificationOptions {
        allowed_issuers: Some(HashSet::from([ISSUER.to_owned()])),
        allowed_audiences: Some(HashSet::from([audience.to_owned()])),
        ..VerificationOptions::default()
    };
    // Also check the JWK against jwt-simple's strict JWK import.
    let jwk_text = key.to_string();
    match alg {
        SigningAlg::RS256 => {
            assert_eq!(key["kty"], "RSA");
            let public = RS256PublicKey::from_components(&b64(&key["n"]), &b64(&key["e"])).unwrap();
            assert_eq!(b64(&key["e"]), [1, 0, 1]);
            assert_eq!(b64(&key["n"]).len(), 256, "2048-bit modulus");
            RS256PublicKey::from_jwk(&jwk_text)
                .unwrap()
                .verify_token::<Map<String, Value>>(token, Some(options.clone()))
                .unwrap();
            public.verify_token(token, Some(options)).unwrap()
        }
        SigningAlg::ES256 => {
            assert_eq!(key["kty"], "EC");
            assert_eq!(key["crv"], "P-256");
            let mut point = vec![0x04];
            point.extend(b64(&key["x"]));
            point.extend(b64(&key["y"]));
            assert_eq!(point.len(), 65);
            let public = ES256PublicKey::from_bytes(&point).unwrap();
            ES256PublicKey::from_jwk(&jwk_text)
                .unwrap()
                .verify_token::<Map<String, Value>>(token, Some(options.clone()))
                .unwrap();
            public.verify_token(token, Some(options)).unwrap()
        }
        SigningAlg::EdDSA => {
            assert_eq!(key["kty"], "OKP");
            assert_eq!(key["crv"], "Ed25519");
            let public = Ed25519PublicKey::from_bytes(&b64(&key["x"])).unwrap();
            Ed25519PublicKey::from_jwk(&jwk_text)
                .unwrap()
                .verify_token::<Map<String, Value>>(token, Some(options.clone()))
                .unwrap();
            public.verify_token(token, Some(options)).unwrap()
        }
    }
}

#[tokio::test]
async fn health_reports_sqlite_and_creates_the_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("nested").join(".warden");
    let state = AppState::build(&config(&data_dir, false)).await.unwrap();
    assert!(data_dir.join("warden.db").is_file());
    // Without --dev no keys are created.
    assert!(!data_dir.join("dev-issuer").exists());

    let app = app(state.clone());
    let (status, body) = get(&app, "/healthz").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"status": "ok", "database": "sqlite"}));

    // A database that stopped answering makes the health check fail, in the
    // usual error shape and without details.
    state.store().close().await;
    let (status, body) = get(&app, "/healthz").await;
    assert_error(
        status,
        &body,
        StatusCode::SERVICE_UNAVAILABLE,
        "database_unavailable",
    );
    assert_eq!(body["error"]["message"], "the database is not available");
}

#[tokio::test]
async fn unknown_paths_and_methods_answer_json_errors() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(state(dir.path(), false).await);

    let (status, body) = get(&app, "/nope").await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");

    let request = Request::builder()
        .method(Method::DELETE)
        .uri("/healthz")
        .body(Body::empty())
        .unwrap();
    let (status, body) = send(&app, request).await;
    assert_error(
        status,
        &body,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    );
}

#[tokio::test]
async fn dev_routes_are_absent_without_dev() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(state(dir.path(), false).await);
    for path in ["/dev/.well-known/openid-configuration", "/dev/jwks.json"] {
        let (status, body) = get(&app, path).await;
        assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    }
    let (status, body) = post_json(&app, "/dev/token", &json!({"sub": "alice"})).await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
}

#[tokio::test]
async fn discovery_document_points_at_the_dev_issuer() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(state(dir.path(), true).await);
    let (status, body) = get(&app, "/dev/.well-known/openid-configuration").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["issuer"], ISSUER);
    assert_eq!(body["jwks_uri"], format!("{ISSUER}/jwks.json"));
    // The code flow's token endpoint (the approvers' page); minting stays at /dev/token.
    assert_eq!(body["token_endpoint"], format!("{ISSUER}/oauth/token"));
    assert_eq!(body["warden_mint_endpoint"], format!("{ISSUER}/token"));
    assert_eq!(
        body["id_token_signing_alg_values_supported"],
        json!(["RS256", "ES256", "EdDSA"])
    );
    assert!(body["response_types_supported"].is_array());
    assert!(body["subject_types_supported"].is_array());
}

#[tokio::test]
async fn jwks_has_three_distinct_keys() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(state(dir.path(), true).await);
    let response = app
        .clone()
        .oneshot(Request::get("/dev/jwks.json").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()[header::CONTENT_TYPE],
        "application/jwk-set+json"
    );
    let (_, jwks) = get(&app, "/dev/jwks.json").await;
    let keys = jwks["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 3);
    let kids: HashSet<&str> = keys.iter().map(|k| k["kid"].as_str().unwrap()).collect();
    assert_eq!(kids.len(), 3, "{jwks}");
    for key in keys {
        let kid = key["kid"].as_str().unwrap();
        assert_eq!(kid.len(), 16);
        assert!(kid.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(key["use"], "sig");
        // Public material only.
        assert!(key.get("d").is_none() && key.get("p").is_none(), "{key}");
    }
    let algs: Vec<&str> = keys.iter().map(|k| k["alg"].as_str().unwrap()).collect();
    assert_eq!(algs, ["RS256", "ES256", "EdDSA"]);
}

#[tokio::test]
async fn minted_tokens_verify_against_the_jwks() {
    let dir = tempfile::tempdir().unwrap();
    // Standing at the real time, which the checks below read.
    let time = ManualClock::at(Clock::system().now_ms());
    let config = ServerConfig {
        clock: time.clock(),
        ..config(dir.path(), true)
    };
    let app = app(AppState::build(&config).await.unwrap());
    let (_, jwks) = get(&app, "/dev/jwks.json").await;
    let now = u64::try_from(time.now_ms() / 1000).unwrap();

    for alg in SigningAlg::ALL {
        let (status, body) = post_json(
            &app,
            "/dev/token",
            &json!({
                "sub": "alice",
                "groups": ["engineering", "finance"],
                "email": "alice@example.com",
                "ttl_seconds": 600,
                "alg": alg.as_str(),
                "claims": {"tenant": "acme", "tier": 3},
            }),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{alg}: {body}");
        let token = body["token"].as_str().unwrap();
        let claims = verify(&jwks, alg, token, "warden");
        assert_eq!(claims.subject.as_deref(), Some("alice"));
        assert_eq!(claims.issuer.as_deref(), Some(ISSUER));
        assert_eq!(claims.custom["groups"], json!(["engineering", "finance"]));
        assert_eq!(claims.custom["email"], "alice@example.com");
        assert_eq!(claims.custom["tenant"], "acme");
        assert_eq!(claims.custom["tier"], 3);
        let exp = claims.expires_at.unwrap().as_secs();
        let iat = claims.issued_at.unwrap().as_secs();
        assert_eq!(iat, now, "dated by the server's clock");
        assert_eq!(exp, iat + 600);
        assert_eq!(claims.invalid_before.unwrap().as_secs(), iat);
    }

    // Defaults: RS256, audience `warden`, one hour, no email, empty groups.
    let (status, body) = post_json(&app, "/dev/token", &json!({"sub": "bob"})).await;
    assert_eq!(status, StatusCode::OK);
    let claims = verify(
        &jwks,
        SigningAlg::RS256,
        body["token"].as_str().unwrap(),
        "warden",
    );
    assert_eq!(
        claims.expires_at.unwrap().as_secs() - claims.issued_at.unwrap().as_secs(),
        3600
    );
    assert!(!claims.custom.contains_key("email"));
    assert_eq!(claims.custom["groups"], json!([]));

    // A custom audience is honoured, and a token for another audience is refused.
    let (_, body) = post_json(
        &app,
        "/dev/token",
        &json!({"sub": "carol", "audience": "billing", "alg": "EdDSA"}),
    )
    .await;
    let token = body["token"].as_str().unwrap();
    verify(&jwks, SigningAlg::EdDSA, token, "billing");
    let public = Ed25519PublicKey::from_bytes(&b64(&jwk(&jwks, "EdDSA")["x"])).unwrap();
    let wrong_audience = VerificationOptions {
        allowed_audiences: Some(HashSet::from(["warden".to_owned()])),
        ..VerificationOptions::default()
    };
    assert!(public
        .verify_token::<Map<String, Value>>(token, Some(wrong_audience))
        .is_err());
}

#[tokio::test]
async fn issuer_and_expiry_can_be_overridden_for_negative_tests() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(state(dir.path(), true).await);
    let (_, jwks) = get(&app, "/dev/jwks.json").await;
    let public = ES256PublicKey::from_jwk(&jwk(&jwks, "ES256").to_string()).unwrap();

    let (status, body) = post_json(
        &app,
        "/dev/token",
        &json!({"sub": "mallory", "alg": "ES256", "issuer": "https://evil.example"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let claims = public
        .verify_token::<Map<String, Value>>(body["token"].as_str().unwrap(), None)
        .unwrap();
    assert_eq!(claims.issuer.as_deref(), Some("https://evil.example"));

    // An extra `exp` claim replaces the generated one: an expired token.
    let (status, body) = post_json(
        &app,
        "/dev/token",
        &json!({"sub": "mallory", "alg": "ES256", "claims": {"exp": 1000}}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(public
        .verify_token::<Map<String, Value>>(body["token"].as_str().unwrap(), None)
        .is_err());
}

#[tokio::test]
async fn bad_token_requests_are_400() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(state(dir.path(), true).await);
    let cases = [
        json!({"sub": ""}),
        json!({"sub": "   "}),
        json!({"sub": "alice", "ttl_seconds": 0}),
        json!({"sub": "alice", "ttl_seconds": 30 * 24 * 3600 + 1}),
        json!({"sub": "alice", "ttl_seconds": -5}),
        json!({"sub": "alice", "alg": "HS256"}),
        json!({"sub": "alice", "groups": "engineering"}),
        json!({"sub": "alice", "groups": [""]}),
        json!({"sub": "alice", "audience": ""}),
        json!({"sub": "alice", "claims": ["not", "an", "object"]}),
        json!({"sub": "alice", "group": ["typo"]}),
        json!({"groups": ["no-sub"]}),
        json!(["not an object"]),
    ];
    for case in cases {
        let (status, body) = post_json(&app, "/dev/token", &case).await;
        assert_error(status, &body, StatusCode::BAD_REQUEST, "bad_request");
    }

    let request = Request::post("/dev/token")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from("{not json"))
        .unwrap();
    let (status, body) = send(&app, request).await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "bad_request");

    let request = Request::post("/dev/token")
        .body(Body::from(r#"{"sub":"alice"}"#))
        .unwrap();
    let (status, body) = send(&app, request).await;
    assert_error(
        status,
        &body,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    );
}

#[tokio::test]
async fn keys_persist_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let first = state(dir.path(), true).await;
    let (_, jwks_before) = get(&app(first.clone()), "/dev/jwks.json").await;
    let (_, body) = post_json(&app(first.clone()), "/dev/token", &json!({"sub": "alice"})).await;
    let token = body["token"].as_str().unwrap().to_owned();
    first.store().close().await;
    drop(first);

    let second = state(dir.path(), true).await;
    let (_, jwks_after) = get(&app(second), "/dev/jwks.json").await;
    assert_eq!(jwks_before, jwks_after);
    // A token minted before the restart still verifies against the new JWKS.
    verify(&jwks_after, SigningAlg::RS256, &token, "warden");
}

#[tokio::test]
async fn real_server_serves_and_mints_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let base = format!("http://{addr}");
    let mut config = config(dir.path(), true);
    config.public_url = base.clone();
    let state = AppState::build(&config).await.unwrap();

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(run(listener, state, async {
        let _ = stopped.await;
    }));

    let client = reqwest::Client::new();
    let health: Value = client
        .get(format!("{base}/healthz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health, json!({"status": "ok", "database": "sqlite"}));

    let discovery: Value = client
        .get(format!("{base}/dev/.well-known/openid-configuration"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(discovery["issuer"], format!("{base}/dev"));
    let jwks: Value = client
        .get(discovery["jwks_uri"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();

    // The CLI's client, as `warden token --sub alice --groups engineering --alg ES256` uses it.
    let request = TokenRequest {
        sub: "alice".into(),
        groups: vec!["engineering".into()],
        alg: Some(SigningAlg::ES256),
        ..TokenRequest::default()
    };
    let token = request_token(&format!("{base}/"), &request).await.unwrap();
    let public = ES256PublicKey::from_jwk(&jwk(&jwks, "ES256").to_string()).unwrap();
    let options = VerificationOptions {
        allowed_issuers: Some(HashSet::from([format!("{base}/dev")])),
        allowed_audiences: Some(HashSet::from(["warden".to_owned()])),
        ..VerificationOptions::default()
    };
    let claims = public
        .verify_token::<Map<String, Value>>(&token, Some(options))
        .unwrap();
    assert_eq!(claims.subject.as_deref(), Some("alice"));
    assert_eq!(claims.custom["groups"], json!(["engineering"]));

    // Validation errors come back as the server's message.
    let error = request_token(
        &base,
        &TokenRequest {
            sub: String::new(),
            ..TokenRequest::default()
        },
    )
    .await
    .unwrap_err();
    match error {
        ClientError::Rejected { status, message } => {
            assert_eq!(status, 400);
            assert!(message.contains("sub"), "{message}");
        }
        other => panic!("unexpected error {other}"),
    }

    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
    // After a graceful shutdown nothing listens any more.
    assert!(client.get(format!("{base}/healthz")).send().await.is_err());
}

#[tokio::test]
async fn token_client_reports_a_server_without_dev_mode() {
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let state = state(dir.path(), false).await;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(run(listener, state, async {
        let _ = stopped.await;
    }));

    let request = TokenRequest {
        sub: "alice".into(),
        ..TokenRequest::default()
    };
    let error = request_token(&base, &request).await.unwrap_err();
    assert!(matches!(error, ClientError::NotDevMode { .. }), "{error}");
    assert!(error.to_string().contains("not in dev mode"));

    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}

/// The approvers' page and the dev issuer's sign-in over HTTP (moved from
/// `web.rs`: they drive the whole router).
mod web_page {
    use super::*;
    use axum::http::HeaderMap;
    use reqwest::Url;
    use std::collections::HashMap;
    use warden_control_plane::web::UiConfig;

    const PUBLIC: &str = "http://127.0.0.1:8080";
    const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
    const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";

    async fn server(dir: &tempfile::TempDir, config: ServerConfig) -> Router {
        let config = ServerConfig {
            data_dir: dir.path().to_path_buf(),
            public_url: PUBLIC.to_owned(),
            ..config
        };
        app(AppState::build(&config).await.unwrap())
    }

    async fn call(router: &Router, request: Request<Body>) -> (StatusCode, HeaderMap, String) {
        let response = router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, headers, String::from_utf8(body.to_vec()).unwrap())
    }

    fn get(uri: &str) -> Request<Body> {
        Request::get(uri).body(Body::empty()).unwrap()
    }

    fn form(uri: &str, pairs: &[(&str, &str)]) -> Request<Body> {
        let mut url = Url::parse("http://x/").unwrap();
        url.query_pairs_mut().extend_pairs(pairs);
        Request::post(uri)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Body::from(url.query().unwrap_or_default().to_owned()))
            .unwrap()
    }

    fn authorize(redirect: &str) -> Vec<(&'static str, String)> {
        vec![
            ("response_type", "code".into()),
            ("client_id", "warden-approvals".into()),
            ("redirect_uri", redirect.into()),
            ("state", "st\"<x>".into()),
            ("nonce", "n1".into()),
            ("code_challenge", CHALLENGE.into()),
            ("code_challenge_method", "S256".into()),
            ("scope", "openid email".into()),
        ]
    }

    fn query(pairs: &[(&str, String)]) -> String {
        let mut url = Url::parse("http://x/").unwrap();
        url.query_pairs_mut()
            .extend_pairs(pairs.iter().map(|(k, v)| (*k, v.as_str())));
        url.query().unwrap_or_default().to_owned()
    }

    #[tokio::test]
    async fn the_page_and_the_dev_code_flow_over_http() {
        let dir = tempfile::tempdir().unwrap();
        let router = server(
            &dir,
            ServerConfig {
                dev: true,
                ..ServerConfig::default()
            },
        )
        .await;

        let (status, headers, body) = call(&router, get("/approvals")).await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains("/approvals/app.js"));
        let csp = headers["content-security-policy"].to_str().unwrap();
        assert!(csp.starts_with("default-src 'self'"), "{csp}");
        assert!(csp.contains("frame-ancestors 'none'") && !csp.contains("unsafe"));
        assert_eq!(headers["referrer-policy"], "no-referrer");
        // The sessions view is the same page under the same headers.
        for path in ["/sessions", "/sessions/", "/keys", "/keys/"] {
            let (status, headers, sessions) = call(&router, get(path)).await;
            assert_eq!(status, StatusCode::OK, "{path}");
            assert_eq!(sessions, body, "{path}");
            assert_eq!(headers["content-security-policy"], csp, "{path}");
            assert_eq!(headers["x-frame-options"], "DENY", "{path}");
        }
        let (status, headers, _) = call(&router, get("/approvals/app.js")).await;
        assert_eq!(status, StatusCode::OK);
        assert!(headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/javascript"));

        let (status, _, body) = call(&router, get("/v1/ui/config")).await;
        assert_eq!(status, StatusCode::OK);
        let config: UiConfig = serde_json::from_str(&body).unwrap();
        assert_eq!(config.issuer, format!("{PUBLIC}/dev"));
        assert_eq!(config.client_id, "warden-approvals");
        assert_eq!(
            config.authorization_endpoint,
            format!("{PUBLIC}/dev/authorize")
        );
        assert_eq!(config.token_endpoint, format!("{PUBLIC}/dev/oauth/token"));
        assert_eq!(
            config.redirect_uri.as_deref(),
            Some("http://127.0.0.1:8080/approvals")
        );

        // The form carries the request, escaped; a foreign redirect is refused with a page.
        let redirect = format!("{PUBLIC}/approvals");
        let pairs = authorize(&redirect);
        let (status, headers, body) =
            call(&router, get(&format!("/dev/authorize?{}", query(&pairs)))).await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains("value=\"st&quot;&lt;x&gt;\""), "{body}");
        assert!(headers["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("form-action 'self'"));
        let mut evil = authorize("http://evil.example/approvals");
        let (status, headers, _) =
            call(&router, get(&format!("/dev/authorize?{}", query(&evil)))).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(!headers.contains_key("location"));
        evil.push(("sub", "mallory".into()));
        let evil: Vec<(&str, &str)> = evil.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (status, headers, _) = call(&router, form("/dev/authorize", &evil)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(!headers.contains_key("location"));

        // Sign in: a 303 to the page with a code and the state.
        let mut signin = pairs.clone();
        signin.push(("sub", "alice".into()));
        signin.push(("groups", "security, finance".into()));
        let signin: Vec<(&str, &str)> = signin.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (status, headers, _) = call(&router, form("/dev/authorize", &signin)).await;
        assert_eq!(status, StatusCode::SEE_OTHER);
        let location = Url::parse(headers["location"].to_str().unwrap()).unwrap();
        assert_eq!(location.path(), "/approvals");
        let got: HashMap<String, String> = location.query_pairs().into_owned().collect();
        assert_eq!(got["state"], "st\"<x>");
        let code = got["code"].clone();

        let exchange = [
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", redirect.as_str()),
            ("client_id", "warden-approvals"),
            ("code_verifier", VERIFIER),
        ];
        let (status, headers, body) = call(&router, form("/dev/oauth/token", &exchange)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(headers["cache-control"], "no-store");
        let tokens: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(tokens["token_type"], "Bearer");
        // The access token is accepted by the API.
        let request = Request::get("/v1/approvals?status=pending")
            .header(
                "authorization",
                format!("Bearer {}", tokens["access_token"].as_str().unwrap()),
            )
            .body(Body::empty())
            .unwrap();
        let (status, _, body) = call(&router, request).await;
        assert_eq!(status, StatusCode::OK, "{body}");

        let (status, _, body) = call(&router, form("/dev/oauth/token", &exchange)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(
            serde_json::from_str::<Value>(&body).unwrap()["error"],
            "invalid_grant"
        );
        let json_body = Request::post("/dev/oauth/token")
            .header("content-type", "application/json")
            .body(Body::from("{}"))
            .unwrap();
        let (status, _, body) = call(&router, json_body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(
            serde_json::from_str::<Value>(&body).unwrap()["error"],
            "invalid_request"
        );
    }

    #[tokio::test]
    async fn without_dev_there_is_no_sign_in_form_and_the_config_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let router = server(
            &dir,
            ServerConfig {
                issuers: vec!["https://idp.invalid".into()],
                ..ServerConfig::default()
            },
        )
        .await;
        let (status, _, _) = call(&router, get("/dev/authorize")).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, _, body) = call(&router, get("/v1/ui/config")).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("sign_in_not_configured"), "{body}");
        let (status, _, _) = call(&router, get("/approvals")).await;
        assert_eq!(status, StatusCode::OK);

        // An unreachable page issuer: a clear 503, not a hang.
        let dir = tempfile::tempdir().unwrap();
        let router = server(
            &dir,
            ServerConfig {
                issuers: vec!["https://idp.invalid".into()],
                ui_issuer: Some("http://127.0.0.1:9".into()),
                ..ServerConfig::default()
            },
        )
        .await;
        let (status, _, body) = call(&router, get("/v1/ui/config")).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("issuer_unavailable"), "{body}");
    }
}

#[tokio::test]
async fn whoami_answers_the_verified_caller_and_login_names_the_idp() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(state(dir.path(), true).await);
    let (status, body) = get(&app, "/v1/whoami").await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "unauthorized");
    let (status, body) = get(&app, "/v1/login").await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "login_not_configured");

    let (status, minted) = post_json(
        &app,
        "/dev/token",
        &json!({"sub": "alice", "groups": ["finance"], "email": "alice@example.com"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{minted}");
    let token = minted["token"].as_str().unwrap();
    let request = Request::get("/v1/whoami")
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Body::empty())
        .unwrap();
    let (status, body) = send(&app, request).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["identity"]["subject"], "alice");
    assert_eq!(body["identity"]["email"], "alice@example.com");
    assert_eq!(body["identity"]["groups"], json!(["finance"]));
    assert_eq!(body["identity"]["issuer"], ISSUER);
    assert_eq!(body["identity"]["admin"], false);
    assert!(body["policy"].is_null(), "no version is active: {body}");

    let mut with_login = config(dir.path(), true);
    with_login.cli_login = Some(warden_control_plane::state::LoginSettings {
        issuer: "https://login.example.com".into(),
        client_id: "warden-cli".into(),
        scope: None,
        resources: vec!["urn:warden:gateway".into()],
    });
    let app = app_with(with_login).await;
    let (status, body) = get(&app, "/v1/login").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        json!({"issuer": "https://login.example.com", "client_id": "warden-cli", "resources": ["urn:warden:gateway"]})
    );
}

async fn app_with(config: ServerConfig) -> Router {
    app(AppState::build(&config).await.unwrap())
}
