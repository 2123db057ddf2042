"""The control plane through a real Envoy: policy versions a running gateway picks
up within a poll, approvals (hold and ticket; approved, denied, expired, replayed,
edited, self-approved, used twice at once) decided with the `warden` CLI, and the
bound on how long the last good policy serves while the control plane is down.

Every test runs twice: with the control plane on SQLite and on PostgreSQL (a
real server; scripts/test.sh starts one and sets WARDEN_TEST_DATABASE_URL).
"""

from __future__ import annotations

import concurrent.futures
import json
import re
import socket
import threading
import time
import uuid
from pathlib import Path

import pytest
import yaml

from harness.stack import Ports, Stack, default_filter_config, http, wait_until

ROOT = Path(__file__).resolve().parents[2]
POLL_SECONDS = 1
MAX_STALE_SECONDS = 6
EMAIL = "jane.doe@example.com"

# The approval rules (hold, ticket, a 2 s hold) from the example policy.
APPROVAL_POLICY = yaml.safe_load((ROOT / "examples" / "policies" / "approvals.yaml").read_text())


@pytest.fixture(scope="module")
def cp_stack(database_url, tmp_path_factory):
    kind = "sqlite" if database_url is None else "postgres"
    cfg = default_filter_config()
    # Plain polling: a staleness bound this short is below a watch's period
    # (tests/e2e/test_policy_watch.py covers watching).
    cfg["control_plane"].update({"poll_seconds": POLL_SECONDS, "max_stale_seconds": MAX_STALE_SECONDS,
                                 "watch_seconds": 0})
    stack = Stack.start(Ports.free(), tmp_path_factory.mktemp(f"cp-{kind}"),
                        filter_config=yaml.safe_dump(cfg), database_url=database_url)
    try:
        yield stack
    finally:
        stack.stop()


@pytest.fixture
def stack(cp_stack, request):
    cp_stack.provider_clear()
    yield cp_stack
    for when in ("setup", "call"):
        rep = getattr(request.node, f"rep_{when}", None)
        if rep is not None and rep.failed:
            print(cp_stack.dump_logs())


def chat(stack: Stack, token: str, prompt: str, model: str = "gpt-4o", timeout: float = 60) -> tuple[int, dict, dict]:
    status, headers, body = http(
        "POST", f"{stack.gateway_url}/openai/v1/chat/completions",
        body={"model": model, "messages": [{"role": "user", "content": prompt}]},
        headers={"authorization": f"Bearer {token}"}, timeout=timeout)
    return status, headers, json.loads(body or b"{}")


def push(stack: Stack, admin: str, policy: dict, message: str, tmp_path) -> int:
    path = tmp_path / f"policy-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(yaml.safe_dump(policy))
    stack.cli("policy", "push", str(path), "-m", message, token=admin)
    versions = json.loads(stack.cli("policy", "list", "--json", token=admin).stdout)["policies"]
    return max(v["version"] for v in versions)


def approvals(stack: Stack, token: str, status: str = "pending") -> list[dict]:
    return json.loads(stack.cli("approvals", "list", "--status", status, "--json", token=token).stdout)["approvals"]


def wait_for_pending(stack: Stack, approver: str, rule: str, seen: set[str]) -> dict:
    found: list[dict] = []

    def pending() -> bool:
        found[:] = [a for a in approvals(stack, approver) if a["rule"] == rule and a["id"] not in seen]
        return bool(found)

    wait_until(f"a pending approval under {rule}", pending, timeout=30)
    seen.add(found[0]["id"])
    return found[0]


def approval_id(body: dict) -> str:
    match = re.search(r"apr_[A-Za-z0-9_-]+", body["error"]["message"])
    assert match, body
    return match.group(0)


def reason(headers: dict) -> str | None:
    return headers.get("x-warden-reason")


