"""A program that builds its SDK clients once and runs for hours, with the
person's own token from `warden login`: the key is fetched when a request
needs it, so the clients keep working across access-token expiries.

    warden login --issuer https://login.example.com --client-id warden-cli
    .venv/bin/python examples/clients/long_running.py

`warden access-token` prints a token valid for at least a minute, refreshing
it with the stored refresh token first when needed; `warden_token()` below
keeps it in memory until it is close to expiry, so most requests cost no
subprocess at all.

* OpenAI's SDK takes `api_key` as a callable: it calls it before each request.
* Anthropic's SDK takes a string only (its `credentials=` providers speak
  Anthropic's own OAuth, with a beta header a gateway must not forward); an
  `httpx.Auth` on its `http_client` sets the key on each request instead.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import threading
import time

import anthropic
import openai

try:  # The Anthropic SDK's HTTP client: httpx2 in its newer releases, httpx before.
    import httpx2 as httpx
except ImportError:
    import httpx

GATEWAY = os.environ.get("WARDEN_GATEWAY", "http://127.0.0.1:10000")
WARDEN = os.environ.get("WARDEN_BIN", "warden")
# Fetch a new token this many seconds before the cached one expires (the CLI
# itself refreshes a minute before, or a quarter of a short token's lifetime).
MARGIN_SECONDS = 30


class WardenToken:
    """`warden access-token`, cached until near the token's expiry. Thread-safe."""

    def __init__(self, warden: str = WARDEN, margin: float = MARGIN_SECONDS):
        self.warden, self.margin = warden, margin
        self._lock = threading.Lock()
        self._token, self._renew_at = "", 0.0

    def __call__(self) -> str:
        with self._lock:
            if time.time() >= self._renew_at:
                done = subprocess.run([self.warden, "access-token"], capture_output=True, text=True, timeout=60)
                if done.returncode != 0:
                    raise RuntimeError(f"warden access-token failed: {done.stderr.strip()}")
                self._token = done.stdout.strip()
                self._renew_at = self._renewal_time(self._token)
            return self._token

    def _renewal_time(self, token: str) -> float:
        """When to ask again: `margin` seconds before the JWT's `exp` (or a
        quarter of its lifetime before, for short-lived tokens); now when the
        token is not a readable JWT. Read, not verified: the gateway verifies."""
        try:
            payload = token.split(".")[1]
            claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
            exp, iat = float(claims["exp"]), float(claims.get("iat", time.time()))
        except (IndexError, KeyError, ValueError, TypeError):
            return 0.0
        return exp - min(self.margin, (exp - iat) / 4)


class WardenAuth(httpx.Auth):
    """Puts `warden_token`'s token where the Anthropic SDK puts its key, on
    each request: `x-api-key`, and `authorization` (which this SDK also fills
    from `api_key`)."""

    def __init__(self, token: WardenToken):
        self.token = token

    def auth_flow(self, request):
        token = self.token()
        request.headers["x-api-key"] = token
        request.headers["authorization"] = f"Bearer {token}"
        yield request


warden_token = WardenToken()

gpt = openai.OpenAI(base_url=f"{GATEWAY}/openai/v1", api_key=warden_token)
claude = anthropic.Anthropic(base_url=f"{GATEWAY}/anthropic", api_key="set-per-request",
                             http_client=httpx.Client(auth=WardenAuth(warden_token)))

if __name__ == "__main__":
    while True:
        answer = gpt.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "Still there?"}])
        print(answer.choices[0].message.content)
        message = claude.messages.create(
            model="claude-sonnet-4-6", max_tokens=64, messages=[{"role": "user", "content": "Still there?"}])
        print(message.content[0].text)
        time.sleep(600)
