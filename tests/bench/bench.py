"""`make bench`: what the Warden filter costs, against bare Envoy in the same run.

One Envoy serves two listeners with the same routes and clusters: one with
the Warden filter, one without (the baseline). A real load generator (wrk)
drives each scenario on loopback; each measurement is repeated and the
median is reported, with the ratio to the baseline measured in the same run
(these machines are noisy: only ratios within one run mean much).

    .venv/bin/python tests/bench/bench.py [--duration 5] [--repeat 3] [--out BENCHMARKS.md]

Scenarios here: 0 (bare Envoy), 1 (filter, cached token, no request body;
the JSON response is still inspected under the default policy), 2 (filter,
an 8 KB chat request carrying personal data, masked). The others of issue 7
(streams, cold tokens, large bodies, memory) are still to come.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.stack import ENVOY_BIN, ROOT, Ports, Stack  # noqa: E402

CONNECTIONS = 8


@dataclass
class Result:
    rps: float
    p50_us: float
    p99_us: float


def to_us(value: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", value.strip())
    if not m:
        raise ValueError(value)
    n, unit = float(m.group(1)), m.group(2)
    return n * {"us": 1, "ms": 1e3, "s": 1e6}[unit]


def wrk(url: str, script: Path, duration: int) -> Result:
    out = subprocess.run(["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{duration}s", "--latency", "-s", str(script), url],
                         capture_output=True, text=True, timeout=duration + 60, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = to_us(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))
    p99 = to_us(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        raise RuntimeError(f"{url}: {non2xx.group(1)} failed responses; the scenario is broken:\n{out}")
    return Result(rps, p50, p99)


def lua(path: Path, method: str, token: str | None, body: str | None) -> Path:
    lines = [f'wrk.method = "{method}"']
    if token:
        lines.append(f'wrk.headers["authorization"] = "Bearer {token}"')
    if body is not None:
        lines.append('wrk.headers["content-type"] = "application/json"')
        lines.append(f"wrk.body = {json.dumps(body)}")
    path.write_text("\n".join(lines) + "\n")
    return path


def chat_body(size: int) -> str:
    filler = "The quarterly numbers look fine. "
    text = f"Contact jane.doe@example.com or +1 415 555 2671; card 4111 1111 1111 1111. "
    while len(text) < size - 200:
        text += filler
    return json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": text}]})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"))
    args = parser.parse_args()

    ports = Ports.free()
    bare_port = Ports.free().gateway
    with tempfile.TemporaryDirectory(prefix="warden-bench-") as tmp:
        tmp_dir = Path(tmp)
        with Stack.start(ports, tmp_dir / "stack", bare_port=bare_port) as stack:
            token = stack.token("bench", ["engineering"])
            body8k = chat_body(8 * 1024)
            scripts = {
                "get": lua(tmp_dir / "get.lua", "GET", None, None),
                "get_token": lua(tmp_dir / "get_token.lua", "GET", token, None),
                "chat8k": lua(tmp_dir / "chat8k.lua", "POST", None, body8k),
                "chat8k_token": lua(tmp_dir / "chat8k_token.lua", "POST", token, body8k),
            }
            bare = f"http://127.0.0.1:{bare_port}"
            gw = stack.gateway_url
            plan = [
                ("0a", "bare Envoy: GET /openai/v1/models", f"{bare}/openai/v1/models", "get", None),
                ("1", "filter: cached token, no request body (response inspected)",
                 f"{gw}/openai/v1/models", "get_token", "0a"),
                ("0b", "bare Envoy: 8 KB chat request", f"{bare}/openai/v1/chat/completions", "chat8k", None),
                ("2", "filter: 8 KB chat request with personal data, masked",
                 f"{gw}/openai/v1/chat/completions", "chat8k_token", "0b"),
            ]
            runs: dict[str, list[Result]] = {key: [] for key, *_ in plan}
            # Interleave the scenarios, so drift on a noisy machine hits all alike.
            for round_ in range(args.repeat):
                for key, label, url, script, _ in plan:
                    print(f"  round {round_ + 1}/{args.repeat}: {key} {label}", flush=True)
                    runs[key].append(wrk(url, scripts[script], args.duration))
    med = {k: Result(statistics.median(r.rps for r in v), statistics.median(r.p50_us for r in v),
                     statistics.median(r.p99_us for r in v)) for k, v in runs.items()}
    envoy_version = subprocess.run([str(ENVOY_BIN), "--version"], capture_output=True, text=True).stdout.strip()
    rows = []
    for key, label, _, _, base in plan:
        r = med[key]
        if base:
            b = med[base]
            ratio = f"{r.rps / b.rps:.2f}"
            added = f"{r.p50_us - b.p50_us:+.0f} / {r.p99_us - b.p99_us:+.0f}"
        else:
            ratio, added = "1.00", "-"
        rows.append(f"| {key} | {label} | {r.rps:,.0f} | {ratio} | {r.p50_us:.0f} | {r.p99_us:.0f} | {added} |")
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                if l.startswith("model name")), platform.processor())
    text = f"""# Benchmarks

Generated by `make bench` (`tests/bench/bench.py`); rerun it to refresh every number here.

- Machine: {cpu}, {len([l for l in Path('/proc/cpuinfo').read_text().splitlines() if l.startswith('processor')])} cores, {platform.system()} {platform.release()}
- Envoy: `{envoy_version.split('version: ')[-1]}`, 2 worker threads; filter `dist/warden-filter.wasm` (V8)
- Load: `wrk -t1 -c{CONNECTIONS} -d{args.duration}s --latency`, {args.repeat} interleaved rounds, medians
- Baseline: the same Envoy, a second listener with the same routes and no filter, in the same run
- Provider: the stand-in (`warden-stand-in-provider`) on loopback

| # | scenario | req/s | ratio to bare | p50 µs | p99 µs | added p50 / p99 µs |
|---|---|---:|---:|---:|---:|---:|
{chr(10).join(rows)}

Targets (issue 7): scenario 1 at least 0.95 of bare throughput and at most 15 µs added p50;
scenario 2 at most 100 µs added p50 and 300 µs added p99. With two cores shared by wrk,
Envoy's two workers and the provider, absolute numbers are far below a production host's;
the ratios and added latencies are what compare.

Not measured yet: streamed responses (time to first event, per-event cost), cold tokens
(RS256, ES256, EdDSA), 64 KB and 512 KB bodies, Envoy's resident memory with and without
the filter, and the engine microbenchmarks (native and in V8).
"""
    Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
