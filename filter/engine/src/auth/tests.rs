//! The "Tokens" section of shared/notes/threats.md, case by case, plus the
//! key-set, cache and freshness rules.

use jwt_simple::prelude::*;
use serde_json::{json, Value};

use super::cache::TokenCache;
use super::jwks::KeySet;
use super::*;
use crate::testing::{b64, test, RawSigner};

const ISS: &str = "https://idp.example.com/realms/acme";
const NOW: u64 = 1_800_000_000;

fn good_claims() -> Value {
    json!({"iss": ISS, "sub": "alice", "aud": "warden", "exp": NOW + 300, "iat": NOW - 10,
           "email": "alice@example.com", "groups": ["engineering", "oncall"]})
}

fn rsa() -> RS256KeyPair {
    RS256KeyPair::from_pem(include_str!("testdata/rsa-a.pem"))
        .unwrap()
        .with_key_id("rsa-a")
}

fn jwks_of(keys: &[Value]) -> Vec<u8> {
    json!({ "keys": keys }).to_string().into_bytes()
}

fn authenticator(algorithms: Option<&[&str]>) -> Authenticator {
    let mut doc = json!({
        "issuers": [{"issuer": ISS, "audiences": ["warden", "other"], "inline_jwks": {"keys": []}}]
    });
    if let Some(a) = algorithms {
        doc["issuers"][0]["algorithms"] = json!(a);
    }
    // The inline set is replaced per test by the key set passed to verify().
    doc["issuers"][0]["inline_jwks"] = json!({"keys": [RawSigner::new(9, "placeholder").jwk()]});
    let doc: AuthenticationDoc = serde_json::from_value(doc).unwrap();
    Authenticator::compile(doc, &|_| None).unwrap()
}

struct Fixture {
    auth: Authenticator,
    keys: KeySet,
    ed: RawSigner,
}

fn fixture() -> Fixture {
    let ed = RawSigner::new(1, "ed-1");
    let rsa_jwk: Value = serde_json::from_str(&rsa().public_key().to_jwk()).unwrap();
    let (keys, skipped) = KeySet::from_jwks(&jwks_of(&[ed.jwk(), rsa_jwk])).unwrap();
    assert_eq!((keys.len(), skipped), (2, 0));
    Fixture {
        auth: authenticator(None),
        keys,
        ed,
    }
}

impl Fixture {
    fn check(&self, token: &str) -> Result<Identity, AuthError> {
        self.check_at(token, NOW)
    }
    fn check_at(&self, token: &str, now: u64) -> Result<Identity, AuthError> {
        let unverified = self.auth.inspect(token)?;
        self.auth.verify(token, unverified, &self.keys, now)
    }
    fn ed_token(&self, claims: &Value) -> String {
        self.ed.sign(&self.ed.header(), claims)
    }
}

#[test]
fn a_good_token_gives_the_identity() {
    let f = fixture();
    let id = f.check(&f.ed_token(&good_claims())).unwrap();
    assert_eq!(id.subject, "alice");
    assert_eq!(id.issuer, ISS);
    assert_eq!(id.email.as_deref(), Some("alice@example.com"));
    assert_eq!(id.groups, vec!["engineering", "oncall"]);
    assert_eq!(id.expires_at, NOW + 300);
}

#[test]
fn rs256_from_a_real_library_verifies() {
    let f = fixture();
    let claims = Claims::create(Duration::from_secs(300))
        .with_issuer(ISS)
        .with_audience("warden")
        .with_subject("bob");
    let token = rsa().sign(claims).unwrap();
    let now = Clock::now_since_epoch().as_secs();
    assert_eq!(f.check_at(&token, now).unwrap().subject, "bob");
}

