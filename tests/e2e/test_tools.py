"""Tool governance end to end through the real Envoy, with the real OpenAI and
Anthropic SDKs: a group's denied tools are taken out of the requests it sends,
a request that requires one is refused in the provider's format, a tool call
that a rule blocks never reaches the client (the SDK reads a well-formed
answer that says why), an allowed call arrives byte for byte, a streamed
call is held until it is complete and judged (the SDKs' own stream parsers
read the result), and each exchange's audit record names the tools
and what was done to them.

The stand-in provider answers with queued raw answers of the providers' own
shapes (what a model's tool call looks like on the wire)."""

from __future__ import annotations

import json
import threading
import uuid

import anthropic
import openai
import pytest
import yaml

from harness.stack import default_filter_config, http, wait_until

POLICY = {
    "version": 1,
    "groups": {
        "engineering": {"models": ["*"], "tools": {"deny": ["computer"]}},
    },
    "rules": [
        {"name": "destructive-shell", "tools": ["bash", "shell"], "argument": "command",
         "regex": r"\brm\s+-[a-z]*r", "action": "block"},
        {"name": "every-bash", "tools": ["bash"], "action": "log_only"},
        {"name": "prod-sql", "tools": ["run_sql"], "argument": "query", "keywords": ["production"],
         "action": "require_approval"},
    ],
    "approval": {"approvers": ["security"], "timeout_seconds": 60},
}
SHELL_TOOL = {"type": "function", "function": {"name": "bash", "parameters": {
    "type": "object", "properties": {"command": {"type": "string"}}}}}
COMPUTER_TOOL = {"type": "function", "function": {"name": "computer", "parameters": {"type": "object"}}}
SQL_TOOL = {"type": "function", "function": {"name": "run_sql", "parameters": {
    "type": "object", "properties": {"query": {"type": "string"}}}}}


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


def answer_in_background(client, prompt: str) -> tuple[threading.Thread, dict]:
    """The client's request, in a thread: its answer waits at the gateway."""
    outcome: dict = {}

    def ask():
        try:
            outcome["answer"] = client.openai.with_options(timeout=90).chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": prompt}], tools=[SQL_TOOL])
        except BaseException as e:  # noqa: BLE001 - reported by the test
            outcome["error"] = e

    asking = threading.Thread(target=ask)
    asking.start()
    return asking, outcome


def pending_call_approval(stack, approver: str, query: str) -> dict:
    found: list[dict] = []

    def listed() -> bool:
        pending = json.loads(stack.cli("approvals", "list", "--status", "pending", "--json",
                                       token=approver).stdout)["approvals"]
        found[:] = [a for a in pending if a["rule"] == "prod-sql" and query in a["masked_prompt"]]
        return bool(found)

    wait_until("the held call's approval", listed, timeout=30)
    return found[0]


def decide(stack, approver: str, approval: dict, verdict: str, reason: str) -> None:
    """The approver's decision (`approve` or `deny`, with `reason`) with the CLI."""
    stack.cli("approvals", verdict, approval["id"], "--reason", reason, token=approver)


@pytest.mark.parametrize("verdict", ["approve", "deny"])
def test_a_call_a_rule_holds_waits_in_the_answer_for_an_approver(client, verdict):
    """A call in a model's answer that needs an approval: the answer waits
    at the gateway (the client has nothing yet) until an approver decides;
    approved, the call arrives as the model wrote it; denied, the SDK reads
    an answer without it that says who denied it and why."""
    bob = client.stack.token("bob", ["security"])
    query = f"delete from production.sessions where id = '{uuid.uuid4()}'"
    arguments = json.dumps({"query": query})
    queue_json(client.stack, chat_answer(("run_sql", arguments)))
    asking, outcome = answer_in_background(client, "tidy the sessions")
    try:
        approval = pending_call_approval(client.stack, bob, query)
        assert approval["masked_prompt"].startswith("run_sql "), approval
        assert asking.is_alive() and not outcome, "the answer waits for the decision"
        decide(client.stack, bob, approval, verdict, "not during the freeze")
    finally:
        asking.join(timeout=90)
    assert not asking.is_alive() and "error" not in outcome, outcome
    message = outcome["answer"].choices[0]
    record = client.record()
    assert record["approval_id"] == approval["id"]
    if verdict == "approve":
        assert [c.function.arguments for c in message.message.tool_calls] == [arguments]
        assert message.finish_reason == "tool_calls"
        assert (record["decision"], record["tools"]) == ("approved", "run_sql:approved:prod-sql")
    else:
        assert not message.message.tool_calls and message.finish_reason == "stop"
        assert "denied by bob: not during the freeze" in message.message.content, message.message.content
        assert query not in message.message.content
        assert (record["decision"], record["tools"]) == ("masked", "run_sql:refused:prod-sql")


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


