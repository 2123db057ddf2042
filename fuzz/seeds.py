"""Writes the seed corpora of the fuzz targets (fuzz/corpus/<target>/).

The seeds are committed; run this only to regenerate them after a target's
input format changes (each target's header says its format):

    .venv/bin/python fuzz/seeds.py     # needs `cryptography` (make test's venv has it)

Seeds are small and real-looking: request bodies and SSE streams in the
shapes OpenAI and Anthropic send, the example policies, tokens signed the
way the targets' configured keys sign (and the classic forgeries), JWKS
documents. Values a detector finds come from the engine's own test cases.
The `exchange` target reads its input as a sequence of choices
(`arbitrary`), so its seeds are a run's corpus, merged (`-merge=1`), and not
written here.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding

FUZZ = Path(__file__).resolve().parent
ROOT = FUZZ.parent
CORPUS = FUZZ / "corpus"

# The same fixtures as fuzz/src/lib.rs (`tokens`).
ISS = "https://idp.example.com/realms/acme"
NOW = 1_800_000_000
RSA_PEM = (ROOT / "filter/engine/src/auth/testdata/rsa-a.pem").read_bytes()

# Values the detectors find (from filter/engine/src/inspect/detect/tests.rs),
# and look-alikes they must not.
TEXTS = (FUZZ / "seed-texts.txt").read_text(encoding="utf-8").split("\n---\n")


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def cuts(*gaps: int) -> bytes:
    """The cut header the targets read (see fuzz/src/lib.rs `cuts`)."""
    return bytes([len(gaps), *[g - 1 for g in gaps]])


def write(target: str, seeds: list[bytes]) -> None:
    out = CORPUS / target
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    for seed in seeds:
        (out / hashlib.sha1(seed).hexdigest()).write_bytes(seed)
    print(f"{target}: {len(seeds)} seeds")


# ---- bodies -----------------------------------------------------------------

def bodies() -> list[dict]:
    t = TEXTS
    return [
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": t[0]}]},
        {"model": "gpt-4o", "temperature": 0.7, "top_p": 1.10, "max_tokens": 12345678901234567890123,
         "messages": [
             {"role": "system", "content": "You are helpful. Contact: ops@example.com"},
             {"role": "user", "content": [
                 {"type": "text", "text": "my key is AKIA"},
                 {"type": "text", "text": "Z7Q3XK5LMN2P4RTV please"},
                 {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"}},
             ]},
             {"role": "assistant", "content": None, "tool_calls": [
                 {"id": "call_1", "type": "function",
                  "function": {"name": "lookup", "arguments": json.dumps({"email": "bob@example.com", "n": 1e5})}}]},
             {"role": "tool", "tool_call_id": "call_1", "content": t[1 % len(t)]},
         ],
         "tools": [{"type": "function", "function": {"name": "lookup", "description": "Find a user by email",
                                                       "parameters": {"type": "object", "properties": {"email": {"type": "string"}}}}}]},
        {"model": "claude-sonnet-4-5", "max_tokens": 1024,
         "system": [{"type": "text", "text": "Card on file: 4111 1111 1111 1111"},
                    {"type": "text", "text": "IBAN GB82 WEST 1234 5698 7654 32", "cache_control": {"type": "ephemeral"}}],
         "messages": [{"role": "user", "content": [
             {"type": "text", "text": "CUST-12345678 asked about the merger"},
             {"type": "tool_result", "tool_use_id": "toolu_01", "content": [{"type": "text", "text": t[2 % len(t)]}]},
         ]}]},
        {"model": "gpt-4.1", "input": [{"role": "user", "content": [{"type": "input_text", "text": t[3 % len(t)]}]}],
         "metadata": {"ticket": "password=hunter2hunter2X9"}, "store": False},
        {"model": "text-embedding-3-small", "input": ["ssh root@10.1.2.3", "call +1 415 555 2671"], "encoding_format": "float"},
        {"model": "gpt-3.5-turbo-instruct", "prompt": "SSN 536-90-4321, -0.0, 1E400", "logprobs": 2, "n": -1},
        {"id": "chatcmpl-1", "object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant", "content": "mail a@b.io"},
         "logprobs": {"content": [{"token": "mail", "logprob": -0.01, "bytes": [109, 97]}]}, "finish_reason": "stop"}],
         "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}},
        {"a@b.io": "key as text", "nested": [[{"text": "x@y.io part"}, {"text": "second part"}]], "n": [1, 2.50, -3e-7]},
    ]


def json_seeds() -> list[bytes]:
    seeds = [json.dumps(b, ensure_ascii=False).encode() for b in bodies()]
    seeds.append(json.dumps(bodies()[1], ensure_ascii=True, indent=1).encode())  # \u escapes, whitespace
    seeds.append(b'{"model":"m","messages":[{"role":"user","content":"x"}],"model":"other"}')  # duplicate key
    seeds.append('{"text":"\\u0062ob@example.com \uff42ob@example.com b\u200bob@example.com"}'.encode())
    return seeds


# ---- streams ----------------------------------------------------------------

def sse(events: list[tuple[str | None, dict | str]], crlf: bool = False) -> bytes:
    out = []
    for name, data in events:
        if name:
            out.append(f"event: {name}\n")
        payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
        out.append(f"data: {payload}\n\n")
    text = "".join(out)
    return (text.replace("\n", "\r\n") if crlf else text).encode()


def chat_stream(text_pieces: list[str]) -> bytes:
    chunk = lambda delta, finish=None: {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
                                        "model": "gpt-4o", "choices": [{"index": 0, "delta": delta,
                                                                        "logprobs": None, "finish_reason": finish}]}
    events = [(None, chunk({"role": "assistant", "content": ""}))]
    events += [(None, chunk({"content": p})) for p in text_pieces]
    events += [(None, chunk({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                              "function": {"name": "f", "arguments": "{\"to\":\"bob@exa"}}]}))]
    events += [(None, chunk({"tool_calls": [{"index": 0, "function": {"arguments": "mple.com\"}"}}]}))]
    events += [(None, chunk({}, "stop")), (None, "[DONE]")]
    return sse(events)


def completions_stream(pieces: list[str]) -> bytes:
    events = [(None, {"id": "cmpl-1", "object": "text_completion", "choices": [{"text": p, "index": 0, "logprobs": None,
                                                                                  "finish_reason": None}]}) for p in pieces]
    events += [(None, {"id": "cmpl-1", "object": "text_completion", "choices": [{"text": "", "index": 0, "finish_reason": "length"}]}),
               (None, "[DONE]")]
    return sse(events)


def responses_stream(pieces: list[str]) -> bytes:
    seq = iter(range(100))
    ev = lambda t, **kw: (t, {"type": t, "sequence_number": next(seq), **kw})
    full = "".join(pieces)
    events = [ev("response.created", response={"id": "resp_1", "object": "response", "status": "in_progress", "output": []}),
              ev("response.output_item.added", output_index=0, item={"id": "msg_1", "type": "message", "role": "assistant", "content": []}),
              ev("response.content_part.added", item_id="msg_1", output_index=0, content_index=0, part={"type": "output_text", "text": ""})]
    events += [ev("response.output_text.delta", item_id="msg_1", output_index=0, content_index=0, delta=p, logprobs=[]) for p in pieces]
    events += [ev("response.output_text.done", item_id="msg_1", output_index=0, content_index=0, text=full),
               ev("response.content_part.done", item_id="msg_1", output_index=0, content_index=0, part={"type": "output_text", "text": full}),
               ev("response.function_call_arguments.delta", item_id="fc_1", output_index=1, delta="{\"k\":\"AKIA"),
               ev("response.function_call_arguments.done", item_id="fc_1", output_index=1, arguments="{\"k\":\"AKIA\"}"),
               ev("response.completed", response={"id": "resp_1", "status": "completed", "output": [
                   {"type": "message", "content": [{"type": "output_text", "text": full}]}], "usage": {"total_tokens": 3}})]
    return sse(events)


def anthropic_stream(pieces: list[str], crlf: bool = False) -> bytes:
    events = [("message_start", {"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant",
                                                                       "content": [], "usage": {"input_tokens": 3, "output_tokens": 1}}}),
              ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
              ("ping", {"type": "ping"})]
    events += [("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": p}})
               for p in pieces]
    events += [("content_block_stop", {"type": "content_block_stop", "index": 0}),
               ("content_block_start", {"type": "content_block_start", "index": 1, "content_block": {"type": "thinking", "thinking": ""}}),
               ("content_block_delta", {"type": "content_block_delta", "index": 1, "delta": {"type": "thinking_delta", "thinking": "user is bob@"}}),
               ("content_block_delta", {"type": "content_block_delta", "index": 1, "delta": {"type": "signature_delta", "signature": "EqQBCgIYAh"}}),
               ("content_block_stop", {"type": "content_block_stop", "index": 1}),
               ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 9}}),
               ("message_stop", {"type": "message_stop"})]
    return sse(events, crlf)


def split(text: str, n: int) -> list[str]:
    step = max(1, len(text) // n)
    return [text[i:i + step] for i in range(0, len(text), step)] or [""]


def sse_seeds() -> list[bytes]:
    seeds = []
    for i, text in enumerate(TEXTS[:12]):
        pieces = split(text, 3 + i % 3)
        api = i % 4
        stream = [chat_stream, completions_stream, responses_stream, anthropic_stream][api](pieces)
        seeds.append(bytes([api]) + cuts(7, 31, 64, 200) + stream)
    seeds.append(bytes([3]) + cuts(1, 2, 3) + anthropic_stream(["Hé", "llo ✓ 🎉"], crlf=True))
    seeds.append(bytes([0 | 4]) + cuts(100) + chat_stream(["x" * 300]))  # over the small limits
    seeds.append(bytes([0]) + cuts(5) + b": keep-alive\n\nid: 7\nretry: 10\ndata: {\"choices\":[]}\r\rdata:no space\n\n")
    return seeds


def tool_streams() -> list[bytes]:
    """One stream per API that calls tools the way each sends them (the
    gate's input), and a few shapes a provider should never send."""
    chunk = lambda delta, finish=None: {"id": "c", "object": "chat.completion.chunk", "choices": [
        {"index": 0, "delta": delta, "finish_reason": finish}]}
    call = lambda i, name, args: chunk({"tool_calls": [{"index": i, **({"id": f"call_{i}", "type": "function"} if name else {}),
                                                         "function": {**({"name": name} if name else {}), "arguments": args}}]})
    chat = sse([(None, chunk({"role": "assistant", "content": "ok"})), (None, call(0, "bash", "{\"command\":")),
                (None, call(0, None, "\"rm -rf /\"}")), (None, call(1, "sql", "{\"q\":1}")),
                (None, chunk({"function_call": {"name": "old", "arguments": "{}"}})),
                (None, chunk({}, "tool_calls")), (None, "[DONE]")])
    seq = iter(range(100))
    ev = lambda t, **kw: (t, {"type": t, "sequence_number": next(seq), **kw})
    fc = {"id": "fc_1", "type": "function_call", "name": "bash", "call_id": "c1", "arguments": ""}
    done = {**fc, "arguments": "{\"command\":\"ls\"}"}
    shell = {"id": "sh_1", "type": "local_shell_call", "action": {"command": ["rm", "-rf"]}}
    responses = sse([ev("response.created", response={"id": "r", "output": []}),
                     ev("response.output_item.added", output_index=0, item=fc),
                     ev("response.function_call_arguments.delta", item_id="fc_1", output_index=0, delta="{\"command\":"),
                     ev("response.function_call_arguments.done", item_id="fc_1", output_index=0, arguments=done["arguments"]),
                     ev("response.output_item.done", output_index=0, item=done),
                     ev("response.output_item.done", output_index=1, item=shell),
                     ev("response.completed", response={"id": "r", "output": [done, shell]})])
    block = lambda t, **kw: (t, {"type": t, **kw})
    anthropic = sse([block("message_start", message={"id": "m", "content": [], "role": "assistant"}),
                     block("content_block_start", index=0, content_block={"type": "tool_use", "id": "t", "name": "bash", "input": {}}),
                     block("content_block_delta", index=0, delta={"type": "input_json_delta", "partial_json": "{\"command\": \"rm"}),
                     block("content_block_delta", index=0, delta={"type": "input_json_delta", "partial_json": " -rf\"}"}),
                     block("content_block_stop", index=0),
                     block("message_delta", delta={"stop_reason": "tool_use"}),
                     block("message_stop")])
    return [chat, responses, anthropic]


def calls_seeds() -> list[bytes]:
    seeds = []
    streams = tool_streams()
    for api in range(3):
        for judging in range(3):
            seeds.append(bytes([api + 3 * judging]) + cuts(5, 17, 40, 90) + streams[api])
    # A call given whole where a stream does not give it; an unplaced call.
    seeds.append(bytes([2 + 3]) + cuts(9) + sse([("message_start", {"type": "message_start", "message": {
        "content": [{"type": "tool_use", "name": "bash", "input": {"command": "rm -rf /"}}]}})]))
    seeds.append(bytes([1 + 3]) + cuts(9) + sse([("response.output_item.added", {
        "type": "response.output_item.added", "item": {"type": "function_call", "name": "x", "arguments": "{}"}})]))
    return seeds


def stream_text_seeds() -> list[bytes]:
    return [cuts(3 + i % 7, 11, 29) + t.encode() for i, t in enumerate(TEXTS)]


# ---- policies ---------------------------------------------------------------

def policy_seeds() -> list[bytes]:
    seeds = [b"\x00" + p.read_bytes() for p in sorted((ROOT / "examples/policies").glob("*.yaml"))]
    seeds.append(b"\x00" + json.dumps({"version": 1, "groups": {"a": {"models": ["*"]}},
                                       "rules": [{"name": "r", "regex": "(?P<id>x+)", "group": "id", "action": "hash"}]}).encode())
    seeds.append(b"\x00version: 1\nrules: &a [*a]\n")
    seeds.append(b"\x00version: 1\nrules:\n  - {name: k, keywords: [\"\"], action: block}\n")
    seeds += [bytes([m]) + bytes(range(i, i + 64)) for m in (1, 2) for i in (0, 64, 128)]
    return seeds


# ---- tokens -----------------------------------------------------------------

ED = ed25519.Ed25519PrivateKey.from_private_bytes(b"\x01" * 32)
RSA = serialization.load_pem_private_key(RSA_PEM, password=None)


def header(alg: str = "EdDSA", kid: str | None = "ed-1", **extra) -> dict:
    h = {"alg": alg, "typ": "JWT", **extra}
    if kid is not None:
        h["kid"] = kid
    return h


def claims(**over) -> dict:
    c = {"iss": ISS, "sub": "alice", "aud": "warden", "exp": NOW + 300, "iat": NOW - 10,
         "email": "alice@example.com", "groups": ["engineering"]}
    c.update(over)
    return {k: v for k, v in c.items() if v is not None}


def enc(obj: dict) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def signed(h: dict, c: dict) -> str:
    signing_input = f"{b64(enc(h))}.{b64(enc(c))}".encode()
    if h["alg"] in ("EdDSA", "Ed25519"):
        sig = ED.sign(signing_input)
    elif h["alg"] == "RS256":
        sig = RSA.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
    elif h["alg"] == "PS256":
        sig = RSA.sign(signing_input, padding.PSS(padding.MGF1(hashes.SHA256()), 32), hashes.SHA256())
    else:
        sig = b""
    return f"{signing_input.decode()}.{b64(sig)}"


def token_seeds() -> list[bytes]:
    variants = [
        (header(), claims()),
        (header(kid=None), claims(aud=["other", "warden"])),
        (header("RS256", "rsa-a"), claims()),
        (header("PS256", "rsa-a"), claims(sub="bob")),
        (header(), claims(exp=NOW - 61)),
        (header(), claims(exp=str(NOW + 300))),
        (header(), claims(exp=1e300)),
        (header(), claims(nbf=NOW + 61)),
        (header(crit=["exp"]), claims()),
        (header(jku="https://evil.example/jwks", kid="../../dev/null"), claims()),
        (header(), claims(iss=[ISS])),
        (header(), claims(sub=None)),
        (header("none", None), claims()),
    ]
    seeds = []
    for h, c in variants:
        seeds.append(b"\x00" + signed(h, c).encode())
        for mode in (1, 2):
            seeds.append(bytes([mode]) + enc(h) + b"\x00" + enc(c))
    pub = RSA.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    hs = f"{b64(enc(header('HS256', 'rsa-a')))}.{b64(enc(claims()))}"
    import hmac as _hmac
    seeds.append(b"\x00" + f"{hs}.{b64(_hmac.new(pub, hs.encode(), hashlib.sha256).digest())}".encode())
    for pick in (0, 1, 2, 3, 4, 9):
        seeds.append(b"\x03" + enc(header("HS256", "rsa-a")) + b"\x00" + enc(claims()) + b"\x00" + bytes([pick]))
    seeds.append(b"\x04" + enc(header("ES256", "ec-1")) + b"\x00" + enc(claims()) + b"\x00" + b"\x00" * 64)
    seeds.append(b"\x04" + enc(header()) + b"\x00" + enc(claims()) + b"\x00" + b"\x00" * 64)
    seeds.append(b"\x05Bearer " + signed(header(), claims()).encode())
    seeds.append(b"\x05bEaReR   " + signed(header(), claims()).encode() + b"  ")
    seeds.append(b"\x05" + b"\xff\xfe not utf-8")
    seeds += [b"\x00a.b", b"\x00a.b.c.d", b"\x00..", b"\x00" + b"x" * 17000]
    return seeds


def jwk_ed(kid: str | None = "ed-1", seed: bytes = b"\x01" * 32, **extra) -> dict:
    pk = ed25519.Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    k = {"kty": "OKP", "crv": "Ed25519", "x": b64(pk), "use": "sig", **extra}
    if kid is not None:
        k["kid"] = kid
    return k


def jwk_rsa(kid: str = "rsa-a", **extra) -> dict:
    n = RSA.public_key().public_numbers()
    nb = n.n.to_bytes((n.n.bit_length() + 7) // 8, "big")
    return {"kty": "RSA", "kid": kid, "n": b64(nb), "e": b64(n.e.to_bytes(3, "big")), "alg": "RS256", **extra}


def jwks_seeds() -> list[bytes]:
    docs = [
        {"keys": [jwk_ed(), jwk_rsa()]},
        {"keys": [jwk_ed(kid=None)]},
        {"keys": [jwk_ed(seed=b"\x02" * 32)]},
        {"keys": [jwk_ed(use="enc"), jwk_rsa(alg="ES256")]},
        {"keys": [jwk_rsa(kid="ed-1"), {"kty": "oct", "k": b64(b"s" * 32), "kid": "ed-1"}]},
        {"keys": [{"kty": "EC", "crv": "P-256", "kid": "ec-1", "x": b64(b"\x01" * 32), "y": b64(b"\x02" * 32)}]},
        {"keys": []},
        {"keys": {"0": jwk_ed()}},
        {"jwks_uri": "https://idp.example.com/realms/acme/protocol/openid-connect/certs", "issuer": ISS},
        {"jwks_uri": "http://user@idp/x"},
    ]
    seeds = [json.dumps(d).encode() for d in docs]
    seeds += [b"https://idp.example.com:8443/certs?x=1", b"http:///"]
    return seeds


def mcp_seeds() -> list[bytes]:
    """Clients' JSON-RPC messages (side byte 0) and servers' event streams
    of messages (side byte 1), as the official MCP SDK sends them."""
    rpc = lambda i, method, params: {"jsonrpc": "2.0", "id": i, "method": method, "params": params}
    messages = [
        rpc(1, "tools/call", {"name": "read_file", "arguments": {"path": "/srv/a"}}),
        rpc("a", "tools/call", {"name": "xdelete", "arguments": {}}),
        rpc(2, "tools/list", {}),
        rpc(3, "initialize", {"protocolVersion": "2025-11-25", "capabilities": {}}),
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": 9, "result": {"content": []}},
        [rpc(1, "tools/call", {"name": "x"})],
    ]
    seeds = [b"\x00" + json.dumps(m).encode() for m in messages]
    result = lambda i, text: {"jsonrpc": "2.0", "id": i, "result": {
        "content": [{"type": "text", "text": text}], "structuredContent": {"result": text}, "isError": False}}
    streams = [
        sse([("message", {"jsonrpc": "2.0", "id": 1, "result": {"tools": [
            {"name": "read_file", "inputSchema": {"type": "object"}}, {"name": "xdelete"}, {"title": "no name"}]}})]),
        sse([("message", {"jsonrpc": "2.0", "method": "notifications/message",
                          "params": {"level": "info", "data": "mail jane.doe@example.com"}}),
             ("message", result(1, "card 4111 1111 1111 1111, mail jane.doe@example.com"))], crlf=True),
        b": ping\n\nid: 4\nretry: 100\nevent: message\ndata: " + json.dumps(result(1, "ok")).encode() + b"\n\n",
        sse([("message", result(1, "ok")), ("message", "not json jane.doe@example.com")]),
    ]
    seeds += [b"\x01" + cuts(7, 30, 64) + stream for stream in streams]
    return seeds


def main() -> None:
    write("detect", [t.encode() for t in TEXTS])
    write("stream_text", stream_text_seeds())
    write("json_body", json_seeds())
    write("sse", sse_seeds())
    write("calls", calls_seeds())
    write("mcp", mcp_seeds())
    write("policy", policy_seeds())
    write("token", token_seeds())
    write("jwks", jwks_seeds())


if __name__ == "__main__":
    main()
