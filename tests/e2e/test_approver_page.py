"""The approvers' web page in a real headless Chromium (Debian's), signed in
through the dev issuer's authorization code flow with PKCE.

The control plane (target/local/warden serve --dev) runs on a free port
with a gateway secret; approvals are opened as a gateway opens them
(POST /v1/approvals with x-warden-gateway-key). People sign in on the dev
issuer's form like on any IdP's: the test types a subject, an email and
groups, and the page does the rest (PKCE, state, nonce, token exchange).

Chromium is required: if it is missing the tests fail (bootstrap installs it).
"""

from __future__ import annotations

import base64
import concurrent.futures
import hashlib
import json
import os
import re
import secrets
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from browser.chromium import launch, sign_in_on_dev_form, watched_context  # noqa: E402
from harness.stack import (  # noqa: E402
    ROOT, WARDEN_BIN, Ports, Stack, default_filter_config, http, node_binary, spawn, wait_until)

from playwright.sync_api import expect  # noqa: E402

GATEWAY_SECRET = "browser-test-gateway-secret-0123456789"
TIMEOUT_MS = 15_000
XSS_PROMPT = ('Summarise <script>window.__xss = "script"</script> and '
              '<img src=x onerror="window.__xss = \'img\'"> for [EMAIL_1]')


class ControlPlane:
    def __init__(self, tmp: Path, port: int | None = None, ui_issuer: str | None = None):
        """With --dev; or, given `ui_issuer`, without it and trusting that issuer."""
        port = port or Ports.free().control_plane
        self.url = f"http://127.0.0.1:{port}"
        self.issuer = ui_issuer or f"{self.url}/dev"
        sign_in = ["--issuer", ui_issuer, "--ui-issuer", ui_issuer] if ui_issuer else ["--dev"]
        base = {k: v for k, v in os.environ.items() if not k.startswith("WARDEN_")}
        self.process = spawn(
            "control plane",
            [str(WARDEN_BIN), "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", str(tmp),
             "--public-url", self.url, *sign_in],
            tmp / "control-plane.log",
            env={**base, "WARDEN_GATEWAY_SECRET": GATEWAY_SECRET},
        )
        wait_until("the control plane", lambda: http("GET", f"{self.url}/healthz", timeout=2)[0] == 200,
                   alive=self.process.check_alive)

    def open_approval(self, subject: str, groups: list[str], rule: str = "customer-data",
                      prompt: str = "Send the report to [EMAIL_1] about account [CARD_1]",
                      approvers: list[str] | None = None, mode: str = "hold") -> dict:
        body = {
            "mode": mode, "issuer": self.issuer, "subject": subject, "groups": groups,
            "email": f"{subject}@example.com", "provider": "openai", "model": "gpt-4o-mini",
            "route": "/openai/v1/chat/completions", "rule": rule, "policy_version": 1,
            # A fresh body hash each time: every call opens a new approval.
            "body_sha256": hashlib.sha256(secrets.token_bytes(16)).hexdigest(),
            "masked_prompt": prompt, "approvers": approvers or ["security"], "ttl_seconds": 600,
        }
        status, _, raw = http("POST", f"{self.url}/v1/approvals", body,
                              headers={"x-warden-gateway-key": GATEWAY_SECRET})
        assert status in (200, 201, 202), raw
        answer = json.loads(raw)
        approval = answer.get("approval", answer)
        assert approval["id"].startswith("apr_"), answer
        return approval

    def token(self, sub: str, groups: list[str]) -> str:
        status, _, raw = http("POST", f"{self.url}/dev/token", {"sub": sub, "groups": groups})
        assert status == 200, raw
        return json.loads(raw)["token"]

    def approval(self, approval_id: str, token: str) -> dict:
        status, _, raw = http("GET", f"{self.url}/v1/approvals/{approval_id}",
                              headers={"authorization": f"Bearer {token}"})
        assert status == 200, raw
        return json.loads(raw)

    def stop(self) -> None:
        self.process.stop()


@pytest.fixture(scope="module")
def cp(tmp_path_factory):
    control_plane = ControlPlane(tmp_path_factory.mktemp("approver-page"))
    try:
        yield control_plane
    finally:
        control_plane.stop()


