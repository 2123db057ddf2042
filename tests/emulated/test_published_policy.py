"""A policy version the control plane publishes: polled on the root
context's timer through the control plane's cluster, with the gateway's
secret from Envoy's environment, and in force for the next request."""

import copy
import json

from support import DEFAULT_POLICY, GATEWAY_SECRET, load_keys, make_envoy, mint, send_chat


def test_a_policy_published_by_the_control_plane_is_used_by_the_next_request(key):
    envoy = make_envoy(control_plane=True)
    vm = envoy.start_vm()
    load_keys(vm, key)  # that tick also polled the control plane
    [poll] = vm.pending("warden_control_plane")
    assert (poll.path, poll.headers.get(":method")) == ("/v1/policy/active", b"GET")
    assert poll.headers.get(":authority") == b"cp.example.internal:8080"
    assert poll.headers.get("x-warden-gateway-key") == GATEWAY_SECRET.encode()
    vm.respond(poll, 404, [("content-type", "application/json")], '{"error": "nothing published"}')

    token = mint(key, envoy)
    before = send_chat(vm, token)
    assert before.upstream.end and before.state("warden.policy_version") == "0"
    before.finish()

    # Version 7 lets engineering use Claude models only.
    policy = copy.deepcopy(DEFAULT_POLICY)
    policy["groups"]["engineering"]["models"] = ["claude-*"]
    envoy.advance(5)  # poll_seconds
    vm.tick()
    [poll] = [c for c in vm.pending("warden_control_plane") if c.path == "/v1/policy/active"]
    vm.respond(poll, 200, [("content-type", "application/json"), ("etag", '"v7"')],
               json.dumps({"version": 7, "sha256": "0" * 64, "policy": policy}))
    assert ("info", "warden: policy version 7 is active") in vm.logs
    assert envoy.stats["warden.policy.version"] == 7 and envoy.stats["warden.policy.updates"] == 1

    after = send_chat(vm, token)
    assert after.upstream.headers is None, "refused under version 7"
    assert after.downstream.status == 403
    assert after.downstream.headers.get("x-warden-reason") == b"warden.model_denied"
    assert after.state("warden.policy_version") == "7"
    assert after.state("warden.decision") == "denied"

    # Another worker VM picks the version up from shared data, without polling.
    other = envoy.start_vm()
    assert send_chat(other, token).state("warden.policy_version") == "7"
    assert other.calls == []

    # The next poll is conditional on the version held.
    envoy.advance(5)
    vm.tick()
    [poll] = [c for c in vm.pending("warden_control_plane") if c.path == "/v1/policy/active"]
    assert poll.headers.get("if-none-match") == b'"v7"'
