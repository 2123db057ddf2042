"""Interoperability with a real OpenID Provider (the `oidc-provider` package on
Node): discovery, JWKS, key rotation while Envoy runs, and an IdP outage that
cached keys ride out until their bound, then a clear denial."""

from __future__ import annotations

import json
import socket
import subprocess
import urllib.parse
from pathlib import Path

import pytest
import yaml

from harness.stack import ROOT, Ports, Process, default_filter_config, http, node_binary, spawn, wait_until

IDP_DIR = ROOT / "tests" / "idp"
CLIENT_ID = "warden-e2e"
CLIENT_SECRET = "warden-e2e-client-secret-of-enough-length"
# Short bounds so the test sees refresh and expiry in seconds.
REFRESH, MAX_STALE, MIN_REFETCH = 2, 5, 1

def port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


class Idp:
    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.port = Ports.free().gateway
        self.issuer = f"http://127.0.0.1:{self.port}"
        self.process: Process | None = None

    def new_key(self, kid: str) -> dict:
        out = subprocess.run([node_binary(), "server.mjs", "--generate-key", kid], cwd=IDP_DIR,
                             capture_output=True, text=True, check=True, timeout=30)
        return json.loads(out.stdout)

    def start(self, keys: list[dict]) -> None:
        path = self.workdir / f"idp-keys-{'-'.join(k['kid'] for k in keys)}.json"
        path.write_text(json.dumps(keys))
        self.process = spawn("oidc-provider", [node_binary(), str(IDP_DIR / "server.mjs"), "--port", str(self.port),
                                               "--keys", str(path)], self.workdir / "logs" / "idp.log")
        wait_until("the IdP", lambda: http("GET", f"{self.issuer}/.well-known/openid-configuration",
                                           timeout=2)[0] == 200, alive=self.process.check_alive)

    def stop(self) -> None:
        if self.process:
            self.process.stop()
            # The next start must be the one answering, never a survivor.
            wait_until("the IdP's port to close", lambda: not port_open(self.port), timeout=10)

    def token(self) -> str:
        body = urllib.parse.urlencode({"grant_type": "client_credentials", "client_id": CLIENT_ID,
                                       "client_secret": CLIENT_SECRET, "scope": "llm"}).encode()
        status, _, raw = http("POST", f"{self.issuer}/token", body=body,
                              headers={"content-type": "application/x-www-form-urlencoded"})
        assert status == 200, raw
        return json.loads(raw)["access_token"]


@pytest.fixture
def idp(tmp_path):
    (tmp_path / "logs").mkdir()
    server = Idp(tmp_path)
    yield server
    server.stop()


def kid_of(token: str) -> str:
    import base64
    header = token.split(".")[0]
    return json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))["kid"]


def ask(stack, token: str) -> tuple[int, str | None]:
    status, headers, _ = http("POST", f"{stack.gateway_url}/openai/v1/chat/completions",
                              body={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
                              headers={"authorization": f"Bearer {token}"})
    return status, headers.get("x-warden-reason")


def test_real_idp_discovery_rotation_and_outage(idp, make_stack):
    key_a = idp.new_key("key-a")
    idp.start([key_a])
    config = default_filter_config()
    config["authentication"]["issuers"].append({
        "issuer": idp.issuer, "audiences": ["warden"],
        # No path: the filter finds the JWKS through OIDC discovery.
        "jwks": {"cluster": "real_idp", "refresh_seconds": REFRESH, "max_stale_seconds": MAX_STALE,
                 "min_refetch_seconds": MIN_REFETCH},
    })
    stack = make_stack(filter_config=yaml.safe_dump(config), extra_clusters={"real_idp": idp.port})

    # Discovery and JWKS: a token the IdP issued is accepted.
    first = idp.token()
    assert kid_of(first) == "key-a"
    wait_until("the IdP's keys in the filter", lambda: ask(stack, first)[0] == 200)

    # Rotation: the IdP restarts signing with a new key, still publishing the old.
    idp.stop()
    key_b = idp.new_key("key-b")
    idp.start([key_b, key_a])
    rotated = idp.token()
    assert kid_of(rotated) == "key-b"
    # An unknown kid triggers a refetch, rate-limited to one per MIN_REFETCH: if the
    # timer's fetch (which may have hit the IdP while it restarted) took the slot,
    # the next request after it gets the new key.
    wait_until("the rotated key", lambda: ask(stack, rotated) == (200, None), timeout=120)
    assert ask(stack, first)[0] == 200, "tokens signed with the previous key still verify"

    # Outage: cached keys carry on within the bound, then requests are denied
    # clearly, not with a misleading 401, and nothing else in between. (When
    # exactly: checked to the second on a driven clock in
    # tests/emulated/test_faults.py; here the machine's load decides how many
    # requests fit before it.)
    idp.stop()
    seen: list[tuple[int, str | None]] = []

    def refused_as_stale() -> bool:
        seen.append(ask(stack, rotated))
        return seen[-1] == (503, "warden.keys_stale")

    wait_until("the stale-keys denial", refused_as_stale, timeout=120)
    assert set(seen) <= {(200, None), (503, "warden.keys_stale")}, seen
    # The filter's own issuer (the dev IdP) is unaffected.
    assert ask(stack, stack.token("alice", ["engineering"]))[0] == 200

    # The IdP comes back: keys are fetched again and requests pass.
    idp.start([key_b, key_a])
    wait_until("recovery after the IdP returns", lambda: ask(stack, rotated)[0] == 200, timeout=120)
    def idp_records():
        return [r for r in stack.access_log_records() if r.get("issuer") == idp.issuer]

    wait_until("the IdP users' access-log records", lambda: len(idp_records()) >= 4)
    assert all(r["user"] == CLIENT_ID and r["groups"] == "engineering" for r in idp_records())
