"""SAML 2.0 sign-in end to end: the control plane as the service provider of a
real SAML IdP (the npm package saml-idp, tests/harness/saml_idp.py) and, in
front of it, as the OpenID issuer `<public_url>/idp` that the approvers'
page, `warden login` and the gateway trust.

    warden serve --public-url P --saml-idp-metadata IDP-METADATA.xml
    SP entity id (the Audience): P/saml/metadata, ACS (HTTP-POST): P/saml/acs
    P/idp/authorize -> 303 to the IdP (HTTP-Redirect, SAMLRequest + RelayState)
    IdP -> POST P/saml/acs -> 303 to the client's redirect_uri with code and state

People sign in in Chromium on the IdP's own form. The attacks are built
from genuine responses the IdP signed for a sign-in the control plane
started (captured in the browser, or asked for over HTTP as the form would),
then replayed or changed, and posted to the ACS: each must get 400, an HTML
page with `saml_refused`, and no redirect (so no code). Where an attack
depends on a signature still verifying (a comment in the NameID, signature
wrapping, another audience, SHA-1), the test first shows with xml-crypto that
it does, so the refusal is the control plane's judgement.

The first test needs no control plane: it shows that the IdP signs what
the others assume (it guards the harness).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import secrets
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
import xml.etree.ElementTree as ET
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from xml.dom import minidom

import httpx2 as httpx
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from browser.chromium import loopback_only_context  # noqa: E402
from harness import saml_idp  # noqa: E402
from harness.saml_idp import KeyPair, Posted, SamlIdp  # noqa: E402
from harness.stack import WARDEN_BIN, Ports, Stack, default_filter_config, http, wait_until  # noqa: E402

from playwright.sync_api import expect  # noqa: E402

SAMLP = "urn:oasis:names:tc:SAML:2.0:protocol"
SAML = "urn:oasis:names:tc:SAML:2.0:assertion"
MD = "urn:oasis:names:tc:SAML:2.0:metadata"
DS = "http://www.w3.org/2000/09/xmldsig#"
RSA_SHA256 = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"
SHA256 = "http://www.w3.org/2001/04/xmlenc#sha256"
REDIRECT_BINDING = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect"
POST_BINDING = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST"
CLI_CLIENT = "warden-cli"
PAGE_CLIENT = "warden-approvals"
SCOPE = "openid email offline_access"
ADMINS = "warden-admins"
TIMEOUT_MS = 15_000
POLICY = """\
version: 1
groups:
  engineering:
    models: ["gpt-4o-mini"]
