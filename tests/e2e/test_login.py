"""`warden login` against a real OpenID Provider (tests/idp/server.mjs, the
`oidc-provider` package) and a real gateway: sign-in in real Chromium with
PKCE and a loopback redirect, and with the device grant; the stored file;
refreshing; logout's revocation; whoami; and a long-running program whose one
SDK client outlives several access tokens.

The IdP issues access tokens for ACCESS_TOKEN_TTL seconds, so expiry and
refresh happen within the test; it is polled, never slept on.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import re
import socket
import stat
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from browser.chromium import loopback_only_context  # noqa: E402
from harness.stack import (  # noqa: E402
    ROOT, WARDEN_BIN, Ports, Stack, default_filter_config, http, node_binary, spawn, wait_until)


IDP_DIR = ROOT / "tests" / "idp"
CLI_CLIENT = "warden-cli"
SCOPE = "openid email offline_access llm"
ACCESS_TOKEN_TTL = 20
TIMEOUT_MS = 15_000
POLICY = """\
version: 1
groups:
  engineering:
    models: ["gpt-4o-mini", "claude-*"]
  finance:
    providers: [openai]
    models: ["gpt-4o"]
rules: []
"""


def claims(token: str) -> dict:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


class Idp:
    def __init__(self, workdir: Path):
        self.port = Ports.free().gateway
        self.issuer = f"http://127.0.0.1:{self.port}"
        key = json.loads(subprocess.run([node_binary(), "server.mjs", "--generate-key", "login-key"], cwd=IDP_DIR,
                                        capture_output=True, text=True, check=True, timeout=30).stdout)
        keys = workdir / "idp-keys.json"
        keys.write_text(json.dumps([key]))
        self.process = spawn("oidc-provider", [node_binary(), str(IDP_DIR / "server.mjs"), "--port", str(self.port),
                                               "--keys", str(keys), "--access-token-ttl", str(ACCESS_TOKEN_TTL)],
                             workdir / "idp.log")
        wait_until("the IdP", lambda: http("GET", f"{self.issuer}/.well-known/openid-configuration",
                                           timeout=2)[0] == 200, alive=self.process.check_alive)

    def refresh(self, refresh_token: str) -> tuple[int, dict]:
        body = urllib.parse.urlencode({"grant_type": "refresh_token", "refresh_token": refresh_token,
                                       "client_id": CLI_CLIENT}).encode()
        status, _, raw = http("POST", f"{self.issuer}/token", body=body,
                              headers={"content-type": "application/x-www-form-urlencoded"})
        return status, json.loads(raw)


@pytest.fixture(scope="module")
def idp(tmp_path_factory):
    server = Idp(tmp_path_factory.mktemp("idp"))
    yield server
    server.process.stop()


@pytest.fixture(scope="module")
def stack(idp, tmp_path_factory):
    config = default_filter_config()
    config["authentication"]["issuers"].append(
        {"issuer": idp.issuer, "audiences": ["warden"], "jwks": {"cluster": "real_idp"}})
    s = Stack.start(Ports.free(), tmp_path_factory.mktemp("stack"), filter_config=yaml.safe_dump(config),
                    extra_clusters={"real_idp": idp.port},
                    control_plane_args=["--issuer", idp.issuer, "--login-issuer", idp.issuer,
                                        "--login-client-id", CLI_CLIENT, "--login-scope", SCOPE])
    try:
        policy = s.data_dir / "login-policy.yaml"
        policy.write_text(POLICY)
        s.cli("policy", "push", str(policy), "-m", "login tests", token=s.token("root", ["warden-admins"]))
        yield s
    except BaseException:
        sys.stderr.write(s.dump_logs())
        raise
    finally:
        s.stop()


@pytest.fixture
def browser(playwright, tmp_path):
    """A fresh Chromium profile; nothing but loopback is reachable (the IdP's
    pages import web fonts)."""
    with loopback_only_context(playwright, tmp_path / "profile", timeout_ms=TIMEOUT_MS) as context:
        yield context


class Cli:
    """The `warden` CLI with its own configuration directory."""

    def __init__(self, home: Path, idp: Idp, stack: Stack):
        self.config_dir = home / "config"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("WARDEN_")}
        self.env.update({"XDG_CONFIG_HOME": str(self.config_dir), "HOME": str(home), "WARDEN_ISSUER": idp.issuer,
                         "WARDEN_CLIENT_ID": CLI_CLIENT, "WARDEN_SERVER": stack.control_plane_url})
        self.env.pop("DISPLAY", None)
        self.env.pop("WAYLAND_DISPLAY", None)

    def run(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(WARDEN_BIN), *args], env=self.env, capture_output=True, text=True, timeout=60)

    def start(self, *args: str) -> "Running":
        return Running(subprocess.Popen([str(WARDEN_BIN), *args], env=self.env, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True))

    def stored_files(self) -> list[Path]:
        return sorted((self.config_dir / "warden").glob("login-*.json"))

    def stored(self) -> dict:
        [path] = self.stored_files()
        return json.loads(path.read_text())

    def access_token(self) -> str:
        done = self.run("access-token")
        assert done.returncode == 0, done.stderr
        assert done.stderr == ""
        return done.stdout.strip()


class Running:
    """A CLI process whose stderr is read on a thread, so the test can wait for a line."""

    def __init__(self, popen: subprocess.Popen):
        self.popen = popen
        self.err: list[str] = []
        self.out = ""
        threading.Thread(target=lambda: self.err.extend(iter(popen.stderr.readline, "")), daemon=True).start()

    def wait_for(self, pattern: str) -> re.Match:
        found: list[re.Match] = []

        def seen() -> bool:
            if self.popen.poll() is not None and not found:
                text = "".join(self.err)
                match = re.search(pattern, text, re.M)
                if match:
                    found.append(match)
                    return True
                raise AssertionError(f"warden exited {self.popen.returncode}: {text}")
            match = re.search(pattern, "".join(self.err), re.M)
            if match:
                found.append(match)
            return bool(match)

        wait_until(f"warden to print {pattern!r}", seen, timeout=30)
        return found[0]

    def finish(self, timeout: float = 60) -> int:
        self.out, _ = self.popen.communicate(timeout=timeout)
        return self.popen.returncode

    def stderr(self) -> str:
        return "".join(self.err)


def sign_in(page, login: str) -> None:
    """oidc-provider's development login and consent pages."""
    page.fill("input[name=login]", login)
    page.fill("input[name=password]", "any password")
    page.click("button[type=submit]")
    page.wait_for_selector("button[type=submit]:has-text('Continue')")
    page.click("button[type=submit]:has-text('Continue')")


