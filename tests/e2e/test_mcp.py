"""MCP through the gateway, end to end: the official MCP Python SDK as the
client and as the server (tests/mcp/server.py), the real Envoy between them
with the Warden filter on the route /mcp/files/.

- `tools/list` answers differ by group (a denied tool is not listed);
- a denied `tools/call` (by access, or by a rule on its arguments) is
  answered with a JSON-RPC error the SDK raises, and never reaches the
  server;
- a call a rule holds waits for an approver's decision, then runs;
- tool results are masked (both copies the SDK puts in a result), whether
  the server answers as JSON or as an event stream;
- a caller without a token gets a 401 that points to the protected-resource
  metadata, which names the IdP;
- every request leaves one audit record naming the method, the tool and the
  decision.

Both protocol eras the SDK speaks run: the 2026-07-28 one (`mode="auto"`:
one POST per request, no session) and the 2025-11-25 one (`mode="legacy"`:
`initialize`, `Mcp-Session-Id`, the GET stream, the closing DELETE)."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid

import httpx2
import pytest
import yaml
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from harness.stack import default_filter_config, http, wait_until

EMAIL = "jane.doe@example.com"
CARD = "4111 1111 1111 1111"

POLICY = {
    "version": 1,
    "groups": {
        # Every tool of the server but the destructive one.
        "engineering": {"models": ["*"], "endpoints": ["inference", "mcp"],
                        "tools": {"deny": ["mcp.files.delete_everything"]}},
        "ops": {"models": ["*"], "endpoints": ["inference", "mcp"]},
        # Models only: no MCP server.
        "finance": {"models": ["*"]},
        "security": {"models": ["*"]},
    },
    "approval": {"approvers": ["security"], "timeout_seconds": 60},
    "rules": [
        {"name": "personal-data", "detect": ["email", "payment_card"], "action": "mask"},
        {"name": "no-recursive-rm", "tools": ["mcp.files.run_shell"], "argument": "command",
         "regex": r"\brm\s+-[a-z]*r", "action": "block"},
        {"name": "production-sql", "tools": ["mcp.files.run_sql"], "keywords": ["production"],
         "action": "require_approval"},
    ],
}


def start_stack(tmp_path_factory, name: str, server_args: list[str]):
    from harness.stack import Ports, Stack
    cfg = default_filter_config()
    cfg["policy"] = POLICY
    return Stack.start(Ports.free(), tmp_path_factory.mktemp(name), filter_config=yaml.safe_dump(cfg),
                       mcp_server=server_args)


@pytest.fixture(scope="module")
def mcp_stack(tmp_path_factory):
    """The SDK server as it starts by default: event-stream answers."""
    stack = start_stack(tmp_path_factory, "mcp", [])
    try:
        yield stack
    finally:
        stack.stop()


def refused_with(work) -> MCPError:
    """The MCPError the SDK raises from `work()`, from inside the exception
    groups of its task groups."""
    try:
        work()
    except BaseException as error:  # noqa: BLE001 - unwrapped and checked
        while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
            error = error.exceptions[0]
        if isinstance(error, MCPError):
            return error
        raise
    raise AssertionError("not refused")


class Caller:
    """One caller's MCP client through the gateway; its requests carry a
    user agent of their own, so their audit records can be told apart."""

    def __init__(self, stack, user: str, groups: list[str], mode: str = "auto"):
        self.stack, self.mode = stack, mode
        self.agent = f"mcp/{uuid.uuid4()}"
        self.token = stack.token(user, groups)
        self.url = f"{stack.gateway_url}/mcp/files/mcp"

    def run(self, work):
        """Runs `work(client)` in a session of the SDK's client."""
        async def session():
            headers = {"authorization": f"Bearer {self.token}", "user-agent": self.agent}
            async with httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30.0, read=120.0)) as h:
                async with Client(streamable_http_client(self.url, http_client=h), mode=self.mode) as client:
                    return await work(client)
        return asyncio.run(session())

    def list_tools(self) -> list[str]:
        async def work(client):
            return [t.name for t in (await client.list_tools()).tools]
        return self.run(work)

    def call(self, tool: str, arguments: dict):
        async def work(client):
            return await client.call_tool(tool, arguments)
        return self.run(work)

    def refusal(self, tool: str, arguments: dict) -> MCPError:
        """The MCPError the SDK raises for a refused call (inside the
        exception groups of its task groups)."""
        return refused_with(lambda: self.call(tool, arguments))

    def records(self, method: str | None = None, count: int = 1) -> list[dict]:
        """The final audit records of this caller's requests (of one method)."""
        def mine() -> list[dict]:
            return [r for r in self.stack.access_log_records()
                    if r.get("user_agent") == self.agent and r.get("log_type") != "DownstreamPeriodic"
                    and (method is None or r.get("mcp_method") == method)]
        wait_until(f"{count} audit record(s) of {method}", lambda: len(mine()) >= count)
        return mine()


