"""The auditors' session replay (/sessions) in a real headless Chromium (Debian's),
on sessions recorded by a real Envoy with the filter (policy `record: masked`).

Real requests go through Envoy: an OpenAI chat whose email the policy masks, an
Anthropic messages request (with markup in it, which must stay text), a ticket
approval approved through the API and then used, a streamed chat, and one each
of the Responses API, completions and a streamed Anthropic answer. Records of
shapes the page does not know are appended as a gateway appends them. An auditor
then signs in on the page through the dev issuer's PKCE flow, opens each session
and the test reads what is rendered: the masked text and never the raw value,
the rules, the decision, the approval's approver and reason, the reassembled
stream and its event count, and the hash chain's verification.
"""

from __future__ import annotations

import json
import re
import secrets
import sys
import urllib.parse
from datetime import datetime, timezone
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from browser.chromium import sign_in_on_dev_form, watched_context  # noqa: E402
from harness.stack import ROOT, Ports, Stack, default_filter_config, http, wait_until  # noqa: E402

from playwright.sync_api import expect  # noqa: E402

TIMEOUT_MS = 15_000
EMAIL = "jane.doe@example.com"
AUDITORS = ["warden-auditors"]
XSS = '<img src=x onerror="window.__xss = 1"><script>window.__xss = 2</script>'
STREAM_REPLY = "the quick brown fox jumps over the lazy dog, streamed in small pieces"

# The example approvals policy (email masked, a ticket rule), recording sessions.
POLICY = yaml.safe_load((ROOT / "examples" / "policies" / "approvals.yaml").read_text())
POLICY["record"] = "masked"


class Recorded:
    """The stack, and what each request of the scenario left behind."""

    def __init__(self, stack: Stack):
        self.stack = stack
        self.run = secrets.token_hex(3)
        self.auditor = stack.token("audrey", AUDITORS)
        self.subjects: dict[str, str] = {}
        self.sessions: dict[str, dict] = {}
        # The Responses, completions and streamed Anthropic sessions, by route.
        self.shapes: dict[str, dict] = {}
        self.approval_id = ""
        self.approval_reason = f"export ticket OPS-{self.run}"

    def subject(self, name: str) -> str:
        return self.subjects.setdefault(name, f"{name}-{self.run}")

    def token(self, name: str) -> str:
        return self.stack.token(self.subject(name), ["engineering"])

    def sessions_of(self, name: str) -> list[dict]:
        query = urllib.parse.urlencode({"subject": self.subject(name)})
        status, _, raw = http("GET", f"{self.stack.control_plane_url}/v1/sessions?{query}",
                              headers={"authorization": f"Bearer {self.auditor}"})
        assert status == 200, raw
        return json.loads(raw)["sessions"]

    def full(self, session_id: str) -> dict:
        status, _, raw = http("GET", f"{self.stack.control_plane_url}/v1/sessions/{urllib.parse.quote(session_id)}",
                              headers={"authorization": f"Bearer {self.auditor}"})
        assert status == 200, raw
        return json.loads(raw)

    def wait_for(self, name: str, *decisions: str) -> dict[str, dict]:
        """The sessions of `name` by decision, once one of each is recorded."""
        found: dict[str, dict] = {}

        def recorded() -> bool:
            found.clear()
            found.update({s["decision"]: s for s in self.sessions_of(name)})
            return all(d in found for d in decisions)

        wait_until(f"the {', '.join(decisions)} session(s) of {self.subject(name)}", recorded, timeout=30)
        return found


