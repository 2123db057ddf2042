"""Tool governance end to end through the real Envoy, with the real OpenAI and
Anthropic SDKs: a group's denied tools are taken out of the requests it sends,
a request that requires one is refused in the provider's format, a tool call
that a rule blocks never reaches the client (the SDK reads a well-formed
answer that says why), an allowed call arrives byte for byte, a streamed
call is not sent unjudged, and each exchange's audit record names the tools
and what was done to them.

The stand-in provider answers with queued raw answers of the providers' own
shapes (what a model's tool call looks like on the wire)."""

from __future__ import annotations

import json
import uuid

import anthropic
import openai
import pytest
import yaml

from harness.sse import chat_chunk
from harness.stack import default_filter_config, wait_until

POLICY = {
    "version": 1,
    "groups": {
        "engineering": {"models": ["*"], "tools": {"deny": ["computer"]}},
    },
    "rules": [
        {"name": "destructive-shell", "tools": ["bash", "shell"], "argument": "command",
         "regex": r"\brm\s+-[a-z]*r", "action": "block"},
        {"name": "every-bash", "tools": ["bash"], "action": "log_only"},
    ],
}
SHELL_TOOL = {"type": "function", "function": {"name": "bash", "parameters": {
    "type": "object", "properties": {"command": {"type": "string"}}}}}
COMPUTER_TOOL = {"type": "function", "function": {"name": "computer", "parameters": {"type": "object"}}}


@pytest.fixture(scope="module")
def tools_stack(tmp_path_factory):
    from harness.stack import Ports, Stack
    cfg = default_filter_config()
    cfg["policy"] = POLICY
    stack = Stack.start(Ports.free(), tmp_path_factory.mktemp("tools"), filter_config=yaml.safe_dump(cfg))
    try:
        yield stack
    finally:
        stack.stop()


class Client:
    """One test's requests, marked by their user agent so their audit
    records can be told apart."""

    def __init__(self, stack):
        stack.provider_clear()
        self.stack = stack
        self.agent = f"tools/{uuid.uuid4()}"
        token = stack.token("alice", ["engineering"])
        self.openai = openai.OpenAI(base_url=f"{stack.gateway_url}/openai/v1", api_key=token, max_retries=0,
                                    default_headers={"user-agent": self.agent})
        self.anthropic = anthropic.Anthropic(base_url=f"{stack.gateway_url}/anthropic", api_key=token,
                                             max_retries=0, default_headers={"user-agent": self.agent})

    def record(self) -> dict:
        def mine() -> list[dict]:
            return [r for r in self.stack.access_log_records() if r.get("user_agent") == self.agent]
        wait_until("the audit record", lambda: bool(mine()))
        found = mine()
        assert len(found) == 1, found
        return found[0]


@pytest.fixture
def client(tools_stack):
    return Client(tools_stack)


def chat_answer(*calls: tuple[str, str], content=None) -> dict:
    return {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
            "choices": [{"index": 0, "finish_reason": "tool_calls", "logprobs": None, "message": {
                "role": "assistant", "content": content, "refusal": None, "tool_calls": [
                    {"id": f"call_{i}", "type": "function", "function": {"name": name, "arguments": args}}
                    for i, (name, args) in enumerate(calls)]}}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10}}


def queue_json(stack, answer: dict) -> None:
    stack.provider_queue_raw([{"content_type": "application/json", "body": json.dumps(answer)}])


def test_a_denied_tool_is_taken_out_of_the_request(client):
    queue_json(client.stack, chat_answer(("bash", '{"command": "ls"}')))
    client.openai.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}],
                                          tools=[SHELL_TOOL, COMPUTER_TOOL])
    sent = json.loads(client.stack.provider_received()[0]["body"])
    assert [t["function"]["name"] for t in sent["tools"]] == ["bash"]
    assert client.record()["tools"] == "computer:removed,bash:allowed"


def test_a_request_that_requires_a_denied_tool_is_refused(client):
    with pytest.raises(openai.PermissionDeniedError) as raised:
        client.openai.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], tools=[COMPUTER_TOOL],
            tool_choice={"type": "function", "function": {"name": "computer"}})
    assert raised.value.body["code"] == "warden.tool_denied"
    assert client.stack.provider_received() == []
    record = client.record()
    assert (record["decision"], record["reason"], record["tools"]) == ("denied", "warden.tool_denied",
                                                                       "computer:refused")


def test_a_blocked_call_never_reaches_the_client_and_an_allowed_one_arrives_intact(client):
    allowed_args = '{"command": "ls -la /srv",  "timeout": 5}'
    queue_json(client.stack, chat_answer(("bash", '{"command": "rm -rf /srv"}'), ("bash", allowed_args),
                                         content="Cleaning up."))
    raw = client.openai.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "clean up"}], tools=[SHELL_TOOL])
    assert b"rm -rf" not in raw.http_response.content
    answer = raw.parse()
    message = answer.choices[0].message
    assert [c.function.arguments for c in message.tool_calls] == [allowed_args]
    assert message.content.startswith("Cleaning up.\n\n[warden] The call to tool 'bash' was refused")
    assert "destructive-shell" in message.content
    record = client.record()
    assert record["tools"] == "bash:refused:destructive-shell,bash:allowed"
    assert "destructive-shell:block:1" in record["rules"] and "every-bash:log_only:2" in record["rules"]


def test_an_anthropic_call_to_a_denied_tool_ends_the_turn_instead(client):
    answer = {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-6",
              "stop_reason": "tool_use", "stop_sequence": None,
              "usage": {"input_tokens": 5, "output_tokens": 5},
              "content": [{"type": "tool_use", "id": "toolu_1", "name": "computer",
                           "input": {"action": "screenshot"}}]}
    queue_json(client.stack, answer)
    message = client.anthropic.messages.create(model="claude-sonnet-4-6", max_tokens=100,
                                               messages=[{"role": "user", "content": "look"}])
    assert message.stop_reason == "end_turn"
    assert [b.type for b in message.content] == ["text"]
    assert "computer" in message.content[0].text and "screenshot" not in message.content[0].text
    assert client.record()["tools"] == "computer:refused"


def test_a_streamed_call_is_not_sent_unjudged(client):
    call = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini",
            "choices": [{"index": 0, "finish_reason": None, "delta": {"tool_calls": [
                {"index": 0, "id": "call_0", "type": "function",
                 "function": {"name": "bash", "arguments": '{"command": "rm -rf /"}'}}]}}]}
    events = chat_chunk("Let me. ") + f"data: {json.dumps(call)}\n\n" + "data: [DONE]\n\n"
    client.stack.provider_queue_raw([{"content_type": "text/event-stream", "body": events}])
    seen = []
    with pytest.raises(openai.APIError) as raised:
        for chunk in client.openai.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "go"}], tools=[SHELL_TOOL],
                stream=True):
            seen.append(chunk)
    assert "tool" in str(raised.value)
    assert all(not c.choices or not c.choices[0].delta.tool_calls for c in seen)
    record = client.record()
    assert (record["decision"], record["reason"]) == ("blocked", "warden.tool_streamed")