rules: []
"""


def claims(token: str) -> dict:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def pkce_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def authn_request(url: str) -> tuple[ET.Element, str]:
    """The AuthnRequest (HTTP-Redirect binding: deflated, base64) and the
    RelayState of a redirect to the IdP."""
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
    xml = zlib.decompress(base64.b64decode(query["SAMLRequest"][0]), -15)
    return ET.fromstring(xml), query["RelayState"][0]


# --- the stack: one control plane trusting one IdP ---------------------------------------


class Sp:
    """Where the control plane lives and what it calls itself."""

    def __init__(self, ports: Ports):
        self.public = f"http://127.0.0.1:{ports.control_plane}"
        self.issuer = f"{self.public}/idp"
        self.entity_id = f"{self.public}/saml/metadata"
        self.acs = f"{self.public}/saml/acs"


@pytest.fixture(scope="module")
def ports():
    return Ports.free()


@pytest.fixture(scope="module")
def sp(ports):
    return Sp(ports)


@pytest.fixture(scope="module")
def keys():
    """The key pair of the IdP the control plane trusts (shared with the
    second IdPs that sign genuinely, but for another audience or with SHA-1)."""
    return KeyPair.generate()


@pytest.fixture(scope="module")
def idp(ports, sp, keys, tmp_path_factory):
    # On the stack's spare port (it runs no MCP server), so it cannot take one the stack needs.
    server = SamlIdp(tmp_path_factory.mktemp("saml-idp"), acs_url=sp.acs, audience=sp.entity_id, keys=keys,
                     port=ports.mcp)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def saml_stack(ports, sp, idp, tmp_path_factory):
    data = tmp_path_factory.mktemp("stack")
    metadata = idp.write_metadata(data / "idp-metadata.xml")
    config = default_filter_config()
    config["authentication"]["issuers"].append(
        {"issuer": sp.issuer, "audiences": ["warden"], "jwks": {"cluster": "warden_control_plane",
                                                                "path": "/idp/jwks.json"}})
    s = Stack.start(ports, data, filter_config=yaml.safe_dump(config),
                    control_plane_args=["--public-url", sp.public, "--saml-idp-metadata", str(metadata)])
    try:
        policy = data / "saml-policy.yaml"
        policy.write_text(POLICY)
        s.cli("policy", "push", str(policy), "-m", "saml tests", token=s.token("root", [ADMINS]))
        yield s
    except BaseException:
        sys.stderr.write(s.dump_logs() + "\n----- saml-idp -----\n" + idp.process.tail(40))
        raise
    finally:
        s.stop()


@pytest.fixture
def stack(saml_stack, idp, request):
    """The module's stack; its logs and the IdP's are printed when the test failed."""
    yield saml_stack
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        sys.stderr.write(f"\n===== logs for {request.node.nodeid} =====\n{saml_stack.dump_logs()}\n"
                         f"----- saml-idp -----\n{idp.process.tail(60)}\n")


@pytest.fixture
def browser(playwright, tmp_path):
    """A fresh Chromium profile; nothing but loopback is reachable."""
    with loopback_only_context(playwright, tmp_path / "profile", timeout_ms=TIMEOUT_MS) as context:
        yield context


@pytest.fixture
def client():
    """An HTTP client with a cookie jar (the control plane may bind a sign-in
    to the browser that started it) that follows no redirect."""
    with httpx.Client(timeout=30) as c:
        yield c


class Flow:
    """One sign-in a client starts at the control plane's issuer: the
    authorization code flow with PKCE and a loopback redirect_uri (as
    `warden login` does; nobody listens there: the test reads the 303)."""

    def __init__(self, client: httpx.Client, sp: Sp, client_id: str = CLI_CLIENT):
        self.client, self.sp, self.client_id = client, sp, client_id
        self.verifier, challenge = pkce_pair()
        self.state = secrets.token_urlsafe(16)
        self.redirect_uri = f"http://127.0.0.1:{Ports.free().gateway}/callback"
        answer = client.get(f"{sp.issuer}/authorize", params={
            "response_type": "code", "client_id": client_id, "redirect_uri": self.redirect_uri,
            "scope": SCOPE, "state": self.state, "nonce": secrets.token_urlsafe(8),
            "code_challenge": challenge, "code_challenge_method": "S256"})
        assert answer.status_code == 303, answer.text[:300]
        self.sso_redirect = answer.headers["location"]
        request, self.relay_state = authn_request(self.sso_redirect)
        self.request_id = request.get("ID")

    def post(self, posted: Posted, relay_state: str | None = None) -> httpx.Response:
        return self.client.post(self.sp.acs, data=posted.form(relay_state))

    def code(self, answer: httpx.Response) -> str:
        assert answer.status_code == 303, answer.text[:500]
        location = answer.headers["location"]
        assert location.startswith(self.redirect_uri + "?"), location
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(location).query)
        assert query["state"] == [self.state]
        return query["code"][0]

    def tokens(self, answer: httpx.Response) -> dict:
        """The tokens the ACS's redirect leads to (the code exchanged)."""
        exchanged = self.client.post(f"{self.sp.issuer}/oauth/token", data={
            "grant_type": "authorization_code", "code": self.code(answer), "redirect_uri": self.redirect_uri,
            "client_id": self.client_id, "code_verifier": self.verifier})
        assert exchanged.status_code == 200, exchanged.text
        return exchanged.json()


def assert_refused(answer: httpx.Response, posted: Posted, *not_shown: str) -> None:
    """400, an HTML page naming `saml_refused`, no redirect (so no code), and
    nothing of the response echoed."""
    assert answer.status_code == 400, (answer.status_code, answer.headers.get("location"), answer.text[:300])
    assert "location" not in answer.headers
    assert answer.headers.get("content-type", "").startswith("text/html"), answer.headers.get("content-type")
    assert "saml_refused" in answer.text
    middle = len(posted.saml_response) // 2
    assert posted.saml_response[middle:middle + 48] not in answer.text
    for text in not_shown:
        assert text not in answer.text


def genuine(idp: SamlIdp, flow: Flow, name_id: str, groups: list[str] | None = None) -> Posted:
    """What the IdP signs for `name_id` in answer to the flow's AuthnRequest."""
    return idp.respond(flow.sso_redirect, name_id, name_id, groups or ["engineering"])


# --- the IdP itself (no control plane) ------------------------------------------------------


class AcsCatcher:
    """A stand-in ACS that records what is posted to it."""

    def __init__(self):
        posts = self.posts = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - the standard library's name
                body = self.rfile.read(int(self.headers["content-length"])).decode()
                posts.append(urllib.parse.parse_qs(body, keep_blank_values=True))
                self.send_response(200)
                self.send_header("content-type", "text/plain")
                self.end_headers()
                self.wfile.write(b"caught")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def redirect_to(sso_url: str, request_id: str, issuer: str, acs: str, relay_state: str) -> str:
    """An SP's AuthnRequest by the HTTP-Redirect binding."""
    xml = (f'<samlp:AuthnRequest xmlns:samlp="{SAMLP}" xmlns:saml="{SAML}" ID="{request_id}" Version="2.0" '
           f'IssueInstant="{time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}" Destination="{sso_url}" '
           f'AssertionConsumerServiceURL="{acs}" ProtocolBinding="{POST_BINDING}">'
           f'<saml:Issuer>{issuer}</saml:Issuer></samlp:AuthnRequest>')
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    raw = deflate.compress(xml.encode()) + deflate.flush()
    return sso_url + "?" + urllib.parse.urlencode({"SAMLRequest": base64.b64encode(raw).decode(),
                                                  "RelayState": relay_state})


