//! The policy and approval API over real HTTP, against SQLite and, when
//! `WARDEN_TEST_DATABASE_URL` names a PostgreSQL server (scripts/postgres.sh
//! start DIR prints one), against PostgreSQL too: every test runs on both.
//! Each PostgreSQL test gets its own fresh database.
//!
//! The server runs in-process (`server::run` on 127.0.0.1:0); the CLI tests
//! run the built `warden` binary against it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use warden_control_plane::approvals::WAIT_POLL;
use warden_control_plane::clock::ManualClock;
use warden_control_plane::issuer::{Keys, SigningAlg, TokenRequest, DEV_KEY_DIR, PUBLISH_AHEAD_MS};
use warden_control_plane::saml::SamlSettings;
use warden_control_plane::server::run;
use warden_control_plane::state::{AppState, ServerConfig};
use warden_control_plane::user_auth::{MAX_STALE, REFRESH};
use warden_control_plane::webhook::WebhookFormat;

const SECRET: &str = "gateway-secret-for-tests-0123456789";

/// Where the tests' manual clocks start: 2026-01-02T03:04:05Z.
const T0_MS: i64 = 1_767_323_045_000;

/// A failure detector only, never what a test measures: far longer than
/// anything here takes on a loaded machine, so a stalled server fails the
/// test instead of hanging it.
const STALLED: Duration = Duration::from_secs(120);

const POLICY_V1: &str = "version: 1\ngroups:\n  engineering:\n    models: [\"*\"]\nrules:\n  - name: personal-data\n    detect: email\n    action: mask\n    level: internal\n";
const POLICY_V2: &str = "version: 1\ngroups:\n  engineering:\n    models: [\"gpt-4o-mini\"]\nrules:\n  - name: personal-data\n    detect: email\n    action: block\n";
/// Line 7 holds the broken regex; line 10 an unknown detector.
const POLICY_BAD: &str = "version: 1\ngroups:\n  engineering:\n    models: [\"*\"]\nrules:\n  - name: ids\n    regex: '(unclosed'\n    action: mask\n  - name: nothing\n    detect: no_such_detector\n    action: mask\n";

#[derive(Clone, Copy, Debug)]
enum Backend {
    Sqlite,
    Postgres,
}

struct Server {
    base: String,
    state: AppState,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    /// The server loop, when it runs on the test's runtime.
    serving: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A fresh PostgreSQL database on the test server, or None (with a notice)
/// when `WARDEN_TEST_DATABASE_URL` is not set.
async fn fresh_postgres() -> Option<String> {
    let Ok(url) = std::env::var("WARDEN_TEST_DATABASE_URL") else {
        // `make test` starts a server: there, a missing one is a failure.
        assert!(
            std::env::var_os("WARDEN_REQUIRE_POSTGRES").is_none(),
            "WARDEN_TEST_DATABASE_URL is not set, and scripts/test.sh requires PostgreSQL"
        );
        eprintln!("NOTICE: WARDEN_TEST_DATABASE_URL is not set; skipping the PostgreSQL variant (scripts/postgres.sh start DIR prints one)");
        return None;
    };
    use sqlx::Connection as _;
    let mut admin = sqlx::PgConnection::connect(&url).await.unwrap();
    let name = format!("warden_test_{}", rand_hex());
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .unwrap();
    let _ = admin.close().await;
    let (base, _) = url.rsplit_once('/').unwrap();
    Some(format!("{base}/{name}"))
}

/// The dev issuer's keys, generated once per test binary (RSA key generation
/// in a debug build takes seconds) and copied into every server's data dir.
fn dev_keys() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        Keys::load_or_generate(&dir.path().join(DEV_KEY_DIR)).unwrap();
        dir
    })
    .path()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

fn rand_hex() -> String {
    warden_control_plane::approvals::new_id()[4..20].to_owned()
}

async fn start(backend: Backend, tweak: impl FnOnce(&mut ServerConfig)) -> Option<Server> {
    let database_url = match backend {
        Backend::Sqlite => None,
        Backend::Postgres => Some(fresh_postgres().await?),
    };
    Some(start_on(database_url, tweak).await)
}

/// The tests' settings for a server at `base` with its data in `dir`
/// (the dev issuer's keys copied there).
fn test_config(dir: &Path, base: &str, database_url: Option<String>) -> ServerConfig {
    copy_dir(&dev_keys().join(DEV_KEY_DIR), &dir.join(DEV_KEY_DIR));
    ServerConfig {
        data_dir: dir.to_path_buf(),
        database_url,
        dev: true,
        public_url: base.to_owned(),
        gateway_secret: Some(SECRET.to_owned()),
        ..ServerConfig::default()
    }
}

/// A server on `database_url` (None: SQLite in its own data dir).
async fn start_on(database_url: Option<String>, tweak: impl FnOnce(&mut ServerConfig)) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let mut config = test_config(dir.path(), &base, database_url);
    tweak(&mut config);
    let state = AppState::build(&config).await.unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let serving = tokio::spawn(run(listener, state.clone(), async move {
        let _ = stopped.await;
    }));
    Server {
        base,
        state,
        http: reqwest::Client::new(),
        _dir: dir,
        stop: Some(stop),
        serving: Some(serving),
    }
}

impl Server {
    /// Stops serving and returns once the port is closed.
    async fn shut_down(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(serving) = self.serving.take() {
            tokio::time::timeout(STALLED, serving)
                .await
                .expect("the server stops")
                .unwrap()
                .unwrap();
        }
    }

    /// A gateway's `wait` on approval `id`, in the background: see [`answered`].
    fn wait(&self, id: &str, timeout_ms: u64) -> tokio::task::JoinHandle<Value> {
        let request = self
            .http
            .get(format!(
                "{}/v1/approvals/{id}/wait?timeout_ms={timeout_ms}",
                self.base
            ))
            .header("x-warden-gateway-key", SECRET);
        tokio::spawn(async move {
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            response.json::<Value>().await.unwrap()
        })
    }

    fn token(&self, sub: &str, groups: &[&str]) -> String {
        self.state
            .dev_issuer()
            .unwrap()
            .mint(&TokenRequest {
                sub: sub.into(),
                groups: groups.iter().map(|g| (*g).to_owned()).collect(),
                email: Some(format!("{sub}@example.com")),
                ..TokenRequest::default()
            })
            .unwrap()
    }

    fn admin(&self) -> String {
        self.token("root", &["warden-admins"])
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        auth: Auth<'_>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        request = match auth {
            Auth::None => request,
            Auth::Bearer(token) => request.bearer_auth(token),
            Auth::Gateway(key) => request.header("x-warden-gateway-key", key),
        };
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"))
        };
        (status, value)
    }

    async fn get(&self, path: &str, auth: Auth<'_>) -> (StatusCode, Value) {
        self.send(reqwest::Method::GET, path, auth, None).await
    }

    async fn post(&self, path: &str, auth: Auth<'_>, body: Value) -> (StatusCode, Value) {
        self.send(reqwest::Method::POST, path, auth, Some(body))
            .await
    }

    /// `token`'s approval of approval `id`, with no reason.
    async fn approve(&self, id: &str, token: &str) -> (StatusCode, Value) {
        self.post(
            &format!("/v1/approvals/{id}/approve"),
            Auth::Bearer(token),
            json!({}),
        )
        .await
    }

    async fn publish(&self, document: &str, message: &str, activate: bool) -> Value {
        let (status, body) = self
            .post(
                "/v1/policies",
                Auth::Bearer(&self.admin()),
                json!({"document": document, "message": message, "activate": activate}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body
    }
}

/// What `task` ended with; one still running after [`STALLED`] fails the test.
async fn answered<T>(task: tokio::task::JoinHandle<T>, what: &str) -> T {
    tokio::time::timeout(STALLED, task)
        .await
        .unwrap_or_else(|_| panic!("no answer: {what}"))
        .unwrap()
}

#[derive(Clone, Copy)]
enum Auth<'a> {
    None,
    Bearer(&'a str),
    Gateway(&'a str),
}

fn assert_code(status: StatusCode, body: &Value, expected: StatusCode, code: &str) {
    assert_eq!(status, expected, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
}

/// Runs `$name` once per backend.
macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() { super::$name(super::Backend::Sqlite).await })*
        }
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() { super::$name(super::Backend::Postgres).await })*
        }
    };
}

on_both!(
    policies_publish_list_show_activate_rollback,
    a_watching_gateway_gets_the_next_version_as_it_is_activated,
    invalid_policies_are_refused_with_lines,
    gateways_need_the_secret_and_people_a_token,
    approval_lifecycle_and_refusals,
    concurrent_consumes_have_one_winner,
    approvals_expire,
    wait_returns_on_decision,
    webhook_is_delivered,
    cli_commands,
    request_bodies_are_json_objects,
    text_with_nul_is_stored_alike_or_refused,
    machine_keys_are_issued_scoped_served_by_hash_rotated_and_revoked,
    saml_issuer_keys_rotate_without_failing_a_token,
    saml_sign_in_and_refresh_work_across_replicas,
);

/// The gateways' view of the active policy: (ETag, the served keys).
async fn served_keys(server: &Server) -> (String, Vec<Value>) {
    let (etag, body) = server.active().await;
    (etag, body["machine_keys"].as_array().unwrap().clone())
}

fn sha256_hex(text: &str) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(text.as_bytes()))
}