@pytest.fixture
def browser(playwright, tmp_path, cp, request):
    """A fresh Chromium profile per test; the control plane's log on failure. The API's
    refusals the page expects and shows (403, 404, 409) are the only console errors allowed."""
    with watched_context(playwright, tmp_path / "profile", timeout_ms=TIMEOUT_MS, expected_statuses=(403, 404, 409),
                         request=request,
                         logs=lambda: "===== control plane log =====\n" + cp.process.tail(80)) as context:
        yield context


def sign_in(context, cp: ControlPlane, sub: str, groups: list[str], fragment: str = ""):
    """Opens the page and signs in on the dev issuer's form, as a person would."""
    page, query = sign_in_on_dev_form(context, cp.url, "approvals", sub, groups, issuer=cp.issuer,
                                      email=f"{sub}@example.com", fragment=fragment)
    # What the page asked for: the code flow with an S256 challenge, state and nonce.
    assert query["response_type"] == ["code"] and query["code_challenge_method"] == ["S256"]
    assert len(query["code_challenge"][0]) == 43 and query["state"][0] and query["nonce"][0]
    # The code and the state are gone from the address bar; the token was never in it.
    assert page.url == f"{cp.url}/approvals{fragment}", page.url
    return page


def card(page, approval_id: str):
    return page.locator(f'li.card[data-id="{approval_id}"]')


def test_headers_config_and_discovery(cp):
    status, headers, body = http("GET", f"{cp.url}/approvals")
    assert status == 200 and b"<script src=\"/approvals/app.js\"" in body
    csp = headers["content-security-policy"]
    for directive in ("default-src 'self'", "script-src 'self'", "frame-ancestors 'none'",
                      "object-src 'none'", "base-uri 'none'"):
        assert directive in csp, csp
    assert "unsafe" not in csp
    assert headers["x-frame-options"] == "DENY"
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["referrer-policy"] == "no-referrer"
    assert headers["cache-control"] == "no-store"
    # No inline script anywhere in the page (the CSP would block it anyway).
    assert not re.search(rb"<script(?![^>]*\bsrc=)", body)

    status, _, raw = http("GET", f"{cp.url}/v1/ui/config")
    assert status == 200
    config = json.loads(raw)
    assert config["issuer"] == cp.issuer
    assert config["client_id"] == "warden-approvals"
    assert config["authorization_endpoint"] == f"{cp.issuer}/authorize"
    assert config["token_endpoint"] == f"{cp.issuer}/oauth/token"
    assert "openid" in config["scopes"]

    status, _, raw = http("GET", f"{cp.issuer}/.well-known/openid-configuration")
    discovery = json.loads(raw)
    assert discovery["code_challenge_methods_supported"] == ["S256"]
    assert discovery["authorization_endpoint"] == config["authorization_endpoint"]


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def pkce_pair() -> tuple[str, str]:
    verifier = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def test_code_flow_over_http_refuses_replay_wrong_verifier_and_foreign_redirects(cp):
    verifier, challenge = pkce_pair()
    redirect = f"{cp.url}/approvals"
    authorize = {"response_type": "code", "client_id": "warden-approvals", "redirect_uri": redirect,
                 "state": "s1", "nonce": "n1", "code_challenge": challenge,
                 "code_challenge_method": "S256", "scope": "openid email"}

    # An open redirect is refused with a page, not followed.
    for evil in ("http://evil.example/approvals", "//evil.example/", f"{cp.url.replace('127.0.0.1', 'localhost')}/x"):
        status, headers, _ = http("GET", f"{cp.issuer}/authorize?" + urllib.parse.urlencode(
            {**authorize, "redirect_uri": evil}))
        assert status == 400 and "location" not in headers, evil
    status, _, _ = http("GET", f"{cp.issuer}/authorize?" + urllib.parse.urlencode(
        {**authorize, "code_challenge_method": "plain"}))
    assert status == 400

    def get_code(ch: str) -> str:
        form = urllib.parse.urlencode({**authorize, "code_challenge": ch, "sub": "erin",
                                       "groups": "security"}).encode()
        # urllib follows redirects; stop at the 303 to read its Location.
        opener = urllib.request.build_opener(NoRedirect)
        req = urllib.request.Request(f"{cp.issuer}/authorize", data=form, method="POST",
                                     headers={"content-type": "application/x-www-form-urlencoded"})
        try:
            opener.open(req, timeout=10)
            raise AssertionError("expected a redirect")
        except urllib.error.HTTPError as err:
            assert err.code == 303
            location = err.headers["location"]
        assert location.startswith(redirect + "?")
        q = urllib.parse.parse_qs(urllib.parse.urlsplit(location).query)
        assert q["state"] == ["s1"]
        return q["code"][0]

    def exchange(code: str, verifier_: str, redirect_uri: str = redirect) -> tuple[int, dict]:
        form = urllib.parse.urlencode({"grant_type": "authorization_code", "code": code,
                                       "redirect_uri": redirect_uri, "client_id": "warden-approvals",
                                       "code_verifier": verifier_}).encode()
        status, headers, raw = http("POST", f"{cp.issuer}/oauth/token", form,
                                    headers={"content-type": "application/x-www-form-urlencoded"})
        if status == 200:
            assert headers["cache-control"] == "no-store"
        return status, json.loads(raw)

    code = get_code(challenge)
    status, tokens = exchange(code, verifier)
    assert status == 200 and tokens["token_type"] == "Bearer"
    # The access token works on the API; the replayed code does not.
    status, _, _ = http("GET", f"{cp.url}/v1/approvals?status=pending",
                        headers={"authorization": f"Bearer {tokens['access_token']}"})
    assert status == 200
    status, answer = exchange(code, verifier)
    assert (status, answer["error"]) == (400, "invalid_grant")

    other_verifier, _ = pkce_pair()
    code = get_code(challenge)
    status, answer = exchange(code, other_verifier)
    assert (status, answer["error"]) == (400, "invalid_grant")
    code = get_code(challenge)
    status, answer = exchange(code, verifier, redirect_uri=f"{cp.url}/approvals/other")
    assert (status, answer["error"]) == (400, "invalid_grant")