#[test]
fn alg_none_and_empty_signatures_are_refused() {
    let f = fixture();
    let payload = b64(good_claims().to_string().as_bytes());
    let none = format!("{}.{payload}.", b64(br#"{"alg":"none","typ":"JWT"}"#));
    assert_eq!(f.check(&none).unwrap_err(), AuthError::AlgorithmNotAllowed);
    let good = f.ed_token(&good_claims());
    let unsigned = format!("{}.", &good[..good.rfind('.').unwrap()]);
    assert_eq!(f.check(&unsigned).unwrap_err(), AuthError::BadSignature);
}

#[test]
fn algorithms_off_the_allow_list_are_refused() {
    let mut f = fixture();
    f.auth = authenticator(Some(&["RS256"]));
    assert_eq!(
        f.check(&f.ed_token(&good_claims())).unwrap_err(),
        AuthError::AlgorithmNotAllowed
    );
}

#[test]
fn hs256_signed_with_the_rsa_public_key_is_refused() {
    let f = fixture();
    let public_pem = rsa().public_key().to_pem().unwrap();
    let forged = HS256Key::from_bytes(public_pem.as_bytes())
        .with_key_id("rsa-a")
        .authenticate(
            Claims::create(Duration::from_secs(300))
                .with_issuer(ISS)
                .with_audience("warden")
                .with_subject("eve"),
        )
        .unwrap();
    assert_eq!(
        f.check(&forged).unwrap_err(),
        AuthError::AlgorithmNotAllowed
    );
    // Even on an issuer that allowed HS256, an RSA key never verifies HMAC.
    let unverified = Unverified {
        issuer: 0,
        alg: Algorithm::HS256,
        kid: Some("rsa-a".into()),
        claims: good_claims(),
        payload: good_claims().to_string().into_bytes(),
    };
    assert_eq!(
        f.auth
            .verify(&forged, unverified, &f.keys, NOW)
            .unwrap_err(),
        AuthError::UnknownKey
    );
}

#[test]
fn symmetric_and_foreign_jwks_entries_are_ignored() {
    let oct = json!({"kty": "oct", "k": b64(b"0123456789abcdef0123456789abcdef"), "kid": "s"});
    let enc = json!({"kty": "RSA", "use": "enc", "n": "AQAB", "e": "AQAB", "kid": "e"});
    let lying = {
        let mut j = RawSigner::new(3, "liar").jwk();
        j["alg"] = json!("RS256");
        j
    };
    assert_eq!(
        KeySet::from_jwks(&jwks_of(&[oct.clone(), enc, lying])).unwrap_err(),
        jwks::JwksError::NoUsableKey(3)
    );
    let (set, skipped) =
        KeySet::from_jwks(&jwks_of(&[oct, RawSigner::new(4, "ok").jwk()])).unwrap();
    assert_eq!((set.len(), skipped), (1, 1));
    assert!(KeySet::from_jwks(b"{\"keys\": 3}").is_err());
    assert!(KeySet::from_jwks(b"not json").is_err());
}

#[test]
fn header_urls_and_embedded_keys_are_never_followed() {
    let f = fixture();
    let attacker = RawSigner::new(66, "ed-1");
    let mut header = attacker.header();
    header["jwk"] = attacker.jwk();
    header["jku"] = json!("https://attacker.example/jwks.json");
    header["x5u"] = json!("https://attacker.example/cert.pem");
    header["x5c"] = json!(["MIIB"]);
    let forged = attacker.sign(&header, &good_claims());
    assert!(
        f.check(&forged).is_err(),
        "a token carrying its own key was accepted"
    );
    header.as_object_mut().unwrap().remove("jwk");
    header.as_object_mut().unwrap().remove("x5c");
    let forged = attacker.sign(&header, &good_claims());
    assert_eq!(f.check(&forged).unwrap_err(), AuthError::BadSignature);
    // The same extra headers on a token signed by the real key change nothing.
    let mut header = f.ed.header();
    header["jku"] = json!("https://attacker.example/jwks.json");
    assert!(f.check(&f.ed.sign(&header, &good_claims())).is_ok());
}

#[test]
fn kid_is_an_exact_lookup_only() {
    let f = fixture();
    for kid in ["../../dev/null", "ed-1 ", "ED-1", "/etc/passwd", ""] {
        let mut header = f.ed.header();
        header["kid"] = json!(kid);
        let token = f.ed.sign(&header, &good_claims());
        assert_eq!(
            f.check(&token).unwrap_err(),
            AuthError::UnknownKey,
            "kid {kid:?}"
        );
    }
    // No kid at all: every key of the right type is tried.
    let mut header = f.ed.header();
    header.as_object_mut().unwrap().remove("kid");
    assert!(f.check(&f.ed.sign(&header, &good_claims())).is_ok());
}

#[test]
fn crit_headers_are_refused() {
    let f = fixture();
    let mut header = f.ed.header();
    header["crit"] = json!(["exp"]);
    header["exp"] = json!(1);
    assert_eq!(
        f.check(&f.ed.sign(&header, &good_claims())).unwrap_err(),
        AuthError::Malformed
    );
}

#[test]
fn all_zero_ecdsa_signatures_are_refused() {
    let kp = ES256KeyPair::generate().with_key_id("ec-1");
    let jwk: Value = serde_json::from_str(&kp.public_key().to_jwk()).unwrap();
    let (keys, _) = KeySet::from_jwks(&jwks_of(&[jwk])).unwrap();
    let f = fixture();
    let header = json!({"alg": "ES256", "typ": "JWT", "kid": "ec-1"});
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(good_claims().to_string().as_bytes())
    );
    let zero = format!("{input}.{}", b64(&[0u8; 64]));
    let unverified = f.auth.inspect(&zero).unwrap();
    assert_eq!(
        f.auth.verify(&zero, unverified, &keys, NOW).unwrap_err(),
        AuthError::BadSignature
    );
    // And a real ES256 token with that key verifies.
    let real = kp
        .sign(
            Claims::create(Duration::from_secs(60))
                .with_issuer(ISS)
                .with_audience("warden")
                .with_subject("c"),
        )
        .unwrap();
    let now = Clock::now_since_epoch().as_secs();
    let unverified = f.auth.inspect(&real).unwrap();
    assert!(f.auth.verify(&real, unverified, &keys, now).is_ok());
}

#[test]
fn expiry_and_not_before_respect_the_skew_exactly() {
    let f = fixture();
    let skew = f.auth.skew_seconds;
    let with = |k: &str, v: Value| {
        let mut c = good_claims();
        c[k] = v;
        f.ed_token(&c)
    };
    // exp just inside and just outside the skew.
    assert!(f.check(&with("exp", json!(NOW - skew))).is_ok());
    assert_eq!(
        f.check(&with("exp", json!(NOW - skew - 1))).unwrap_err(),
        AuthError::Expired
    );
    // nbf likewise.
    assert!(f.check(&with("nbf", json!(NOW + skew))).is_ok());
    assert_eq!(
        f.check(&with("nbf", json!(NOW + skew + 1))).unwrap_err(),
        AuthError::NotYetValid
    );
    // iat in the future beyond the skew.
    assert_eq!(
        f.check(&with("iat", json!(NOW + skew + 5))).unwrap_err(),
        AuthError::NotYetValid
    );
}

#[test]
fn bad_expiry_claims_are_refused() {
    let f = fixture();
    let mut no_exp = good_claims();
    no_exp.as_object_mut().unwrap().remove("exp");
    assert_eq!(
        f.check(&f.ed_token(&no_exp)).unwrap_err(),
        AuthError::MissingExpiry
    );
    for bad in [
        json!("1900000000"),
        json!(-5),
        json!(1e300),
        json!(u64::MAX),
        json!(1.5),
        json!([1]),
    ] {
        let mut c = good_claims();
        c["exp"] = bad.clone();
        assert_eq!(
            f.check(&f.ed_token(&c)).unwrap_err(),
            AuthError::Malformed,
            "exp = {bad}"
        );
    }
}

#[test]
fn issuer_and_audience_rules() {
    let f = fixture();
    let with = |k: &str, v: Option<Value>| {
        let mut c = good_claims();
        match v {
            Some(v) => c[k] = v,
            None => {
                c.as_object_mut().unwrap().remove(k);
            }
        }
        f.ed_token(&c)
    };
    assert_eq!(
        f.check(&with("iss", None)).unwrap_err(),
        AuthError::UnknownIssuer
    );
    assert_eq!(
        f.check(&with("iss", Some(json!([ISS])))).unwrap_err(),
        AuthError::UnknownIssuer
    );
    assert_eq!(
        f.check(&with("iss", Some(json!(format!("{ISS}/")))))
            .unwrap_err(),
        AuthError::UnknownIssuer
    );
    assert_eq!(
        f.check(&with("aud", None)).unwrap_err(),
        AuthError::WrongAudience
    );
    assert_eq!(
        f.check(&with("aud", Some(json!("someone-else"))))
            .unwrap_err(),
        AuthError::WrongAudience
    );
    assert!(f
        .check(&with("aud", Some(json!(["someone-else", "warden"]))))
        .is_ok());
    assert_eq!(
        f.check(&with("sub", None)).unwrap_err(),
        AuthError::MissingSubject
    );
}

#[test]
fn malformed_tokens_never_panic() {
    let f = fixture();
    let good = f.ed_token(&good_claims());
    let parts: Vec<&str> = good.split('.').collect();
    let cases = [
        format!("{}.{}", parts[0], parts[1]),
        format!("{good}.{}", parts[2]),
        format!("{}!.{}.{}", parts[0], parts[1], parts[2]),
        format!("{}.{}.{}", b64(b"not json"), parts[1], parts[2]),
        format!("{}.{}.{}", parts[0], b64(b"[1,2"), parts[2]),
        "".to_string(),
        "...".to_string(),
        "a.b.c".to_string(),
    ];
    for token in &cases {
        assert!(f.check(token).is_err(), "{token:?} accepted");
    }
    let huge = format!(
        "{}.{}.{}",
        parts[0],
        "A".repeat(f.auth.max_token_bytes),
        parts[2]
    );
    assert_eq!(f.check(&huge).unwrap_err(), AuthError::TooLarge);
}

#[test]
fn tampered_payload_fails_the_signature() {
    let f = fixture();
    let good = f.ed_token(&good_claims());
    let parts: Vec<&str> = good.split('.').collect();
    let mut evil = good_claims();
    evil["groups"] = json!(["admins"]);
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        b64(evil.to_string().as_bytes()),
        parts[2]
    );
    assert_eq!(f.check(&tampered).unwrap_err(), AuthError::BadSignature);
}

