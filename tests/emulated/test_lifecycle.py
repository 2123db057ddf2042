"""The VM's start: the plugin configuration reaches on_configure, a bad one
is refused (Envoy then rejects the filter) and the log says why."""

import json

import yaml
from google.protobuf import struct_pb2

from host import Envoy
from support import PROVIDER_KEY, filter_config, make_envoy


def make_envoy_with(configuration: bytes | str) -> Envoy:
    return Envoy(configuration, env={"WARDEN_OPENAI_API_KEY": PROVIDER_KEY})


def test_a_valid_configuration_starts_and_an_invalid_one_is_refused_with_the_reason():
    vm = make_envoy().start_vm()
    assert vm.vm_started and vm.configured
    assert any(level == "info" and message.endswith(": configured 1 provider(s), 1 issuer(s)")
               for level, message in vm.logs)
    # The first tick comes at once: it starts the first key fetch (a gateway
    # that is ready but cannot verify tokens answers 503 until the keys land).
    assert vm.tick_period_ms == 5
    vm.tick()
    assert vm.pending(), "the first tick asks the IdP for the keys"
    # No keys yet: the fast timer until they come.
    assert vm.tick_period_ms == 250
    assert not any(level in ("warn", "error") for level, _ in vm.logs)

    # The control plane's secret comes from Envoy's environment (WASI environ);
    # without it the filter cannot authenticate to its control plane.
    vm = make_envoy(control_plane=True, env={"WARDEN_OPENAI_API_KEY": "sk-x"}).start_vm()
    assert vm.vm_started and not vm.configured
    [(level, message)] = vm.logs
    assert level == "error" and "WARDEN_GATEWAY_SECRET is not set in Envoy's environment" in message
    assert vm.tick_period_ms is None, "a refused configuration starts no timer"

    vm = Envoy(json.dumps({**json.loads(filter_config()), "bogus_field": 1})).start_vm()
    assert not vm.configured
    assert "unknown field `bogus_field`" in vm.log_text()

    vm = Envoy(b"").start_vm()
    assert not vm.configured
    assert "no plugin configuration; refusing to start" in vm.log_text()

    # A provider key missing from the environment does not stop the VM, but is said at once.
    vm = make_envoy(env={}).start_vm()
    assert vm.configured
    assert any(level == "warn" and "WARDEN_OPENAI_API_KEY is not set" in message
               for level, message in vm.logs)


def test_the_configuration_is_taken_as_json_text_or_a_protobuf_struct_but_not_yaml():
    """Envoy passes a configuration typed google.protobuf.Struct (native YAML
    in an Envoy file) as serialized protobuf, and a StringValue (what Istio and
    Envoy Gateway send) as its text. The module has no YAML parser."""
    config = json.loads(filter_config())
    as_struct = struct_pb2.Struct()
    as_struct.update(config)
    vm = make_envoy_with(as_struct.SerializeToString()).start_vm()
    assert vm.configured, vm.log_text()
    # Struct numbers are doubles; integer settings still take them.
    config["max_body_bytes"] = 65536
    as_struct.update(config)
    vm = make_envoy_with(as_struct.SerializeToString()).start_vm()
    assert vm.configured, vm.log_text()
    config["max_body_bytes"] = 65536.5
    as_struct.update(config)
    vm = make_envoy_with(as_struct.SerializeToString()).start_vm()
    assert not vm.configured

    vm = make_envoy_with(yaml.safe_dump(json.loads(filter_config()))).start_vm()
    assert not vm.configured
    assert "does not read YAML text" in vm.log_text()