/// Machine keys: an admin issues to anyone with any groups; a person only
/// to themself, with their own groups, for a bounded life. The key is in
/// the issuing answer only; gateways get its hash (and the ETag changes),
/// a watch wakes on a revocation, listings never show a key or a hash, and
/// a rotation keeps the old key for exactly the overlap asked.
async fn machine_keys_are_issued_scoped_served_by_hash_rotated_and_revoked(backend: Backend) {
    let Some(server) = start(backend, |_| {}).await else {
        return;
    };
    server.publish(POLICY_V1, "first", true).await;
    let (etag0, keys) = served_keys(&server).await;
    assert!(keys.is_empty());
    let admin = server.admin();
    let alice = server.token("alice", &["engineering"]);
    let bob = server.token("bob", &["engineering"]);

    let (status, issued) = server
        .post(
            "/v1/keys",
            Auth::Bearer(&admin),
            json!({"name": "nightly", "owner": "svc-nightly", "groups": ["engineering"], "models": ["gpt-4o*"], "expires_in_days": 200}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{issued}");
    let key = issued["key"].as_str().unwrap().to_owned();
    let id = issued["id"].as_str().unwrap().to_owned();
    assert!(key.starts_with(&format!("wdk_{id}_")), "{key}");
    assert_eq!(
        (issued["owner"].as_str(), issued["status"].as_str()),
        (Some("svc-nightly"), Some("live"))
    );

    let (etag1, keys) = served_keys(&server).await;
    assert_ne!(etag0, etag1, "a new key changes what gateways hold");
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0]["sha256"], sha256_hex(&key));
    assert_eq!(keys[0]["owner"], "svc-nightly");
    assert_eq!(keys[0]["models"], json!(["gpt-4o*"]));
    assert!(
        !keys[0].to_string().contains(&key[5 + id.len()..]),
        "the secret is never served"
    );

    // People: only their own, only their groups, at most 90 days.
    let (status, body) = server
        .post(
            "/v1/keys",
            Auth::Bearer(&alice),
            json!({"name": "x", "owner": "bob", "groups": ["engineering"]}),
        )
        .await;
    assert_code(status, &body, StatusCode::FORBIDDEN, "key_owner_forbidden");
    let (status, body) = server
        .post(
            "/v1/keys",
            Auth::Bearer(&alice),
            json!({"name": "x", "groups": ["warden-admins"]}),
        )
        .await;
    assert_code(status, &body, StatusCode::FORBIDDEN, "key_groups_forbidden");
    let (status, body) = server
        .post(
            "/v1/keys",
            Auth::Bearer(&alice),
            json!({"name": "x", "groups": ["engineering"], "expires_in_days": 91}),
        )
        .await;
    assert_code(status, &body, StatusCode::FORBIDDEN, "key_too_long");
    let (status, body) = server
        .post(
            "/v1/keys",
            Auth::Bearer(&alice),
            json!({"name": "x", "groups": []}),
        )
        .await;
    assert_code(status, &body, StatusCode::BAD_REQUEST, "bad_request");
    let (status, mine) = server
        .post(
            "/v1/keys",
            Auth::Bearer(&alice),
            json!({"name": "notebook", "groups": ["engineering"], "expires_in_days": 7}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{mine}");
    let mine_id = mine["id"].as_str().unwrap().to_owned();
    assert_eq!(mine["owner"], "alice");

    // Listing: admins see all, people their own; never a key or a hash.
    let (_, all) = server.get("/v1/keys", Auth::Bearer(&admin)).await;
    assert_eq!(all["keys"].as_array().unwrap().len(), 2);
    let (_, own) = server.get("/v1/keys", Auth::Bearer(&alice)).await;
    assert_eq!(own["keys"].as_array().unwrap().len(), 1);
    assert_eq!(own["keys"][0]["id"], mine_id.as_str());
    let listed = all.to_string();
    assert!(
        !listed.contains("wdk_") && !listed.contains(&sha256_hex(&key)),
        "{listed}"
    );

    // Someone else's key is not found (not "forbidden": ids are not probed).
    let (status, body) = server
        .post(
            &format!("/v1/keys/{mine_id}/revoke"),
            Auth::Bearer(&bob),
            json!({}),
        )
        .await;
    assert_code(status, &body, StatusCode::NOT_FOUND, "not_found");

    // A revocation wakes a watching gateway, and the key is no longer served.
    let (etag2, keys) = served_keys(&server).await;
    assert_eq!(keys.len(), 2);
    let watching = server.watch(Some(&etag2), 60);
    server.until_watchers(1).await;
    let (status, revoked) = server
        .post(
            &format!("/v1/keys/{mine_id}/revoke"),
            Auth::Bearer(&alice),
            json!({}),
        )
        .await;
    assert_eq!(
        (status, revoked["status"].as_str()),
        (StatusCode::OK, Some("revoked")),
        "{revoked}"
    );
    let (status, _, _) = answered(watching, "the watch across a revocation").await;
    assert_eq!(status, StatusCode::OK);
    let (_, keys) = served_keys(&server).await;
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0]["id"], id.as_str());
    let (status, body) = server
        .post(
            &format!("/v1/keys/{mine_id}/rotate"),
            Auth::Bearer(&alice),
            json!({}),
        )
        .await;
    assert_code(status, &body, StatusCode::CONFLICT, "key_revoked");

    // Rotation: a new key with the old one's scope; the old one stays for the overlap.
    let (status, rotated) = server
        .post(
            &format!("/v1/keys/{id}/rotate"),
            Auth::Bearer(&admin),
            json!({"overlap_seconds": 3600}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{rotated}");
    let new_key = rotated["key"].as_str().unwrap();
    assert_ne!(new_key, key);
    assert_eq!(
        (rotated["replaces"].as_str(), rotated["models"].clone()),
        (Some(id.as_str()), json!(["gpt-4o*"]))
    );
    let (_, keys) = served_keys(&server).await;
    let hashes: HashSet<&str> = keys.iter().map(|k| k["sha256"].as_str().unwrap()).collect();
    assert_eq!(
        hashes,
        HashSet::from([sha256_hex(&key).as_str(), sha256_hex(new_key).as_str()])
    );
    let old = keys.iter().find(|k| k["id"] == id.as_str()).unwrap();
    let new = keys.iter().find(|k| k["id"] != id.as_str()).unwrap();
    assert_eq!(
        old["expires_at"].as_u64().unwrap(),
        new["expires_at"].as_u64().unwrap() - 200 * 86400 + 3600
    );

    // Someone leaves: an admin revokes all their live keys at once.
    let (status, body) = server
        .post(
            "/v1/keys/revoke",
            Auth::Bearer(&alice),
            json!({"owner": "svc-nightly"}),
        )
        .await;
    assert_code(status, &body, StatusCode::FORBIDDEN, "admin_required");
    let (status, body) = server
        .post(
            "/v1/keys/revoke",
            Auth::Bearer(&admin),
            json!({"owner": "svc-nightly"}),
        )
        .await;
    assert_eq!(
        (status, body["revoked"].as_u64()),
        (StatusCode::OK, Some(2)),
        "{body}"
    );
    let (_, keys) = served_keys(&server).await;
    assert!(keys.is_empty(), "{keys:?}");
    server.shut_down().await;
}

impl Server {
    /// A gateway watching the active policy (`Prefer: wait=N`) from `etag`,
    /// in the background: (status, Preference-Applied, version served).
    fn watch(
        &self,
        etag: Option<&str>,
        wait_seconds: u64,
    ) -> tokio::task::JoinHandle<(StatusCode, String, Option<i64>)> {
        let mut request = self
            .http
            .get(format!("{}/v1/policy/active", self.base))
            .header("x-warden-gateway-key", SECRET)
            .header("prefer", format!("wait={wait_seconds}"));
        if let Some(etag) = etag {
            request = request.header("if-none-match", etag);
        }
        tokio::spawn(async move {
            let response = request.send().await.unwrap();
            let status = response.status();
            let applied = response
                .headers()
                .get("preference-applied")
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default();
            let version = response
                .json::<Value>()
                .await
                .ok()
                .and_then(|v| v["version"].as_i64());
            (status, applied, version)
        })
    }

    /// Returns once `n` requests wait on this replica's policy watch.
    async fn until_watchers(&self, n: usize) {
        for _ in 0..2000 {
            if self.state.policy_watch().watchers() == n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("{n} watcher(s) never waited");
    }

    async fn etag(&self) -> String {
        self.active().await.0
    }

    /// A gateway's unconditional fetch of the active policy (200): its ETag and body.
    async fn active(&self) -> (String, Value) {
        let response = self
            .http
            .get(format!("{}/v1/policy/active", self.base))
            .header("x-warden-gateway-key", SECRET)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let etag = response.headers()["etag"].to_str().unwrap().to_owned();
        (etag, response.json().await.unwrap())
    }
}

/// `Prefer: wait=N`: a gateway that holds the active version waits, and is
/// answered with the next version when it is activated (the wait is 60 s:
/// an answer without the wake-up would be a 304, long after). Nothing
/// active yet waits too; a wait that runs out is a 304 that says the wait
/// was honoured; without `Prefer` the answer is immediate, as before.
async fn a_watching_gateway_gets_the_next_version_as_it_is_activated(backend: Backend) {
    let Some(server) = start(backend, |_| {}).await else {
        return;
    };
    let nothing_yet = server.watch(None, 60);
    server.until_watchers(1).await;
    let v1 = server.publish(POLICY_V1, "first", true).await;
    let (status, applied, version) = answered(nothing_yet, "the watch before any version").await;
    assert_eq!(
        (status, applied.as_str(), version),
        (StatusCode::OK, "wait=60", v1["version"].as_i64())
    );

    let etag = server.etag().await;
    let ran_out = server.watch(Some(&etag), 1);
    let (status, applied, _) = answered(ran_out, "a one-second watch").await;
    assert_eq!(
        (status, applied.as_str()),
        (StatusCode::NOT_MODIFIED, "wait=1")
    );

    let watching = server.watch(Some(&etag), 60);
    server.until_watchers(1).await;
    // Published without activating: not a change the gateway sees.
    server.publish(POLICY_V2, "not yet", false).await;
    let (status, _) = server
        .post(
            "/v1/policies/2/activate",
            Auth::Bearer(&server.admin()),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, applied, version) = answered(watching, "the watch across an activation").await;
    assert_eq!(
        (status, applied.as_str(), version),
        (StatusCode::OK, "wait=60", Some(2))
    );

    // A graceful stop answers the watches at once rather than after their wait.
    let etag = server.etag().await;
    let watching = server.watch(Some(&etag), 60);
    server.until_watchers(1).await;
    let stopping = std::time::Instant::now();
    server.shut_down().await;
    let (status, _, _) = answered(watching, "the watch during a stop").await;
    assert_eq!(status, StatusCode::NOT_MODIFIED);
    assert!(
        stopping.elapsed() < Duration::from_secs(30),
        "the stop waited for the watch"
    );
}

/// Two replicas on one PostgreSQL database: a gateway watching replica A is
/// answered when the version is activated through replica B (NOTIFY).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_a_watch_on_one_replica_wakes_on_an_activation_on_another() {
    let Some(url) = fresh_postgres().await else {
        return;
    };
    let a = start_on(Some(url.clone()), |_| {}).await;
    let public = a.base.clone();
    let b = start_on(Some(url), |c| c.public_url = public).await;
    a.publish(POLICY_V1, "first", true).await;
    let etag = a.etag().await;
    let watching = a.watch(Some(&etag), 60);
    a.until_watchers(1).await;
    b.publish(POLICY_V2, "through b", true).await;
    let (status, _, version) = answered(watching, "replica A's watch, for B's activation").await;
    assert_eq!((status, version), (StatusCode::OK, Some(2)));
}

/// A remote issuer: keys found through OIDC discovery over HTTP (here the
/// dev issuer of another control plane), verified with the engine's code,
/// and trusted for a bounded time once the issuer cannot be reached.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn remote_issuers_are_trusted_through_discovery() {
    // One clock for both: the IdP dates its tokens by the time the server reads.
    let time = ManualClock::at(T0_MS);
    let idp = start_on(None, |c| c.clock = time.clock()).await;
    let issuer = format!("{}/dev", idp.base);
    let server = start_on(None, |c| {
        c.dev = false;
        c.issuers = vec![issuer.clone()];
        c.clock = time.clock();
    })
    .await;
    // Good for longer than the keys are trusted without their issuer.
    let token = idp
        .state
        .dev_issuer()
        .unwrap()
        .mint(&TokenRequest {
            sub: "root".into(),
            groups: vec!["warden-admins".into()],
            ttl_seconds: Some(2 * MAX_STALE.as_secs()),
            ..TokenRequest::default()
        })
        .unwrap();
    let (status, body) = server.get("/v1/policies", Auth::Bearer(&token)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = server
        .post(
            "/v1/policies",
            Auth::Bearer(&token),
            json!({"document": POLICY_V1, "message": "via a remote issuer"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    // A token from an issuer it does not trust.
    let other = start_on(None, |_| {}).await;
    let (status, body) = server
        .get("/v1/policies", Auth::Bearer(&other.admin()))
        .await;
    assert_code(status, &body, StatusCode::UNAUTHORIZED, "unauthorized");

    // The IdP gone: the cached keys still verify (no fetch per request)...
    idp.shut_down().await;
    let (status, body) = server.get("/v1/policies", Auth::Bearer(&token)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // ...and once due for a refresh that fails, up to their bound...
    time.advance(REFRESH);
    let (status, body) = server.get("/v1/policies", Auth::Bearer(&token)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    time.advance(MAX_STALE - REFRESH - Duration::from_millis(1));
    let (status, body) = server.get("/v1/policies", Auth::Bearer(&token)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // ...past which requests are refused as such, not as a bad token.
    time.advance(Duration::from_millis(1));
    let (status, body) = server.get("/v1/policies", Auth::Bearer(&token)).await;
    assert_code(
        status,
        &body,
        StatusCode::SERVICE_UNAVAILABLE,
        "issuer_unavailable",
    );
}

/// People's tokens are good until their `exp` and the allowed skew, as the
/// server's clock tells it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tokens_expire_on_the_servers_clock() {
    let time = ManualClock::at(T0_MS);
    let server = start_on(None, |c| c.clock = time.clock()).await;
    let token = server
        .state
        .dev_issuer()
        .unwrap()
        .mint(&TokenRequest {
            sub: "alice".into(),
            ttl_seconds: Some(60),
            ..TokenRequest::default()
        })
        .unwrap();
    // 60 s to live, 60 s of skew: good for 120 s, to the second.
    time.advance(Duration::from_secs(120));
    let (status, body) = server.get("/v1/policies", Auth::Bearer(&token)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    time.advance(Duration::from_secs(1));
    let (status, body) = server.get("/v1/policies", Auth::Bearer(&token)).await;
    assert_code(status, &body, StatusCode::UNAUTHORIZED, "unauthorized");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("expired"),
        "{body}"
    );
}

/// Two replicas on one PostgreSQL database: a wait on one returns on a
/// decision made on the other; concurrent uses split across both have one
/// winner; versions are numbered once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_replicas_share_state() {
    let Some(url) = fresh_postgres().await else {
        return;
    };
    // Replicas share the time too. It stands still: a wait returns only on
    // a decision.
    let time = ManualClock::at(T0_MS);
    let a = start_on(Some(url.clone()), |c| c.clock = time.clock()).await;
    // Both replicas must trust the same issuer: give B A's public URL.
    let public = a.base.clone();
    let b = start_on(Some(url), |c| {
        c.public_url = public;
        c.clock = time.clock();
    })
    .await;
    let gw = Auth::Gateway(SECRET);
    let (status, opened) = a
        .post("/v1/approvals", gw, request_from(&a, "alice", "1", 300))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let id = opened["id"].as_str().unwrap().to_owned();
    // The same binding through B finds A's approval.
    let (status, same) = b
        .post("/v1/approvals", gw, request_from(&a, "alice", "1", 300))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(same["id"], id.as_str());

    let waiter = a.wait(&id, 20_000);
    let lead = a.token("lena", &["leads"]);
    let (status, body) = b.approve(&id, &lead).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let waited = answered(waiter, "the wait on replica A, for B's decision").await;
    assert_eq!(waited["status"], "approved", "{waited}");

    let issuer = format!("{}/dev", a.base);
    let mut tasks = Vec::new();
    for i in 0..8 {
        let base = if i % 2 == 0 {
            a.base.clone()
        } else {
            b.base.clone()
        };
        let http = a.http.clone();
        let body = binding(&issuer, "alice", "1");
        let id = id.clone();
        tasks.push(tokio::spawn(async move {
            http.post(format!("{base}/v1/approvals/{id}/consume"))
                .header("x-warden-gateway-key", SECRET)
                .json(&body)
                .send()
                .await
                .unwrap()
                .status()
        }));
    }
    let mut ok = 0;
    for task in tasks {
        let status = task.await.unwrap();
        if status == StatusCode::OK {
            ok += 1;
        } else {
            assert_eq!(status, StatusCode::CONFLICT);
        }
    }
    assert_eq!(ok, 1);

    let admin = a.admin();
    let (first, second) = tokio::join!(
        a.post(
            "/v1/policies",
            Auth::Bearer(&admin),
            json!({"document": POLICY_V1, "message": "from a"})
        ),
        b.post(
            "/v1/policies",
            Auth::Bearer(&admin),
            json!({"document": POLICY_V2, "message": "from b"})
        ),
    );
    assert_eq!(first.0, StatusCode::CREATED, "{}", first.1);
    assert_eq!(second.0, StatusCode::CREATED, "{}", second.1);
    assert_ne!(first.1["version"], second.1["version"]);
}

async fn policies_publish_list_show_activate_rollback(backend: Backend) {
    let Some(server) = start(backend, |_| {}).await else {
        return;
    };
    let gw = Auth::Gateway(SECRET);
    let (status, body) = server.get("/v1/policy/active", gw).await;
    assert_code(status, &body, StatusCode::NOT_FOUND, "no_active_policy");

    let v1 = server.publish(POLICY_V1, "first", true).await;
    assert_eq!(v1["version"], 1);
    assert_eq!(v1["author"], "root");
    assert_eq!(v1["active"], true);
    assert_eq!(v1["sha256"].as_str().unwrap().len(), 64);
    assert!(v1["created_at"].as_str().unwrap().ends_with('Z'), "{v1}");

    // The gateway's view, with ETag and 304.
    let (etag, active) = server.active().await;
    // Version and document, then a digest of the (here: no) machine keys.
    let prefix = format!("\"1-{}-", v1["sha256"].as_str().unwrap());
    assert!(
        etag.starts_with(&prefix) && etag.len() == prefix.len() + 17,
        "{etag}"
    );
    assert_eq!(active["version"], 1);
    assert_eq!(active["policy"]["rules"][0]["action"], "mask");
    let unchanged = server
        .http
        .get(format!("{}/v1/policy/active", server.base))
        .header("x-warden-gateway-key", SECRET)
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(unchanged.status(), StatusCode::NOT_MODIFIED);
    assert!(unchanged.bytes().await.unwrap().is_empty());

    // Publish without activating: still v1 served.
    let v2 = server.publish(POLICY_V2, "stricter", false).await;
    assert_eq!(v2["version"], 2);
    assert_eq!(v2["active"], false);
    let (_, active) = server.get("/v1/policy/active", gw).await;
    assert_eq!(active["version"], 1);

    let reader = server.token("bob", &["engineering"]);
    let (status, list) = server.get("/v1/policies", Auth::Bearer(&reader)).await;
    assert_eq!(status, StatusCode::OK, "{list}");
    let versions: Vec<i64> = list["policies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["version"].as_i64().unwrap())
        .collect();
    assert_eq!(versions, [2, 1]);
    let (_, shown) = server.get("/v1/policies/2", Auth::Bearer(&reader)).await;
    assert_eq!(shown["document"], POLICY_V2);
    assert_eq!(shown["message"], "stricter");

    // Activate v2; the old ETag no longer matches.
    let (status, body) = server
        .post(
            "/v1/policies/2/activate",
            Auth::Bearer(&server.admin()),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let changed = server
        .http
        .get(format!("{}/v1/policy/active", server.base))
        .header("x-warden-gateway-key", SECRET)
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(changed.status(), StatusCode::OK);
    let active: Value = changed.json().await.unwrap();
    assert_eq!(active["version"], 2);

    // Rollback: activate v1 again; exactly one active.
    server
        .post(
            "/v1/policies/1/activate",
            Auth::Bearer(&server.admin()),
            json!({}),
        )
        .await;
    let (_, list) = server.get("/v1/policies", Auth::Bearer(&reader)).await;
    let active: Vec<i64> = list["policies"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["active"] == true)
        .map(|p| p["version"].as_i64().unwrap())
        .collect();
    assert_eq!(active, [1]);

    // Writes need the admin group; reads do not.
    let (status, body) = server
        .post(
            "/v1/policies",
            Auth::Bearer(&reader),
            json!({"document": POLICY_V1, "message": "x"}),
        )
        .await;
    assert_code(status, &body, StatusCode::FORBIDDEN, "admin_required");
    let (status, body) = server
        .post("/v1/policies/2/activate", Auth::Bearer(&reader), json!({}))
        .await;
    assert_code(status, &body, StatusCode::FORBIDDEN, "admin_required");
    let (status, body) = server
        .post(
            "/v1/policies/99/activate",
            Auth::Bearer(&server.admin()),
            json!({}),
        )
        .await;
    assert_code(status, &body, StatusCode::NOT_FOUND, "policy_not_found");

    // Concurrent publishers get distinct versions.
    let mut tasks = Vec::new();
    for i in 0..6 {
        let http = server.http.clone();
        let url = format!("{}/v1/policies", server.base);
        let token = server.admin();
        tasks.push(tokio::spawn(async move {
            let response = http
                .post(url)
                .bearer_auth(token)
                .json(&json!({"document": POLICY_V1, "message": format!("race {i}"), "activate": true}))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::CREATED);
            response.json::<Value>().await.unwrap()["version"]
                .as_i64()
                .unwrap()
        }));
    }
    let mut got = Vec::new();
    for task in tasks {
        got.push(task.await.unwrap());
    }
    got.sort_unstable();
    assert_eq!(got, [3, 4, 5, 6, 7, 8]);
    let (_, list) = server.get("/v1/policies", Auth::Bearer(&reader)).await;
    let active = list["policies"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["active"] == true)
        .count();
    assert_eq!(active, 1);
}

async fn invalid_policies_are_refused_with_lines(backend: Backend) {
    let Some(server) = start(backend, |_| {}).await else {
        return;
    };
    let admin = server.admin();
    let (status, body) = server
        .post(
            "/v1/policies",
            Auth::Bearer(&admin),
            json!({"document": POLICY_BAD, "message": "broken"}),
        )
        .await;
    assert_code(
        status,
        &body,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_policy",
    );
    let problems = body["problems"].as_array().unwrap();
    assert!(problems.len() >= 2, "{body}");
    let lines: Vec<i64> = problems.iter().filter_map(|p| p["line"].as_i64()).collect();
    assert!(lines.contains(&7), "regex problem on line 7: {body}");
    assert!(lines.contains(&10), "detector problem on line 10: {body}");
    // Nothing was published.
    let (_, list) = server.get("/v1/policies", Auth::Bearer(&admin)).await;
    assert_eq!(list["policies"], json!([]));

    // A YAML syntax error carries the parser's line.
    let (status, body) = server
        .post(
            "/v1/policies/validate",
            Auth::Bearer(&admin),
            json!({"document": "version: 1\nrules:\n  - name: [unclosed\n"}),
        )
        .await;
    assert_code(
        status,
        &body,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_policy",
    );
    assert!(body["problems"][0]["line"].as_i64().is_some(), "{body}");

    let (status, body) = server
        .post(
            "/v1/policies/validate",
            Auth::Bearer(&admin),
            json!({"document": POLICY_V1}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"valid": true}));

    // The schema is public and equals the committed file.
    let (status, schema) = server.get("/v1/policy/schema", Auth::None).await;
    assert_eq!(status, StatusCode::OK);
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/policies/policy.schema.json");
    if std::env::var_os("WARDEN_UPDATE_SCHEMA").is_some() {
        std::fs::write(&path, serde_json::to_string_pretty(&schema).unwrap() + "\n").unwrap();
    }
    let committed: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(
        schema, committed,
        "examples/policies/policy.schema.json is stale: rerun this test with WARDEN_UPDATE_SCHEMA=1"
    );
}

async fn gateways_need_the_secret_and_people_a_token(backend: Backend) {
    let Some(server) = start(backend, |_| {}).await else {
        return;
    };
    for auth in [
        Auth::None,
        Auth::Gateway("wrong"),
        Auth::Bearer(&server.admin()),
    ] {
        let (status, body) = server.get("/v1/policy/active", auth).await;
        assert_code(
            status,
            &body,
            StatusCode::UNAUTHORIZED,
            "gateway_unauthorized",
        );
        let (status, body) = server
            .post("/v1/approvals", auth, approval_request("alice", "a", 60))
            .await;
        assert_code(
            status,
            &body,
            StatusCode::UNAUTHORIZED,
            "gateway_unauthorized",
        );
    }
    // People's endpoints refuse the gateway secret and bad tokens.
    for auth in [
        Auth::None,
        Auth::Gateway(SECRET),
        Auth::Bearer("not.a.token"),
    ] {
        let (status, body) = server.get("/v1/policies", auth).await;
        assert_code(status, &body, StatusCode::UNAUTHORIZED, "unauthorized");
    }
    // A token for another audience is refused.
    let foreign = server
        .state
        .dev_issuer()
        .unwrap()
        .mint(&TokenRequest {
            sub: "root".into(),
            groups: vec!["warden-admins".into()],
            audience: Some("someone-else".into()),
            ..TokenRequest::default()
        })
        .unwrap();
    let (status, body) = server.get("/v1/policies", Auth::Bearer(&foreign)).await;
    assert_code(status, &body, StatusCode::UNAUTHORIZED, "unauthorized");
    // The page's client id is an accepted audience (ID tokens).
    let page = server
        .state
        .dev_issuer()
        .unwrap()
        .mint(&TokenRequest {
            sub: "carol".into(),
            audience: Some("warden-approvals".into()),
            ..TokenRequest::default()
        })
        .unwrap();
    let (status, _) = server.get("/v1/policies", Auth::Bearer(&page)).await;
    assert_eq!(status, StatusCode::OK);
    drop(server);

    // Without a configured secret, gateway endpoints answer 503.
    let Some(server) = start(backend, |c| c.gateway_secret = None).await else {
        return;
    };
    let (status, body) = server.get("/v1/policy/active", Auth::Gateway(SECRET)).await;
    assert_code(
        status,
        &body,
        StatusCode::SERVICE_UNAVAILABLE,
        "gateway_secret_unset",
    );
    let (status, _) = server.get("/healthz", Auth::None).await;
    assert_eq!(status, StatusCode::OK);
}

fn approval_request(subject: &str, body_char: &str, ttl: u64) -> Value {
    json!({
        "mode": "ticket",
        "issuer": "https://idp.example",
        "subject": subject,
        "groups": ["engineering"],
        "email": format!("{subject}@example.com"),
        "provider": "openai",
        "model": "gpt-4o",
        "route": "/openai/v1/chat/completions",
        "rule": "customer-data",
        "policy_version": 3,
        "body_sha256": body_char.repeat(64),
        "masked_prompt": "summarize [EMAIL_1]",
        "approvers": ["leads"],
        "ttl_seconds": ttl,
    })
}

/// Found by schemathesis: serde reads a struct from a JSON array too (its
/// fields in order), so `[[]]` was a session batch and an array of an
/// approval's fields an approval. Every JSON body is an object, or a 400.
async fn request_bodies_are_json_objects(backend: Backend) {
    let Some(server) = start(backend, |_| {}).await else {
        return;
    };
    let gw = Auth::Gateway(SECRET);
    let admin = server.admin();
    let in_order = |value: &Value, fields: &[&str]| -> Value {
        fields.iter().map(|field| value[*field].clone()).collect()
    };
    let request = approval_request("alice", "a", 60);
    let open = in_order(
        &request,
        &[
            "mode",
            "issuer",
            "subject",
            "token_subject",
            "groups",
            "email",
            "provider",
            "model",
            "route",
            "rule",
            "policy_version",
            "body_sha256",
            "masked_prompt",
            "approvers",
            "ttl_seconds",
        ],
    );
    // What serde alone takes for the same request.
    assert!(
        serde_json::from_value::<warden_control_plane::approvals::OpenRequest>(open.clone())
            .is_ok()
    );
    let binding = in_order(
        &binding("https://idp.example", "alice", "a"),
        &[
            "issuer",
            "subject",
            "body_sha256",
            "rule",
            "provider",
            "model",
            "route",
            "policy_version",
        ],
    );
    let (status, opened) = server.post("/v1/approvals", gw, request).await;
    assert_eq!(status, StatusCode::CREATED, "{opened}");
    let id = opened["id"].as_str().unwrap();
    let lead = server.token("lena", &["leads"]);
    let document = "version: 1\n";
    for (path, auth, body) in [
        ("/v1/approvals".to_owned(), gw, open),
        (format!("/v1/approvals/{id}/consume"), gw, binding),
        (
            format!("/v1/approvals/{id}/approve"),
            Auth::Bearer(&lead),
            json!(["ok"]),
        ),
        (
            format!("/v1/approvals/{id}/deny"),
            Auth::Bearer(&lead),
            json!(["no"]),
        ),
        (
            "/v1/policies".to_owned(),
            Auth::Bearer(&admin),
            json!([document, "why", true]),
        ),
        (
            "/v1/policies/validate".to_owned(),
            Auth::Bearer(&admin),
            json!([document]),
        ),
        ("/v1/sessions".to_owned(), gw, json!([[]])),
    ] {
        let (status, answer) = server.post(&path, auth, body).await;
        assert_code(status, &answer, StatusCode::BAD_REQUEST, "bad_request");
        assert!(
            answer["error"]["message"]
                .as_str()
                .unwrap()
                .contains("object")
                || answer["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("expected struct"),
            "{path}: {answer}"
        );
    }
    // Nothing was decided, used or stored.
    let (_, approval) = server
        .get(&format!("/v1/approvals/{id}"), Auth::Bearer(&lead))
        .await;
    assert_eq!(approval["status"], "pending", "{approval}");
}

/// Found by schemathesis: PostgreSQL's `text` cannot hold U+0000, so a
/// `\u0000` in a stored field or a looked-up id was a 503 there (and
/// stored on SQLite). Now, on both: descriptive text is stored with U+FFFD
/// instead, what binds or names something is refused, and a lookup finds
/// nothing.
async fn text_with_nul_is_stored_alike_or_refused(backend: Backend) {
    let Some(server) = start(backend, |_| {}).await else {
        return;
    };
    let gw = Auth::Gateway(SECRET);
    let admin = server.admin();
    let auditor = Auth::Bearer(&admin);
    let lead = server.token("lena", &["leads"]);

    // Descriptive: stored with U+FFFD.
    let mut request = approval_request("alice", "a", 60);
    request["masked_prompt"] = json!("summarize\u{0}this");
    request["email"] = json!("alice\u{0}@example.com");
    let (status, opened) = server.post("/v1/approvals", gw, request).await;
    assert_eq!(status, StatusCode::CREATED, "{opened}");
    assert_eq!(opened["masked_prompt"], "summarize\u{FFFD}this");
    assert_eq!(opened["email"], "alice\u{FFFD}@example.com");
    let mut record = json!({
        "id": "r1", "time": "2026-01-02T03:04:05Z", "subject": "bob\u{0}", "groups": [],
        "route": "/v1/chat/completions", "policy_version": 1, "decision": "allowed",
        "rules": "", "record": "metadata",
    });
    let (status, body) = server
        .post("/v1/sessions", gw, json!({"records": [record.clone()]}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // The filter is read as the subject was stored.
    let (status, page) = server.get("/v1/sessions?subject=bob%00", auditor).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["sessions"][0]["subject"], "bob\u{FFFD}", "{page}");

    // Binding or naming: refused.
    for field in ["subject", "issuer", "rule", "route", "provider", "model"] {
        let mut request = approval_request("alice", "b", 60);
        request[field] = json!("x\u{0}");
        let (status, body) = server.post("/v1/approvals", gw, request).await;
        assert_code(status, &body, StatusCode::BAD_REQUEST, "bad_request");
    }
    let mut request = approval_request("alice", "b", 60);
    request["approvers"] = json!(["leads\u{0}"]);
    let (status, body) = server.post("/v1/approvals", gw, request).await;
    assert_code(status, &body, StatusCode::BAD_REQUEST, "bad_request");
    record["id"] = json!("r\u{0}2");
    let (status, body) = server
        .post("/v1/sessions", gw, json!({"records": [record]}))
        .await;
    assert_code(status, &body, StatusCode::BAD_REQUEST, "bad_request");
    let (status, body) = server
        .post(
            "/v1/policies",
            Auth::Bearer(&admin),
            json!({"document": "version: 1\n", "message": "why\u{0}"}),
        )
        .await;
    assert_code(status, &body, StatusCode::BAD_REQUEST, "bad_request");

    // Looked up: not found.
    let (status, body) = server.get("/v1/sessions/r%00", auditor).await;
    assert_code(status, &body, StatusCode::NOT_FOUND, "session_not_found");
    let (status, body) = server
        .get("/v1/approvals/apr_%00", Auth::Bearer(&lead))
        .await;
    assert_code(status, &body, StatusCode::NOT_FOUND, "approval_not_found");
    let (status, body) = server
        .get("/v1/approvals/apr_%00/wait?timeout_ms=1", gw)
        .await;
    assert_code(status, &body, StatusCode::NOT_FOUND, "approval_not_found");
    let (status, body) = server
        .post(
            "/v1/approvals/apr_%00/approve",
            Auth::Bearer(&lead),
            json!({}),
        )
        .await;
    assert_code(status, &body, StatusCode::NOT_FOUND, "approval_not_found");
}

/// What a gateway sends to use the approval [`approval_request`] opened
/// (with `issuer`, `subject` and body): everything the approval binds.
fn binding(issuer: &str, subject: &str, body_char: &str) -> Value {
    let mut request = approval_request(subject, body_char, 1);
    request["issuer"] = json!(issuer);
    let opened: warden_control_plane::approvals::OpenRequest =
        serde_json::from_value(request).unwrap();
    serde_json::to_value(opened.binding()).unwrap()
}

/// A token from the same issuer as the gateway's requests: the dev issuer's
/// tokens name `<base>/dev`, so the requests in these tests use that issuer.
fn request_from(server: &Server, subject: &str, body_char: &str, ttl: u64) -> Value {
    let mut request = approval_request(subject, body_char, ttl);
    request["issuer"] = json!(format!("{}/dev", server.base));
    request
}

async fn approval_lifecycle_and_refusals(backend: Backend) {
    let Some(server) = start(backend, |_| {}).await else {
        return;
    };
    let gw = Auth::Gateway(SECRET);
    let request = request_from(&server, "alice", "a", 300);
    let (status, opened) = server.post("/v1/approvals", gw, request.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{opened}");
    let id = opened["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("apr_") && id.len() >= 4 + 32, "{id}");
    assert_eq!(opened["status"], "pending");
    assert_eq!(opened["consumed"], false);
    assert_eq!(opened["url"], format!("{}/approvals#{id}", server.base));
    assert_eq!(opened["masked_prompt"], "summarize [EMAIL_1]");

    // The same binding again: the same pending approval.
    let (status, again) = server.post("/v1/approvals", gw, request.clone()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again["id"], id.as_str());

    let alice = server.token("alice", &["engineering", "leads"]);
    let lead = server.token("lena", &["leads"]);
    let other = server.token("oscar", &["engineering"]);

    // Lists: the approver sees it, the requester sees their own, others nothing.
    let (_, list) = server
        .get("/v1/approvals?status=pending", Auth::Bearer(&lead))
        .await;
    assert_eq!(list["approvals"][0]["id"], id.as_str());
    let (_, list) = server.get("/v1/approvals", Auth::Bearer(&alice)).await;
    assert_eq!(list["approvals"].as_array().unwrap().len(), 1);
    let (_, list) = server
        .get("/v1/approvals?status=all", Auth::Bearer(&other))
        .await;
    assert_eq!(list["approvals"], json!([]));
    let (status, _) = server
        .get(&format!("/v1/approvals/{id}"), Auth::Bearer(&other))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Refusals.
    let path = format!("/v1/approvals/{id}/approve");
    let (status, body) = server
        .post(&path, Auth::Bearer(&alice), json!({"reason": "me"}))
        .await;
    assert_code(status, &body, StatusCode::FORBIDDEN, "self_approval");
    // A filter that maps the subject from another claim (`claims.subject:
    // email`) names alice otherwise; her own token still cannot decide it,
    // found by the token's `sub` or by the email, whichever both sides have.
    let mut by_sub = request_from(&server, "alice@example.com", "9", 300);
    by_sub["token_subject"] = json!("alice");
    by_sub["email"] = Value::Null;
    let mut by_email = request_from(&server, "employee-42", "8", 300);
    by_email["email"] = json!("Alice@Example.com");
    // An approval's body is optional: `{}`, or `null` as the API's
    // description allows (found by schemathesis: `null` was a 400).
    for (mapped, approval) in [(by_sub, json!({})), (by_email, Value::Null)] {
        let (status, opened) = server.post("/v1/approvals", gw, mapped).await;
        assert_eq!(status, StatusCode::CREATED, "{opened}");
        let path = format!("/v1/approvals/{}/approve", opened["id"].as_str().unwrap());
        let (status, body) = server
            .post(&path, Auth::Bearer(&alice), approval.clone())
            .await;
        assert_code(status, &body, StatusCode::FORBIDDEN, "self_approval");
        let (status, body) = server.post(&path, Auth::Bearer(&lead), approval).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["status"], "approved", "{body}");
    }
    let (status, body) = server.post(&path, Auth::Bearer(&other), json!({})).await;
    assert_code(status, &body, StatusCode::FORBIDDEN, "not_an_approver");
    let (status, body) = server
        .post(
            &format!("/v1/approvals/{id}/deny"),
            Auth::Bearer(&lead),
            json!({}),
        )
        .await;
    assert_code(status, &body, StatusCode::BAD_REQUEST, "reason_required");

    // Approve; a second decision is refused.
    let (status, approved) = server
        .post(&path, Auth::Bearer(&lead), json!({"reason": "ticket 42"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{approved}");
    assert_eq!(approved["status"], "approved");
    assert_eq!(approved["decided_by"], "lena");
    assert_eq!(approved["decided_by_email"], "lena@example.com");
    assert_eq!(approved["reason"], "ticket 42");
    assert!(approved["decided_at"].is_string());
    let (status, body) = server
        .post(
            &format!("/v1/approvals/{id}/deny"),
            Auth::Bearer(&lead),
            json!({"reason": "no"}),
        )
        .await;
    assert_code(status, &body, StatusCode::CONFLICT, "already_decided");

    // Ticket: the same request again passes, once.
    let (status, used) = server.post("/v1/approvals", gw, request.clone()).await;
    assert_eq!(status, StatusCode::OK, "{used}");
    assert_eq!(used["id"], id.as_str());
    assert_eq!(used["status"], "consumed");
    assert_eq!(used["consumed"], true);
    let (status, fresh) = server.post("/v1/approvals", gw, request.clone()).await;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "replay opens a new approval: {fresh}"
    );
    assert_ne!(fresh["id"], id.as_str());

    // Deny the new one: the gateway's next ask reports the denial and reason.
    let fresh_id = fresh["id"].as_str().unwrap();
    let (status, denied) = server
        .post(
            &format!("/v1/approvals/{fresh_id}/deny"),
            Auth::Bearer(&lead),
            json!({"reason": "not for customer data"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{denied}");
    let (status, again) = server.post("/v1/approvals", gw, request.clone()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again["status"], "denied");
    assert_eq!(again["reason"], "not for customer data");

    // An edited body is another binding: a new approval, and consume refuses.
    let (status, edited) = server
        .post(
            "/v1/approvals",
            gw,
            request_from(&server, "alice", "b", 300),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let edited_id = edited["id"].as_str().unwrap();
    server.approve(edited_id, &lead).await;
    let issuer = format!("{}/dev", server.base);
    let (status, body) = server
        .post(
            &format!("/v1/approvals/{edited_id}/consume"),
            gw,
            binding(&issuer, "alice", "c"),
        )
        .await;
    assert_code(status, &body, StatusCode::FORBIDDEN, "approval_mismatch");
    let (status, body) = server
        .post(
            &format!("/v1/approvals/{edited_id}/consume"),
            gw,
            binding(&issuer, "mallory", "b"),
        )
        .await;
    assert_code(status, &body, StatusCode::FORBIDDEN, "approval_mismatch");
    // An approval is for its route: one given for `count_tokens` is not one
    // for `messages`, neither when used nor when found by its binding.
    let mut elsewhere = binding(&issuer, "alice", "b");
    elsewhere["route"] = json!("/openai/v1/completions");
    let (status, body) = server
        .post(&format!("/v1/approvals/{edited_id}/consume"), gw, elsewhere)
        .await;
    assert_code(status, &body, StatusCode::FORBIDDEN, "approval_mismatch");
    let mut other_route = request_from(&server, "alice", "b", 300);
    other_route["route"] = json!("/openai/v1/completions");
    let (status, opened) = server.post("/v1/approvals", gw, other_route).await;
    assert_eq!(status, StatusCode::CREATED, "{opened}");
    assert_ne!(opened["id"], edited["id"]);
    let (_, still) = server
        .get(&format!("/v1/approvals/{edited_id}"), Auth::Bearer(&lead))
        .await;
    assert_eq!(still["status"], "approved", "{still}");
    // Consuming a denied one.
    let (status, body) = server
        .post(
            &format!("/v1/approvals/{fresh_id}/consume"),
            gw,
            binding(&issuer, "alice", "a"),
        )
        .await;
    assert_code(status, &body, StatusCode::CONFLICT, "approval_not_approved");

    // History for the approver, newest first.
    let (_, list) = server
        .get("/v1/approvals?status=all", Auth::Bearer(&lead))
        .await;
    let ids: Vec<&str> = list["approvals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap())
        .collect();
    // Three in the lifecycle, two opened under other claim mappings, one for another route.
    assert_eq!(ids.len(), 6);
    assert_eq!(ids.last(), Some(&id.as_str()));
    let (_, list) = server
        .get("/v1/approvals?status=approved", Auth::Bearer(&lead))
        .await;
    assert_eq!(list["approvals"].as_array().unwrap().len(), 4, "{list}");
}

async fn concurrent_consumes_have_one_winner(backend: Backend) {
    let Some(server) = start(backend, |_| {}).await else {
        return;
    };
    let gw = Auth::Gateway(SECRET);
    let issuer = format!("{}/dev", server.base);
    let lead = server.token("lena", &["leads"]);
    for round in 0..3 {
        let (_, opened) = server
            .post(
                "/v1/approvals",
                gw,
                request_from(&server, &format!("u{round}"), "d", 300),
            )
            .await;
        let id = opened["id"].as_str().unwrap().to_owned();
        let (status, _) = server.approve(&id, &lead).await;
        assert_eq!(status, StatusCode::OK);
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let http = server.http.clone();
            let url = format!("{}/v1/approvals/{id}/consume", server.base);
            let body = binding(&issuer, &format!("u{round}"), "d");
            tasks.push(tokio::spawn(async move {
                let response = http
                    .post(url)
                    .header("x-warden-gateway-key", SECRET)
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                let status = response.status();
                (status, response.json::<Value>().await.unwrap())
            }));
        }
        let mut ok = 0;
        for task in tasks {
            let (status, body) = task.await.unwrap();
            if status == StatusCode::OK {
                ok += 1;
                assert_eq!(body["status"], "consumed");
            } else {
                assert_code(status, &body, StatusCode::CONFLICT, "approval_used");
            }
        }
        assert_eq!(ok, 1, "exactly one concurrent consume wins");
    }
}

async fn approvals_expire(backend: Backend) {
    let time = ManualClock::at(T0_MS);
    let Some(server) = start(backend, |c| c.clock = time.clock()).await else {
        return;
    };
    let gw = Auth::Gateway(SECRET);
    let lead = server.token("lena", &["leads"]);
    let issuer = format!("{}/dev", server.base);
    // Opened at the same instant with a 1 s TTL: one left pending, two approved.
    let mut ids = Vec::new();
    for (subject, body) in [("alice", "e"), ("bob", "f"), ("carol", "0")] {
        let (status, opened) = server
            .post("/v1/approvals", gw, request_from(&server, subject, body, 1))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{opened}");
        assert_eq!(opened["expires_at"], "2026-01-02T03:04:06.000Z", "{opened}");
        ids.push(opened["id"].as_str().unwrap().to_owned());
    }
    let [pending, approved, used] = <[String; 3]>::try_from(ids).unwrap();
    for id in [&approved, &used] {
        let (status, body) = server.approve(id, &lead).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let status_of = |id: &str| {
        let path = format!("/v1/approvals/{id}");
        let lead = lead.clone();
        let server = &server;
        async move {
            let (status, shown) = server.get(&path, Auth::Bearer(&lead)).await;
            assert_eq!(status, StatusCode::OK, "{shown}");
            shown["status"].as_str().unwrap().to_owned()
        }
    };

    // A millisecond before they expire, each is still what it was.
    time.advance(Duration::from_millis(999));
    assert_eq!(status_of(&pending).await, "pending");
    assert_eq!(status_of(&approved).await, "approved");
    let (status, body) = server
        .post(
            &format!("/v1/approvals/{used}/consume"),
            gw,
            binding(&issuer, "carol", "0"),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "consumed", "{body}");

    // At their expiry both unused ones have expired, together.
    time.advance(Duration::from_millis(1));
    assert_eq!(status_of(&pending).await, "expired");
    assert_eq!(status_of(&approved).await, "expired");
    assert_eq!(status_of(&used).await, "consumed");
    let (status, body) = server.approve(&pending, &lead).await;
    assert_code(status, &body, StatusCode::GONE, "approval_expired");
    let (status, body) = server
        .post(
            &format!("/v1/approvals/{approved}/consume"),
            gw,
            binding(&issuer, "bob", "f"),
        )
        .await;
    assert_code(status, &body, StatusCode::GONE, "approval_expired");
    // A wait on an expired approval answers at once.
    let waited = answered(
        server.wait(&pending, 30_000),
        "a wait on an expired approval",
    )
    .await;
    assert_eq!(waited["status"], "expired", "{waited}");
    // An expired approval is no longer found by its binding: a new one opens.
    let (status, reopened) = server
        .post("/v1/approvals", gw, request_from(&server, "bob", "f", 60))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{reopened}");
    assert_ne!(reopened["id"], approved.as_str());
}

async fn wait_returns_on_decision(backend: Backend) {
    // The clock stands still unless moved: a wait ends on a decision, or
    // when the clock passes its timeout or the approval's expiry, never
    // because real time went by.
    let time = ManualClock::at(T0_MS);
    let Some(server) = start(backend, |c| c.clock = time.clock()).await else {
        return;
    };
    let gw = Auth::Gateway(SECRET);
    let open = |subject: &'static str, ttl: u64| {
        let server = &server;
        async move {
            let (status, opened) = server
                .post("/v1/approvals", gw, request_from(server, subject, "9", ttl))
                .await;
            assert_eq!(status, StatusCode::CREATED, "{opened}");
            opened["id"].as_str().unwrap().to_owned()
        }
    };

    // Returns on a decision made through another connection.
    let id = open("alice", 300).await;
    let waiter = server.wait(&id, 20_000);
    let lead = server.token("lena", &["leads"]);
    let (status, body) = server.approve(&id, &lead).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let waited = answered(waiter, "a wait, for the decision").await;
    assert_eq!(waited["status"], "approved", "{waited}");

    // Returns when the approval expires meanwhile.
    let id = open("bob", 60).await;
    let waiter = server.wait(&id, 30_000);
    time.advance(Duration::from_secs(60));
    let waited = answered(waiter, "a wait, for the expiry").await;
    assert_eq!(waited["status"], "expired", "{waited}");

    // Times out while pending, once the clock has passed its timeout. The
    // server starts counting when its handler runs, which the test cannot
    // see: the clock moves a timeout at a time until the wait answers.
    // (An hour to live: more than the clock moves before the STALLED limit.)
    let id = open("carol", 3600).await;
    let mut waiter = server.wait(&id, 1_000);
    let waited = tokio::time::timeout(STALLED, async {
        loop {
            time.advance(Duration::from_secs(1));
            if let Ok(waited) = tokio::time::timeout(WAIT_POLL * 2, &mut waiter).await {
                break waited.unwrap();
            }
        }
    })
    .await
    .expect("the wait never timed out");
    assert_eq!(waited["status"], "pending", "{waited}");

    let (status, body) = server
        .get("/v1/approvals/apr_nope/wait?timeout_ms=10", gw)
        .await;
    assert_code(status, &body, StatusCode::NOT_FOUND, "approval_not_found");
}

async fn webhook_is_delivered(backend: Backend) {
    // A tiny receiver that passes on what it is sent.
    let (sink, mut received) = tokio::sync::mpsc::unbounded_channel::<Value>();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |axum::Json(body): axum::Json<Value>| {
            let sink = sink.clone();
            async move {
                let _ = sink.send(body);
                "ok"
            }
        }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!(
        "http://{}/hook?token=s3cret",
        listener.local_addr().unwrap()
    );
    tokio::spawn(async move { axum::serve(listener, app).await });

    for format in [WebhookFormat::Json, WebhookFormat::Slack] {
        let Some(server) = start(backend, |c| {
            c.approval_webhook = Some(hook.clone());
            c.approval_webhook_format = format;
        })
        .await
        else {
            return;
        };
        let (status, opened) = server
            .post(
                "/v1/approvals",
                Auth::Gateway(SECRET),
                request_from(&server, "alice", "7", 60),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED);
        // This approval's announcement (a slow delivery may be retried, and
        // its first try arrive after all).
        let id = opened["id"].as_str().unwrap();
        let body = tokio::time::timeout(STALLED, async {
            loop {
                let body = received.recv().await.unwrap();
                if body.to_string().contains(id) {
                    break body;
                }
            }
        })
        .await
        .expect("the webhook never arrived");
        let text = body.to_string();
        assert!(
            !text.contains("summarize"),
            "the prompt never leaves: {text}"
        );
        match format {
            WebhookFormat::Json => {
                assert_eq!(body["event"], "approval.created");
                assert_eq!(body["approval"]["id"], opened["id"]);
            }
            WebhookFormat::Slack => {
                let text = body["text"].as_str().unwrap();
                assert!(text.contains("alice@example.com"), "{text}");
                assert!(text.contains("customer-data"), "{text}");
                assert!(text.contains("gpt-4o"), "{text}");
                assert!(text.contains(opened["url"].as_str().unwrap()), "{text}");
            }
        }
    }
}

fn warden(server: &Server, token: &str, args: &[&str]) -> (i32, String, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_warden"))
        .args(args)
        .env("WARDEN_SERVER", &server.base)
        .env("WARDEN_TOKEN", token)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

async fn cli_commands(backend: Backend) {
    let Some(server) = start(backend, |_| {}).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.yaml");
    let stricter = dir.path().join("stricter.yaml");
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&good, POLICY_V1).unwrap();
    std::fs::write(&stricter, POLICY_V2).unwrap();
    std::fs::write(&bad, POLICY_BAD).unwrap();
    let (good, stricter, bad) = (
        good.to_str().unwrap().to_owned(),
        stricter.to_str().unwrap().to_owned(),
        bad.to_str().unwrap().to_owned(),
    );
    let admin = server.admin();
    let server = Arc::new(server);

    // Blocking processes off the runtime's workers.
    let run = |token: String, args: Vec<String>| {
        let server = server.clone();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            warden(&server, &token, &args)
        })
    };
    let argv = |items: &[&str]| items.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();

    let (code, stdout, _) = run(admin.clone(), argv(&["policy", "validate", &bad]))
        .await
        .unwrap();
    assert_eq!(code, 1, "{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines.len() >= 2, "{stdout}");
    assert!(
        lines.iter().any(|l| l.starts_with(&format!("{bad}:7:"))),
        "{stdout}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with(&format!("{bad}:10:"))),
        "{stdout}"
    );
    let (code, stdout, _) = run(admin.clone(), argv(&["policy", "validate", &good]))
        .await
        .unwrap();
    assert_eq!(code, 0, "{stdout}");

    let (code, stdout, stderr) = run(
        admin.clone(),
        argv(&["policy", "push", &good, "-m", "first"]),
    )
    .await
    .unwrap();
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("published version 1, now active"),
        "{stdout}"
    );
    let (code, _, stderr) = run(
        admin.clone(),
        argv(&[
            "policy",
            "push",
            &stricter,
            "-m",
            "stricter",
            "--no-activate",
        ]),
    )
    .await
    .unwrap();
    assert_eq!(code, 0, "{stderr}");
    let (code, _, stderr) = run(admin.clone(), argv(&["policy", "push", &bad, "-m", "no"]))
        .await
        .unwrap();
    assert_eq!(code, 1);
    assert!(stderr.contains("invalid_policy"), "{stderr}");
    assert!(stderr.contains("document:7:"), "{stderr}");

    let (code, stdout, _) = run(admin.clone(), argv(&["policy", "list"])).await.unwrap();
    assert_eq!(code, 0);
    let rows: Vec<&str> = stdout.lines().collect();
    assert!(rows[0].starts_with("VERSION"), "{stdout}");
    assert!(
        rows[1].starts_with('2') && rows[1].contains("stricter"),
        "{stdout}"
    );
    assert!(
        rows[2].starts_with('1') && rows[2].contains('*'),
        "{stdout}"
    );
    let (_, stdout, _) = run(admin.clone(), argv(&["policy", "list", "--json"]))
        .await
        .unwrap();
    let listed: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(listed["policies"].as_array().unwrap().len(), 2);

    let (code, stdout, _) = run(admin.clone(), argv(&["policy", "show", "2"]))
        .await
        .unwrap();
    assert_eq!(code, 0);
    assert!(stdout.starts_with("# version 2"), "{stdout}");
    assert!(stdout.ends_with(POLICY_V2), "{stdout}");
    let (_, stdout, _) = run(admin.clone(), argv(&["policy", "diff", "1", "2"]))
        .await
        .unwrap();
    assert!(
        stdout.contains("--- version 1") && stdout.contains("+++ version 2"),
        "{stdout}"
    );
    assert!(
        stdout.contains("-    action: mask") || stdout.contains("-    action: mask\n"),
        "{stdout}"
    );
    assert!(stdout.contains("+    action: block"), "{stdout}");
    let (code, stdout, _) = run(admin.clone(), argv(&["policy", "activate", "2"]))
        .await
        .unwrap();
    assert_eq!(code, 0);
    assert!(stdout.contains("version 2 is now active"), "{stdout}");

    // A reader cannot push; the server's message is shown.
    let reader = server.token("bob", &["engineering"]);
    let (code, _, stderr) = run(reader, argv(&["policy", "push", &good, "-m", "x"]))
        .await
        .unwrap();
    assert_eq!(code, 1);
    assert!(stderr.contains("admin_required"), "{stderr}");
    let (code, _, stderr) = run(String::new(), argv(&["policy", "list"])).await.unwrap();
    assert_eq!(code, 1);
    assert!(stderr.contains("WARDEN_TOKEN"), "{stderr}");

    // Approvals.
    let (_, opened) = server
        .post(
            "/v1/approvals",
            Auth::Gateway(SECRET),
            request_from(&server, "alice", "5", 300),
        )
        .await;
    let (_, second) = server
        .post(
            "/v1/approvals",
            Auth::Gateway(SECRET),
            request_from(&server, "alice", "6", 300),
        )
        .await;
    let id = opened["id"].as_str().unwrap().to_owned();
    let second_id = second["id"].as_str().unwrap().to_owned();
    let lead = server.token("lena", &["leads"]);
    let (code, stdout, _) = run(lead.clone(), argv(&["approvals", "list"]))
        .await
        .unwrap();
    assert_eq!(code, 0);
    assert!(
        stdout.contains(&id) && stdout.contains("alice@example.com"),
        "{stdout}"
    );
    let (code, stdout, _) = run(lead.clone(), argv(&["approvals", "show", &id]))
        .await
        .unwrap();
    assert_eq!(code, 0);
    assert!(stdout.contains("summarize [EMAIL_1]"), "{stdout}");
    let (code, stdout, stderr) = run(
        lead.clone(),
        argv(&["approvals", "approve", &id, "--reason", "ok"]),
    )
    .await
    .unwrap();
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("approved"), "{stdout}");
    let (code, _, stderr) = run(lead.clone(), argv(&["approvals", "approve", &id]))
        .await
        .unwrap();
    assert_eq!(code, 1);
    assert!(stderr.contains("already_decided"), "{stderr}");
    let (code, stdout, _) = run(
        lead.clone(),
        argv(&["approvals", "deny", &second_id, "--reason", "no", "--json"]),
    )
    .await
    .unwrap();
    assert_eq!(code, 0);
    let denied: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(denied["status"], "denied");
    assert_eq!(denied["reason"], "no");
}

// ---------------------------------------------------------------------------
// Recorded sessions (issue 6)

mod sessions {
    use super::*;
    use warden_control_plane::store::Store;

    fn record(id: &str, subject: &str) -> Value {
        json!({
            "id": id,
            "time": "2026-01-02T03:04:05Z",
            "issuer": "https://idp.example.com",
            "subject": subject,
            "groups": ["engineering"],
            "provider": "openai",
            "model": "gpt-4o-mini",
            "route": "/v1/chat/completions",
            "policy_version": 3,
            "decision": "allowed",
            "reason": null,
            "rules": "personal-data:mask:1",
            "approval_id": null,
            "status": 200,
            "usage": {"prompt_tokens": 12, "completion_tokens": 3},
            "record": "masked",
            "request": {"messages": [{"role": "user", "content": "mail [EMAIL]"}]},
            "response": "hello",
        })
    }

    async fn append(server: &Server, records: Vec<Value>) -> Value {
        let (status, body) = server
            .post(
                "/v1/sessions",
                Auth::Gateway(SECRET),
                json!({ "records": records }),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }

    async fn exec(server: &Server, sql: &str) {
        match server.state.store() {
            Store::Sqlite(pool) => {
                sqlx::query(sql).execute(pool).await.unwrap();
            }
            Store::Postgres(pool) => {
                sqlx::query(sql).execute(pool).await.unwrap();
            }
        }
    }

    async fn verify(server: &Server) -> Value {
        let auditor = server.token("audrey", &["warden-auditors"]);
        let (status, body) = server
            .get("/v1/sessions/verify", Auth::Bearer(&auditor))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }

    fn problems(report: &Value) -> Vec<(i64, String)> {
        report["problems"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p["seq"].as_i64().unwrap(),
                    p["kind"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    }

    pub(super) async fn sessions_append_list_show(backend: Backend) {
        let Some(server) = start(backend, |_| {}).await else {
            return;
        };
        let batch = json!({"records": [record("r1", "alice")]});
        // Gateways only: no key, a wrong key, a person's token.
        let (status, body) = server.post("/v1/sessions", Auth::None, batch.clone()).await;
        assert_code(
            status,
            &body,
            StatusCode::UNAUTHORIZED,
            "gateway_unauthorized",
        );
        let (status, body) = server
            .post("/v1/sessions", Auth::Gateway("wrong"), batch.clone())
            .await;
        assert_code(
            status,
            &body,
            StatusCode::UNAUTHORIZED,
            "gateway_unauthorized",
        );
        let admin = server.admin();
        let (status, body) = server
            .post("/v1/sessions", Auth::Bearer(&admin), batch.clone())
            .await;
        assert_code(
            status,
            &body,
            StatusCode::UNAUTHORIZED,
            "gateway_unauthorized",
        );

        let answer = append(
            &server,
            vec![
                record("r1", "alice"),
                record("r2", "bob"),
                record("r3", "alice"),
            ],
        )
        .await;
        assert_eq!(answer, json!({"stored": 3, "last_seq": 3}));
        // A retried batch (and a repeat inside one) is skipped, not duplicated.
        let answer = append(
            &server,
            vec![
                record("r2", "bob"),
                record("r4", "carol"),
                record("r4", "carol"),
            ],
        )
        .await;
        assert_eq!(answer, json!({"stored": 1, "last_seq": 4}));
        let answer = append(&server, vec![record("r1", "alice")]).await;
        assert_eq!(answer, json!({"stored": 0, "last_seq": 4}));

        // Bad records are refused whole, without echoing their contents.
        for bad in [
            json!({"records": [record("r9", "x"), {"prompt": "secret-prompt"}]}),
            json!({"records": [{"id": "x".repeat(129)}]}),
            json!({"records": ["text"]}),
            json!({"records": vec![record("a", "x"); 501]}),
        ] {
            let (status, body) = server
                .post("/v1/sessions", Auth::Gateway(SECRET), bad)
                .await;
            assert_code(status, &body, StatusCode::BAD_REQUEST, "bad_request");
            assert!(!body.to_string().contains("secret-prompt"), "{body}");
        }
        // Batches may exceed the server's 1 MiB default, up to 4 MiB.
        let mut big = record("big", "alice");
        big["response"] = json!("y".repeat(2 * 1024 * 1024));
        let answer = append(&server, vec![big]).await;
        assert_eq!(answer["last_seq"], 5);
        let mut huge = record("huge", "alice");
        huge["response"] = json!("y".repeat(5 * 1024 * 1024));
        // The server answers 413 as soon as it reads the length and may
        // close before the client has written the rest: either way the
        // batch is refused, and nothing of it is stored (checked below).
        // A client of its own: the half-written connection must not go back
        // into the pool the next requests use.
        let sent = reqwest::Client::new()
            .post(format!("{}/v1/sessions", server.base))
            .header("x-warden-gateway-key", SECRET)
            .json(&json!({"records": [huge]}))
            .send()
            .await;
        match sent {
            Ok(response) => {
                let status = response.status();
                let body: Value = response.json().await.unwrap_or(Value::Null);
                assert_code(
                    status,
                    &body,
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                );
            }
            Err(err) => assert!(err.is_request(), "{err}"),
        }

        // Reading needs an auditor (or an admin).
        let (status, body) = server.get("/v1/sessions", Auth::None).await;
        assert_code(status, &body, StatusCode::UNAUTHORIZED, "unauthorized");
        let engineer = server.token("eve", &["engineering"]);
        for path in ["/v1/sessions", "/v1/sessions/r1", "/v1/sessions/verify"] {
            let (status, body) = server.get(path, Auth::Bearer(&engineer)).await;
            assert_code(status, &body, StatusCode::FORBIDDEN, "auditor_required");
        }
        let auditor = server.token("audrey", &["warden-auditors"]);
        let (status, body) = server.get("/v1/sessions", Auth::Bearer(&auditor)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let seqs: Vec<i64> = body["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["seq"].as_i64().unwrap())
            .collect();
        assert_eq!(seqs, [5, 4, 3, 2, 1]);
        let first = &body["sessions"][4];
        assert_eq!(first["id"], "r1");
        assert_eq!(first["subject"], "alice");
        assert_eq!(first["decision"], "allowed");
        assert_eq!(first["model"], "gpt-4o-mini");
        assert_eq!(first["rules"], "personal-data:mask:1");
        assert!(first.get("request").is_none(), "summaries leave bodies out");

        let (status, body) = server
            .get(
                "/v1/sessions?subject=alice&limit=2&before_seq=5",
                Auth::Bearer(&admin),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let ids: Vec<&str> = body["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["r3", "r1"]);
        let (status, body) = server
            .get("/v1/sessions?limit=0", Auth::Bearer(&auditor))
            .await;
        assert_code(status, &body, StatusCode::BAD_REQUEST, "bad_request");

        let (status, body) = server.get("/v1/sessions/r2", Auth::Bearer(&auditor)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["seq"], 2);
        assert_eq!(body["record"], record("r2", "bob"));
        let (_, first) = server.get("/v1/sessions/r1", Auth::Bearer(&auditor)).await;
        assert_eq!(body["prev_hash"], first["hash"]);
        assert_eq!(
            first["prev_hash"],
            warden_control_plane::chain::GENESIS_HASH
        );
        let text = serde_json::to_string(&record("r1", "alice")).unwrap();
        assert_eq!(
            first["hash"],
            warden_control_plane::chain::chain_hash(
                warden_control_plane::chain::GENESIS_HASH,
                &text
            )
        );
        let (status, body) = server
            .get("/v1/sessions/nope", Auth::Bearer(&auditor))
            .await;
        assert_code(status, &body, StatusCode::NOT_FOUND, "session_not_found");

        let report = verify(&server).await;
        assert_eq!(report, json!({"ok": true, "checked": 5, "problems": []}));
    }

    pub(super) async fn sessions_tampering_is_reported(backend: Backend) {
        let Some(server) = start(backend, |_| {}).await else {
            return;
        };
        let records: Vec<Value> = (1..=10)
            .map(|i| record(&format!("r{i}"), "alice"))
            .collect();
        append(&server, records).await;
        assert_eq!(verify(&server).await["ok"], true);

        // Edit a record's text: its own hash no longer matches.
        exec(
            &server,
            "UPDATE sessions SET record = REPLACE(record, 'allow', 'block') WHERE seq = 2",
        )
        .await;
        let report = verify(&server).await;
        assert_eq!(report["ok"], false);
        assert_eq!(problems(&report), [(2, "edited".to_owned())], "{report}");

        // Delete a middle row: a gap.
        exec(&server, "DELETE FROM sessions WHERE seq = 5").await;
        let report = verify(&server).await;
        assert_eq!(
            problems(&report),
            [(2, "edited".to_owned()), (5, "deleted".to_owned())],
            "{report}"
        );
        assert_eq!(report["checked"], 9);

        // Swap two rows' places: both links point elsewhere in the chain.
        exec(&server, "UPDATE sessions SET seq = -1 WHERE seq = 7").await;
        exec(&server, "UPDATE sessions SET seq = 7 WHERE seq = 8").await;
        exec(&server, "UPDATE sessions SET seq = 8 WHERE seq = -1").await;
        let report = verify(&server).await;
        assert_eq!(
            problems(&report),
            [
                (2, "edited".to_owned()),
                (5, "deleted".to_owned()),
                (7, "reordered".to_owned()),
                (8, "reordered".to_owned()),
            ],
            "{report}"
        );

        // Rewrite a record and its hash consistently: the next link breaks.
        let (_, r10) = server
            .get(
                "/v1/sessions/r10",
                Auth::Bearer(&server.token("a", &["warden-auditors"])),
            )
            .await;
        let forged = r#"{"id":"r10","forged":true}"#;
        let hash =
            warden_control_plane::chain::chain_hash(r10["prev_hash"].as_str().unwrap(), forged);
        exec(
            &server,
            &format!("UPDATE sessions SET record = '{forged}', hash = '{hash}' WHERE seq = 10"),
        )
        .await;
        append(&server, vec![record("r11", "alice")]).await;
        exec(
            &server,
            &format!(
                "UPDATE sessions SET record = '{{\"id\":\"r10\"}}', hash = '{}' WHERE seq = 10",
                warden_control_plane::chain::chain_hash(
                    r10["prev_hash"].as_str().unwrap(),
                    "{\"id\":\"r10\"}"
                )
            ),
        )
        .await;
        let report = verify(&server).await;
        assert_eq!(
            problems(&report).last().unwrap(),
            &(11, "broken_link".to_owned()),
            "{report}"
        );
    }

    pub(super) async fn sessions_concurrent_appends_keep_one_chain(backend: Backend) {
        let Some(server) = start(backend, |_| {}).await else {
            return;
        };
        // A second replica on the same database (SQLite: the same file
        // through its own pool), so the two writers do not share a pool.
        let same_db = match backend {
            Backend::Sqlite => format!(
                "sqlite://{}",
                server
                    ._dir
                    .path()
                    .join(warden_control_plane::store::SQLITE_FILE_NAME)
                    .display()
            ),
            Backend::Postgres => server.state.config().database_url.clone().unwrap(),
        };
        let replica = Arc::new(start_on(Some(same_db), |_| {}).await);
        let server = Arc::new(server);
        let mut tasks = Vec::new();
        for writer in 0..2 {
            let server = if writer == 0 {
                server.clone()
            } else {
                replica.clone()
            };
            tasks.push(tokio::spawn(async move {
                let mut last = 0;
                for batch in 0..6 {
                    let records: Vec<Value> = (0..100)
                        .map(|i| record(&format!("w{writer}-{batch}-{i}"), "alice"))
                        .collect();
                    let answer = append(&server, records).await;
                    assert_eq!(answer["stored"], 100, "{answer}");
                    let seq = answer["last_seq"].as_i64().unwrap();
                    assert!(seq >= last + 100, "{seq} after {last}");
                    last = seq;
                }
                last
            }));
        }
        let mut lasts = Vec::new();
        for task in tasks {
            lasts.push(task.await.unwrap());
        }
        assert_eq!(lasts.iter().max(), Some(&1200));
        // 1200 rows: the check reads more than one page.
        let started = Instant::now();
        let report = verify(&server).await;
        eprintln!("verified 1200 records in {:?}", started.elapsed());
        assert_eq!(report, json!({"ok": true, "checked": 1200, "problems": []}));
    }

    pub(super) async fn sessions_cli(backend: Backend) {
        let Some(server) = start(backend, |_| {}).await else {
            return;
        };
        append(
            &server,
            vec![
                record("r1", "alice"),
                record("r2", "bob"),
                record("r3", "alice"),
            ],
        )
        .await;
        let auditor = server.token("audrey", &["warden-auditors"]);
        let server = Arc::new(server);
        let run = |args: &'static [&'static str]| {
            let server = server.clone();
            let token = auditor.clone();
            tokio::task::spawn_blocking(move || super::warden(&server, &token, args))
        };
        let (code, stdout, stderr) = run(&["sessions", "verify"]).await.unwrap();
        assert_eq!(code, 0, "{stdout}{stderr}");
        assert!(stdout.starts_with("ok: 3 records"), "{stdout}");
        let (code, stdout, stderr) = run(&["sessions", "list", "--subject", "alice"])
            .await
            .unwrap();
        assert_eq!(code, 0, "{stderr}");
        assert!(stdout.contains("r3") && stdout.contains("r1"), "{stdout}");
        assert!(!stdout.contains("r2"), "{stdout}");
        let (code, stdout, stderr) = run(&["sessions", "show", "r2"]).await.unwrap();
        assert_eq!(code, 0, "{stderr}");
        assert!(stdout.contains("seq:         2"), "{stdout}");
        assert!(stdout.contains("\"subject\": \"bob\""), "{stdout}");

        exec(
            &server,
            "UPDATE sessions SET record = REPLACE(record, 'bob', 'bib') WHERE seq = 2",
        )
        .await;
        let (code, stdout, stderr) = run(&["sessions", "verify"]).await.unwrap();
        assert_eq!(code, 1, "{stdout}{stderr}");
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(lines.len(), 1, "{stdout}");
        assert!(lines[0].starts_with("seq 2: edited: "), "{stdout}");
        let (code, stdout, _) = run(&["sessions", "verify", "--json"]).await.unwrap();
        assert_eq!(code, 1);
        let report: Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(report["ok"], false);
        assert_eq!(report["problems"][0]["kind"], "edited");

        // A person outside the auditor group is told why.
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_warden"))
            .args(["sessions", "list"])
            .env("WARDEN_SERVER", &server.base)
            .env("WARDEN_TOKEN", server.token("eve", &["engineering"]))
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&output.stderr).contains("auditor_required"));
    }
}

mod sessions_on {
    use super::sessions::*;
    use super::Backend;
    on_both!(
        sessions_append_list_show,
        sessions_tampering_is_reported,
        sessions_concurrent_appends_keep_one_chain,
        sessions_cli,
    );
}

// ---------------------------------------------------------------------------
// The replay page's reads: list filters and paging, approvals for auditors

mod replay {
    use super::*;

    fn record(id: &str, subject: &str, decision: &str, time: &str) -> Value {
        json!({
            "id": id, "time": time, "subject": subject, "decision": decision,
            "issuer": "https://idp.example.com", "route": "/v1/chat/completions",
            "rules": "", "policy_version": 1, "record": "metadata", "groups": [],
        })
    }

    fn ids(body: &Value) -> Vec<String> {
        body["sessions"]
            .as_array()
            .unwrap_or_else(|| panic!("no sessions in {body}"))
            .iter()
            .map(|s| s["id"].as_str().unwrap().to_owned())
            .collect()
    }

    pub(super) async fn session_list_filters_and_pages(backend: Backend) {
        let Some(server) = start(backend, |_| {}).await else {
            return;
        };
        // r1..r9 one minute apart; every third one blocked, bob's are r2, r5, r8.
        let records: Vec<Value> = (1..=9)
            .map(|i| {
                let decision = if i % 3 == 0 { "blocked" } else { "masked" };
                let subject = if i % 3 == 2 { "bob" } else { "alice" };
                record(
                    &format!("r{i}"),
                    subject,
                    decision,
                    &format!("2026-01-02T03:0{i}:00.000Z"),
                )
            })
            .collect();
        let (status, body) = server
            .post(
                "/v1/sessions",
                Auth::Gateway(SECRET),
                json!({ "records": records }),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let auditor = server.token("audrey", &["warden-auditors"]);
        let list = |query: &str| {
            let path = format!("/v1/sessions?{query}");
            let server = &server;
            let auditor = auditor.clone();
            async move { server.get(&path, Auth::Bearer(&auditor)).await }
        };

        // Unfiltered pages say where the next one starts, and when none is left.
        let (status, page) = list("limit=4").await;
        assert_eq!(status, StatusCode::OK, "{page}");
        assert_eq!(ids(&page), ["r9", "r8", "r7", "r6"]);
        assert_eq!(page["next_before_seq"], 6);
        let (_, page) = list("limit=4&before_seq=6").await;
        assert_eq!(ids(&page), ["r5", "r4", "r3", "r2"]);
        let (_, page) = list("limit=4&before_seq=2").await;
        assert_eq!(ids(&page), ["r1"]);
        assert_eq!(page["next_before_seq"], Value::Null);

        // By decision, paged through the matches.
        let (_, page) = list("decision=blocked&limit=2").await;
        assert_eq!(ids(&page), ["r9", "r6"]);
        assert_eq!(page["next_before_seq"], 6);
        let (_, page) = list("decision=blocked&limit=2&before_seq=6").await;
        assert_eq!(ids(&page), ["r3"]);
        assert_eq!(page["next_before_seq"], Value::Null);

        // By time (the record's, both ends included), with any offset.
        let (_, page) = list("since=2026-01-02T03:04:00Z&until=2026-01-02T03:06:00Z").await;
        assert_eq!(ids(&page), ["r6", "r5", "r4"]);
        let (_, page) = list("until=2026-01-02T05:02:00%2B02:00").await;
        assert_eq!(ids(&page), ["r2", "r1"]);
        // With the subject and the decision together.
        let (_, page) = list("subject=bob&decision=masked&since=2026-01-02T03:03:00Z").await;
        assert_eq!(ids(&page), ["r8", "r5"]);
        let (_, page) = list("decision=approved").await;
        assert_eq!(ids(&page), Vec::<String>::new());
        assert_eq!(page["next_before_seq"], Value::Null);

        for bad in ["since=yesterday", "until=2026-01-02", "limit=0"] {
            let (status, body) = list(bad).await;
            assert_code(status, &body, StatusCode::BAD_REQUEST, "bad_request");
        }
        // An empty filter (what an empty form field sends) is no filter.
        let (status, page) = list("decision=&since=&until=&subject=").await;
        assert_eq!(status, StatusCode::OK, "{page}");
        assert_eq!(ids(&page).len(), 9);
        // The filters are for auditors only, like the list.
        let (status, body) = server
            .get(
                "/v1/sessions?decision=blocked",
                Auth::Bearer(&server.token("eve", &["engineering"])),
            )
            .await;
        assert_code(status, &body, StatusCode::FORBIDDEN, "auditor_required");
    }

    pub(super) async fn auditors_read_approvals_and_decide_nothing(backend: Backend) {
        let Some(server) = start(backend, |_| {}).await else {
            return;
        };
        let (status, opened) = server
            .post(
                "/v1/approvals",
                Auth::Gateway(SECRET),
                request_from(&server, "alice", "e", 300),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{opened}");
        let id = opened["id"].as_str().unwrap().to_owned();
        let path = format!("/v1/approvals/{id}");
        let auditor = server.token("audrey", &["warden-auditors"]);
        let outsider = server.token("eve", &["engineering"]);

        // Before: the auditor reads it pending; someone else learns nothing.
        let (status, seen) = server.get(&path, Auth::Bearer(&auditor)).await;
        assert_eq!(status, StatusCode::OK, "{seen}");
        assert_eq!(seen["status"], "pending");
        let (status, body) = server.get(&path, Auth::Bearer(&outsider)).await;
        assert_code(status, &body, StatusCode::NOT_FOUND, "approval_not_found");

        // Reading is all: an auditor decides nothing.
        let (status, body) = server
            .post(
                &format!("{path}/approve"),
                Auth::Bearer(&auditor),
                json!({"reason": "audit"}),
            )
            .await;
        assert_code(status, &body, StatusCode::FORBIDDEN, "not_an_approver");

        let lead = server.token("lena", &["leads"]);
        let (status, body) = server
            .post(
                &format!("{path}/approve"),
                Auth::Bearer(&lead),
                json!({"reason": "restore drill CHG-1"}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let (status, seen) = server.get(&path, Auth::Bearer(&auditor)).await;
        assert_eq!(status, StatusCode::OK, "{seen}");
        assert_eq!(seen["status"], "approved");
        assert_eq!(seen["decided_by"], "lena");
        assert_eq!(seen["reason"], "restore drill CHG-1");
        assert_eq!(seen["subject"], "alice");
        // The approvers' list is theirs: the auditor's holds nothing.
        let (status, list) = server
            .get("/v1/approvals?status=all", Auth::Bearer(&auditor))
            .await;
        assert_eq!(status, StatusCode::OK, "{list}");
        assert_eq!(list["approvals"], json!([]));
    }

    pub(super) async fn the_auditor_group_is_configurable(backend: Backend) {
        let Some(server) = start(backend, |c| c.auditor_group = "compliance".into()).await else {
            return;
        };
        let (_, opened) = server
            .post(
                "/v1/approvals",
                Auth::Gateway(SECRET),
                request_from(&server, "alice", "c", 300),
            )
            .await;
        let path = format!("/v1/approvals/{}", opened["id"].as_str().unwrap());
        let (status, body) = server
            .get(
                &path,
                Auth::Bearer(&server.token("audrey", &["warden-auditors"])),
            )
            .await;
        assert_code(status, &body, StatusCode::NOT_FOUND, "approval_not_found");
        let (status, body) = server
            .get(&path, Auth::Bearer(&server.token("carl", &["compliance"])))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
}

mod replay_on {
    use super::replay::*;
    use super::Backend;
    on_both!(
        session_list_filters_and_pages,
        auditors_read_approvals_and_decide_nothing,
        the_auditor_group_is_configurable,
    );
}

// ---------------------------------------------------------------------------
// Cancelled writes (issue 12, F6): a request dropped mid-write (the gateway
// gives up after 5 s and closes the connection) must not leave its
// connection inside a transaction, which made every later write fail.

mod cancellation {
    use super::*;
    use std::future::Future;
    use std::task::{Context, Wake, Waker};

    use sqlx::Connection as _;
    use warden_control_plane::approvals::{new_row, OpenRequest};
    use warden_control_plane::sessions::validate_batch;
    use warden_control_plane::store::{Decider, Store};

    /// A session record with only the fields the type requires.
    fn minimal_record(id: &str, subject: &str) -> Value {
        json!({
            "id": id, "subject": subject, "time": "2026-01-02T03:04:05Z", "groups": [],
            "route": "/v1/chat/completions", "policy_version": 1, "decision": "allowed",
            "rules": "", "record": "metadata",
        })
    }

    /// Completes a oneshot when woken.
    struct Signal(Mutex<Option<oneshot::Sender<()>>>);

    impl Wake for Signal {
        fn wake(self: Arc<Self>) {
            if let Some(woken) = self.0.lock().unwrap().take() {
                let _ = woken.send(());
            }
        }
    }

    /// Polls `future` `polls` times, each time after the previous poll's
    /// wake-up (what it waited for is there), and drops it right after the
    /// last one: a cancellation at a known await point, whatever the timing.
    /// Returns whether it finished first.
    async fn cancel_after<F: Future>(future: F, polls: usize) -> bool {
        let mut future = std::pin::pin!(future);
        for poll in 1..=polls {
            let (woken, wait) = oneshot::channel();
            let waker = Waker::from(Arc::new(Signal(Mutex::new(Some(woken)))));
            if future
                .as_mut()
                .poll(&mut Context::from_waker(&waker))
                .is_ready()
            {
                return true;
            }
            if poll < polls {
                let _ = wait.await;
            }
        }
        false
    }

    /// Waits until `check` holds (each round trip to the database yields).
    async fn eventually<F, C>(what: &str, mut check: C)
    where
        C: FnMut() -> F,
        F: Future<Output = bool>,
    {
        let deadline = Instant::now() + STALLED;
        while !check().await {
            assert!(Instant::now() < deadline, "never happened: {what}");
            tokio::task::yield_now().await;
        }
    }

    fn approval(subject: &str, body: usize) -> OpenRequest {
        let mut request = approval_request(subject, "a", 300);
        request["body_sha256"] = json!(format!("{body:064x}"));
        serde_json::from_value(request).unwrap()
    }

    /// Waits until every connection of the pool is back (idle) or closed:
    /// returning one runs the pool's release check on a task of its own.
    async fn settle(store: &Store) {
        eventually("the pool's connections came back", move || async move {
            match store {
                Store::Sqlite(pool) => pool.num_idle() == pool.size() as usize,
                Store::Postgres(pool) => pool.num_idle() == pool.size() as usize,
            }
        })
        .await;
    }

    /// Every idle connection of the pool is outside a transaction, as the
    /// database sees it. Taking them all at once means each is looked at;
    /// connections in use (a write still running) are not idle.
    async fn assert_no_idle_transaction(store: &Store) {
        match store {
            Store::Sqlite(pool) => {
                let mut held = Vec::new();
                for _ in 0..pool.num_idle() {
                    let mut conn = pool.acquire().await.unwrap();
                    // SQLite refuses a BEGIN inside a transaction.
                    sqlx::query("BEGIN")
                        .execute(&mut *conn)
                        .await
                        .unwrap_or_else(|e| {
                            panic!("a pooled connection is inside a transaction: {e}")
                        });
                    sqlx::query("ROLLBACK").execute(&mut *conn).await.unwrap();
                    held.push(conn);
                }
            }
            Store::Postgres(pool) => {
                let mut held = Vec::new();
                for _ in 0..pool.num_idle() {
                    let mut conn = pool.acquire().await.unwrap();
                    // A simple query outside a block starts its own transaction.
                    let row =
                        sqlx::raw_sql("SELECT transaction_timestamp() = statement_timestamp()")
                            .fetch_one(&mut *conn)
                            .await
                            .unwrap();
                    let outside: bool = sqlx::Row::get(&row, 0);
                    assert!(outside, "a pooled connection is inside a transaction");
                    held.push(conn);
                }
            }
        }
    }

    pub(super) async fn cancelled_writes_leave_the_pool_clean(backend: Backend) {
        let Some(server) = start(backend, |_| {}).await else {
            return;
        };
        let store = &server.state.store().clone();
        let now_ms = || server.state.clock().now_ms();

        // Below the store: sqlx's own `begin`, dropped at each of its await
        // points in turn. Dropped after the database began but before the
        // `Transaction` existed, the transaction has no owner: the pool must
        // close that connection rather than hand it out again. Whether a
        // given poll reaches that point depends on the database's speed, so
        // the two states it can leave are also made on purpose below.
        let mut polls = 1;
        loop {
            let finished = match store {
                Store::Sqlite(pool) => {
                    let mut conn = pool.acquire().await.unwrap();
                    cancel_after(conn.begin_with("BEGIN IMMEDIATE"), polls).await
                }
                Store::Postgres(pool) => {
                    let mut conn = pool.acquire().await.unwrap();
                    cancel_after(conn.begin(), polls).await
                }
            };
            // Before anything else uses it (a later write's COMMIT would
            // end a PostgreSQL transaction left open, by chance).
            settle(store).await;
            assert_no_idle_transaction(store).await;
            if finished {
                break;
            }
            polls += 1;
            assert!(polls < 100, "BEGIN never finished");
        }
        // A transaction sqlx counts with no `Transaction` left to end it
        // (SQLite: a `begin_with` dropped while it checked the handle).
        match store {
            Store::Sqlite(pool) => {
                let mut conn = pool.acquire().await.unwrap();
                std::mem::forget(conn.begin_with("BEGIN IMMEDIATE").await.unwrap());
                assert!(conn.is_in_transaction());
            }
            Store::Postgres(pool) => {
                let mut conn = pool.acquire().await.unwrap();
                std::mem::forget(conn.begin().await.unwrap());
                assert!(conn.is_in_transaction());
            }
        }
        settle(store).await;
        assert_no_idle_transaction(store).await;
        if let Store::Postgres(pool) = store {
            // One sqlx does not count (PostgreSQL: a `begin` dropped while
            // it waited for the server's answer).
            let mut conn = pool.acquire().await.unwrap();
            sqlx::raw_sql("BEGIN").execute(&mut *conn).await.unwrap();
            assert!(!conn.is_in_transaction());
            drop(conn);
            settle(store).await;
            assert_no_idle_transaction(store).await;
        }

        // Every store write, dropped once started: each still completes.
        const N: usize = 8;
        for i in 0..N {
            let sha = warden_control_plane::policies::sha256_hex(POLICY_V1);
            let message = format!("dropped {i}");
            cancel_after(
                store.publish_policy("root", &message, POLICY_V1, &sha, false),
                1,
            )
            .await;
            let row = new_row(approval("alice", i), now_ms()).unwrap();
            cancel_after(store.open_approval(row, now_ms()), 1).await;
            let batch = validate_batch(vec![serde_json::from_value(minimal_record(
                &format!("r{i}"),
                "alice",
            ))
            .unwrap()])
            .unwrap();
            cancel_after(store.append_sessions(batch, "2026-01-02T03:04:05.000Z"), 1).await;
        }
        eventually("the dropped publishes completed", move || async move {
            store.list_policies().await.unwrap().len() == N
        })
        .await;
        eventually("the dropped approvals were opened", move || async move {
            store.recent_approvals().await.unwrap().len() == N
        })
        .await;
        eventually("the dropped sessions were appended", move || async move {
            store.list_sessions(None, None, 100).await.unwrap().len() == N
        })
        .await;
        cancel_after(store.activate_policy(2), 1).await;
        eventually("the dropped activation completed", move || async move {
            store
                .active_policy()
                .await
                .unwrap()
                .is_some_and(|p| p.meta.version == 2)
        })
        .await;
        let (row, _) = store
            .open_approval(new_row(approval("bob", 0), now_ms()).unwrap(), now_ms())
            .await
            .unwrap();
        let lead = Decider {
            issuer: "https://idp.example".into(),
            subject: "lena".into(),
            email: None,
        };
        let id = row.id.as_str();
        cancel_after(
            store.decide_approval(id, true, &lead, Some("ok"), now_ms()),
            1,
        )
        .await;
        eventually("the dropped decision was recorded", move || async move {
            store.approval(id).await.unwrap().unwrap().status == "approved"
        })
        .await;
        cancel_after(store.consume_approval(id, now_ms()), 1).await;
        eventually("the dropped use was recorded", move || async move {
            store
                .approval(id)
                .await
                .unwrap()
                .unwrap()
                .consumed_ms
                .is_some()
        })
        .await;

        // Over HTTP: requests the client drops at each point of their way.
        let admin = server.admin();
        for polls in 1..=6 {
            let publish = server.post(
                "/v1/policies",
                Auth::Bearer(&admin),
                json!({"document": POLICY_V2, "message": "dropped", "activate": polls % 2 == 0}),
            );
            cancel_after(publish, polls).await;
            let open = server.post(
                "/v1/approvals",
                Auth::Gateway(SECRET),
                request_from(&server, "carol", &format!("{polls}"), 300),
            );
            cancel_after(open, polls).await;
            let append = server.post(
                "/v1/sessions",
                Auth::Gateway(SECRET),
                json!({"records": [minimal_record(&format!("h{polls}"), "carol")]}),
            );
            cancel_after(append, polls).await;
        }

        // No connection came back inside a transaction, and every write works.
        assert_no_idle_transaction(store).await;
        let published = server.publish(POLICY_V2, "after the drops", true).await;
        let (status, body) = server
            .post(
                &format!("/v1/policies/{}/activate", published["version"]),
                Auth::Bearer(&admin),
                json!({}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let (status, opened) = server
            .post(
                "/v1/approvals",
                Auth::Gateway(SECRET),
                request_from(&server, "dave", "d", 300),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{opened}");
        let (status, body) = server
            .post(
                &format!("/v1/approvals/{}/approve", opened["id"].as_str().unwrap()),
                Auth::Bearer(&server.token("lena", &["leads"])),
                json!({"reason": "fine"}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let (status, body) = server
            .post(
                "/v1/sessions",
                Auth::Gateway(SECRET),
                json!({"records": [minimal_record("after", "dave")]}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_no_idle_transaction(store).await;
    }
}

mod cancellation_on {
    use super::cancellation::*;
    use super::Backend;
    on_both!(cancelled_writes_leave_the_pool_clean);
}

// ---------------------------------------------------------------------------
// Policy checks (issue 12, F7): compiling runs off the async threads, within
// bounds, so one person cannot stall policy polls and approvals.

/// A door the server's policy checks wait at while it is closed; each check
/// says when it arrives.
struct Door {
    closed: Mutex<bool>,
    opened: std::sync::Condvar,
    arrived: tokio::sync::mpsc::UnboundedSender<()>,
}

impl Door {
    fn pass(&self) {
        let _ = self.arrived.send(());
        let mut closed = self.closed.lock().unwrap();
        while *closed {
            closed = self.opened.wait(closed).unwrap();
        }
    }

    fn set(&self, closed: bool) {
        *self.closed.lock().unwrap() = closed;
        self.opened.notify_all();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_checks_do_not_stall_the_server() {
    use warden_control_plane::policies::{CheckLimits, MAX_DOCUMENT_BYTES};

    let (arrived, mut arrivals) = tokio::sync::mpsc::unbounded_channel();
    let door = Arc::new(Door {
        closed: Mutex::new(false),
        opened: std::sync::Condvar::new(),
        arrived,
    });
    // The server on a runtime of its own with ONE thread: were a check to
    // run on it, nothing else would be answered while the check waits.
    let dir = tempfile::tempdir().unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let mut config = test_config(dir.path(), &base, None);
    let hold = door.clone();
    config.policy_checks = CheckLimits {
        concurrent: 1,
        // A second check is refused at once, not queued: what is measured.
        queue: Duration::ZERO,
        burst: 3,
        // Refilled only when the test moves the clock.
        refill: Duration::from_secs(3600),
        deadline: Duration::from_secs(3600),
        before_check: Some(Arc::new(move || hold.pass())),
    };
    let time = ManualClock::at(T0_MS);
    config.clock = time.clock();
    let (ready, started) = oneshot::channel();
    let (stop, stopped) = oneshot::channel::<()>();
    let thread = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let state = AppState::build(&config).await.unwrap();
            let listener = TcpListener::from_std(listener).unwrap();
            let _ = ready.send(state.clone());
            run(listener, state, async move {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
    });
    let server = Server {
        base,
        state: started.await.unwrap(),
        http: reqwest::Client::new(),
        _dir: dir,
        stop: Some(stop),
        serving: None,
    };
    // The door open, a publish goes through the checker.
    server.publish(POLICY_V1, "first", true).await;
    arrivals.recv().await.unwrap();

    // Alice's check held in flight.
    door.set(true);
    let alice = server.token("alice", &["engineering"]);
    let held = {
        let http = server.http.clone();
        let url = format!("{}/v1/policies/validate", server.base);
        let alice = alice.clone();
        tokio::spawn(async move {
            let response = http
                .post(url)
                .bearer_auth(alice)
                .json(&json!({"document": POLICY_V2}))
                .send()
                .await
                .unwrap();
            (response.status(), response.json::<Value>().await.unwrap())
        })
    };
    arrivals.recv().await.unwrap();

    // Meanwhile the gateways' poll, an approval and the health check are answered.
    let (status, active) = tokio::time::timeout(
        STALLED,
        server.get("/v1/policy/active", Auth::Gateway(SECRET)),
    )
    .await
    .expect("policy poll: no answer while a check runs");
    assert_eq!(status, StatusCode::OK, "{active}");
    assert_eq!(active["version"], 1);
    let (status, opened) = tokio::time::timeout(
        STALLED,
        server.post(
            "/v1/approvals",
            Auth::Gateway(SECRET),
            request_from(&server, "alice", "f", 300),
        ),
    )
    .await
    .expect("approval: no answer while a check runs");
    assert_eq!(status, StatusCode::CREATED, "{opened}");
    let (status, _) = tokio::time::timeout(STALLED, server.get("/healthz", Auth::None))
        .await
        .expect("health check: no answer while a check runs");
    assert_eq!(status, StatusCode::OK);
    // One check more than the slots is refused at once, not queued.
    let bob = server.token("bob", &["engineering"]);
    let response = server
        .http
        .post(format!("{}/v1/policies/validate", server.base))
        .bearer_auth(&bob)
        .json(&json!({"document": POLICY_V2}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()["retry-after"], "1");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "policy_checks_busy", "{body}");
    assert!(!held.is_finished(), "the held check ended early");

    // The door opens: the held check answers.
    door.set(false);
    let (status, body) = held.await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"valid": true}));

    // Alice used one of her three; two more, then 429 with when to retry.
    async fn validate(server: &Server, token: &str, document: &str) -> (StatusCode, Value) {
        server
            .post(
                "/v1/policies/validate",
                Auth::Bearer(token),
                json!({ "document": document }),
            )
            .await
    }
    for _ in 0..2 {
        let (status, body) = validate(&server, &alice, POLICY_V2).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let response = server
        .http
        .post(format!("{}/v1/policies/validate", server.base))
        .bearer_auth(&alice)
        .json(&json!({"document": POLICY_V2}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    // The clock has not moved: one refill away.
    assert_eq!(response.headers()["retry-after"], "3600");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");
    // A second short of it, still refused; then one more check, and only one.
    time.advance(Duration::from_secs(3599));
    let (status, body) = validate(&server, &alice, POLICY_V2).await;
    assert_code(status, &body, StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    time.advance(Duration::from_secs(1));
    // (Her token is an hour old: a fresh one, for the same bucket.)
    let alice = server.token("alice", &["engineering"]);
    let (status, body) = validate(&server, &alice, POLICY_V2).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = validate(&server, &alice, POLICY_V2).await;
    assert_code(status, &body, StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    // Bob's bucket is his own.
    let (status, body) = validate(&server, &bob, POLICY_V2).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Too large: 413 in the API's error shape, before any compiling.
    let big = format!("# {}\n{POLICY_V1}", "x".repeat(MAX_DOCUMENT_BYTES));
    let (status, body) = validate(&server, &bob, &big).await;
    assert_code(
        status,
        &body,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    );
    let (status, body) = server
        .post(
            "/v1/policies",
            Auth::Bearer(&server.admin()),
            json!({"document": big, "message": "too big"}),
        )
        .await;
    assert_code(
        status,
        &body,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    );
    // Every check that compiled after the held one went through the door:
    // alice's three, bob's one (the refused ones never reached it).
    let mut passed = 0;
    while arrivals.try_recv().is_ok() {
        passed += 1;
    }
    assert_eq!(passed, 4, "checks after the held one");

    drop(server);
    drop(thread);
}

/// The database goes away and comes back, and the control plane is not
/// restarted: while it lasts, a write is refused with a clear 503
/// (`database_unavailable`, nothing about the database in the message), never
/// a 500 or a hang, and gateways' reads go on where the database allows;
/// afterwards everything works again.
mod database_faults {
    use super::*;
    use sqlx::Connection as _;

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_locked_sqlite_file_refuses_writes_clearly_then_recovers() {
        let server = start(Backend::Sqlite, |_| {}).await.unwrap();
        let admin = server.admin();
        server.publish(POLICY_V1, "before the lock", true).await;

        // Another process (a backup, an operator's sqlite3 shell) holds the
        // write lock for as long as it likes.
        let file = server
            .state
            .config()
            .data_dir
            .join(warden_control_plane::store::SQLITE_FILE_NAME);
        let options = sqlx::sqlite::SqliteConnectOptions::new().filename(&file);
        let mut other = sqlx::SqliteConnection::connect_with(&options)
            .await
            .unwrap();
        sqlx::query("BEGIN EXCLUSIVE")
            .execute(&mut other)
            .await
            .unwrap();

        let write = json!({"document": POLICY_V2, "message": "during the lock", "activate": true});
        let (status, body) = server
            .post("/v1/policies", Auth::Bearer(&admin), write.clone())
            .await;
        assert_code(
            status,
            &body,
            StatusCode::SERVICE_UNAVAILABLE,
            "database_unavailable",
        );
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            !message.contains("warden.db") && !message.to_lowercase().contains("locked"),
            "no database detail leaves the process: {message}"
        );
        // Gateways still read the active policy (WAL: readers never wait
        // for the writer).
        let (status, active) = server.get("/v1/policy/active", Auth::Gateway(SECRET)).await;
        assert_eq!(status, StatusCode::OK, "{active}");
        assert_eq!(active["version"], 1);

        // The lock goes away: the same write now succeeds.
        sqlx::query("COMMIT").execute(&mut other).await.unwrap();
        let (status, body) = server
            .post("/v1/policies", Auth::Bearer(&admin), write)
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let (_, active) = server.get("/v1/policy/active", Auth::Gateway(SECRET)).await;
        assert_eq!(active["version"], 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn postgres_connections_cut_as_by_a_restart_are_replaced_without_an_error() {
        let Some(server) = start(Backend::Postgres, |_| {}).await else {
            return;
        };
        let admin = server.admin();
        server.publish(POLICY_V1, "before the cut", true).await;
        let url = server.state.config().database_url.clone().unwrap();

        // Every connection of the control plane's pool is ended by the
        // server, as a restart (or a failover) ends them.
        let mut dba = sqlx::PgConnection::connect(&url).await.unwrap();
        let cut: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid()) AS ended",
        )
        .fetch_one(&mut dba)
        .await
        .unwrap();
        assert!(cut >= 1, "the pool held connections to cut");
        let _ = dba.close().await;

        // The next requests find dead connections in the pool: each is
        // noticed and replaced, and no caller sees an error.
        for i in 0..8 {
            let (status, active) = server.get("/v1/policy/active", Auth::Gateway(SECRET)).await;
            assert_eq!(status, StatusCode::OK, "read {i}: {active}");
        }
        let (status, body) = server
            .post(
                "/v1/policies",
                Auth::Bearer(&admin),
                json!({"document": POLICY_V2, "message": "after the cut", "activate": true}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
}

/// SAML on, with the test IdP's metadata (`tests/fixtures/saml/`).
fn with_saml(config: &mut ServerConfig) {
    config.saml = Some(SamlSettings {
        idp_metadata_xml: include_str!("fixtures/saml/idp-metadata.xml").to_owned(),
        groups_attribute: "groups".into(),
        email_attribute: "email".into(),
    });
}

/// A token of the SAML issuer (as its code flow would give), for `sub`.
fn saml_token(server: &Server, sub: &str, groups: &[&str], alg: SigningAlg) -> String {
    server
        .state
        .saml()
        .unwrap()
        .issuer()
        .mint(&TokenRequest {
            sub: sub.into(),
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
            ttl_seconds: Some(3 * 3600),
            alg: Some(alg),
            ..TokenRequest::default()
        })
        .unwrap()
}

fn kid_of(token: &str) -> String {
    use base64::Engine as _;
    let header = token.split('.').next().unwrap();
    let header: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(header)
            .unwrap(),
    )
    .unwrap();
    header["kid"].as_str().unwrap().to_owned()
}

async fn published_kids(server: &Server) -> Vec<String> {
    let (status, jwks) = server.get("/idp/jwks.json", Auth::None).await;
    assert_eq!(status, StatusCode::OK);
    jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|key| key["kid"].as_str().unwrap().to_owned())
        .collect()
}

/// The SAML issuer's keys: a rotation publishes the new generation at once
/// and signs with it an hour later, the old one stays published while its
/// tokens live, a generation is added by itself after 30 days, and only
/// three are published (so a leaked key is gone two rotations later).
async fn saml_issuer_keys_rotate_without_failing_a_token(backend: Backend) {
    let time = ManualClock::at(T0_MS);
    let Some(server) = start(backend, |c| {
        with_saml(c);
        c.clock = time.clock();
    })
    .await
    else {
        return;
    };
    let first = published_kids(&server).await;
    assert_eq!(first.len(), 3);
    let first_ring = server.state.saml().unwrap().issuer().ring();
    let old_token = saml_token(&server, "root", &["warden-admins"], SigningAlg::ES256);
    assert!(first.contains(&kid_of(&old_token)));

    // Only an admin may rotate.
    let user = saml_token(&server, "eve", &["engineering"], SigningAlg::ES256);
    let (status, body) = server
        .post("/v1/issuer/keys/rotate", Auth::Bearer(&user), json!({}))
        .await;
    assert_code(status, &body, StatusCode::FORBIDDEN, "admin_required");
    let (status, rotated) = server
        .post(
            "/v1/issuer/keys/rotate",
            Auth::Bearer(&old_token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    assert_eq!(rotated["generation"], 2);
    assert_eq!(
        rotated["signs_from"],
        warden_control_plane::clock::rfc3339(T0_MS + PUBLISH_AHEAD_MS)
    );
    let both = published_kids(&server).await;
    assert_eq!(both.len(), 6);
    assert!(first.iter().all(|kid| both.contains(kid)));

    // For an hour the old generation still signs; then the new one does,
    // and tokens of both are accepted.
    time.advance(Duration::from_millis(
        u64::try_from(PUBLISH_AHEAD_MS).unwrap() - 1000,
    ));
    assert!(first.contains(&kid_of(&saml_token(
        &server,
        "root",
        &[],
        SigningAlg::ES256
    ))));
    time.advance(Duration::from_secs(1));
    let new_token = saml_token(&server, "root", &["warden-admins"], SigningAlg::ES256);
    assert!(!first.contains(&kid_of(&new_token)) && both.contains(&kid_of(&new_token)));
    for token in [&old_token, &new_token] {
        let (status, body) = server.get("/v1/whoami", Auth::Bearer(token)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }

    // 30 days on, the next check adds a generation by itself.
    time.advance(Duration::from_secs(30 * 24 * 3600));
    let saml = server.state.saml().unwrap();
    warden_control_plane::key_rotation::refresh(server.state.store(), saml.issuer(), &time.clock())
        .await
        .unwrap();
    assert_eq!(saml.issuer().ring().newest().number, 3);
    // Generation 1's tokens have long expired: it is no longer published.
    let three = published_kids(&server).await;
    assert_eq!(three.len(), 6);
    assert!(first.iter().all(|kid| !three.contains(kid)));
    // A fourth generation is published beside the signer (2) and 3; a
    // token generation 1's key signs now (a leaked key, say) is refused, the
    // current keys' are not.
    let admin = saml_token(&server, "root", &["warden-admins"], SigningAlg::ES256);
    let (status, body) = server
        .post("/v1/issuer/keys/rotate", Auth::Bearer(&admin), json!({}))
        .await;
    assert_eq!(
        (status, body["generation"].clone()),
        (StatusCode::OK, json!(4)),
        "{body}"
    );
    let four = published_kids(&server).await;
    assert_eq!(four.len(), 9);
    assert!(first.iter().all(|kid| !four.contains(kid)));
    let now_s = time.clock().now_s();
    let claims = json!({
        "iss": saml.issuer().issuer(), "sub": "root", "aud": "warden",
        "groups": ["warden-admins"], "iat": now_s, "exp": now_s + 3600,
    });
    let leaked = first_ring
        .sign(
            SigningAlg::ES256,
            claims.as_object().unwrap().clone(),
            time.clock().now_ms(),
        )
        .unwrap();
    let (status, body) = server.get("/v1/whoami", Auth::Bearer(&leaked)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let (status, body) = server.get("/v1/whoami", Auth::Bearer(&admin)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// Two replicas on one PostgreSQL database sign with and publish the same
/// SAML issuer keys, and one follows the other's rotation: at the latest
/// when a token names a key it does not know yet.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_replicas_share_the_saml_issuers_keys() {
    let Some(url) = fresh_postgres().await else {
        return;
    };
    let time = ManualClock::at(T0_MS);
    let a = start_on(Some(url.clone()), |c| {
        with_saml(c);
        c.clock = time.clock();
    })
    .await;
    let public = a.base.clone();
    let b = start_on(Some(url), |c| {
        with_saml(c);
        c.public_url = public;
        c.clock = time.clock();
    })
    .await;
    assert_eq!(published_kids(&a).await, published_kids(&b).await);
    let token = saml_token(&a, "root", &["warden-admins"], SigningAlg::RS256);
    let (status, body) = b.get("/v1/whoami", Auth::Bearer(&token)).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // A rotates; an hour later it signs with the new keys, which B has not read.
    let (status, _) = a
        .post("/v1/issuer/keys/rotate", Auth::Bearer(&token), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    time.advance(Duration::from_millis(
        u64::try_from(PUBLISH_AHEAD_MS).unwrap(),
    ));
    let newer = saml_token(&a, "root", &["warden-admins"], SigningAlg::RS256);
    assert!(!published_kids(&b).await.contains(&kid_of(&newer)));
    let (status, body) = b.get("/v1/whoami", Auth::Bearer(&newer)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(published_kids(&a).await, published_kids(&b).await);
}

/// The test IdP of `fixtures/saml/` (its key signs what the metadata's
/// certificate names), as `saml-rs` implements one.
fn saml_test_idp() -> saml_rs::Saml<saml_rs::Idp> {
    use saml_rs::{
        CertificatePem, Credentials, EntityId, IdpConfig, IdpValidationPolicy, PrivateKeyPem, Saml,
        SsoEndpoint,
    };
    Saml::idp(
        IdpConfig::builder(EntityId::try_new("https://idp.example.test/metadata").unwrap())
            .sso_endpoint(SsoEndpoint::redirect("https://idp.example.test/sso").unwrap())
            .credentials(Credentials {
                signing_key: Some(PrivateKeyPem::new(include_str!(
                    "fixtures/saml/idp-key.pem"
                ))),
                signing_certificate: Some(CertificatePem::new(include_str!(
                    "fixtures/saml/idp-cert.pem"
                ))),
                ..Credentials::default()
            })
            .validation(IdpValidationPolicy::recommended())
            .build()
            .unwrap(),
    )
    .unwrap()
}

/// A SAML sign-in for `warden login` started on one replica, answered on a
/// second, its code exchanged on the first and its refresh token rotated on
/// the second: every step is a database row, so no replica needs to be the
/// one that began (on SQLite: one server does all).
async fn saml_sign_in_and_refresh_work_across_replicas(backend: Backend) {
    let Some(a) = start(backend, with_saml).await else {
        return;
    };
    let b = match backend {
        Backend::Sqlite => None,
        Backend::Postgres => {
            let url = a.state.config().database_url.clone();
            let public = a.base.clone();
            Some(
                start_on(url, |c| {
                    with_saml(c);
                    c.public_url = public;
                })
                .await,
            )
        }
    };
    let b = b.as_ref().unwrap_or(&a);
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let redirect_uri = "http://127.0.0.1:53117/callback";
    let started = http
        .get(format!("{}/idp/authorize", a.base))
        .query(&[
            ("response_type", "code"),
            ("client_id", "warden-cli"),
            ("redirect_uri", redirect_uri),
            ("scope", "openid offline_access"),
            ("state", "st-1"),
            // RFC 7636 appendix B.
            (
                "code_challenge",
                "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
            ),
            ("code_challenge_method", "S256"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(started.status(), StatusCode::SEE_OTHER);
    let to_idp = started.headers()["location"].to_str().unwrap().to_owned();
    let (sso, query) = to_idp.split_once('?').unwrap();
    assert_eq!(sso, "https://idp.example.test/sso");

    // The IdP answers (its browser POST, here over HTTP to the other replica).
    let idp = saml_test_idp();
    let metadata = http
        .get(format!("{}/saml/metadata", a.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let sp = saml_rs::SpDescriptor::from_metadata_xml(
        &metadata,
        saml_rs::MetadataTrustPolicy::UnsignedForCompatibility,
    )
    .unwrap();
    let received = idp
        .receive_sso(
            &sp,
            saml_rs::BrowserInput::<saml_rs::AuthnRequest>::redirect(query),
            saml_rs::SamlValidationContext::new(
                std::time::SystemTime::now(),
                saml_rs::ReplayPolicy::DisabledForCompatibility,
            ),
        )
        .unwrap();
    let response = idp
        .respond_sso(
            &sp,
            &received,
            saml_rs::Subject::new(saml_rs::NameId::new("carol@example.com", None), Vec::new()),
            saml_rs::RespondSso::post(),
        )
        .unwrap();
    let form: Vec<(String, String)> = response
        .post_form()
        .unwrap()
        .fields()
        .iter()
        .map(|f| (f.name().to_owned(), f.value().to_owned()))
        .collect();
    let answered = http
        .post(format!("{}/saml/acs", b.base))
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(answered.status(), StatusCode::SEE_OTHER);
    let back = reqwest::Url::parse(answered.headers()["location"].to_str().unwrap()).unwrap();
    assert!(back.as_str().starts_with(redirect_uri), "{back}");
    let param = |name: &str| {
        back.query_pairs()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.into_owned())
            .unwrap()
    };
    assert_eq!(param("state"), "st-1");
    // The same response again, on either replica: its sign-in is spent.
    for replica in [&a, b] {
        let again = http
            .post(format!("{}/saml/acs", replica.base))
            .form(&form)
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), StatusCode::BAD_REQUEST);
        assert!(again.text().await.unwrap().contains("saml_refused"));
    }

    let token = |server: &Server, form: Vec<(&'static str, String)>| {
        let http = http.clone();
        let url = format!("{}/idp/oauth/token", server.base);
        async move {
            let answer = http.post(url).form(&form).send().await.unwrap();
            (answer.status(), answer.json::<Value>().await.unwrap())
        }
    };
    let (status, tokens) = token(
        &a,
        vec![
            ("grant_type", "authorization_code".into()),
            ("code", param("code")),
            ("redirect_uri", redirect_uri.into()),
            ("client_id", "warden-cli".into()),
            (
                "code_verifier",
                "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk".into(),
            ),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    let access = tokens["access_token"].as_str().unwrap().to_owned();
    for replica in [&a, b] {
        let (status, me) = replica.get("/v1/whoami", Auth::Bearer(&access)).await;
        assert_eq!(status, StatusCode::OK, "{me}");
        assert_eq!(me["identity"]["subject"], "carol@example.com");
    }
    let first_refresh = tokens["refresh_token"].as_str().unwrap().to_owned();
    let refresh = |refresh_token: String| {
        vec![
            ("grant_type", "refresh_token".to_owned()),
            ("refresh_token", refresh_token),
            ("client_id", "warden-cli".to_owned()),
        ]
    };
    let (status, renewed) = token(b, refresh(first_refresh.clone())).await;
    assert_eq!(status, StatusCode::OK, "{renewed}");
    assert_ne!(renewed["refresh_token"], tokens["refresh_token"]);
    let (status, reused) = token(&a, refresh(first_refresh)).await;
    assert_eq!(
        (status, reused["error"].clone()),
        (StatusCode::BAD_REQUEST, json!("invalid_grant"))
    );
}