#[test]
fn tokens_are_read_from_the_configured_headers() {
    let f = fixture();
    let h = |pairs: &[(&str, &[u8])]| -> Vec<(String, Vec<u8>)> {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_vec()))
            .collect()
    };
    let bearer = h(&[("authorization", b"Bearer abc.def.ghi")]);
    assert_eq!(
        f.auth.extract_token(Headers::new(&bearer)),
        Ok("abc.def.ghi")
    );
    let lower = h(&[("authorization", b"bearer   abc.def.ghi ")]);
    assert_eq!(
        f.auth.extract_token(Headers::new(&lower)),
        Ok("abc.def.ghi")
    );
    let api_key = h(&[("x-api-key", b"abc.def.ghi")]);
    assert_eq!(
        f.auth.extract_token(Headers::new(&api_key)),
        Ok("abc.def.ghi")
    );
    let basic = h(&[("authorization", b"Basic dXNlcjpwYXNz")]);
    assert_eq!(
        f.auth.extract_token(Headers::new(&basic)),
        Err(AuthError::Malformed)
    );
    let binary = h(&[("authorization", b"Bearer \xff\xfe")]);
    assert_eq!(
        f.auth.extract_token(Headers::new(&binary)),
        Err(AuthError::Malformed)
    );
    assert_eq!(
        f.auth.extract_token(Headers::new(&[])),
        Err(AuthError::NoToken)
    );
    let empty = h(&[("authorization", b"Bearer ")]);
    assert!(f.auth.extract_token(Headers::new(&empty)).is_err());
}