def chat(stack: Stack, token: str, prompt: str, **extra) -> tuple[int, dict, bytes]:
    return http("POST", f"{stack.gateway_url}/openai/v1/chat/completions",
                body={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": prompt}], **extra},
                headers={"authorization": f"Bearer {token}"}, timeout=60)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    cfg = default_filter_config()
    cfg["policy"]["record"] = "masked"
    cfg["control_plane"].update({"poll_seconds": 1})
    stack = Stack.start(Ports.free(), tmp_path_factory.mktemp("replay"), filter_config=yaml.safe_dump(cfg))
    try:
        r = Recorded(stack)
        admin = stack.token("root", ["warden-admins"])
        policy = stack.data_dir / "replay-policy.yaml"
        policy.write_text(yaml.safe_dump(POLICY))
        stack.cli("policy", "push", str(policy), "-m", "approvals, recording sessions", token=admin)

        # A ticket: refused at once with the approval's id, once the gateway has the policy
        # (probed by someone else, whose requests before that went under Envoy's own policy).
        ticket_prompt = f"customer export for {EMAIL}, please"
        probe = r.token("probe")
        wait_until("the gateway to enforce the pushed policy",
                   lambda: chat(stack, probe, f"customer export {secrets.token_hex(4)}")[0] == 403, timeout=30)
        answer: list = []

        def ticketed() -> bool:
            answer[:] = chat(stack, r.token("ticket"), ticket_prompt)
            return answer[0] == 403
        wait_until("the ticket's 403", ticketed, timeout=30)
        match = re.search(rb"apr_[A-Za-z0-9_-]+", answer[2])
        assert match, answer
        r.approval_id = match.group(0).decode()
        status, _, raw = http("POST", f"{stack.control_plane_url}/v1/approvals/{r.approval_id}/approve",
                              {"reason": r.approval_reason},
                              headers={"authorization": f"Bearer {stack.token('bob', ['security'])}"})
        assert status == 200, raw
        status, _, raw = chat(stack, r.token("ticket"), ticket_prompt)
        assert status == 200, raw

        status, _, raw = chat(stack, r.token("openai"), f"reply with: write to {EMAIL} about the invoice")
        assert status == 200, raw
        assert EMAIL not in raw.decode()

        status, _, raw = http(
            "POST", f"{stack.gateway_url}/anthropic/v1/messages",
            body={"model": "claude-3-5-haiku-latest", "max_tokens": 64,
                  "system": [{"type": "text", "text": "You answer briefly."}],
                  "messages": [{"role": "user", "content": [{"type": "text", "text": f"reply with: markup {XSS} stays text"}]}]},
            headers={"x-api-key": r.token("anthropic"), "anthropic-version": "2023-06-01"}, timeout=60)
        assert status == 200, raw

        status, headers, raw = chat(stack, r.token("stream"), f"reply with: {STREAM_REPLY}", stream=True)
        assert status == 200 and headers.get("content-type", "").startswith("text/event-stream"), raw

        # The other shapes: OpenAI Responses and completions, a streamed Anthropic answer.
        openai_auth = {"authorization": f"Bearer {r.token('shapes')}"}
        status, _, raw = http("POST", f"{stack.gateway_url}/openai/v1/responses",
                              body={"model": "gpt-4o-mini", "instructions": "Be brief.",
                                    "input": "reply with: a responses answer"},
                              headers=openai_auth, timeout=60)
        assert status == 200, raw
        status, _, raw = http("POST", f"{stack.gateway_url}/openai/v1/completions",
                              body={"model": "gpt-3.5-turbo-instruct", "prompt": "reply with: a completion"},
                              headers=openai_auth, timeout=60)
        assert status == 200, raw
        status, _, raw = http(
            "POST", f"{stack.gateway_url}/anthropic/v1/messages",
            body={"model": "claude-3-5-haiku-latest", "max_tokens": 64, "stream": True,
                  "messages": [{"role": "user", "content": f"reply with: {STREAM_REPLY}"}]},
            headers={"x-api-key": r.token("shapes"), "anthropic-version": "2023-06-01"}, timeout=60)
        assert status == 200, raw

        tickets = r.wait_for("ticket", "approval_pending", "approved")
        r.sessions["ticket_pending"] = tickets["approval_pending"]
        r.sessions["ticket_used"] = tickets["approved"]
        r.sessions["openai"] = r.wait_for("openai", "masked")["masked"]
        r.sessions["anthropic"] = r.wait_for("anthropic", "allowed")["allowed"]
        r.sessions["stream"] = r.wait_for("stream", "allowed")["allowed"]

        def three_shapes() -> bool:
            r.shapes = {s["route"]: s for s in r.sessions_of("shapes")}
            return {"/v1/responses", "/v1/completions", "/v1/messages"} <= set(r.shapes)
        wait_until("the Responses, completions and Anthropic stream sessions", three_shapes, timeout=30)
        yield r
    except BaseException:
        sys.stderr.write("\n" + stack.dump_logs() + "\n")
        raise
    finally:
        stack.stop()


@pytest.fixture
def browser(playwright, tmp_path, recorded, request):
    """A fresh Chromium profile per test; no uncaught error or CSP violation allowed
    (the refusals the page expects and shows, 403 and 404, aside)."""
    with watched_context(playwright, tmp_path / "profile", timeout_ms=TIMEOUT_MS, expected_statuses=(403, 404),
                         request=request, logs=recorded.stack.dump_logs) as context:
        yield context


def sign_in(context, stack: Stack, sub: str, groups: list[str], fragment: str = ""):
    """Opens /sessions and signs in on the dev issuer's form, as a person would."""
    return sign_in_on_dev_form(context, stack.control_plane_url, "sessions", sub, groups, fragment=fragment)[0]


def open_session(page, session_id: str):
    page.goto(f"{page.url.split('#')[0]}#{urllib.parse.quote(session_id)}")
    expect(page.locator("#s-id")).to_have_text(session_id)
    return page


def rule_rows(page) -> list[list[str]]:
    return [[c.strip() for c in row.locator("td").all_inner_texts()]
            for row in page.locator("#s-rules tbody tr").all()]


def test_the_list_verifies_the_chain_and_filters(browser, recorded):
    stack = recorded.stack
    page = sign_in(browser, stack, "audrey", AUDITORS)
    expect(page.locator("#chain-status")).to_contain_text("Hash chain verified")
    checked = json.loads(http("GET", f"{stack.control_plane_url}/v1/sessions/verify",
                              headers={"authorization": f"Bearer {recorded.auditor}"})[2])
    assert checked["ok"] is True
    expect(page.locator("#chain-status")).to_contain_text("intact")
    expect(page.locator("#nav-sessions")).to_have_attribute("aria-current", "page")

    rows = page.locator("#sessions-list tr.session-row")
    for s in recorded.sessions.values():
        expect(page.locator(f'#sessions-list tr[data-id="{s["id"]}"]')).to_have_count(1)

    # By subject: the two ticket records only.
    page.fill("#f-subject", recorded.subject("ticket"))
    page.click("#f-apply")
    expect(rows).to_have_count(2)
    # By decision: the approved one only.
    page.select_option("#f-decision", "approved")
    page.click("#f-apply")
    expect(rows).to_have_count(1)
    row = page.locator(f'#sessions-list tr[data-id="{recorded.sessions["ticket_used"]["id"]}"]')
    expect(row.locator(".r-decision")).to_have_text("approved")
    expect(row.locator(".r-rules")).to_contain_text("prod-ticket")
    # By time: nothing was recorded in the year 2000.
    page.select_option("#f-decision", "")
    page.fill("#f-subject", "")
    page.fill("#f-since", "2000-01-01T00:00:00")
    page.fill("#f-until", "2000-12-31T23:59:59")
    page.click("#f-apply")
    expect(page.locator("#sessions-empty")).to_be_visible()
    expect(rows).to_have_count(0)
    page.click("#f-clear")
    expect(rows.first).to_be_visible()
    assert rows.count() >= len(recorded.sessions)

    # A row opens its session; back returns to the list.
    page.locator(f'#sessions-list tr[data-id="{recorded.sessions["openai"]["id"]}"] a').click()
    expect(page.locator("#s-id")).to_have_text(recorded.sessions["openai"]["id"])
    page.click("#s-back")
    expect(rows.first).to_be_visible()


def test_a_masked_openai_chat_replays_masked(browser, recorded):
    session = recorded.sessions["openai"]
    page = sign_in(browser, recorded.stack, "audrey", AUDITORS, fragment=f"#{session['id']}")
    expect(page.locator("#s-id")).to_have_text(session["id"])
    user = page.locator('#s-messages .msg.asked[data-role="user"] .msg-text')
    expect(user).to_have_text("reply with: write to [EMAIL] about the invoice")
    answer = page.locator("#s-messages .msg.answer .msg-text")
    expect(answer).to_have_text("write to [EMAIL] about the invoice")
    expect(page.locator("#s-decision")).to_have_text("masked")
    expect(page.locator("#s-provider")).to_have_text("openai")
    expect(page.locator("#s-model")).to_have_text("gpt-4o-mini")
    expect(page.locator("#s-route")).to_have_text("/v1/chat/completions")
    expect(page.locator("#s-subject")).to_have_text(recorded.subject("openai"))
    expect(page.locator("#s-policy")).to_have_text("1")
    expect(page.locator("#s-status")).to_have_text("200")
    expect(page.locator("#s-usage")).to_contain_text("prompt_tokens")
    expect(page.locator("#s-approval")).to_be_hidden()
    full = recorded.full(session["id"])
    expect(page.locator("#s-seq")).to_have_text(str(full["seq"]))
    expect(page.locator("#s-hash")).to_have_text(full["hash"])
    rules = rule_rows(page)
    assert ["personal-data", "mask", "2"] in rules or ["personal-data", "mask", "1"] in rules, rules
    # The raw value is nowhere on the page, not even in the stored JSON view.
    page.locator("#s-raw summary").click()
    expect(page.locator("#s-raw-json")).to_contain_text("[EMAIL]")
    assert EMAIL not in page.content()
    assert EMAIL not in page.locator("body").inner_text()


def test_an_anthropic_exchange_replays_and_markup_stays_text(browser, recorded):
    session = recorded.sessions["anthropic"]
    page = sign_in(browser, recorded.stack, "audrey", AUDITORS, fragment=f"#{session['id']}")
    expect(page.locator('#s-messages .msg.asked[data-role="system"] .msg-text')).to_have_text("You answer briefly.")
    expect(page.locator('#s-messages .msg.asked[data-role="user"] .msg-text')).to_have_text(
        f"reply with: markup {XSS} stays text")
    expect(page.locator("#s-messages .msg.answer .msg-text")).to_have_text(f"markup {XSS} stays text")
    expect(page.locator("#s-messages .msg.answer .msg-meta")).to_contain_text("stop reason")
    expect(page.locator("#s-provider")).to_have_text("anthropic")
    expect(page.locator("#s-route")).to_have_text("/v1/messages")
    expect(page.locator("#s-decision")).to_have_text("allowed")
    expect(page.locator("#s-no-rules")).to_be_visible()
    assert page.locator("#s-messages img, #s-messages script").count() == 0
    assert page.evaluate("window.__xss") is None


def test_an_approved_ticket_shows_its_approval(browser, recorded):
    used = recorded.sessions["ticket_used"]
    page = sign_in(browser, recorded.stack, "audrey", AUDITORS, fragment=f"#{used['id']}")
    expect(page.locator("#s-decision")).to_have_text("approved")
    expect(page.locator('#s-messages .msg.asked[data-role="user"] .msg-text')).to_have_text(
        "customer export for [EMAIL], please")
    expect(page.locator("#s-approval")).to_be_visible()
    expect(page.locator("#sa-id")).to_have_text(recorded.approval_id)
    expect(page.locator("#sa-decided-by")).to_contain_text("bob")
    expect(page.locator("#sa-reason")).to_have_text(recorded.approval_reason)
    expect(page.locator("#sa-rule")).to_have_text("prod-ticket")
    expect(page.locator("#sa-mode")).to_have_text("ticket")
    expect(page.locator("#sa-requester")).to_contain_text(recorded.subject("ticket"))
    expect(page.locator("#sa-status")).to_have_text("consumed")
    assert ["prod-ticket", "require_approval", "1"] in rule_rows(page), rule_rows(page)
    assert EMAIL not in page.content()

    # The refusal that opened it: no request kept, the same approval beside it.
    pending = recorded.sessions["ticket_pending"]
    open_session(page, pending["id"])
    expect(page.locator("#s-decision")).to_have_text("approval_pending")
    expect(page.locator("#s-status")).to_have_text("403")
    expect(page.locator("#s-note")).to_contain_text("not kept when the gateway refused it")
    expect(page.locator("#sa-id")).to_have_text(recorded.approval_id)
    expect(page.locator("#sa-reason")).to_have_text(recorded.approval_reason)
    assert EMAIL not in page.content()


def test_a_streamed_answer_is_reassembled(browser, recorded):
    session = recorded.sessions["stream"]
    response = recorded.full(session["id"])["record"].get("response") or {}
    page = sign_in(browser, recorded.stack, "audrey", AUDITORS, fragment=f"#{session['id']}")
    expect(page.locator('#s-messages .msg.asked[data-role="user"] .msg-text')).to_have_text(
        f"reply with: {STREAM_REPLY}")
    expect(page.locator("#s-messages .msg.answer .msg-text")).to_have_text(STREAM_REPLY)
    events = response.get("stream", {}).get("events")
    assert isinstance(events, int) and events > 1, response
    expect(page.locator("#s-messages .stream-info")).to_contain_text(f"streamed: {events} events")


def test_responses_completions_and_an_anthropic_stream_replay(browser, recorded):
    shapes = recorded.shapes
    page = sign_in(browser, recorded.stack, "audrey", AUDITORS, fragment=f"#{shapes['/v1/responses']['id']}")
    expect(page.locator('#s-messages .msg.asked[data-role="instructions"] .msg-text')).to_have_text("Be brief.")
    expect(page.locator("#s-messages .msg.asked .msg-text").nth(1)).to_have_text("reply with: a responses answer")
    expect(page.locator("#s-messages .msg.answer .msg-text")).to_have_text("a responses answer")
    expect(page.locator("#s-route")).to_have_text("/v1/responses")

    open_session(page, shapes["/v1/completions"]["id"])
    expect(page.locator('#s-messages .msg.asked[data-role="prompt"] .msg-text')).to_have_text("reply with: a completion")
    expect(page.locator("#s-messages .msg.answer .msg-text")).to_have_text("a completion")

    session = shapes["/v1/messages"]
    events = (recorded.full(session["id"])["record"].get("response") or {}).get("stream", {}).get("events")
    assert isinstance(events, int) and events > 1
    open_session(page, session["id"])
    expect(page.locator("#s-messages .msg.answer .msg-text")).to_have_text(STREAM_REPLY)
    expect(page.locator("#s-messages .stream-info")).to_contain_text(f"streamed: {events} events (anthropic)")


def test_unknown_and_partial_records_still_show(browser, recorded):
    """Records the page must tolerate, appended as a gateway appends them (the
    control plane's batch API with the gateway's secret): an answer not
    recorded, shapes the page does not know, optional fields missing (the API
    reads each record into the gateway's own type, so the fields it requires
    are sent), metadata only."""
    stack = recorded.stack
    run = recorded.run
    now = datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    required = {"time": now, "groups": [], "route": "/v1/chat/completions", "policy_version": 1, "rules": ""}
    records = [
        {"id": f"omitted-{run}", "subject": f"odd-{run}", "decision": "allowed", "record": "masked",
         "request": {"messages": [{"role": "user", "content": [{"type": "text", "text": "look"},
                                                                {"type": "image_url", "image_url": {"url": "data:x"}}]}]},
         "response": {"omitted": "the answer was too large to record"}},
        {"id": f"unknown-{run}", "subject": f"odd-{run}", "decision": "masked", "record": "masked",
         "rules": "a:b:mask:3,shadow:observe:block:1",
         "request": {"weird": ["shape", 1]}, "response": {"also": {"weird": True}}},
        {"id": f"tools-{run}", "subject": f"odd-{run}", "decision": "allowed", "record": "masked",
         "request": {"messages": [{"role": "user", "content": "weather?"}],
                     "tools": [{"type": "function", "function": {"name": "get_weather"}}]},
         "response": {"stream": {"api": "openai_chat", "events": 7, "truncated": True},
                      "channels": [{"index": 1, "kind": "tool_arguments", "text": "{\"city\":\"Paris\"}"},
                                   {"index": 0, "kind": "text", "text": "Let me check."}]}},
        {"id": f"metadata-{run}", "subject": f"odd-{run}", "decision": "allowed", "record": "metadata"},
    ]
    records = [{**required, **record} for record in records]
    status, _, raw = http("POST", f"{stack.control_plane_url}/v1/sessions", {"records": records},
                          headers={"x-warden-gateway-key": stack.gateway_secret})
    assert status == 200, raw
    page = sign_in(browser, stack, "audrey", AUDITORS, fragment=f"#omitted-{run}")
    expect(page.locator("#s-note")).to_contain_text("not recorded: the answer was too large to record")
    expect(page.locator('#s-messages .msg.asked[data-role="user"] .msg-note')).to_have_text("[an image]")
    expect(page.locator("#s-messages .msg.answer")).to_have_count(0)
    expect(page.locator("#s-model")).to_have_text("\u2014")

    open_session(page, f"unknown-{run}")
    expect(page.locator("#s-messages .msg.asked pre")).to_contain_text('"weird"')
    expect(page.locator("#s-messages .msg.answer pre")).to_contain_text('"also"')
    assert ["a:b", "mask", "3"] in rule_rows(page) and ["shadow", "block (observed only)", "1"] in rule_rows(page)

    open_session(page, f"tools-{run}")
    answer = page.locator("#s-messages .msg.answer")
    expect(answer.locator(".msg-text")).to_have_text("Let me check.")
    expect(answer.locator("figcaption")).to_have_text("tool arguments")
    expect(answer.locator("pre")).to_contain_text('"city": "Paris"')
    expect(answer.locator(".stream-info")).to_contain_text("streamed: 7 events")
    expect(answer.locator(".stream-info")).to_contain_text("truncated")
    expect(page.locator("#s-messages .msg.asked .msg-meta")).to_have_text("tools offered: get_weather")

    open_session(page, f"metadata-{run}")
    expect(page.locator("#s-note")).to_contain_text("metadata only")
    expect(page.locator("#s-messages .msg")).to_have_count(0)


def test_people_outside_the_auditors_are_told(browser, recorded):
    session = recorded.sessions["openai"]
    page = sign_in(browser, recorded.stack, "erin", ["engineering"], fragment=f"#{session['id']}")
    expect(page.locator("#alert")).to_contain_text("auditors only")
    expect(page.locator("#s-messages .msg")).to_have_count(0)
    page.click("#s-back")
    expect(page.locator("#alert")).to_contain_text("auditors only")
    expect(page.locator("#sessions-list tr")).to_have_count(0)


def test_the_sessions_view_has_the_pages_headers(recorded):
    status, headers, body = http("GET", f"{recorded.stack.control_plane_url}/sessions")
    assert status == 200 and b'<script src="/approvals/app.js"' in body
    csp = headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe" not in csp
    assert not re.search(rb"<script(?![^>]*\bsrc=)", body)
    assert not re.search(rb"\sstyle=", body)
