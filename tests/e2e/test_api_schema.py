"""The control plane's API against its own OpenAPI description, property-based.

schemathesis reads `GET /v1/openapi.json` from a real `warden serve --dev`
and, for every operation, generates requests (valid ones, and ones the
description rules out), sends them with an admin's token or the gateway
secret as each operation's `security` says, and checks every answer: never a
5xx, a status the operation describes, the content type, headers and body its
description gives, a request the description rules out refused with a 4xx,
and an operation that needs credentials refusing a request without them (or
with wrong ones). Its phases: boundary values of each parameter and field
(coverage), random requests (fuzzing), and sequences that feed one answer's
ids into the next request (stateful).

So that requests reach more than "not found", the server holds a policy
version, a recorded session, an approval that is pending and one that was
denied before the run starts, and the operations on one version, approval or
session are given their ids. (A pending approval's `/wait` would hold each
request up to 30 s: it is given the denied one, which answers at once.)

Run on SQLite and on PostgreSQL (a real server: scripts/test.sh starts one
and sets WARDEN_TEST_DATABASE_URL), whose text cannot hold U+0000.

Bounded and repeatable: a few examples per operation and phase, derandomized
(the same requests every run; no example database). It takes about 20 s per
database on two cores. Only the control plane runs (no Envoy). It runs the
schemathesis command line, not its pytest plugin, whose lazily loaded
schemas do not work with the pytest pinned here.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from harness.stack import WARDEN_BIN, Ports, Stack, StackError, http

ROOT = Path(__file__).resolve().parents[2]
SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"

# Per operation, phase and generation mode: small, for the time it takes.
MAX_EXAMPLES = 25
# A stop for a run that hangs; it normally takes a fraction of this.
RUN_TIMEOUT_SECONDS = 600

CHECKS = [
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "negative_data_rejection",
    "ignored_auth",
]

ADMIN_GROUP = "warden-admins"


@pytest.fixture(scope="module")
def control_plane(database_url, tmp_path_factory):
    if not WARDEN_BIN.exists():
        raise StackError(f"{WARDEN_BIN} is missing; run `make build` first")
    kind = "sqlite" if database_url is None else "postgres"
    stack = Stack(Ports.free(), tmp_path_factory.mktemp(f"api-schema-{kind}"), database_url=database_url)
    (stack.data_dir / "logs").mkdir(parents=True, exist_ok=True)
    try:
        stack.start_control_plane()
        yield stack
    finally:
        stack.stop()


def _call(stack: Stack, method: str, path: str, body=None, *, token: str | None = None,
          expect: int = 200) -> dict:
    headers = {"authorization": f"Bearer {token}"} if token else {"x-warden-gateway-key": stack.gateway_secret}
    status, _, raw = http(method, f"{stack.control_plane_url}{path}", body, headers=headers)
    assert status == expect, f"{method} {path}: {status} {raw[:500]!r}"
    return json.loads(raw) if raw else {}


def _open_approval(stack: Stack, prompt: str) -> str:
    approval = _call(stack, "POST", "/v1/approvals", {
        "mode": "hold",
        "issuer": "https://idp.example.com",
        "subject": "requester",
        "provider": "openai",
        "model": "gpt-4o-mini",
        "route": "/v1/chat/completions",
        "rule": "needs-approval",
        "policy_version": 1,
        "body_sha256": hashlib.sha256(prompt.encode()).hexdigest(),
        "masked_prompt": prompt,
        # The admin group: the token schemathesis sends may decide it.
        "approvers": [ADMIN_GROUP],
        "ttl_seconds": 3600,
    }, expect=201)
    return approval["id"]


@pytest.fixture(scope="module")
def seeded(control_plane: Stack) -> dict:
    """What the server holds before the run, and the admin's token."""
    admin = control_plane.token("schemathesis-admin", [ADMIN_GROUP])
    document = (ROOT / "examples" / "policies" / "default.yaml").read_text()
    version = _call(control_plane, "POST", "/v1/policies",
                    {"document": document, "message": "seeded for schemathesis"},
                    token=admin, expect=201)["version"]
    pending = _open_approval(control_plane, "a pending request")
    denied = _open_approval(control_plane, "a denied request")
    _call(control_plane, "POST", f"/v1/approvals/{denied}/deny", {"reason": "seeded"}, token=admin)
    session = "schemathesis-session-1"
    _call(control_plane, "POST", "/v1/sessions", {"records": [{
        "id": session,
        "time": "2026-01-02T03:04:05Z",
        "subject": "requester",
        "groups": ["engineering"],
        "route": "/v1/chat/completions",
        "policy_version": version,
        "decision": "allowed",
        "rules": "",
        "record": "metadata",
    }]})
    return {"admin": admin, "version": version, "pending": pending, "denied": denied,
            "session": session}


def _toml(value) -> str:
    """A TOML value: JSON's strings, numbers and booleans are TOML's too."""
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {_toml(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(value)


def _config(stack: Stack, seeded: dict) -> str:
    lines = [
        "[generation]",
        'mode = "all"',
        f"max-examples = {MAX_EXAMPLES}",
        "deterministic = true",
        'database = "none"',
        "",
        "[checks]",
        "enabled = false",
        *(f"{check}.enabled = true" for check in CHECKS),
        "",
        "[auth.openapi.person]",
        f"bearer = {_toml(seeded['admin'])}",
        "[auth.openapi.gateway]",
        f"api_key = {_toml(stack.gateway_secret)}",
    ]
    # The ids of what the server holds, for the operations on one of them.
    ids = [
        ("^/v1/policies/\\{version\\}", {"version": seeded["version"]}),
        ("^/v1/approvals/\\{id\\}/wait$", {"id": seeded["denied"]}),
        ("^/v1/approvals/\\{id\\}(/(approve|deny|consume))?$", {"id": seeded["pending"]}),
        ("^/v1/sessions/\\{id\\}$", {"id": seeded["session"]}),
    ]
    for pattern, parameters in ids:
        lines += ["", "[[operations]]", f"include-path-regex = {_toml(pattern)}",
                  f"parameters = {_toml(parameters)}"]
    return "\n".join(lines) + "\n"


def test_every_operation_answers_as_described(control_plane: Stack, seeded: dict, tmp_path: Path):
    config = tmp_path / "schemathesis.toml"
    config.write_text(_config(control_plane, seeded))
    run = subprocess.run(
        [str(SCHEMATHESIS), "--config-file", str(config), "run",
         f"{control_plane.control_plane_url}/v1/openapi.json",
         "--workers", "1", "--no-color"],
        capture_output=True, text=True, timeout=RUN_TIMEOUT_SECONDS, cwd=tmp_path)
    output = run.stdout + run.stderr
    if run.returncode != 0:
        print(output)
        print(control_plane.dump_logs())
    assert run.returncode == 0, "schemathesis found failures (its report is above)"
    # A run that checked nothing also exits 0 (a check's name misspelt, a
    # description without operations): every operation must have been tested.
    status, _, raw = http("GET", f"{control_plane.control_plane_url}/v1/openapi.json")
    assert status == 200
    methods = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
    operations = sum(len(methods & item.keys()) for item in json.loads(raw)["paths"].values())
    # Less the one that serves the description, which schemathesis leaves out.
    operations -= 1
    assert operations > 0
    tested = re.search(r"^\s*Tested: (\d+)$", output, re.MULTILINE)
    assert tested and int(tested.group(1)) == operations, output
    assert "without checks" not in output, output
