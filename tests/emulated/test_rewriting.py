"""Bodies through the host: a prompt rewritten in the buffer Envoy holds
(proxy_set_buffer_bytes) before it goes upstream, and a streamed answer
rewritten chunk by chunk, with values cut across chunks."""

import json

from host import CONTINUE, PAUSE
from support import chat_body, load_keys, make_envoy, mint, request_headers, send_chat

EMAIL = "carol.jones@northwind.net"


def everything_the_host_kept(envoy, stream) -> str:
    """Log lines, filter state (names and values) and stat names: where a
    masked value must never appear."""
    kept = [message for _, message in envoy.logs()]
    kept += [f"{k}={v!r}" for k, v in stream.filter_state.items()]
    kept += list(envoy.stats)
    return "\n".join(kept)


def test_an_email_in_the_prompt_is_masked_in_envoys_buffer_before_it_goes_upstream(key):
    envoy = make_envoy()
    vm = envoy.start_vm()
    load_keys(vm, key)
    body = chat_body(f"please write to {EMAIL} about the invoice")
    cut = body.index(b"@north")  # the address arrives in two pieces

    stream = vm.new_stream()
    assert stream.send_request_headers(request_headers(mint(key, envoy), body)) == PAUSE
    assert stream.send_request_body(body[:cut]) == PAUSE, "an incomplete body is buffered, not passed"
    assert stream.upstream.headers is None and not stream.upstream.body
    assert stream.send_request_body(body[cut:], end_of_stream=True) == CONTINUE

    sent = stream.upstream
    prompt = json.loads(sent.body)["messages"][0]["content"]
    assert prompt == "please write to [EMAIL] about the invoice"
    assert b"carol.jones" not in sent.body and b"northwind" not in sent.body
    # The body changed length: the header upstream says the new one.
    assert sent.headers.get("content-length") == str(len(sent.body)).encode()

    stream.send_response_headers([(":status", "200"), ("content-type", "application/json")])
    answer = {"choices": [{"message": {"role": "assistant", "content": "done"}}]}
    stream.send_response_body(json.dumps(answer), end_of_stream=True)
    stream.finish()
    assert stream.state("warden.decision") == "masked"
    assert stream.state("warden.rules") == "personal-data:mask:1"
    assert envoy.stats["warden.rule.personal-data.mask"] == 1
    kept = everything_the_host_kept(envoy, stream)
    assert "carol" not in kept and "northwind" not in kept


def sse_event(content: str) -> str:
    chunk = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": "gpt-4o-mini",
             "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": None}]}
    return f"data: {json.dumps(chunk)}\n\n"


def client_text(raw: bytes) -> str:
    """The assistant's text as an SDK would assemble it from the events."""
    text = ""
    for line in raw.decode().split("\n"):
        if line.startswith("data: {"):
            text += json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
    return text


def test_a_streamed_answer_is_rewritten_as_it_flows_and_a_split_email_never_reaches_the_client(key):
    envoy = make_envoy()
    vm = envoy.start_vm()
    load_keys(vm, key)
    stream = send_chat(vm, mint(key, envoy), "who do I write to?", stream=True)
    assert stream.upstream.end

    events = sse_event("Sure: write to ") + sse_event("carol.jones@north") + sse_event("wind.net today.")
    events += "data: [DONE]\n\n"
    # Three chunks: one cut inside the address's first event, one inside its second.
    first, second = events.index("jones@north"), events.index("wind.net") + 4
    chunks = [events[:first], events[first:second], events[second:]]

    assert stream.send_response_headers([(":status", "200"), ("content-type", "text/event-stream"),
                                         ("content-length", str(len(events)))]) == CONTINUE
    # The length will change: the filter drops the header before it goes out.
    assert "content-length" not in stream.downstream.headers
    seen_by_client = []
    for i, chunk in enumerate(chunks):
        # Streamed, not buffered: every chunk is let go at once (rewritten in place).
        assert stream.send_response_body(chunk, end_of_stream=i == len(chunks) - 1) == CONTINUE
        seen_by_client.append(bytes(stream.downstream.body))
    assert b"Sure: write to " in seen_by_client[0], "text before the address is not held back"

    raw = bytes(stream.downstream.body)
    assert client_text(raw) == "Sure: write to [EMAIL] today."
    for fragment in (b"carol", b"jones", b"@north", b"wind.net"):
        assert fragment not in raw
    assert raw.endswith(b"data: [DONE]\n\n")

    stream.finish()
    assert stream.state("warden.rules") == "personal-data:mask:1"
    assert stream.state("warden.decision") == "masked"
    kept = everything_the_host_kept(envoy, stream)
    assert "carol" not in kept and "northwind" not in kept and "wind.net" not in kept