# ---- streamed calls: held until complete and judged -------------------------
#
# Each stream is sent by the stand-in in 7-byte pieces, so events (and the
# arguments inside them) reach the gateway cut at arbitrary places; the
# engine's own tests cover every cut of every API's stream byte by byte.

REFUSED_ARGS = '{"command": "rm -rf /srv"}'
ALLOWED_ARGS = '{"command": "ls -la /srv",  "timeout": 5}'


def halves(text: str) -> list[str]:
    return [text[: len(text) // 2], text[len(text) // 2:]]


def sse(name: str | None, data: dict) -> str:
    head = f"event: {name}\n" if name else ""
    return f"{head}data: {json.dumps(data)}\n\n"


def chat_stream(*calls: tuple[str, str]) -> str:
    base = {"id": "chatcmpl-s", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini"}

    def chunk(delta: dict, finish: str | None = None) -> str:
        return sse(None, {**base, "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                               "finish_reason": finish}]})
    out = chunk({"role": "assistant", "content": "Cleaning up."})
    for i, (name, args) in enumerate(calls):
        out += chunk({"tool_calls": [{"index": i, "id": f"call_{i}", "type": "function",
                                      "function": {"name": name, "arguments": ""}}]})
        for piece in halves(args):
            out += chunk({"tool_calls": [{"index": i, "function": {"arguments": piece}}]})
    return out + chunk({}, "tool_calls") + "data: [DONE]\n\n"


def anthropic_stream(*calls: tuple[str, dict]) -> str:
    def message(stop_reason):
        return {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-6",
                "content": [], "stop_reason": stop_reason, "stop_sequence": None,
                "usage": {"input_tokens": 5, "output_tokens": 1}}
    out = sse("message_start", {"type": "message_start", "message": message(None)})
    out += sse("content_block_start", {"type": "content_block_start", "index": 0,
                                       "content_block": {"type": "text", "text": ""}})
    out += sse("content_block_delta", {"type": "content_block_delta", "index": 0,
                                       "delta": {"type": "text_delta", "text": "Cleaning up."}})
    out += sse("content_block_stop", {"type": "content_block_stop", "index": 0})
    for i, (name, arguments) in enumerate(calls, start=1):
        out += sse("content_block_start", {"type": "content_block_start", "index": i, "content_block": {
            "type": "tool_use", "id": f"toolu_{i}", "name": name, "input": {}}})
        out += sse("ping", {"type": "ping"})
        for piece in halves(json.dumps(arguments)):
            out += sse("content_block_delta", {"type": "content_block_delta", "index": i,
                                               "delta": {"type": "input_json_delta", "partial_json": piece}})
        out += sse("content_block_stop", {"type": "content_block_stop", "index": i})
    out += sse("message_delta", {"type": "message_delta", "delta": {"stop_reason": "tool_use",
                                 "stop_sequence": None}, "usage": {"output_tokens": 9}})
    return out + sse("message_stop", {"type": "message_stop"})


def responses_stream(*calls: tuple[str, str]) -> str:
    events = []

    def send(name: str, data: dict) -> None:
        events.append(sse(name, {"type": name, "sequence_number": len(events), **data}))

    def response(status: str, output: list) -> dict:
        return {"id": "resp_1", "object": "response", "created_at": 1, "status": status, "error": None,
                "incomplete_details": None, "instructions": None, "model": "gpt-4o-mini", "output": output,
                "parallel_tool_calls": True, "tool_choice": "auto", "tools": [], "usage": None,
                "metadata": {}, "temperature": 1.0, "top_p": 1.0}
    text = {"id": "msg_1", "type": "message", "status": "completed", "role": "assistant",
            "content": [{"type": "output_text", "text": "Cleaning up.", "annotations": []}]}
    send("response.created", {"response": response("in_progress", [])})
    send("response.output_item.added", {"output_index": 0, "item": text})
    send("response.output_item.done", {"output_index": 0, "item": text})
    items = [text]
    for at, (name, args) in enumerate(calls, start=1):
        item = {"id": f"fc_{at}", "type": "function_call", "status": "in_progress", "arguments": "",
                "call_id": f"call_{at}", "name": name}
        send("response.output_item.added", {"output_index": at, "item": item})
        for piece in halves(args):
            send("response.function_call_arguments.delta", {"item_id": f"fc_{at}", "output_index": at,
                                                            "delta": piece})
        send("response.function_call_arguments.done", {"item_id": f"fc_{at}", "output_index": at,
                                                       "arguments": args})
        item = {**item, "status": "completed", "arguments": args}
        send("response.output_item.done", {"output_index": at, "item": item})
        items.append(item)
    send("response.completed", {"response": response("completed", items)})
    return "".join(events)


def queue_stream(stack, body: str, times: int = 1) -> None:
    stack.provider_queue_raw([{"content_type": "text/event-stream", "body": body, "chunk_size": 7,
                               "chunk_delay_ms": 1}] * times)


def raw_bytes(client, path: str, body: dict) -> bytes:
    """The bytes the gateway sends a client for one streamed request (its
    own audit record, under another user agent)."""
    token = client.stack.token("alice", ["engineering"])
    status, _, sent = http("POST", f"{client.stack.gateway_url}{path}", body=body, timeout=30,
                           headers={"authorization": f"Bearer {token}", "x-api-key": token,
                                    "anthropic-version": "2023-06-01", "user-agent": "tools/raw"})
    assert status == 200, sent
    return sent


def test_a_streamed_chat_call_is_held_until_judged(client):
    stream = chat_stream(("bash", REFUSED_ARGS), ("bash", ALLOWED_ARGS))
    queue_stream(client.stack, stream, times=2)
    request = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "clean up"}],
               "tools": [SHELL_TOOL], "stream": True}
    sent = raw_bytes(client, "/openai/v1/chat/completions", request)
    assert b"rm -rf" not in sent and b"rm -" not in sent
    # The allowed call's arguments as the provider wrote them, the call
    # renumbered to the first (the refused one is gone).
    for piece in halves(ALLOWED_ARGS):
        assert json.dumps(piece).encode() in sent
    assert b'"id":"call_1","index":0' in sent, sent.decode()

    del request["stream"]
    with client.openai.chat.completions.stream(**request) as events:
        final = events.get_final_completion()
    message = final.choices[0].message
    assert [(c.index, c.id, c.function.name, c.function.arguments) for c in message.tool_calls] == [
        (0, "call_1", "bash", ALLOWED_ARGS)]
    assert message.content.startswith("Cleaning up.\n\n[warden] The call to tool 'bash' was refused")
    assert "destructive-shell" in message.content
    assert final.choices[0].finish_reason == "tool_calls"
    record = client.record()
    assert (record["decision"], record["tools"]) == ("masked", "bash:refused:destructive-shell,bash:allowed")


def test_a_streamed_anthropic_call_is_replaced_by_text_and_the_turn_ends(client):
    queue_stream(client.stack, anthropic_stream(("bash", {"command": "rm -rf /srv"}),
                                                ("computer", {"action": "screenshot"})), times=2)
    request = {"model": "claude-sonnet-4-6", "max_tokens": 100,
               "messages": [{"role": "user", "content": "clean up"}], "stream": True}
    sent = raw_bytes(client, "/anthropic/v1/messages", request)
    assert b"rm -rf" not in sent and b"screenshot" not in sent and b"tool_use" not in sent

    del request["stream"]
    with client.anthropic.messages.stream(**request) as events:
        message = events.get_final_message()
    assert [b.type for b in message.content] == ["text", "text", "text"]
    assert "destructive-shell" in message.content[1].text
    assert "'computer'" in message.content[2].text
    assert message.stop_reason == "end_turn"
    assert client.record()["tools"] == "bash:refused:destructive-shell,computer:refused"


def test_an_allowed_streamed_anthropic_call_arrives_intact(client):
    stream = anthropic_stream(("bash", {"command": "ls -la /srv"}))
    queue_stream(client.stack, stream)
    with client.anthropic.messages.stream(model="claude-sonnet-4-6", max_tokens=100,
                                          messages=[{"role": "user", "content": "look"}]) as events:
        message = events.get_final_message()
    assert [b.type for b in message.content] == ["text", "tool_use"]
    assert message.content[1].input == {"command": "ls -la /srv"}
    assert message.stop_reason == "tool_use"
    record = client.record()
    assert (record["decision"], record["tools"]) == ("allowed", "bash:allowed")


def test_a_streamed_responses_call_is_replaced_by_a_message(client):
    queue_stream(client.stack, responses_stream(("bash", REFUSED_ARGS), ("bash", ALLOWED_ARGS)), times=2)
    request = {"model": "gpt-4o-mini", "input": "clean up", "stream": True,
               "tools": [{"type": "function", "name": "bash", "parameters": {"type": "object"}}]}
    sent = raw_bytes(client, "/openai/v1/responses", request)
    assert b"rm -rf" not in sent and b"rm -" not in sent

    del request["stream"]
    with client.openai.responses.stream(**request) as events:
        final = events.get_final_response()
    assert [item.type for item in final.output] == ["message", "message", "function_call"]
    assert "destructive-shell" in final.output[1].content[0].text
    assert final.output[2].arguments == ALLOWED_ARGS
    assert client.record()["tools"] == "bash:refused:destructive-shell,bash:allowed"


@pytest.mark.parametrize("verdict", ["approve", "deny"])
def test_a_streamed_call_a_rule_holds_waits_in_the_stream_for_an_approver(client, verdict):
    """A streamed call that needs an approval: the text before it reaches
    the client at once, the call (and everything after it) waits at the
    gateway until an approver decides; approved, the SDK's stream parser
    reads the call as the model wrote it; denied, a well-formed ending that
    says who denied it."""
    bob = client.stack.token("bob", ["security"])
    query = f"delete from production.sessions where id = '{uuid.uuid4()}'"
    arguments = json.dumps({"query": query})
    queue_stream(client.stack, chat_stream(("run_sql", arguments)))
    outcome: dict = {"text": []}

    def ask():
        try:
            with client.openai.with_options(timeout=90).chat.completions.stream(
                    model="gpt-4o-mini", messages=[{"role": "user", "content": "tidy"}],
                    tools=[SQL_TOOL]) as events:
                for event in events:
                    if event.type == "content.delta":
                        outcome["text"].append(event.delta)
                outcome["final"] = events.get_final_completion()
        except BaseException as e:  # noqa: BLE001 - reported by the test
            outcome["error"] = e

    asking = threading.Thread(target=ask)
    asking.start()
    try:
        approval = pending_call_approval(client.stack, bob, query)
        wait_until("the text before the call", lambda: "".join(outcome["text"]).startswith("Cleaning up"))
        assert "final" not in outcome and "error" not in outcome, outcome
        decide(client.stack, bob, approval, verdict, "not now")
    finally:
        asking.join(timeout=90)
    assert not asking.is_alive() and "error" not in outcome, outcome
    choice = outcome["final"].choices[0]
    record = client.record()
    assert record["approval_id"] == approval["id"]
    if verdict == "approve":
        assert [(c.function.name, c.function.arguments) for c in choice.message.tool_calls] == [
            ("run_sql", arguments)]
        assert (record["decision"], record["tools"]) == ("approved", "run_sql:approved:prod-sql")
    else:
        assert not choice.message.tool_calls and choice.finish_reason == "stop"
        assert "denied by bob: not now" in choice.message.content and query not in choice.message.content
        assert (record["decision"], record["tools"]) == ("masked", "run_sql:refused:prod-sql")
