"""`make soak`: a bounded soak of the whole gateway on loopback.

    .venv/bin/python tests/soak/soak.py [--seconds 600] [--streams 1000] [--out target/soak]

For `--seconds` it keeps `--streams` SSE streams open at once (each lasts
about 27 s, half through the OpenAI route and half through the Anthropic
one, each replaced by a new one when it ends) beside chat workers sending
masked prompts, requests offering tools, and requests held for an approval
that an approver loop decides; at a third and at two thirds of the run the
control plane, which is also the stack's IdP (its dev issuer), is stopped
and started again. Then it stops starting requests, lets every open one
finish, and checks:

- every request the soak started has exactly one audit record (the access
  log's end-of-stream records of the soak's user agents);
- no request failed: each one was served, or refused by the gateway with a
  clear error (a `warden.*` reason) in the provider's format;
- no masked value reached a client in clear;
- Envoy's and the control plane's memory is flat: the peak of the run's
  last third is within 10% of the middle third's (the first third fills
  caches and pools).

Every 10 s window's figures (served, refused, failed, latency percentiles,
memory) go to OUT/windows.json and a summary to OUT/summary.md (which
RELIABILITY.md quotes). Exit status 1 when a check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import httpx2 as httpx
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.stack import ROOT, Ports, Stack, default_filter_config, wait_until  # noqa: E402

WINDOW_SECONDS = 10
EMAIL = "soak.user@example.com"
APPROVAL_POLICY = yaml.safe_load((ROOT / "examples" / "policies" / "approvals.yaml").read_text())
# A reply of ~60 words: ~95 events, ~27 KB as OpenAI streams it (~11 KB as
# Anthropic does), sent in 1 KB frames one second apart: a stream lasts
# ~27 s (~11 s), about 3.5 events a second per stream.
STREAM_TEXT = "Reply with: " + " ".join(f"part {i} of a long answer, mail {EMAIL} for more." for i in range(6))
STREAM_HEADERS = {"x-stand-in-chunk-size": "1024", "x-stand-in-chunk-delay-ms": "1000"}
# A process's peak memory in the last third of the run may exceed its peak in
# the middle third this much before the run counts as a leak.
MEMORY_GROWTH = 1.10


@dataclass
class Window:
    outcomes: Counter = field(default_factory=Counter)
    latency_ms: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    envoy_rss_mib: float = 0.0
    control_plane_rss_mib: float = 0.0
    open_streams: int = 0


class Soak:
    def __init__(self, stack: Stack, seconds: int, streams: int, chat_workers: int):
        self.stack = stack
        self.seconds = seconds
        self.streams = streams
        self.chat_workers = chat_workers
        self.run_id = uuid.uuid4().hex[:8]
        self.started = 0
        self.windows: list[Window] = [Window()]
        # The first window of each life of the control plane after a restart.
        self.restarted_at: list[int] = []
        self.failures: list[str] = []
        self.leaks = 0
        self.open_streams = 0
        self.stopping = asyncio.Event()
        self.drained = asyncio.Event()
        self.t0 = time.monotonic()
        self.token = stack.token("soak", ["engineering"])
        self.approver = stack.token("soak-approver", ["security"])

    def agent(self, kind: str) -> str:
        return f"soak/{self.run_id}/{kind}"

    @property
    def window(self) -> Window:
        return self.windows[-1]

    def record(self, kind: str, outcome: str, started: float, detail: str = "",
               answered: float | None = None) -> None:
        self.window.outcomes[f"{kind}.{outcome}"] += 1
        if outcome == "served":
            self.window.latency_ms[kind].append(((answered or time.monotonic()) - started) * 1000)
        if outcome == "failed" and len(self.failures) < 50:
            self.failures.append(f"{kind}: {detail}"[:300])

    def classify(self, kind: str, started: float, status: int, headers, body: bytes,
                 answered: float | None = None) -> None:
        if 200 <= status < 300:
            if EMAIL.encode() in body:
                self.leaks += 1
                self.record(kind, "failed", started, "a masked value reached the client")
            else:
                self.record(kind, "served", started, answered=answered)
        elif headers.get("x-warden-reason", "").startswith("warden."):
            self.record(kind, "refused:" + headers["x-warden-reason"], started)
        else:
            self.record(kind, "failed", started, f"{status} {body[:200]!r}")

    async def stream_loop(self, client: httpx.AsyncClient, n: int) -> None:
        anthropic = n % 2 == 1
        if anthropic:
            url = f"{self.stack.gateway_url}/anthropic/v1/messages"
            body = {"model": "claude-sonnet-4-5", "max_tokens": 4096, "stream": True,
                    "messages": [{"role": "user", "content": STREAM_TEXT}]}
        else:
            url = f"{self.stack.gateway_url}/openai/v1/chat/completions"
            body = {"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": STREAM_TEXT}]}
        headers = {"authorization": f"Bearer {self.token}", "user-agent": self.agent("stream"), **STREAM_HEADERS}
        # Spread the streams' starts over their length, so they do not all end together.
        await asyncio.sleep((n / max(self.streams, 1)) * 25)
        while not self.stopping.is_set():
            started = time.monotonic()
            self.started += 1
            self.open_streams += 1
            try:
                async with client.stream("POST", url, json=body, headers=headers) as resp:
                    pieces = []
                    first = None
                    async for piece in resp.aiter_raw():
                        first = first or time.monotonic()
                        pieces.append(piece)
                    data = b"".join(pieces)
                    # A stream's latency is its first byte's: its length is the provider's pace.
                    self.classify("stream", started, resp.status_code, resp.headers, data, first)
            except httpx.HTTPError as err:
                self.record("stream", "failed", started, repr(err))
            finally:
                self.open_streams -= 1

    async def chat_loop(self, client: httpx.AsyncClient, n: int) -> None:
        url = f"{self.stack.gateway_url}/openai/v1/chat/completions"
        kinds = ["chat", "tools", "approval"]
        i = n
        while not self.stopping.is_set():
            kind = kinds[i % len(kinds)]
            i += 1
            body: dict = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"Reply with: write to {EMAIL} today"}]}
            if kind == "tools":
                body["tools"] = [{"type": "function", "function": {
                    "name": "run_shell", "parameters": {"type": "object", "properties": {"command": {"type": "string"}}}}}]
            elif kind == "approval":
                body["messages"][0]["content"] = f"the production database dump {uuid.uuid4().hex[:8]}"
            started = time.monotonic()
            self.started += 1
            try:
                resp = await client.post(url, json=body, headers={
                    "authorization": f"Bearer {self.token}", "user-agent": self.agent(kind)})
                self.classify(kind, started, resp.status_code, resp.headers, resp.content)
            except httpx.HTTPError as err:
                self.record(kind, "failed", started, repr(err))

    async def approver_loop(self, client: httpx.AsyncClient) -> None:
        """An approver who approves every pending request about once a second."""
        base = self.stack.control_plane_url
        auth = {"authorization": f"Bearer {self.approver}"}
        # Until every request has ended, not only until the soak stops
        # starting them: a request held at the stop still gets its answer.
        while not self.drained.is_set():
            try:
                resp = await client.get(f"{base}/v1/approvals?status=pending", headers=auth)
                if resp.status_code == 200:
                    for approval in resp.json().get("approvals", []):
                        await client.post(f"{base}/v1/approvals/{approval['id']}/approve",
                                          json={"reason": "soak"}, headers=auth)
            except httpx.HTTPError:
                pass  # the control plane is being restarted
            await asyncio.sleep(1)

    def rss_mib(self, name: str) -> float:
        for p in self.stack.processes:
            if p.name == name and p.popen.poll() is None:
                try:
                    for line in Path(f"/proc/{p.popen.pid}/status").read_text().splitlines():
                        if line.startswith("VmRSS:"):
                            return int(line.split()[1]) / 1024
                except OSError:
                    return 0.0
        return 0.0

    async def clock_loop(self) -> None:
        restarts = {self.seconds // 3, 2 * self.seconds // 3}
        start = time.monotonic()
        elapsed = 0
        while elapsed < self.seconds:
            # Windows end on the wall clock's 10 s marks: a busy event loop
            # wakes late, and must not stretch them.
            elapsed += WINDOW_SECONDS
            await asyncio.sleep(max(0.0, start + elapsed - time.monotonic()))
            self.window.envoy_rss_mib = self.rss_mib("envoy")
            self.window.control_plane_rss_mib = self.rss_mib("control plane")
            self.window.open_streams = self.open_streams
            self.print_window(len(self.windows) - 1)
            self.windows.append(Window())
            if any(elapsed - WINDOW_SECONDS < r <= elapsed for r in restarts):
                print(f"  [{elapsed:4d}s] restarting the control plane (and its IdP)", flush=True)
                await asyncio.to_thread(self.stack.stop_control_plane)
                await asyncio.to_thread(self.stack.start_control_plane)
                self.restarted_at.append(len(self.windows) - 1)
        self.stopping.set()

    def print_window(self, i: int) -> None:
        w = self.windows[i]
        served = sum(v for k, v in w.outcomes.items() if k.endswith(".served"))
        refused = sum(v for k, v in w.outcomes.items() if ".refused:" in k)
        failed = sum(v for k, v in w.outcomes.items() if k.endswith(".failed"))
        print(f"  [{(i + 1) * WINDOW_SECONDS:4d}s] open streams {w.open_streams:5d}  served {served:5d}  "
              f"refused {refused:4d}  failed {failed:3d}  envoy {w.envoy_rss_mib:6.1f} MiB  "
              f"control plane {w.control_plane_rss_mib:5.1f} MiB", flush=True)

    async def run(self) -> None:
        limits = httpx.Limits(max_connections=self.streams + self.chat_workers + 16, max_keepalive_connections=64)
        timeout = httpx.Timeout(120.0)
        async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:
            tasks = [asyncio.create_task(self.stream_loop(client, n)) for n in range(self.streams)]
            tasks += [asyncio.create_task(self.chat_loop(client, n)) for n in range(self.chat_workers)]
            approver = asyncio.create_task(self.approver_loop(client))
            await self.clock_loop()
            # No new requests; every open one runs to its end.
            await asyncio.gather(*tasks)
            self.drained.set()
            await approver
            # Memory once the load is gone: it should fall back, not stay up.
            self.window.envoy_rss_mib = self.rss_mib("envoy")
            self.window.control_plane_rss_mib = self.rss_mib("control plane")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=int(os.environ.get("SOAK_SECONDS", 600)))
    parser.add_argument("--streams", type=int, default=int(os.environ.get("SOAK_STREAMS", 1000)))
    parser.add_argument("--chat-workers", type=int, default=int(os.environ.get("SOAK_CHAT_WORKERS", 6)))
    parser.add_argument("--out", default=str(ROOT / "target" / "soak"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # A socket per stream on both sides of Envoy: raise the soft limit to the hard one.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < 4 * args.streams + 1024:
        print(f"error: {args.streams} streams need about {4 * args.streams + 1024} open files; the limit is {hard}",
              file=sys.stderr)
        return 2

    config = default_filter_config()
    config["control_plane"].update({"poll_seconds": 1, "max_stale_seconds": 60})

    def circuit_breakers(cfg: dict) -> None:
        # Envoy's default allows 1,024 requests per cluster at once; a
        # mesh sized for this many streams raises it the same way.
        for cluster in cfg["static_resources"]["clusters"]:
            cluster["circuit_breakers"] = {"thresholds": [{"max_connections": 100000, "max_requests": 100000,
                                                           "max_pending_requests": 100000}]}

    data_dir = out / f"stack-{int(time.time())}"
    print(f"soak: {args.seconds} s, {args.streams} streams, {args.chat_workers} chat workers; logs in {data_dir}",
          flush=True)
    with Stack.start(Ports.free(), data_dir, filter_config=yaml.safe_dump(config),
                     edit_envoy_config=circuit_breakers) as stack:
        admin = stack.token("root", ["warden-admins"])
        policy_file = data_dir / "approvals.yaml"
        policy_file.write_text(yaml.safe_dump(APPROVAL_POLICY))
        stack.cli("policy", "push", str(policy_file), "-m", "soak", token=admin)
        soak = Soak(stack, args.seconds, args.streams, args.chat_workers)
        asyncio.run(soak.run())

        # Exactly one end record per request the soak started.
        agents = {soak.agent(k) for k in ("stream", "chat", "tools", "approval")}
        ends: list[dict] = []

        def all_recorded() -> bool:
            ends[:] = [r for r in stack.access_log_records()
                       if r.get("user_agent") in agents and r.get("log_type") != "DownstreamPeriodic"]
            return len(ends) >= soak.started

        try:
            wait_until("every request's audit record", all_recorded, timeout=120)
        except Exception:  # noqa: BLE001 - reported below
            pass

    windows = soak.windows
    totals: Counter = Counter()
    for w in windows:
        totals.update(w.outcomes)
    served = sum(v for k, v in totals.items() if k.endswith(".served"))
    refused = sum(v for k, v in totals.items() if ".refused:" in k)
    failed = sum(v for k, v in totals.items() if k.endswith(".failed"))
    warm = windows[min(2, len(windows) - 1)]
    last = windows[-1]
    # Flat: the last third's peak is within MEMORY_GROWTH of the middle
    # third's (the first third fills caches and pools), over the run for
    # Envoy, and over its last life for the control plane, which the soak
    # restarts: two lives, each filling its caches from empty, cannot be
    # compared (its database, and so what its caches hold, grows between them).
    loaded = windows[:-1] or windows
    control_plane_life = loaded[soak.restarted_at[-1]:] if soak.restarted_at else loaded
    if len(control_plane_life) < 3:
        control_plane_life = loaded

    def flat(rss, span: list) -> bool:
        third = max(len(span) // 3, 1)
        middle, final = span[third:2 * third] or span, span[2 * third:] or span
        return max(map(rss, final)) <= max(map(rss, middle)) * MEMORY_GROWTH
    latency = {kind: [x for w in windows for x in w.latency_ms.get(kind, [])] for kind in ("stream", "chat", "tools", "approval")}
    checks = {
        "one audit record per request": len(ends) == soak.started,
        "nothing failed": failed == 0,
        "no masked value reached a client": soak.leaks == 0,
        "Envoy's memory flat": flat(lambda w: w.envoy_rss_mib, loaded),
        "the control plane's memory flat (its last life)": flat(lambda w: w.control_plane_rss_mib,
                                                                control_plane_life),
    }
    (out / "windows.json").write_text(json.dumps([{
        "end_s": (i + 1) * WINDOW_SECONDS, "outcomes": dict(w.outcomes), "open_streams": w.open_streams,
        "envoy_rss_mib": round(w.envoy_rss_mib, 1), "control_plane_rss_mib": round(w.control_plane_rss_mib, 1),
        "latency_ms": {k: {"p50": round(percentile(v, 0.5), 1), "p99": round(percentile(v, 0.99), 1)}
                       for k, v in w.latency_ms.items()},
    } for i, w in enumerate(windows)], indent=1))
    lines = [
        f"Soak of {args.seconds} s, {args.streams} concurrent streams, {args.chat_workers} chat workers, "
        f"control plane and IdP restarted twice ({os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}).",
        "",
        f"- requests started: {soak.started}; served {served}, refused by the gateway {refused}, failed {failed}",
        f"- audit records: {len(ends)} for {soak.started} requests",
        "- refusals by reason: " + (", ".join(f"{k.split('refused:')[1]} ({k.split('.')[0]}) {v}"
                                               for k, v in sorted(totals.items()) if "refused:" in k) or "none"),
        f"- Envoy RSS: {warm.envoy_rss_mib:.0f} MiB after warm-up, {max(w.envoy_rss_mib for w in windows):.0f} MiB at most, "
        f"{last.envoy_rss_mib:.0f} MiB once every request ended",
        f"- control plane RSS: {warm.control_plane_rss_mib:.0f} MiB after warm-up, "
        f"{max(w.control_plane_rss_mib for w in windows):.0f} MiB at most, {last.control_plane_rss_mib:.0f} MiB once every request ended",
        "",
        "| kind | served | p50 ms | p99 ms |",
        "|---|---|---|---|",
        *[f"| {k} | {len(v)} | {percentile(v, 0.5):.0f} | {percentile(v, 0.99):.0f} |" for k, v in latency.items()],
        "",
        *[f"- check: {name}: {'ok' if ok else 'FAILED'}" for name, ok in checks.items()],
    ]
    if soak.failures:
        lines += ["", "First failures:", *[f"    {f}" for f in soak.failures[:10]]]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