def test_sign_in_approve_and_history(browser, cp):
    approval = cp.open_approval("bob", ["engineering"], rule="customer-data")
    page = sign_in(browser, cp, "alice", ["security"])
    # The session token lives in this tab's sessionStorage, never in the URL.
    saved = json.loads(page.evaluate("sessionStorage.getItem('warden.session')"))
    assert saved["token"].count(".") == 2 and saved["token"] not in page.url

    item = card(page, approval["id"])
    expect(item).to_contain_text("customer-data")
    expect(item).to_contain_text("bob")
    expect(item).to_contain_text("gpt-4o-mini")
    expect(page.locator("#pending-count")).not_to_be_empty()
    item.locator("a").click()
    expect(page.locator("#d-id")).to_have_text(approval["id"])
    expect(page.locator("#d-prompt")).to_have_text("Send the report to [EMAIL_1] about account [CARD_1]")
    expect(page.locator("#d-requester")).to_contain_text("bob@example.com")
    expect(page.locator("#d-groups")).to_have_text("engineering")
    expect(page.locator("#d-mode")).to_contain_text("hold")
    expect(page.locator("#d-expires time")).to_contain_text("in ")

    page.fill("#reason", "ticket SEC-42: customer asked for it")
    page.click("#approve")
    expect(page.locator("#d-status")).to_have_text("approved")
    expect(page.locator("#d-decided-by")).to_contain_text("alice")
    expect(page.locator("#d-reason")).to_have_text("ticket SEC-42: customer asked for it")
    expect(page.locator("#decide")).to_be_hidden()

    stored = cp.approval(approval["id"], cp.token("alice", ["security"]))
    assert stored["status"] == "approved" and stored["decided_by"] == "alice"
    assert stored["reason"] == "ticket SEC-42: customer asked for it"

    page.click("#back")
    expect(card(page, approval["id"])).to_have_count(0)
    page.click("#tab-history")
    decided = card(page, approval["id"])
    expect(decided).to_contain_text("approved by alice")
    expect(decided).to_contain_text("ticket SEC-42")

    page.click("#sign-out")
    expect(page.locator("#sign-in")).to_be_visible()
    assert page.evaluate("sessionStorage.getItem('warden.session')") is None


