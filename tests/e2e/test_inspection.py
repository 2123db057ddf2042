"""Inspection end to end: prompts masked before the provider sees them,
responses masked before the user does (whole and streamed, values cut across
events), reversible tokens, blocks, and bodies that cannot be inspected."""

from __future__ import annotations

import gzip
import json

import anthropic
import openai
import pytest
import yaml

from harness.stack import ROOT, Stack, default_filter_config, http

EMAIL = "jane.doe@example.com"
CARD = "4111 1111 1111 1111"
AWS_KEY = "AK" "IA" "QYLPMN5RTB7DZ4UF"  # not AWS's documented EXAMPLE key, which is a placeholder
GITHUB = "ghp_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o50smkjE"  # its CRC32 ends it, as GitHub's do


# A gitleaks rule file, as a security team keeps one: its keywords, entropy
# and allowlist are honoured by the gateway.
ACME_RULES = r"""
[allowlist]
stopwords = ["example"]

[[rules]]
id = "acme-api-key"
regex = '''\b(acme_(?:live|test)_[a-z0-9]{32})\b'''
entropy = 3.5
keywords = ["acme_"]
"""
ACME_KEY = "acme_live_" "q7x2m9k4v8b1n5c3z6l0p4r7t2w9y3d8"


def oa(stack: Stack, token: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.gateway_url}/openai/v1", api_key=token, max_retries=0)


def claude(stack: Stack, token: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=f"{stack.gateway_url}/anthropic", api_key=token, max_retries=0)


def ask(stack: Stack, token: str, prompt: str, stream: bool) -> str:
    """The answer's text as the openai SDK's user reads it, streamed or not."""
    client = oa(stack, token)
    messages = [{"role": "user", "content": prompt}]
    if stream:
        chunks = client.chat.completions.create(model="gpt-4o", stream=True, messages=messages)
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return client.chat.completions.create(model="gpt-4o", messages=messages).choices[0].message.content


def sent_upstream(stack: Stack) -> str:
    return json.dumps(stack.provider_received())


def test_the_envoy_policy_is_the_default_policy():
    inline = default_filter_config()["policy"]
    assert inline == yaml.safe_load((ROOT / "examples" / "policies" / "default.yaml").read_text())


def test_prompt_data_is_masked_before_the_provider(stack):
    token = stack.token("alice", ["engineering"])
    reply = oa(stack, token).chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": f"mail {EMAIL}, card {CARD}, key {AWS_KEY}"}])
    upstream = sent_upstream(stack)
    for value in (EMAIL, CARD, AWS_KEY):
        assert value not in upstream
    assert "[EMAIL]" in upstream and "[PAYMENT_CARD]" in upstream
    # The stand-in echoes what it received: the user sees the masked prompt.
    text = reply.choices[0].message.content
    assert EMAIL not in text and "[EMAIL]" in text


def test_json_escapes_do_not_hide_a_value(stack):
    token = stack.token("alice", ["engineering"])
    raw = b'{"model":"gpt-4o","messages":[{"role":"user","content":"write to jane.doe\\u0040example.com"}]}'
    status, _, _ = http("POST", f"{stack.gateway_url}/openai/v1/chat/completions", body=raw,
                        headers={"authorization": f"Bearer {token}", "content-type": "application/json"})
    assert status == 200
    assert EMAIL not in sent_upstream(stack) and "jane.doe\\\\u0040" not in sent_upstream(stack)


@pytest.mark.parametrize("stream", [False, True])
def test_responses_are_masked_for_the_user_openai(stack, stream):
    token = stack.token("alice", ["engineering"])
    stack.provider_queue_replies([f"your key is {AWS_KEY} and mail {EMAIL} ok"])
    text = ask(stack, token, "tell me", stream)
    assert AWS_KEY not in text and EMAIL not in text
    assert text == "your key is [AWS_ACCESS_KEY_ID] and mail [EMAIL] ok"


@pytest.mark.parametrize("stream", [False, True])
def test_responses_are_masked_for_the_user_anthropic(stack, stream):
    token = stack.token("alice", ["engineering"])
    stack.provider_queue_replies([f"card {CARD} done"])
    client = claude(stack, token)
    if stream:
        with client.messages.stream(model="claude-sonnet-4-6", max_tokens=100,
                                    messages=[{"role": "user", "content": "x"}]) as s:
            text = "".join(s.text_stream)
    else:
        text = client.messages.create(model="claude-sonnet-4-6", max_tokens=100,
                                      messages=[{"role": "user", "content": "x"}]).content[0].text
    assert text == "card [PAYMENT_CARD] done"