#[test]
fn nested_claim_paths_and_string_groups() {
    let doc: AuthenticationDoc = serde_json::from_value(json!({
        "issuers": [{"issuer": ISS, "audiences": ["warden"],
                     "inline_jwks": {"keys": [RawSigner::new(1, "ed-1").jwk()]},
                     "claims": {"subject": "preferred_username", "groups": "realm_access.roles"}}]
    }))
    .unwrap();
    let auth = Authenticator::compile(doc, &|_| None).unwrap();
    let ed = RawSigner::new(1, "ed-1");
    let mut claims = good_claims();
    claims["preferred_username"] = json!("alice.k");
    claims["realm_access"] = json!({"roles": ["finance", 7, "bad\nrole", "finance"]});
    let token = ed.sign(&ed.header(), &claims);
    let KeySource::Static(keys) = &auth.issuers[0].keys else {
        panic!("static keys")
    };
    let id = auth
        .verify(&token, auth.inspect(&token).unwrap(), keys, NOW)
        .unwrap();
    assert_eq!(id.subject, "alice.k");
    assert_eq!(id.groups, vec!["finance"]);
    let paths = ClaimPaths::compile(&ClaimPathsDoc::default()).unwrap();
    let one =
        identity::map_claims(ISS, &paths, &json!({"sub": "s", "groups": "ops", "exp": 1})).unwrap();
    assert_eq!(one.groups, vec!["ops"]);
}

/// The claims of a GitHub Actions job's OIDC token, as GitHub documents
/// them (`token.actions.githubusercontent.com`).
fn github_actions_claims(repository: &str, git_ref: &str) -> Value {
    let workflow = format!("{repository}/.github/workflows/release.yml@{git_ref}");
    json!({
        "iss": "https://token.actions.githubusercontent.com",
        "aud": "warden",
        "sub": format!("repo:{repository}:ref:{git_ref}"),
        "ref": git_ref, "ref_type": "branch", "ref_protected": "true",
        "repository": repository, "repository_owner": "acme",
        "repository_id": "74", "repository_owner_id": "65",
        "repository_visibility": "private", "run_id": "5545", "run_number": "12",
        "run_attempt": "1", "runner_environment": "github-hosted",
        "actor": "octocat", "actor_id": "12", "event_name": "push",
        "workflow": "release", "workflow_ref": workflow.clone(),
        "job_workflow_ref": workflow, "environment": "production",
        "iat": NOW - 10, "nbf": NOW - 10, "exp": NOW + 300
    })
}

/// The claims of a Kubernetes projected service-account token (the
/// `kubernetes.io` claim is one key with a dot in it).
fn kubernetes_claims(namespace: &str, account: &str) -> Value {
    json!({
        "iss": "https://kubernetes.default.svc.cluster.local",
        "aud": ["warden"],
        "sub": format!("system:serviceaccount:{namespace}:{account}"),
        "kubernetes.io": {
            "namespace": namespace,
            "node": {"name": "node-1", "uid": "8f9e"},
            "pod": {"name": format!("{account}-7d9f"), "uid": "1a2b"},
            "serviceaccount": {"name": account, "uid": "3c4d"},
            "warnafter": NOW + 3000
        },
        "iat": NOW - 10, "nbf": NOW - 10, "exp": NOW + 3600
    })
}

