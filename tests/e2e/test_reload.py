"""Envoy takes a new filter configuration while requests and streams are in
flight, the way a mesh delivers it: the filter comes through ECDS (extension
config discovery; Istio's WasmPlugin and Envoy Gateway use it), here from a
watched file; new and replaced listeners come through LDS. New requests get
the new configuration, an open stream finishes under the one it started
with, nothing is dropped, and a configuration the filter refuses leaves the
last good one serving (Envoy's stats say so)."""

from __future__ import annotations

import json
import os
import socket
import threading
import uuid
from pathlib import Path

import httpx2 as httpx
import yaml

from harness.sse import chat_chunk
from harness.stack import http, plugin_config, set_plugin_config, wait_until

CHAT = "/openai/v1/chat/completions"
EMAIL = "jane.doe@example.com"
WASM_TYPE = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"


class Ecds:
    """The filter's configuration in a file Envoy watches (ECDS from a path)."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.path = directory / "warden-filter.yaml"
        self.wasm: dict = {}

    def take_over(self, cfg: dict) -> None:
        """Moves the Warden filter of a rendered Envoy configuration into the
        watched file and leaves a `config_discovery` in its place."""
        # xDS subscriptions, file-based ones included, need a node identity.
        cfg.setdefault("node", {"id": "warden-gateway", "cluster": "warden"})
        hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        for i, f in enumerate(hcm["http_filters"]):
            if f["name"] == "envoy.filters.http.wasm":
                self.wasm = f["typed_config"]
                self.directory.mkdir(parents=True, exist_ok=True)
                self.publish(plugin_config(self.wasm["config"]))
                hcm["http_filters"][i] = {"name": "warden", "config_discovery": {
                    "config_source": {"resource_api_version": "V3", "path_config_source": {
                        "path": str(self.path), "watched_directory": {"path": str(self.directory)}}},
                    "type_urls": [WASM_TYPE]}}

    def first_config(self) -> dict:
        """The filter configuration Envoy started with (this stack's addresses in it)."""
        return plugin_config(self.wasm["config"])

    def publish(self, config: dict) -> None:
        """Writes a new version of the filter's configuration, atomically (a
        rename in the watched directory, as Envoy expects). As JSON text in a
        StringValue: what Istio and Envoy Gateway send through ECDS."""
        wasm = json.loads(json.dumps(self.wasm))
        set_plugin_config(wasm["config"], config, json_text=True)
        document = {"resources": [{"@type": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
                                   "name": "warden", "typed_config": wasm}]}
        tmp = self.directory / f".{uuid.uuid4().hex}.tmp"
        tmp.write_text(yaml.safe_dump(document, sort_keys=False))
        os.rename(tmp, self.path)


class HeldStream:
    """A streamed chat answer the stand-in holds open after its first words
    (an address the gateway has masked and sent on), until the test ends it."""

    def __init__(self, stack, headers: dict):
        self.stack = stack
        stack.provider_queue_raw([{"content_type": "text/event-stream", "then": "hold",
                                   "body": chat_chunk(f"write to {EMAIL} ") + chat_chunk("or call the office tomorrow. ")}])
        body = {"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "hello"}]}
        self.client = httpx.Client(timeout=60)
        self.cm = self.client.stream("POST", f"{stack.gateway_url}{CHAT}", json=body, headers=headers)
        self.chunks = self.cm.__enter__().iter_raw()
        self.got = b""
        while b"[EMAIL]" not in self.got:
            self.got += next(self.chunks)

    def finishes_whole_and_masked(self) -> None:
        """Ends the stream upstream; the client reads it to its end, masked."""
        assert self.stack.provider_end_held(more=chat_chunk("Bye.", "stop") + "data: [DONE]\n\n") == 1
        for piece in self.chunks:
            self.got += piece
        self.cm.__exit__(None, None, None)
        self.client.close()
        text = self.got.decode()
        assert EMAIL not in text and "[EMAIL]" in text and "Bye." in text and text.endswith("data: [DONE]\n\n"), text


class Load:
    """Chat requests one after another on a thread of their own, each on a
    new connection, until stopped; what each got back."""

    def __init__(self, url: str, headers: dict):
        self.url, self.headers = url, headers
        self.statuses: list = []
        self._stop = threading.Event()
        self._worker = threading.Thread(target=self._run)
        self._worker.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                status, h, _ = http("POST", f"{self.url}{CHAT}", headers=self.headers, body={
                    "model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
                self.statuses.append((status, h.get("x-warden-reason")))
            except OSError as err:
                self.statuses.append(repr(err))

    def stop(self) -> None:
        self._stop.set()
        self._worker.join()

    def check_one_switch(self) -> None:
        """Nothing dropped: every request was served under the first
        configuration (200) or the second (403), and none went back."""
        statuses = self.statuses
        assert set(statuses) <= {(200, None), (403, "warden.model_denied")}, set(statuses)
        switch = statuses.index((403, "warden.model_denied"))
        assert all(s == (200, None) for s in statuses[:switch]) and all(
            s == (403, "warden.model_denied") for s in statuses[switch:]), "no request went back to the old one"


def counter(stack, suffix: str) -> int:
    _, _, body = http("GET", f"{stack.admin_url}/stats?filter=extension_config_discovery")
    for line in body.decode().splitlines():
        name, _, value = line.partition(": ")
        if name.endswith(f"warden.{suffix}"):
            return int(value)
    return 0


def test_a_new_filter_configuration_reaches_new_requests_while_open_streams_finish_under_theirs(make_stack, tmp_path):
    ecds = Ecds(tmp_path / "ecds")
    stack = make_stack(edit_envoy_config=ecds.take_over)
    token = stack.token("alice", ["engineering"])
    headers = {"authorization": f"Bearer {token}"}
    assert counter(stack, "config_reload") >= 1

    # A stream opens under the first configuration and stays open.
    stream = HeldStream(stack, headers)

    # Requests keep coming while the configuration changes; none may fail.
    load = Load(stack.gateway_url, headers)
    statuses = load.statuses
    try:
        # Version 2: engineering may no longer use gpt-4o-mini.
        config = ecds.first_config()
        config["policy"]["groups"]["engineering"]["models"] = ["claude-*"]
        reloads = counter(stack, "config_reload")
        ecds.publish(config)
        wait_until("Envoy to take the new configuration", lambda: counter(stack, "config_reload") > reloads)
        wait_until("new requests to be refused under it", lambda: statuses and statuses[-1] == (403, "warden.model_denied"))

        # A configuration the filter refuses (a regex that does not compile):
        # Envoy keeps the last good one, and says so.
        broken = ecds.first_config()
        broken["policy"]["rules"][0] = {"name": "broken", "regex": "(unclosed", "action": "mask"}
        fails = counter(stack, "config_fail")
        ecds.publish(broken)
        wait_until("Envoy to refuse it", lambda: counter(stack, "config_fail") > fails)
        seen = len(statuses)
        wait_until("more requests after the refusal", lambda: len(statuses) >= seen + 5)
    finally:
        load.stop()
    assert statuses[-1] == (403, "warden.model_denied"), "the last good configuration still serves"
    load.check_one_switch()

    # The open stream finishes under the configuration it started with.
    stream.finishes_whole_and_masked()


class Lds:
    """The listeners in a file Envoy watches (LDS from a path), as a control
    plane that adds and replaces listeners delivers them."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.path = directory / "listeners.yaml"
        self.listeners: list[dict] = []

    def take_over(self, cfg: dict) -> None:
        cfg.setdefault("node", {"id": "warden-gateway", "cluster": "warden"})
        self.listeners = cfg["static_resources"].pop("listeners")
        self.directory.mkdir(parents=True, exist_ok=True)
        self.publish(self.listeners)
        cfg["dynamic_resources"] = {"lds_config": {"resource_api_version": "V3", "path_config_source": {
            "path": str(self.path), "watched_directory": {"path": str(self.directory)}}}}

    def publish(self, listeners: list[dict]) -> None:
        document = {"resources": [{"@type": "type.googleapis.com/envoy.config.listener.v3.Listener", **listener}
                                  for listener in listeners]}
        tmp = self.directory / f".{uuid.uuid4().hex}.tmp"
        tmp.write_text(yaml.safe_dump(document, sort_keys=False))
        os.rename(tmp, self.path)


def listener_stat(stack, name: str) -> int:
    _, _, body = http("GET", f"{stack.admin_url}/stats?filter=listener_manager")
    for line in body.decode().splitlines():
        stat, _, value = line.partition(": ")
        if stat == f"listener_manager.{name}":
            return int(value)
    return 0


def test_a_new_listener_and_a_replaced_one_serve_while_an_open_stream_finishes(make_stack, tmp_path):
    """LDS: the gateway's listener is replaced (a new filter configuration in
    it) and a second listener is added while a stream is open on the first:
    new connections get the new listener, the open stream finishes on the
    one it started on (Envoy drains it), nothing is dropped."""
    lds = Lds(tmp_path / "lds")
    stack = make_stack(edit_envoy_config=lds.take_over)
    token = stack.token("alice", ["engineering"])
    headers = {"authorization": f"Bearer {token}"}
    stream = HeldStream(stack, headers)

    # Version 2 of the listener: engineering may no longer use gpt-4o-mini;
    # and a second listener, on a port of its own, with the same.
    listeners = json.loads(json.dumps(lds.listeners))
    hcm = listeners[0]["filter_chains"][0]["filters"][0]["typed_config"]
    wasm = next(f for f in hcm["http_filters"] if f["name"] == "envoy.filters.http.wasm")["typed_config"]
    config = plugin_config(wasm["config"])
    config["policy"]["groups"]["engineering"]["models"] = ["claude-*"]
    set_plugin_config(wasm["config"], config)
    second = json.loads(json.dumps(listeners[0]))
    second["name"] = "warden_gateway_2"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    second["address"]["socket_address"]["port_value"] = port
    added, modified = listener_stat(stack, "listener_added"), listener_stat(stack, "listener_modified")
    load = Load(stack.gateway_url, headers)
    try:
        wait_until("requests before the change", lambda: len(load.statuses) >= 3)
        lds.publish([listeners[0], second])
        wait_until("Envoy to take both listeners", lambda: listener_stat(stack, "listener_added") > added
                   and listener_stat(stack, "listener_modified") > modified)
        # New connections: the replaced listener, the new policy.
        wait_until("the new configuration", lambda: load.statuses[-1] == (403, "warden.model_denied"))
        seen = len(load.statuses)
        wait_until("more requests after it", lambda: len(load.statuses) >= seen + 3)
    finally:
        load.stop()
    load.check_one_switch()
    status, h, _ = http("POST", f"http://127.0.0.1:{port}{CHAT}", headers=headers,
                        body={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
    assert (status, h.get("x-warden-reason")) == (403, "warden.model_denied"), "the added listener serves"

    # The open stream finishes on its draining listener, under its policy.
    stream.finishes_whole_and_masked()