def test_deny_needs_a_reason_and_a_link_opens_the_approval(browser, cp):
    approval = cp.open_approval("bob", ["engineering"], rule="source-code", mode="ticket")
    # A link from a webhook or the ticket's 403: sign-in returns to it.
    page = sign_in(browser, cp, "carol", ["security"], fragment=f"#{approval['id']}")
    expect(page.locator("#d-id")).to_have_text(approval["id"])
    expect(page.locator("#d-mode")).to_contain_text("ticket")

    page.click("#deny")
    expect(page.locator("#alert")).to_contain_text("reason is required")
    assert cp.approval(approval["id"], cp.token("carol", ["security"]))["status"] == "pending"

    page.fill("#reason", "not for production source code")
    page.click("#deny")
    expect(page.locator("#d-status")).to_have_text("denied")
    expect(page.locator("#d-reason")).to_have_text("not for production source code")
    assert cp.approval(approval["id"], cp.token("carol", ["security"]))["status"] == "denied"


def test_own_requests_and_decided_ones_are_refused(browser, cp):
    own = cp.open_approval("dana", ["security"], rule="own-request")
    other = cp.open_approval("bob", ["engineering"], rule="raced")
    page = sign_in(browser, cp, "dana", ["security"])
    own_card = page.locator("#own-list").locator(f'li.card[data-id="{own["id"]}"]')
    expect(own_card).to_be_visible()
    expect(page.locator("#list").locator(f'li.card[data-id="{own["id"]}"]')).to_have_count(0)
    own_card.locator("a").click()
    expect(page.locator("#d-own")).to_be_visible()
    expect(page.locator("#decide")).to_be_hidden()
    # The server refuses it too, whatever a page shows.
    answer = page.evaluate(
        """async (id) => {
             const {token} = JSON.parse(sessionStorage.getItem('warden.session'));
             const r = await fetch(`/v1/approvals/${id}/approve`, {method: 'POST',
               headers: {authorization: `Bearer ${token}`, 'content-type': 'application/json'},
               body: JSON.stringify({reason: 'me'})});
             return [r.status, await r.json()];
           }""", own["id"])
    assert answer[0] == 403 and answer[1]["error"]["code"] == "self_approval", answer

    # Someone else decides while the page shows the request: the page says so.
    page.goto(f"{cp.url}/approvals#{other['id']}")
    expect(page.locator("#d-id")).to_have_text(other["id"])
    status, _, raw = http("POST", f"{cp.url}/v1/approvals/{other['id']}/approve", {"reason": "quick"},
                          headers={"authorization": f"Bearer {cp.token('erin', ['security'])}"})
    assert status == 200, raw
    page.fill("#reason", "looks fine")
    page.click("#approve")
    expect(page.locator("#alert")).to_contain_text("already been decided")


def test_a_non_approver_has_nothing_to_decide(browser, cp):
    approval = cp.open_approval("bob", ["engineering"], rule="not-yours")
    page = sign_in(browser, cp, "frank", ["engineering"])
    expect(page.locator("#list-empty")).to_have_text("Nothing waits for your decision.")
    expect(card(page, approval["id"])).to_have_count(0)
    expect(page.locator("#approve")).to_be_hidden()
    # Opening it by its link shows no way to decide it.
    page.goto(f"{cp.url}/approvals#{approval['id']}")
    expect(page.locator("#alert")).to_be_visible()
    expect(page.locator("#decide")).to_be_hidden()


def test_markup_in_a_prompt_stays_text(browser, cp):
    approval = cp.open_approval("bob", ["engineering"], rule="xss", prompt=XSS_PROMPT)
    page = sign_in(browser, cp, "alice", ["security"])
    item = card(page, approval["id"])
    expect(item.locator(".c-prompt")).to_have_text(XSS_PROMPT)
    item.locator("a").click()
    expect(page.locator("#d-prompt")).to_have_text(XSS_PROMPT)
    assert page.locator("#d-prompt img, #d-prompt script, li.card img").count() == 0
    page.fill("#reason", '<img src=y onerror="window.__xss = \'reason\'">')
    page.click("#deny")
    expect(page.locator("#d-reason")).to_have_text('<img src=y onerror="window.__xss = \'reason\'">')
    page.click("#back")
    page.click("#tab-history")
    expect(card(page, approval["id"])).to_be_visible()
    assert page.evaluate("window.__xss") is None
    assert page.locator("img").count() == 0


