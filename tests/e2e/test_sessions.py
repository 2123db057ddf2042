"""Recorded sessions through a real Envoy: with `record: masked` the filter sends each
exchange, after masking, to the control plane, which chains the records by hashes;
`warden sessions verify` then vouches for the chain, and never a raw value is stored."""

from __future__ import annotations

import json
import uuid

import pytest
import yaml

from harness.stack import Ports, Stack, default_filter_config, http, wait_until

EMAIL = "jane.doe@example.com"


@pytest.fixture(scope="module")
def recording_stack(tmp_path_factory):
    cfg = default_filter_config()
    cfg["policy"]["record"] = "masked"
    stack = Stack.start(Ports.free(), tmp_path_factory.mktemp("sessions"), filter_config=yaml.safe_dump(cfg))
    try:
        yield stack
    finally:
        stack.stop()


def sessions_of(stack: Stack, auditor: str, subject: str) -> list[dict]:
    out = stack.cli("sessions", "list", "--subject", subject, "--json", token=auditor).stdout
    return json.loads(out)["sessions"]


def test_masked_sessions_are_recorded_chained_and_verifiable(recording_stack):
    stack = recording_stack
    subject = f"rec-{uuid.uuid4().hex[:8]}"
    token = stack.token(subject, ["engineering"])
    auditor = stack.token("audrey", ["warden-auditors"])
    status, _, _ = http("POST", f"{stack.gateway_url}/openai/v1/chat/completions",
                        body={"model": "gpt-4o-mini",
                              "messages": [{"role": "user", "content": f"reply with: mail {EMAIL}"}]},
                        headers={"authorization": f"Bearer {token}"})
    assert status == 200
    status, _, _ = http("POST", f"{stack.gateway_url}/openai/v1/chat/completions",
                        body={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
                        headers={"authorization": "Bearer not-a-token"})
    assert status == 401

    found: list[dict] = []

    def recorded() -> bool:
        found[:] = sessions_of(stack, auditor, subject)
        return bool(found)

    wait_until("the session record at the control plane", recorded, timeout=20)
    assert len(found) == 1
    record = json.loads(stack.cli("sessions", "show", found[0]["id"], "--json", token=auditor).stdout)
    text = json.dumps(record)
    assert EMAIL not in text, "a masked value reached the session store"
    assert "[EMAIL]" in text
    body = record.get("record", record)
    assert body["subject"] == subject and body["decision"] == "masked"
    assert body["request"]["messages"][0]["content"] == "reply with: mail [EMAIL]"
    assert "personal-data:mask" in body["rules"]

    verified = json.loads(stack.cli("sessions", "verify", "--json", token=auditor).stdout)
    assert verified["ok"] is True and verified["checked"] >= 2, verified
    # People outside the auditors see nothing.
    done = stack.cli("sessions", "list", "--json", token=token, check=False)
    assert done.returncode != 0


@pytest.fixture(scope="module")
def tokenizing_recorder(tmp_path_factory):
    cfg = default_filter_config()
    cfg["policy"]["record"] = "masked"
    cfg["policy"]["rules"] = [
        {"name": "people", "detect": "email", "action": "tokenize", "level": "internal"},
        {"name": "cards", "detect": "payment_card", "action": "mask"},
    ]
    stack = Stack.start(Ports.free(), tmp_path_factory.mktemp("sessions-tok"), filter_config=yaml.safe_dump(cfg))
    try:
        yield stack
    finally:
        stack.stop()


@pytest.mark.parametrize("stream", [False, True])
def test_a_recorded_answer_keeps_placeholders_where_the_user_read_values(tokenizing_recorder, stream):
    """The user reads their own value put back; the session keeps the placeholder the
    provider saw, and a stream is kept reassembled with its event count."""
    import openai

    stack = tokenizing_recorder
    subject = f"tok-{uuid.uuid4().hex[:8]}"
    token = stack.token(subject, ["engineering"])
    auditor = stack.token("audrey", ["warden-auditors"])
    client = openai.OpenAI(base_url=f"{stack.gateway_url}/openai/v1", api_key=token, max_retries=0)
    messages = [{"role": "user", "content": f"reply with: Dear {EMAIL}, card 4111 1111 1111 1111"}]
    if stream:
        chunks = client.chat.completions.create(model="gpt-4o", stream=True, messages=messages)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    else:
        text = client.chat.completions.create(model="gpt-4o", messages=messages).choices[0].message.content
    assert text == f"Dear {EMAIL}, card [PAYMENT_CARD]"

    found: list[dict] = []

    def recorded() -> bool:
        found[:] = sessions_of(stack, auditor, subject)
        return bool(found)

    wait_until("the session record at the control plane", recorded, timeout=20)
    record = json.loads(stack.cli("sessions", "show", found[0]["id"], "--json", token=auditor).stdout)
    assert EMAIL not in json.dumps(record), "a tokenized value reached the session store"
    body = record.get("record", record)
    assert body["request"]["messages"][0]["content"] == "reply with: Dear <EMAIL_1>, card [PAYMENT_CARD]"
    response = body["response"]
    if stream:
        assert response["stream"]["api"] == "openai_chat"
        assert response["stream"]["events"] > 3 and response["stream"]["truncated"] is False
        assert [c["kind"] for c in response["channels"]] == ["text"]
        assert response["channels"][0]["text"] == "Dear <EMAIL_1>, card [PAYMENT_CARD]"
    else:
        assert response["choices"][0]["message"]["content"] == "Dear <EMAIL_1>, card [PAYMENT_CARD]"
