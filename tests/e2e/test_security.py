"""Regressions of the penetration test's findings, end to end through the real
Envoy (docs/security.md names the invariant each one checks):

- every way a request can end is an end of its body: an HTTP/2 stream that
  ends with trailers gets the same decision as one that ends with data;
- one request cannot take a worker down: text that once trapped the VM is
  served, and so is the request after it;
- the route and the inspected shape come from one canonical path;
- every string of a request and of a response (JSON, text, streamed) is
  inspected, not a list of the fields known to carry text;
- a policy with `hash` rules needs a real key.
"""

from __future__ import annotations

import base64
import json

import pytest
import yaml

from harness.h2c import h2c_request
from harness.stack import (STAND_IN_KEYS, TRAP_FILTER_WASM, Stack, StackError, default_filter_config, http,
                           wait_until)

EMAIL = "jane.doe@example.com"
AWS_KEY = "AK" "IA" "QYLPMN5RTB7DZ4UF"  # not AWS's documented EXAMPLE key, which is a placeholder
CHAT = "/openai/v1/chat/completions"


def chat_body(text: str, model: str = "gpt-4o-mini") -> bytes:
    return json.dumps({"model": model, "messages": [{"role": "user", "content": text}]}).encode()


def h2_chat(stack: Stack, token: str, text: str, **kwargs):
    return h2c_request(int(stack.gateway_url.rsplit(":", 1)[1]), "POST", CHAT,
                       headers={"authorization": f"Bearer {token}", "content-type": "application/json"},
                       body=chat_body(text), **kwargs)


