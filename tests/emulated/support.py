"""What the emulated-host tests share: the filter's configuration, tokens,
and the few steps most tests take (loading an issuer's keys, a chat
request). Each test builds its own Envoy (fresh shared data, stats, clock)."""

from __future__ import annotations

import json

import yaml

from host import ROOT, Envoy, Stream, Vm
from tokens import RsaKey, jwks

ISSUER = "https://idp.example.com/realms/acme"
DISCOVERY_PATH = "/realms/acme/.well-known/openid-configuration"
JWKS_PATH = "/realms/acme/protocol/openid-connect/certs"
PROVIDER_KEY = "sk-emulated-provider-key"
GATEWAY_SECRET = "emulated-gateway-secret"
# The policy `make run` starts with (envoy/envoy.yaml carries it verbatim).
DEFAULT_POLICY = yaml.safe_load((ROOT / "examples" / "policies" / "default.yaml").read_text())


def filter_config(control_plane: bool = False, policy: dict | None = None) -> str:
    """The plugin configuration, shaped like envoy/envoy.yaml's, as JSON text
    (what a StringValue carries, and what Istio and Envoy Gateway send)."""
    config = {
        "providers": [{"name": "openai", "api": "openai", "path_prefix": "/openai/",
                       "cluster": "provider_openai", "credential": {"env": "WARDEN_OPENAI_API_KEY"}}],
        "authentication": {"issuers": [{
            "issuer": ISSUER, "audiences": ["warden"],
            "jwks": {"cluster": "idp", "refresh_seconds": 300, "max_stale_seconds": 3600},
        }]},
        "policy": policy or DEFAULT_POLICY,
    }
    if control_plane:
        config["control_plane"] = {"cluster": "warden_control_plane", "authority": "cp.example.internal:8080",
                                   "gateway_key_env": "WARDEN_GATEWAY_SECRET", "poll_seconds": 5,
                                   "max_stale_seconds": 300}
    return json.dumps(config)


def make_envoy(control_plane: bool = False, env: dict | None = None, **kw) -> Envoy:
    environment = {"WARDEN_OPENAI_API_KEY": PROVIDER_KEY, "WARDEN_GATEWAY_SECRET": GATEWAY_SECRET}
    return Envoy(filter_config(control_plane, **kw), env=environment if env is None else env)


def mint(key: RsaKey, envoy: Envoy, sub: str = "alice", groups=("engineering",), ttl: int = 600) -> str:
    """A token from the IdP, issued now by the fake clock."""
    return key.token({"iss": ISSUER, "aud": "warden", "sub": sub, "groups": list(groups),
                      "iat": envoy.now, "exp": envoy.now + ttl})


def load_keys(vm: Vm, *keys: RsaKey) -> None:
    """The root context's timer fetches the issuer's keys: OIDC discovery,
    then the JWKS it names, both through the `idp` cluster."""
    vm.tick()
    [discovery] = vm.pending("idp")
    assert discovery.path == DISCOVERY_PATH
    vm.respond(discovery, 200, [("content-type", "application/json")],
               json.dumps({"issuer": ISSUER, "jwks_uri": f"https://idp.example.com{JWKS_PATH}"}))
    [keys_call] = vm.pending("idp")
    assert keys_call.path == JWKS_PATH
    vm.respond(keys_call, 200, [("content-type", "application/json")], jwks(*keys))


def chat_body(text: str, model: str = "gpt-4o-mini", stream: bool = False) -> bytes:
    body = {"model": model, "messages": [{"role": "user", "content": text}]}
    if stream:
        body["stream"] = True
    return json.dumps(body).encode()


def request_headers(token: str | None, body: bytes = b"", path: str = "/openai/v1/chat/completions"):
    headers = [(":method", "POST"), (":path", path), (":authority", "gateway.example"),
               (":scheme", "http"), ("content-type", "application/json"),
               ("content-length", str(len(body))), ("user-agent", "emulated-test")]
    if token:
        headers.append(("authorization", f"Bearer {token}"))
    return headers


def send_chat(vm: Vm, token: str | None, text: str = "hello", **kw) -> Stream:
    """A chat completion request, headers then its body in one chunk."""
    body = chat_body(text, **kw)
    stream = vm.new_stream()
    stream.send_request_headers(request_headers(token, body))
    stream.send_request_body(body, end_of_stream=True)  # dropped by the host after a local reply
    return stream
