"""Two worker VMs of one Envoy share an issuer's keys through proxy-wasm
shared data, and a lease written with CAS lets only one of them fetch."""

import json

from support import ISSUER, JWKS_PATH, load_keys, make_envoy, mint, send_chat
from tokens import jwks


def test_a_second_vm_does_not_fetch_the_keys_another_vm_is_fetching_or_has_stored(key):
    envoy = make_envoy()
    first, second = envoy.start_vm(), envoy.start_vm()

    first.tick()
    [discovery] = first.pending()
    second.tick()  # the same second: the first VM holds the fetch lease
    assert second.calls == []

    first.respond(discovery, 200, body=json.dumps({"issuer": ISSUER,
                                                   "jwks_uri": f"https://idp.example.com{JWKS_PATH}"}))
    first.respond(first.pending()[0], 200, body=jwks(key))
    envoy.advance(30)
    second.tick()  # the keys in shared data are fresh: nothing to fetch
    assert second.calls == []
    assert second.tick_period_ms == 1000, "the second VM counts the shared keys as loaded"
    assert send_chat(second, mint(key, envoy)).upstream.end
    assert second.calls == []


def test_when_two_vms_race_for_a_refresh_the_cas_lets_only_one_fetch(key):
    envoy = make_envoy()
    first, second = envoy.start_vm(), envoy.start_vm()
    load_keys(first, key)
    second.tick()
    envoy.advance(301)  # past refresh_seconds: both VMs see a fetch due

    # Between the second VM's read of the lease and its write, the first VM
    # (another worker thread) takes it: the second one's CAS no longer matches.
    lease = f"warden/v1/jwks-lease/{ISSUER}".encode()
    envoy.after_shared_read[lease] = first.tick
    second.tick()
    assert lease not in envoy.after_shared_read, "the second VM read the lease"

    [refresh] = first.pending()
    assert refresh.path == JWKS_PATH, "the location discovery gave is reused"
    assert second.pending() == [], "CAS mismatch: the second VM left the fetch to the first"
    first.respond(refresh, 200, body=jwks(key))
    assert send_chat(second, mint(key, envoy)).upstream.end
