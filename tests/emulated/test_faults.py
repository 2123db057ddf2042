"""The neighbours fail, on a clock the test drives: the IdP and the control
plane answer garbage, an error, or nothing at all (a reset connection, or a
call Envoy timed out: both arrive as a call with no answer). The last good
keys and the last good policy serve until exactly their bound, then requests
are refused with a clear 503 in the provider's format; the next good answer
restores service.

The end-to-end tests (tests/e2e/test_control_plane.py, test_real_idp.py) show
the same faults on the real Envoy without asserting *when*; the bounds are
checked here, where time moves only when the test says so."""

import json

import pytest

from support import load_keys, make_envoy, mint, send_chat
from tokens import jwks

KEYS_REFRESH, KEYS_MAX_STALE = 300, 3600  # support.filter_config's jwks
POLICY_POLL, POLICY_MAX_STALE = 5, 300  # and its control plane


def garbage(vm, call):
    vm.respond(call, 200, [("content-type", "application/json")], "<html><body>maintenance</body></html>")


def error(vm, call):
    vm.respond(call, 503, [("content-type", "text/plain")], "upstream connect error")


def nothing(vm, call):
    vm.fail(call)


BAD_ANSWERS = [garbage, error, nothing]


def refused_with(stream) -> tuple[int, str]:
    client = stream.downstream
    return client.status, (client.headers.get("x-warden-reason") or b"").decode()


