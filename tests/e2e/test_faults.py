"""Faults end to end through the real Envoy: the provider fails in each way a
real one can (an error status, a page that is not JSON, a connection cut in
the middle of an answer, a stream that never ends, an event larger than any
buffer) and the client leaves in the middle of a stream. In each case nothing
unmasked reaches the client, the gateway serves the next request, exactly one
audit record says what happened, and the filter's counters agree.

The stand-in provider's held answers (`"then": "hold"`) send their first bytes
and stay open until the test ends them, so each test decides when the cut
comes; nothing here waits on a clock except through `wait_until` polls."""

from __future__ import annotations

import base64
import collections
import json
import os
import select
import shutil
import socket
import sqlite3
import subprocess
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx2 as httpx
import openai
import pytest
import yaml

from harness.sse import chat_chunk
from harness.stack import ROOT, Ports, Stack, default_filter_config, http, wait_until

CHAT = "/openai/v1/chat/completions"
EMAIL = "jane.doe@example.com"


def first_words() -> str:
    """The start of a stream: an address, then enough words after it that the
    gateway has settled the address and sent it on, masked."""
    return chat_chunk(f"write to {EMAIL} ") + chat_chunk("or call the office tomorrow morning. ")


def request_body(stream: bool = True) -> dict:
    return {"model": "gpt-4o-mini", "stream": stream, "messages": [{"role": "user", "content": "hello"}]}


class Marked:
    """Requests sent with one user agent, so their audit records can be told
    from every other test's."""

    def __init__(self, stack: Stack, token: str):
        self.stack = stack
        self.agent = f"faults/{uuid.uuid4()}"
        self.headers = {"authorization": f"Bearer {token}", "user-agent": self.agent}

    def records(self, agent: str | None = None) -> list[dict]:
        agent = agent or self.agent
        return [r for r in self.stack.access_log_records() if r.get("user_agent") == agent]

    def the_next_request_is_served(self) -> None:
        """A plain request after the fault is served; once its record is in
        the log, every record of the earlier requests is too (records are
        written as requests end, and the log is flushed in order)."""
        after = self.agent + "/next"
        status, _, body = http("POST", f"{self.stack.gateway_url}{CHAT}", body=request_body(stream=False),
                               headers={**self.headers, "user-agent": after})
        assert status == 200, body
        wait_until("the next request's audit record", lambda: self.records(after))

    def the_only_record(self) -> dict:
        """The fault's one audit record."""
        records = self.records()
        assert len(records) == 1, records
        return records[0]


def counter_delta(stack: Stack, before: dict[str, int]) -> dict[str, int]:
    after = stack.counters()
    return {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}


@pytest.fixture
def marked(stack):
    return Marked(stack, stack.token("alice", ["engineering"]))


# --- the provider answers with an error ------------------------------------

@pytest.mark.parametrize("status", [500, 503])
def test_a_provider_error_reaches_the_sdk_as_that_error_and_is_inspected(stack, marked, status):
    error = {"error": {"message": f"overloaded while answering {EMAIL}", "type": "server_error",
                       "param": None, "code": None}}
    stack.provider_queue_raw([{"status": status, "content_type": "application/json", "body": json.dumps(error)}])
    client = openai.OpenAI(base_url=f"{stack.gateway_url}/openai/v1", api_key="unused", max_retries=0,
                           default_headers=marked.headers)
    with pytest.raises(openai.APIStatusError) as raised:
        client.chat.completions.create(**request_body(stream=False))
    assert raised.value.status_code == status
    assert raised.value.body["message"] == "overloaded while answering [EMAIL]"
    marked.the_next_request_is_served()
    record = marked.the_only_record()
    assert (record["status"], record["decision"], record["upstream_cluster"]) == (status, "masked", "provider_openai")


def test_a_provider_page_that_is_not_json_is_inspected_as_text(stack, marked):
    page = f"<html><body><h1>502 Bad Gateway</h1><p>contact {EMAIL}</p></body></html>"
    stack.provider_queue_raw([{"status": 502, "content_type": "text/html", "body": page}])
    status, headers, body = http("POST", f"{stack.gateway_url}{CHAT}", body=request_body(stream=False),
                                 headers=marked.headers)
    assert status == 502
    assert body.decode() == page.replace(EMAIL, "[EMAIL]")
    marked.the_next_request_is_served()
    assert marked.the_only_record()["decision"] == "masked"