def check_signed_response(idp: SamlIdp, posted: Posted, *, acs: str, audience: str, name_id: str,
                          email: str, groups: list[str], request_id: str | None) -> None:
    """Everything the control plane relies on, in one response."""
    root = ET.fromstring(posted.xml)
    assert root.tag == f"{{{SAMLP}}}Response"
    assert root.get("Destination") == acs and root.get("InResponseTo") == request_id
    assert root.find(f"{{{SAML}}}Issuer").text == idp.issuer
    assert root.find(f"{{{SAMLP}}}Status/{{{SAMLP}}}StatusCode").get("Value").endswith(":Success")
    [assertion] = root.findall(f"{{{SAML}}}Assertion")
    assert root.find(f"{{{DS}}}Signature") is not None and assertion.find(f"{{{DS}}}Signature") is not None
    subject = assertion.find(f"{{{SAML}}}Subject")
    name = subject.find(f"{{{SAML}}}NameID")
    assert (name.text, name.get("Format")) == (name_id, saml_idp.NAMEID_EMAIL)
    confirmation = subject.find(f"{{{SAML}}}SubjectConfirmation")
    assert confirmation.get("Method") == "urn:oasis:names:tc:SAML:2.0:cm:bearer"
    data = confirmation.find(f"{{{SAML}}}SubjectConfirmationData")
    assert data.get("Recipient") == acs and data.get("InResponseTo") == request_id and data.get("NotOnOrAfter")
    conditions = assertion.find(f"{{{SAML}}}Conditions")
    assert [a.text for a in conditions.iter(f"{{{SAML}}}Audience")] == [audience]
    assert conditions.get("NotBefore") and conditions.get("NotOnOrAfter")
    attributes = {a.get("Name"): (a.get("NameFormat"), [v.text for v in a.findall(f"{{{SAML}}}AttributeValue")])
                  for a in assertion.iter(f"{{{SAML}}}Attribute")}
    basic = "urn:oasis:names:tc:SAML:2.0:attrname-format:basic"
    assert attributes == {"email": (basic, [email]), "groups": (basic, groups)}

    signatures = idp.verify(posted.xml)
    assert [(s["parent"], s["reference"]) for s in signatures] == [
        ("Response", f"#{root.get('ID')}"), ("Assertion", f"#{assertion.get('ID')}")]
    for s in signatures:
        assert (s["valid"], s["signatureAlgorithm"], s["digestAlgorithm"]) == (True, RSA_SHA256, SHA256), s
    assert not any(s["valid"] for s in idp.verify(posted.xml, KeyPair.generate().cert_pem))


def test_the_saml_idp_signs_as_these_tests_assume(browser, tmp_path):
    catcher = AcsCatcher()
    acs, audience = f"{catcher.url}/saml/acs", f"{catcher.url}/saml/metadata"
    idp = SamlIdp(tmp_path / "idp", acs_url=acs, audience=audience)
    try:
        metadata = ET.fromstring(idp.metadata_xml)
        assert metadata.get("entityID") == idp.issuer
        descriptor = metadata.find(f"{{{MD}}}IDPSSODescriptor")
        sso = {s.get("Binding"): s.get("Location") for s in descriptor.findall(f"{{{MD}}}SingleSignOnService")}
        assert sso == {REDIRECT_BINDING: idp.sso_url, POST_BINDING: idp.sso_url}
        [cert] = [c.text for c in descriptor.iter(f"{{{DS}}}X509Certificate")]
        assert cert == idp.keys.cert_base64

        # In Chromium, answering an AuthnRequest (HTTP-Redirect binding).
        request_id, relay = f"_{uuid.uuid4().hex}", secrets.token_urlsafe(16)
        page = browser.new_page()
        page.goto(redirect_to(idp.sso_url, request_id, audience, acs, relay))
        posted = saml_idp.sign_in(page, "ada@example.com", "ada.l@example.com", ["engineering", ADMINS])
        expect(page.locator("body")).to_have_text("caught")
        assert (posted.acs_url, posted.relay_state) == (acs, relay)
        assert [p["SAMLResponse"] for p in catcher.posts] == [[posted.saml_response]]
        check_signed_response(idp, posted, acs=acs, audience=audience, name_id="ada@example.com",
                              email="ada.l@example.com", groups=["engineering", ADMINS], request_id=request_id)

        # Captured: the same, kept from the ACS.
        request_id = f"_{uuid.uuid4().hex}"
        page.goto(redirect_to(idp.sso_url, request_id, audience, acs, relay))
        posted = saml_idp.capture(page, "bob@example.com", "bob@example.com", ["finance"])
        assert len(catcher.posts) == 1 and posted.relay_state == relay
        check_signed_response(idp, posted, acs=acs, audience=audience, name_id="bob@example.com",
                              email="bob@example.com", groups=["finance"], request_id=request_id)

        # Over HTTP, as the form does; and unasked (IdP-initiated: no InResponseTo, no RelayState).
        request_id = f"_{uuid.uuid4().hex}"
        posted = idp.respond(redirect_to(idp.sso_url, request_id, audience, acs, relay), "cy@example.com",
                             "cy@example.com", ["a", "b", "c"])
        assert (posted.acs_url, posted.relay_state) == (acs, relay)
        check_signed_response(idp, posted, acs=acs, audience=audience, name_id="cy@example.com",
                              email="cy@example.com", groups=["a", "b", "c"], request_id=request_id)
        posted = idp.respond(None, "dee@example.com", "dee@example.com", ["engineering"])
        assert posted.relay_state == ""
        check_signed_response(idp, posted, acs=acs, audience=audience, name_id="dee@example.com",
                              email="dee@example.com", groups=["engineering"], request_id=None)

        # Its /settings switch it to SHA-1 (the weak-algorithm test's IdP).
        idp.settings(signatureAlgorithm="rsa-sha1", digestAlgorithm="sha1")
        posted = idp.respond(None, "dee@example.com", "dee@example.com", ["engineering"])
        assert [(s["valid"], s["signatureAlgorithm"], s["digestAlgorithm"]) for s in idp.verify(posted.xml)] == [
            (True, f"{DS}rsa-sha1", f"{DS}sha1")] * 2
    except BaseException:
        sys.stderr.write("\n----- saml-idp -----\n" + idp.process.tail(60) + "\n")
        raise
    finally:
        idp.stop()
        catcher.stop()


