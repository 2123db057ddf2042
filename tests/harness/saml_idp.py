"""A real SAML 2.0 identity provider for the end-to-end tests: the npm package
`saml-idp` (tests/saml-idp, installed by `scripts/bootstrap.sh test`).

    idp = SamlIdp(workdir, acs_url=f"{public}/saml/acs", audience=f"{public}/saml/metadata")
    idp.write_metadata(path)       # for `warden serve --saml-idp-metadata PATH`
    posted = sign_in(page, "alice@example.com", "alice@example.com", ["engineering"])
    idp.stop()

What it signs (samlp 8 and node-saml 4 inside saml-idp): a `samlp:Response`
(Destination = the ACS URL, InResponseTo = the AuthnRequest's ID) that is
signed, holding one `saml:Assertion` that is signed too (RSA-SHA256,
SHA-256 digests, exclusive C14N, each an unprefixed `<Signature
xmlns="http://www.w3.org/2000/09/xmldsig#">` right after its element's
Issuer, referencing its ID; the certificate in KeyInfo). The assertion
has the NameID the test types (Format emailAddress unless told), a bearer
SubjectConfirmationData (Recipient = the ACS URL, InResponseTo), an
AudienceRestriction of `audience`, and the attributes of
tests/saml-idp/config.js: `email` (one value) and `groups` (one
AttributeValue per group), NameFormat basic. It takes an AuthnRequest by the
HTTP-Redirect or HTTP-POST binding at `sso_url` (metadata lists both), echoes
its RelayState, and posts the answer to the ACS URL given here
(`--disableRequestAcsUrl`, as an IdP posts to the URL registered for the SP)
by an auto-submitting form of `SAMLResponse` and `RelayState`.

Every sign-in is typed into its form, in Chromium (`sign_in`, or `capture`,
which keeps the posted form from reaching the ACS so a test can replay or
tamper with it) or over HTTP (`SamlIdp.respond`, the same two requests the
form makes). The IdP keeps the last user typed in for the next sign-in, so
every field is always filled. Its log shows each response in full, and the
start of its signing key (a throwaway, made per run by `KeyPair.generate`).
"""

from __future__ import annotations

import base64
import datetime
import html
import json
import re
import subprocess
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import httpx2 as httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from harness.stack import ROOT, Ports, Process, http, node_binary, spawn, wait_until

IDP_DIR = ROOT / "tests" / "saml-idp"
RUN_JS = IDP_DIR / "node_modules" / "saml-idp" / "bin" / "run.js"
CONFIG_JS = IDP_DIR / "config.js"
VERIFY_JS = IDP_DIR / "verify.js"
DEFAULT_ISSUER = "urn:warden:tests:saml-idp"
NAMEID_EMAIL = "urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress"
NAMEID_UNSPECIFIED = "urn:oasis:names:tc:SAML:1.1:nameid-format:unspecified"


@dataclass(frozen=True)
class KeyPair:
    """A fresh self-signed RSA 2048 certificate and its key (PEM), for signing."""
    cert_pem: bytes
    key_pem: bytes

    @classmethod
    def generate(cls, common_name: str = "Warden test SAML IdP") -> "KeyPair":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
                .not_valid_after(now + datetime.timedelta(days=2)).sign(key, hashes.SHA256()))
        return cls(cert.public_bytes(serialization.Encoding.PEM),
                   key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                     serialization.NoEncryption()))

    @property
    def cert_base64(self) -> str:
        """The certificate as metadata and KeyInfo carry it: base64 DER, one line."""
        return "".join(self.cert_pem.decode().strip().splitlines()[1:-1])


@dataclass(frozen=True)
class Posted:
    """A SAML response as the IdP's form posts it (both fields verbatim)."""
    acs_url: str
    saml_response: str  # base64, as posted
    relay_state: str  # "" when the IdP had none

    @property
    def xml(self) -> str:
        return base64.b64decode(self.saml_response).decode()

    def with_xml(self, xml: str) -> "Posted":
        """The same post carrying another (tampered) response."""
        return Posted(self.acs_url, base64.b64encode(xml.encode()).decode(), self.relay_state)

    def form(self, relay_state: str | None = None) -> dict[str, str]:
        """The form fields to post to the ACS (RelayState replaced if given)."""
        return {"SAMLResponse": self.saml_response,
                "RelayState": self.relay_state if relay_state is None else relay_state}