# --- the provider cuts its connection in the middle of an answer -------------

def read_until(stream: httpx.Response, needle: bytes) -> tuple[bytes, object]:
    """Reads a streamed response until `needle` has arrived; returns what
    came and the iterator, to read on."""
    chunks = stream.iter_raw()
    got = b""
    for piece in chunks:
        got += piece
        if needle in got:
            return got, chunks
    raise AssertionError(f"the stream ended before {needle!r}: {got!r}")


def read_rest(chunks) -> tuple[bytes, bool]:
    """The rest of a stream, and whether it ended cleanly (not cut)."""
    got = b""
    try:
        for piece in chunks:
            got += piece
    except (httpx.RemoteProtocolError, httpx.ReadError):
        return got, False
    return got, True


def test_a_stream_cut_by_the_provider_sends_nothing_it_held(stack, marked):
    before = stack.counters()
    # The first events arrive (one with a whole address, masked); the last
    # one ends in the middle of another address, which the gateway holds
    # until it knows where the address ends.
    first = chat_chunk(f"write to {EMAIL} ") + chat_chunk("or to jane.roe@exa")
    stack.provider_queue_raw([{"content_type": "text/event-stream", "body": first, "then": "hold"}])
    with httpx.Client(timeout=30) as client, client.stream(
            "POST", f"{stack.gateway_url}{CHAT}", json=request_body(), headers=marked.headers) as resp:
        assert resp.status_code == 200
        got, chunks = read_until(resp, b"[EMAIL]")
        # The rest of the address and the start of an event, then the cut.
        assert stack.provider_end_held(more=chat_chunk("mple.com today")[:-12], reset=True) == 1
        rest, clean = read_rest(chunks)
    seen = (got + rest).decode(errors="replace")
    assert not clean, "a cut answer must not look complete to the client"
    assert "jane.doe" not in seen and "jane.roe" not in seen and "mple.com" not in seen, seen
    marked.the_next_request_is_served()
    record = marked.the_only_record()
    assert record["decision"] == "masked", record
    assert "personal-data" in (record.get("rules") or ""), record
    assert record["response_flags"] not in (None, "", "-"), record
    delta = counter_delta(stack, before)
    assert delta.get("warden.rule.personal-data.mask", 0) >= 1, delta


