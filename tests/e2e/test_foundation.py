"""The foundation: requests go through the filter inside a real Envoy to the
stand-in provider and back, with the real SDKs as clients."""

from __future__ import annotations

import json
import uuid

import anthropic
import openai
import pytest

from harness.stack import STAND_IN_KEYS, Stack, StackError, http, wait_until


def openai_client(stack: Stack, api_key: str | None = None) -> openai.OpenAI:
    """The openai SDK pointed at the gateway, with an engineer's token as its API key."""
    return openai.OpenAI(base_url=f"{stack.gateway_url}/openai/v1",
                         api_key=api_key or stack.token("alice", ["engineering"]), max_retries=0)


def anthropic_client(stack: Stack, api_key: str | None = None) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=f"{stack.gateway_url}/anthropic",
                               api_key=api_key or stack.token("alice", ["engineering"]), max_retries=0)


def test_openai_sdk_round_trip_through_the_filter(stack):
    raw = openai_client(stack).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hello through the gateway"}])
    completion = raw.parse()
    assert completion.choices[0].message.content == "hello through the gateway"
    # The filter marks what it handled: proof that the VM ran, not only Envoy.
    assert raw.headers.get("x-warden")
    received = stack.provider_received()
    assert [r["path"] for r in received] == ["/v1/chat/completions"]


def test_provider_sees_its_key_never_the_client_credential(stack):
    token = stack.token("alice", ["engineering"])
    client = openai_client(stack, api_key=token)
    client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}],
        extra_headers={"x-warden-user": "mallory", "x-api-key": "also-from-client"})
    (req,) = stack.provider_received()
    headers = req["headers"]
    assert headers["authorization"] == f"Bearer {STAND_IN_KEYS['WARDEN_OPENAI_API_KEY']}"
    assert "x-api-key" not in headers
    assert "x-warden-user" not in headers
    assert token not in json.dumps(req)


def test_openai_streaming_arrives_whole(stack):
    stream = openai_client(stack).chat.completions.create(
        model="gpt-4o-mini", stream=True,
        messages=[{"role": "user", "content": "reply with: streamed through Envoy, piece by piece"}])
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text == "streamed through Envoy, piece by piece"


def test_anthropic_sdk_round_trip_and_stream(stack):
    client = anthropic_client(stack)
    msg = client.messages.create(model="claude-sonnet-4-6", max_tokens=64,
                                 messages=[{"role": "user", "content": "bonjour"}])
    assert msg.content[0].text == "bonjour"
    with client.messages.stream(model="claude-sonnet-4-6", max_tokens=64,
                                messages=[{"role": "user", "content": "reply with: é streamed ✓"}]) as s:
        assert "".join(s.text_stream) == "é streamed ✓"
    received = stack.provider_received()
    assert len(received) == 2
    for req in received:
        assert req["path"] == "/v1/messages"
        assert req["headers"]["x-api-key"] == STAND_IN_KEYS["WARDEN_ANTHROPIC_API_KEY"]
        assert "authorization" not in req["headers"]


def test_unknown_route_is_answered_by_the_filter_in_provider_format(stack):
    status, headers, body = http("GET", f"{stack.gateway_url}/gemini/v1/models")
    assert status == 404
    assert headers.get("x-warden")
    assert json.loads(body)["error"]["code"] == "warden.no_route"
    assert stack.provider_received() == []


def test_every_request_leaves_one_access_log_record(stack):
    marker = f"access-log-test/{uuid.uuid4()}"
    openai_client(stack).with_options(default_headers={"user-agent": marker}).models.list()
    http("GET", f"{stack.gateway_url}/nowhere", headers={"user-agent": marker})
    # Requests are recorded in completion order, which need not be sending order.
    wait_until("both records", lambda: len(
        [r for r in stack.access_log_records() if r["user_agent"] == marker]) >= 2)
    records = [r for r in stack.access_log_records() if r["user_agent"] == marker]
    records.sort(key=lambda r: r["status"])
    assert [r["status"] for r in records] == [200, 404]
    assert records[0]["path"] == "/openai/v1/models"
    assert records[0]["upstream_cluster"] == "provider_openai"
    assert records[0]["user"] == "alice" and records[0]["decision"] == "allowed"
    assert records[1]["upstream_cluster"] in (None, "-", "")


def test_missing_provider_key_fails_closed_with_503(make_stack):
    stack = make_stack(envoy_env={"WARDEN_ANTHROPIC_API_KEY": STAND_IN_KEYS["WARDEN_ANTHROPIC_API_KEY"]})
    # The OpenAI route has no key: refused before anything else, token or not.
    with pytest.raises(openai.APIStatusError) as err:
        openai_client(stack).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert err.value.status_code == 503
    assert "WARDEN_OPENAI_API_KEY" in err.value.message
    assert stack.provider_received() == []
    # The other provider still works.
    msg = anthropic_client(stack).messages.create(
        model="claude-sonnet-4-6", max_tokens=16, messages=[{"role": "user", "content": "ok"}])
    assert msg.content[0].text == "ok"
    assert "has no API key" in (stack.data_dir / "logs" / "envoy.log").read_text()


def test_bad_filter_configuration_is_refused_by_envoy(make_stack):
    with pytest.raises(StackError) as err:
        make_stack(filter_config="providers:\n  - name: openai\n    api: openai\n    colour: blue\n")
    assert "unknown field `colour`" in str(err.value)
