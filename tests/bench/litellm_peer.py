"""LiteLLM's proxy (PyPI `litellm[proxy]`) as a peer in `make bench` (issue 20).

`scripts/bootstrap.sh bench` installs it, pinned, in a venv of its own
(`.venv-bench/`: litellm pins many packages the test venv also uses). Here it
is configured as LiteLLM's production checklist recommends
(docs.litellm.ai/docs/proxy/prod), for a gateway without a database or Redis:

- a master key (`LITELLM_MASTER_KEY`): every caller must present it, so it
  authenticates callers, as a gateway does (without a database there are no
  virtual keys: the master key is the one key it accepts);
- `LITELLM_LOG=ERROR` (no per-request access log, no info logs), `set_verbose`
  off, `LITELLM_MODE=PRODUCTION` (no .env loading), spend and error logs off
  (`disable_spend_logs`, `disable_error_logs`: there is no database to write
  them to anyway);
- Uvicorn, its default server, with one worker process per core
  (`--num_workers`, 2 here): the checklist's "one worker per pod, scale out"
  on a single host, where Envoy runs 2 worker threads;
- one model entry, `gpt-4o`, OpenAI-compatible (`openai/gpt-4o`), routed to the
  stand-in provider with the stand-in's key, as Envoy's cluster is;
- `LITELLM_LOCAL_MODEL_COST_MAP=True`: its model cost map from the package, not
  fetched at start (only package registries are reachable here).

The guardrail variant adds LiteLLM's built-in content filter
(`litellm_content_filter`: regular expressions in the proxy, no service, no
model), on by default for every request, on requests (`pre_call`) and on
responses (`post_call`), with its prebuilt patterns for personal data and
secrets set to MASK (`PATTERNS`).
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from harness.stack import ROOT, STAND_IN_KEYS, Process, http, process_cpu_seconds, rss_mib, spawn, wait_until

VENV = ROOT / ".venv-bench"
LITELLM_BIN = VENV / "bin" / "litellm"
# As many worker processes as cores (Envoy runs as many worker threads).
WORKERS = os.cpu_count() or 1
# The model the bench's requests name, and the one entry LiteLLM routes.
MODEL = "gpt-4o"
GUARDRAIL = "bench-mask"
# litellm_content_filter's prebuilt patterns (its patterns.json) for personal
# data and secrets, each set to MASK: personal data (US SSN, email, US phone,
# payment cards, IBAN) and secrets (AWS access and secret keys, GitHub and Slack
# tokens, `api_key=...`). Its other prebuilt patterns are national identifiers
# and passports of single countries, network addresses and topic word lists.
PATTERNS = ["us_ssn", "email", "us_phone", "credit_card", "iban",
            "aws_access_key", "aws_secret_key", "github_token", "slack_token", "generic_api_key"]


def version() -> str:
    """The litellm installed in the bench's venv."""
    out = subprocess.run([str(VENV / "bin" / "python"), "-c",
                          "import importlib.metadata as m; print(m.version('litellm'))"],
                         capture_output=True, text=True)
    return out.stdout.strip() or "not installed"


def config(provider_url: str, guardrail: bool) -> dict:
    """LiteLLM's config.yaml (see the module's docstring)."""
    cfg: dict = {
        "model_list": [{"model_name": MODEL, "litellm_params": {
            "model": f"openai/{MODEL}", "api_base": f"{provider_url}/v1",
            "api_key": "os.environ/BENCH_STAND_IN_OPENAI_KEY"}}],
        "general_settings": {"master_key": "os.environ/LITELLM_MASTER_KEY",
                             "disable_spend_logs": True, "disable_error_logs": True},
        "litellm_settings": {"set_verbose": False, "request_timeout": 600},
    }
    if guardrail:
        cfg["guardrails"] = [{"guardrail_name": GUARDRAIL, "litellm_params": {
            "guardrail": "litellm_content_filter", "mode": ["pre_call", "post_call"], "default_on": True,
            "patterns": [{"pattern_type": "prebuilt", "pattern_name": name, "action": "MASK"}
                         for name in PATTERNS]}}]
    return cfg


