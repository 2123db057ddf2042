"""Identity-bound access through the real Envoy: tokens verified in the filter,
models authorized per group, errors in each provider's own format.

The full token threat list runs natively (filter/engine/src/auth/tests.rs, also
under wasm); these are a representative set end to end.
"""

from __future__ import annotations

import base64
import json
import time
import uuid

import anthropic
import openai
import pytest

import yaml

from harness.stack import Stack, default_filter_config, http, wait_until

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def chat(stack: Stack, token: str | None, body: dict | None = None, prefix: str = "/openai/",
         header: str = "authorization") -> tuple[int, dict, dict]:
    headers = {"user-agent": f"identity-test/{uuid.uuid4()}"}
    if token is not None:
        headers[header] = f"Bearer {token}" if header == "authorization" else token
    path = "v1/chat/completions" if prefix == "/openai/" else "v1/messages"
    status, resp_headers, raw = http("POST", f"{stack.gateway_url}{prefix}{path}", body=body or CHAT,
                                     headers=headers)
    return status, resp_headers, json.loads(raw) if raw else {}


def test_no_token_is_401_in_openai_format_with_www_authenticate(stack):
    status, headers, body = chat(stack, None)
    assert status == 401
    assert headers["www-authenticate"] == 'Bearer error="invalid_token"'
    assert body["error"]["code"] == "warden.no_token"
    assert "Authorization: Bearer" in body["error"]["message"]
    assert stack.provider_received() == []


def test_no_token_on_anthropic_route_is_anthropic_shaped(stack):
    status, headers, body = chat(stack, None, prefix="/anthropic/",
                                 body={"model": "claude-sonnet-4-6", "max_tokens": 5,
                                       "messages": [{"role": "user", "content": "x"}]})
    assert status == 401
    assert body["type"] == "error" and body["error"]["type"] == "authentication_error"
    assert headers["x-warden-reason"] == "warden.no_token"


@pytest.mark.parametrize("alg", ["RS256", "ES256", "EdDSA"])
def test_each_signature_algorithm_of_the_issuer_verifies(stack, alg):
    token = stack.token("alice", ["engineering"], "--alg", alg)
    status, _, body = chat(stack, token)
    assert status == 200, body
    assert body["choices"][0]["message"]["content"] == "hello"


@pytest.mark.parametrize("extra, reason", [
    (["--claim", "exp=1000"], "warden.token_expired"),
    (["--claim", f"nbf={int(time.time()) + 3600}"], "warden.token_not_yet_valid"),
    (["--audience", "someone-else"], "warden.token_audience"),
    (["--issuer", "https://evil.example.com"], "warden.token_issuer"),
    (["--claim", "exp=\"soon\""], "warden.token_malformed"),
])
def test_bad_claims_are_401(stack, extra, reason):
    token = stack.token("alice", ["engineering"], *extra)
    status, headers, body = chat(stack, token)
    assert (status, headers["x-warden-reason"]) == (401, reason), body
    assert stack.provider_received() == []


def test_forged_tokens_are_401(stack):
    good = stack.token("alice", ["engineering"])
    header, payload, signature = good.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["groups"] = ["admins"]
    tampered = f"{header}.{b64(json.dumps(claims).encode())}.{signature}"
    none_alg = f"{b64(json.dumps({'alg': 'none', 'typ': 'JWT'}).encode())}.{payload}."
    hs256 = f"{b64(json.dumps({'alg': 'HS256', 'typ': 'JWT'}).encode())}.{payload}.{signature}"
    for token, reason in [(tampered, "warden.token_signature"), (none_alg, "warden.token_algorithm"),
                          (hs256, "warden.token_algorithm"), ("a.b", "warden.token_malformed"),
                          ("x" * 20000, "warden.token_too_large")]:
        status, headers, _ = chat(stack, token)
        assert (status, headers["x-warden-reason"]) == (401, reason), token[:40]
    assert stack.provider_received() == []


def test_groups_decide_models_and_providers(stack):
    finance = stack.token("fiona", ["finance"])
    assert chat(stack, finance)[0] == 200
    status, headers, body = chat(stack, finance, body={**CHAT, "model": "gpt-4o"})
    assert (status, headers["x-warden-reason"]) == (403, "warden.model_denied")
    assert "gpt-4o" in body["error"]["message"] and "finance" in body["error"]["message"]
    status, headers, body = chat(stack, finance, prefix="/anthropic/", header="x-api-key",
                                 body={"model": "claude-sonnet-4-6", "max_tokens": 5,
                                       "messages": [{"role": "user", "content": "x"}]})
    assert (status, body["error"]["type"]) == (403, "permission_error")
    assert headers["x-warden-reason"] == "warden.provider_denied"
    nobody = stack.token("sam", ["sales"])
    status, headers, _ = chat(stack, nobody)
    assert (status, headers["x-warden-reason"]) == (403, "warden.no_group")
    # Only fiona's one allowed request reached the provider.
    assert len(stack.provider_received()) == 1


