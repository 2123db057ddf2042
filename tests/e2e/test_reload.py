"""Envoy takes a new filter configuration while requests and streams are in
flight, the way a mesh delivers it: the filter comes through ECDS (extension
config discovery; Istio's WasmPlugin and Envoy Gateway use it), here from a
watched file. New requests get the new configuration, an open stream
finishes under the one it started with, nothing is dropped, and a
configuration the filter refuses leaves the last good one serving (Envoy's
stats say so)."""

from __future__ import annotations

import json
import os
import threading
import uuid
from pathlib import Path

import httpx2 as httpx
import yaml

from harness.sse import chat_chunk
from harness.stack import http, wait_until

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
                self.publish(yaml.safe_load(self.wasm["config"]["configuration"]["value"]))
                hcm["http_filters"][i] = {"name": "warden", "config_discovery": {
                    "config_source": {"resource_api_version": "V3", "path_config_source": {
                        "path": str(self.path), "watched_directory": {"path": str(self.directory)}}},
                    "type_urls": [WASM_TYPE]}}

    def first_config(self) -> dict:
        """The filter configuration Envoy started with (this stack's addresses in it)."""
        return yaml.safe_load(self.wasm["config"]["configuration"]["value"])

    def publish(self, plugin_config: dict | str) -> None:
        """Writes a new version of the filter's configuration, atomically (a
        rename in the watched directory, as Envoy expects)."""
        wasm = json.loads(json.dumps(self.wasm))
        text = plugin_config if isinstance(plugin_config, str) else yaml.safe_dump(plugin_config)
        wasm["config"]["configuration"]["value"] = text
        document = {"resources": [{"@type": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
                                   "name": "warden", "typed_config": wasm}]}
        tmp = self.directory / f".{uuid.uuid4().hex}.tmp"
        tmp.write_text(yaml.safe_dump(document, sort_keys=False))
        os.rename(tmp, self.path)


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
    body = {"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "hello"}]}
    assert counter(stack, "config_reload") >= 1

    # A stream opens under the first configuration and stays open.
    stack.provider_queue_raw([{"content_type": "text/event-stream", "then": "hold",
                               "body": chat_chunk(f"write to {EMAIL} ") + chat_chunk("or call the office tomorrow morning. ")}])
    client = httpx.Client(timeout=60)
    stream_cm = client.stream("POST", f"{stack.gateway_url}{CHAT}", json=body, headers=headers)
    resp = stream_cm.__enter__()
    chunks = resp.iter_raw()
    got = b""
    while b"[EMAIL]" not in got:
        got += next(chunks)

    # Requests keep coming while the configuration changes; none may fail.
    statuses: list = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            try:
                status, h, _ = http("POST", f"{stack.gateway_url}{CHAT}", headers=headers, body={
                    "model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
                statuses.append((status, h.get("x-warden-reason")))
            except OSError as err:
                statuses.append(repr(err))

    worker = threading.Thread(target=load)
    worker.start()
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
        stop.set()
        worker.join()
    assert statuses[-1] == (403, "warden.model_denied"), "the last good configuration still serves"
    # Nothing dropped: every request was served under one configuration or the other.
    assert set(statuses) <= {(200, None), (403, "warden.model_denied")}, set(statuses)
    switch = statuses.index((403, "warden.model_denied"))
    assert all(s == (200, None) for s in statuses[:switch]) and all(
        s == (403, "warden.model_denied") for s in statuses[switch:]), "no request went back to the old one"

    # The open stream finishes under the configuration it started with.
    assert stack.provider_end_held(more=chat_chunk("Bye.", "stop") + "data: [DONE]\n\n") == 1
    for piece in chunks:
        got += piece
    stream_cm.__exit__(None, None, None)
    client.close()
    text = got.decode()
    assert EMAIL not in text and "[EMAIL]" in text and "Bye." in text and text.endswith("data: [DONE]\n\n"), text