def test_another_name_of_the_server_moves_to_the_registered_one(browser, cp):
    approval = cp.open_approval("bob", ["engineering"], rule="renamed")
    page = browser.new_page()
    page.goto(f"{cp.url.replace('127.0.0.1', 'localhost')}/approvals#{approval['id']}")
    page.wait_for_url(f"{cp.url}/approvals#{approval['id']}")
    page.click("#sign-in")
    page.fill("#sub", "alice")
    page.fill("#groups", "security")
    page.click("#sign-in-submit")
    expect(page.locator("#d-id")).to_have_text(approval["id"])


def test_markup_in_the_sign_in_request_stays_text(browser, cp):
    _, challenge = pkce_pair()
    state = '"><script>window.__xss=1</script><img src=x onerror="window.__xss=2">'
    page = browser.new_page()
    page.goto(f"{cp.issuer}/authorize?" + urllib.parse.urlencode({
        "response_type": "code", "client_id": "<b>warden</b>", "redirect_uri": f"{cp.url}/approvals",
        "state": state, "nonce": "n", "code_challenge": challenge, "code_challenge_method": "S256",
        "scope": "openid"}))
    expect(page.locator("#sub")).to_be_visible()
    assert page.input_value('input[name="state"]') == state
    assert page.locator("main strong").inner_text() == "<b>warden</b>"
    assert page.locator("img, b").count() == 0
    assert page.evaluate("window.__xss") is None


IDP_SCRIPT = Path(__file__).resolve().parents[1] / "browser" / "oidc_idp.mjs"


def test_sign_in_with_a_real_openid_provider(playwright, tmp_path):
    """The same page against oidc-provider (a certified OpenID Provider) in
    place of the dev issuer: its own login and consent pages, discovery, a
    cross-origin token request (CORS), the ID token as the bearer token."""
    ports = Ports.free()
    idp_url = f"http://127.0.0.1:{ports.provider}"
    page_url = f"http://127.0.0.1:{ports.control_plane}/approvals"
    idp = spawn("oidc-provider", [node_binary(), str(IDP_SCRIPT), "--port", str(ports.provider),
                                  "--redirect", page_url], tmp_path / "idp.log")
    cp = None
    context = None
    try:
        wait_until("the OpenID Provider", lambda: http(
            "GET", f"{idp_url}/.well-known/openid-configuration", timeout=2)[0] == 200, alive=idp.check_alive)
        cp = ControlPlane(tmp_path / "cp", port=ports.control_plane, ui_issuer=idp_url)
        approval = cp.open_approval("bob", ["engineering"], rule="real-idp")
        status, _, raw = http("GET", f"{cp.url}/v1/ui/config")
        assert status == 200 and json.loads(raw)["token_endpoint"].startswith(idp_url), raw
        status, headers, _ = http("GET", page_url)
        assert f"connect-src 'self' {idp_url}" in headers["content-security-policy"]

        context = launch(playwright, tmp_path / "profile")
        context.set_default_timeout(TIMEOUT_MS)
        page = context.new_page()
        page.goto(page_url)
        page.click("#sign-in")
        page.wait_for_url(re.compile(re.escape(f"{idp_url}/interaction/")))
        page.fill('input[name="login"]', "alice")
        page.fill('input[name="password"]', "any")
        page.click('button[type="submit"]')
        page.click('button[type="submit"]')  # consent
        expect(page.locator("#who-name")).to_contain_text("alice@example.com")
        assert page.url == page_url
        item = card(page, approval["id"])
        item.locator("a").click()
        page.fill("#reason", "approved through the real IdP")
        page.click("#approve")
        expect(page.locator("#d-status")).to_have_text("approved")
        expect(page.locator("#d-decided-by")).to_contain_text("alice")
    except BaseException:
        sys.stderr.write("\n===== oidc-provider log =====\n" + idp.tail(40) + "\n")
        if cp is not None:
            sys.stderr.write("\n===== control plane log =====\n" + cp.process.tail(60) + "\n")
        raise
    finally:
        if context is not None:
            context.close()
        if cp is not None:
            cp.stop()
        idp.stop()