@pytest.fixture(scope="module")
def people(cp_stack):
    return {
        "admin": cp_stack.token("root", ["warden-admins"]),
        "alice": cp_stack.token("alice", ["engineering"]),
        "bob": cp_stack.token("bob", ["security"]),
        "carol": cp_stack.token("carol", ["engineering"]),
    }


@pytest.fixture(scope="module")
def approval_version(cp_stack, people, tmp_path_factory):
    """The approvals policy, pushed once and active for the approval tests."""
    version = push(cp_stack, people["admin"], APPROVAL_POLICY, "approvals", tmp_path_factory.mktemp("p"))
    # A rule only the approvals policy has: requests under it are held.
    wait_until("the gateway to take the approvals policy", lambda: http(
        "GET", f"{cp_stack.gateway_url}/openai/v1/models",
        headers={"authorization": f"Bearer {people['alice']}"})[0] == 200 and _policy_is(cp_stack, people, version),
        timeout=120)
    return version


def _policy_is(stack: Stack, people: dict, version: int) -> bool:
    """The version the gateway enforces, read from its audit record."""
    marker = uuid.uuid4().hex
    http("GET", f"{stack.gateway_url}/openai/v1/models",
         headers={"authorization": f"Bearer {people['alice']}", "user-agent": marker})
    records = []

    def logged() -> bool:
        records[:] = [r for r in stack.access_log_records() if marker in json.dumps(r)]
        return bool(records)

    wait_until("the access log record", logged, timeout=10)
    return str(records[0].get("policy_version")) == str(version)


# --- versioned policies -----------------------------------------------------------


def test_a_pushed_policy_changes_the_running_gateway_and_activate_restores_it(stack, people, tmp_path):
    admin, alice = people["admin"], people["alice"]
    base = yaml.safe_load((ROOT / "examples" / "policies" / "default.yaml").read_text())
    relaxed = push(stack, admin, base, "the default policy", tmp_path)
    wait_until("gpt-4o allowed", lambda: chat(stack, alice, "hello")[0] == 200, timeout=10)

    # Requests keep flowing while the version changes: none may fail.
    stop = threading.Event()
    statuses: list[int | str] = []

    def load() -> None:
        while not stop.is_set():
            try:
                statuses.append(chat(stack, alice, "hello", model="gpt-4o-mini")[0])
            except Exception as err:  # noqa: BLE001 - a dropped request is the failure we look for
                statuses.append(repr(err))

    worker = threading.Thread(target=load)
    worker.start()
    try:
        stricter = json.loads(json.dumps(base))
        stricter["groups"]["engineering"]["models"] = ["gpt-4o-mini"]
        strict = push(stack, admin, stricter, "engineering: mini only", tmp_path)
        pushed_at = time.monotonic()
        wait_until("the stricter version to be enforced",
                   lambda: reason(chat(stack, alice, "hello")[1]) == "warden.model_denied",
                   timeout=120)
        took = time.monotonic() - pushed_at
        assert _policy_is(stack, people, strict)

        stack.cli("policy", "activate", str(relaxed), token=admin)
        wait_until("the earlier version to be enforced again",
                   lambda: chat(stack, alice, "hello")[0] == 200, timeout=120)
        assert _policy_is(stack, people, relaxed)
    finally:
        stop.set()
        worker.join()
    assert statuses and all(s == 200 for s in statuses), statuses
    print(f"stricter version enforced {took:.2f} s after the push (poll period {POLL_SECONDS} s)")


def test_policy_writes_need_an_admin_and_invalid_policies_are_refused(stack, people, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nrules:\n  - {name: x, detect: emial, action: mask}\n")
    done = stack.cli("policy", "push", str(bad), "-m", "typo", token=people["admin"], check=False)
    assert done.returncode != 0 and "emial" in done.stderr + done.stdout
    # A rule file the filter could not load is refused by the same compiler.
    bad.write_text("version: 1\nrules:\n  - name: x\n    action: mask\n    gitleaks: |\n"
                   "      [[rules]]\n      id = 'broken'\n      regex = '(unclosed'\n")
    done = stack.cli("policy", "push", str(bad), "-m", "broken rule file", token=people["admin"], check=False)
    assert done.returncode != 0 and "regex" in done.stderr + done.stdout
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(APPROVAL_POLICY))
    done = stack.cli("policy", "push", str(good), "-m", "not an admin", token=people["alice"], check=False)
    assert done.returncode != 0
    # The gateway's endpoint wants the gateway's secret.
    assert http("GET", f"{stack.control_plane_url}/v1/policy/active")[0] == 401


