"""`make demo`: start the gateway, show what it does with real clients, stop.

Each step prints what is done and what came back, and checks it; the demo
exits non-zero at the first step that does not behave as shown.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import openai  # noqa: E402

import yaml  # noqa: E402

from harness.stack import (  # noqa: E402
    ROOT, STAND_IN_KEYS, WARDEN_BIN, Ports, Stack, StackError, default_filter_config, wait_until,
)

BOLD, GREEN, RED, DIM, RESET = "\033[1m", "\033[32m", "\033[31m", "\033[2m", "\033[0m"


# Every request the demo makes carries this user agent, so its access-log
# records are told apart from the harness's readiness probes.
DEMO_AGENT = "warden-demo/1"


class DemoFailed(Exception):
    pass


class Demo:
    def __init__(self, stack: Stack):
        self.stack = stack
        self.n = 0

    def step(self, title: str) -> None:
        self.n += 1
        print(f"\n{BOLD}{self.n}. {title}{RESET}")

    def say(self, text: str) -> None:
        print(textwrap.indent(text, "   "))

    def run(self, argv: list[str], show: list[str] | None = None) -> str:
        print(f"   {DIM}$ {' '.join(shlex.quote(a) for a in (show or argv))}{RESET}")
        out = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            raise DemoFailed(f"command failed ({out.returncode}): {out.stderr.strip()}")
        return out.stdout

    def check(self, ok: bool, what: str) -> None:
        if not ok:
            raise DemoFailed(what)
        print(f"   {GREEN}✓ {what}{RESET}")


def curl(demo: Demo, url: str, token: str | None, body: dict | None = None) -> tuple[int, dict]:
    argv = ["curl", "-sS", "-A", DEMO_AGENT, "-o", "-", "-w", "\n%{http_code}", url]
    shown = ["curl", "-s", url]
    if token:
        argv += ["-H", f"Authorization: Bearer {token}"]
        shown += ["-H", "Authorization: Bearer $TOKEN"]
    if body is not None:
        data = ["-H", "content-type: application/json", "-d", json.dumps(body)]
        argv += data
        shown += data
    out = demo.run(argv, show=shown)
    payload, _, status = out.rpartition("\n")
    demo.say(payload.strip() or "(empty body)")
    try:
        return int(status), json.loads(payload) if payload.strip() else {}
    except json.JSONDecodeError:
        return int(status), {}


def walk(demo: Demo) -> None:
    stack = demo.stack
    gw = stack.gateway_url

    demo.step("A user gets a token from the (development) identity provider")
    token = demo.run([str(WARDEN_BIN), "token", "--server", stack.control_plane_url,
                      "--sub", "alice", "--group", "engineering"],
                     show=["warden", "token", "--sub", "alice", "--group", "engineering"]).strip()
    demo.say(f"TOKEN={token[:24]}...{token[-8:]}  ({len(token)} bytes, a signed JWT)")
    demo.check(token.count(".") == 2, "the control plane's dev issuer minted a JWT")

    demo.step("Without a token, the gateway refuses before anything reaches a provider")
    stack.provider_clear()
    status, body = curl(demo, f"{gw}/openai/v1/chat/completions", None,
                        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
    demo.check(status == 401 and body.get("error", {}).get("code") == "warden.no_token",
               "401 in OpenAI's error format, with a message that says what to send")
    demo.check(stack.provider_received() == [], "nothing reached the provider")

    demo.step("The unchanged openai SDK talks to the gateway: only base_url and api_key differ")
    demo.say(f'client = openai.OpenAI(base_url="{gw}/openai/v1", api_key=TOKEN)')
    client = openai.OpenAI(base_url=f"{gw}/openai/v1", api_key=token, max_retries=0,
                           default_headers={"user-agent": DEMO_AGENT})
    stack.provider_clear()
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "What is a governance gateway?"}])
    reply = raw.parse().choices[0].message.content
    demo.say(f"reply: {reply!r}   (the stand-in provider echoes)")
    demo.say(f"x-warden: {raw.headers.get('x-warden')}")
    demo.check(reply == "What is a governance gateway?", "the answer came back through Envoy")
    demo.check(bool(raw.headers.get("x-warden")), "the Warden filter inside Envoy handled it")

    demo.step("Streaming works unchanged: events pass through as they arrive")
    stream = client.chat.completions.create(
        model="gpt-4o-mini", stream=True,
        messages=[{"role": "user", "content": "reply with: one token at a time"}])
    pieces = [c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta.content]
    demo.say(f"{len(pieces)} content events: {pieces[:6]}...")
    demo.check("".join(pieces) == "one token at a time", "the streamed text arrived whole")

    demo.step("A group the policy does not grant a model to gets a 403 naming the rule, not a silent failure")
    fiona = demo.run([str(WARDEN_BIN), "token", "--server", stack.control_plane_url,
                      "--sub", "fiona", "--group", "finance"],
                     show=["warden", "token", "--sub", "fiona", "--group", "finance"]).strip()
    finance = openai.OpenAI(base_url=f"{gw}/openai/v1", api_key=fiona, max_retries=0,
                            default_headers={"user-agent": DEMO_AGENT})
    try:
        finance.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
        raise DemoFailed("finance was allowed gpt-4o")
    except openai.PermissionDeniedError as err:
        demo.say(f"openai.PermissionDeniedError: {err.message}")
        demo.check(err.status_code == 403, "403: finance may use gpt-4o-mini only (examples: envoy/envoy.yaml policy)")
    ok = finance.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "and this?"}])
    demo.check(ok.choices[0].message.content == "and this?", "the same user gets gpt-4o-mini")

    demo.step("The provider saw the gateway's provider key, never the user's token")
    seen = stack.provider_received()
    auth = [r["headers"].get("authorization", "") for r in seen]
    demo.say(f"authorization headers the provider received: {sorted(set(auth))}")
    demo.check(all(a == f"Bearer {STAND_IN_KEYS['WARDEN_OPENAI_API_KEY']}" for a in auth) and auth,
               "every upstream request carried the provider key")
    demo.check(all(token not in json.dumps(r) and fiona not in json.dumps(r) for r in seen),
               "the users' tokens never left the gateway")

    demo.step("A path no provider is routed at gets a clear error in the provider's format")
    status, body = curl(demo, f"{gw}/gemini/v1/models", token)
    demo.check(status == 404 and body.get("error", {}).get("code") == "warden.no_route",
               "404 from the filter, in OpenAI's error shape")

    demo.step("Personal data in a prompt never reaches the provider (default policy: mask)")
    stack.provider_clear()
    prompt = "Invoice jane.doe@example.com, card 4111 1111 1111 1111, from 10.1.2.3"
    demo.say(f"prompt:   {prompt}")
    masked = client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": prompt}])
    upstream = stack.provider_received()[0]["body"]
    demo.say(f"provider: {json.loads(upstream)['messages'][0]['content']}")
    demo.check("jane.doe@example.com" not in upstream and "4111" not in upstream and "[EMAIL]" in upstream,
               "the provider received typed placeholders, not the values")
    demo.check("[PAYMENT_CARD]" in masked.choices[0].message.content, "the client still got a normal answer")

    demo.step("A streamed answer is masked as it streams, even with a value cut across events")
    stack.provider_queue_replies(["Use key AK" "IA" "QYLPMN5RTB7DZ4UF to deploy, then mail ops@example.com"])
    stream = client.chat.completions.create(model="gpt-4o", stream=True,
                                            messages=[{"role": "user", "content": "how do I deploy?"}])
    pieces = [c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta.content]
    text = "".join(pieces)
    demo.say(f"{len(pieces)} events, e.g. {pieces[:5]}")
    demo.say(f"client saw: {text}")
    demo.check("AKIA" not in text and "ops@example.com" not in text and "[AWS_ACCESS_KEY_ID]" in text,
               "no secret reached the user, and the text around it arrived as it streamed")

    demo.step("Every request left a JSON access-log record for the audit trail")
    from harness.stack import wait_until

    def demo_records() -> list[dict]:
        return [r for r in stack.access_log_records() if r["user_agent"] == DEMO_AGENT]

    wait_until("the demo's access-log records", lambda: len(demo_records()) >= 8, timeout=10)
    records = demo_records()
    for r in records:
        demo.say(json.dumps({k: r[k] for k in ("status", "user", "groups", "model", "decision", "rules")}))
    demo.check(len(records) == 8, f"one record per request in {stack.access_log}")
    demo.check(all("jane.doe" not in json.dumps(r) for r in records), "and no value in any record")
    demo.check(any(r["user"] == "fiona" and r["decision"] == "denied" for r in records),
               "who was denied what is on record")
    demo.check(any(r["path"] == "/gemini/v1/models" and r["status"] == 404 for r in records),
               "the refused request is recorded too")


def showcase(demo: Demo) -> None:
    """Every action, on a second gateway started with examples/policies/showcase.yaml."""
    stack = demo.stack
    token = demo.run([str(WARDEN_BIN), "token", "--server", stack.control_plane_url, "--sub", "alice",
                      "--group", "engineering"], show=["warden", "token", "--sub", "alice", "--group", "engineering"]).strip()
    client = openai.OpenAI(base_url=f"{stack.gateway_url}/openai/v1", api_key=token, max_retries=0,
                           default_headers={"user-agent": DEMO_AGENT})

    demo.step("tokenize: the provider sees <EMAIL_1>, the user gets the address back; hash, redact, mask")
    stack.provider_clear()
    prompt = "reply with: Write to jane.doe@example.com about CUST-12345678 (call +1 415 555 2671), card 4111 1111 1111 1111"
    demo.say(f"prompt:   {prompt}")
    answer = client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": prompt}])
    upstream = json.loads(stack.provider_received()[0]["body"])["messages"][0]["content"]
    demo.say(f"provider: {upstream}")
    demo.say(f"user:     {answer.choices[0].message.content}")
    demo.check("<EMAIL_1>" in upstream and "jane.doe" not in upstream, "tokenize: the provider never saw the address")
    demo.check("jane.doe@example.com" in answer.choices[0].message.content, "tokenize: the user got it back")
    demo.check("[CUSTOMER_ID:" in upstream and "12345678" not in upstream, "hash: a keyed pseudonym")
    # (The pseudonym is hex: it may hold any digits, so the number is
    # looked for whole.)
    demo.check("415 555 2671" not in upstream and "(call )" in upstream and "[PAYMENT_CARD]" in upstream,
               "redact and mask")

    demo.step("a team's own gitleaks rule file is a detector set: its key format is masked like the built-ins")
    stack.provider_clear()
    acme = "acme_live_" + "q7x2m9k4v8b1n5c3z6l0p4r7t2w9y3d8"
    prompt = f"why does {acme} get a 401?"
    demo.say(f"prompt:   {prompt}")
    client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": prompt}])
    upstream = json.loads(stack.provider_received()[0]["body"])["messages"][0]["content"]
    demo.say(f"provider: {upstream}")
    demo.check(acme not in upstream and "[ACME_API_KEY]" in upstream,
               "the rule file's key never reached the provider")

    demo.step("block: a request carrying a source-control key sends zero bytes upstream")
    stack.provider_clear()
    try:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content":
                                       "deploy with 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"}])
        raise DemoFailed("the key went through")
    except openai.PermissionDeniedError as err:
        demo.say(f"openai.PermissionDeniedError: {err.message}")
        demo.check("source-keys" in err.message and "ghp_" not in err.message, "403 naming the rule, never the value")
    demo.check(stack.provider_received() == [], "nothing reached the provider")

    demo.step("require_approval (ticket): refused with an approval id; an approver decides; the same request passes once")
    prompt = [{"role": "user", "content": "attach the production database dump please"}]
    try:
        client.chat.completions.create(model="gpt-4o", messages=prompt)
        raise DemoFailed("the request went through without an approval")
    except openai.PermissionDeniedError as err:
        demo.say(f"openai.PermissionDeniedError: {err.message}")
        demo.check("prod-dump" in err.message and "apr_" in err.message, "403 naming the rule and the approval")
        approval = next(word for word in err.message.replace("'", " ").split() if word.startswith("apr_"))
    demo.check(stack.provider_received() == [], "nothing reached the provider")
    approver = stack.token("bob", ["security"])
    demo.say(f"$ warden approvals approve {approval} --reason 'restore drill'   (as bob, group security)")
    stack.cli("approvals", "approve", approval, "--reason", "restore drill", token=approver)
    answer = client.chat.completions.create(model="gpt-4o", messages=prompt)
    demo.say(f"user:     {answer.choices[0].message.content[:60]}")
    demo.check(len(stack.provider_received()) == 1, "approved: the same request went through, once")


def chat_stream_with_call(command: str) -> str:
    """A chat answer as OpenAI streams it: some text, then a `bash` call
    whose arguments arrive in pieces."""
    base = {"id": "chatcmpl-demo", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o"}

    def chunk(delta: dict, finish: str | None = None) -> str:
        data = {**base, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
        return f"data: {json.dumps(data)}\n\n"
    args = json.dumps({"command": command})
    out = chunk({"role": "assistant", "content": "Freeing disk space."})
    out += chunk({"tool_calls": [{"index": 0, "id": "call_0", "type": "function",
                                  "function": {"name": "bash", "arguments": ""}}]})
    for piece in (args[:9], args[9:20], args[20:]):
        out += chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
    return out + chunk({}, "tool_calls") + "data: [DONE]\n\n"


def mcp_session(stack: Stack, token: str, work):
    """Runs `work(client)` in a session of the official MCP SDK's client,
    through the gateway, with the caller's token."""
    import asyncio

    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    async def session():
        headers = {"authorization": f"Bearer {token}", "user-agent": DEMO_AGENT}
        async with httpx2.AsyncClient(headers=headers) as http_client:
            url = f"{stack.gateway_url}/mcp/files/mcp"
            async with Client(streamable_http_client(url, http_client=http_client)) as client:
                return await work(client)
    return asyncio.run(session())


