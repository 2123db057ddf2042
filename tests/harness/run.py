"""`make run`: the whole gateway on loopback, in the foreground; Ctrl-C stops all of it.

    .venv/bin/python tests/harness/run.py [--data-dir .warden]

Ports are the documented defaults (gateway 10000, admin 9901, control plane
8080, stand-in provider 8081). Export WARDEN_OPENAI_API_KEY and/or
WARDEN_ANTHROPIC_API_KEY to send that provider's traffic to the real API
instead of the stand-in.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.stack import REAL_PROVIDERS, ROOT, Ports, Stack, StackError  # noqa: E402


def port_in_use(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=str(ROOT / ".warden"))
    args = parser.parse_args()

    ports = Ports.defaults()
    busy = [f"{name} {port}" for name, port in vars(ports).items() if port_in_use(port)]
    if busy:
        print(f"error: port(s) already in use: {', '.join(busy)} (is another `make run` going?)",
              file=sys.stderr)
        return 1

    stopping = False

    def on_signal(signum, _frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    print("==> starting the Warden gateway (stand-in provider, control plane, Envoy)")
    try:
        stack = Stack.start(ports, Path(args.data_dir), real_providers=True)
    except StackError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    with stack:
        real = [name for name, (var, _) in REAL_PROVIDERS.items() if os.environ.get(var)]
        print(f"""
Warden is running.
  gateway          {stack.gateway_url}/openai/v1   {stack.gateway_url}/anthropic/v1
  Envoy admin      {stack.admin_url}
  control plane    {stack.control_plane_url}  (dev OIDC issuer at {stack.control_plane_url}/dev)
  stand-in model   {stack.provider_url}{'  (real providers: ' + ', '.join(real) + ')' if real else ''}
  access log       {stack.access_log}
  logs             {stack.data_dir / 'logs'}

Get a token and call the gateway with it as the API key:
  TOKEN=$(target/local/warden token --sub alice --group engineering)
  curl -s {stack.gateway_url}/openai/v1/chat/completions -H "Authorization: Bearer $TOKEN" \\
       -H 'content-type: application/json' \\
       -d '{{"model":"gpt-4o-mini","messages":[{{"role":"user","content":"hello"}}]}}'

Ctrl-C stops everything.""", flush=True)
        while not stopping:
            for p in stack.processes:
                if p.popen.poll() is not None:
                    print(f"error: {p.name} exited with status {p.popen.returncode}:\n{p.tail()}",
                          file=sys.stderr)
                    return 1
            time.sleep(0.5)
        print("\n==> stopping")
    return 0


if __name__ == "__main__":
    sys.exit(main())