def forged_token() -> str:
    """A well-formed JWT the issuer never signed, with a `kid` it does not
    have (the filter fetches the issuer's keys before it can refuse)."""
    def b64(obj: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()
    header = b64({"alg": "RS256", "typ": "JWT", "kid": "not-a-key-of-the-issuer"})
    claims = b64({"iss": "http://127.0.0.1/dev", "sub": "mallory", "aud": "warden", "exp": 4102444800,
                  "groups": ["engineering"]})
    return f"{header}.{claims}.{base64.urlsafe_b64encode(b'x' * 256).rstrip(b'=').decode()}"


# --- every way a request can end -----------------------------------------

@pytest.mark.parametrize("chunk", [16384, 7])
def test_an_http2_request_ending_with_trailers_is_inspected_and_credentials_swapped(stack, chunk):
    token = stack.token("alice", ["engineering"])
    resp = h2_chat(stack, token, f"mail {EMAIL} please", trailers={"x-smuggled": "trailer"}, chunk=chunk)
    assert resp.status == 200, resp.body
    (received,) = stack.provider_received()
    upstream = json.dumps(received)
    assert EMAIL not in upstream and "[EMAIL]" in upstream
    assert received["headers"]["authorization"] == f"Bearer {STAND_IN_KEYS['WARDEN_OPENAI_API_KEY']}"
    assert token not in upstream
    assert "x-smuggled" not in upstream
    assert EMAIL not in resp.body.decode()


def test_an_http2_request_ending_with_trailers_is_authorized_by_group(stack):
    nobody = stack.token("bob", [])
    resp = h2_chat(stack, nobody, "hello", trailers={"x-t": "1"})
    assert resp.status == 403, resp.body
    assert stack.provider_received() == []


@pytest.mark.parametrize("attempt", range(3))
def test_an_http2_request_ending_with_trailers_and_a_forged_token_sends_nothing_upstream(stack, attempt):
    resp = h2_chat(stack, forged_token(), f"mail {EMAIL}", trailers={"x-t": str(attempt)})
    assert resp.status == 401, resp.body
    assert stack.provider_received() == []


def test_an_http2_request_ending_with_trailers_is_blocked_by_a_block_rule(make_stack):
    config = default_filter_config()
    config["policy"]["rules"] = [{"name": "keys", "detect": "aws_access_key_id", "action": "block"}]
    stack = make_stack(filter_config=yaml.safe_dump(config))
    token = stack.token("alice", ["engineering"])
    resp = h2_chat(stack, token, f"deploy with {AWS_KEY}", trailers={"x-t": "1"})
    assert resp.status == 403, resp.body
    assert AWS_KEY not in resp.body.decode()
    assert stack.provider_received() == []
    wait_until("the block's audit record", lambda: any(
        r.get("protocol") == "HTTP/2" and r.get("decision") == "blocked" for r in stack.access_log_records()))


def test_an_http2_request_ending_with_an_empty_data_frame_is_decided(stack):
    token = stack.token("alice", ["engineering"])
    resp = h2c_request(int(stack.gateway_url.rsplit(":", 1)[1]), "GET", "/openai/v1/models",
                       headers={"authorization": f"Bearer {token}"}, end_with_empty_data=True)
    assert resp.status == 200, resp.body
    assert resp.headers.get("x-warden")


def test_a_client_that_resets_its_stream_sends_nothing_upstream(stack):
    token = stack.token("alice", ["engineering"])
    resp = h2_chat(stack, token, f"mail {EMAIL}", reset_after_body=True)
    assert resp.reset
    # The next request on the gateway is served; the reset one never went up.
    ok = h2_chat(stack, token, "after the reset")
    assert ok.status == 200
    received = stack.provider_received()
    assert len(received) == 1 and "after the reset" in json.dumps(received[0])
    # Its audit record says no decision was made, not that it succeeded.
    wait_until("the reset request's audit record", lambda: any(
        r.get("decision") == "undecided" and r.get("protocol") == "HTTP/2" for r in stack.access_log_records()))


# --- one request cannot take a worker down -------------------------------

@pytest.mark.parametrize("text", [
    "é10.0.0.1", "한10.0.0.2 한", "\u202810.0.0.3", "ver é10.0.0.4", "€1.2.3.4é", "日本10.0.0.5",
])
def test_text_that_once_trapped_the_vm_is_served_and_so_is_the_next_request(stack, text):
    token = stack.token("alice", ["engineering"])
    status, _, body = http("POST", f"{stack.gateway_url}{CHAT}", body=chat_body(f"host {text} end"),
                           headers={"authorization": f"Bearer {token}"})
    assert status == 200, body
    upstream = json.dumps(stack.provider_received(), ensure_ascii=False)
    assert "[IPV4]" in upstream
    stack.provider_clear()
    status, _, _ = http("POST", f"{stack.gateway_url}{CHAT}", body=chat_body("next"),
                        headers={"authorization": f"Bearer {token}"})
    assert status == 200


def use_trap_filter(cfg: dict) -> None:
    hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    for f in hcm["http_filters"]:
        if f["name"] == "envoy.filters.http.wasm":
            f["typed_config"]["config"]["vm_config"]["code"]["local"]["filename"] = str(TRAP_FILTER_WASM)


def test_a_trapping_vm_refuses_the_request_and_is_reloaded_for_the_next(make_stack):
    assert TRAP_FILTER_WASM.exists(), "built by scripts/test.sh e2e"
    # One worker, one VM: the trap takes the only VM there is.
    stack = make_stack(edit_envoy_config=use_trap_filter, concurrency=1)
    token = stack.token("alice", ["engineering"])
    auth = {"authorization": f"Bearer {token}"}
    status, headers, _ = http("POST", f"{stack.gateway_url}{CHAT}", body=chat_body(f"mail {EMAIL}"),
                              headers={**auth, "x-warden-test-trap": "1"})
    assert status == 503
    served: list[int] = []

    def next_request_served() -> bool:
        status, headers, _ = http("POST", f"{stack.gateway_url}{CHAT}", body=chat_body(f"mail {EMAIL}"),
                                  headers=auth)
        served.append(status)
        # While the VM reloads, requests are refused (closed), never passed.
        assert status in (200, 503), status
        assert status != 200 or headers.get("x-warden")
        return status == 200

    wait_until("the reloaded VM to serve", next_request_served, timeout=30)
    received = stack.provider_received()
    assert len(received) == 1, "the trapping request, or one refused during the reload, went upstream"
    assert EMAIL not in json.dumps(received)
    stats = http("GET", f"{stack.admin_url}/stats?filter=wasm")[2].decode()
    assert any(line.split(":")[0].endswith("reload_success") and int(line.split(":")[1]) >= 1
               for line in stats.splitlines() if "reload_success" in line), stats


# --- one canonical path ---------------------------------------------------

@pytest.mark.parametrize("path", [
    "/openai/v1/chat%2Fcompletions", "/openai/v1/chat%2fcompletions", "/openai/v1%2Fchat/completions",
    "/openai/v1/chat%5Ccompletions",
])
def test_escaped_slashes_are_refused_before_anything_goes_upstream(stack, path):
    token = stack.token("alice", ["engineering"])
    status, _, _ = http("POST", f"{stack.gateway_url}{path}", body=chat_body(f"mail {EMAIL}"),
                        headers={"authorization": f"Bearer {token}"})
    assert status == 400
    assert stack.provider_received() == []


@pytest.mark.parametrize("path", [
    "/openai/v1//chat/completions", "/openai/v1/models/../chat/completions", "/openai/./v1/chat/completions",
    "/openai/v1/%63hat/completions",
])
def test_equivalent_paths_are_inspected_as_the_endpoint_they_reach(stack, path):
    token = stack.token("alice", ["engineering"])
    status, _, body = http("POST", f"{stack.gateway_url}{path}", body=chat_body(f"mail {EMAIL}"),
                           headers={"authorization": f"Bearer {token}"})
    assert status == 200, body
    (received,) = stack.provider_received()
    assert received["path"] == "/v1/chat/completions"
    assert EMAIL not in json.dumps(received) and "[EMAIL]" in json.dumps(received)


def without_path_normalization(cfg: dict) -> None:
    hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    for key in ("normalize_path", "merge_slashes", "path_with_escaped_slashes_action"):
        hcm.pop(key, None)


def test_the_filter_refuses_paths_with_two_readings_where_envoy_does_not_normalize(make_stack):
    # A mesh whose Envoy does not normalize paths: the filter's own rule holds.
    stack = make_stack(edit_envoy_config=without_path_normalization)
    token = stack.token("alice", ["engineering"])
    for path in ["/openai/v1/chat%2Fcompletions", "/openai/v1//chat/completions",
                 "/openai/v1/models/../chat/completions"]:
        status, headers, body = http("POST", f"{stack.gateway_url}{path}", body=chat_body(f"mail {EMAIL}"),
                                     headers={"authorization": f"Bearer {token}"})
        assert status == 400, (path, body)
        assert json.loads(body)["error"]["code"] == "warden.path_not_canonical"
    assert stack.provider_received() == []


# --- endpoints: inference by default, stateful ones per group -------------

@pytest.mark.parametrize("method,path", [
    ("POST", "/openai/v1/realtime/client_secrets"), ("GET", "/openai/v1/files"),
    ("GET", "/openai/v1/chat/completions"), ("GET", "/openai/v1/responses/resp_123"),
    ("POST", "/openai/v1/batches"), ("POST", "/anthropic/v1/messages/batches"),
])
def test_stateful_endpoints_are_refused_by_default(stack, method, path):
    token = stack.token("alice", ["engineering"])
    body = {"session": {"type": "realtime", "model": "gpt-realtime"}} if method == "POST" else None
    status, headers, raw = http(method, f"{stack.gateway_url}{path}", body=body,
                                headers={"authorization": f"Bearer {token}"})
    assert status == 403, raw
    assert headers.get("x-warden-reason") == "warden.endpoint_denied"
    assert stack.provider_received() == []


def test_an_inference_request_without_a_model_is_refused(stack):
    token = stack.token("alice", ["engineering"])
    status, _, raw = http("POST", f"{stack.gateway_url}/openai/v1/responses",
                          body={"prompt": {"id": "pmpt_123"}, "input": "hello"},
                          headers={"authorization": f"Bearer {token}"})
    assert status == 400, raw
    assert "warden.model_required" in raw.decode()
    assert stack.provider_received() == []


def test_a_group_that_lists_an_endpoint_reaches_it(make_stack):
    config = default_filter_config()
    config["policy"]["groups"]["engineering"]["endpoints"] = ["inference", "files"]
    stack = make_stack(filter_config=yaml.safe_dump(config))
    engineer = stack.token("alice", ["engineering"])
    status, _, raw = http("GET", f"{stack.gateway_url}/openai/v1/files", headers={"authorization": f"Bearer {engineer}"})
    assert status != 403, raw
    assert [r["path"] for r in stack.provider_received()] == ["/v1/files"]
    analyst = stack.token("fin", ["finance"])
    status, _, _ = http("GET", f"{stack.gateway_url}/openai/v1/files", headers={"authorization": f"Bearer {analyst}"})
    assert status == 403


def test_a_get_that_carries_a_body_is_refused(stack):
    token = stack.token("alice", ["engineering"])
    resp = h2c_request(int(stack.gateway_url.rsplit(":", 1)[1]), "GET", "/openai/v1/models",
                       headers={"authorization": f"Bearer {token}"}, body=chat_body(f"mail {EMAIL}"))
    assert resp.status == 400, resp.body
    assert b"warden.body_not_allowed" in resp.body
    assert stack.provider_received() == []


def test_headers_that_pick_provider_side_scope_never_reach_the_provider(stack):
    token = stack.token("alice", ["engineering"])
    status, _, _ = http("POST", f"{stack.gateway_url}{CHAT}", body=chat_body("hello"), headers={
        "authorization": f"Bearer {token}", "openai-organization": "org-someone-else",
        "openai-project": "proj-other", "cookie": "session=abc", "anthropic-beta": "x"})
    assert status == 200
    (received,) = stack.provider_received()
    for name in ("openai-organization", "openai-project", "cookie", "anthropic-beta"):
        assert name not in received["headers"], name


# --- every string is inspected, both ways (F3, F8) --------------------------

def post(stack: Stack, path: str, body: dict, token: str) -> tuple[int, bytes]:
    status, _, raw = http("POST", f"{stack.gateway_url}{path}", body=body,
                          headers={"authorization": f"Bearer {token}"})
    return status, raw


def test_every_text_field_of_a_request_is_inspected(stack):
    """Fields the provider feeds the model besides the messages' text: names,
    tool descriptions and schemas, metadata, stop sequences, predictions,
    response schemas, documents (plain and base64 text), a schema's property
    names."""
    token = stack.token("alice", ["engineering"])
    text_b64 = base64.b64encode(f"contract for {EMAIL}".encode()).decode()
    openai_body = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "hi", "name": EMAIL}],
        "tools": [{"type": "function", "function": {
            "name": "lookup", "description": f"ask {EMAIL}",
            "parameters": {"type": "object", "properties": {
                EMAIL: {"type": "string", "description": f"like {EMAIL}"}}}}}],
        "metadata": {"note": EMAIL},
        "stop": [EMAIL],
        "prediction": {"type": "content", "content": f"mail {EMAIL}"},
        "response_format": {"type": "json_schema",
                            "json_schema": {"name": "x", "schema": {"description": EMAIL}}},
    }
    anthropic_body = {
        "model": "claude-sonnet-4-5", "max_tokens": 16,
        "system": [{"type": "text", "text": "be brief"}],
        "messages": [{"role": "user", "content": [
            {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": f"for {EMAIL}"}},
            {"type": "document", "source": {"type": "base64", "media_type": "text/plain", "data": text_b64}},
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": [
                {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": EMAIL}}]},
            {"type": "text", "text": "summarize"}]}],
        "stop_sequences": [EMAIL],
        "metadata": {"user_id": EMAIL},
    }
    for path, body in ((CHAT, openai_body), ("/anthropic/v1/messages", anthropic_body)):
        stack.provider_clear()
        status, raw = post(stack, path, body, token)
        assert status == 200, raw
        (received,) = stack.provider_received()
        upstream = json.loads(received["body"])
        flat = json.dumps(upstream)
        assert EMAIL not in flat and "[EMAIL]" in flat, flat
        assert "contract for" not in flat  # the base64 document was rewritten too ...
    documents = upstream["messages"][0]["content"]
    assert base64.b64decode(documents[1]["source"]["data"]).decode() == "contract for [EMAIL]"  # ... and is base64 still


def test_a_text_response_is_inspected(stack):
    token = stack.token("alice", ["engineering"])
    stack.provider_queue_raw([{"content_type": "text/plain; charset=utf-8", "body": f"write to {EMAIL}"}])
    status, raw = post(stack, CHAT, json.loads(chat_body("hi")), token)
    assert status == 200, raw
    assert raw.decode() == "write to [EMAIL]"


def test_every_string_of_a_json_response_is_inspected(stack):
    token = stack.token("alice", ["engineering"])
    answer = {
        "id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-4o-mini",
        "choices": [{"index": 0, "finish_reason": "stop", "message": {
            "role": "assistant", "content": None, "refusal": f"I will not mail {EMAIL}",
            "audio": {"id": "audio_1", "transcript": f"spoken {EMAIL}", "data": "UklGRg=="},
            "annotations": [{"type": "url_citation", "url_citation": {"title": EMAIL, "url": "https://x.example/"}}]},
            "logprobs": {"content": [{"token": EMAIL, "logprob": -0.1, "bytes": [106]}]}}],
    }
    stack.provider_queue_raw([{"content_type": "application/json", "body": json.dumps(answer)}])
    status, raw = post(stack, CHAT, json.loads(chat_body("hi")), token)
    assert status == 200, raw
    got = json.loads(raw)
    assert EMAIL not in raw.decode(), raw
    message = got["choices"][0]["message"]
    assert message["refusal"] == "I will not mail [EMAIL]"
    assert message["audio"]["transcript"] == "spoken [EMAIL]"
    assert message["audio"]["data"] == "UklGRg=="
    assert got["choices"][0]["logprobs"] is None


def sse(*events: tuple[str | None, dict]) -> str:
    return "".join((f"event: {name}\n" if name else "") + f"data: {json.dumps(data)}\n\n" for name, data in events)


@pytest.mark.parametrize("path,stream", [
    (CHAT, sse(
        (None, {"id": "c1", "object": "chat.completion.chunk", "model": "gpt-4o-mini", "choices": [
            {"index": 0, "delta": {"role": "assistant", "refusal": "no mail to jane.doe@exa"}, "finish_reason": None}]}),
        (None, {"id": "c1", "object": "chat.completion.chunk", "model": "gpt-4o-mini", "choices": [
            {"index": 0, "delta": {"refusal": "mple.com, sorry"}, "finish_reason": None}]}),
        (None, {"id": "c1", "object": "chat.completion.chunk", "model": "gpt-4o-mini", "choices": [
            {"index": 0, "delta": {}, "finish_reason": "stop"}]}),
    ) + "data: [DONE]\n\n"),
    ("/anthropic/v1/messages", sse(
        ("content_block_start", {"type": "content_block_start", "index": 0,
                                 "content_block": {"type": "thinking", "thinking": "", "signature": ""}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                 "delta": {"type": "thinking_delta", "thinking": "they want jane.doe@exa"}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                 "delta": {"type": "thinking_delta", "thinking": "mple.com"}}),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("content_block_delta", {"type": "content_block_delta", "index": 1, "delta": {
            "type": "citations_delta", "citation": {"type": "char_location", "cited_text": f"mail {EMAIL}",
                                                    "document_index": 0, "start_char_index": 0, "end_char_index": 9}}}),
        ("message_stop", {"type": "message_stop"}),
    )),
    ("/openai/v1/responses", sse(
        ("response.reasoning_summary_text.delta", {"type": "response.reasoning_summary_text.delta", "sequence_number": 1,
                                                   "item_id": "rs_1", "output_index": 0, "summary_index": 0,
                                                   "delta": "about jane.doe@exa"}),
        ("response.reasoning_summary_text.delta", {"type": "response.reasoning_summary_text.delta", "sequence_number": 2,
                                                   "item_id": "rs_1", "output_index": 0, "summary_index": 0,
                                                   "delta": "mple.com"}),
        ("response.reasoning_summary_text.done", {"type": "response.reasoning_summary_text.done", "sequence_number": 3,
                                                  "item_id": "rs_1", "output_index": 0, "summary_index": 0,
                                                  "text": f"about {EMAIL}"}),
        ("response.refusal.delta", {"type": "response.refusal.delta", "sequence_number": 4, "item_id": "msg_1",
                                    "output_index": 1, "content_index": 0, "delta": f"not {EMAIL}"}),
        ("response.completed", {"type": "response.completed", "sequence_number": 5, "response": {
            "id": "resp_1", "object": "response", "status": "completed", "instructions": f"mail {EMAIL}",
            "output": []}}),
    )),
])
def test_every_string_of_a_streamed_response_is_inspected(stack, path, stream):
    token = stack.token("alice", ["engineering"])
    body = json.loads(chat_body("hi"))
    body["stream"] = True
    if path.startswith("/anthropic"):
        body["max_tokens"] = 16
    stack.provider_queue_raw([{"content_type": "text/event-stream", "body": stream}])
    status, raw = post(stack, path, body, token)
    assert status == 200, raw
    text = raw.decode()
    assert "jane.doe" not in text and "[EMAIL]" in text, text


# --- hash pseudonyms need a real key (F17) -----------------------------------

def test_a_policy_that_hashes_is_refused_without_a_hash_key(make_stack):
    config = default_filter_config()
    config["policy"]["rules"].append({"name": "customer-ids", "regex": "CUST-[0-9]{6}", "action": "hash"})
    with pytest.raises(StackError, match="hashes values, and no hash key is set"):
        make_stack(filter_config=yaml.safe_dump(config), envoy_env={**STAND_IN_KEYS, "WARDEN_HASH_KEY": ""})
    # With a key (the harness makes one per gateway), the same policy runs.
    stack = make_stack(filter_config=yaml.safe_dump(config))
    token = stack.token("alice", ["engineering"])
    status, raw = post(stack, CHAT, json.loads(chat_body("order CUST-123456")), token)
    assert status == 200, raw
    upstream = stack.provider_received()[0]["body"]
    assert "CUST-123456" not in upstream and "[CUSTOMER_IDS:" in upstream, upstream


def test_a_query_string_is_inspected(stack):  # F19
    token = stack.token("alice", ["engineering"])
    status, raw = post(stack, f"{CHAT}?user=jane.doe%40example.com", json.loads(chat_body("hi")), token)
    assert status == 403, raw
    assert json.loads(raw)["error"]["code"] == "warden.query_refused"
    assert b"jane.doe" not in raw
    assert stack.provider_received() == []
    status, raw = post(stack, f"{CHAT}?api-version=2024-10-21", json.loads(chat_body("hi")), token)
    assert status == 200, raw


def test_a_value_split_across_the_parts_of_a_message_is_inspected(stack):  # F19
    """The model reads the parts of a message as one text: a value cut in
    two parts (with an image between them, too) is found, and no part
    reaches the provider with a piece of it."""
    token = stack.token("alice", ["engineering"])
    cut = EMAIL.index("@") - 2
    openai_body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": [
        {"type": "text", "text": f"write to {EMAIL[:cut]}"},
        {"type": "text", "text": f"{EMAIL[cut:]} today"}]}]}
    anthropic_body = {"model": "claude-sonnet-4-5", "max_tokens": 16, "messages": [{"role": "user", "content": [
        {"type": "text", "text": f"write to {EMAIL[:cut]}"},
        {"type": "image", "source": {"type": "url", "url": "https://img.example/a.png"}},
        {"type": "text", "text": f"{EMAIL[cut:]} today"}]}]}
    for path, body in ((CHAT, openai_body), ("/anthropic/v1/messages", anthropic_body)):
        stack.provider_clear()
        status, raw = post(stack, path, body, token)
        assert status == 200, raw
        (received,) = stack.provider_received()
        parts = [p["text"] for p in json.loads(received["body"])["messages"][0]["content"] if "text" in p]
        assert parts == ["write to [EMAIL]", " today"], parts
    stack.provider_clear()
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": [
        {"type": "text", "text": f"deploy with {AWS_KEY[:9]}"}, {"type": "text", "text": AWS_KEY[9:]}]}]}
    status, raw = post(stack, CHAT, body, token)
    assert status == 200, raw
    upstream = stack.provider_received()[0]["body"]
    assert AWS_KEY[:9] not in upstream and AWS_KEY[9:] not in upstream, upstream
    assert "[AWS_ACCESS_KEY_ID]" in upstream, upstream