@pytest.mark.parametrize("mode", ["auto", "legacy"])
def test_tools_list_differs_by_group_and_a_group_without_mcp_is_refused(mcp_stack, mode):
    everything = {"read_file", "run_shell", "run_sql", "delete_everything"}
    engineering = Caller(mcp_stack, "alice", ["engineering"], mode)
    assert set(engineering.list_tools()) == everything - {"delete_everything"}
    [record] = engineering.records("tools/list")
    assert record["tools"] == "mcp.files.delete_everything:removed"
    assert (record["provider"], record["decision"], record["user"]) == ("files", "masked", "alice")

    assert set(Caller(mcp_stack, "olga", ["ops"], mode).list_tools()) == everything

    finance = Caller(mcp_stack, "fred", ["finance"], mode)
    assert refused_with(finance.list_tools).code == -32003
    assert {r["reason"] for r in finance.records()} == {"warden.endpoint_denied"}


@pytest.mark.parametrize("mode", ["auto", "legacy"])
def test_a_denied_call_is_refused_and_never_reaches_the_server(mcp_stack, mode):
    alice = Caller(mcp_stack, "alice", ["engineering"], mode)
    before = mcp_stack.mcp_server_calls()
    error = alice.refusal("delete_everything", {})
    assert error.code == -32003
    assert "delete_everything" in error.message

    marker = f"/tmp/{uuid.uuid4()}"
    error = alice.refusal("run_shell", {"command": f"rm -rf {marker}"})
    assert "no-recursive-rm" in error.message and marker not in error.message
    assert mcp_stack.mcp_server_calls() == before, "a refused call reached the server"

    # The same tool with harmless arguments runs, its arguments intact.
    result = alice.call("run_shell", {"command": f"ls {marker}"})
    assert result.content[0].text == f"ran: ls {marker}"
    assert mcp_stack.mcp_server_calls()[len(before):] == [f'run_shell {json.dumps({"command": f"ls {marker}"})}']

    calls = alice.records("tools/call", count=3)
    assert sorted((r["tools"], r["decision"], r["reason"]) for r in calls) == sorted([
        ("mcp.files.delete_everything:refused", "denied", "warden.tool_denied"),
        ("mcp.files.run_shell:refused:no-recursive-rm", "denied", "warden.tool_denied"),
        ("mcp.files.run_shell:allowed", "allowed", None),
    ])


@pytest.mark.parametrize("mode", ["auto", "legacy"])
def test_tool_results_are_masked_in_every_copy(mcp_stack, mode):
    alice = Caller(mcp_stack, "alice", ["engineering"], mode)
    result = alice.call("read_file", {"path": "/srv/contacts.txt"})
    wire = json.dumps(result.model_dump(mode="json"))
    assert "/srv/contacts.txt" in result.content[0].text
    assert EMAIL not in wire and CARD not in wire, wire
    assert result.structured_content and EMAIL not in json.dumps(result.structured_content)
    [record] = alice.records("tools/call")
    assert record["decision"] == "masked"
    assert "personal-data:mask" in record["rules"]


def test_event_stream_and_json_answers_are_both_inspected(tmp_path_factory):
    """The legacy era on a server that answers in JSON: the same masking."""
    stack = start_stack(tmp_path_factory, "mcp-json", ["--json-response"])
    try:
        alice = Caller(stack, "alice", ["engineering"], "legacy")
        result = alice.call("read_file", {"path": "/srv/a"})
        assert EMAIL not in json.dumps(result.model_dump(mode="json"))
        assert "/srv/a" in result.content[0].text
        assert "delete_everything" not in alice.list_tools()
    finally:
        stack.stop()


