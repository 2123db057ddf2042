"""Identity through the host: local replies without a token, keys fetched
through the IdP's cluster by the root context's timer or by a paused request,
and the credential swap on the way upstream."""

import json

import pytest

from host import CONTINUE, PAUSE
from support import (DISCOVERY_PATH, ISSUER, JWKS_PATH, PROVIDER_KEY, chat_body, load_keys, make_envoy,
                      mint, request_headers, send_chat)
from tokens import jwks


def test_a_request_without_a_token_gets_a_local_401_in_openai_format_and_nothing_goes_upstream():
    envoy = make_envoy()
    vm = envoy.start_vm()
    stream = send_chat(vm, None)

    [reply] = stream.local_replies
    assert reply["status"] == 401
    # Nothing reached the provider, and the body never reached the filter.
    assert stream.upstream.headers is None and not stream.upstream.body
    assert stream.actions == [("proxy_on_request_headers", PAUSE),
                              # Envoy runs its own reply through this filter's encoder side too.
                              ("proxy_on_response_headers", CONTINUE), ("proxy_on_response_body", CONTINUE)]
    client = stream.downstream
    assert client.status == 401 and client.end
    assert client.headers.get("x-warden-reason") == b"warden.no_token"
    assert client.headers.get("www-authenticate") == b'Bearer error="invalid_token"'
    assert client.headers.get("content-type") == b"application/json"
    error = client.json()["error"]
    assert error["code"] == "warden.no_token" and error["type"] == "authentication_error"
    assert set(error) == {"message", "type", "param", "code"}

    stream.finish()
    assert stream.state("warden.decision") == "unauthenticated"
    assert stream.state("warden.reason") == "warden.no_token"
    assert envoy.stats["warden.requests.openai.unauthenticated"] == 1


def test_keys_come_through_the_idp_cluster_and_a_verified_request_goes_upstream_with_the_provider_key(key):
    envoy = make_envoy()
    vm = envoy.start_vm()
    token = mint(key, envoy)

    # Before any keys: a clear 503, not a misleading 401.
    early = send_chat(vm, token)
    assert early.downstream.status == 503
    assert early.downstream.headers.get("x-warden-reason") == b"warden.keys_not_loaded"

    # The timer fetches them: OIDC discovery, then the JWKS it names, from the root context.
    vm.tick()
    [discovery] = vm.pending()
    assert (discovery.cluster, discovery.path, discovery.context_id) == ("idp", DISCOVERY_PATH, vm.ROOT_ID)
    assert discovery.headers.get(":authority") == b"idp.example.com"
    assert discovery.headers.get(":method") == b"GET"
    vm.respond(discovery, 200, [("content-type", "application/json")],
               json.dumps({"issuer": ISSUER, "jwks_uri": f"https://idp.example.com{JWKS_PATH}"}))
    [keys_call] = vm.pending()
    assert (keys_call.cluster, keys_call.path) == ("idp", JWKS_PATH)
    vm.respond(keys_call, 200, [("content-type", "application/json")], jwks(key))
    assert ("info", f"warden: loaded 1 signing key(s) of {ISSUER} (0 skipped)") in vm.logs
    vm.tick()
    assert vm.tick_period_ms == 1000, "keys loaded: the slow timer"
    assert not vm.pending(), "fresh keys are not fetched again"

    body = chat_body("hello")
    stream = vm.new_stream()
    # Headers are held until the body is read (the model, the prompt).
    assert stream.send_request_headers(request_headers(token, body)) == PAUSE
    assert stream.upstream.headers is None
    assert stream.send_request_body(body, end_of_stream=True) == CONTINUE

    sent = stream.upstream
    assert sent.end and bytes(sent.body) == body
    assert sent.headers.get("authorization") == f"Bearer {PROVIDER_KEY}".encode()
    assert not any(token.encode() in value for _, value in sent.headers.pairs), "the token went upstream"
    assert sent.headers.get(":path") == b"/openai/v1/chat/completions"

    stream.send_response_headers([(":status", "200"), ("content-type", "application/json")])
    answer = json.dumps({"choices": [{"message": {"role": "assistant", "content": "hi"}}],
                         "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}})
    stream.send_response_body(answer, end_of_stream=True)
    assert stream.downstream.status == 200
    assert stream.downstream.json()["choices"][0]["message"]["content"] == "hi"
    assert stream.downstream.headers.get("x-warden"), "the filter marks what it handled"
    stream.finish()

    # What the access log reads (%FILTER_STATE(wasm.warden.*:PLAIN)%).
    assert {name: stream.state(f"warden.{name}") for name in
            ("user", "groups", "issuer", "provider", "model", "route", "decision", "policy_version")} == {
        "user": "alice", "groups": "engineering", "issuer": ISSUER, "provider": "openai",
        "model": "gpt-4o-mini", "route": "/v1/chat/completions", "decision": "allowed", "policy_version": "0"}
    assert json.loads(stream.state("warden.usage"))["total_tokens"] == 4
    assert envoy.stats["warden.requests.openai.allowed"] == 1


def test_a_token_with_an_unknown_kid_pauses_its_request_until_the_jwks_is_fetched_again(key, rotated_key):
    envoy = make_envoy()
    vm = envoy.start_vm()
    load_keys(vm, key)
    envoy.advance(11)  # past min_refetch_seconds (10) since the timer's fetch
    token = mint(rotated_key, envoy)  # the IdP rotated: a kid this VM does not hold

    body = chat_body("hello")
    stream = vm.new_stream()
    assert stream.send_request_headers(request_headers(token, body)) == PAUSE
    # The request itself asks for the JWKS again (the location discovery gave).
    [refetch] = vm.pending()
    assert (refetch.cluster, refetch.path, refetch.context_id) == ("idp", JWKS_PATH, stream.id)
    # The body arrives meanwhile and is held with the headers.
    assert stream.send_request_body(body, end_of_stream=True) == PAUSE
    assert stream.upstream.headers is None

    # The answer goes to the request's context, which verifies the token and
    # resumes the stream (proxy_continue_stream): headers and body go upstream.
    vm.respond(refetch, 200, [("content-type", "application/json")], jwks(key, rotated_key))
    assert stream.upstream.end and bytes(stream.upstream.body) == body
    assert stream.upstream.headers.get("authorization") == f"Bearer {PROVIDER_KEY}".encode()
    assert stream.state("warden.user") == "alice" and stream.state("warden.decision") == "allowed"
    assert not stream.local_replies

    # The refetched keys are shared: the next VM verifies with them and fetches nothing.
    other = envoy.start_vm()
    assert send_chat(other, mint(rotated_key, envoy)).upstream.end
    assert other.calls == []


def test_a_reset_key_fetch_is_a_counted_failure_not_a_crash(key):
    # Envoy delivers a reset call with no headers, and its header map does not
    # exist: reading it returns BadArgument, on which the SDK's getter panics.
    envoy = make_envoy()
    vm = envoy.start_vm()
    load_keys(vm, key)
    envoy.advance(301)  # past refresh_seconds: the timer fetches again
    vm.tick()
    [refresh] = vm.pending()
    vm.fail(refresh)  # the IdP's connection is reset (or its answer exceeds Envoy's buffer)
    assert envoy.stats["warden.keys.fetch_failures"] == 1
    assert send_chat(vm, mint(key, envoy)).upstream.end, "stale keys still serve"