def custom_policy(rules: list[dict]) -> str:
    config = default_filter_config()
    config["policy"]["rules"] = rules
    return yaml.safe_dump(config)


@pytest.fixture(scope="module")
def tokenizing_stack(tmp_path_factory):
    from harness.stack import Ports
    s = Stack.start(Ports.free(), tmp_path_factory.mktemp("tok"), filter_config=custom_policy([
        {"name": "email", "detect": "email", "action": "tokenize", "level": "internal"},
        {"name": "source-keys", "detect": ["github_token", "aws_access_key_id"], "action": "block"},
        {"name": "dump", "keywords": ["production database dump"], "action": "require_approval",
         "approval": {"approvers": ["security"]}},
        {"name": "team-rules", "gitleaks": ACME_RULES, "action": "mask"},
    ]))
    yield s
    s.stop()


@pytest.mark.parametrize("stream", [False, True])
def test_tokenized_values_never_reach_the_provider_and_come_back(tokenizing_stack, stream):
    stack = tokenizing_stack
    stack.provider_clear()
    token = stack.token("alice", ["engineering"])
    prompt = f"reply with: Dear {EMAIL}, thanks"
    text = ask(stack, token, prompt, stream)
    upstream = sent_upstream(stack)
    assert EMAIL not in upstream and "<EMAIL_1>" in upstream
    # The provider answered with the placeholder; the user reads the value.
    assert text == f"Dear {EMAIL}, thanks"


@pytest.mark.parametrize("stream", [False, True])
def test_a_gitleaks_rule_file_is_a_detector_set(tokenizing_stack, stream):
    stack = tokenizing_stack
    stack.provider_clear()
    token = stack.token("alice", ["engineering"])
    allowed = "acme_test_" "exampleq7x2m9k4v8b1n5c3z6l0p4r7t"
    text = ask(stack, token, f"reply with: use {ACME_KEY} not {allowed}", stream)
    upstream = sent_upstream(stack)
    assert ACME_KEY not in upstream and "[ACME_API_KEY]" in upstream
    # The allowlist's stopword lets the documentation's key through.
    assert allowed in upstream
    # The echoed answer is masked for the user too, streamed or not.
    assert ACME_KEY not in text and "[ACME_API_KEY]" in text and allowed in text


def test_block_rules_send_nothing_upstream(tokenizing_stack):
    stack = tokenizing_stack
    stack.provider_clear()
    token = stack.token("alice", ["engineering"])
    with pytest.raises(openai.PermissionDeniedError) as err:
        oa(stack, token).chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": f"deploy with {GITHUB}"}])
    assert "source-keys" in err.value.message and GITHUB not in err.value.message
    with pytest.raises(anthropic.PermissionDeniedError) as err:
        claude(stack, token).messages.create(
            model="claude-sonnet-4-6", max_tokens=10,
            messages=[{"role": "user", "content": "attach the production database dump"}])
    assert "approval" in str(err.value)
    assert stack.provider_received() == []


def test_a_blocked_response_is_replaced_by_an_error(tokenizing_stack):
    stack = tokenizing_stack
    token = stack.token("alice", ["engineering"])
    stack.provider_queue_replies([f"here: {AWS_KEY}"])
    with pytest.raises(openai.PermissionDeniedError) as err:
        oa(stack, token).chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    assert AWS_KEY not in str(err.value)
    stack.provider_queue_replies([f"streamed secret {AWS_KEY} here"])
    chunks = oa(stack, token).chat.completions.create(model="gpt-4o", stream=True,
                                                      messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.APIError) as err:
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        pytest.fail(f"stream ended normally: {text!r}")
    assert AWS_KEY not in str(err.value)