#[test]
fn workload_tokens_get_groups_from_the_claims_their_platform_signs() {
    let ed = RawSigner::new(1, "ed-1");
    let jwks = json!({"keys": [ed.jwk()]});
    let doc: AuthenticationDoc = serde_json::from_value(json!({"issuers": [
        {"issuer": "https://token.actions.githubusercontent.com", "audiences": ["warden"],
         "inline_jwks": jwks,
         "claims": {"subject": "job_workflow_ref", "group_rules": [
            {"group": "ci-release", "when": {"repository": "acme/api", "ref": "refs/heads/main",
                                              "job_workflow_ref": "acme/api/.github/workflows/release.yml@*"}},
            {"group": "ci", "when": {"repository_owner": "acme"}}]}},
        {"issuer": "https://kubernetes.default.svc.cluster.local", "audiences": ["warden"],
         "inline_jwks": jwks,
         "claims": {"group_rules": [
            {"group": "batch-reports", "when": {"/kubernetes.io/namespace": "batch",
                                                 "/kubernetes.io/serviceaccount/name": "report-*"}}]}}
    ]}))
    .unwrap();
    let auth = Authenticator::compile(doc, &|_| None).unwrap();
    let identity = |claims: &Value| {
        let token = ed.sign(&ed.header(), claims);
        let unverified = auth.inspect(&token).unwrap();
        let KeySource::Static(keys) = &auth.issuers[unverified.issuer].keys else {
            panic!("static keys")
        };
        auth.verify(&token, unverified, keys, NOW).unwrap()
    };

    let main = identity(&github_actions_claims("acme/api", "refs/heads/main"));
    assert_eq!(main.groups, ["ci", "ci-release"]);
    assert_eq!(
        main.subject,
        "acme/api/.github/workflows/release.yml@refs/heads/main"
    );
    let branch = identity(&github_actions_claims("acme/api", "refs/heads/feature"));
    assert_eq!(branch.groups, ["ci"]);
    let fork = identity(&github_actions_claims("other/api", "refs/heads/main"));
    assert_eq!(fork.groups, ["ci"], "the owner is still acme: only ci");
    let mut stranger = github_actions_claims("evil/api", "refs/heads/main");
    stranger["repository_owner"] = json!("evil");
    assert!(identity(&stranger).groups.is_empty());

    let job = identity(&kubernetes_claims("batch", "report-weekly"));
    assert_eq!(job.groups, ["batch-reports"]);
    assert_eq!(job.subject, "system:serviceaccount:batch:report-weekly");
    assert!(identity(&kubernetes_claims("default", "report-weekly"))
        .groups
        .is_empty());
    assert!(identity(&kubernetes_claims("batch", "web"))
        .groups
        .is_empty());
}

#[test]
fn group_rules_are_checked_when_compiled() {
    let compile = |claims: Value| {
        ClaimPaths::compile(&serde_json::from_value::<ClaimPathsDoc>(claims).unwrap()).map(|_| ())
    };
    assert!(compile(json!({"group_rules": [{"group": "ci", "when": {"iss": "*"}}]})).is_ok());
    let empty = compile(json!({"group_rules": [{"group": "ci", "when": {}}]})).unwrap_err();
    assert!(empty.contains("names no claim"), "{empty}");
    assert!(compile(json!({"group_rules": [{"group": "", "when": {"a": "b"}}]})).is_err());
    assert!(compile(json!({"group_rules": [{"group": "ci", "when": {"a..b": "x"}}]})).is_err());
    // Numbers and booleans match as JSON writes them; lists by any item.
    let paths = ClaimPaths::compile(
        &serde_json::from_value::<ClaimPathsDoc>(json!({"group_rules": [
            {"group": "n", "when": {"run": "1?"}},
            {"group": "b", "when": {"protected": "true"}},
            {"group": "l", "when": {"teams": "platform-*"}}]}))
        .unwrap(),
    )
    .unwrap();
    let id = identity::map_claims(
        ISS,
        &paths,
        &json!({"sub": "s", "run": 12, "protected": true,
        "teams": ["web", "platform-sre"], "groups": ["own"]}),
    )
    .unwrap();
    assert_eq!(id.groups, ["b", "l", "n", "own"]);
}

#[test]
fn configuration_rules() {
    let compile = |v: Value| {
        serde_json::from_value::<AuthenticationDoc>(v)
            .map_err(|e| e.to_string())
            .and_then(|d| {
                Authenticator::compile(d, &|n| (n == "SECRET").then(|| "s".repeat(40)))
                    .map_err(|e| e.to_string())
            })
    };
    let jwk = RawSigner::new(1, "k").jwk();
    // HS256 only with a shared secret, and then alone.
    let err = compile(json!({"issuers": [{"issuer": ISS, "audiences": ["a"], "algorithms": ["HS256"], "inline_jwks": {"keys": [jwk]}}]})).unwrap_err();
    assert!(err.contains("shared_secret_env"), "{err}");
    assert!(compile(
        json!({"issuers": [{"issuer": ISS, "audiences": ["a"], "shared_secret_env": "SECRET"}]})
    )
    .is_ok());
    assert!(compile(
        json!({"issuers": [{"issuer": ISS, "audiences": ["a"], "shared_secret_env": "MISSING"}]})
    )
    .is_err());
    // Exactly one key source; audiences required; unknown fields refused.
    assert!(compile(json!({"issuers": [{"issuer": ISS, "audiences": ["a"]}]})).is_err());
    assert!(compile(
        json!({"issuers": [{"issuer": ISS, "audiences": [], "inline_jwks": {"keys": [jwk]}}]})
    )
    .is_err());
    assert!(compile(json!({"issuers": [{"issuer": ISS, "audiences": ["a"], "inline_jwks": {"keys": [jwk]}, "jku": "x"}]})).is_err());
    let remote = compile(json!({"issuers": [{"issuer": "http://127.0.0.1:8080/dev", "audiences": ["a"], "jwks": {"cluster": "idp"}}]})).unwrap();
    let KeySource::Remote(r) = &remote.issuers[0].keys else {
        panic!("remote")
    };
    assert_eq!(r.authority, "127.0.0.1:8080");
    assert_eq!(r.discovery_path, "/dev/.well-known/openid-configuration");
    assert!(compile(json!({"issuers": [{"issuer": "urn:not-a-url", "audiences": ["a"], "jwks": {"cluster": "idp"}}]})).is_err());
}