def ask_gateway(stack: Stack, token: str) -> int:
    return http("POST", f"{stack.gateway_url}/openai/v1/chat/completions",
                body={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
                headers={"authorization": f"Bearer {token}"})[0]


def login_in_browser(cli: Cli, browser, who: str = "alice") -> Running:
    running = cli.start("login", "--no-browser", "--scope", SCOPE)
    url = running.wait_for(r"^\s+(http://\S+/auth\?\S+)$").group(1)
    query = urllib.parse.parse_qs(urllib.parse.urlparse(url).query)
    assert query["code_challenge_method"] == ["S256"] and len(query["code_challenge"][0]) == 43
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/callback", query["redirect_uri"][0])
    page = browser.new_page()
    page.goto(url)
    sign_in(page, who)
    page.wait_for_selector("text=Signed in")
    assert running.finish() == 0, running.stderr()
    return running


def test_pkce_login_storage_gateway_whoami_refresh_logout(idp, stack, browser, tmp_path):
    cli = Cli(tmp_path, idp, stack)
    assert cli.run("access-token").returncode == 1, "no login yet"
    assert "warden login" in cli.run("access-token").stderr

    running = login_in_browser(cli, browser)
    # The loopback listener served one request and closed.
    redirect_port = int(re.search(r"redirect_uri=http%3A%2F%2F127\.0\.0\.1%3A(\d+)", running.stderr()).group(1))
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", redirect_port), timeout=2).close()

    # Storage: one file, 0600 in a 0700 directory; no token in the CLI's output.
    [path] = cli.stored_files()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    stored = cli.stored()
    assert stored["issuer"] == idp.issuer and stored["client_id"] == CLI_CLIENT
    assert stored["refresh_token"]
    for secret in (stored["access_token"], stored["refresh_token"]):
        assert secret not in running.out and secret not in running.stderr()
    assert "Logged in to" in running.stderr() and "alice" in running.stderr()

    # The token is the IdP's, for the gateway, and the gateway takes it through the unchanged SDK.
    token = cli.access_token()
    assert token == stored["access_token"]
    assert claims(token)["sub"] == "alice" and claims(token)["aud"] == "warden"
    import openai
    client = openai.OpenAI(base_url=f"{stack.gateway_url}/openai/v1", api_key=token, max_retries=0)
    wait_until("the IdP's keys in the filter", lambda: ask_gateway(stack, token) == 200)
    answer = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hello"}])
    assert answer.choices[0].message.content

    # whoami: the control plane's view and the active policy's grants.
    whoami = cli.run("whoami")
    assert whoami.returncode == 0, whoami.stderr
    assert "user:     alice" in whoami.stdout
    assert "alice@example.com" in whoami.stdout
    assert "groups:   engineering" in whoami.stdout
    assert "models:    gpt-4o-mini, claude-*" in whoami.stdout
    assert "gpt-4o\n" not in whoami.stdout, "finance's model is not alice's"
    as_json = json.loads(cli.run("whoami", "--json").stdout)
    assert as_json["identity"]["issuer"] == idp.issuer
    assert [g["name"] for g in as_json["policy"]["groups"]] == ["engineering"]
    assert token not in whoami.stdout + whoami.stderr

    # Refresh: after the IdP's TTL, access-token gives a new token the gateway takes.
    first_exp = claims(token)["exp"]
    newer: list[str] = []

    def refreshed() -> bool:
        newer.append(cli.access_token())
        return newer[-1] != token

    wait_until("a refreshed access token", refreshed, timeout=ACCESS_TOKEN_TTL * 3)
    assert claims(newer[-1])["exp"] > first_exp
    assert time.time() >= first_exp - ACCESS_TOKEN_TTL / 4 - 1, "refreshed only near expiry"
    assert ask_gateway(stack, newer[-1]) == 200
    rotated = cli.stored()["refresh_token"]
    assert rotated != stored["refresh_token"], "oidc-provider rotates a public client's refresh token"

    # Logout revokes the refresh token at the IdP and deletes the file.
    done = cli.run("logout")
    assert done.returncode == 0, done.stderr
    assert "Revoked the refresh token" in done.stderr and "Deleted" in done.stderr
    assert cli.stored_files() == []
    status, error = idp.refresh(rotated)
    assert (status, error.get("error")) == (400, "invalid_grant")
    gone = cli.run("access-token")
    assert gone.returncode == 1 and "warden login" in gone.stderr and gone.stdout == ""


def test_device_flow_with_the_idp_the_control_plane_names(idp, stack, browser, tmp_path):
    cli = Cli(tmp_path, idp, stack)
    # No issuer, client or scope given: `GET /v1/login` names them.
    del cli.env["WARDEN_ISSUER"], cli.env["WARDEN_CLIENT_ID"]
    running = cli.start("login", "--device")
    uri = running.wait_for(r"open (http://\S+) on any device").group(1)
    code = running.wait_for(r"^\s+([A-Z]{4}-[A-Z]{4})\s*$").group(1)
    assert running.popen.poll() is None, "waiting for the sign-in"
    page = browser.new_page()
    page.goto(uri)
    page.fill("input[name=user_code]", code)
    page.click("button[type=submit]")
    page.click("button[autofocus]")  # "Continue" on the confirmation page
    sign_in(page, "fiona")
    page.wait_for_selector("text=Sign-in Success")
    assert running.finish() == 0, running.stderr()
    stored = cli.stored()
    assert (stored["issuer"], stored["client_id"], stored["scope"]) == (idp.issuer, CLI_CLIENT, SCOPE)
    assert claims(stored["access_token"])["sub"] == "fiona" and stored["refresh_token"]
    assert stored["access_token"] not in running.stderr() + running.out
    whoami = cli.run("whoami")
    assert "groups:   finance" in whoami.stdout and "models:    gpt-4o\n" in whoami.stdout, whoami.stdout


def test_long_running_program_outlives_its_tokens(idp, stack, browser, tmp_path, monkeypatch):
    """examples/clients/long_running.py: one OpenAI and one Anthropic client,
    built once, keep working across several access-token expiries."""
    cli = Cli(tmp_path, idp, stack)
    login_in_browser(cli, browser)
    for key, value in cli.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("WARDEN_BIN", str(WARDEN_BIN))
    monkeypatch.setenv("WARDEN_GATEWAY", stack.gateway_url)
    spec = importlib.util.spec_from_file_location("long_running", ROOT / "examples" / "clients" / "long_running.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    wait_until("the IdP's keys in the filter", lambda: ask_gateway(stack, cli.access_token()) == 200)

    tokens_used: list[str] = []
    statuses: list[int] = []
    gpt, claude = example.gpt, example.claude

    def one_round() -> bool:
        raw = gpt.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "still there?"}])
        statuses.append(raw.status_code)
        raw = claude.messages.with_raw_response.create(
            model="claude-sonnet-4-6", max_tokens=16, messages=[{"role": "user", "content": "still there?"}])
        statuses.append(raw.status_code)
        token = example.warden_token()
        if not tokens_used or tokens_used[-1] != token:
            tokens_used.append(token)
        return len(tokens_used) >= 4

    wait_until("three token expiries", one_round, timeout=ACCESS_TOKEN_TTL * 6)
    assert set(statuses) == {200}, statuses
    assert len(statuses) >= 8
    expiries = [claims(t)["exp"] for t in tokens_used]
    assert expiries == sorted(expiries) and len(set(expiries)) == len(expiries)