# --- signing in ---------------------------------------------------------------------------


def test_sp_metadata_discovery_and_login_settings(stack, sp):
    status, headers, body = http("GET", sp.entity_id)
    assert status == 200 and "xml" in headers["content-type"], (status, headers)
    metadata = ET.fromstring(body)
    assert metadata.get("entityID") == sp.entity_id
    acs = [(a.get("Binding"), a.get("Location")) for a in metadata.iter(f"{{{MD}}}AssertionConsumerService")]
    assert acs == [(POST_BINDING, sp.acs)]

    status, _, body = http("GET", f"{sp.issuer}/.well-known/openid-configuration")
    assert status == 200
    discovery = json.loads(body)
    assert (discovery["issuer"], discovery["authorization_endpoint"], discovery["token_endpoint"],
            discovery["jwks_uri"]) == (sp.issuer, f"{sp.issuer}/authorize", f"{sp.issuer}/oauth/token",
                                       f"{sp.issuer}/jwks.json")
    status, _, body = http("GET", f"{sp.public}/v1/login")
    assert status == 200
    login = json.loads(body)
    assert (login["issuer"], login["client_id"]) == (sp.issuer, CLI_CLIENT)


def test_a_genuine_response_gives_tokens_with_the_idps_user_and_groups(stack, sp, idp, client):
    """The HTTP path the attacks start from: it works with a genuine response,
    so their refusals below are about what they change."""
    flow = Flow(client, sp)
    request, _ = authn_request(flow.sso_redirect)
    assert flow.sso_redirect.startswith(idp.sso_url + "?")
    assert request.tag == f"{{{SAMLP}}}AuthnRequest" and flow.request_id
    assert request.find(f"{{{SAML}}}Issuer").text == sp.entity_id

    posted = genuine(idp, flow, "ada@example.com", ["engineering", ADMINS])
    assert posted.acs_url == sp.acs and posted.relay_state == flow.relay_state
    assert ET.fromstring(posted.xml).get("InResponseTo") == flow.request_id
    tokens = flow.tokens(flow.post(posted))
    access = claims(tokens["access_token"])
    assert (access["iss"], access["sub"], access["aud"], access["email"]) == (
        sp.issuer, "ada@example.com", "warden", "ada@example.com")
    assert sorted(access["groups"]) == sorted(["engineering", ADMINS])
    assert tokens["refresh_token"]

    # The groups attribute decides who is an admin.
    nobody = {"owner": f"left-{uuid.uuid4().hex[:8]}@example.com"}
    answer = client.post(f"{sp.public}/v1/keys/revoke", json=nobody,
                         headers={"authorization": f"Bearer {tokens['access_token']}"})
    assert answer.status_code == 200 and answer.json()["revoked"] == 0, answer.text
    flow = Flow(client, sp)
    plain = flow.tokens(flow.post(genuine(idp, flow, "bob@example.com", ["engineering"])))
    assert claims(plain["access_token"])["groups"] == ["engineering"]
    answer = client.post(f"{sp.public}/v1/keys/revoke", json=nobody,
                         headers={"authorization": f"Bearer {plain['access_token']}"})
    assert answer.status_code == 403 and answer.json()["error"]["code"] == "admin_required", answer.text


@pytest.mark.parametrize("signed", ["assertion only", "response only"])
def test_a_response_signed_on_one_level_only_is_accepted(stack, sp, keys, client, tmp_path, signed):
    """IdPs sign the Assertion, the Response, or both (the main IdP here):
    one valid signature by the trusted key, covering the assertion, is enough."""
    other = SamlIdp(tmp_path / "other", acs_url=sp.acs, audience=sp.entity_id, keys=keys,
                    sign_response=signed == "response only", name="other-saml-idp")
    try:
        if signed == "response only":
            other.settings(signAssertion="false")
        flow = Flow(client, sp)
        posted = other.respond(flow.sso_redirect, "lee@example.com", "lee@example.com", ["engineering"])
        parent = "Assertion" if signed == "assertion only" else "Response"
        assert [(s["parent"], s["valid"]) for s in other.verify(posted.xml)] == [(parent, True)]
        tokens = flow.tokens(flow.post(posted))
        assert claims(tokens["access_token"])["sub"] == "lee@example.com"
    finally:
        other.stop()