@pytest.mark.parametrize("bad", BAD_ANSWERS, ids=lambda f: f.__name__)
def test_keys_outlive_a_failing_idp_until_their_bound_then_requests_are_refused_clearly(key, bad):
    envoy = make_envoy()
    vm = envoy.start_vm()
    load_keys(vm, key)  # the last good fetch: now
    failures = 0
    # Every refresh until the bound fails the same way, and is counted.
    for _ in range(KEYS_MAX_STALE // KEYS_REFRESH - 1):
        envoy.advance(KEYS_REFRESH)
        vm.tick()
        for call in vm.pending("idp"):
            bad(vm, call)
            failures += 1
        assert send_chat(vm, mint(key, envoy)).upstream.end, "stale keys still serve"
    assert failures >= KEYS_MAX_STALE // KEYS_REFRESH - 1
    assert envoy.stats["warden.keys.fetch_failures"] == failures

    # The bound is exact: at max_stale_seconds old the keys serve, a second later they do not.
    envoy.advance(KEYS_MAX_STALE - (KEYS_MAX_STALE // KEYS_REFRESH - 1) * KEYS_REFRESH)
    assert send_chat(vm, mint(key, envoy)).upstream.end
    envoy.advance(1)
    late = send_chat(vm, mint(key, envoy))
    assert late.upstream.headers is None
    assert refused_with(late) == (503, "warden.keys_stale")
    error_body = late.downstream.json()["error"]
    assert error_body["code"] == "warden.keys_stale" and "keys" in error_body["message"]

    # The IdP answers again: the next refresh restores service.
    vm.tick()
    for call in vm.pending("idp"):
        vm.respond(call, 200, [("content-type", "application/json")], jwks(key))
    assert send_chat(vm, mint(key, envoy)).upstream.end


@pytest.mark.parametrize("bad", BAD_ANSWERS, ids=lambda f: f.__name__)
def test_the_last_policy_outlives_a_failing_control_plane_until_its_bound_then_requests_are_refused_clearly(key, bad):
    envoy = make_envoy(control_plane=True)
    vm = envoy.start_vm()
    load_keys(vm, key)  # that tick also polled the control plane
    [poll] = vm.pending("warden_control_plane")
    vm.respond(poll, 404, [("content-type", "application/json")], '{"error": "nothing published"}')
    # The last good contact: now. From here on, every poll fails.
    for _ in range(POLICY_MAX_STALE // POLICY_POLL):
        envoy.advance(POLICY_POLL)
        vm.tick()
        for call in vm.pending("warden_control_plane"):
            bad(vm, call)
        for call in vm.pending("idp"):  # keys stay fresh: only the control plane fails here
            vm.respond(call, 200, [("content-type", "application/json")], jwks(key))
    # Exactly max_stale_seconds of silence: the last policy still serves...
    served = send_chat(vm, mint(key, envoy))
    assert served.upstream.end and served.state("warden.policy_version") == "0"
    # ...one second more: refused, in the provider's format.
    envoy.advance(1)
    late = send_chat(vm, mint(key, envoy))
    assert late.upstream.headers is None
    assert refused_with(late) == (503, "warden.policy_stale")
    assert "control plane" in late.downstream.json()["error"]["message"]
    late.finish()
    assert late.state("warden.decision") == "error"

    # The control plane answers again: the next poll restores service.
    envoy.advance(POLICY_POLL)
    vm.tick()
    for call in vm.pending("warden_control_plane"):
        vm.respond(call, 404, [("content-type", "application/json")], '{"error": "nothing published"}')
    for call in vm.pending("idp"):
        vm.respond(call, 200, [("content-type", "application/json")], jwks(key))
    assert send_chat(vm, mint(key, envoy)).upstream.end


def test_a_policy_the_control_plane_garbles_is_not_installed_and_the_last_one_serves(key):
    envoy = make_envoy(control_plane=True)
    vm = envoy.start_vm()
    load_keys(vm, key)
    [poll] = vm.pending("warden_control_plane")
    vm.respond(poll, 404, [("content-type", "application/json")], '{"error": "nothing published"}')
    envoy.advance(POLICY_POLL)
    vm.tick()
    [poll] = vm.pending("warden_control_plane")
    # A version whose policy this filter cannot compile (a regex with no end).
    broken = {"version": 9, "sha256": "0" * 64, "policy": {"rules": [{"name": "x", "regex": "(", "action": "block"}]}}
    vm.respond(poll, 200, [("content-type", "application/json")], json.dumps(broken))
    assert envoy.stats.get("warden.policy.version", 0) == 0
    stream = send_chat(vm, mint(key, envoy))
    assert stream.upstream.end and stream.state("warden.policy_version") == "0"


def test_a_client_that_leaves_while_its_request_waits_for_keys_does_not_strand_the_next(key, rotated_key):
    from host import PAUSE
    from support import chat_body, request_headers

    envoy = make_envoy()
    vm = envoy.start_vm()
    load_keys(vm, key)
    envoy.advance(11)  # past min_refetch_seconds since the timer's fetch
    token = mint(rotated_key, envoy)  # a kid the VM does not hold: its request waits for a refetch
    body = chat_body("hello")
    first = vm.new_stream()
    assert first.send_request_headers(request_headers(token, body)) == PAUSE
    [refetch] = vm.pending("idp")
    # The client leaves: Envoy ends the stream and cancels its call, which
    # is never answered.
    first.finish()
    refetch.answered = True
    assert first.upstream.headers is None

    # A request right after it is not left waiting on the abandoned fetch:
    # within the refetch limit (which protects the IdP) it is refused at once.
    hasty = send_chat(vm, token)
    assert (hasty.downstream.status, hasty.downstream.headers.get("x-warden-reason")) == (
        401, b"warden.token_unknown_key")
    # Once the limit allows, the next one fetches again and goes on.
    envoy.advance(11)
    second = vm.new_stream()
    assert second.send_request_headers(request_headers(token, body)) == PAUSE
    [again] = vm.pending("idp")
    assert second.send_request_body(body, end_of_stream=True) == PAUSE
    vm.respond(again, 200, [("content-type", "application/json")], jwks(key, rotated_key))
    assert second.upstream.end and not second.local_replies


def test_after_an_outage_every_worker_serves_as_soon_as_one_reached_the_control_plane(key):
    envoy = make_envoy(control_plane=True)
    first, second = envoy.start_vm(), envoy.start_vm()
    load_keys(first, key)
    [poll] = first.pending("warden_control_plane")
    first.respond(poll, 404, [("content-type", "application/json")], '{"error": "nothing published"}')
    assert send_chat(second, mint(key, envoy)).upstream.end
    # The control plane is away past the bound: both workers refuse.
    envoy.advance(POLICY_MAX_STALE + 1)
    for vm in (first, second):
        assert refused_with(send_chat(vm, mint(key, envoy))) == (503, "warden.policy_stale")
    # It is back: the first worker's tick reaches it...
    first.tick()
    for call in first.pending("warden_control_plane"):
        first.respond(call, 404, [("content-type", "application/json")], '{"error": "nothing published"}')
    for call in first.pending("idp"):
        first.respond(call, 200, [("content-type", "application/json")], jwks(key))
    assert send_chat(first, mint(key, envoy)).upstream.end
    # ...and the second serves at once, before a tick of its own.
    assert send_chat(second, mint(key, envoy)).upstream.end