# --- approvals --------------------------------------------------------------------


def test_ticket_approval_passes_once_for_the_same_request(stack, people, approval_version):
    alice, bob = people["alice"], people["bob"]
    prompt = f"customer export for {EMAIL}, please"
    status, headers, body = chat(stack, alice, prompt)
    assert (status, reason(headers)) == (403, "warden.approval_pending"), body
    ticket = approval_id(body)
    assert stack.provider_received() == []

    shown = {a["id"]: a for a in approvals(stack, bob)}[ticket]
    assert shown["rule"] == "prod-ticket" and shown["subject"] == "alice"
    assert EMAIL not in json.dumps(shown) and "customer export" in shown["masked_prompt"]
    assert shown["policy_version"] == approval_version

    # Sending it again before a decision: still pending, same approval.
    status, headers, body = chat(stack, alice, prompt)
    assert (status, approval_id(body)) == (403, ticket)

    stack.cli("approvals", "approve", ticket, "--reason", "export ticket OPS-1", token=bob)
    status, headers, body = chat(stack, alice, prompt)
    assert status == 200, body
    assert len(stack.provider_received()) == 1
    assert EMAIL not in json.dumps(stack.provider_received())

    # Once: the same request again needs a new approval.
    status, headers, body = chat(stack, alice, prompt)
    assert status == 403 and approval_id(body) != ticket
    # An edited request is not covered by an approval of the original.
    status, headers, body = chat(stack, alice, prompt + " and the invoices")
    assert status == 403 and reason(headers) == "warden.approval_pending"


def test_a_ticket_approval_is_used_by_exactly_one_of_two_concurrent_requests(stack, people, approval_version):
    alice, bob = people["alice"], people["bob"]
    prompt = f"customer export, batch {uuid.uuid4().hex[:8]}"
    status, _, body = chat(stack, alice, prompt)
    assert status == 403
    stack.cli("approvals", "approve", approval_id(body), "--reason", "ok", token=bob)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: chat(stack, alice, prompt)[0], range(2)))
    assert sorted(results) == [200, 403], results


def test_hold_waits_for_the_approver(stack, people, approval_version):
    alice, bob = people["alice"], people["bob"]
    seen: set[str] = set()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        held = pool.submit(chat, stack, alice, "the production database dump, now")
        pending = wait_for_pending(stack, bob, "prod-dump", seen)
        assert not held.done() and stack.provider_received() == []
        stack.cli("approvals", "approve", pending["id"], "--reason", "incident 42", token=bob)
        status, _, body = held.result(timeout=30)
    assert status == 200, body
    assert len(stack.provider_received()) == 1
    records: list[dict] = []

    def logged() -> bool:
        records[:] = [r for r in stack.access_log_records() if r.get("approval_id") == pending["id"]]
        return bool(records)

    wait_until("the approved request's access log record", logged, timeout=10)
    assert [r["decision"] for r in records] == ["approved"]