def test_sdks_show_the_gateway_message(stack):
    client = openai.OpenAI(base_url=f"{stack.gateway_url}/openai/v1", api_key=stack.token("fiona", ["finance"]),
                           max_retries=0)
    with pytest.raises(openai.PermissionDeniedError) as err:
        client.chat.completions.create(model="o3", messages=[{"role": "user", "content": "x"}])
    assert "may not use model 'o3'" in str(err.value)
    claude = anthropic.Anthropic(base_url=f"{stack.gateway_url}/anthropic", api_key="not-a-jwt", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as err:
        claude.messages.create(model="claude-sonnet-4-6", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert "not a well-formed JWT" in str(err.value)


def test_streaming_with_both_sdks_under_a_token(stack):
    token = stack.token("alice", ["engineering"])
    client = openai.OpenAI(base_url=f"{stack.gateway_url}/openai/v1", api_key=token, max_retries=0)
    stream = client.chat.completions.create(model="gpt-4o", stream=True,
                                            messages=[{"role": "user", "content": "reply with: streamed ok"}])
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "streamed ok"
    claude = anthropic.Anthropic(base_url=f"{stack.gateway_url}/anthropic", api_key=token, max_retries=0)
    with claude.messages.stream(model="claude-sonnet-4-6", max_tokens=50,
                                messages=[{"role": "user", "content": "reply with: claude ok"}]) as s:
        assert "".join(s.text_stream) == "claude ok"
    for req in stack.provider_received():
        assert token not in json.dumps(req)


def test_identity_and_decision_reach_the_access_log(stack):
    marker = f"audit/{uuid.uuid4()}"
    fiona = stack.token("fiona", ["finance"])
    for model in ("gpt-4o-mini", "gpt-4o"):
        http("POST", f"{stack.gateway_url}/openai/v1/chat/completions", body={**CHAT, "model": model},
             headers={"authorization": f"Bearer {fiona}", "user-agent": marker})
    http("GET", f"{stack.gateway_url}/openai/v1/models", headers={"user-agent": marker})

    def mine():
        return [r for r in stack.access_log_records() if r["user_agent"] == marker]

    wait_until("three records", lambda: len(mine()) >= 3)
    by_status = {r["status"]: r for r in mine()}
    assert by_status[200]["user"] == "fiona" and by_status[200]["groups"] == "finance"
    assert by_status[200]["decision"] == "allowed" and by_status[200]["model"] == "gpt-4o-mini"
    assert by_status[403]["decision"] == "denied" and by_status[403]["reason"] == "warden.model_denied"
    assert by_status[401]["decision"] == "unauthenticated" and by_status[401]["user"] in (None, "-", "")
    assert all(fiona not in json.dumps(r) for r in mine())


def test_no_policy_fails_closed_with_503(make_stack):
    doc = default_filter_config()
    del doc["policy"]
    stack = make_stack(filter_config=yaml.safe_dump(doc))
    status, headers, body = chat(stack, stack.token("alice", ["engineering"]))
    assert (status, headers["x-warden-reason"]) == (503, "warden.no_policy")
    assert stack.provider_received() == []


def test_a_flood_of_unknown_kids_does_not_flood_the_idp(stack):
    good = stack.token("alice", ["engineering"])
    _, payload, signature = good.split(".")
    log = stack.data_dir / "logs" / "control-plane.log"

    def jwks_fetches() -> int:
        return log.read_text().count('path="/dev/jwks.json"')

    before = jwks_fetches()
    assert before >= 1, "the filter's first key fetch is not in the control plane's log"
    statuses = set()
    for i in range(30):
        header = b64(json.dumps({"alg": "RS256", "typ": "JWT", "kid": f"random-{uuid.uuid4()}"}).encode())
        statuses.add(chat(stack, f"{header}.{payload}.{signature}")[0])
    assert statuses == {401}
    # At most one refetch per min_refetch_seconds (10 s by default), whatever the flood.
    assert jwks_fetches() - before <= 1
    assert chat(stack, good)[0] == 200