#[test]
fn hmac_issuers_verify_with_their_secret() {
    let secret = "s".repeat(40);
    let doc: AuthenticationDoc = serde_json::from_value(json!({
        "issuers": [{"issuer": "ci", "audiences": ["warden"], "shared_secret_env": "CI_SECRET"}]
    }))
    .unwrap();
    let auth = Authenticator::compile(doc, &|_| Some(secret.clone())).unwrap();
    let token = HS256Key::from_bytes(secret.as_bytes())
        .authenticate(
            Claims::create(Duration::from_secs(60))
                .with_issuer("ci")
                .with_audience("warden")
                .with_subject("job-7"),
        )
        .unwrap();
    let KeySource::Static(keys) = &auth.issuers[0].keys else {
        panic!("static keys")
    };
    let now = Clock::now_since_epoch().as_secs();
    assert_eq!(
        auth.verify(&token, auth.inspect(&token).unwrap(), keys, now)
            .unwrap()
            .subject,
        "job-7"
    );
    let wrong = HS256Key::from_bytes(&[b'x'; 40])
        .authenticate(
            Claims::create(Duration::from_secs(60))
                .with_issuer("ci")
                .with_audience("warden")
                .with_subject("job-7"),
        )
        .unwrap();
    assert_eq!(
        auth.verify(&wrong, auth.inspect(&wrong).unwrap(), keys, now)
            .unwrap_err(),
        AuthError::BadSignature
    );
}

#[test]
fn the_cache_rechecks_expiry_and_stays_bounded() {
    let mut cache = TokenCache::new(2, 60);
    let id = |exp| Identity {
        issuer: ISS.into(),
        subject: "a".into(),
        token_subject: Some("a".into()),
        email: None,
        groups: vec![],
        expires_at: exp,
    };
    let k1 = TokenCache::key("t1");
    cache.insert(k1, id(NOW));
    assert!(cache.get(&k1, NOW + 60).is_some());
    assert!(
        cache.get(&k1, NOW + 61).is_none(),
        "expired entry served from the cache"
    );
    assert!(cache.is_empty());
    for t in ["a", "b", "c"] {
        cache.insert(TokenCache::key(t), id(NOW + 100));
    }
    assert_eq!(cache.len(), 2);
    assert!(
        cache.get(&TokenCache::key("a"), NOW).is_none(),
        "oldest entry not evicted"
    );
    assert!(cache.get(&TokenCache::key("c"), NOW).is_some());
    assert_ne!(TokenCache::key("a"), TokenCache::key("b"));
}