def test_login_reaches_an_https_idp_that_a_company_ca_signs(tmp_path):
    """The CLI speaks HTTPS (rustls) and verifies the IdP's certificate: an
    IdP whose certificate a company CA signed is reached when SSL_CERT_FILE
    names that CA, and refused without it (never reached unverified)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    import datetime
    import ipaddress

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Example Corp test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                       crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    (tmp_path / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "idp.pem").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "idp-key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))

    port = Ports.free().gateway
    issuer = f"https://127.0.0.1:{port}"
    key_jwk = json.loads(subprocess.run([node_binary(), "server.mjs", "--generate-key", "tls-key"], cwd=IDP_DIR,
                                        capture_output=True, text=True, check=True, timeout=30).stdout)
    (tmp_path / "keys.json").write_text(json.dumps([key_jwk]))
    idp = spawn("oidc-provider", [node_binary(), str(IDP_DIR / "server.mjs"), "--port", str(port),
                                  "--keys", str(tmp_path / "keys.json"), "--tls-cert", str(tmp_path / "idp.pem"),
                                  "--tls-key", str(tmp_path / "idp-key.pem")], tmp_path / "idp.log")
    try:
        wait_until("the HTTPS IdP", lambda: "listening on https://" in (tmp_path / "idp.log").read_text(),
                   alive=idp.check_alive)
        env = {k: v for k, v in os.environ.items() if not k.startswith("WARDEN_") and k != "SSL_CERT_FILE"}
        env.update({"XDG_CONFIG_HOME": str(tmp_path / "config"), "HOME": str(tmp_path)})
        argv = [str(WARDEN_BIN), "login", "--device", "--issuer", issuer, "--client-id", CLI_CLIENT,
                "--scope", SCOPE, "--timeout", "2"]

        # Unknown CA: refused before anything is sent.
        refused = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
        assert refused.returncode != 0
        assert "certificate" in refused.stderr.lower() or "unknown" in refused.stderr.lower(), refused.stderr
        assert "open https://" not in refused.stderr

        # The company CA trusted: discovery and the device authorization
        # (a GET and a POST over TLS) succeed; the user code is shown.
        trusted = subprocess.run(argv, env={**env, "SSL_CERT_FILE": str(tmp_path / "ca.pem")},
                                 capture_output=True, text=True, timeout=60)
        assert f"open {issuer}/" in trusted.stderr, trusted.stderr
        assert re.search(r"^\s+[A-Z]{4}-[A-Z]{4}\s*$", trusted.stderr, re.M), trusted.stderr
    finally:
        idp.stop()