class SamlIdp:
    """saml-idp on 127.0.0.1 (`port`, else a free one), signing with `keys`
    (fresh unless given); the Response too unless `sign_response` is false."""

    def __init__(self, workdir: Path, *, acs_url: str, audience: str, issuer: str = DEFAULT_ISSUER,
                 keys: KeyPair | None = None, sign_response: bool = True, port: int | None = None,
                 name: str = "saml-idp"):
        workdir.mkdir(parents=True, exist_ok=True)
        if not RUN_JS.exists():
            raise RuntimeError(f"{RUN_JS} is missing: run `scripts/bootstrap.sh test` (npm ci in tests/saml-idp)")
        self.keys = keys or KeyPair.generate()
        self.issuer, self.acs_url, self.audience = issuer, acs_url, audience
        self.port = port or Ports.free().gateway
        self.url = f"http://127.0.0.1:{self.port}"
        self.sso_url = f"{self.url}/saml/sso"
        self.cert_path = workdir / f"{name}-cert.pem"
        key_path = workdir / f"{name}-key.pem"
        self.cert_path.write_bytes(self.keys.cert_pem)
        key_path.write_bytes(self.keys.key_pem)
        key_path.chmod(0o600)
        argv = [node_binary(), str(RUN_JS), "--host", "127.0.0.1", "--port", str(self.port),
                "--cert", str(self.cert_path), "--key", str(key_path), "--issuer", issuer,
                "--acsUrl", acs_url, "--audience", audience, "--configFile", str(CONFIG_JS),
                "--disableRequestAcsUrl"]
        if not sign_response:
            argv.append("--no-signResponse")
        self.process: Process = spawn(name, argv, workdir / f"{name}.log")
        try:
            wait_until(name, lambda: http("GET", f"{self.url}/metadata", timeout=2)[0] == 200,
                       timeout=30, alive=self.process.check_alive)
            # Its SSO URLs come from the Host header: fetched here, they name 127.0.0.1.
            self.metadata_xml = http("GET", f"{self.url}/metadata")[2].decode()
        except BaseException:
            self.process.stop()
            raise

    def write_metadata(self, path: Path) -> Path:
        path.write_text(self.metadata_xml)
        return path

    def settings(self, **options: str) -> None:
        """Changes the IdP's signing options for every later sign-in (its
        /settings form), e.g. signatureAlgorithm="rsa-sha1", digestAlgorithm="sha1",
        or signAssertion="false" (then only the Response is signed)."""
        answer = httpx.post(f"{self.url}/settings", data=options, timeout=10)
        assert answer.status_code == 302, answer.text

    def respond(self, authn_request_url: str | None, name_id: str, email: str, groups: list[str], *,
                name_id_format: str = NAMEID_EMAIL, in_response_to: str | None = None) -> Posted:
        """Signs in over HTTP as the form would. `authn_request_url` is where
        the SP redirected the browser (its query, SAMLRequest and RelayState,
        is sent to this IdP's own SSO URL); None signs in unasked
        (IdP-initiated: no InResponseTo, no RelayState). `in_response_to`
        replaces the request's ID in what the IdP signs."""
        with httpx.Client(timeout=10) as client:
            form = {"userName": name_id, "nameIdFormat": name_id_format, "email": email, "groups": ",".join(groups)}
            if authn_request_url is not None:
                query = urllib.parse.urlsplit(authn_request_url).query
                page = client.get(f"{self.sso_url}?{query}")
                found = re.search(r"name=\"_authnRequest\"[^>]*value='([^']*)'", page.text)
                assert page.status_code == 200 and found, f"the IdP took no AuthnRequest: {page.status_code}"
                request = json.loads(base64.b64decode(html.unescape(found.group(1))))
                if in_response_to is not None:
                    request["id"] = in_response_to
                form["_authnRequest"] = base64.b64encode(json.dumps(request).encode()).decode()
            elif in_response_to is not None:
                form["_authnRequest"] = base64.b64encode(json.dumps({"id": in_response_to}).encode()).decode()
            answer = client.post(f"{self.url}/signin", data=form)
            assert answer.status_code == 200, answer.text[:500]
            return _posted_form(answer.text)

    def verify(self, xml: str, cert_pem: bytes | None = None) -> list[dict]:
        """Each ds:Signature in `xml` checked against this IdP's certificate (or
        `cert_pem`) by xml-crypto: [{"parent", "reference", "signatureAlgorithm",
        "digestAlgorithm", "valid", "errors"}] in document order."""
        cert = self.cert_path
        if cert_pem is not None:
            cert = self.cert_path.with_name(self.cert_path.stem + "-other.pem")
            cert.write_bytes(cert_pem)
        done = subprocess.run([node_binary(), str(VERIFY_JS), str(cert)], input=xml, capture_output=True,
                              text=True, timeout=30, cwd=IDP_DIR)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    def stop(self) -> None:
        self.process.stop()