#[test]
fn remote_keys_freshness_and_rate_limits() {
    let doc: keys::RemoteJwksDoc = serde_json::from_value(json!({
        "cluster": "idp", "refresh_seconds": 300, "max_stale_seconds": 900, "min_refetch_seconds": 10
    }))
    .unwrap();
    let r = keys::RemoteJwks::compile(doc, "https://idp.example.com").unwrap();
    use keys::Freshness::*;
    assert_eq!(r.freshness(None, NOW), NotLoaded);
    assert_eq!(r.freshness(Some(NOW - 300), NOW), Fresh);
    assert_eq!(r.freshness(Some(NOW - 301), NOW), Stale);
    assert_eq!(r.freshness(Some(NOW - 900), NOW), Stale);
    assert_eq!(r.freshness(Some(NOW - 901), NOW), Expired);
    assert!(r.fetch_due(None, None, NOW));
    assert!(!r.fetch_due(Some(NOW - 10), Some(NOW - 10), NOW));
    assert!(r.fetch_due(Some(NOW - 400), Some(NOW - 400), NOW));
    assert!(
        !r.fetch_due(Some(NOW - 400), Some(NOW - 5), NOW),
        "retries must be spaced"
    );
    assert!(!r.may_refetch(Some(NOW - 9), NOW));
    assert!(r.may_refetch(Some(NOW - 10), NOW));
    assert_eq!(
        keys::jwks_uri_from_discovery(br#"{"jwks_uri":"http://127.0.0.1:9000/realms/a/certs"}"#),
        Some(("127.0.0.1:9000".into(), "/realms/a/certs".into()))
    );
    assert_eq!(keys::jwks_uri_from_discovery(b"{}"), None);
    assert_eq!(keys::split_url("ftp://x/y"), None);
    assert_eq!(keys::split_url("https://user@evil/y"), None);
}

/// RSA tokens take their own path (the `rsa` crate for the signature,
/// `ClaimRules::check` for the claims); these hold it to jwt-simple's.
mod rsa_path {
    use super::*;
    use crate::auth::registered::ClaimRules;
    use crate::testing::test;
    use std::collections::HashSet;

    const SKEW: u64 = 60;

    fn rules(audiences: &HashSet<String>, now: u64) -> ClaimRules<'_> {
        ClaimRules {
            issuer: ISS,
            audiences,
            skew_seconds: SKEW,
            max_token_bytes: 8192,
            now,
        }
    }

    /// The test key for every RSA algorithm (its JWK names none).
    fn rsa_keys() -> KeySet {
        let mut jwk: Value = serde_json::from_str(&rsa().public_key().to_jwk()).unwrap();
        jwk.as_object_mut().unwrap().remove("alg");
        KeySet::from_jwks(&jwks_of(&[jwk])).unwrap().0
    }

    fn verify_with(keys: &KeySet, alg: Algorithm, token: &str, now: u64) -> Result<(), AuthError> {
        // The checks the real path makes before the key's (size, shape, header).
        let unverified = fixture().auth.inspect(token)?;
        let audiences = HashSet::from(["warden".to_string(), "other".to_string()]);
        let key = &keys.candidates(None, alg).next().unwrap().key;
        key.verify(alg, token, &unverified.payload, &rules(&audiences, now))
    }

    /// Every combination of the registered claims' edge cases, at two clocks:
    /// `ClaimRules::check` gives the verdict jwt-simple gives (through its
    /// Ed25519 verification, which checks the claims with the same options).
    #[test]
    fn claims_are_judged_as_jwt_simple_judges_them() {
        let f = fixture();
        let ed = &f
            .keys
            .candidates(None, Algorithm::EdDSA)
            .next()
            .unwrap()
            .key;
        let audiences = HashSet::from(["warden".to_string(), "other".to_string()]);
        let mut cases = 0;
        let mut verdicts = HashSet::new();
        for now in [NOW, SKEW / 2] {
            let iats = [
                None,
                Some(json!(now - 10)),
                Some(json!(now + SKEW)),
                Some(json!(now + SKEW + 1)),
            ];
            let nbfs = [None, Some(json!(now + SKEW)), Some(json!(now + SKEW + 1))];
            let exps = [
                None,
                Some(json!(now + 300)),
                Some(json!(now.saturating_sub(SKEW))),
                Some(json!(now.saturating_sub(SKEW + 1))),
                Some(json!(format!("{}", now + 300))),
            ];
            let isses = [
                None,
                Some(json!(ISS)),
                Some(json!("https://other.example.com")),
                Some(json!(5)),
            ];
            let auds = [
                None,
                Some(json!("warden")),
                Some(json!("nope")),
                Some(json!(["x", "other"])),
                Some(json!(["x"])),
                Some(json!([])),
            ];
            for iat in &iats {
                for nbf in &nbfs {
                    for exp in &exps {
                        for iss in &isses {
                            for aud in &auds {
                                let mut claims = json!({"sub": "alice"});
                                for (name, value) in [
                                    ("iat", iat),
                                    ("nbf", nbf),
                                    ("exp", exp),
                                    ("iss", iss),
                                    ("aud", aud),
                                ] {
                                    if let Some(v) = value {
                                        claims[name] = v.clone();
                                    }
                                }
                                let token = f.ed_token(&claims);
                                let rules = rules(&audiences, now);
                                let payload = claims.to_string();
                                let oracle =
                                    ed.verify(Algorithm::EdDSA, &token, payload.as_bytes(), &rules);
                                assert_eq!(
                                    rules.check(payload.as_bytes()),
                                    oracle,
                                    "{claims} at {now}"
                                );
                                verdicts.insert(format!("{oracle:?}"));
                                cases += 1;
                            }
                        }
                    }
                }
            }
        }
        assert_eq!(cases, 2 * 4 * 3 * 5 * 4 * 6);
        // A claim given twice: refused by both (a `Value` would keep the last).
        let rules = rules(&audiences, NOW);
        for twice in [
            format!(
                r#"{{"iss":"{ISS}","aud":"warden","exp":{},"exp":{}}}"#,
                NOW + 300,
                NOW - 300
            ),
            format!(
                r#"{{"iss":"{ISS}","iss":"{ISS}","aud":"warden","exp":{}}}"#,
                NOW + 300
            ),
        ] {
            let token = f.ed.sign_raw(&f.ed.header(), twice.as_bytes());
            let oracle = ed.verify(Algorithm::EdDSA, &token, twice.as_bytes(), &rules);
            assert!(oracle.is_err(), "{twice}");
            assert_eq!(rules.check(twice.as_bytes()), oracle, "{twice}");
        }
        // Every kind of verdict was reached, so the comparison covered each rule.
        for want in [
            "Ok(())",
            "Err(NotYetValid)",
            "Err(Expired)",
            "Err(UnknownIssuer)",
            "Err(WrongAudience)",
            "Err(BadSignature)",
        ] {
            assert!(verdicts.contains(want), "no case gave {want}: {verdicts:?}");
        }
    }

    /// Tokens signed by jwt-simple with each RSA algorithm verify here, and
    /// each is refused under the other padding or a changed payload.
    #[test]
    fn every_rsa_algorithm_verifies_and_refuses_a_changed_token() {
        let pem = include_str!("testdata/rsa-a.pem");
        let claims = || {
            Claims::create(Duration::from_secs(300))
                .with_issuer(ISS)
                .with_audience("warden")
                .with_subject("bob")
        };
        let tokens = [
            (
                Algorithm::RS256,
                RS256KeyPair::from_pem(pem).unwrap().sign(claims()).unwrap(),
            ),
            (
                Algorithm::RS384,
                RS384KeyPair::from_pem(pem).unwrap().sign(claims()).unwrap(),
            ),
            (
                Algorithm::RS512,
                RS512KeyPair::from_pem(pem).unwrap().sign(claims()).unwrap(),
            ),
            (
                Algorithm::PS256,
                PS256KeyPair::from_pem(pem).unwrap().sign(claims()).unwrap(),
            ),
            (
                Algorithm::PS384,
                PS384KeyPair::from_pem(pem).unwrap().sign(claims()).unwrap(),
            ),
            (
                Algorithm::PS512,
                PS512KeyPair::from_pem(pem).unwrap().sign(claims()).unwrap(),
            ),
        ];
        let keys = rsa_keys();
        let now = Clock::now_since_epoch().as_secs();
        for (alg, token) in &tokens {
            assert_eq!(verify_with(&keys, *alg, token, now), Ok(()), "{alg:?}");
            // The same signature read with another RSA algorithm.
            for (other, _) in &tokens {
                if other != alg {
                    assert_eq!(
                        verify_with(&keys, *other, token, now),
                        Err(AuthError::BadSignature),
                        "{alg:?} as {other:?}"
                    );
                }
            }
            // A payload changed after signing.
            let mut parts: Vec<&str> = token.split('.').collect();
            let forged = b64(
                json!({"iss": ISS, "aud": "warden", "sub": "mallory", "exp": now + 300})
                    .to_string()
                    .as_bytes(),
            );
            parts[1] = &forged;
            assert_eq!(
                verify_with(&keys, *alg, &parts.join("."), now),
                Err(AuthError::BadSignature)
            );
            // A signature cut short, and one not in base64url.
            let cut = &token[..token.len() - 4];
            assert_eq!(
                verify_with(&keys, *alg, cut, now),
                Err(AuthError::BadSignature)
            );
            let (signed, _) = token.rsplit_once('.').unwrap();
            assert_eq!(
                verify_with(&keys, *alg, &format!("{signed}.a+b/"), now),
                Err(AuthError::BadSignature)
            );
            // Claims are checked after the signature: the token expired.
            assert_eq!(
                verify_with(&keys, *alg, token, now + 400),
                Err(AuthError::Expired)
            );
        }
    }

    /// jwt-simple's key policy holds: 2048 to 4096 bits, odd, e = 65537.
    #[test]
    fn weak_or_odd_rsa_keys_are_not_loaded() {
        let good: Value = serde_json::from_str(&rsa().public_key().to_jwk()).unwrap();
        let with = |n: &[u8], e: &[u8]| {
            let mut jwk = good.clone();
            jwk["n"] = json!(b64(n));
            jwk["e"] = json!(b64(e));
            KeySet::from_jwks(&jwks_of(&[jwk])).map(|(set, _)| set.len())
        };
        let n = |bits: usize, last: u8| {
            let mut n = vec![0xc5u8; bits / 8];
            if let Some(b) = n.last_mut() {
                *b = last;
            }
            n
        };
        assert_eq!(with(&n(2048, 0x01), &[1, 0, 1]), Ok(1));
        assert_eq!(
            with(&n(4096, 0x01), &[0, 1, 0, 1]),
            Ok(1),
            "leading zeros in e are fine"
        );
        let refused = Err(jwks::JwksError::NoUsableKey(1));
        assert_eq!(with(&n(1024, 0x01), &[1, 0, 1]), refused, "1024 bits");
        assert_eq!(with(&n(4104, 0x01), &[1, 0, 1]), refused, "over 4096 bits");
        assert_eq!(with(&n(2048, 0x02), &[1, 0, 1]), refused, "even modulus");
        assert_eq!(with(&n(2048, 0x01), &[3]), refused, "e = 3");
    }
}