def test_a_held_call_waits_for_an_approver_then_runs(mcp_stack):
    alice = Caller(mcp_stack, "alice", ["engineering"], "auto")
    bob = mcp_stack.token("bob", ["security"])
    query = f"delete from production.sessions where id = '{uuid.uuid4()}'"
    outcome: dict = {}

    def call():
        try:
            outcome["result"] = alice.call("run_sql", {"query": query})
        except BaseException as e:  # noqa: BLE001 - reported below
            outcome["error"] = e

    caller = threading.Thread(target=call)
    caller.start()
    pending: list[dict] = []

    def approval() -> bool:
        listed = json.loads(mcp_stack.cli("approvals", "list", "--status", "pending", "--json",
                                          token=bob).stdout)["approvals"]
        pending[:] = [a for a in listed if a["rule"] == "production-sql"]
        return bool(pending)

    wait_until("the held call's approval", approval, timeout=30)
    assert not any(query in c for c in mcp_stack.mcp_server_calls()), "ran before it was approved"
    mcp_stack.cli("approvals", "approve", pending[0]["id"], "--reason", "change CHG-7", token=bob)
    caller.join(timeout=60)
    assert not caller.is_alive()
    assert "error" not in outcome, outcome
    assert outcome["result"].content[0].text == f"rows: 0 for {query}"
    assert any(query in c for c in mcp_stack.mcp_server_calls())
    [record] = alice.records("tools/call")
    assert (record["decision"], record["approval_id"]) == ("approved", pending[0]["id"])
    assert record["tools"] == "mcp.files.run_sql:held:production-sql"


def test_a_caller_without_a_token_is_pointed_to_the_metadata(mcp_stack):
    url = f"{mcp_stack.gateway_url}/mcp/files/mcp"
    status, headers, body = http("POST", url, {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}},
                                 headers={"accept": "application/json, text/event-stream"})
    assert status == 401
    assert json.loads(body)["error"]["code"] == -32001
    metadata_url = f"{mcp_stack.gateway_url}/.well-known/oauth-protected-resource/mcp/files/mcp"
    assert headers["www-authenticate"].startswith(f'Bearer resource_metadata="{metadata_url}"')

    status, headers, body = http("GET", metadata_url)
    assert status == 200 and headers["content-type"] == "application/json"
    metadata = json.loads(body)
    assert metadata["resource"] == url
    # The issuer the gateway trusts (the control plane's development issuer here).
    assert metadata["authorization_servers"] == [f"{mcp_stack.control_plane_url}/dev"]
    status, _, _ = http("GET", f"{mcp_stack.control_plane_url}/dev/.well-known/openid-configuration")
    assert status == 200


def test_a_session_is_bound_to_the_caller_who_opened_it(mcp_stack):
    """The server's session id reaches the client tagged for its caller; the
    same id from anyone else, or without its tag, is an unknown session."""
    url = f"{mcp_stack.gateway_url}/mcp/files/mcp"
    alice, bob = mcp_stack.token("alice", ["engineering"]), mcp_stack.token("bob", ["engineering"])

    def post(token: str, message: dict, session: str | None = None):
        headers = {"authorization": f"Bearer {token}", "accept": "application/json, text/event-stream",
                   "mcp-protocol-version": "2025-11-25"}
        if session:
            headers["mcp-session-id"] = session
        return http("POST", url, message, headers=headers)

    status, headers, _ = post(alice, {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}})
    assert status == 200
    tagged = headers["mcp-session-id"]
    server_id, _, tag = tagged.rpartition(".")
    assert server_id and len(tag) == 22, tagged
    status, _, _ = post(alice, {"jsonrpc": "2.0", "method": "notifications/initialized"}, tagged)
    assert status == 202

    listing = {"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {}}
    status, _, body = post(alice, listing, tagged)
    assert status == 200 and b"read_file" in body
    for token, session in ((bob, tagged), (alice, server_id)):
        status, headers, body = post(token, listing, session)
        assert status == 404, body
        assert headers["x-warden-reason"] == "warden.mcp_session"