def _posted_form(page_html: str) -> Posted:
    """The fields of saml-idp's auto-submitting form (views/samlresponse.hbs)."""
    def field(pattern: str) -> str:
        found = re.search(pattern, page_html)
        assert found, f"no {pattern!r} in the IdP's answer"
        return html.unescape(found.group(1))
    return Posted(acs_url=field(r'<form method="post" name="hiddenform" action="([^"]*)"'),
                  saml_response=field(r'name="SAMLResponse"\s+value="([^"]*)"'),
                  relay_state=field(r'name="RelayState" value="([^"]*)"'))


# --- in Chromium (Playwright's sync API) ---------------------------------------------


def _is_saml_post(request) -> bool:
    return request.method == "POST" and "SAMLResponse=" in (request.post_data or "")


def _fill_and_submit(page, name_id: str, email: str, groups: list[str], name_id_format: str) -> None:
    page.wait_for_selector("#btn-sign-in")
    page.wait_for_load_state()  # the form's scripts (jQuery, tagsinput) have run
    page.fill("#userName", name_id)
    page.fill("#email", email)
    # The NameID format sits in a collapsed part of the form; groups is a
    # bootstrap-tagsinput field whose <input> is hidden: both set as the page's
    # own script would.
    page.evaluate("""([format, groups]) => {
        document.getElementById('nameIdFormat').value = format;
        const input = document.getElementById('groups');
        if (window.jQuery && jQuery.fn.tagsinput) {
            jQuery(input).tagsinput('removeAll');
            groups.forEach((g) => jQuery(input).tagsinput('add', g));
        }
        input.value = groups.join(',');
    }""", [name_id_format, groups])
    page.click("#btn-sign-in")


def sign_in(page, name_id: str, email: str, groups: list[str], *, name_id_format: str = NAMEID_EMAIL) -> Posted:
    """Completes the IdP's sign-in page the browser is on (or is being
    redirected to) and returns once the browser has posted the signed
    response to the ACS (the form as posted; the SP's answer is the page's)."""
    with page.expect_request(_is_saml_post) as posted:
        _fill_and_submit(page, name_id, email, groups, name_id_format)
    return _from_request(posted.value)


def capture(page, name_id: str, email: str, groups: list[str], *, name_id_format: str = NAMEID_EMAIL) -> Posted:
    """Like `sign_in`, but the post never reaches the ACS: the browser gets a
    stand-in answer, and the test gets the genuine SAMLResponse and RelayState
    to replay or tamper with."""
    seen: list[Posted] = []

    def hold(route) -> None:
        if not _is_saml_post(route.request):
            route.fallback()
            return
        seen.append(_from_request(route.request))
        route.fulfill(status=200, content_type="text/plain", body="SAML response captured by the test")

    page.route("**/*", hold)
    try:
        with page.expect_response(lambda r: _is_saml_post(r.request)):
            _fill_and_submit(page, name_id, email, groups, name_id_format)
    finally:
        page.unroute("**/*", hold)
    [posted] = seen
    return posted


def _from_request(request) -> Posted:
    form = urllib.parse.parse_qs(request.post_data, keep_blank_values=True)
    return Posted(request.url, form["SAMLResponse"][0], form.get("RelayState", [""])[0])