def group_pids(leader: int) -> list[int]:
    """The processes of `leader`'s process group (each spawned process leads its own):
    LiteLLM's CLI (Uvicorn's supervisor), its workers, multiprocessing's resource tracker."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        if int(fields[2]) == leader:
            pids.append(int(stat.parent.name))
    return sorted(pids)


@dataclass
class LiteLLM:
    """One LiteLLM proxy on loopback; `start` it, then `stop` it (its whole process group)."""
    name: str
    port: int
    guardrail: bool
    key: str = field(default_factory=lambda: "sk-bench-" + secrets.token_hex(16))
    process: Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, data_dir: Path, provider_url: str) -> "LiteLLM":
        if not LITELLM_BIN.exists():
            raise RuntimeError(f"{LITELLM_BIN} is missing: run `scripts/bootstrap.sh bench` (make bootstrap-bench)")
        data_dir.mkdir(parents=True, exist_ok=True)
        path = data_dir / f"{self.name}.yaml"
        path.write_text(yaml.safe_dump(config(provider_url, self.guardrail), sort_keys=False))
        base = {k: v for k, v in os.environ.items() if not k.startswith(("WARDEN_", "LITELLM_"))}
        env = {**base, "LITELLM_MASTER_KEY": self.key, "LITELLM_LOG": "ERROR", "LITELLM_MODE": "PRODUCTION",
               "LITELLM_LOCAL_MODEL_COST_MAP": "True",
               "BENCH_STAND_IN_OPENAI_KEY": STAND_IN_KEYS["WARDEN_OPENAI_API_KEY"]}
        self.process = spawn(self.name, [str(LITELLM_BIN), "--config", str(path), "--host", "127.0.0.1",
                                         "--port", str(self.port), "--num_workers", str(WORKERS)],
                             data_dir / f"{self.name}.log", env=env)
        # Ready: its liveness endpoint answers in every worker (a few seconds: Python imports).
        wait_until(f"LiteLLM's proxy ({self.name})", lambda: http(
            "GET", f"{self.url}/health/liveliness", timeout=2)[0] == 200, timeout=180, alive=self.process.check_alive)
        return self

    def pids(self) -> list[int]:
        """Its whole process tree, whose CPU time the bench counts."""
        return group_pids(self.process.popen.pid) if self.process else []

    def rss_mib(self) -> float:
        """Resident size summed over its processes."""
        return sum(rss_mib(pid) for pid in self.pids())

    def settle(self) -> None:
        """Waits until its processes stop using CPU (no tick in 0.2 s): when wrk stops it
        leaves up to one request per connection in flight, which LiteLLM still serves
        (and forwards) for a while; that work would count in the next run."""
        last = {"cpu": -1.0, "at": 0.0}

        def idle() -> bool:
            now = time.monotonic()
            if now - last["at"] < 0.2:
                return False
            cpu = sum(process_cpu_seconds(pid) for pid in self.pids())
            quiet, last["cpu"], last["at"] = cpu - last["cpu"] <= 0.01, cpu, now
            return quiet
        wait_until(f"LiteLLM ({self.name}) to finish the requests in flight", idle, timeout=60,
                   alive=self.process.check_alive)

    def stop(self) -> None:
        if self.process:
            self.process.stop()

    def check_works(self, stack) -> dict[str, int]:
        """Before it is measured: a wrong key and no key are refused and reach nothing,
        and a chat completion with its key comes back with the stand-in's answer
        (queued at the stand-in, so it cannot come from anywhere else), having
        reached the stand-in with the stand-in's key, not the caller's. With the
        guardrail, that answer's email comes back masked (post_call). Returns the
        refusals' statuses: without a database LiteLLM answers a key other than
        its master key with 400 `no_db_connection`, not 401 (it cannot look the
        key up), and in 1.108.7 a request without a key with 500 (its error
        handler imports `prisma`, which `litellm[proxy]` does not install)."""
        stack.provider_clear()
        refusals = {}
        for probe, headers in (("wrong key", {"authorization": "Bearer sk-bench-wrong"}), ("no key", {})):
            status, _, body = http("POST", f"{self.url}/v1/chat/completions", headers=headers,
                                   body={"model": MODEL, "messages": [{"role": "user", "content": probe}]})
            if status < 400 or stack.provider_received():
                raise RuntimeError(f"LiteLLM ({self.name}): a request with {probe} answered {status} and "
                                   f"reached the provider: it does not authenticate callers: {body[:200]!r}")
            refusals[probe] = status
        answer = f"stand-in answer {secrets.token_hex(4)}, write to jane.doe@example.com"
        stack.provider_queue_replies([answer])
        status, _, body = http("POST", f"{self.url}/v1/chat/completions",
                               headers={"authorization": f"Bearer {self.key}"},
                               body={"model": MODEL, "messages": [{"role": "user", "content": "hello"}]})
        received = stack.provider_received()
        content = json.loads(body)["choices"][0]["message"]["content"] if status == 200 else ""
        want = answer.replace("jane.doe@example.com", "[EMAIL_REDACTED]") if self.guardrail else answer
        if status != 200 or content != want:
            raise RuntimeError(f"LiteLLM ({self.name}) answered {status}, {content!r}, not the stand-in's "
                               f"{want!r}: {body[:300]!r}")
        keys = [r["headers"].get("authorization") for r in received]
        if keys != [f"Bearer {STAND_IN_KEYS['WARDEN_OPENAI_API_KEY']}"]:
            raise RuntimeError(f"LiteLLM ({self.name}): the stand-in received {len(received)} request(s) "
                               f"with keys {keys}, want one with the stand-in's key")
        stack.provider_clear()
        return refusals