def test_the_web_page_signs_in_through_saml(stack, sp, idp, browser):
    page = browser.new_page()
    page.goto(f"{sp.public}/approvals")
    expect(page.locator("#signed-out-approvals")).to_be_visible()
    with page.expect_request(lambda r: r.url.startswith(f"{sp.issuer}/authorize?")) as asked:
        page.click("#sign-in")
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(asked.value.url).query)
    assert (query["client_id"], query["redirect_uri"], query["code_challenge_method"]) == (
        [PAGE_CLIENT], [f"{sp.public}/approvals"], ["S256"])
    page.wait_for_url(re.compile(re.escape(idp.sso_url + "?")))
    request, relay_state = authn_request(page.url)
    assert request.find(f"{{{SAML}}}Issuer").text == sp.entity_id

    posted = saml_idp.sign_in(page, "ada@example.com", "ada@example.com", ["engineering", ADMINS])
    assert (posted.acs_url, posted.relay_state) == (sp.acs, relay_state)
    expect(page.locator("#who-name")).to_contain_text("ada@example.com")
    page.wait_for_url(f"{sp.public}/approvals")

    token = json.loads(page.evaluate("sessionStorage.getItem('warden.session')"))["token"]
    signed = claims(token)
    assert (signed["iss"], signed["sub"]) == (sp.issuer, "ada@example.com")
    assert sorted(signed["groups"]) == sorted(["engineering", ADMINS])
    # An admin by the IdP's groups attribute: an admin-only call succeeds.
    status, _, body = http("POST", f"{sp.public}/v1/keys/revoke", body={"owner": "left@example.com"},
                           headers={"authorization": f"Bearer {token}"})
    assert status == 200 and json.loads(body)["revoked"] == 0, body


class Cli:
    """The `warden` CLI with its own configuration directory, told nothing but the server."""

    def __init__(self, home: Path, stack: Stack):
        self.config_dir = home / "config"
        self.server = stack.control_plane_url
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("WARDEN_")}
        self.env.update({"XDG_CONFIG_HOME": str(self.config_dir), "HOME": str(home), "WARDEN_SERVER": self.server})
        self.env.pop("DISPLAY", None)
        self.env.pop("WAYLAND_DISPLAY", None)

    def run(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(WARDEN_BIN), *args], env=self.env, capture_output=True, text=True, timeout=60)

    def login(self) -> "Login":
        return Login(subprocess.Popen([str(WARDEN_BIN), "login", "--no-browser", "--server", self.server],
                                      env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))

    def stored_file(self) -> Path:
        [path] = sorted((self.config_dir / "warden").glob("login-*.json"))
        return path

    def stored(self) -> dict:
        return json.loads(self.stored_file().read_text())

    def access_token(self) -> str:
        done = self.run("access-token")
        assert done.returncode == 0 and done.stderr == "", done.stderr
        return done.stdout.strip()


class Login:
    """A running `warden login`, its stderr read on a thread."""

    def __init__(self, popen: subprocess.Popen):
        self.popen = popen
        self.err: list[str] = []
        threading.Thread(target=lambda: self.err.extend(iter(popen.stderr.readline, "")), daemon=True).start()

    def url(self) -> str:
        found: list[str] = []

        def printed() -> bool:
            match = re.search(r"^\s+(http://\S+/idp/authorize\?\S+)$", self.stderr(), re.M)
            if match:
                found.append(match.group(1))
            elif self.popen.poll() is not None:
                raise AssertionError(f"warden login exited {self.popen.returncode}: {self.stderr()}")
            return bool(match)

        wait_until("warden login's URL", printed, timeout=30)
        return found[0]

    def finish(self) -> tuple[int, str]:
        out, _ = self.popen.communicate(timeout=60)
        return self.popen.returncode, out

    def stderr(self) -> str:
        return "".join(self.err)


