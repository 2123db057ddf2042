use serde_json::json;

use super::*;
use crate::testing::{headers, test, RawSigner};

const ISS: &str = "https://idp.example.com";

fn config(with_keys: bool, policy: bool) -> FilterConfig {
    let signer = RawSigner::new(1, "k1");
    let mut doc = json!({
        "providers": [
            {"name": "openai", "api": "openai", "path_prefix": "/openai/", "credential": {"env": "OK"}},
            {"name": "anthropic", "api": "anthropic", "path_prefix": "/anthropic/", "credential": {"env": "AK"}}
        ],
        "authentication": {"issuers": [{"issuer": ISS, "audiences": ["warden"], "inline_jwks": {"keys": [signer.jwk()]}}]},
        "max_body_bytes": 2048
    });
    if policy {
        doc["policy"] =
            json!({"version": 1, "groups": {"engineering": {"models": ["gpt-4o*", "claude-*"]}}});
    }
    FilterConfig::from_bytes(doc.to_string().as_bytes(), &|name| {
        with_keys.then(|| format!("secret-{name}"))
    })
    .unwrap()
}

fn token(groups: &[&str]) -> String {
    RawSigner::new(1, "k1").token(
        &json!({"iss": ISS, "aud": "warden", "sub": "alice", "groups": groups, "exp": NOW + 60}),
    )
}

const NOW: u64 = 1_800_000_000;

/// The rejection `step` must be (the test fails otherwise).
fn rejected(step: AuthStep, why: &str) -> Rejection {
    match step {
        AuthStep::Rejected(r) => r,
        AuthStep::Verified(id) => panic!("{why}: verified as {}", id.subject),
        AuthStep::FetchKeys { .. } => panic!("{why}: asked for a key fetch"),
    }
}

fn authenticate_with(
    cfg: &FilterConfig,
    h: &[(String, Vec<u8>)],
    cache: &mut TokenCache,
) -> AuthStep {
    let keys = |i: usize| match &cfg.auth.issuers[i].keys {
        crate::auth::KeySource::Static(set) => KeyView::Ready(set),
        crate::auth::KeySource::Remote(_) => KeyView::NotLoaded,
    };
    authenticate(cfg, 0, Headers::new(h), &MachineKeys::default(), cache, &keys, NOW, true)
}

