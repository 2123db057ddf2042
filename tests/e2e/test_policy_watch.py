"""A published policy is live in the gateway as soon as it is activated: the
filter watches the active version (`Prefer: wait=N` on its poll, answered by
the control plane when a version is activated) instead of waiting for its
next poll. The poll period here is ten minutes, so only a watch can bring
each new version in time; the time each took is printed (BENCHMARKS.md has
the measured figures), never asserted."""

from __future__ import annotations

import json
import time
import uuid

import pytest
import yaml

from harness.stack import Ports, Stack, default_filter_config, http, wait_until

CHAT = "/openai/v1/chat/completions"


@pytest.fixture
def watched_stack(database_url, tmp_path):
    cfg = default_filter_config()
    cfg["control_plane"].update({"poll_seconds": 600, "max_stale_seconds": 900, "watch_seconds": 25})
    stack = Stack.start(Ports.free(), tmp_path / "stack", filter_config=cfg,
                        database_url=database_url)
    try:
        yield stack
    finally:
        stack.stop()


def policy_allowing(model: str) -> dict:
    return {**default_filter_config()["policy"], "groups": {"engineering": {"models": [model]}}}


def status_for(stack: Stack, token: str, model: str) -> int:
    return http("POST", f"{stack.gateway_url}{CHAT}", body={"model": model, "messages": [
        {"role": "user", "content": "hi"}]}, headers={"authorization": f"Bearer {token}"})[0]


def test_each_activated_version_reaches_the_gateway_without_waiting_for_a_poll(watched_stack, tmp_path):
    stack = watched_stack
    admin = stack.token("root", ["warden-admins"])
    alice = stack.token("alice", ["engineering"])
    for round_, model in enumerate(["gpt-4o-mini", "claude-3-5-haiku", "gpt-4o-mini"]):
        path = tmp_path / f"policy-{uuid.uuid4().hex[:6]}.yaml"
        path.write_text(yaml.safe_dump(policy_allowing(model)))
        published = time.monotonic()
        stack.cli("policy", "push", str(path), "-m", f"watch round {round_}", token=admin)
        # The model it allows is served, and the other one (which the
        # version before allowed, or the inline policy's "*") is not.
        other = "claude-3-5-haiku" if model == "gpt-4o-mini" else "gpt-4o-mini"
        wait_until(f"version {round_ + 1} in the gateway", lambda: status_for(stack, alice, other) == 403,
                   timeout=20)
        print(f"version {round_ + 1}: enforced {time.monotonic() - published:.3f} s after `warden policy push` returned")
        assert status_for(stack, alice, model) == 200
    versions = json.loads(stack.cli("policy", "list", "--json", token=admin).stdout)["policies"]
    assert [v["version"] for v in versions if v["active"]] == [3]