def ask_gateway(stack: Stack, token: str, agent: str = "saml-test") -> int:
    return http("POST", f"{stack.gateway_url}/openai/v1/chat/completions",
                body={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
                headers={"authorization": f"Bearer {token}", "user-agent": agent})[0]


def test_warden_login_through_saml_then_gateway_whoami_and_refresh(stack, sp, idp, browser, tmp_path):
    cli = Cli(tmp_path, stack)
    login = cli.login()
    url = login.url()
    assert url.startswith(f"{sp.issuer}/authorize?")
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
    assert query["client_id"] == [CLI_CLIENT] and query["code_challenge_method"] == ["S256"]
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/\S*", query["redirect_uri"][0])

    page = browser.new_page()
    page.goto(url)
    posted = saml_idp.sign_in(page, "carol@example.com", "carol@example.com", ["engineering"])
    assert posted.acs_url == sp.acs
    page.wait_for_selector("text=Signed in")
    status, out = login.finish()
    assert status == 0, login.stderr()

    stored = cli.stored()
    assert (stored["issuer"], stored["client_id"]) == (sp.issuer, CLI_CLIENT) and stored["refresh_token"]
    for secret in (stored["access_token"], stored["refresh_token"]):
        assert secret not in out + login.stderr()
    token = cli.access_token()
    signed = claims(token)
    assert (signed["iss"], signed["sub"], signed["aud"], signed["groups"], signed["email"]) == (
        sp.issuer, "carol@example.com", "warden", ["engineering"], "carol@example.com")

    # OPENAI_API_KEY=$(warden access-token): through the real gateway, with the SDK.
    import openai
    wait_until("the issuer's keys in the filter", lambda: ask_gateway(stack, token) == 200)
    agent = f"saml-login/{uuid.uuid4()}"
    client = openai.OpenAI(base_url=f"{stack.gateway_url}/openai/v1", api_key=token, max_retries=0,
                           default_headers={"user-agent": agent})
    answer = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hello"}])
    assert answer.choices[0].message.content
    records: list[dict] = []

    def audited() -> bool:
        records[:] = [r for r in stack.access_log_records()
                      if r.get("user_agent") == agent and r.get("log_type") == "DownstreamEnd"]
        return bool(records)

    wait_until("the call's audit record", audited, timeout=30)
    [record] = records
    assert (record["user"], record["groups"], record["issuer"], record["decision"]) == (
        "carol@example.com", "engineering", sp.issuer, "allowed")

    whoami = cli.run("whoami")
    assert whoami.returncode == 0, whoami.stderr
    assert "user:     carol@example.com" in whoami.stdout
    assert "groups:   engineering" in whoami.stdout
    assert json.loads(cli.run("whoami", "--json").stdout)["identity"]["issuer"] == sp.issuer

    # Refresh: the stored token made to look expired, `access-token` uses the refresh token.
    wait_until("a second since the token was issued", lambda: time.time() >= signed["iat"] + 1.5, timeout=5)
    cli.stored_file().write_text(json.dumps({**stored, "expires_at": int(time.time())}))
    newer = cli.access_token()
    assert newer != token
    fresh = claims(newer)
    assert fresh["iat"] > signed["iat"] and fresh["exp"] > signed["exp"]
    assert (fresh["iss"], fresh["sub"], fresh["groups"]) == (sp.issuer, "carol@example.com", ["engineering"])
    assert ask_gateway(stack, newer) == 200
    rotated = cli.stored()["refresh_token"]
    assert rotated != stored["refresh_token"]
    status, _, body = http("POST", f"{sp.issuer}/oauth/token", body=urllib.parse.urlencode({
        "grant_type": "refresh_token", "refresh_token": stored["refresh_token"], "client_id": CLI_CLIENT}).encode(),
        headers={"content-type": "application/x-www-form-urlencoded"})
    assert (status, json.loads(body).get("error")) == (400, "invalid_grant"), "the used refresh token is spent"

    # `warden logout` revokes the live refresh token at the issuer (RFC 7009), not only the file.
    live = cli.stored()["refresh_token"]
    logout = cli.run("logout")
    assert logout.returncode == 0, logout.stderr
    assert f"Revoked the refresh token at {sp.issuer}/oauth/revoke" in logout.stderr, logout.stderr
    assert not list((cli.config_dir / "warden").glob("login-*.json"))
    status, _, body = http("POST", f"{sp.issuer}/oauth/token", body=urllib.parse.urlencode({
        "grant_type": "refresh_token", "refresh_token": live, "client_id": CLI_CLIENT}).encode(),
        headers={"content-type": "application/x-www-form-urlencoded"})
    assert (status, json.loads(body).get("error")) == (400, "invalid_grant"), "logout revoked the refresh token"


# --- attacks ---------------------------------------------------------------------------------


def test_a_captured_response_is_good_once(stack, sp, idp, browser, client):
    flow = Flow(client, sp)
    page = browser.new_page()
    page.goto(flow.sso_redirect)
    posted = saml_idp.capture(page, "erin@example.com", "erin@example.com", ["engineering"])
    assert (posted.acs_url, posted.relay_state) == (sp.acs, flow.relay_state)

    first = flow.post(posted)
    assert claims(flow.tokens(first)["access_token"])["sub"] == "erin@example.com"
    assert_refused(flow.post(posted), posted)
    # Nor for a sign-in started later.
    later = Flow(client, sp)
    assert_refused(later.post(posted, relay_state=later.relay_state), posted)


def dom(xml: str) -> minidom.Document:
    return minidom.parseString(xml)


def elements(node, ns: str, local: str) -> list:
    return list(node.getElementsByTagNameNS(ns, local))


def child(node, ns: str, local: str):
    found = [c for c in node.childNodes if c.nodeType == c.ELEMENT_NODE
             and (c.namespaceURI, c.localName) == (ns, local)]
    return found[0] if found else None


def without_signatures(xml: str) -> str:
    doc = dom(xml)
    for signature in elements(doc, DS, "Signature"):
        signature.parentNode.removeChild(signature)
    return doc.documentElement.toxml()


def test_an_unsigned_response_is_refused(stack, sp, idp, client):
    flow = Flow(client, sp)
    posted = genuine(idp, flow, "frank@example.com")
    unsigned = without_signatures(posted.xml)
    assert idp.verify(unsigned) == [] and "frank@example.com" in unsigned
    assert_refused(flow.post(posted.with_xml(unsigned)), posted.with_xml(unsigned))


def test_an_assertion_changed_after_signing_is_refused(stack, sp, idp, client):
    flow = Flow(client, sp)
    posted = genuine(idp, flow, "gina@example.com")
    changed = posted.xml.replace(">gina@example.com</saml:NameID>", ">admin@example.com</saml:NameID>")
    assert changed != posted.xml
    assert [s["valid"] for s in idp.verify(changed)] == [False, False]
    assert_refused(flow.post(posted.with_xml(changed)), posted.with_xml(changed), "admin@example.com")


def test_a_comment_in_the_name_id_never_shortens_it(stack, sp, idp, client):
    """The IdP signs alice@example.com.evil.test; a comment after
    alice@example.com leaves the signature valid (exclusive C14N drops
    comments). A reader of the first text node alone would see
    alice@example.com: the answer must be a refusal or the whole name."""
    flow = Flow(client, sp)
    posted = idp.respond(flow.sso_redirect, "alice@example.com.evil.test", "mallory@evil.test", ["engineering"])
    split = posted.xml.replace(">alice@example.com.evil.test</saml:NameID>",
                               ">alice@example.com<!---->.evil.test</saml:NameID>")
    assert split.count("<!---->") == 1
    assert [s["valid"] for s in idp.verify(split)] == [True, True]
    answer = flow.post(posted.with_xml(split))
    if answer.status_code == 400:
        assert_refused(answer, posted.with_xml(split))
    else:
        assert claims(flow.tokens(answer)["access_token"])["sub"] == "alice@example.com.evil.test"


def forged_assertion(genuine_assertion, name_id: str, new_id: str | None):
    """A copy of the signed assertion, unsigned, for `name_id` in the admin group."""
    evil = genuine_assertion.cloneNode(True)
    signature = child(evil, DS, "Signature")
    evil.removeChild(signature)
    if new_id is not None:
        evil.setAttribute("ID", new_id)
    [name] = elements(evil, SAML, "NameID")
    name.firstChild.data = name_id
    for attribute in elements(evil, SAML, "Attribute"):
        for value in elements(attribute, SAML, "AttributeValue"):
            value.firstChild.data = ADMINS if attribute.getAttribute("Name") == "groups" else name_id
    return evil


def wrapped(xml: str, variant: str) -> str:
    """Signature wrapping (Somorovsky et al., "On Breaking SAML", 2012): a
    forged unsigned assertion for admin@example.com where a careless reader
    looks, the genuinely signed one kept intact elsewhere."""
    doc = dom(xml)
    response = doc.documentElement
    [signed] = elements(response, SAML, "Assertion")
    evil_id = "_" + uuid.uuid4().hex
    if variant == "response wrapped (XSW1)":
        # A new Response around the forged assertion carries the original
        # Response's signature; the original, signed assertion and all, sits in
        # that signature's ds:Object.
        outer = response.cloneNode(True)
        outer.setAttribute("ID", evil_id)
        outer_signature = child(outer, DS, "Signature")
        [outer_assertion] = elements(outer, SAML, "Assertion")
        outer.replaceChild(forged_assertion(signed, "admin@example.com", "_" + uuid.uuid4().hex), outer_assertion)
        original_signature = child(response, DS, "Signature")
        response.removeChild(original_signature)
        doc.replaceChild(outer, response)
        outer.replaceChild(original_signature, outer_signature)
        holder = doc.createElementNS(DS, "Object")
        holder.appendChild(response)
        original_signature.appendChild(holder)
        return outer.toxml()
    response.removeChild(child(response, DS, "Signature"))  # the assertion's signature is all that is left
    if variant == "forged before signed (XSW3)":
        response.insertBefore(forged_assertion(signed, "admin@example.com", evil_id), signed)
    elif variant == "forged before signed, same ID":
        response.insertBefore(forged_assertion(signed, "admin@example.com", None), signed)
    elif variant == "forged wraps signed (XSW4)":
        evil = forged_assertion(signed, "admin@example.com", evil_id)
        response.replaceChild(evil, signed)
        evil.appendChild(signed)
    elif variant == "signed inside the forged one's signature (XSW8)":
        evil = forged_assertion(signed, "admin@example.com", evil_id)
        signature = child(signed, DS, "Signature")
        signed.removeChild(signature)
        response.replaceChild(evil, signed)
        holder = doc.createElementNS(DS, "Object")
        holder.appendChild(signed)
        signature.appendChild(holder)
        evil.insertBefore(signature, child(evil, SAML, "Subject"))
    else:
        raise ValueError(variant)
    return response.toxml()


@pytest.mark.parametrize("variant", ["forged before signed (XSW3)", "forged before signed, same ID",
                                     "forged wraps signed (XSW4)", "signed inside the forged one's signature (XSW8)",
                                     "response wrapped (XSW1)"])
def test_signature_wrapping_is_refused(stack, sp, idp, client, variant):
    flow = Flow(client, sp)
    posted = genuine(idp, flow, "hank@example.com")
    signed_id = ET.fromstring(posted.xml).find(f"{{{SAML}}}Assertion").get("ID")
    forged = wrapped(posted.xml, variant)
    assert forged.count("admin@example.com") >= 1 and forged.count(f'ID="{signed_id}"') == (
        2 if variant.endswith("same ID") else 1)
    if not variant.endswith("same ID"):
        # The genuine signature still verifies where it now sits.
        checked = {s["reference"]: s["valid"] for s in idp.verify(forged)}
        assert checked[f"#{signed_id}"] is True, checked
    assert_refused(flow.post(posted.with_xml(forged)), posted.with_xml(forged), "admin@example.com")


@pytest.mark.parametrize("case", ["IdP-initiated", "IdP-initiated with a pending RelayState",
                                  "InResponseTo of no request", "another sign-in's RelayState"])
def test_a_response_to_no_request_of_ours_is_refused(stack, sp, idp, client, case):
    flow = Flow(client, sp)
    if case == "IdP-initiated":
        posted = idp.respond(None, "ivy@example.com", "ivy@example.com", ["engineering"])
        assert ET.fromstring(posted.xml).get("InResponseTo") is None and posted.relay_state == ""
        answer = flow.post(posted)
    elif case == "IdP-initiated with a pending RelayState":
        posted = idp.respond(None, "ivy@example.com", "ivy@example.com", ["engineering"])
        answer = flow.post(posted, relay_state=flow.relay_state)
    elif case == "InResponseTo of no request":
        forged_id = "_" + uuid.uuid4().hex
        posted = idp.respond(flow.sso_redirect, "ivy@example.com", "ivy@example.com", ["engineering"],
                             in_response_to=forged_id)
        assert ET.fromstring(posted.xml).get("InResponseTo") == forged_id
        assert posted.relay_state == flow.relay_state
        answer = flow.post(posted)
    else:
        other = Flow(client, sp)
        posted = genuine(idp, flow, "ivy@example.com")
        answer = flow.post(posted, relay_state=other.relay_state)
    assert_refused(answer, posted)


@pytest.mark.parametrize("case", ["another audience", "another key", "SHA-1"])
def test_a_response_from_a_second_idp_is_refused(stack, sp, idp, keys, client, tmp_path, case):
    """A second IdP of the same name: genuinely signed with the trusted key
    but for another SP, or with SHA-1; or signed with a key the control
    plane does not trust."""
    audience = "https://other-sp.example/saml/metadata" if case == "another audience" else sp.entity_id
    other = SamlIdp(tmp_path / "other", acs_url=sp.acs, audience=audience,
                    keys=KeyPair.generate("Another IdP") if case == "another key" else keys, name="other-saml-idp")
    try:
        if case == "SHA-1":
            other.settings(signatureAlgorithm="rsa-sha1", digestAlgorithm="sha1")
        flow = Flow(client, sp)
        posted = other.respond(flow.sso_redirect, "jack@example.com", "jack@example.com", ["engineering"])
        trusted = idp.verify(posted.xml)
        if case == "another key":
            assert [s["valid"] for s in trusted] == [False, False]
            assert [s["valid"] for s in other.verify(posted.xml)] == [True, True]
        else:
            assert [s["valid"] for s in trusted] == [True, True], trusted
        if case == "another audience":
            assert [a.text for a in ET.fromstring(posted.xml).iter(f"{{{SAML}}}Audience")] == [audience]
        if case == "SHA-1":
            assert {s["signatureAlgorithm"] for s in trusted} == {f"{DS}rsa-sha1"}
        assert_refused(flow.post(posted), posted)
    finally:
        other.stop()


def billion_laughs(xml: str, name_id: str) -> str:
    entities = '<!ENTITY lol0 "lol">' + "".join(
        f'<!ENTITY lol{i} "{f"&lol{i - 1};" * 10}">' for i in range(1, 10))
    body = xml.replace(f">{name_id}</saml:NameID>", ">&lol9;</saml:NameID>")
    assert body != xml
    return f"<?xml version=\"1.0\"?><!DOCTYPE samlp:Response [{entities}]>{body}"


def external_entity(xml: str, name_id: str) -> str:
    body = xml.replace(f">{name_id}</saml:NameID>", ">&xxe;</saml:NameID>")
    assert body != xml
    return f'<?xml version="1.0"?><!DOCTYPE samlp:Response [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>{body}'


@pytest.mark.parametrize("payload", [billion_laughs, external_entity], ids=["billion laughs", "external entity"])
def test_a_doctype_is_refused_quickly(stack, sp, idp, client, payload):
    flow = Flow(client, sp)
    posted = genuine(idp, flow, "kim@example.com")
    hostile = posted.with_xml(payload(posted.xml, "kim@example.com"))
    started = time.monotonic()
    answer = flow.post(hostile)
    took = time.monotonic() - started
    assert_refused(answer, hostile, "lollollol", "root:")
    assert took < 5, f"took {took:.1f}s"
    assert http("GET", f"{sp.public}/healthz")[0] == 200
