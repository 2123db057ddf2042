"""What watching the active policy costs the control plane, and how fast an
activation reaches the watchers: 100 gateways (one watch each, as each
Envoy's lease holder keeps one) against one `warden serve` (SQLite), beside
the same 100 gateways polling every 5 s without a wait.

    .venv/bin/python tests/bench/policy_watch.py [--gateways 100] [--seconds 30]

Reported: the control plane's CPU time per second of each mode (utime +
stime from /proc, a count, not a wall-clock reading) and its RSS; and, for
watches, the time from sending the publication (`POST /v1/policies`, which
checks, stores and activates it) to each watcher's new version (median and
slowest). Uses the built binary (target/local/warden).
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx2 as httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.stack import (WARDEN_BIN, Ports, http, process_cpu_seconds, rss_mib, spawn,  # noqa: E402
                           wait_until)

POLICY = "version: 1\ngroups:\n  engineering:\n    models: [\"{model}\"]\n"
def measure(gateways: int = 100, seconds: float = 30) -> dict:
    """Both modes against one control plane; the figures `table` prints."""
    secret = secrets.token_urlsafe(24)
    port = Ports.free().control_plane
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith("WARDEN_")}
        cp = spawn("control plane", [str(WARDEN_BIN), "serve", "--listen", f"127.0.0.1:{port}",
                                     "--data-dir", tmp, "--dev"], Path(tmp) / "cp.log",
                   env={**env, "WARDEN_GATEWAY_SECRET": secret})
        try:
            wait_until("the control plane", lambda: http("GET", f"{base}/healthz", timeout=2)[0] == 200,
                       alive=cp.check_alive)
            return run_modes(base, secret, env, cp.popen.pid, gateways, seconds)
        finally:
            cp.stop()


def run_modes(base: str, secret: str, env: dict, pid: int, gateways: int, seconds: float) -> dict:
    admin = subprocess.run([str(WARDEN_BIN), "token", "--server", base, "--sub", "root",
                            "--groups", "warden-admins"], env=env, capture_output=True, text=True,
                           check=True, timeout=60).stdout.strip()

    def publish(model: str) -> float:
        """Publishes and activates; returns when the request was sent (a watcher
        may have the version before the publisher has its answer)."""
        sent = time.monotonic()
        status, _, body = http("POST", f"{base}/v1/policies", headers={"authorization": f"Bearer {admin}"},
                               body={"document": POLICY.format(model=model), "message": "bench"})
        assert status == 201, body
        return sent

    publish("gpt-4o")
    gw = {"x-warden-gateway-key": secret}
    etag = httpx.get(f"{base}/v1/policy/active", headers=gw).headers["etag"]

    # Polling: every gateway asks every 5 s (spread evenly), 304 each time.
    stop = threading.Event()

    def poller(offset: float) -> None:
        with httpx.Client() as client:
            time.sleep(offset)
            while not stop.is_set():
                client.get(f"{base}/v1/policy/active", headers={**gw, "if-none-match": etag})
                stop.wait(5)

    threads = [threading.Thread(target=poller, args=(5 * i / gateways,)) for i in range(gateways)]
    for t in threads:
        t.start()
    time.sleep(5)  # every poller has started (a warm-up, not a readiness check)
    before = process_cpu_seconds(pid)
    time.sleep(seconds)
    polling_cpu = (process_cpu_seconds(pid) - before) / seconds
    polling_rss = rss_mib(pid)
    stop.set()
    for t in threads:
        t.join()

    # Watching: every gateway holds one watch (25 s) and starts the next at once.
    stop = threading.Event()
    arrivals: list[float] = []
    lock = threading.Lock()

    def watcher() -> None:
        held = etag
        with httpx.Client(timeout=40) as client:
            while not stop.is_set():
                r = client.get(f"{base}/v1/policy/active",
                               headers={**gw, "if-none-match": held, "prefer": "wait=25"})
                if r.status_code == 200:
                    held = r.headers["etag"]
                    with lock:
                        arrivals.append(time.monotonic())

    threads = [threading.Thread(target=watcher) for _ in range(gateways)]
    for t in threads:
        t.start()
    time.sleep(5)
    before = process_cpu_seconds(pid)
    time.sleep(seconds)
    watching_cpu = (process_cpu_seconds(pid) - before) / seconds
    watching_rss = rss_mib(pid)
    delays = []
    for round_ in range(5):
        arrivals.clear()
        published = publish("claude-3-5-haiku" if round_ % 2 == 0 else "gpt-4o")
        wait_until("every watcher's new version", lambda: len(arrivals) >= gateways, timeout=30)
        delays += [a - published for a in arrivals]
    stop.set()
    publish("gpt-4o-mini")  # ends the watches
    for t in threads:
        t.join()
    return {"gateways": gateways, "polling_cpu_ms": polling_cpu * 1000, "polling_rss": polling_rss,
            "watching_cpu_ms": watching_cpu * 1000, "watching_rss": watching_rss,
            "median_ms": statistics.median(delays) * 1000, "slowest_ms": max(delays) * 1000}


def table(r: dict) -> str:
    return "\n".join([
        f"| {r['gateways']} gateways | control plane CPU | RSS | publication to every gateway |",
        "|---|---:|---:|---:|",
        f"| polling every 5 s | {r['polling_cpu_ms']:.1f} ms/s | {r['polling_rss']:.1f} MiB | up to 5 s (the period) |",
        f"| watching (wait=25) | {r['watching_cpu_ms']:.1f} ms/s | {r['watching_rss']:.1f} MiB | "
        f"median {r['median_ms']:.1f} ms, slowest {r['slowest_ms']:.1f} ms (5 activations) |",
    ])


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gateways", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=30)
    args = parser.parse_args()
    print(table(measure(args.gateways, args.seconds)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