# Through a real Envoy: the filter holds or tickets a prompt, the approver
# decides in the browser, the held request goes on (or is refused with the
# approver's reason), the ticket passes once.
GATEWAY_POLICY = yaml.safe_load((ROOT / "examples" / "policies" / "approvals.yaml").read_text())
EMAIL = "jane.doe@example.com"


def chat(stack: Stack, token: str, prompt: str) -> tuple[int, dict, dict]:
    status, headers, body = http(
        "POST", f"{stack.gateway_url}/openai/v1/chat/completions",
        body={"model": "gpt-4o", "messages": [{"role": "user", "content": prompt}]},
        headers={"authorization": f"Bearer {token}"}, timeout=90)
    return status, headers, json.loads(body or b"{}")


def test_the_gateway_waits_for_the_page(playwright, tmp_path):
    cfg = default_filter_config()
    cfg["control_plane"].update({"poll_seconds": 1})
    stack = Stack.start(Ports.free(), tmp_path / "stack", filter_config=yaml.safe_dump(cfg))
    context = None
    try:
        admin = stack.token("root", ["warden-admins"])
        alice = stack.token("alice", ["engineering"])
        policy = tmp_path / "policy.yaml"
        policy.write_text(yaml.safe_dump(GATEWAY_POLICY))
        stack.cli("policy", "push", str(policy), "-m", "approvals for the page", token=admin)

        # Ticket mode: an immediate 403 naming the approval and its page.
        ticket_prompt = f"customer export for {EMAIL}, please"
        answer: list = []

        def ticketed() -> bool:
            answer[:] = chat(stack, alice, ticket_prompt)
            return answer[0] == 403
        wait_until("the gateway to enforce the pushed policy", ticketed, timeout=30)
        match = re.search(r"apr_[A-Za-z0-9_-]+", answer[2]["error"]["message"])
        assert match, answer
        ticket = match.group(0)
        assert f"{stack.control_plane_url}/approvals#{ticket}" in json.dumps(answer[2])
        stack.provider_clear()

        context = launch(playwright, tmp_path / "profile")
        context.set_default_timeout(TIMEOUT_MS)
        cp = type("CP", (), {"url": stack.control_plane_url, "issuer": f"{stack.control_plane_url}/dev"})
        page = sign_in(context, cp, "bob", ["security"], fragment=f"#{ticket}")
        expect(page.locator("#d-mode")).to_contain_text("ticket")
        expect(page.locator("#d-prompt")).to_contain_text("customer export")
        # The approver sees the prompt as the gateway masked it.
        assert EMAIL not in page.locator("#d-prompt").inner_text()
        page.fill("#reason", "export ticket OPS-7")
        page.click("#approve")
        expect(page.locator("#d-status")).to_have_text("approved")
        status, _, body = chat(stack, alice, ticket_prompt)
        assert status == 200, body
        status, _, body = chat(stack, alice, ticket_prompt)
        assert status == 403, body  # once

        stack.provider_clear()
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            for decision in ("approve", "deny"):
                forwarded = len(stack.provider_received())
                marker = secrets.token_hex(3)
                held = pool.submit(chat, stack, alice, f"the production database dump {marker}, now")
                page.goto(f"{stack.control_plane_url}/approvals")
                item = page.locator("li.card", has_text=marker)

                def listed() -> bool:
                    page.click("#refresh")
                    page.wait_for_selector("#list-empty, li.card", state="attached")
                    return item.count() == 1
                wait_until("the held request on the page", listed, timeout=30)
                # Held: nothing reached the provider yet.
                assert not held.done() and len(stack.provider_received()) == forwarded
                item.locator("a").click()
                expect(page.locator("#d-mode")).to_contain_text("hold")
                page.fill("#reason", f"{decision}: change CHG-{marker}")
                page.click(f"#{decision}")
                status, headers, body = held.result(timeout=30)
                if decision == "approve":
                    assert status == 200, body
                    assert len(stack.provider_received()) == 1
                else:
                    assert (status, headers.get("x-warden-reason")) == (403, "warden.approval_denied"), body
                    assert f"deny: change CHG-{marker}" in body["error"]["message"]
                    assert len(stack.provider_received()) == 1  # only the approved one
    except BaseException:
        sys.stderr.write("\n" + stack.dump_logs() + "\n")
        raise
    finally:
        if context is not None:
            context.close()
        stack.stop()