def mcp_error(stack: Stack, token: str, work) -> str:
    """The message of the JSON-RPC error the MCP SDK raises for `work`."""
    from mcp.shared.exceptions import MCPError
    try:
        mcp_session(stack, token, work)
    except BaseException as error:  # noqa: BLE001 - unwrapped below
        while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
            error = error.exceptions[0]
        if isinstance(error, MCPError):
            return error.message
        raise
    raise DemoFailed("the MCP call was not refused")


def agents(demo: Demo) -> None:
    """What agents may do, on a third gateway started with
    examples/policies/agents.yaml and an MCP server behind /mcp/files/."""
    stack = demo.stack
    alice = stack.token("alice", ["engineering"])
    demo.say("(alice is in engineering, olga in ops, bob approves as security)")
    shell = {"type": "function", "function": {"name": "bash", "parameters": {
        "type": "object", "properties": {"command": {"type": "string"}}}}}
    client = openai.OpenAI(base_url=f"{stack.gateway_url}/openai/v1", api_key=alice, max_retries=0,
                           default_headers={"user-agent": DEMO_AGENT})

    demo.step("A streamed tool call is held until its arguments end, judged, and refused: the SDK reads why")
    stack.provider_queue_raw([{"content_type": "text/event-stream", "chunk_size": 7, "chunk_delay_ms": 2,
                               "body": chat_stream_with_call("rm -rf /srv/data")}])
    with client.chat.completions.stream(model="gpt-4o", tools=[shell],
                                        messages=[{"role": "user", "content": "free some disk space"}]) as events:
        final = events.get_final_completion()
    message = final.choices[0].message
    demo.say(f"agent reads: {message.content!r}, tool_calls={message.tool_calls}")
    demo.check(not message.tool_calls and "destructive-commands" in message.content
               and "rm -rf" not in message.content, "the command never reached the agent; the answer says why")

    async def list_tools(c):
        return sorted(t.name for t in (await c.list_tools()).tools)

    demo.step("MCP: the same server lists different tools to different groups")
    engineering = mcp_session(stack, alice, list_tools)
    ops = mcp_session(stack, stack.token("olga", ["ops"]), list_tools)
    demo.say(f"engineering sees {engineering}\nops sees         {ops}")
    demo.check("delete_everything" in ops and "delete_everything" not in engineering,
               "a tool denied to engineering is not even listed to it")

    demo.step("MCP: a call that touches production waits for an approver; then the same call passes, once")
    query = "update prod-db.accounts set tier = 'gold' where id = 42"

    async def run_sql(c):
        return (await c.call_tool("run_sql", {"query": query})).content[0].text

    refused = mcp_error(stack, alice, run_sql)
    demo.say(f"mcp.shared.exceptions.MCPError: {refused}")
    demo.check("production-changes" in refused and "apr_" in refused, "refused, naming the rule and the approval")
    approval = next(w for w in refused.replace("'", " ").split() if w.startswith("apr_"))
    demo.say(f"$ warden approvals approve {approval} --reason 'CHG-42'   (as bob, group security)")
    stack.cli("approvals", "approve", approval, "--reason", "CHG-42", token=stack.token("bob", ["security"]))
    answer = mcp_session(stack, alice, run_sql)
    demo.say(f"server: {answer}")
    demo.check(answer.startswith("rows: 0"), "approved: the call ran")
    again = mcp_error(stack, alice, run_sql)
    demo.check("production-changes" in again, "the approval was used up: the same call asks again")

    demo.step("The audit trail names each tool and what was done to it")
    records: list[dict] = []

    def on_record() -> bool:
        # Envoy writes its access log every second.
        records[:] = [r for r in stack.access_log_records() if r.get("user_agent") == DEMO_AGENT and r.get("tools")]
        return sum("mcp.files.run_sql" in r["tools"] for r in records) >= 3

    wait_until("the audit records of the MCP calls", on_record, timeout=30)
    for r in records:
        demo.say(f"{r['user']:6} {r.get('mcp_method') or r['route']:22} {r['decision']:16} {r['tools']}")
    demo.check(any("bash:refused:destructive-commands" in r["tools"] for r in records)
               and any("mcp.files.run_sql:held:production-changes" in r["tools"] for r in records),
               "the refused call and the held one are on record")


