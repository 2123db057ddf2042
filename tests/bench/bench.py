"""`make bench`: what the Warden filter costs, against bare Envoy in the same run.

One Envoy serves two listeners with the same routes and clusters: one with
the Warden filter, one without (the baseline). A real load generator (wrk)
drives each scenario on loopback; each measurement is repeated in
interleaved rounds and the median is reported, with the ratio to the
baseline measured in the same run (these machines are noisy: only ratios
within one run mean much).

    .venv/bin/python tests/bench/bench.py [--duration 4] [--repeat 3] [--out BENCHMARKS.md]
    BENCH_QUICK=1 make bench     # one short round: a smoke run, numbers rough
    make bench BENCH_ARGS="--compare before=old/warden-filter.wasm"   # before/after in one run
    make bench BENCH_ARGS="--compare before=old.wasm --only 1,2,1-before,2-before --repeat 5"  # just that

Scenarios (issue 7):
  0  bare Envoy, same route, no filter (one baseline per request shape)
  1  filter, cached token, no request body (a models listing, not inspected)
  1n, 1h        the no-op wasm filter: as is (the floor of any wasm filter), and
                making row 1's 14 host calls and nothing else
  2  filter, 8 KB chat request carrying personal data, masked
  2h, 5ah, 5bh  the no-op filter making those calls and holding, reading and
                writing back the bodies as rows 2, 5a and 5b do, without inspecting
  3  filter, a streamed response of ~500 SSE events with personal data, one
     value split across events: wrk for throughput, and a client that times
     the first event and the whole stream for the added time per event
  4  filter, cold tokens (a new token every request): RS256, ES256, EdDSA,
     minted before the run; a wrk Lua script walks the file and stops when it
     runs out, so no token is ever verified twice
  5  filter, 64 KB and 512 KB chat requests
Peers (issue 20), same run, same workloads, compared with bare Envoy: Envoy's own
jwt_authn filter (C++) on a copy of the bare listener, verifying the same tokens
(issuer, audience, the issuer's JWKS inline), without and with its JWT cache:
  1j, 1jc       row 1's cached token
  4j-*, 4jc-*   row 4's cold tokens, at one connection
Each is checked to refuse bad tokens before it is measured. And LiteLLM's proxy
(`litellm[proxy]`, Python, in .venv-bench/; tests/bench/litellm_peer.py), configured
as its production checklist says (master key, 2 Uvicorn workers, no database), on the
same stand-in with the same request bodies, its CPU that of all its processes:
  1l            GET /v1/models with its key, against row 0a
  2l, 2lg       the 8 KB chat request, without and with its content filter masking
                personal data and secrets (requests and responses), against row 0b
It is checked to answer through the stand-in and to refuse a wrong key before it is
measured, and what each masker (row 2, 2l, 2lg) forwarded of the 8 KB body is counted.
Then Envoy's resident memory with and without the filter, per worker, the
start-up time to a first answered request, and the engine microbenchmarks
(criterion natively, the same workloads in V8) from scripts/bench-engine.sh.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
import contextlib
import copy
import dataclasses
from http.client import HTTPConnection
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import policy_watch  # noqa: E402
import litellm_peer  # noqa: E402
from litellm_peer import LiteLLM  # noqa: E402
from harness.stack import (ENVOY_BIN, ROOT, STAND_IN_KEYS, Ports, Stack, STRING_VALUE_TYPE,  # noqa: E402
                           default_filter_config, plugin_config, set_plugin_config, warden_plugin,
                           http, process_cpu_seconds, render_envoy_config, rss_mib, spawn)

CONNECTIONS = 8
STREAM_CHARS = 2000  # the stand-in sends 4 characters per delta: ~500 events
STREAM_HEADERS = {"x-stand-in-chunk-size": "512", "x-stand-in-chunk-delay-ms": "0"}
# jwt_authn's cache (per worker, least recently used out first): room for the bench's token
# and every cold token of a run's rounds (three algorithms, ~15,000 each at jwt_authn's pace in
# 4 s, half to each worker), so none is evicted. A cached token took ~5 KB in Envoy 1.40: a
# full run grows the Envoy under test by a few hundred MiB (the memory rows use other Envoys).
JWT_CACHE_SIZE = 65536


@dataclass
class Result:
    rps: float
    p50_us: float
    p99_us: float
    requests: int = 0
    # The serving process's own CPU time (user + system) per request during the run:
    # Envoy's, or on LiteLLM's rows all of LiteLLM's processes'. Steadier than latency
    # on a shared machine, and it counts only the proxy under test.
    cpu_us: float = 0.0


def to_us(value: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", value.strip())
    if not m:
        raise ValueError(value)
    n, unit = float(m.group(1)), m.group(2)
    return n * {"us": 1, "ms": 1e3, "s": 1e6}[unit]


class Capped(RuntimeError):
    """A run sent every request its script allows before its time was up: its
    rate is the harness's cap (queued replies, minted tokens), not a measurement.
    `needed`: how many requests the run's own pace would have sent."""

    def __init__(self, message: str, needed: int):
        super().__init__(message)
        self.needed = needed


def cpu_seconds(pids: Sequence[int]) -> float:
    return sum(process_cpu_seconds(pid) for pid in pids)


def wrk(url: str, script: Path, duration: int, connections: int = CONNECTIONS, pids: Sequence[int] = (),
        limit: int | None = None) -> Result:
    """One wrk run; `pids`: the processes serving it, whose CPU time per request is measured."""
    cpu_before = cpu_seconds(pids)
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", "-s", str(script), url],
                         capture_output=True, text=True, timeout=duration + 120, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = to_us(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))
    p99 = to_us(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))
    count = int(re.search(r"(\d+) requests in", out).group(1))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if bad:
        raise RuntimeError(f"{url}: {bad.group(1)} failed responses; the scenario is broken:\n{out}")
    errors = re.search(r"Socket errors: (.*)", out)
    if errors and re.search(r"(read|write|timeout) [1-9]", errors.group(1)):
        raise RuntimeError(f"{url}: socket errors ({errors.group(1)}); the scenario is broken:\n{out}")
    cpu = (cpu_seconds(pids) - cpu_before) / max(count, 1) * 1e6 if pids else 0.0
    # A script that stops at `limit` leaves wrk idle for the rest of the run
    # (and the last requests around the stop are not all counted): a run that
    # came near its limit is not trusted.
    if limit is not None and count >= 0.9 * limit:
        # Its pace: `connections` requests at a time, each taking the average latency.
        avg = to_us(re.search(r"^\s+Latency\s+(\S+)", out, re.M).group(1))
        raise Capped(f"{url}: {count} of the {limit} requests the script allows were sent before "
                     f"{duration} s were up", int(duration * 1e6 * connections / max(avg, 1.0)))
    return Result(rps, p50, p99, count, cpu)


def lua_str(s: str) -> str:
    return json.dumps(s)  # a JSON string literal is a valid Lua string literal for this ASCII text


def lua(path: Path, method: str, token: str | None, body: str | None, headers: dict | None = None) -> Path:
    lines = [f"wrk.method = {lua_str(method)}"]
    if token:
        lines.append(f'wrk.headers["authorization"] = {lua_str("Bearer " + token)}')
    for k, v in (headers or {}).items():
        lines.append(f"wrk.headers[{lua_str(k)}] = {lua_str(v)}")
    if body is not None:
        lines.append('wrk.headers["content-type"] = "application/json"')
        lines.append(f"wrk.body = {lua_str(body)}")
    path.write_text("\n".join(lines) + "\n")
    return path


