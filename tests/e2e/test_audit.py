"""The audit record end to end: exactly one access-log record per request
whatever happened to it (allowed, masked, blocked, 401, 403, 404, 413,
streamed, client gone mid-stream, Envoy stopped mid-stream), with the right
fields and nothing else; quotes and control characters escaped; long streams
flushed periodically; the OCSF and ECS variants of envoy/access-log/ produce
parseable records with their mapped fields for real requests.

Requests carry a unique user agent, the marker their records are found by;
every wait polls the access log the harness configures (docs/audit.md)."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
import uuid
from pathlib import Path

import pytest
import yaml

from harness.stack import ENVOY_TEMPLATE, Ports, Stack, default_filter_config, http, wait_until

EMAIL = "jane.doe@example.com"
GITHUB = "ghp_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o50smkjE"  # its CRC32 ends it, as GitHub's do
MAX_BODY = 4096

# Every field of the native record (envoy/envoy.yaml, docs/audit.md), no more.
NATIVE_FIELDS = {
    "time", "log_type", "request_id", "user", "groups", "issuer", "provider", "route", "model",
    "decision", "reason", "rules", "tools", "mcp_method", "policy_version", "approval_id", "usage",
    "method", "path", "protocol", "status", "response_flags", "details", "upstream_cluster", "duration_ms",
    "first_byte_ms", "upstream_ms", "bytes_received", "bytes_sent", "client_address", "user_agent",
}
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
ISO_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def native_access_log(flush_interval: str) -> dict:
    """envoy.yaml's own access log with another periodic flush interval, as an
    access-log variant for the harness (a second is too often for production,
    right for a test that must see a stream flushed while it lasts)."""
    cfg = yaml.safe_load(ENVOY_TEMPLATE.read_text())
    hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    return {"access_log": hcm["access_log"],
            "access_log_options": {**hcm.get("access_log_options", {}), "access_log_flush_interval": flush_interval}}


def audit_policy() -> str:
    """The default policy with a block rule in front, and a small body limit."""
    config = default_filter_config()
    config["policy"]["rules"].insert(0, {"name": "source-keys", "detect": ["github_token"], "action": "block"})
    config["max_body_bytes"] = MAX_BODY
    return yaml.safe_dump(config)


@pytest.fixture(scope="module")
def audit_stack(tmp_path_factory):
    data = tmp_path_factory.mktemp("audit")
    variant = data / "access-log-1s.yaml"
    variant.write_text(yaml.safe_dump(native_access_log("1s")))
    stack = Stack.start(Ports.free(), data, filter_config=audit_policy(), access_log=variant)
    try:
        yield stack
    finally:
        stack.stop()


def mine(stack: Stack, marker: str, key: str = "user_agent") -> list[dict]:
    return [r for r in stack.access_log_records() if r.get(key) == marker]


def ends(records: list[dict]) -> list[dict]:
    return [r for r in records if r["log_type"] == "DownstreamEnd"]


def settle(stack: Stack, markers: list[str]) -> dict[str, list[dict]]:
    """Every record of each marker, once each has its final record and a later
    request's record is written too (records are appended in completion
    order: a duplicate would have been written by then)."""
    wait_until("a final record for every request",
               lambda: all(ends(mine(stack, m)) for m in markers))
    sentinel = f"audit-sentinel/{uuid.uuid4()}"
    http("GET", f"{stack.gateway_url}/nowhere", headers={"user-agent": sentinel})
    wait_until("the sentinel's record", lambda: bool(mine(stack, sentinel)))
    return {m: mine(stack, m) for m in markers}


def chat(stack: Stack, token: str | None, agent: str, content: str = "hello", model: str = "gpt-4o",
         stream: bool = False, extra: dict | None = None) -> tuple[int, dict, bytes]:
    headers = {"user-agent": agent, **(extra or {})}
    if token:
        headers["authorization"] = f"Bearer {token}"
    body = {"model": model, "messages": [{"role": "user", "content": content}]}
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    return http("POST", f"{stack.gateway_url}/openai/v1/chat/completions", body=body, headers=headers, timeout=60)


def raw_request(stack: Stack, head: bytes, body: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", stack.ports.gateway), timeout=30)
    sock.sendall(head + b"\r\n" + body)
    return sock


def test_one_record_per_request_whatever_happened(audit_stack):
    stack = audit_stack
    run = uuid.uuid4()
    alice = stack.token("alice", ["engineering"])
    fiona = stack.token("fiona", ["finance"])
    m = {k: f"audit/{run}/{k}" for k in (
        "models", "anthropic", "masked", "streamed", "blocked", "unauthenticated", "denied", "no_route",
        "too_large", "client_gone", "gone_before_answer")}

    assert http("GET", f"{stack.gateway_url}/openai/v1/models?key=a-query-value",
                headers={"authorization": f"Bearer {alice}", "user-agent": m["models"]})[0] == 200
    status, _, _ = http("POST", f"{stack.gateway_url}/anthropic/v1/messages",
                        body={"model": "claude-sonnet-4-6", "max_tokens": 20,
                              "messages": [{"role": "user", "content": "hello"}]},
                        headers={"authorization": f"Bearer {alice}", "user-agent": m["anthropic"]})
    assert status == 200
    assert chat(stack, alice, m["masked"], f"mail {EMAIL} please")[0] == 200
    assert chat(stack, alice, m["streamed"], f"mail {EMAIL} please", stream=True)[0] == 200
    assert chat(stack, alice, m["blocked"], f"deploy with {GITHUB}")[0] == 403
    assert chat(stack, None, m["unauthenticated"])[0] == 401
    assert chat(stack, fiona, m["denied"], model="gpt-4o")[0] == 403
    assert http("GET", f"{stack.gateway_url}/gemini/v1/models", headers={"user-agent": m["no_route"]})[0] == 404
    assert chat(stack, alice, m["too_large"], "x" * (MAX_BODY * 2))[0] == 413

    # A client that leaves mid-stream: read the first event, then hang up.
    stack.provider_queue_replies(["a long answer " * 40])
    body = json.dumps({"model": "gpt-4o", "stream": True,
                       "messages": [{"role": "user", "content": "tell me"}]}).encode()
    sock = raw_request(stack, (
        "POST /openai/v1/chat/completions HTTP/1.1\r\nhost: gateway\r\n"
        f"authorization: Bearer {alice}\r\ncontent-type: application/json\r\n"
        f"user-agent: {m['client_gone']}\r\nx-stand-in-chunk-delay-ms: 50\r\n"
        f"content-length: {len(body)}\r\n").encode(), body)
    seen = b""
    while b"data:" not in seen:
        chunk = sock.recv(4096)
        assert chunk, "the gateway closed the stream before its first event"
        seen += chunk
    assert seen.startswith(b"HTTP/1.1 200")
    sock.close()

    # A client that leaves before the body is complete: no answer at all.
    sock = raw_request(stack, (
        "POST /openai/v1/chat/completions HTTP/1.1\r\nhost: gateway\r\n"
        f"authorization: Bearer {alice}\r\ncontent-type: application/json\r\n"
        f"user-agent: {m['gone_before_answer']}\r\ncontent-length: 1000\r\n").encode(), b'{"model":')
    sock.close()

    records = settle(stack, list(m.values()))
    for kind, recs in records.items():
        assert len(ends(recs)) == 1, (kind, recs)
        for r in recs:
            assert set(r) == NATIVE_FIELDS, kind
            assert UUID.match(r["request_id"]) and ISO_MS.match(r["time"]), r
            assert r["client_address"] == "127.0.0.1" and isinstance(r["duration_ms"], int)
            assert isinstance(r["bytes_received"], int) and isinstance(r["bytes_sent"], int)
            # Nothing of the content: no value, no query string, no token.
            text = json.dumps(r)
            assert EMAIL not in text and GITHUB not in text and "a-query-value" not in text
            assert alice not in text and fiona not in text
    # Any other record is a periodic one of a request that lasted over a second.
    assert all(r["log_type"] in ("DownstreamEnd", "DownstreamPeriodic") for recs in records.values() for r in recs)
    r = {kind: ends(records[marker])[0] for kind, marker in m.items()}
    issuer = f"{stack.control_plane_url}/dev"

    assert (r["models"]["status"], r["models"]["decision"], r["models"]["path"]) == (200, "allowed", "/openai/v1/models")
    assert (r["models"]["user"], r["models"]["groups"], r["models"]["issuer"]) == ("alice", "engineering", issuer)
    assert (r["models"]["provider"], r["models"]["upstream_cluster"]) == ("openai", "provider_openai")
    assert r["models"]["method"] == "GET" and r["models"]["response_flags"] == "-"

    assert (r["anthropic"]["provider"], r["anthropic"]["model"], r["anthropic"]["decision"]) == (
        "anthropic", "claude-sonnet-4-6", "allowed")
    assert json.loads(r["anthropic"]["usage"])["input_tokens"] >= 1

    for kind in ("masked", "streamed"):
        assert (r[kind]["status"], r[kind]["decision"], r[kind]["model"]) == (200, "masked", "gpt-4o"), kind
        assert r[kind]["rules"].startswith("personal-data:mask:"), kind
        # Token usage, from the JSON body or the stream's final event.
        assert json.loads(r[kind]["usage"])["prompt_tokens"] >= 1, kind
        assert isinstance(r[kind]["upstream_ms"], int) and r[kind]["bytes_sent"] > 0, kind

    assert (r["blocked"]["status"], r["blocked"]["decision"], r["blocked"]["reason"]) == (403, "blocked", "warden.blocked")
    assert r["blocked"]["user"] == "alice"
    assert r["blocked"]["upstream_ms"] is None  # nothing went upstream

    assert (r["unauthenticated"]["status"], r["unauthenticated"]["decision"]) == (401, "unauthenticated")
    assert r["unauthenticated"]["user"] is None and r["unauthenticated"]["reason"].startswith("warden.")

    assert (r["denied"]["status"], r["denied"]["decision"], r["denied"]["reason"]) == (403, "denied", "warden.model_denied")
    assert (r["denied"]["user"], r["denied"]["groups"]) == ("fiona", "finance")

    assert (r["no_route"]["status"], r["no_route"]["reason"]) == (404, "warden.no_route")
    assert r["no_route"]["provider"] is None and r["no_route"]["user"] is None

    assert (r["too_large"]["status"], r["too_large"]["reason"]) == (413, "warden.body_too_large")
    assert r["too_large"]["user"] == "alice"

    early = r["gone_before_answer"]
    assert early["status"] == 0 and "DC" in early["response_flags"].split(",")
    assert early["user"] == "alice" and early["bytes_sent"] == 0

    gone = r["client_gone"]
    assert gone["status"] == 200 and "DC" in gone["response_flags"].split(",")
    assert gone["decision"] == "allowed" and gone["user"] == "alice"


def test_quotes_and_control_characters_are_escaped(audit_stack):
    stack = audit_stack
    # A subject and a user agent that try to end the string and add fields.
    subject = 'mallory","decision":"allowed\\"}'
    agent = f'audit/{uuid.uuid4()}/"quoted"\\back\tslash é ","decision":"allowed'
    token = stack.token(subject, ["engineering"])
    head = ("GET /openai/v1/models HTTP/1.1\r\nhost: gateway\r\nconnection: close\r\n"
            f"authorization: Bearer {token}\r\nuser-agent: {agent}\r\n").encode()
    sock = raw_request(stack, head)
    reply = b""
    while chunk := sock.recv(65536):
        reply += chunk
    sock.close()
    assert reply.startswith(b"HTTP/1.1 200"), reply[:200]

    # A subject with control characters is refused by the filter: its record
    # says so, without the subject.
    bad_agent = f"audit/{uuid.uuid4()}/control"
    bad = stack.token("eve\n\x01", ["engineering"])
    assert http("GET", f"{stack.gateway_url}/openai/v1/models",
                headers={"authorization": f"Bearer {bad}", "user-agent": bad_agent})[0] == 401

    records = settle(stack, [agent, bad_agent])
    (record,) = records[agent]
    # One line, valid JSON, the values exactly as sent, no field added.
    assert record["user"] == subject and record["user_agent"] == agent
    assert record["decision"] == "allowed" and set(record) == NATIVE_FIELDS
    line = next(line for line in stack.access_log.read_text().splitlines() if "quoted" in line)
    assert "\t" not in line and "\\t" in line and '\\"quoted\\"' in line
    (refused,) = records[bad_agent]
    assert (refused["decision"], refused["reason"], refused["user"]) == (
        "unauthenticated", "warden.token_no_subject", None)


def test_a_long_stream_is_flushed_while_it_lasts(audit_stack):
    stack = audit_stack
    marker = f"audit/{uuid.uuid4()}/long-stream"
    token = stack.token("alice", ["engineering"])
    started = time.monotonic()
    status, _, _ = chat(stack, token, marker, "hello there, how are you", stream=True,
                        extra={"x-stand-in-chunk-delay-ms": "100", "x-stand-in-chunk-size": "64"})
    assert status == 200 and time.monotonic() - started > 2.5
    records = settle(stack, [marker])[marker]
    periodic = [r for r in records if r["log_type"] == "DownstreamPeriodic"]
    (end,) = ends(records)
    assert len(periodic) >= 2
    # The same request, growing: identity and decision in every record.
    assert {r["request_id"] for r in records} == {end["request_id"]}
    assert all(r["user"] == "alice" and r["decision"] == "allowed" for r in periodic)
    sent = [r["bytes_sent"] for r in periodic] + [end["bytes_sent"]]
    assert sent == sorted(sent) and end["duration_ms"] >= 2500


def test_a_stream_cut_by_envoy_stopping_is_on_record(make_stack, tmp_path):
    variant = tmp_path / "access-log-1s.yaml"
    variant.write_text(yaml.safe_dump(native_access_log("1s")))
    stack = make_stack(access_log=variant)
    marker = f"audit/{uuid.uuid4()}/envoy-stops"
    token = stack.token("alice", ["engineering"])
    outcome: dict = {}

    def stream() -> None:
        try:
            outcome["reply"] = chat(stack, token, marker, "hello there, how are you " * 20, stream=True,
                                    extra={"x-stand-in-chunk-delay-ms": "200", "x-stand-in-chunk-size": "16"})
        except Exception as err:  # noqa: BLE001 - the cut stream is expected to fail
            outcome["error"] = err

    client = threading.Thread(target=stream)
    client.start()
    # While it streams, a periodic record already says who streams what.
    wait_until("a periodic record", lambda: bool(mine(stack, marker)))
    assert mine(stack, marker)[0]["log_type"] == "DownstreamPeriodic"
    assert mine(stack, marker)[0]["user"] == "alice"
    envoy = next(p for p in stack.processes if p.name == "envoy")
    envoy.stop()
    client.join(30)
    assert "reply" not in outcome, "the stream should have been cut"
    # Envoy wrote the final record of the cut stream before it exited.
    (end,) = ends(mine(stack, marker))
    assert end["status"] == 200 and "DC" in end["response_flags"].split(",")
    assert envoy.popen.returncode == 0


def test_ocsf_api_activity_records(make_stack):
    stack = make_stack(access_log="ocsf")
    run = uuid.uuid4()
    ok, refused = f"ocsf/{run}/masked", f"ocsf/{run}/refused"
    before = int(time.time() * 1000)
    assert chat(stack, stack.token("alice", ["engineering"]), ok, f"mail {EMAIL}")[0] == 200
    assert chat(stack, None, refused)[0] == 401

    def by_agent(agent: str) -> list[dict]:
        return [r for r in stack.access_log_records() if r.get("http_request", {}).get("user_agent") == agent]

    wait_until("both records", lambda: by_agent(ok) and by_agent(refused))
    (good,) = by_agent(ok)
    (bad,) = by_agent(refused)
    for r in (good, bad):
        assert (r["class_uid"], r["category_uid"], r["activity_id"], r["type_uid"], r["severity_id"]) == (
            6003, 6, 99, 600399, 1)
        assert r["class_name"] == "API Activity" and r["metadata"]["version"] == "1.4.0"
        assert r["metadata"]["product"]["name"] == "Warden" and UUID.match(r["metadata"]["correlation_uid"])
        # Epoch milliseconds as digits (docs/audit.md: Envoy writes times as text).
        assert before - 1000 <= int(r["time"]) <= int(time.time() * 1000) and ISO_MS.match(r["time_dt"])
        assert r["src_endpoint"]["ip"] == "127.0.0.1" and isinstance(r["duration"], int)
        assert r["api"]["operation"] == "POST /openai/v1/chat/completions"
        assert r["http_request"]["http_method"] == "POST" and r["unmapped"]["log_type"] == "DownstreamEnd"
        assert r["http_request"]["http_version"] == "HTTP/1.1" and r["http_request"]["url"]["path"] == \
            "/openai/v1/chat/completions"
        assert r["http_response"]["code"] == r["api"]["response"]["code"]
        assert EMAIL not in json.dumps(r)
    assert (good["status_id"], good["status"], good["status_code"]) == (1, "Success", "masked")
    assert good["api"]["response"]["code"] == 200 and good["api"]["service"]["name"] == "openai"
    assert good["http_response"]["length"] > 0 and isinstance(good["http_response"]["latency"], int)
    assert good["actor"]["user"]["uid"] == "alice" and good["actor"]["idp"]["name"] == f"{stack.control_plane_url}/dev"
    assert good["actor"]["authorizations"][0]["decision"] == "masked"
    assert good["resources"] == [{"type": "AI Model", "name": "gpt-4o"}]
    assert good["unmapped"]["rules"].startswith("personal-data:mask:") and good["unmapped"]["groups"] == "engineering"
    assert json.loads(good["unmapped"]["usage"])["prompt_tokens"] >= 1
    assert (bad["status_id"], bad["status"], bad["status_code"]) == (2, "Failure", "unauthenticated")
    assert bad["api"]["response"]["code"] == 401 and bad["actor"]["user"]["uid"] is None


def test_ecs_records(make_stack):
    stack = make_stack(access_log="ecs")
    run = uuid.uuid4()
    ok, refused = f"ecs/{run}/masked", f"ecs/{run}/refused"
    token = stack.token("alice", ["engineering"])
    # A stream of over a second: event.duration must count whole seconds too.
    assert chat(stack, token, ok, f"mail {EMAIL}, then some more words", stream=True,
                extra={"x-stand-in-chunk-delay-ms": "60", "x-stand-in-chunk-size": "64"})[0] == 200
    assert chat(stack, None, refused)[0] == 401

    def by_agent(agent: str) -> list[dict]:
        return [r for r in stack.access_log_records() if r.get("user_agent", {}).get("original") == agent]

    wait_until("both records", lambda: by_agent(ok) and by_agent(refused))
    (good,) = by_agent(ok)
    (bad,) = by_agent(refused)
    for r in (good, bad):
        assert ISO_MS.match(r["@timestamp"]) and r["ecs"]["version"] == "9.1.0"
        assert (r["event"]["kind"], r["event"]["category"], r["event"]["type"]) == ("event", ["web"], ["access"])
        assert UUID.match(r["http"]["request"]["id"]) and r["warden"]["log_type"] == "DownstreamEnd"
        assert r["source"]["ip"] == "127.0.0.1" and r["url"]["path"] == "/openai/v1/chat/completions"
        assert r["http"]["request"]["method"] == "POST" and r["observer"]["vendor"] == "Warden"
        # Nanoseconds, counted from Envoy's milliseconds.
        assert int(r["event"]["duration"]) == r["warden"]["duration_ms"] * 1_000_000
        assert EMAIL not in json.dumps(r)
    assert good["warden"]["duration_ms"] > 1000
    assert (good["event"]["action"], good["event"]["outcome"]) == ("masked", "success")
    assert good["http"]["response"]["status_code"] == 200 and good["http"]["response"]["body"]["bytes"] > 0
    assert (good["user"]["name"], good["warden"]["groups"]) == ("alice", "engineering")
    assert (good["gen_ai"]["system"], good["gen_ai"]["request"]["model"]) == ("openai", "gpt-4o")
    assert good["warden"]["rules"].startswith("personal-data:mask:")
    assert json.loads(good["warden"]["usage"])["prompt_tokens"] >= 1
    assert (bad["event"]["action"], bad["event"]["outcome"]) == ("unauthenticated", "failure")
    assert bad["http"]["response"]["status_code"] == 401 and bad["user"]["name"] is None
    assert bad["event"]["reason"].startswith("warden.")


def test_route_and_policy_version_are_recorded(audit_stack, tmp_path):
    stack = audit_stack
    token = stack.token("alice", ["engineering"])
    # Published through the control plane, the policy gets a version, and
    # the records carry it.
    version = push_policy(stack, yaml.safe_load(audit_policy())["policy"], tmp_path)
    run = uuid.uuid4()
    allowed, blocked = f"audit/{run}/policy", f"audit/{run}/policy-blocked"
    assert chat(stack, token, allowed, "hello")[0] == 200
    assert chat(stack, token, blocked, f"deploy with {GITHUB}")[0] == 403
    records = settle(stack, [allowed, blocked])
    (record,) = ends(records[allowed])
    assert record["route"] == "/v1/chat/completions"
    assert record["policy_version"] == str(version)
    assert record["approval_id"] is None  # no approval was needed
    (refused,) = ends(records[blocked])
    assert refused["route"] == "/v1/chat/completions" and refused["policy_version"] == str(version)


def push_policy(stack: Stack, policy: dict, tmp_path: Path) -> int:
    """Publishes `policy` through the control plane (CLI, as an admin) and
    waits until the gateway decides with it; returns its version."""
    path = tmp_path / f"policy-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(yaml.safe_dump(policy))
    admin = stack.token("root", ["warden-admins"])
    stack.cli("policy", "push", str(path), "-m", "audit test", token=admin)
    version = max(v["version"] for v in json.loads(stack.cli("policy", "list", "--json", token=admin).stdout)["policies"])
    token = stack.token("alice", ["engineering"])

    def served() -> bool:
        marker = f"audit/{uuid.uuid4()}/policy-probe"
        http("GET", f"{stack.gateway_url}/openai/v1/models",
             headers={"authorization": f"Bearer {token}", "user-agent": marker})
        wait_until("the probe's record", lambda: bool(ends(mine(stack, marker))))
        return ends(mine(stack, marker))[0]["policy_version"] == str(version)

    wait_until("the gateway to serve the published version", served, timeout=30)
    return version


def test_approvals_are_on_record_with_their_id(audit_stack, tmp_path):
    """A ticket: the first request is refused pending (one record, with the
    approval's id), approved by someone else, then the same request passes
    (one record, approved, the same id); a denied ticket is on record too."""
    stack = audit_stack
    policy = yaml.safe_load(audit_policy())["policy"]
    policy["groups"]["security"] = {"models": ["*"]}
    policy["approval"] = {"approvers": ["security"], "mode": "ticket", "ttl_seconds": 600}
    policy["rules"].append({"name": "prod-export", "keywords": ["customer export"],
                            "action": "require_approval", "where": "request"})
    version = push_policy(stack, policy, tmp_path)
    alice, bob = stack.token("alice", ["engineering"]), stack.token("bob", ["security"])
    run = uuid.uuid4()
    m = {k: f"audit/{run}/{k}" for k in ("pending", "approved", "to-deny", "denied")}

    def ticket(body: bytes) -> str:
        found = re.search(r"apr_[A-Za-z0-9_-]+", json.loads(body)["error"]["message"])
        assert found, body
        return found.group(0)

    status, _, body = chat(stack, alice, m["pending"], f"customer export {run}")
    assert status == 403
    first = ticket(body)
    stack.cli("approvals", "approve", first, "--reason", "ticket OPS-1", token=bob)
    assert chat(stack, alice, m["approved"], f"customer export {run}")[0] == 200
    status, _, body = chat(stack, alice, m["to-deny"], f"customer export {run}, all of it")
    assert status == 403
    second = ticket(body)
    stack.cli("approvals", "deny", second, "--reason", "too broad", token=bob)
    assert chat(stack, alice, m["denied"], f"customer export {run}, all of it")[0] == 403

    records = settle(stack, list(m.values()))
    r = {kind: ends(records[marker]) for kind, marker in m.items()}
    assert all(len(recs) == 1 for recs in r.values()), r
    r = {kind: recs[0] for kind, recs in r.items()}
    assert (r["pending"]["decision"], r["pending"]["approval_id"]) == ("approval_pending", first)
    assert r["pending"]["reason"] == "warden.approval_pending" and r["pending"]["status"] == 403
    assert (r["approved"]["decision"], r["approved"]["approval_id"], r["approved"]["status"]) == (
        "approved", first, 200)
    assert (r["to-deny"]["decision"], r["to-deny"]["approval_id"]) == ("approval_pending", second)
    assert (r["denied"]["decision"], r["denied"]["approval_id"], r["denied"]["status"]) == ("denied", second, 403)
    assert all(rec["policy_version"] == str(version) and rec["user"] == "alice" for rec in r.values())


def test_a_block_names_its_rule(audit_stack):
    stack = audit_stack
    marker = f"audit/{uuid.uuid4()}/block-rule"
    assert chat(stack, stack.token("alice", ["engineering"]), marker, f"deploy with {GITHUB}")[0] == 403
    (refused,) = ends(settle(stack, [marker])[marker])
    assert refused["decision"] == "blocked"
    assert "source-keys:block:1" in (refused["rules"] or "")


def test_the_variants_are_listed_in_the_docs():
    docs = (Path(__file__).resolve().parents[2] / "docs" / "audit.md").read_text()
    for variant in sorted((ENVOY_TEMPLATE.parent / "access-log").glob("*.yaml")):
        assert f"envoy/access-log/{variant.name}" in docs
    for field in NATIVE_FIELDS:
        assert f"`{field}`" in docs, field


def operators(access_log: list) -> set[str]:
    """The Envoy command operators an access log uses (START_TIME without its
    format, every other one with its argument: which header, which filter state)."""
    found = set()
    for name, arg in re.findall(r"%([A-Z_]+)(?:\(([^)]*)\))?", yaml.safe_dump(access_log, width=10_000)):
        found.add(name if name in ("START_TIME", "CEL") else f"{name}({arg})" if arg else name)
    return found


def test_every_variant_carries_every_fact_of_the_native_record():
    """A fact added to the native record (a new filter-state field, say) must
    reach the OCSF and ECS shapes too."""
    cfg = yaml.safe_load(ENVOY_TEMPLATE.read_text())
    hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    native = operators(hcm["access_log"])
    assert "FILTER_STATE(wasm.warden.decision:PLAIN)" in native and "DURATION" in native
    for variant in sorted((ENVOY_TEMPLATE.parent / "access-log").glob("*.yaml")):
        missing = native - operators(yaml.safe_load(variant.read_text())["access_log"])
        assert not missing, f"{variant.name} lacks {sorted(missing)}"