def held_request_then_leave(stack: Stack, token: str, prompt: str) -> tuple[socket.socket, str]:
    """Sends a chat request on a raw socket (so the test can leave while it is
    held) with its own user agent; returns the socket and the agent."""
    agent = f"held/{uuid.uuid4()}"
    body = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": prompt}]}).encode()
    sock = socket.create_connection(("127.0.0.1", stack.ports.gateway), timeout=30)
    sock.sendall(b"POST /openai/v1/chat/completions HTTP/1.1\r\nhost: gateway\r\n"
                 + f"authorization: Bearer {token}\r\nuser-agent: {agent}\r\n".encode()
                 + f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n".encode() + body)
    return sock, agent


def records_of(stack: Stack, agent: str) -> list[dict]:
    return [r for r in stack.access_log_records() if r.get("user_agent") == agent]


def test_a_client_that_leaves_a_held_request_sends_nothing_upstream_when_approved(stack, people, approval_version):
    alice, bob = people["alice"], people["bob"]
    sock, agent = held_request_then_leave(stack, alice, f"production database dump {uuid.uuid4().hex[:6]}")
    pending = wait_for_pending(stack, bob, "prod-dump", set())
    sock.close()
    # Envoy ends the held stream when its client leaves: one record, no decision.
    wait_until("the left request's record", lambda: records_of(stack, agent), timeout=30)
    stack.cli("approvals", "approve", pending["id"], "--reason", "too late", token=bob)
    # The next request is served; the left one never went upstream.
    assert chat(stack, alice, "a plain question")[0] == 200
    sent = json.dumps(stack.provider_received())
    assert "production database dump" not in sent and "a plain question" in sent
    records = records_of(stack, agent)
    assert len(records) == 1, records
    # Nobody decided before the client left: undecided, naming the approval it waited on.
    assert (records[0]["decision"], records[0]["approval_id"]) == ("undecided", pending["id"]), records
    assert "DC" in records[0]["response_flags"], records


def test_a_control_plane_restarted_during_a_hold_refuses_the_request_clearly(stack, people, approval_version):
    alice, bob = people["alice"], people["bob"]
    seen: set[str] = set()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        held = pool.submit(chat, stack, alice, f"production database dump {uuid.uuid4().hex[:6]}")
        pending = wait_for_pending(stack, bob, "prod-dump", seen)
        stack.stop_control_plane()
        try:
            status, headers, body = held.result(timeout=60)
        finally:
            stack.start_control_plane()
            # Back to serving before the next test (the outage may have
            # outlasted the policy's staleness bound).
            wait_until("the gateway to serve again", lambda: chat(stack, alice, "hello")[0] == 200, timeout=120)
    # Fail closed, in the provider's format, with a reason the client can act on.
    assert (status, reason(headers)) == (503, "warden.approvals_unavailable"), body
    assert body["error"]["type"] and "control plane" in body["error"]["message"], body
    assert "production database dump" not in json.dumps(stack.provider_received())
    # The approval survived the restart (it is in the database): it can still be decided.
    shown = {a["id"]: a for a in approvals(stack, bob)}
    assert pending["id"] in shown
    stack.cli("approvals", "deny", pending["id"], "--reason", "asked again later", token=bob)


def test_hold_denied_carries_the_approvers_reason(stack, people, approval_version):
    alice, bob = people["alice"], people["bob"]
    seen: set[str] = set()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        held = pool.submit(chat, stack, alice, f"production database dump {uuid.uuid4().hex[:6]}")
        pending = wait_for_pending(stack, bob, "prod-dump", seen)
        stack.cli("approvals", "deny", pending["id"], "--reason", "use the staging copy", token=bob)
        status, headers, body = held.result(timeout=30)
    assert (status, reason(headers)) == (403, "warden.approval_denied")
    assert "use the staging copy" in body["error"]["message"]
    assert stack.provider_received() == []


def test_hold_expires_without_a_decision(stack, people, approval_version):
    status, headers, body = chat(stack, people["alice"], f"quick question {uuid.uuid4().hex[:6]}")
    assert (status, reason(headers)) == (403, "warden.approval_timeout"), body
    assert stack.provider_received() == []


def test_nobody_approves_their_own_request_and_only_approvers_decide(stack, people, approval_version):
    bob = people["bob"]
    status, _, body = chat(stack, bob, f"customer export {uuid.uuid4().hex[:6]}")
    assert status == 403
    own = approval_id(body)
    done = stack.cli("approvals", "approve", own, "--reason", "mine", token=bob, check=False)
    assert done.returncode != 0 and "self" in (done.stderr + done.stdout).lower()
    status, _, body = chat(stack, people["alice"], f"customer export {uuid.uuid4().hex[:6]}")
    other = approval_id(body)
    done = stack.cli("approvals", "approve", other, "--reason", "me too", token=people["carol"], check=False)
    assert done.returncode != 0 and "approver" in (done.stderr + done.stdout).lower()


def test_a_ticket_approval_is_for_its_route(stack, people, approval_version):
    """An approval given for one endpoint does not let the same body through
    another (once, `count_tokens` approvals were used on `messages`)."""
    alice, bob = people["alice"], people["bob"]
    body = {"model": "gpt-4o", "messages": [
        {"role": "user", "content": f"customer export, route check {uuid.uuid4().hex[:8]}"}]}
    auth = {"authorization": f"Bearer {alice}"}
    status, _, raw = http("POST", f"{stack.gateway_url}/openai/v1/chat/completions", body=body, headers=auth)
    assert status == 403, raw
    ticket = approval_id(json.loads(raw))
    stack.cli("approvals", "approve", ticket, "--reason", "for chat", token=bob)
    status, headers, raw = http("POST", f"{stack.gateway_url}/openai/v1/completions", body=body, headers=auth)
    assert (status, reason(headers)) == (403, "warden.approval_pending"), raw
    assert approval_id(json.loads(raw)) != ticket
    assert stack.provider_received() == []
    # The approval is still there for the route it was given for.
    status, _, raw = http("POST", f"{stack.gateway_url}/openai/v1/chat/completions", body=body, headers=auth)
    assert status == 200, raw


def test_nobody_approves_their_own_request_whatever_claim_names_them(make_stack):
    """The filter names people by `email` here, the control plane by `sub`:
    the requester is still recognized (once, they could approve themselves)."""
    config = default_filter_config()
    config["authentication"]["issuers"][0]["claims"] = {"subject": "email"}
    config["policy"] = APPROVAL_POLICY
    stack = make_stack(filter_config=yaml.safe_dump(config))
    alice = stack.token("alice", ["security"], "--email", "alice@example.com")
    bob = stack.token("bob", ["security"], "--email", "bob@example.com")
    status, _, body = chat(stack, alice, f"customer export {uuid.uuid4().hex[:6]}")
    assert status == 403, body
    own = approval_id(body)
    shown = {a["id"]: a for a in approvals(stack, bob)}[own]
    assert shown["subject"] == "alice@example.com"
    done = stack.cli("approvals", "approve", own, "--reason", "mine", token=alice, check=False)
    assert done.returncode != 0 and "self" in (done.stderr + done.stdout).lower()
    stack.cli("approvals", "approve", own, "--reason", "checked", token=bob)


# --- outage -----------------------------------------------------------------------


def test_control_plane_down_keeps_the_last_policy_then_fails_closed(stack, people, approval_version):
    alice = people["alice"]
    assert chat(stack, alice, "hello")[0] == 200
    stack.stop_control_plane()
    seen: list[tuple[int, str | None]] = []

    def refused_as_stale() -> bool:
        status, headers, _ = chat(stack, alice, "hello")
        seen.append((status, reason(headers)))
        return seen[-1] == (503, "warden.policy_stale")

    try:
        # The last good version serves until the bound, then requests are
        # refused clearly; nothing else in between. (When exactly: checked to
        # the second on a driven clock in tests/emulated/test_faults.py; here
        # the machine's load decides how many requests fit before it.)
        wait_until("requests to be refused as stale", refused_as_stale, timeout=120)
        assert set(seen) <= {(200, None), (503, "warden.policy_stale")}, seen
        status, headers, body = chat(stack, alice, "hello")
        assert status == 503 and "control plane" in body["error"]["message"]
    finally:
        stack.start_control_plane()
    wait_until("the gateway to serve again", lambda: chat(stack, alice, "hello")[0] == 200, timeout=120)