def test_a_rewritten_body_keeps_its_numbers(stack):  # F20
    token = stack.token("alice", ["engineering"])
    raw_body = ('{"model":"gpt-4o-mini","messages":[{"role":"user","content":"mail %s"}],'
                '"temperature":0.70,"seed":12345678901234567890123,"metadata":{"big":-98765432109876543210}}' % EMAIL)
    status, _, raw = http("POST", f"{stack.gateway_url}{CHAT}", body=raw_body.encode(),
                          headers={"authorization": f"Bearer {token}", "content-type": "application/json"})
    assert status == 200, raw
    upstream = stack.provider_received()[0]["body"]
    assert EMAIL not in upstream and "[EMAIL]" in upstream
    for number in ('"temperature":0.70', '"seed":12345678901234567890123', '"big":-98765432109876543210'):
        assert number in upstream, upstream


def test_a_request_envoy_routes_to_another_providers_cluster_is_refused(make_stack):  # F4
    """The filter reads the provider from the path, Envoy routes by its own
    table: when they disagree, nothing is sent (here the filter thinks
    /openai/ goes to the Anthropic cluster)."""
    config = default_filter_config()
    config["providers"][0]["cluster"] = "provider_anthropic"
    stack = make_stack(filter_config=yaml.safe_dump(config))
    token = stack.token("alice", ["engineering"])
    status, raw = post(stack, CHAT, json.loads(chat_body("hi")), token)
    assert status == 503, raw
    assert json.loads(raw)["error"]["code"] == "warden.route_mismatch"
    assert stack.provider_received() == []
    status, raw = post(stack, "/anthropic/v1/messages",
                       {"model": "claude-sonnet-4-5", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]},
                       token)
    assert status == 200, raw