def run_part(data_dir: Path, policy: str | None, part, first_step: int, mcp_server: list[str] | None) -> int:
    """One part of the demo on a gateway of its own, started with
    examples/policies/<policy> (envoy/envoy.yaml's policy without one; the
    MCP test server when asked)."""
    filter_config = None
    if policy:
        config = default_filter_config()
        config["policy"] = yaml.safe_load((ROOT / "examples" / "policies" / policy).read_text())
        filter_config = yaml.safe_dump(config)
    try:
        stack = Stack.start(Ports.free(), data_dir, filter_config=filter_config, mcp_server=mcp_server)
    except StackError as err:
        print(f"{RED}error: {err}{RESET}", file=sys.stderr)
        return 1
    with stack:
        print(f"   gateway {stack.gateway_url}, control plane {stack.control_plane_url}")
        demo = Demo(stack)
        demo.n = first_step
        try:
            part(demo)
        except (DemoFailed, StackError, openai.OpenAIError, AssertionError) as err:
            print(f"\n{RED}✗ the demo did not behave as shown: {err}{RESET}", file=sys.stderr)
            print(stack.dump_logs(30), file=sys.stderr)
            return 1
    return 0


def main() -> int:
    print(f"{BOLD}Warden demo{RESET}: a real Envoy with the Warden filter, the control plane and a "
          "stand-in model provider, all on 127.0.0.1")
    parts = [
        (None, "", walk, None),
        ("showcase.yaml", "every action", showcase, None),
        ("agents.yaml", "and an MCP server: what agents may do", agents, []),
    ]
    with tempfile.TemporaryDirectory(prefix="warden-demo-") as tmp:
        for n, (policy, what, part, mcp_server) in enumerate(parts):
            if policy:
                print(f"\n{BOLD}Gateway {n + 1}, with examples/policies/{policy}: {what}{RESET}")
            if run_part(Path(tmp) / str(n), policy, part, 10 * n, mcp_server) != 0:
                return 1
    print(f"\n{GREEN}{BOLD}demo complete{RESET}: every step behaved as shown; the stacks are stopped.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