#[test]
fn a_verified_engineer_is_authorized_and_forwarded_with_the_provider_key() {
    let cfg = config(true, true);
    let bearer = format!("Bearer {}", token(&["engineering"]));
    let h = headers(&[
        (":path", "/openai/v1/chat/completions"),
        (":method", "POST"),
        ("authorization", &bearer),
        ("X-Api-Key", "sk-client-own"),
        ("x-warden-user", "mallory"),
    ]);
    let provider = route(&cfg, Headers::new(&h)).unwrap();
    let mut cache = TokenCache::new(8, 60);
    let id = match authenticate_with(&cfg, &h, &mut cache) {
        AuthStep::Verified(id) => id,
        AuthStep::Rejected(r) => panic!("{r:?}"),
        AuthStep::FetchKeys { .. } => panic!("fetch"),
    };
    assert_eq!(id.subject, "alice");
    let body = parse_body(Api::Openai, br#"{"model":"gpt-4o-mini","messages":[]}"#).unwrap();
    let model = model_of(Api::Openai, &body).unwrap();
    authorize(
        &cfg,
        cfg.initial_policy.as_ref(),
        provider,
        &id,
        crate::endpoint::endpoint_of(Api::Openai, b"POST", "/v1/chat/completions"),
        model.as_deref(),
    )
    .unwrap();
    let plan = forward_plan(&cfg, provider, Headers::new(&h));
    for gone in ["authorization", "x-api-key", "x-warden-user"] {
        assert!(plan.remove.iter().any(|r| r == gone), "{gone} not removed");
    }
    // Nothing the request does not carry (each removal is a host call).
    assert!(cfg.strip_headers.iter().any(|h| h == "accept-encoding"));
    for name in &plan.remove {
        assert!(Headers::new(&h).contains(name), "{name} removed but absent");
    }
    assert_eq!(
        plan.set,
        vec![("authorization".to_string(), b"Bearer secret-OK".to_vec())]
    );
    // The second time, the cache answers (same identity).
    assert_eq!(cache.len(), 1);
    let AuthStep::Verified(again) = authenticate_with(&cfg, &h, &mut cache) else {
        panic!("cache miss")
    };
    assert_eq!(again, id);
}

#[test]
fn no_token_is_401_and_a_bad_one_too() {
    let cfg = config(true, true);
    let mut cache = TokenCache::new(8, 60);
    let none = headers(&[(":path", "/anthropic/v1/messages")]);
    let r = rejected(
        authenticate(
            &cfg,
            1,
            Headers::new(&none),
            &MachineKeys::default(),
            &mut cache,
            &|_| KeyView::NotLoaded,
            NOW,
            true,
        ),
        "accepted without a token",
    );
    assert_eq!(
        (r.error.kind.status(), r.api, r.error.code),
        (401, Api::Anthropic, Reason::NoToken)
    );
    let forged = RawSigner::new(2, "k1")
        .token(&json!({"iss": ISS, "aud": "warden", "sub": "eve", "exp": NOW + 60}));
    let h = headers(&[("x-api-key", &forged)]);
    let r = rejected(
        authenticate_with(&cfg, &h, &mut cache),
        "forged token accepted",
    );
    assert_eq!(r.error.code, Reason::TokenSignature);
    assert!(!r.error.message.contains(&forged));
}

#[test]
fn keys_not_loaded_is_503_not_401_and_unknown_kid_asks_for_a_fetch() {
    let cfg = config(true, true);
    let mut cache = TokenCache::new(8, 60);
    let bearer = format!("Bearer {}", token(&["engineering"]));
    let h = headers(&[("authorization", &bearer)]);
    let r = rejected(
        authenticate(
            &cfg,
            0,
            Headers::new(&h),
            &MachineKeys::default(),
            &mut cache,
            &|_| KeyView::NotLoaded,
            NOW,
            true,
        ),
        "accepted without keys",
    );
    assert_eq!(
        (r.error.kind.status(), r.error.code),
        (503, Reason::KeysNotLoaded)
    );
    let r = rejected(
        authenticate(
            &cfg,
            0,
            Headers::new(&h),
            &MachineKeys::default(),
            &mut cache,
            &|_| KeyView::Expired,
            NOW,
            true,
        ),
        "accepted with expired keys",
    );
    assert_eq!(
        (r.error.kind.status(), r.error.code),
        (503, Reason::KeysStale)
    );
    // A token verified while the keys were good is refused from the cache too
    // once they have gone stale.
    assert!(matches!(
        authenticate_with(&cfg, &h, &mut cache),
        AuthStep::Verified(_)
    ));
    assert_eq!(cache.len(), 1);
    let r = rejected(
        authenticate(
            &cfg,
            0,
            Headers::new(&h),
            &MachineKeys::default(),
            &mut cache,
            &|_| KeyView::Expired,
            NOW,
            true,
        ),
        "a cached token outlived its issuer's keys",
    );
    assert_eq!(r.error.code, Reason::KeysStale);
    let other = RawSigner::new(3, "rotated")
        .token(&json!({"iss": ISS, "aud": "warden", "sub": "a", "exp": NOW + 60}));
    let h = headers(&[("authorization", &format!("Bearer {other}"))]);
    assert!(matches!(
        authenticate_with(&cfg, &h, &mut cache),
        AuthStep::FetchKeys { issuer: 0 }
    ));
    let keys = |i: usize| match &cfg.auth.issuers[i].keys {
        crate::auth::KeySource::Static(set) => KeyView::Ready(set),
        crate::auth::KeySource::Remote(_) => KeyView::NotLoaded,
    };
    let r = rejected(
        authenticate(&cfg, 0, Headers::new(&h), &MachineKeys::default(), &mut cache, &keys, NOW, false),
        "unknown key accepted",
    );
    assert_eq!(r.error.code, Reason::TokenUnknownKey);
}

#[test]
fn authorization_follows_the_policy_and_fails_closed_without_one() {
    let cfg = config(true, true);
    let id = |groups: &[&str]| Identity {
        issuer: ISS.into(),
        subject: "bo".into(),
        token_subject: Some("bo".into()),
        email: None,
        groups: groups.iter().map(|g| g.to_string()).collect(),
        expires_at: NOW + 60,
    };
    let r = authorize(
        &cfg,
        cfg.initial_policy.as_ref(),
        0,
        &id(&["engineering"]),
        crate::endpoint::endpoint_of(Api::Openai, b"POST", "/v1/chat/completions"),
        Some("o1-pro"),
    )
    .unwrap_err();
    assert_eq!(
        (r.error.kind.status(), r.error.code),
        (403, Reason::ModelDenied)
    );
    let r = authorize(
        &cfg,
        cfg.initial_policy.as_ref(),
        1,
        &id(&["sales"]),
        crate::endpoint::endpoint_of(Api::Anthropic, b"POST", "/v1/messages"),
        Some("claude-x"),
    )
    .unwrap_err();
    assert_eq!((r.api, r.error.code), (Api::Anthropic, Reason::NoGroup));
    let r = authorize(
        &cfg,
        None,
        0,
        &id(&["engineering"]),
        crate::endpoint::endpoint_of(Api::Openai, b"POST", "/v1/chat/completions"),
        Some("gpt-4o"),
    )
    .unwrap_err();
    assert_eq!(
        (r.error.kind.status(), r.error.code),
        (503, Reason::NoPolicy)
    );
}

#[test]
fn routes_and_missing_keys() {
    let h = headers(&[(":path", "/gemini/v1/models")]);
    let r = route(&config(true, true), Headers::new(&h)).unwrap_err();
    assert_eq!((r.error.kind.status(), r.api), (404, Api::Openai));
    let h = headers(&[(":path", "/anthropic/v1/messages")]);
    let r = route(&config(false, true), Headers::new(&h)).unwrap_err();
    assert_eq!((r.error.kind.status(), r.api), (503, Api::Anthropic));
    assert!(r.error.message.contains("AK"));
}

#[test]
fn bodies_that_cannot_be_inspected_are_refused() {
    let cfg = config(true, true);
    let gz = headers(&[("content-encoding", "gzip")]);
    assert_eq!(
        check_body_headers(&cfg, 0, Headers::new(&gz))
            .unwrap_err()
            .error
            .kind
            .status(),
        415
    );
    let big = headers(&[("content-length", "4096")]);
    assert_eq!(
        check_body_headers(&cfg, 0, Headers::new(&big))
            .unwrap_err()
            .error
            .kind
            .status(),
        413
    );
    let ok = headers(&[("content-length", "100"), ("content-encoding", "identity")]);
    assert!(check_body_headers(&cfg, 0, Headers::new(&ok)).is_ok());
    let model = |b: &[u8]| parse_body(Api::Openai, b).and_then(|v| model_of(Api::Openai, &v));
    assert_eq!(
        model(b"{\"model\": 4}").unwrap_err().error.code,
        Reason::ModelNotString
    );
    assert_eq!(
        model(b"{\"model\": \"gpt").unwrap_err().error.code,
        Reason::BodyNotJson
    );
    assert_eq!(model(b"{\"input\": \"x\"}").unwrap(), None);
    let dup = parse_body(Api::Openai, b"{\"model\": \"a\", \"model\": \"b\"}").unwrap_err();
    assert!(dup.error.message.contains("twice"), "{}", dup.error.message);
}

#[test]
fn model_ids_in_paths() {
    let cfg = config(true, true);
    assert_eq!(
        model_from_path(&upstream_path(&cfg, 0, b"/openai/v1/models/gpt-4o?x=1")).as_deref(),
        Some("gpt-4o")
    );
    assert_eq!(
        model_from_path(&upstream_path(&cfg, 0, b"/openai/v1/models")),
        None
    );
    assert_eq!(
        model_from_path(&upstream_path(&cfg, 0, b"/openai/v1/models/a/b")),
        None
    );
}

#[test]
fn body_presence() {
    let post = headers(&[(":method", "POST")]);
    let get = headers(&[(":method", "GET")]);
    assert!(has_body(false));
    assert!(!has_body(true));
    // A GET that is not over with its headers is read like any request...
    assert!(is_bodiless_method(Headers::new(&get)));
    assert!(!is_bodiless_method(Headers::new(&post)));
    // ...and refused if it did carry a body.
    assert!(check_bodiless(Api::Openai, 0).is_ok());
    let r = check_bodiless(Api::Openai, 3).unwrap_err();
    assert_eq!(
        (r.error.kind.status(), r.error.code),
        (400, Reason::BodyNotAllowed)
    );
}

#[test]
fn paths_with_two_readings_are_refused_before_routing() {
    let cfg = config(true, true);
    for path in [
        "/openai/v1/chat%2Fcompletions",
        "/openai/v1//chat/completions",
        "/openai/../x",
    ] {
        let h = headers(&[(":path", path), (":method", "POST")]);
        let r = route(&cfg, Headers::new(&h)).unwrap_err();
        assert_eq!(
            (r.error.kind.status(), r.error.code),
            (400, Reason::PathNotCanonical),
            "{path}"
        );
    }
    let h = headers(&[
        (":path", "/openai/v1/chat/completions?a=%2F"),
        (":method", "POST"),
    ]);
    assert_eq!(route(&cfg, Headers::new(&h)), Ok(0));
}

#[test]
fn endpoints_other_than_inference_are_refused_unless_a_group_lists_them() {
    let cfg = config(true, true);
    let who = Identity {
        issuer: ISS.into(),
        subject: "alice".into(),
        token_subject: Some("alice".into()),
        groups: vec!["engineering".into()],
        email: None,
        expires_at: NOW + 60,
    };
    let policy = cfg.initial_policy.as_ref();
    let secrets = crate::endpoint::endpoint_of(Api::Openai, b"POST", "/v1/realtime/client_secrets");
    let r = authorize(&cfg, policy, 0, &who, secrets, None).unwrap_err();
    assert_eq!(
        (r.error.kind.status(), r.error.code),
        (403, Reason::EndpointDenied)
    );
    let files = crate::endpoint::endpoint_of(Api::Openai, b"GET", "/v1/files");
    assert!(authorize(&cfg, policy, 0, &who, files, None).is_err());
    // An inference endpoint without a model cannot be authorized by model.
    let chat = crate::endpoint::endpoint_of(Api::Openai, b"POST", "/v1/chat/completions");
    let r = authorize(&cfg, policy, 0, &who, chat, None).unwrap_err();
    assert_eq!(
        (r.error.kind.status(), r.error.code),
        (400, Reason::ModelRequired)
    );
    let models = crate::endpoint::endpoint_of(Api::Openai, b"GET", "/v1/models");
    assert!(authorize(&cfg, policy, 0, &who, models, None).is_ok());
}

fn alice_in_engineering() -> crate::auth::Identity {
    crate::auth::Identity {
        issuer: ISS.into(),
        subject: "alice".into(),
        token_subject: Some("alice".into()),
        email: None,
        groups: vec!["engineering".into()],
        expires_at: NOW + 60,
    }
}

/// A block rule and an approval rule on the same request, whatever their
/// names and order: refused, and nothing goes out for approval. An approval
/// alone: the text an approver sees is the masked one.
#[test]
fn a_block_refuses_before_any_approval_and_approvers_see_masked_text() {
    let cfg = config(true, true);
    let id = alice_in_engineering();
    let akia = format!("AK{}QYLPMN5RTB7DZ4UF", "IA");
    let email = "jane.doe@example.com";
    let prompt = format!("production database dump with {akia} for {email}");
    let body_of = || json!({"model": "gpt-4o", "messages": [{"role": "user", "content": prompt}]});
    let policy_of = |rules: &[&str]| {
        let doc = format!(
            "version: 1\ngroups: {{engineering: {{models: [\"*\"]}}}}\napproval: {{approvers: [security]}}\nrules:\n{}",
            rules.iter().map(|r| format!("  - {r}\n")).collect::<String>()
        );
        Policy::from_bytes(doc.as_bytes()).unwrap()
    };
    let inspect = |policy: &Policy, body: &mut Value| {
        inspect_request(
            &cfg,
            policy,
            0,
            &id,
            Some("gpt-4o"),
            body,
            false,
            &mut Vault::default(),
        )
    };
    let mask = "{name: mmm, detect: email, action: mask}";
    for (block, approve) in [
        (
            "{name: zzz, detect: aws_access_key_id, action: block}",
            "{name: aaa, keywords: [production database dump], action: require_approval}",
        ),
        (
            "{name: aaa, detect: aws_access_key_id, action: block}",
            "{name: zzz, keywords: [production database dump], action: require_approval}",
        ),
    ] {
        for rules in [
            [block, approve, mask],
            [approve, mask, block],
            [mask, approve, block],
        ] {
            let mut body = body_of();
            let (outcome, verdict) = inspect(&policy_of(&rules), &mut body);
            let rejection = verdict.unwrap_err();
            assert_eq!(rejection.error.code, Reason::Blocked, "{rules:?}");
            assert_eq!(rejection.decision().as_str(), "blocked");
            assert_eq!(outcome.stop().map(|(_, a)| a), Some(Action::Block));
            assert!(!rejection.error.message.contains(&akia));
        }
    }
    // No block rule: the approval decides, and the prompt for the approvers
    // (built from the body as inspected) has the masked values masked.
    let policy = policy_of(&[
        "{name: aaa, keywords: [production database dump], action: require_approval}",
        mask,
    ]);
    let mut body = body_of();
    let (outcome, verdict) = inspect(&policy, &mut body);
    assert!(verdict.is_ok());
    assert_eq!(
        outcome.stop(),
        Some(("aaa".to_string(), Action::RequireApproval))
    );
    let text = prompt_text(&mut body);
    assert!(!text.contains(email), "{text}");
    assert!(
        text.contains("[EMAIL]") && text.contains("production database dump"),
        "{text}"
    );
}

#[test]
fn provider_scoping_headers_are_removed_unless_the_provider_passes_them() {
    let signer = RawSigner::new(1, "k1");
    let doc = |pass: serde_json::Value| {
        json!({
            "providers": [
                {"name": "openai", "api": "openai", "path_prefix": "/openai/", "credential": {"env": "OK"}},
                {"name": "anthropic", "api": "anthropic", "path_prefix": "/anthropic/",
                 "credential": {"env": "AK"}, "pass_headers": pass}
            ],
            "authentication": {"issuers": [{"issuer": ISS, "audiences": ["warden"], "inline_jwks": {"keys": [signer.jwk()]}}]}
        })
        .to_string()
    };
    let env = |name: &str| (name != "WARDEN_HASH_KEY").then(|| "k".into());
    let cfg = FilterConfig::from_bytes(doc(json!(["Anthropic-Beta"])).as_bytes(), &env).unwrap();
    let h = headers(&[
        ("cookie", "session=1"),
        ("openai-organization", "org-other"),
        ("openai-project", "proj-other"),
        ("anthropic-beta", "computer-use-2025-01-24"),
        ("content-type", "application/json"),
    ]);
    let openai = forward_plan(&cfg, 0, Headers::new(&h));
    for gone in [
        "cookie",
        "openai-organization",
        "openai-project",
        "anthropic-beta",
    ] {
        assert!(openai.remove.iter().any(|r| r == gone), "{gone} kept");
    }
    let anthropic = forward_plan(&cfg, 1, Headers::new(&h));
    assert!(!anthropic.remove.iter().any(|r| r == "anthropic-beta"));
    assert!(anthropic.remove.iter().any(|r| r == "cookie"));
    assert!(!openai.remove.iter().any(|r| r == "content-type"));
    // Only scoping headers can be passed: the others pass already.
    let err = FilterConfig::from_bytes(doc(json!(["x-custom"])).as_bytes(), &|_| None).unwrap_err();
    assert!(err.to_string().contains("pass_headers"), "{err}");
}

/// A query string is text too: a value a rule protects refuses the request
/// (percent-escaped or `+`-spaced alike), a log-only finding is recorded, and
/// a query with nothing in it, or no query, passes.
#[test]
fn a_query_string_is_inspected() {
    let cfg = config(true, true);
    let id = alice_in_engineering();
    let policy = Policy::from_bytes(
        b"version: 1\ngroups: {engineering: {models: [\"*\"]}}\nrules:\n  - {name: pii, detect: email, action: mask}\n  - {name: noted, keywords: [project x], action: log_only}\n",
    )
    .unwrap();
    let query = |path: &str| {
        inspect_query(
            &cfg,
            &policy,
            0,
            &id,
            Some("gpt-4o"),
            path,
            &mut Vault::default(),
        )
    };
    for path in [
        "v1/chat/completions?user=jane.doe%40example.com",
        "v1/chat/completions?note=mail+jane.doe@example.com",
        "v1/chat/completions?jane.doe%40example.com=1",
    ] {
        let (outcome, verdict) = query(path);
        let rejection = verdict.unwrap_err();
        assert_eq!(rejection.error.code, Reason::QueryRefused, "{path}");
        assert!(rejection.error.message.contains("'pii'"));
        assert!(!rejection.error.message.contains("jane"));
        assert!(outcome.rules.contains_key("pii"));
    }
    let (outcome, verdict) = query("v1/chat/completions?tag=project+x");
    assert!(verdict.is_ok());
    assert!(outcome.rules.contains_key("noted"));
    for path in [
        "v1/chat/completions?api-version=2024-10-21",
        "v1/chat/completions",
        "v1/chat/completions?",
    ] {
        let (outcome, verdict) = query(path);
        assert!(verdict.is_ok() && outcome.rules.is_empty(), "{path}");
    }
}

/// Envoy's route and the filter's provider agree, or nothing is sent.
#[test]
fn the_route_must_pick_the_providers_cluster() {
    let mut cfg = config(true, true);
    // No cluster named: nothing to compare.
    assert!(check_cluster(&cfg, 0, || panic!("no cluster to compare with")).is_ok());
    cfg.providers[0].cluster = Some("provider_openai".into());
    assert!(check_cluster(&cfg, 0, || Some(b"provider_openai".to_vec())).is_ok());
    for routed in [Some(&b"provider_anthropic"[..]), Some(b""), None] {
        let rejection = check_cluster(&cfg, 0, || routed.map(<[u8]>::to_vec)).unwrap_err();
        assert_eq!(rejection.error.code, Reason::RouteMismatch);
        assert_eq!(rejection.error.kind, ErrorKind::Unavailable);
    }
}