def test_bodies_that_cannot_be_inspected_are_refused(stack):
    token = stack.token("alice", ["engineering"])
    auth = {"authorization": f"Bearer {token}", "content-type": "application/json"}
    url = f"{stack.gateway_url}/openai/v1/chat/completions"
    dup = b'{"model":"gpt-4o","messages":[],"messages":[{"role":"user","content":"hidden"}]}'
    status, headers, _ = http("POST", url, body=dup, headers=auth)
    assert (status, headers["x-warden-reason"]) == (400, "warden.body_not_json")
    compressed = gzip.compress(json.dumps({"model": "gpt-4o", "messages": []}).encode())
    status, headers, _ = http("POST", url, body=compressed, headers={**auth, "content-encoding": "gzip"})
    assert (status, headers["x-warden-reason"]) == (415, "warden.body_encoded")
    big = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "x" * 2_000_000}]}).encode()
    status, headers, _ = http("POST", url, body=big, headers=auth)
    assert (status, headers["x-warden-reason"]) == (413, "warden.body_too_large")
    assert stack.provider_received() == []


def test_what_was_masked_is_in_the_access_log_without_values(stack):
    import uuid
    from harness.stack import wait_until
    marker = f"mask-audit/{uuid.uuid4()}"
    token = stack.token("alice", ["engineering"])
    http("POST", f"{stack.gateway_url}/openai/v1/chat/completions",
         body={"model": "gpt-4o", "messages": [{"role": "user", "content": f"{EMAIL} and {EMAIL}"}]},
         headers={"authorization": f"Bearer {token}", "user-agent": marker})
    wait_until("the record", lambda: any(r["user_agent"] == marker for r in stack.access_log_records()))
    (record,) = [r for r in stack.access_log_records() if r["user_agent"] == marker]
    assert record["decision"] == "masked"
    assert "personal-data:mask:" in record["rules"]
    # The provider's token usage, from the response the filter inspected.
    assert json.loads(record["usage"])["prompt_tokens"] >= 1
    assert EMAIL not in json.dumps(record)


def test_counters_by_decision_and_rule_reach_envoy_stats(stack):
    from harness.stack import wait_until
    token = stack.token("alice", ["engineering"])
    http("POST", f"{stack.gateway_url}/openai/v1/chat/completions",
         body={"model": "gpt-4o", "messages": [{"role": "user", "content": f"ping {EMAIL}"}]},
         headers={"authorization": f"Bearer {token}"})
    http("GET", f"{stack.gateway_url}/openai/v1/models")

    def stats() -> dict:
        _, _, body = http("GET", f"{stack.admin_url}/stats?filter=wasmcustom")
        pairs = (line.split(": ", 1) for line in body.decode().splitlines() if ": " in line)
        return {k: int(v) for k, v in pairs if v.strip().isdigit()}

    wait_until("the counters", lambda: stats().get("wasmcustom.warden.rule.personal-data.mask", 0) >= 1)
    s = stats()
    assert s.get("wasmcustom.warden.requests.openai.masked", 0) >= 1
    assert s.get("wasmcustom.warden.requests.openai.unauthenticated", 0) >= 1
    # The filter's wasm memory, summed over its VMs (each holds at least its 1 MiB stack).
    wait_until("the memory gauge", lambda: stats().get("wasmcustom.warden.vm.memory_bytes", 0) > 1 << 20)
    assert stats()["wasmcustom.warden.vm.memory_bytes"] < 1 << 30
    _, _, prometheus = http("GET", f"{stack.admin_url}/stats/prometheus")
    assert b"warden" in prometheus and EMAIL.encode() not in prometheus


def test_encoded_and_disguised_values_are_found(stack):
    import base64
    token = stack.token("alice", ["engineering"])
    disguised = [
        base64.b64encode(f"aws {AWS_KEY}".encode()).decode(),   # base64
        "jane.doe%40example.com",                                  # percent-encoded
        "jane.doe\u200b@example.com",                              # zero-width space inside
        "ｊａｎｅ．ｄｏｅ＠ｅｘａｍｐｌｅ．ｃｏｍ",                  # fullwidth forms (NFKC)
    ]
    oa(stack, token).chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": " | ".join(disguised)}])
    upstream = json.loads(stack.provider_received()[0]["body"])["messages"][0]["content"]
    for value in disguised:
        assert value not in upstream, value
    assert upstream.count("[EMAIL]") == 3 and "[AWS_ACCESS_KEY_ID]" in upstream, upstream