def test_a_json_answer_cut_by_the_provider_reaches_the_client_in_no_part(stack, marked):
    half = json.dumps({"id": "chatcmpl-f", "object": "chat.completion", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": f"write to {EMAIL}"}}]})[:-20]
    stack.provider_queue_raw([{"content_type": "application/json", "body": half, "then": "hold"}])
    cut = threading.Thread(target=lambda: (
        wait_until("the request to reach the provider", lambda: stack.provider_raw_status()["open"] == 1),
        stack.provider_end_held(reset=True)))
    cut.start()
    # The gateway holds a JSON answer whole before inspecting it: the client
    # sees nothing until the provider cuts the connection.
    try:
        resp = httpx.post(f"{stack.gateway_url}{CHAT}", json=request_body(stream=False), headers=marked.headers,
                          timeout=30)
        status, body = resp.status_code, resp.content
    except (httpx.RemoteProtocolError, httpx.ReadError):
        status, body = None, b""
    cut.join()
    assert EMAIL.encode() not in body and b"write to" not in body, body
    # Envoy answers a response cut before it went downstream with its own 503, or cuts the client too.
    assert status in (None, 502, 503), (status, body)
    marked.the_next_request_is_served()
    assert marked.the_only_record()["response_flags"] not in (None, "", "-")


# --- the client leaves in the middle of a stream that never ends ------------

def test_a_client_that_leaves_a_stream_closes_it_upstream_with_one_record(stack, marked):
    before = stack.counters()
    stack.provider_queue_raw([{"content_type": "text/event-stream", "body": first_words(), "then": "hold"}])
    with httpx.Client(timeout=30) as client, client.stream(
            "POST", f"{stack.gateway_url}{CHAT}", json=request_body(), headers=marked.headers) as resp:
        got, _ = read_until(resp, b"[EMAIL]")
        assert stack.provider_raw_status()["open"] == 1
    # The client has closed its connection: Envoy closes the provider's.
    wait_until("the gateway to close the provider's stream", lambda: stack.provider_raw_status()["open"] == 0)
    assert EMAIL.encode() not in got
    marked.the_next_request_is_served()
    record = marked.the_only_record()
    assert "DC" in record["response_flags"], record
    assert record["decision"] == "masked", record
    assert counter_delta(stack, before).get("warden.requests.openai.masked", 0) >= 1


# --- an event larger than any buffer ----------------------------------------

def test_an_event_larger_than_any_buffer_ends_the_stream_with_an_error_event(stack, marked):
    huge = f"data: {{\"choices\": [{{\"index\": 0, \"delta\": {{\"content\": \"{EMAIL} " + "a" * (5 << 20) + "\"}}]}}\n\n"
    stack.provider_queue_raw([{"content_type": "text/event-stream", "body": chat_chunk("before ") + huge}])
    with httpx.Client(timeout=60) as client, client.stream(
            "POST", f"{stack.gateway_url}{CHAT}", json=request_body(), headers=marked.headers) as resp:
        assert resp.status_code == 200
        got, clean = read_rest(resp.iter_raw())
    text = got.decode()
    assert EMAIL not in text and "aaaa" not in text, text[:300]
    events = [block for block in text.split("\n\n") if block]
    assert "before" in events[0]
    last = json.loads(events[-1].removeprefix("data: "))
    assert last["error"]["type"] == "permission_error", last
    assert len(got) < 64 << 10
    marked.the_next_request_is_served()
    record = marked.the_only_record()
    assert record["decision"] in ("blocked", "masked"), record


def test_a_stream_that_falls_silent_is_ended_by_the_gateway(make_stack):
    def short_idle(cfg: dict) -> None:
        hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        hcm["stream_idle_timeout"] = "1s"

    stack = make_stack(edit_envoy_config=short_idle)
    marked = Marked(stack, stack.token("alice", ["engineering"]))
    stack.provider_queue_raw([{"content_type": "text/event-stream", "body": first_words(), "then": "hold"}])
    with httpx.Client(timeout=60) as client, client.stream(
            "POST", f"{stack.gateway_url}{CHAT}", json=request_body(), headers=marked.headers) as resp:
        got, chunks = read_until(resp, b"[EMAIL]")
        rest, clean = read_rest(chunks)
    assert not clean
    assert EMAIL.encode() not in got + rest
    wait_until("the gateway to close the provider's stream", lambda: stack.provider_raw_status()["open"] == 0)
    marked.the_next_request_is_served()
    record = marked.the_only_record()
    assert "SI" in record["response_flags"], record
    assert record["decision"] == "masked", record


# --- the IdP answers very slowly, or garbage --------------------------------

FAULTS = ["slow", "garbage", "error"]


class Faulty:
    """A neighbour of the gateway (the IdP's JWKS endpoint, the control
    plane) behind a stand-in on 127.0.0.1 that forwards every request to
    `upstream` while healthy and misbehaves while broken: `slow` holds each
    answer until healed (as slow as the test wants, with no clock in the
    test), `garbage` answers 200 with a body that is no JSON, `error`
    answers 500. `asked` counts the requests that met the fault, by path."""

    GARBAGE = b'{"keys": [{"kty": "RSA", "n": "\xff\xfe not base64", "e": 3}], "x": '

    def __init__(self, upstream: str, fault: str, *, healthy: bool = False):
        self.upstream, self.fault = upstream, fault
        self.healthy = threading.Event()
        if healthy:
            self.healthy.set()
        self.asked: collections.Counter[str] = collections.Counter()
        self.requests = 0
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def answer(self):
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else None
                status, headers, reply = stand_in.answer(self.command, self.path, dict(self.headers), body)
                self.send_response(status)
                for name, value in headers.items():
                    if name not in ("content-length", "transfer-encoding", "connection", "date", "server"):
                        self.send_header(name, value)
                self.send_header("content-length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            do_GET = do_POST = do_PUT = do_DELETE = answer  # noqa: N815 - the standard library's names

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def answer(self, method: str, path: str, headers: dict, body: bytes | None) -> tuple[int, dict, bytes]:
        self.requests += 1
        if not self.healthy.is_set():
            self.asked[path.split("?")[0]] += 1
            if self.fault == "garbage":
                return 200, {"content-type": "application/json"}, self.GARBAGE
            if self.fault == "error":
                return 500, {"content-type": "application/json"}, b'{"error": "internal"}'
            self.healthy.wait(timeout=120)
        forwarded = {k: v for k, v in headers.items() if k.lower() not in ("host", "content-length", "connection")}
        return http(method, self.upstream + path, body=body, headers=forwarded, timeout=60)

    def break_(self) -> None:
        self.healthy.clear()

    def heal(self) -> None:
        self.healthy.set()

    def stop(self) -> None:
        self.healthy.set()
        self.server.shutdown()


def stack_with_issuer(ports: Ports, tmp_path, issuer: str, idp: Faulty, **jwks) -> Stack:
    """A stack whose filter also trusts `issuer`, its JWKS behind the stand-in
    (the development issuer's keys, served under the other issuer's name)."""
    cfg = default_filter_config()
    cfg["authentication"]["issuers"].append(
        {"issuer": issuer, "audiences": ["warden"],
         "jwks": {"cluster": "stand_in_idp", "path": "/dev/jwks.json", "max_stale_seconds": 3600,
                  "min_refetch_seconds": 1, **jwks}})
    return Stack.start(ports, tmp_path / "stack", filter_config=yaml.safe_dump(cfg),
                       extra_clusters={"stand_in_idp": idp.port})


@pytest.mark.parametrize("fault", FAULTS)
def test_an_idp_that_is_slow_or_answers_garbage_refuses_clearly_and_recovers(tmp_path, fault):
    """Keys the IdP does not give (too slow for the fetch timeout, a body
    that is no JWKS, an error) are no keys: its callers get 503
    `warden.keys_not_loaded` (no request hangs on the IdP, nor is let
    through), the failed fetches are counted, and once it answers well its
    tokens verify, while the other issuer's callers were served all along."""
    ports = Ports.free()
    idp = Faulty(f"http://127.0.0.1:{ports.control_plane}", fault)
    try:
        issuer = "https://faulty-idp.example"
        stack = stack_with_issuer(ports, tmp_path, issuer, idp, timeout_ms=300, refresh_seconds=1)
        try:
            faulty_token = stack.token("sam", ["engineering"], "--issuer", issuer)
            wait_until("the filter to ask the IdP", lambda: idp.asked["/dev/jwks.json"] >= 1)
            marked = Marked(stack, faulty_token)
            status, headers, body = http("POST", f"{stack.gateway_url}{CHAT}", body=request_body(stream=False),
                                         headers=marked.headers)
            assert (status, headers.get("x-warden-reason")) == (503, "warden.keys_not_loaded"), body
            wait_until("failed fetches to be counted",
                       lambda: stack.counters().get("warden.keys.fetch_failures", 0) >= 1)
            # The other issuer's callers are served meanwhile.
            Marked(stack, stack.token("alice", ["engineering"])).the_next_request_is_served()

            idp.heal()

            def served() -> bool:
                return http("POST", f"{stack.gateway_url}{CHAT}", body=request_body(stream=False),
                            headers=marked.headers)[0] == 200
            wait_until("the IdP's keys, once it answers well", served)
            records = marked.records()
            assert {r["decision"] for r in records} <= {"error", "allowed"}, records
            assert records[0]["reason"] == "warden.keys_not_loaded"
        finally:
            stack.stop()
    finally:
        idp.stop()


def token_naming_a_key(issuer: str, kid: str, subject: str) -> str:
    """A token of `issuer` signed (it claims) by a key its JWKS does not have
    yet, as after a rotation the gateway has not seen: the gateway fetches
    the JWKS again before it decides."""
    def part(value) -> str:
        raw = value if isinstance(value, bytes) else json.dumps(value).encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    claims = {"iss": issuer, "sub": subject, "aud": "warden", "iat": int(time.time()), "exp": int(time.time()) + 600}
    return ".".join([part({"alg": "RS256", "typ": "JWT", "kid": kid}), part(claims), part(b"\x01" * 256)])


def test_a_client_that_leaves_while_its_request_waits_for_the_idp_is_forgotten(tmp_path):
    """A request whose token names a key the gateway does not know waits for
    the IdP's JWKS; the IdP is slow and the client leaves meanwhile. Nothing
    goes upstream, the request has one record (Envoy's `DC`), the worker is
    unharmed when the IdP finally answers, and the next unknown key is
    fetched again (the fetch the left request started does not hold the
    issuer's refetch forever)."""
    ports = Ports.free()
    idp = Faulty(f"http://127.0.0.1:{ports.control_plane}", "slow", healthy=True)
    try:
        issuer = "https://slow-idp.example"
        stack = stack_with_issuer(ports, tmp_path, issuer, idp, timeout_ms=30000, refresh_seconds=300)
        try:
            marked = Marked(stack, stack.token("sam", ["engineering"], "--issuer", issuer))
            wait_until("the IdP's keys", lambda: http("POST", f"{stack.gateway_url}{CHAT}",
                                                      body=request_body(stream=False),
                                                      headers=marked.headers)[0] == 200)
            idp.break_()
            prompt = f"never upstream {uuid.uuid4().hex}"
            body = json.dumps({**request_body(stream=False),
                               "messages": [{"role": "user", "content": prompt}]}).encode()
            left = f"{marked.agent}/left"
            attempts: list[socket.socket] = []

            def waiting_on_the_idp() -> bool:
                """Sends the request; true once it waits on the key fetch. (A
                fetch within min_refetch_seconds of the last is not allowed:
                then the gateway answers 401 at once, and the test sends it
                again.)"""
                sock = socket.create_connection(("127.0.0.1", ports.gateway), timeout=10)
                attempts.append(sock)
                sock.sendall(
                    f"POST {CHAT} HTTP/1.1\r\nhost: gateway\r\ncontent-type: application/json\r\n"
                    f"authorization: Bearer {token_naming_a_key(issuer, 'next-key', 'sam')}\r\n"
                    f"user-agent: {left}\r\ncontent-length: {len(body)}\r\n\r\n".encode() + body)
                while idp.asked["/dev/jwks.json"] == 0:
                    if select.select([sock], [], [], 0.05)[0]:
                        assert b" 401 " in sock.recv(65536).split(b"\r\n")[0]
                        sock.close()
                        return False
                return True
            wait_until("a request to wait on the IdP's keys", waiting_on_the_idp)
            answered, waiting = attempts[:-1], attempts[-1]
            waiting.close()
            wait_until("the left request's record", lambda: len(marked.records(left)) == len(attempts), timeout=30)

            idp.heal()
            marked.the_next_request_is_served()
            records = marked.records(left)
            assert len(records) == len(attempts), records
            assert [r["status"] for r in records[:-1]] == [401] * len(answered), records
            assert "DC" in records[-1]["response_flags"], records
            assert not any(r["upstream_ms"] for r in records), records  # none went upstream
            assert prompt not in json.dumps(stack.provider_received())

            # Another unknown key: fetched again and refused once the IdP says it has no such key.
            asked = idp.requests
            refused: list[tuple[int, str | None]] = []

            def fetched_and_refused() -> bool:
                status, headers, _ = http("POST", f"{stack.gateway_url}{CHAT}", body=request_body(stream=False),
                                          headers={"authorization": f"Bearer {token_naming_a_key(issuer, 'other', 'sam')}"})
                refused.append((status, headers.get("x-warden-reason")))
                return idp.requests > asked
            wait_until("an unknown key to be fetched again", fetched_and_refused, timeout=60)
            assert {status for status, _ in refused} == {401}, refused
        except BaseException:
            print(stack.dump_logs())
            raise
        finally:
            stack.stop()
    finally:
        idp.stop()


# --- the control plane is slow, answers garbage, or loses its database -------

ACTIVE_POLICY = "/v1/policy/active"


class Governed:
    """One caller of a stack whose control plane the test breaks: policies
    published (the approvals example, with masked sessions recorded),
    requests marked by user agent, the version the gateway enforces read
    from a request's audit record, the caller's recorded sessions."""

    def __init__(self, stack: Stack, tmp_path, name: str):
        self.stack, self.tmp_path = stack, tmp_path
        self.admin = stack.token("root", ["warden-admins"])
        self.auditor = stack.token("audrey", ["warden-auditors"])
        self.subject = f"{name}-{uuid.uuid4().hex[:6]}"
        self.marked = Marked(stack, stack.token(self.subject, ["engineering"]))
        self.policy = yaml.safe_load((ROOT / "examples" / "policies" / "approvals.yaml").read_text())
        self.policy["record"] = "masked"
        self.probes = 0

    def publish(self, message: str) -> int:
        path = self.tmp_path / f"policy-{uuid.uuid4().hex[:6]}.yaml"
        path.write_text(yaml.safe_dump(self.policy))
        self.stack.cli("policy", "push", str(path), "-m", message, token=self.admin)
        versions = json.loads(self.stack.cli("policy", "list", "--json", token=self.admin).stdout)["policies"]
        return max(v["version"] for v in versions)

    def chat(self, prompt: str, agent: str) -> tuple[int, dict, dict]:
        status, headers, body = http(
            "POST", f"{self.stack.gateway_url}{CHAT}",
            body={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": prompt}]},
            headers={**self.marked.headers, "user-agent": f"{self.marked.agent}/{agent}"}, timeout=30)
        return status, headers, json.loads(body or b"{}")

    def records(self, agent: str) -> list[dict]:
        return self.marked.records(f"{self.marked.agent}/{agent}")

    def enforced_version(self) -> int:
        """The policy version the gateway enforces, from a served request's record."""
        self.probes += 1
        agent = f"probe-{self.probes}"
        status, _, body = self.chat("hello", agent)
        assert status == 200, body
        wait_until("the probe's record", lambda: self.records(agent))
        return int(self.records(agent)[0]["policy_version"])

    def session_ids(self) -> list[str]:
        out = self.stack.cli("sessions", "list", "--subject", self.subject, "--json", token=self.auditor).stdout
        return [s["id"] for s in json.loads(out)["sessions"]]

    def approvals_are_refused_clearly(self) -> None:
        """What needs an approval (held or ticket) gets 503 at once, and
        nothing of it goes upstream."""
        for prompt in ("production database dump, please", "customer export, please"):
            status, headers, body = self.chat(prompt, "approval")
            assert (status, headers.get("x-warden-reason")) == (503, "warden.approvals_unavailable"), body
            assert "approval" in body["error"]["message"]
        assert not any("production database" in json.dumps(r) or "customer export" in json.dumps(r)
                       for r in self.stack.provider_received())

    def record_while_broken(self, counters: dict[str, int]) -> str:
        """A masked exchange the control plane cannot store: kept, not lost
        (counted as a failed send, not as dropped). Its request id."""
        status, _, body = self.chat(f"reply with: mail {EMAIL}", "recorded")
        assert status == 200, body
        wait_until("the exchange's record", lambda: self.records("recorded"))
        recorded_id = self.records("recorded")[0]["request_id"]
        wait_until("the undelivered sessions to be counted", lambda: counter_delta(self.stack, counters).get(
            "warden.audit.send_failures", 0) >= 1, timeout=60)
        assert counter_delta(self.stack, counters).get("warden.audit.dropped", 0) == 0
        return recorded_id

    def recovered(self, version: int, recorded_id: str) -> None:
        """Once the control plane answers well: the policy published during
        the fault is installed, the kept session arrives (stored once),
        approvals are asked for again, and every request had one record."""
        wait_until("the gateway to install the policy published during the fault",
                   lambda: self.enforced_version() == version, timeout=60)
        wait_until("the kept session to reach the control plane",
                   lambda: recorded_id in self.session_ids(), timeout=60)
        ids = self.session_ids()
        assert ids.count(recorded_id) == 1 and len(set(ids)) == len(ids), ids
        status, headers, body = self.chat("customer export, please", "ticket")
        assert (status, headers.get("x-warden-reason")) == (403, "warden.approval_pending"), body
        self.marked.the_next_request_is_served()
        refused = self.records("approval")
        assert [r["reason"] for r in refused] == ["warden.approvals_unavailable"] * 2, refused
        assert len(self.records("recorded")) == 1 and len(self.records("ticket")) == 1


def control_plane_config(**changes) -> str:
    cfg = default_filter_config()
    # Plain polls (watch_seconds 0): each poll meets the fault as it starts;
    # a watch opened while healthy would carry the answer of the healthy
    # control plane across the fault's start.
    cfg["control_plane"].update({"poll_seconds": 1, "timeout_ms": 500, "max_stale_seconds": 3600,
                                 "watch_seconds": 0, **changes})
    return yaml.safe_dump(cfg)


@pytest.mark.parametrize("fault", FAULTS)
def test_a_control_plane_that_is_slow_or_answers_garbage_keeps_the_last_policy_and_loses_nothing(tmp_path, fault):
    """The control plane behind a stand-in that breaks while the gateway runs
    (every answer too slow for the call's timeout, a 200 with a body that is
    no answer, or 500): the gateway keeps enforcing the last policy it
    installed (not the one published meanwhile, which it cannot have read),
    counts the failed polls, refuses what needs an approval with 503
    `warden.approvals_unavailable` at once (not a hang, never let through),
    keeps the recorded sessions it could not deliver, and once the control
    plane answers well installs the new policy, delivers the kept sessions
    (each stored once) and asks for approvals again. One audit record per
    request throughout. (How long the last policy may serve: checked to the
    second in tests/emulated/test_faults.py.)"""
    ports = Ports.free()
    control_plane = Faulty(f"http://127.0.0.1:{ports.control_plane}", fault, healthy=True)
    try:
        stack = Stack.start(ports, tmp_path / "stack", filter_config=control_plane_config(cluster="faulty_cp"),
                            extra_clusters={"faulty_cp": control_plane.port})
        try:
            governed = Governed(stack, tmp_path, f"cp-{fault}")
            before = governed.publish("before the fault")
            wait_until("the gateway to install the published policy",
                       lambda: governed.enforced_version() == before, timeout=60)

            control_plane.break_()
            after = governed.publish("during the fault")
            counters = stack.counters()
            polls = control_plane.asked[ACTIVE_POLICY]
            wait_until("two polls to meet the fault after the publication",
                       lambda: control_plane.asked[ACTIVE_POLICY] >= polls + 2, timeout=60)
            wait_until("the failed polls to be counted", lambda: counter_delta(stack, counters).get(
                "warden.policy.fetch_failures", 0) >= 1)
            assert governed.enforced_version() == before
            governed.approvals_are_refused_clearly()
            recorded_id = governed.record_while_broken(counters)
            assert recorded_id not in governed.session_ids()

            control_plane.heal()
            governed.recovered(after, recorded_id)
        except BaseException:
            print(stack.dump_logs())
            raise
        finally:
            stack.stop()
    finally:
        control_plane.stop()


def postgres(command: str, directory) -> str:
    return subprocess.run([str(ROOT / "scripts" / "postgres.sh"), command, str(directory)], check=True,
                          capture_output=True, text=True, timeout=120).stdout.strip()


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_a_control_plane_whose_database_goes_away_and_comes_back(tmp_path, backend):
    """The control plane's database goes away while the gateway runs and
    comes back, the control plane itself never restarted: SQLite's file
    locked by another process (a backup, an operator's shell) or the
    PostgreSQL server restarted (every connection cut, nothing listening for
    a while). Meanwhile the gateway serves under the last policy, refuses
    what needs an approval with 503 `warden.approvals_unavailable`, keeps
    the sessions it could not deliver; once the database is back, the same
    control plane process serves again: the policy published before the
    database's return is installed, the kept sessions arrive once,
    approvals are asked for again."""
    database_url = None
    if backend == "postgres":
        if shutil.which("pg_config") is None and not list(Path("/usr/lib/postgresql").glob("*/bin/initdb")):
            if os.environ.get("CI") or os.environ.get("WARDEN_REQUIRE_POSTGRES"):
                pytest.fail("PostgreSQL is not installed: scripts/test.sh installs it")
            pytest.skip("PostgreSQL not installed (run through `make test`)")
        # A server of this test's own: restarting the suite's would cut
        # every other test's. It comes back on the same port.
        database_url = postgres("start", tmp_path / "pg")
    try:
        stack = Stack.start(Ports.free(), tmp_path / "stack", filter_config=control_plane_config(),
                            database_url=database_url)
        try:
            governed = Governed(stack, tmp_path, f"db-{backend}")
            before = governed.publish("before the fault")
            wait_until("the gateway to install the published policy",
                       lambda: governed.enforced_version() == before, timeout=60)
            counters = stack.counters()
            lock = None
            if backend == "sqlite":
                # Another process holds the write lock: writes fail, reads go on (WAL).
                lock = sqlite3.connect(tmp_path / "stack" / "warden.db", timeout=30, isolation_level=None)
                lock.execute("BEGIN EXCLUSIVE")
            else:
                postgres("stop", tmp_path / "pg")
            try:
                governed.approvals_are_refused_clearly()
                recorded_id = governed.record_while_broken(counters)
                version = governed.enforced_version()
                assert version == before, "the gateway serves under the last policy it installed"
            finally:
                if lock is not None:
                    lock.execute("ROLLBACK")
                    lock.close()
                else:
                    assert postgres("start", tmp_path / "pg") == database_url, "restarted on its port"
            governed.recovered(governed.publish("once the database is back"), recorded_id)
            assert stack.control_plane_process is not None and stack.control_plane_process.popen.poll() is None
        except BaseException:
            print(stack.dump_logs())
            raise
        finally:
            stack.stop()
    finally:
        if database_url is not None:
            postgres("destroy", tmp_path / "pg")