def lua_cycle(path: Path, tokens: Path | None, limit: int, method: str = "GET", body: str | None = None,
              headers: dict | None = None) -> Path:
    """A script that sends at most `limit` requests (one per token in `tokens` when given),
    then stops: a cold-token run never repeats a token, a stream run never outruns the
    replies queued at the provider."""
    hdrs = dict(headers or {})
    if body is not None:
        hdrs["content-type"] = "application/json"
    lines = [
        "local tokens = {}",
        f"local limit = {limit}",
        "local sent = 0",
    ]
    if tokens is not None:
        lines += [f"for line in io.lines({lua_str(str(tokens))}) do tokens[#tokens + 1] = line end",
                  "if #tokens < limit then limit = #tokens end"]
    lines += [
        f"local headers = {{{', '.join(f'[{lua_str(k)}] = {lua_str(v)}' for k, v in hdrs.items())}}}",
        f"local body = {lua_str(body) if body is not None else 'nil'}",
        "request = function()",
        "  sent = sent + 1",
        "  if sent >= limit then wrk.thread:stop() end",
        "  local i = math.min(sent, limit)",
        "  if #tokens > 0 then headers['authorization'] = 'Bearer ' .. tokens[i] end",
        f"  return wrk.format({lua_str(method)}, nil, headers, body)",
        "end",
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


# The personal data planted in the chat bodies, each kind by the part of it that must
# not arrive in clear (the phone number without its country code).
PLANTED = {"email": "jane.doe@example.com", "phone": "415 555 2671", "payment card": "4111 1111 1111 1111"}
PERSONAL = f"Contact {PLANTED['email']} or +1 {PLANTED['phone']}; card {PLANTED['payment card']}. "


def chat_body(size: int) -> str:
    filler = "The quarterly numbers look fine. "
    text = PERSONAL
    while len(text) < size - 200:
        text += filler
        if len(text) % 4096 < len(filler):
            text += PERSONAL  # personal data throughout, not only at the start
    return json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": text}]})


def stream_reply() -> str:
    """~2000 characters, emails every ~250: at 4 characters per delta each one is split
    across events."""
    text = ""
    filler = "The stream goes on with ordinary words. "
    while len(text) < STREAM_CHARS:
        text += f"Write to jane.doe{len(text)}@example.com today. " + filler * 5
    return text[:STREAM_CHARS]


STREAM_BODY = json.dumps({"model": "gpt-4o", "stream": True,
                          "messages": [{"role": "user", "content": "tell me a story"}]})


def mint(conn: HTTPConnection, request: dict) -> str:
    """One token from the dev issuer (`POST /dev/token`: sub, groups, alg, audience, issuer, claims)."""
    conn.request("POST", "/dev/token", body=json.dumps(request), headers={"content-type": "application/json"})
    resp = conn.getresponse()
    data = resp.read()
    if resp.status != 200:
        raise RuntimeError(f"minting a token ({request}) failed: {resp.status} {data[:200]!r}")
    return json.loads(data)["token"]


def mint_tokens(stack: Stack, alg: str, count: int, path: Path, tag: str) -> Path:
    """`count` distinct tokens from the dev issuer (POST /dev/token), on one keep-alive
    connection per core: an RS256 signature takes the dev issuer milliseconds, and
    jwt_authn's cold rows need ten thousand tokens or more."""
    lanes = os.cpu_count() or 1

    def lane(first: int) -> list[str]:
        conn = HTTPConnection("127.0.0.1", stack.ports.control_plane, timeout=30)
        try:
            return [mint(conn, {"sub": f"bench-{tag}-{i}", "groups": ["engineering"], "alg": alg})
                    for i in range(first, count, lanes)]
        finally:
            conn.close()
    with ThreadPoolExecutor(lanes) as pool:
        lines = [t for tokens in pool.map(lane, range(lanes)) for t in tokens]
    path.write_text("\n".join(lines) + "\n")
    return path


def check_verifies(stack: Stack, url: str, token: str) -> None:
    """That the listener at `url` (a contender measured on the identity rows) verifies
    tokens before any of its rows is measured, so one that verifies nothing cannot be
    measured as fast: the bench's token reaches the provider; no token, a forged
    signature, another issuer, another audience and an expired token are refused
    (401; a foreign audience may get 403) and reach nothing. Each probe carries its
    name in the query, which the stand-in records."""
    conn = HTTPConnection("127.0.0.1", stack.ports.control_plane, timeout=30)
    other = mint(conn, {"sub": "bench-forger", "groups": ["engineering"]})
    head, payload, _ = token.split(".")
    bad = {
        "no-token": (None, (401,)),
        "forged-signature": (f"{head}.{payload}.{other.rsplit('.', 1)[1]}", (401,)),
        "another-issuer": (mint(conn, {"sub": "bench", "groups": ["engineering"],
                                       "issuer": "http://127.0.0.1:1/elsewhere"}), (401,)),
        "another-audience": (mint(conn, {"sub": "bench", "groups": ["engineering"], "audience": "not-warden"}),
                             (401, 403)),
        "expired": (mint(conn, {"sub": "bench", "groups": ["engineering"],
                                "claims": {"iat": int(time.time()) - 7200, "exp": int(time.time()) - 3600}}),
                    (401,)),
    }
    conn.close()
    http("DELETE", f"{stack.provider_url}/_warden/received")
    for probe, (bad_token, refused) in bad.items():
        headers = {"authorization": f"Bearer {bad_token}"} if bad_token else {}
        status, _, body = http("GET", f"{url}/openai/v1/models?probe={probe}", headers=headers)
        if status not in refused:
            raise RuntimeError(f"{url}: a request with {probe} answered {status}, not {refused}: it does not "
                               f"verify tokens, so it cannot be measured: {body[:200]!r}")
    status, _, body = http("GET", f"{url}/openai/v1/models?probe=good",
                           headers={"authorization": f"Bearer {token}"})
    reached = [r["path"].partition("probe=")[2] for r in stack.provider_received()]
    if status != 200 or reached != ["good"]:
        raise RuntimeError(f"{url}: the bench's token answered {status} and the provider received "
                           f"{reached or 'nothing'} (want only the good probe): {body[:200]!r}")


@dataclass
class Masking:
    """What one contender forwarded to the provider of the bench's 8 KB chat body."""
    contender: str
    planted: int
    masked: int
    missed: list[str]


def body_masking(stack: Stack, contenders: list[tuple[str, str, str]]) -> list[Masking]:
    """Sends the bench's 8 KB chat body once through each contender (name, chat URL,
    bearer token) and counts the planted values (`PLANTED`) that reached the stand-in
    in clear, in the request it recorded."""
    body = chat_body(8 * 1024)
    planted = sum(body.count(value) for value in PLANTED.values())
    out = []
    for name, url, token in contenders:
        http("DELETE", f"{stack.provider_url}/_warden/received")
        status, _, answer = http("POST", url, body=body.encode(), headers={"authorization": f"Bearer {token}"})
        received = [r["body"] for r in stack.provider_received() if r["path"].endswith("/chat/completions")]
        if status != 200 or len(received) != 1:
            raise RuntimeError(f"{name}: the 8 KB chat request answered {status} and {len(received)} request(s) "
                               f"reached the provider: {answer[:200]!r}")
        clear = {kind: received[0].count(value) for kind, value in PLANTED.items()}
        out.append(Masking(name, planted, planted - sum(clear.values()), [kind for kind, n in clear.items() if n]))
    http("DELETE", f"{stack.provider_url}/_warden/received")
    return out


def masking_table(rows: list[Masking]) -> str:
    lines = ["| contender | values planted | values masked | kinds missed |", "|---|---:|---:|---|"]
    lines += [f"| {r.contender} | {r.planted} | {r.masked} | {', '.join(r.missed) or 'none'} |" for r in rows]
    return "\n".join(lines)


def queue_replies(stack: Stack, count: int) -> None:
    http("DELETE", f"{stack.provider_url}/_warden/replies")
    http("DELETE", f"{stack.provider_url}/_warden/received")  # the stand-in records every request
    stack.provider_queue_replies([stream_reply()] * count)


def time_stream(port: int, token: str | None, delay_ms: int) -> tuple[float, float, float, int]:
    """(seconds to the first event, to the first event carrying text, to the end; events) of
    one stream sent in 512-byte frames `delay_ms` apart."""
    headers = {"content-type": "application/json", **STREAM_HEADERS, "x-stand-in-chunk-delay-ms": str(delay_ms)}
    if token:
        headers["authorization"] = f"Bearer {token}"
    conn = HTTPConnection("127.0.0.1", port, timeout=30)
    start = time.perf_counter()
    conn.request("POST", "/openai/v1/chat/completions", body=STREAM_BODY, headers=headers)
    resp = conn.getresponse()
    if resp.status != 200:
        raise RuntimeError(f"stream answered {resp.status}: {resp.read()[:300]!r}")
    first = first_text = None
    body = b""
    while True:
        chunk = resp.read1(65536)
        if not chunk:
            break
        body += chunk
        if first is None and b"\n\n" in body:
            first = time.perf_counter() - start
        if first_text is None and b'"content":"' in body.split(b'"content":""', 1)[-1]:
            first_text = time.perf_counter() - start
    total = time.perf_counter() - start
    conn.close()
    if b"jane.doe" in body and token:
        raise RuntimeError("the filter let an email through a stream; the scenario is broken")
    return first or total, first_text or total, total, body.count(b"\n\ndata:") + 1


# A streamed answer with a tool call (issue 19): ~250 text events, then a `bash`
# call whose ~2 KB of arguments come in ~50 fragments, then the finish. The
# filter holds a call from its first fragment until its arguments end and it
# is judged (a rule on `bash` makes the policy judge calls).
CALL_ARGS = json.dumps({"command": "grep -rn pattern " + " ".join(f"/srv/data/part-{i:04d}.log" for i in range(80))})
BENCH_TOOL_RULE = {"name": "bench-destructive-shell", "tools": ["bash"], "argument": "command",
                   "regex": r"\brm\s+-[a-z]*r", "action": "block"}


def tool_call_stream() -> str:
    base = {"id": "chatcmpl-b", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o"}

    def chunk(delta: dict, finish: str | None = None) -> str:
        data = {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        return f"data: {json.dumps(data)}\n\n"
    out = chunk({"role": "assistant", "content": ""})
    text = "Looking through the logs for the pattern now. " * 22
    out += "".join(chunk({"content": text[i:i + 4]}) for i in range(0, len(text), 4))
    out += chunk({"tool_calls": [{"index": 0, "id": "call_b", "type": "function",
                                  "function": {"name": "bash", "arguments": ""}}]})
    out += "".join(chunk({"tool_calls": [{"index": 0, "function": {"arguments": CALL_ARGS[i:i + 40]}}]})
                   for i in range(0, len(CALL_ARGS), 40))
    return out + chunk({}, "tool_calls") + "data: [DONE]\n\n"


def time_call_stream(stack: Stack, port: int, token: str | None, delay_ms: int) -> tuple[float, float, float]:
    """(seconds to the first byte of the call, to the call's last fragment, to the end)
    of one answer with a tool call, sent in 512-byte frames `delay_ms` apart."""
    stack.provider_queue_raw([{"content_type": "text/event-stream", "body": tool_call_stream(),
                               "chunk_size": 512, "chunk_delay_ms": delay_ms}])
    headers = {"content-type": "application/json"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    conn = HTTPConnection("127.0.0.1", port, timeout=30)
    start = time.perf_counter()
    conn.request("POST", "/openai/v1/chat/completions", body=STREAM_BODY, headers=headers)
    resp = conn.getresponse()
    if resp.status != 200:
        raise RuntimeError(f"a tool-call stream answered {resp.status}: {resp.read()[:300]!r}")
    first = last = None
    body = b""
    tail = json.dumps(CALL_ARGS[-20:])[1:-1].encode()
    while True:
        chunk = resp.read1(65536)
        if not chunk:
            break
        body += chunk
        if first is None and b'"tool_calls"' in body:
            first = time.perf_counter() - start
        if last is None and tail in body:
            last = time.perf_counter() - start
    total = time.perf_counter() - start
    conn.close()
    if b'"tool_calls"' not in body:
        raise RuntimeError("the tool call did not reach the client; the scenario is broken")
    return first or total, last or total, total


ENVOY_KINDS = ("bare", "noop", "jwt_authn", "filter")
# Starts of each kind of Envoy, at 2 workers, for the start-up time's median.
STARTS = 3


def envoy_rss(stack: Stack, tmp: Path, token: str, duration: float, noop_wasm: Path) -> dict[str, float]:
    """Resident memory (MiB) of an Envoy without a filter, with the no-op wasm filter, with
    Envoy's jwt_authn (JWT cache on) and with Warden, at 1 and 2 workers, each after
    `duration` seconds of 8 KB chat traffic; with Warden, its VMs' linear memory too.
    And each kind's start-up time at 2 workers (`startup_KIND`, seconds, the median of
    STARTS starts, interleaved): from spawning Envoy to its first answered chat request,
    Warden's token verified (the module compiled, every VM configured, the JWKS fetched)."""
    out: dict[str, float] = {}
    startups: dict[str, list[float]] = {kind: [] for kind in ENVOY_KINDS}
    body8k = chat_body(8 * 1024)
    script = lua(tmp / "mem.lua", "POST", token, body8k)

    def start(kind: str, workers: int, name: str):
        fresh = Ports.free()
        ports = dataclasses.replace(stack.ports, gateway=fresh.gateway, admin=fresh.admin)
        data = tmp / name
        (data / "logs").mkdir(parents=True, exist_ok=True)
        cfg = render_envoy_config(ports, data)
        hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        if kind == "bare":
            hcm["http_filters"] = [f for f in hcm["http_filters"] if f["name"] != "envoy.filters.http.wasm"]
        elif kind == "noop":
            plugin = next(f for f in hcm["http_filters"] if f["name"] == "envoy.filters.http.wasm")
            use_noop_filter(plugin["typed_config"]["config"], noop_wasm)
        elif kind == "jwt_authn":
            use_jwt_authn(hcm, jwt_authn_filter(cfg, JWT_CACHE_SIZE))
        path = data / "envoy.yaml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        base = {k: v for k, v in os.environ.items() if not k.startswith("WARDEN_")}
        url = f"http://127.0.0.1:{ports.gateway}/openai/v1/chat/completions"
        started = time.monotonic()
        p = spawn("envoy", [str(ENVOY_BIN), "-c", str(path), "--disable-hot-restart", "--concurrency",
                            str(workers), "--log-level", "warning", "--base-id", str(ports.admin)],
                  data / "logs" / "envoy.log",
                  env={**base, **STAND_IN_KEYS, "WARDEN_GATEWAY_SECRET": getattr(stack, "gateway_secret", "")})
        try:
            # Polled every 5 ms (not wait_until's backoff, which would round the time up).
            deadline = started + 60
            while True:
                p.check_alive()
                try:
                    if http("POST", url, body=body8k.encode(), headers={"authorization": f"Bearer {token}"},
                            timeout=2)[0] == 200:
                        break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the {kind} Envoy answered no chat request within 60 s")
                time.sleep(0.005)
            return p, url, ports, time.monotonic() - started
        except BaseException:
            p.stop()
            raise

    for kind in ENVOY_KINDS:
        for workers in (1, 2):
            p, url, ports, startup = start(kind, workers, f"mem-{kind}-{workers}")
            try:
                if workers == 2:
                    startups[kind].append(startup)
                wrk(url, script, max(1, int(duration)))
                out[f"{kind}_{workers}"] = rss_mib(p.popen.pid)
                if kind == "filter":
                    stats = dict(line.split(": ", 1) for line in http(
                        "GET", f"http://127.0.0.1:{ports.admin}/stats?filter=(wasm_vm_count|vm.memory_bytes)$")[2]
                        .decode().splitlines() if ": " in line)
                    vms = [float(v) for k, v in stats.items() if k.endswith("wasm_vm_count")]
                    linear = [float(v) for k, v in stats.items() if k.endswith("warden.vm.memory_bytes")]
                    if vms and linear:
                        out[f"filter_{workers}_vms"] = max(vms)
                        out[f"filter_{workers}_linear"] = linear[0] / (1 << 20)
            finally:
                p.stop()
    for round_ in range(1, STARTS):
        for kind in ENVOY_KINDS:
            p, _, _, startup = start(kind, 2, f"start-{kind}-{round_}")
            p.stop()
            startups[kind].append(startup)
    for kind, times in startups.items():
        out[f"startup_{kind}"] = statistics.median(times)
    return out


def build_noop_filter() -> Path:
    """tests/bench/noop-filter built like the filter; its path."""
    target = subprocess.run(
        ["bash", "-c", "source scripts/lib.sh && wasm_cargo wasm32-wasip1 build --locked --profile \"$WASM_PROFILE\" "
                       "-p warden-bench-noop-filter >&2 && wasm_target_dir && echo \"$WASM_PROFILE\""],
        cwd=ROOT, stdout=subprocess.PIPE, text=True, check=True).stdout.split()
    target, profile = target[-2], target[-1]
    return Path(target) / "wasm32-wasip1" / profile / "warden_bench_noop_filter.wasm"


def copy_listener(cfg: dict, name: str, port: int) -> dict:
    """A copy of the gateway listener on `port`, its access log in a file of its own;
    its HTTP connection manager's configuration, to edit."""
    listener = copy.deepcopy(cfg["static_resources"]["listeners"][0])
    listener["name"] = name
    listener["address"]["socket_address"]["port_value"] = port
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["stat_prefix"] = name
    for log in hcm.get("access_log", []):
        path = Path(log["typed_config"]["path"])
        log["typed_config"]["path"] = str(path.with_name(f"{name}-{path.name}"))
    cfg["static_resources"]["listeners"].append(listener)
    return hcm


def add_listener(cfg: dict, name: str, port: int, edit_plugin) -> None:
    """A copy of the gateway listener on `port` with its wasm plugin changed by
    `edit_plugin` (in a VM of its own)."""
    hcm = copy_listener(cfg, name, port)
    plugin = next(f for f in hcm["http_filters"] if f["name"] == "envoy.filters.http.wasm")["typed_config"]["config"]
    plugin["vm_config"]["vm_id"] = name
    edit_plugin(plugin)


def jwt_authn_filter(cfg: dict, cache_size: int | None) -> dict:
    """Envoy's own JWT filter (C++, `envoy.filters.http.jwt_authn`) verifying what the Warden
    filter of `cfg` verifies: its first issuer and audiences, that issuer's keys inline
    (fetched once now through its discovery document, so no fetch while measuring), the
    bearer token of every request required; a JWT cache of `cache_size` tokens, or none.
    It verifies the signature and the registered claims, and nothing else: no groups,
    no policy."""
    issuer = plugin_config(warden_plugin(cfg))["authentication"]["issuers"][0]
    status, _, jwks = http("GET", f"{issuer['issuer']}/.well-known/openid-configuration")
    if status == 200:
        status, _, jwks = http("GET", json.loads(jwks)["jwks_uri"])
    if status != 200:
        raise RuntimeError(f"the keys of {issuer['issuer']} could not be read for jwt_authn: {status}")
    provider = {"issuer": issuer["issuer"], "audiences": issuer["audiences"],
                "local_jwks": {"inline_string": jwks.decode()}}
    if cache_size:
        provider["jwt_cache_config"] = {"jwt_cache_size": cache_size}
    return {"name": "envoy.filters.http.jwt_authn", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
        "providers": {"warden_issuer": provider},
        "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "warden_issuer"}}]}}


def use_jwt_authn(hcm: dict, jwt_filter: dict) -> None:
    """Bare Envoy's HTTP filters (the wasm filter dropped) with `jwt_filter` first."""
    hcm["http_filters"] = [jwt_filter] + [f for f in hcm["http_filters"] if f["name"] != "envoy.filters.http.wasm"]


def use_module(plugin: dict, wasm: Path) -> None:
    """The same plugin and configuration, another build of the module."""
    plugin["vm_config"]["code"]["local"]["filename"] = str(wasm)


def use_noop_filter(plugin: dict, wasm: Path, mode: str = "") -> None:
    """The no-op filter; in `mode` "host-calls", making row 1's host calls, in "bodies" those
    and Warden's handling of bodies, without inspection (see its source)."""
    plugin["vm_config"]["code"]["local"]["filename"] = str(wasm)
    plugin["root_id"] = "noop"
    plugin["configuration"] = {"@type": STRING_VALUE_TYPE, "value": mode}


def record_sessions(plugin: dict) -> None:
    config = plugin_config(plugin)
    config["policy"]["record"] = "metadata"
    set_plugin_config(plugin, config)


def engine_benches(quick: bool) -> dict | None:
    """The criterion microbenchmarks natively and the same workloads in V8 (scripts/bench-engine.sh)."""
    env = dict(os.environ, BENCH_QUICK="1" if quick else os.environ.get("BENCH_QUICK", ""))
    out = ROOT / "target" / "bench-engine.json"
    run = subprocess.run([str(ROOT / "scripts" / "bench-engine.sh"), str(out)], env=env, text=True)
    if run.returncode != 0 or not out.exists():
        print("warning: the engine microbenchmarks failed; BENCHMARKS.md will say so", file=sys.stderr)
        return None
    return json.loads(out.read_text())


def median(results: list[Result]) -> Result:
    return Result(statistics.median(r.rps for r in results), statistics.median(r.p50_us for r in results),
                  statistics.median(r.p99_us for r in results), int(statistics.median(r.requests for r in results)),
                  statistics.median(r.cpu_us for r in results))


def main() -> int:
    quick = os.environ.get("BENCH_QUICK", "") not in ("", "0")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=2 if quick else 4)
    parser.add_argument("--repeat", type=int, default=1 if quick else 3)
    parser.add_argument("--stream-samples", type=int, default=8 if quick else 30)
    parser.add_argument("--cold-tokens", type=int, default=600 if quick else 1500,
                        help="tokens minted per algorithm and round, at first (a cold run that uses them all "
                             "before its time is up is run again with enough for its pace, at least twice as many)")
    parser.add_argument("--skip-engine", action="store_true", help="leave out the engine microbenchmarks")
    parser.add_argument("--compare", action="append", default=[], metavar="NAME=WASM",
                        help="another build of the filter (say, the last release) on a listener of its own, "
                             "measured in the same run as rows 1-NAME and 2-NAME: a before/after without "
                             "the drift between two runs (repeatable)")
    parser.add_argument("--only", metavar="KEYS",
                        help="run only these rows (comma-separated keys such as 1,2,1-before; their baselines "
                             "come along), print their table and write nothing: a quick A/B, not a report")
    parser.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"))
    args = parser.parse_args()
    started = time.monotonic()

    engine = None if args.skip_engine or args.only else engine_benches(quick)

    ports = Ports.free()
    bare_port = Ports.free().gateway
    noop_port, recording_port = Ports.free().gateway, Ports.free().gateway
    noop_calls_port, noop_bodies_port = Ports.free().gateway, Ports.free().gateway
    jwt_port, jwt_cache_port = Ports.free().gateway, Ports.free().gateway
    # LiteLLM's proxy, without and with its content filter (row keys 1l, 2l and 2lg),
    # started only when a row of theirs runs.
    litellm = {"l": LiteLLM("litellm", Ports.free().gateway, guardrail=False),
               "lg": LiteLLM("litellm_guardrail", Ports.free().gateway, guardrail=True)}
    noop_wasm = build_noop_filter()
    algs = ["RS256", "ES256", "EdDSA"]
    # The scenarios run the shipped configuration with session recording off (the
    # access log is the audit trail); row 1r shows what recording adds.
    filter_config = default_filter_config()
    filter_config["policy"]["record"] = "off"
    # One tool rule, so the filter judges the tool calls of answers (they pass
    # untouched when no rule or tool limit applies); no other row makes calls.
    filter_config["policy"].setdefault("rules", []).append(BENCH_TOOL_RULE)

    compared = {}
    for item in args.compare:
        name, _, wasm = item.partition("=")
        if not name or not Path(wasm).is_file():
            parser.error(f"--compare {item}: want NAME=path/to/filter.wasm")
        compared[name] = (Ports.free().gateway, Path(wasm).resolve())

    def listeners(cfg: dict) -> None:
        add_listener(cfg, "noop_filter", noop_port, lambda plugin: use_noop_filter(plugin, noop_wasm))
        add_listener(cfg, "noop_host_calls", noop_calls_port,
                     lambda plugin: use_noop_filter(plugin, noop_wasm, "host-calls"))
        add_listener(cfg, "noop_bodies", noop_bodies_port,
                     lambda plugin: use_noop_filter(plugin, noop_wasm, "bodies"))
        add_listener(cfg, "recording", recording_port, record_sessions)
        for name, (port, wasm) in compared.items():
            add_listener(cfg, f"compare_{name}", port, lambda plugin, wasm=wasm: use_module(plugin, wasm))
        # Peers for the identity rows: bare Envoy plus Envoy's own JWT filter, without and with its cache.
        for name, port, cache in (("jwt_authn", jwt_port, None), ("jwt_authn_cache", jwt_cache_port, JWT_CACHE_SIZE)):
            use_jwt_authn(copy_listener(cfg, name, port), jwt_authn_filter(cfg, cache))

    with tempfile.TemporaryDirectory(prefix="warden-bench-") as tmp:
        tmp_dir = Path(tmp)
        with Stack.start(ports, tmp_dir / "stack", bare_port=bare_port, filter_config=yaml.safe_dump(filter_config),
                         edit_envoy_config=listeners) as stack, contextlib.ExitStack() as running:
            envoy_pid = next(p.popen.pid for p in stack.processes if p.name == "envoy")
            token = stack.token("bench", ["engineering"])
            bodies = {"8k": chat_body(8 * 1024), "64k": chat_body(64 * 1024), "512k": chat_body(512 * 1024)}
            s = {
                "get": lua(tmp_dir / "get.lua", "GET", None, None),
                "get_token": lua(tmp_dir / "get_token.lua", "GET", token, None),
            }
            for name, body in bodies.items():
                s[f"chat{name}"] = lua(tmp_dir / f"chat{name}.lua", "POST", None, body)
                s[f"chat{name}_token"] = lua(tmp_dir / f"chat{name}_token.lua", "POST", token, body)
            for k, peer in litellm.items():
                s[f"get_{k}"] = lua(tmp_dir / f"get_{k}.lua", "GET", peer.key, None)
                s[f"chat8k_{k}"] = lua(tmp_dir / f"chat8k_{k}.lua", "POST", peer.key, bodies["8k"])
            # What a limited script may send in one run; a run that reaches it
            # is re-run with more (see `limited_run`).
            limits = {"stream": 600 if quick else 1500, "cold": args.cold_tokens}
            # What each limited script was made with (one algorithm's cold tokens may
            # have been re-minted with more than another's).
            sends: dict[str, int] = {}

            def stream_scripts() -> None:
                s["stream"] = lua_cycle(tmp_dir / "stream.lua", None, limits["stream"], "POST", STREAM_BODY,
                                        STREAM_HEADERS)
                s["stream_token"] = lua_cycle(tmp_dir / "stream_token.lua", None, limits["stream"], "POST",
                                              STREAM_BODY, {**STREAM_HEADERS, "authorization": f"Bearer {token}"})
                sends["stream"] = sends["stream_token"] = limits["stream"]

            def cold_script(alg: str, round_: int) -> None:
                print(f"  round {round_ + 1}: minting {limits['cold']} {alg} tokens", flush=True)
                s[f"cold_{alg}"] = lua_cycle(
                    tmp_dir / f"cold_{alg}.lua",
                    mint_tokens(stack, alg, limits["cold"], tmp_dir / f"tokens_{alg}.txt",
                                f"{round_}-{alg}-{limits['cold']}"),
                    limits["cold"])
                sends[f"cold_{alg}"] = limits["cold"]

            def limited_run(url: str, script: str, c: int, round_: int) -> Result:
                """One run of a script; a stream or cold-token script that ran out of
                replies or tokens before the time was up is re-run with half as many again as its
                pace needs (a pace measured on a loaded machine errs low), at least twice as many,
                three times at most: no reported rate is the harness's own cap. (jwt_authn's cold
                rows need about ten times the tokens Warden's do.)"""
                kind = "stream" if script.startswith("stream") else "cold" if script.startswith("cold_") else None
                for attempt in range(4):
                    if kind == "stream":
                        queue_replies(stack, limits["stream"] + 2 * CONNECTIONS)
                    elif script.startswith("chat512k"):
                        http("DELETE", f"{stack.provider_url}/_warden/received")
                    try:
                        result = wrk(url, s[script], args.duration, c, pids_of(url), limit=sends.get(script))
                        if peer := peer_of(url):
                            peer.settle()
                        return result
                    except Capped as capped:
                        if kind is None or attempt == 3:
                            raise
                        limits[kind] = max(limits[kind], 2 * sends[script], capped.needed * 3 // 2)
                        print(f"    {capped}: again with {limits[kind]}", flush=True)
                        if kind == "stream":
                            stream_scripts()
                        else:
                            cold_script(script.removeprefix("cold_"), round_)
                raise AssertionError("unreachable")

            def peer_of(url: str) -> LiteLLM | None:
                return next((peer for peer in litellm.values() if url.startswith(peer.url + "/")), None)

            def pids_of(url: str) -> list[int]:
                """The processes serving `url`: a LiteLLM's, or Envoy."""
                peer = peer_of(url)
                return peer.pids() if peer else [envoy_pid]

            stream_scripts()
            bare = f"http://127.0.0.1:{bare_port}"
            noop = f"http://127.0.0.1:{noop_port}"
            noop_calls = f"http://127.0.0.1:{noop_calls_port}"
            noop_bodies = f"http://127.0.0.1:{noop_bodies_port}"
            recording = f"http://127.0.0.1:{recording_port}"
            jwt, jwt_cache = f"http://127.0.0.1:{jwt_port}", f"http://127.0.0.1:{jwt_cache_port}"
            # What the peers do, in their rows' labels (the report says more).
            peers = ((jwt, "j", "Envoy's jwt_authn (C++), no JWT cache"),
                     (jwt_cache, "jc", "Envoy's jwt_authn (C++), JWT cache on"))
            gw = stack.gateway_url
            models, chat = "/openai/v1/models", "/openai/v1/chat/completions"
            both, loaded, one = (CONNECTIONS, 1), (CONNECTIONS,), (1,)
            # (key, label, url, script, baseline key, target, connection counts): each
            # row runs at 8 connections (throughput, Envoy CPU) and at 1 (latency
            # without a queue), unless it says otherwise.
            plan = [
                ("0a", "bare Envoy: GET /openai/v1/models", bare + models, "get", None, "", both),
                ("1n", "a no-op wasm filter (reads one header): the floor of any wasm filter", noop + models, "get",
                 "0a", "", both),
                ("1h", "the no-op filter making row 1's 14 host calls, no other work", noop_calls + models,
                 "get_token", "0a", "", both),
                ("1", "filter: cached token, no request body (a models listing: not inspected)", gw + models, "get_token",
                 "0a", "ratio >= 0.90, added CPU <= 20 µs above 1n", both),
                ("1r", "filter as row 1, plus recorded sessions (record: metadata)", recording + models,
                 "get_token", "0a", "", both),
                *((f"1{k}", f"{what}: the same token verified, no groups, no policy", url + models, "get_token",
                   "0a", "", both) for url, k, what in peers),
                ("1l", "LiteLLM's proxy: GET /v1/models with its key (answered from its configuration)",
                 litellm["l"].url + "/v1/models", "get_l", "0a", "", both),
                ("0b", "bare Envoy: 8 KB chat request", bare + chat, "chat8k", None, "", both),
                ("2h", "the no-op filter making row 1's host calls and holding, reading and writing back "
                 "the bodies as row 2 does, no inspection", noop_bodies + chat, "chat8k_token", "0b", "", both),
                ("2", "filter: 8 KB chat request, personal data masked", gw + chat, "chat8k_token", "0b",
                 "added CPU <= 80 µs", both),
                ("2l", "LiteLLM's proxy: 8 KB chat request, no guardrail (**masks nothing**)",
                 litellm["l"].url + "/v1/chat/completions", "chat8k_l", "0b", "", both),
                ("2lg", "LiteLLM's proxy + its content filter: 8 KB chat request, masked (request and response)",
                 litellm["lg"].url + "/v1/chat/completions", "chat8k_lg", "0b", "", both),
                ("0c", f"bare Envoy: stream of ~{STREAM_CHARS // 4} SSE events", bare + chat, "stream", None, "",
                 loaded),
                ("3", f"filter: stream of ~{STREAM_CHARS // 4} SSE events, emails split across events, masked",
                 gw + chat, "stream_token", "0c", "first event <= +1 ms, <= 20 µs per event", loaded),
                # Cold tokens at one connection: the added latency of one verification;
                # the baseline is the cached token at one connection too.
                ("4-cached", "filter: cached token (base of 4)", gw + models, "get_token", None, "", one),
            ]
            for alg in algs:
                plan.append((f"4-{alg}", f"filter: cold {alg} token every request (GET /models)", gw + models,
                             f"cold_{alg}", "4-cached", f"added p50 <= {500 if alg == 'RS256' else 1200} µs",
                             one))
                # The peers' cold rows are compared with bare Envoy at one connection.
                plan += [(f"4{k}-{alg}", f"{what}: cold {alg} token every request", url + models, f"cold_{alg}",
                          "0a", "", one) for url, k, what in peers]
            for name, label in (("64k", "64 KB"), ("512k", "512 KB")):
                key = "5a" if name == "64k" else "5b"
                base_key = f"0{'d' if name == '64k' else 'e'}"
                plan.append((base_key, f"bare Envoy: {label} chat request", bare + chat, f"chat{name}", None, "", both))
                plan.append((f"{key}h", f"the no-op filter as row 2h: {label} chat request", noop_bodies + chat,
                             f"chat{name}_token", base_key, "", both))
                plan.append((key, f"filter: {label} chat request, personal data masked", gw + chat,
                             f"chat{name}_token", base_key, "added CPU <= 5 µs/KB", both))
            for name, (port, _) in compared.items():
                other = f"http://127.0.0.1:{port}"
                plan.append((f"1-{name}", f"{name} build: as row 1", other + models, "get_token", "0a", "", both))
                plan.append((f"2-{name}", f"{name} build: as row 2", other + chat, "chat8k_token", "0b", "", both))
            if args.only:
                wanted = set(args.only.split(","))
                wanted |= {row[4] for row in plan if row[0] in wanted and row[4]}
                plan = [row for row in plan if row[0] in wanted]
            cold = any(row[3].startswith("cold_") for row in plan)
            for url, _, what in peers:
                if any(row[2].startswith(url + "/") for row in plan):
                    check_verifies(stack, url, token)
                    print(f"  {what}: refuses no token, a forged signature, another issuer or audience and an "
                          f"expired token; passes the bench's to the provider", flush=True)
            refusals: dict[str, int] = {}
            for k, peer in litellm.items():
                if any(peer_of(row[2]) is peer for row in plan):
                    print(f"  starting LiteLLM's proxy {litellm_peer.version()} ({peer.name}, "
                          f"{litellm_peer.WORKERS} workers)", flush=True)
                    running.callback(peer.stop)
                    peer.start(tmp_dir / "litellm", stack.provider_url)
                    refusals = peer.check_works(stack)
                    print(f"  LiteLLM ({peer.name}): answers with the stand-in's reply"
                          f"{', its email masked' if peer.guardrail else ''}; refuses a wrong key "
                          f"({refusals['wrong key']}) and no key ({refusals['no key']}); "
                          f"{len(peer.pids())} processes", flush=True)
                    # A second of unmeasured load on each of its rows first: its workers import some
                    # of their modules on their first requests.
                    for row in plan:
                        if peer_of(row[2]) is peer:
                            wrk(row[2], s[row[3]], 1)
                            peer.settle()
            # What each masker forwarded of the 8 KB body (Warden's row 2, LiteLLM's 2l and 2lg).
            keys = {row[0] for row in plan}
            maskers = [(name, url, key) for row, name, url, key in (
                ("2", "Warden (row 2)", gw + chat, token),
                ("2l", "LiteLLM, no guardrail (row 2l)", litellm["l"].url + "/v1/chat/completions", litellm["l"].key),
                ("2lg", "LiteLLM + content filter (row 2lg)", litellm["lg"].url + "/v1/chat/completions",
                 litellm["lg"].key)) if row in keys]
            masking = body_masking(stack, maskers) if len(maskers) > 1 else []
            runs: dict[tuple[str, int], list[Result]] = {}
            # Interleave the scenarios, so drift on a noisy machine hits all alike.
            for round_ in range(args.repeat):
                for alg in algs if cold else []:
                    cold_script(alg, round_)
                for key, label, url, script, _, _, conns in plan:
                    for c in conns:
                        print(f"  round {round_ + 1}/{args.repeat}: {key} {label} ({c} conn.)", flush=True)
                        runs.setdefault((key, c), []).append(limited_run(url, script, c, round_))
                http("DELETE", f"{stack.provider_url}/_warden/received")

            if args.only:
                med = {k: median(v) for k, v in runs.items() if v}
                print(only_table(plan, med))
                if masking:
                    print(masking_table(masking))
                return 0

            print(f"  streams: {args.stream_samples} timed streams each, bare and filter, interleaved", flush=True)
            # Paced (1 ms between frames): the first event's added time is the filter's own work on
            # it, not a wait behind the rest of the stream. Burst (no pause): the whole stream's
            # added time is the filter's work on every event.
            queue_replies(stack, 4 * args.stream_samples + 4)
            streams: dict[str, list[tuple[float, float, int]]] = {
                "bare_paced": [], "filter_paced": [], "bare_burst": [], "filter_burst": []}
            for _ in range(args.stream_samples):
                for pace, delay in (("paced", 1), ("burst", 0)):
                    streams[f"bare_{pace}"].append(time_stream(bare_port, None, delay))
                    streams[f"filter_{pace}"].append(time_stream(ports.gateway, token, delay))

            print(f"  tool calls: {args.stream_samples} timed answers with a streamed call each, bare and filter",
                  flush=True)
            calls: dict[str, list[tuple[float, float, float]]] = {
                "bare_paced": [], "filter_paced": [], "bare_burst": [], "filter_burst": []}
            for _ in range(args.stream_samples):
                for pace, delay in (("paced", 1), ("burst", 0)):
                    calls[f"bare_{pace}"].append(time_call_stream(stack, bare_port, None, delay))
                    calls[f"filter_{pace}"].append(time_call_stream(stack, ports.gateway, token, delay))

            print("  memory: Envoy with and without the filter, 1 and 2 workers", flush=True)
            try:
                memory = envoy_rss(stack, tmp_dir, token, max(1, args.duration // 2), noop_wasm)
            except Exception as err:  # the load results still get written
                print(f"warning: the memory measurement failed: {err}", file=sys.stderr)
                memory = {}
            # LiteLLM's, after the whole run's load: its processes' resident sizes summed.
            for k, peer in litellm.items():
                if peer.process:
                    memory[f"litellm_{k}"] = peer.rss_mib()
                    memory[f"litellm_{k}_processes"] = len(peer.pids())

    print("  policy propagation: 100 gateways polling, then watching, one control plane", flush=True)
    try:
        propagation = policy_watch.measure(100, 10 if quick else 30)
    except Exception as err:  # the load results still get written
        print(f"warning: the propagation measurement failed: {err}", file=sys.stderr)
        propagation = {}

    med = {k: median(v) for k, v in runs.items() if v}
    text = report(args, quick, plan, med, streams, calls, memory, engine, time.monotonic() - started,
                  propagation, masking, refusals)
    Path(args.out).write_text(text)
    print(text)
    return 0


def at_load(med: dict, key: str, like: str | None = None) -> Result:
    """A row's run at 8 connections (its only run, for rows at one); with `like`, its run at
    the connections `like` is reported at: a row at one connection is compared with its
    baseline's run at one, not at 8."""
    return med[(key, CONNECTIONS if (like or key, CONNECTIONS) in med else 1)]


def only_table(plan, med) -> str:
    """The rows of an --only run: the proxy's CPU per request (Envoy's, or LiteLLM's processes')
    and its difference to the row's baseline."""
    lines = ["| row | what | req/s (8 conn.) | CPU µs/req | added CPU µs/req | p50 / p99 µs (1 conn.) |",
             "|---|---|---|---|---|---|"]
    for key, label, _, _, base, _, _ in plan:
        r = at_load(med, key)
        r1 = med.get((key, 1))
        added = "-"
        if base:
            b = at_load(med, base, like=key)
            added = f"{r.cpu_us - b.cpu_us:+.0f}"
        latency = f"{r1.p50_us:.0f} / {r1.p99_us:.0f}" if r1 else "-"
        lines.append(f"| {key} | {label} | {r.rps:,.0f} | {r.cpu_us:.0f} | {added} | {latency} |")
    return "\n".join(lines)


def verdict(ok: bool | None) -> str:
    return "-" if ok is None else ("met" if ok else "**missed**")


def report(args, quick, plan, med, streams, calls, memory, engine, elapsed, propagation: dict | None = None,
           masking: list[Masking] | None = None, refusals: dict[str, int] | None = None) -> str:
    envoy_version = subprocess.run([str(ENVOY_BIN), "--version"], capture_output=True, text=True).stdout.strip()
    node_version = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
    rustc_version = subprocess.run(["rustc", "--version"], capture_output=True, text=True).stdout.strip()
    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split("\n")[0].strip()
    litellm_version = litellm_peer.version()
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((l.split(":", 1)[1].strip() for l in cpuinfo if l.startswith("model name")), platform.processor())
    cores = len([l for l in cpuinfo if l.startswith("processor")])
    mem_total = next((l.split()[1] for l in Path("/proc/meminfo").read_text().splitlines()
                      if l.startswith("MemTotal")), "0")

    def loaded(key: str) -> Result:
        return at_load(med, key)

    def single(key: str) -> Result | None:
        return med.get((key, 1))

    rows = []
    for key, label, _, _, base, target, _conns in plan:
        r, r1 = loaded(key), single(key)
        ok: bool | None = None
        ratio_s, cpu_added, added = "1.00", "-", "-"
        if base:
            b, b1 = at_load(med, base, like=key), single(base)
            ratio = r.rps / b.rps
            ratio_s = f"{ratio:.2f}"
            cpu_added = f"{r.cpu_us - b.cpu_us:+.0f}"
            if r1 and b1:
                add50, add99 = r1.p50_us - b1.p50_us, r1.p99_us - b1.p99_us
                added = f"{add50:+.0f} / {add99:+.0f}"
                if key == "1":
                    ok = ratio >= 0.90 and r.cpu_us - loaded("1n").cpu_us <= 20
                elif key == "2":
                    ok = r.cpu_us - b.cpu_us <= 80
                elif key.startswith("4-"):
                    ok = add50 <= (500 if key == "4-RS256" else 1200)
                elif key in ("5a", "5b"):
                    ok = (r.cpu_us - b.cpu_us) / (64 if key == "5a" else 512) <= 5
        latency = f"{r1.p50_us:.0f} / {r1.p99_us:.0f}" if r1 else "-"
        shown = verdict(ok) if target and key != "3" else "-"
        rows.append(f"| {key} | {label} | {r.rps:,.0f} | {ratio_s} | {r.cpu_us:.0f} | {cpu_added} | {latency} "
                    f"| {added} | {target or '-'} | {shown} |")

    # Row 1 above the floor every wasm filter pays (row 1n).
    floor = loaded("1n").cpu_us - loaded("0a").cpu_us
    above_floor = loaded("1").cpu_us - loaded("1n").cpu_us
    floor_p50 = single("1n").p50_us - single("0a").p50_us
    above_floor_p50 = single("1").p50_us - single("1n").p50_us
    recording_cpu = loaded("1r").cpu_us - loaded("1").cpu_us
    # Row 1 split: the host calls it makes (1h: the no-op filter making them) and the rest.
    calls_cpu = loaded("1h").cpu_us - loaded("1n").cpu_us
    host_calls = (f"Of that, its host calls alone (1h: the no-op filter making the same 14 calls) cost "
                  f"{calls_cpu:+.0f} µs CPU, and Warden's own work the remaining "
                  f"{above_floor - calls_cpu:+.0f} µs.")

    # The identity part against Envoy's own jwt_authn (issue 20), each over bare Envoy like for like.
    def over_bare(key: str, base: str = "0a") -> str:
        cpu = loaded(key).cpu_us - at_load(med, base, like=key).cpu_us
        return f"{cpu:+.0f} µs CPU, {single(key).p50_us - single(base).p50_us:+.0f} µs p50"
    algs = [key.removeprefix("4-") for key, _, _, script, *_ in plan
            if key.startswith("4-") and script.startswith("cold_")]
    cold_peers = "\n".join(f"  - {alg}: Warden (4-{alg}) {over_bare(f'4-{alg}')}; jwt_authn (4j-{alg}) "
                           f"{over_bare(f'4j-{alg}')}, with its cache (4jc-{alg}) {over_bare(f'4jc-{alg}')}"
                           for alg in algs)

    # Scenario 5: added Envoy CPU per KB at 8, 64 and 512 KB (linear cost means a flat line).
    per_kb = []
    for key, base, kb in (("2", "0b", 8), ("5a", "0d", 64), ("5b", "0e", 512)):
        per_kb.append((kb, (loaded(key).cpu_us - loaded(base).cpu_us) / kb,
                       (single(key).p50_us - single(base).p50_us) / kb))
    lin = ", ".join(f"{kb} KB: {cpu:.1f} µs CPU/KB ({lat:.1f} µs p50/KB)" for kb, cpu, lat in per_kb)

    # Issue 20's targets, each from this run's numbers.
    row2_cpu = loaded("2").cpu_us - at_load(med, "0b", like="2").cpu_us
    ratio1 = loaded("1").rps / at_load(med, "0a", like="1").rps
    cold_rsa = single("4-RS256").p50_us - single("4-cached").p50_us
    kb64, kb512 = per_kb[1][1], per_kb[2][1]
    targets = [
        ("cached token, no body (row 1): Envoy CPU added above the no-op wasm floor (1n); req/s to bare",
         f"{above_floor:+.0f} µs; {ratio1:.2f}x", "<= +20 µs; >= 0.90x", above_floor <= 20 and ratio1 >= 0.90),
        ("8 KB chat, personal data masked (row 2): Envoy CPU added", f"{row2_cpu:+.0f} µs", "<= +80 µs",
         row2_cpu <= 80),
        ("64 KB and 512 KB requests (rows 5a, 5b): Envoy CPU added per KB", f"{kb64:.1f} and {kb512:.1f} µs/KB",
         "<= 5 µs/KB, flat", max(kb64, kb512) <= 5),
        ("cold RS256 token (row 4-RS256): added p50 at one connection", f"{cold_rsa:+.0f} µs", "<= 500 µs",
         cold_rsa <= 500),
    ]
    if "filter_2" in memory:
        warden_mem = memory["filter_2"] - memory["bare_2"]
        targets.append(("Envoy memory with Warden (2 workers, over bare Envoy)", f"{warden_mem:+.1f} MiB",
                        "<= +40 MiB", warden_mem <= 40))
    if propagation:
        targets.append(("a published policy live in every one of 100 gateways (watching)",
                        f"median {propagation['median_ms']:.0f} ms, slowest {propagation['slowest_ms']:.0f} ms; "
                        f"control plane {propagation['watching_cpu_ms']:.1f} against "
                        f"{propagation['polling_cpu_ms']:.1f} ms/s polling",
                        "< 1 s, no more control-plane load than polling",
                        propagation["slowest_ms"] < 1000
                        and propagation["watching_cpu_ms"] <= propagation["polling_cpu_ms"]))
    targets_md = "\n".join(["| what | this run | target | |", "|---|---|---|---|"]
                           + [f"| {what} | {now} | {want} | {verdict(ok)} |" for what, now, want, ok in targets])

    first = {k: statistics.median(t[0] for t in v) * 1e6 for k, v in streams.items()}
    first_text = {k: statistics.median(t[1] for t in v) * 1e6 for k, v in streams.items()}
    total = {k: statistics.median(t[2] for t in v) * 1e6 for k, v in streams.items()}
    events = statistics.median(t[3] for t in streams["filter_burst"])
    added_first = first["filter_paced"] - first["bare_paced"]
    added_first_text = first_text["filter_paced"] - first_text["bare_paced"]
    per_event = (total["filter_burst"] - total["bare_burst"]) / max(events, 1)
    load_per_event = (loaded("3").cpu_us - loaded("0c").cpu_us) / max(events, 1)
    call_first = {k: statistics.median(t[0] for t in v) * 1e6 for k, v in calls.items()}
    call_last = {k: statistics.median(t[1] for t in v) * 1e6 for k, v in calls.items()}
    call_total = {k: statistics.median(t[2] for t in v) * 1e6 for k, v in calls.items()}
    call_events = tool_call_stream().count("data: ")
    call_held = call_first["filter_paced"] - call_first["bare_paced"]
    call_last_added = call_last["filter_paced"] - call_last["bare_paced"]
    call_per_event = (call_total["filter_burst"] - call_total["bare_burst"]) / call_events

    # LiteLLM's proxy (issue 20): what it did to the 8 KB body, and what it answered bad keys.
    body_kinds = ", ".join(f"{kind} ({chat_body(8 * 1024).count(value)})" for kind, value in PLANTED.items())
    masking_md = masking_table(masking) if masking else "Not measured."
    refused = " and ".join(f"{probe} ({status})" for probe, status in (refusals or {}).items()) or "-"

    mem_rows = startup_rows = ""
    if "bare_1" in memory:
        rows_m = ["| Envoy | RSS, 1 worker | RSS, 2 workers | per worker |", "|---|---:|---:|---:|"]
        for kind, label in (("bare", "bare (no filter)"), ("noop", "the no-op wasm filter"),
                            ("jwt_authn", "Envoy's jwt_authn, JWT cache on"), ("filter", "with Warden")):
            rows_m.append(f"| {label} | {memory[kind + '_1']:.1f} MiB | {memory[kind + '_2']:.1f} MiB "
                          f"| {memory[kind + '_2'] - memory[kind + '_1']:.1f} MiB |")
        for kind, label in (("noop", "no-op filter's cost"), ("jwt_authn", "jwt_authn's cost"),
                            ("filter", "Warden's cost")):
            rows_m.append(f"| {label} | {memory[kind + '_1'] - memory['bare_1']:+.1f} MiB "
                          f"| {memory[kind + '_2'] - memory['bare_2']:+.1f} MiB "
                          f"| {(memory[kind + '_2'] - memory[kind + '_1']) - (memory['bare_2'] - memory['bare_1']):+.1f} MiB |")
        for k, label in (("l", "LiteLLM's proxy, no guardrail"), ("lg", "LiteLLM's proxy + content filter")):
            if f"litellm_{k}" in memory:
                rows_m.append(f"| {label} ({memory[f'litellm_{k}_processes']} processes, after the run) | - "
                              f"| {memory[f'litellm_{k}']:.1f} MiB | - |")
        if "filter_2_linear" in memory:
            rows_m.append(f"| Warden's VMs: linear memory, all VMs | {memory['filter_1_linear']:.1f} MiB "
                          f"({memory['filter_1_vms']:.0f} VMs) | {memory['filter_2_linear']:.1f} MiB "
                          f"({memory['filter_2_vms']:.0f} VMs) | "
                          f"{memory['filter_2_linear'] - memory['filter_1_linear']:.1f} MiB |")
        mem_rows = "\n".join(rows_m) + "\n"
    if "startup_bare" in memory:
        rows_s = ["| Envoy (2 workers) | spawn to first answered chat request | over bare |", "|---|---:|---:|"]
        for kind, label in (("bare", "bare (no filter)"), ("noop", "the no-op wasm filter"),
                            ("jwt_authn", "Envoy's jwt_authn, JWT cache on"), ("filter", "with Warden")):
            over = "" if kind == "bare" else f"{(memory['startup_' + kind] - memory['startup_bare']) * 1000:+.0f} ms"
            rows_s.append(f"| {label} | {memory['startup_' + kind] * 1000:.0f} ms | {over} |")
        startup_rows = "\n".join(rows_s) + "\n"

    engine_md = "The engine microbenchmarks did not run (see the output of `make bench`)."
    if engine:
        lines = ["| workload | native (criterion) | wasm in V8 (Node) | wasm / native | target |",
                 "|---|---:|---:|---:|---|"]
        for b in engine["benches"]:
            native, wasm = b.get("native_ns"), b.get("wasm_ns")
            ratio = f"{wasm / native:.1f}x" if native and wasm else "-"
            lines.append(f"| {b['name']} | {fmt_ns(native)} | {fmt_ns(wasm)} | {ratio} | {b.get('target', '-')} |")
        engine_md = "\n".join(lines)

    return f"""# Benchmarks

Generated by `make bench` (`tests/bench/bench.py`); rerun it to refresh every number here.
{'**Quick run (BENCH_QUICK=1): one short round; numbers are rough.**' if quick else ''}

- Machine: {cpu}, {cores} cores, {int(mem_total) // 1024} MiB, {platform.system()} {platform.release()}
- Envoy: `{envoy_version.split('version: ')[-1]}`, 2 worker threads; filter `dist/warden-filter.wasm` (V8)
- Tools: {wrk_version.split(' [')[0]}, {rustc_version}, Node {node_version}
- Load: `wrk -t1 -c{CONNECTIONS} -d{args.duration}s --latency` for throughput and Envoy's CPU per request,
  then `-c1` for latency without a queue; {args.repeat} interleaved round(s), medians;
  wrk, Envoy's two workers, the stand-in provider and the control plane share the {cores} cores
- Baseline: the same Envoy, a listener with the same routes and access log and no filter, in the same run;
  another runs a no-op wasm filter (`tests/bench/noop-filter`), the floor any wasm filter pays
- Peers: the same listener with Envoy's own `jwt_authn` filter (C++) verifying the same tokens, without
  and with its JWT cache (rows 1j, 1jc, 4j-\*, 4jc-\*): the native floor of the identity part alone;
  LiteLLM's proxy {litellm_version} (`litellm[proxy]`, Python; {litellm_peer.WORKERS} Uvicorn workers, master key,
  no database, as its production checklist says) to the same stand-in, without and with its built-in
  content filter masking personal data and secrets (rows 1l, 2l, 2lg)
- Provider: the stand-in (`warden-stand-in-provider`) on loopback; policy: `envoy/envoy.yaml`'s default
  (personal data and secrets masked in requests and responses) with `record: off`, except row 1r
- Whole run: {elapsed / 60:.1f} min

## Through Envoy

req/s and CPU at {CONNECTIONS} connections; latency at 1 connection (no queue: at {CONNECTIONS}
connections on {cores} cores a request mostly waits for the others). CPU is the Envoy process's
user + system time during the run divided by its requests (on LiteLLM's rows, that of all its
processes): steadier than latency here.

| # | scenario | req/s | ratio to bare | CPU µs/req | added CPU µs | p50 / p99 µs, 1 conn. | added p50 / p99 µs | target | |
|---|---|---:|---:|---:|---:|---:|---:|---|---|
{chr(10).join(rows)}

**The wasm floor**: a no-op wasm filter (1n) costs {floor:+.0f} µs of Envoy CPU and {floor_p50:+.0f} µs p50
per request; Warden (1) adds {above_floor:+.0f} µs CPU and {above_floor_p50:+.0f} µs p50 above it.
{host_calls}
Recording sessions (1r, `record: metadata`) adds {recording_cpu:+.0f} µs CPU per request in Envoy (the
batches to the control plane), and the control plane's own work shares these cores.

**Identity, against Envoy's own filter** (rows 1j, 1jc, 4j-\*, 4jc-\*): Envoy's C++ `jwt_authn` on
copies of the bare listener verifies the same tokens: the signature against the same issuer's keys
(its JWKS inline, read once at start, so nothing is fetched while measuring), then `iss`, `aud`, `exp`
and `nbf`; it drops the token and forwards the request. It maps no groups to a policy, checks no
model or rule, reads no body and writes nothing for the access log: it is the native floor of the
identity part only, not of what Warden does (row 1 also inspects the response). 1j runs without a
JWT cache, Envoy's default: an RS256 verification every request; 1jc caches verified tokens
({JWT_CACHE_SIZE:,} per worker). Before measuring, each refused no token, a forged signature, another issuer, another
audience and an expired token, and passed the bench's token to the provider. Over bare Envoy, Envoy
CPU at {CONNECTIONS} connections and p50 at 1:
- a cached token: Warden (1) {over_bare('1')}; jwt_authn with its cache (1jc) {over_bare('1jc')},
  without (1j) {over_bare('1j')};
- a cold token every request, at one connection:
{cold_peers}

**LiteLLM's proxy** (rows 1l, 2l, 2lg; `tests/bench/litellm_peer.py`): LiteLLM {litellm_version}
configured as its production checklist says (master key, `LITELLM_LOG=ERROR`, spend and error logs
off, no database, no Redis), {litellm_peer.WORKERS} Uvicorn worker processes, one model entry to the
stand-in; wrk sends the same bodies straight to it (no Envoy in front) with its master key. Its CPU
is that of all its processes. Before measuring, a chat completion through each returned the
stand-in's answer (with the content filter, its email masked), and each refused {refused},
neither reaching the provider (not 401: see the analysis, "LiteLLM's proxy"). Row 1l is
answered from LiteLLM's configuration, while bare Envoy (0a) forwards the request to the
provider. Over bare Envoy, CPU at {CONNECTIONS} connections and p50 at 1:
- GET /models: LiteLLM (1l) {over_bare('1l')}; Warden (1) {over_bare('1')};
- 8 KB chat request: LiteLLM without a guardrail (2l) {over_bare('2l', '0b')}, with its content
  filter (2lg) {over_bare('2lg', '0b')}; Warden (2) {over_bare('2', '0b')}.

What each did to the 8 KB body (sent once through each; the planted values are {body_kinds};
counted in the request the stand-in received). **A peer that masks nothing is not a faster
masker**: row 2l forwards every planted value and is a proxy, not a masking gateway; compare
row 2lg with row 2.

{masking_md}

**Scenario 3, streams** ({args.stream_samples} timed streams of each kind, one at a time, medians;
{events:.0f} events per stream, sent by the stand-in in 512-byte frames):
- time to the first event, frames 1 ms apart: {first['bare_paced']:.0f} µs bare,
  {first['filter_paced']:.0f} µs with the filter: **{added_first:+.0f} µs** (target <= +1000 µs:
  {verdict(added_first <= 1000)});
- time to the first event carrying text: {first_text['bare_paced']:.0f} µs bare, {first_text['filter_paced']:.0f} µs
  with the filter ({added_first_text:+.0f} µs): by design the filter holds back a word that could still begin a
  value (the stream starts `Writ`, `e to`, ` jan`..., and `Writ` could begin an email), so the first text
  leaves with the next frame; this is the masking's price, not processing time;
- whole stream, frames sent at once: {total['bare_burst']:.0f} µs bare, {total['filter_burst']:.0f} µs with
  the filter: **{per_event:+.1f} µs per event** (target <= 20 µs: {verdict(per_event <= 20)});
- under load (the wrk rows above, {CONNECTIONS} streams at once): {load_per_event:+.1f} µs of Envoy CPU per event
  (Envoy CPU per stream, filter minus bare, over the events).

**Streamed tool calls** ({args.stream_samples} timed answers of each kind, medians; {call_events} events: text,
then a `bash` call whose {len(CALL_ARGS)} bytes of arguments come in
{-(-len(CALL_ARGS) // 40)} fragments, then the finish; a rule on `bash` makes the filter judge it):
- the call's first byte at the client, frames 1 ms apart: {call_first['bare_paced']:.0f} µs bare,
  {call_first['filter_paced']:.0f} µs with the filter: **{call_held:+.0f} µs**, the extra delay of a held
  call: by design the call leaves once its arguments have ended and it is judged, so this is about the time
  its fragments take to arrive, not processing time;
- the call's last fragment at the client: {call_last_added:+.0f} µs (what the judging itself adds once
  the call is complete);
- whole answer, frames sent at once: {call_total['bare_burst']:.0f} µs bare,
  {call_total['filter_burst']:.0f} µs with the filter: **{call_per_event:+.1f} µs per event**.

**Scenario 5, size**: added cost per KB of request ({lin}). Linear cost means a flat µs/KB.

## Memory

Resident size (VmRSS of the Envoy process) after a short 8 KB masked-chat load; separate Envoys with
the same configuration without a filter, with the no-op wasm filter, with Envoy's jwt_authn (JWT cache
on; it verifies the token, no more) and with Warden; per worker = 2 workers minus 1. LiteLLM's: the
VmRSS of its processes summed (its CLI, Uvicorn's {litellm_peer.WORKERS} workers, multiprocessing's
resource tracker), after the whole run's load.

{mem_rows or 'Not measured.'}
Warden's linear memory: the `warden.vm.memory_bytes` gauge (every VM's wasm memory, summed) and
Envoy's `wasm_vm_count`, from the admin port after the load.

### Start-up

From spawning each kind of Envoy (2 workers, the same configuration as above) to its first chat request
answered 200 (polled every 5 ms): for Warden, the module compiled by V8, every VM configured (its
policy compiled) and the issuer's keys fetched; the median of {STARTS} starts, interleaved.

{startup_rows or 'Not measured.'}
## Policy propagation

`tests/bench/policy_watch.py`: one control plane (SQLite) and 100 gateways' policy requests, first
polling every 5 s (`watch_seconds: 0`), then watching (`Prefer: wait=25`, the default); the control
plane's CPU time per second of each mode, its RSS, and the time from sending a publication (`POST
/v1/policies`: checked, stored, activated) to each watcher's new version.

{policy_watch.table(propagation) if propagation else 'Not measured.'}

## Engine microbenchmarks

`scripts/bench-engine.sh`: criterion natively (`cargo bench -p warden-engine --bench engine`), and the
same workloads built for `wasm32-wasip1` and run under Node's V8 (`node:wasi`), the engine Envoy embeds.

{engine_md}

## Targets and what limits them

Issue 20's targets, from this run (the limits of each missed one are in the section "What limits
each target" below, kept by hand; the tables above are regenerated):

{targets_md}

<!-- analysis -->
{analysis_text()}
"""


def fmt_ns(ns: float | None) -> str:
    if not ns:
        return "-"
    if ns >= 1e6:
        return f"{ns / 1e6:.2f} ms"
    if ns >= 1e3:
        return f"{ns / 1e3:.1f} µs"
    return f"{ns:.0f} ns"


def analysis_text() -> str:
    """The hand-written analysis (profiles, limits), kept in tests/bench/ANALYSIS.md so a rerun keeps it."""
    path = Path(__file__).with_name("ANALYSIS.md")
    return path.read_text() if path.exists() else ""


if __name__ == "__main__":
    sys.exit(main())
