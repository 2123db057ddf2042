"""Warden as the OCI images a mesh pulls and a cluster runs (scripts/oci.py,
written by scripts/build.sh into dist/oci/), tested with real parts:

- the filter's layout is the format Istio's WasmPlugin (pkg/wasm/imagefetcher.go)
  and Envoy Gateway's EnvoyExtensionPolicy (internal/wasm/imagefetcher.go) read:
  exactly two layers, one of them the raw module (scripts/oci.py says why);
- it goes into a real registry (Debian's docker-registry, the CNCF distribution
  server) with a real client (oras-py), keeps its manifest digest there, and comes
  back by digest byte for byte;
- a real Envoy loads the filter straight from the registry's blob URL
  (`vm_config.code.remote`, checked against the wasm's sha256) and governs
  requests with it; with a wrong sha256 it fails closed;
- the control plane's image is what it says (files, user, entrypoint, digests)
  and serves /healthz under a real OCI runtime (crun, else runc), as a non-root
  user on a read-only root with the data directory bind-mounted.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tarfile
import uuid
import warnings
from pathlib import Path

import oras.layout.layout
import oras.provider
import pytest
import yaml

from harness.stack import (ROOT, WARDEN_BIN, Process, StackError, http, spawn, wait_until,
                           warden_plugin)

DIST = ROOT / "dist"
FILTER_WASM = DIST / "warden-filter.wasm"
FILTER_LAYOUT = DIST / "oci" / "warden-filter"
CONTROL_PLANE_LAYOUT = DIST / "oci" / "warden-control-plane"
OCI_SCRIPT = ROOT / "scripts" / "oci.py"

WASM_LAYER = "application/vnd.module.wasm.content.layer.v1+wasm"
WASM_CONFIG = "application/vnd.module.wasm.config.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
REGISTRY_CLUSTER = "oci_registry"
CHAT = "/openai/v1/chat/completions"


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Layout:
    """An OCI image layout on disk, read with nothing but json and hashlib (so
    that it checks scripts/oci.py rather than trusting its code)."""

    def __init__(self, path: Path):
        self.path = path
        self.index = json.loads((path / "index.json").read_text())

    def blob(self, digest: str) -> bytes:
        algorithm, hex_ = digest.split(":", 1)
        assert algorithm == "sha256", digest
        return (self.path / "blobs" / "sha256" / hex_).read_bytes()

    @property
    def manifest_digest(self) -> str:
        (entry,) = self.index["manifests"]
        return entry["digest"]

    @property
    def tag(self) -> str:
        (entry,) = self.index["manifests"]
        return entry["annotations"]["org.opencontainers.image.ref.name"]

    @property
    def manifest(self) -> dict:
        return json.loads(self.blob(self.manifest_digest))

    def check_every_blob(self) -> None:
        """The layout's own rules: `oci-layout` names the version, each blob's
        name is its sha256, and every descriptor's digest and size match."""
        assert json.loads((self.path / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
        for blob in (self.path / "blobs" / "sha256").iterdir():
            assert sha256_hex(blob.read_bytes()) == blob.name, f"{blob} is not what its name says"
        (entry,) = self.index["manifests"]
        manifest = self.manifest
        for descriptor in [entry, manifest["config"], *manifest["layers"]]:
            data = self.blob(descriptor["digest"])
            assert len(data) == descriptor["size"], descriptor


# --- the filter: the layout, the registry, Envoy ----------------------------------

def test_filter_layout_is_the_two_layer_wasm_image_the_meshes_read():
    layout = Layout(FILTER_LAYOUT)
    layout.check_every_blob()
    wasm = FILTER_WASM.read_bytes()
    # The pinning files scripts/build.sh leaves next to the artifacts.
    assert (DIST / "warden-filter.wasm.sha256").read_text().strip() == sha256_hex(wasm)
    assert (DIST / "oci" / "warden-filter.digest").read_text().strip() == layout.manifest_digest
    manifest = layout.manifest
    assert manifest["mediaType"] == OCI_MANIFEST and manifest["schemaVersion"] == 2
    assert manifest["config"]["mediaType"] == WASM_CONFIG
    # Istio's and Envoy Gateway's extractOCIArtifactImage: exactly two layers,
    # the module found by its media type and used as it is.
    assert len(manifest["layers"]) == 2
    (wasm_layer,) = [layer for layer in manifest["layers"] if layer["mediaType"] == WASM_LAYER]
    assert wasm_layer["digest"] == f"sha256:{sha256_hex(wasm)}"
    assert layout.blob(wasm_layer["digest"]) == wasm
    # The other layer (and the config) is the spec's runtime config for Envoy.
    (config_layer,) = [layer for layer in manifest["layers"] if layer is not wasm_layer]
    assert config_layer["mediaType"] == WASM_CONFIG
    runtime_config = json.loads(layout.blob(config_layer["digest"]))
    assert runtime_config["type"] == "envoy_proxy"
    assert "proxy_abi_version_0_2_1" in runtime_config["abiVersions"]
    assert runtime_config["config"]["root_ids"] == ["warden"]


def test_images_are_deterministic(tmp_path):
    """The same inputs give the same manifest digests: what dist/ holds is
    what packing the same wasm and binary again gives, twice over."""
    (tmp_path / "dist").mkdir()
    wasm_copy = tmp_path / "dist" / "warden-filter.wasm"
    shutil.copyfile(FILTER_WASM, wasm_copy)
    digests = []
    for attempt in ("first", "second"):
        out = tmp_path / attempt
        subprocess.run([sys.executable, str(OCI_SCRIPT), "all", "--wasm", str(wasm_copy),
                        "--binary", str(WARDEN_BIN), "--out-dir", str(out)], check=True, capture_output=True)
        digests.append(((out / "warden-filter.digest").read_text(), (out / "warden-control-plane.digest").read_text()))
    assert digests[0] == digests[1]
    assert digests[0] == ((DIST / "oci" / "warden-filter.digest").read_text(),
                          (DIST / "oci" / "warden-control-plane.digest").read_text())


class Registry:
    """Debian's docker-registry (the CNCF distribution server) on a free
    loopback port, storing in a temporary directory."""

    def __init__(self, directory: Path):
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        config = directory / "registry.yaml"
        config.write_text(yaml.safe_dump({
            "version": 0.1,
            "log": {"level": "info"},
            "storage": {"filesystem": {"rootdirectory": str(directory / "storage")}},
            "http": {"addr": self.host},
        }))
        binary = shutil.which("docker-registry")
        if binary is None:
            pytest.fail("docker-registry is not installed (scripts/bootstrap.sh test installs it)")
        self.process = spawn("registry", [binary, "serve", str(config)], directory / "registry.log")
        # The distribution API's base endpoint answers 200 once it serves.
        wait_until("the registry", lambda: http("GET", f"http://{self.host}/v2/", timeout=2)[0] == 200,
                   timeout=30, alive=self.process.check_alive)
        self.client = oras.provider.Registry(hostname=self.host, insecure=True)

    def blob_url(self, repository: str, hex_digest: str) -> str:
        return f"http://{self.host}/v2/{repository}/blobs/sha256:{hex_digest}"


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    reg = Registry(tmp_path_factory.mktemp("registry"))
    try:
        yield reg
    finally:
        reg.process.stop()


@pytest.fixture(scope="module")
def pushed_filter(registry) -> str:
    """Pushes dist/oci/warden-filter with oras-py as it is on disk (its
    manifest's bytes unchanged); returns the repository."""
    layout = Layout(FILTER_LAYOUT)
    repository = "warden/filter"
    oras.layout.layout.NewLayout(str(FILTER_LAYOUT)).push_to_registry(
        registry.client, f"{registry.host}/{repository}:{layout.tag}", tag=layout.tag)
    return repository


def test_registry_keeps_the_digest_and_gives_the_filter_back_by_digest(registry, pushed_filter, tmp_path):
    layout = Layout(FILTER_LAYOUT)
    expected = (DIST / "oci" / "warden-filter.digest").read_text().strip()
    # What the registry says the tag is: the digest a WasmPlugin can pin.
    status, headers, _ = http("HEAD", f"http://{registry.host}/v2/{pushed_filter}/manifests/{layout.tag}",
                              headers={"accept": OCI_MANIFEST})
    assert status == 200
    assert headers["docker-content-digest"] == expected
    # Pulled back by that digest (not by tag): the same module, byte for byte.
    files = registry.client.pull(target=f"{registry.host}/{pushed_filter}@{expected}", outdir=str(tmp_path))
    pulled = {Path(f).name: Path(f).read_bytes() for f in files}
    assert pulled["warden-filter.wasm"] == FILTER_WASM.read_bytes()
    assert json.loads(pulled["runtime-config.json"])["type"] == "envoy_proxy"


def load_filter_from_registry(registry: Registry, repository: str, sha256: str):
    """An edit of the rendered Envoy configuration: the Warden filter's module
    comes from the registry's blob URL (a cluster to the registry is added by
    `extra_clusters`), checked against `sha256`. Everything else, the plugin's
    configuration included, stays as the harness renders it."""
    wasm_hex = sha256_hex(FILTER_WASM.read_bytes())

    def edit(cfg: dict) -> None:
        warden_plugin(cfg)["vm_config"]["code"] = {"remote": {
            "http_uri": {"uri": registry.blob_url(repository, wasm_hex), "cluster": REGISTRY_CLUSTER,
                         "timeout": "10s"},
            "sha256": sha256,
            "retry_policy": {"num_retries": 3, "retry_back_off": {"base_interval": "0.2s", "max_interval": "1s"}},
        }}
    return edit


def remote_load_stats(stack) -> dict[str, int]:
    """Envoy's counters of remote wasm code fetches (wasm.remote_load_*)."""
    _, _, body = http("GET", f"{stack.admin_url}/stats?filter=^wasm\\.remote_load_")
    pairs = (line.split(": ", 1) for line in body.decode().splitlines() if ": " in line)
    return {k.removeprefix("wasm."): int(v) for k, v in pairs}


def chat(stack, token: str | None) -> tuple[int, dict, bytes]:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    return http("POST", f"{stack.gateway_url}{CHAT}", headers=headers,
                body={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello from the registry"}]})


def test_envoy_runs_the_filter_from_the_registry_blob(registry, pushed_filter, make_stack):
    wasm_hex = sha256_hex(FILTER_WASM.read_bytes())
    stack = make_stack(extra_clusters={REGISTRY_CLUSTER: registry.port},
                       edit_envoy_config=load_filter_from_registry(registry, pushed_filter, wasm_hex))
    # The module came over HTTP from the registry, once, and passed the check.
    stats = remote_load_stats(stack)
    assert stats["remote_load_fetch_successes"] == 1 and stats["remote_load_fetch_failures"] == 0, stats
    config = yaml.safe_load((stack.data_dir / "envoy.yaml").read_text())
    assert "local" not in warden_plugin(config)["vm_config"]["code"]
    # It governs: no token, refused by the filter; a valid one, served.
    status, headers, _ = chat(stack, None)
    assert status == 401 and headers.get("x-warden-reason") == "warden.no_token", (status, headers)
    assert stack.provider_received() == []
    status, headers, body = chat(stack, stack.token("alice", ["engineering"]))
    assert status == 200, body
    assert headers.get("x-warden")
    assert json.loads(body)["choices"][0]["message"]["content"] == "hello from the registry"
    assert [r["path"] for r in stack.provider_received()] == ["/v1/chat/completions"]


def test_envoy_fails_closed_when_the_blob_is_not_the_pinned_sha256(registry, pushed_filter, make_stack):
    """What Envoy 1.40 does (seen, then asserted): it fetches, the sha256
    differs, it retries, gives up ("Plugin warden failed to load"), and still
    starts the listener; the plugin is fail-closed (failure_policy
    FAIL_RELOAD), so every request is answered 503 by Envoy itself and none
    goes upstream."""
    wrong = sha256_hex(b"not the filter")
    stack = make_stack(extra_clusters={REGISTRY_CLUSTER: registry.port},
                       edit_envoy_config=load_filter_from_registry(registry, pushed_filter, wrong))
    wait_until("Envoy to give up fetching the module", lambda: remote_load_stats(stack).get("remote_load_fetch_failures", 0) >= 1,
               timeout=30)
    assert remote_load_stats(stack)["remote_load_fetch_successes"] == 0
    status, headers, body = chat(stack, stack.token("alice", ["engineering"]))
    assert status == 503, (status, headers, body)
    assert "x-warden" not in headers  # Envoy answered: no filter ran
    assert stack.provider_received() == []
    assert "Plugin warden failed to load" in (stack.data_dir / "logs" / "envoy.log").read_text()


# --- the control plane's image ------------------------------------------------------

def control_plane_image() -> tuple[Layout, dict, bytes]:
    """The layout, its image config, and its one layer's (uncompressed) tar."""
    layout = Layout(CONTROL_PLANE_LAYOUT)
    manifest = layout.manifest
    config = json.loads(layout.blob(manifest["config"]["digest"]))
    (layer,) = manifest["layers"]
    assert layer["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"
    return layout, config, gzip.decompress(layout.blob(layer["digest"]))


def ldd_paths(binary: Path) -> set[str]:
    out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=True).stdout
    return {part for line in out.splitlines() for part in line.split() if part.startswith("/")}


def test_control_plane_image_is_what_it_says():
    layout, config, layer_tar = control_plane_image()
    layout.check_every_blob()
    assert (DIST / "oci" / "warden-control-plane.digest").read_text().strip() == layout.manifest_digest
    assert layout.manifest["config"]["mediaType"] == "application/vnd.oci.image.config.v1+json"
    assert config["os"] == "linux" and config["rootfs"]["diff_ids"] == [f"sha256:{sha256_hex(layer_tar)}"]
    run = config["config"]
    uid, gid = (int(n) for n in run["User"].split(":"))
    assert uid != 0 and gid != 0  # numeric, so Kubernetes' runAsNonRoot can check it
    assert run["Entrypoint"][1:] == ["serve"]
    env = dict(e.split("=", 1) for e in run["Env"])
    assert run["Volumes"] == {env["WARDEN_DATA_DIR"]: {}}
    assert list(run["ExposedPorts"]) == [f"{env['WARDEN_LISTEN'].rsplit(':', 1)[1]}/tcp"]

    with tarfile.open(fileobj=io.BytesIO(layer_tar)) as tar:
        members = tar.getmembers()
        names = [m.name for m in members]
        assert names == sorted(names)
        assert all(m.mtime == 0 for m in members)
        by_path = {"/" + m.name.rstrip("/"): m for m in members}
        # Root owns everything but the data directory (writable without a volume).
        assert {p for p, m in by_path.items() if (m.uid, m.gid) != (0, 0)} == {env["WARDEN_DATA_DIR"]}
        assert (by_path[env["WARDEN_DATA_DIR"]].uid, by_path[env["WARDEN_DATA_DIR"]].gid) == (uid, gid)
        binary = by_path[run["Entrypoint"][0]]
        assert binary.isfile() and binary.mode & stat.S_IXOTH
        assert tar.extractfile(binary).read() == WARDEN_BIN.read_bytes()
        # Exactly the binary's shared libraries and its loader, and nothing else.
        libraries = {p for p, m in by_path.items() if m.isfile() and ".so" in p}
        assert libraries == ldd_paths(WARDEN_BIN)
        passwd = tar.extractfile(by_path["/etc/passwd"]).read().decode()
        group = tar.extractfile(by_path["/etc/group"]).read().decode()
        assert any(line.split(":")[2:4] == [str(uid), str(gid)] for line in passwd.splitlines())
        assert any(line.split(":")[2] == str(gid) for line in group.splitlines())


def chrooted() -> bool:
    """Whether this process's root is not init's (a chroot)."""
    try:
        return os.stat("/").st_ino != os.stat("/proc/1/root/.").st_ino or \
            os.stat("/").st_dev != os.stat("/proc/1/root/.").st_dev
    except OSError:
        return False


class Container:
    """The control plane's image run by an OCI runtime from a bundle: the
    layer unpacked as the rootfs, and the runtime's own `spec` made to run the
    image's entrypoint, user, env and working directory, on the host's
    network (so 127.0.0.1 is ours), with a read-only root and the data
    directory bind-mounted."""

    def __init__(self, runtime: str, directory: Path, port: int):
        self.runtime = shutil.which(runtime)
        self.name = f"warden-test-{uuid.uuid4().hex[:12]}"
        self.state_dir = directory / "runtime-state"  # not the machine's /run/<runtime>
        self.bundle = directory / "bundle"
        self.data_dir = directory / "data"
        self.port = port
        self.process: Process | None = None
        _, config, layer_tar = control_plane_image()
        run = config["config"]
        uid, gid = (int(n) for n in run["User"].split(":"))
        rootfs = self.bundle / "rootfs"
        rootfs.mkdir(parents=True)
        with tarfile.open(fileobj=io.BytesIO(layer_tar)) as tar:
            # Our own layer, but checked as any: relative paths, no way out, no
            # links (this Python predates extractall's `filter`).
            for member in tar.getmembers():
                assert not member.name.startswith("/") and ".." not in member.name.split("/"), member.name
                assert member.isfile() or member.isdir(), member.name
            tar.extractall(rootfs)
        self.data_dir.mkdir()
        os.chown(self.data_dir, uid, gid)
        made = subprocess.run([self.runtime, "spec"], cwd=self.bundle, capture_output=True, text=True)
        if made.returncode != 0:
            raise StackError(f"`{runtime} spec` failed: {made.stderr.strip() or made.stdout.strip()}")
        spec = json.loads((self.bundle / "config.json").read_text())
        env = dict(e.split("=", 1) for e in run["Env"])
        # A free loopback port instead of the image's 0.0.0.0:8080: the host's
        # network is shared, and a deployment sets this variable the same way.
        env["WARDEN_LISTEN"] = f"127.0.0.1:{port}"
        spec["process"].update({
            "terminal": False, "args": run["Entrypoint"] + run.get("Cmd", []),
            "env": [f"{k}={v}" for k, v in env.items()], "cwd": run["WorkingDir"],
            "user": {"uid": uid, "gid": gid},
        })
        spec["root"]["readonly"] = True
        spec["linux"]["namespaces"] = [ns for ns in spec["linux"]["namespaces"] if ns["type"] != "network"]
        (volume,) = run["Volumes"]
        spec["mounts"].append({"destination": volume, "type": "bind", "source": str(self.data_dir),
                               "options": ["rbind", "rw"]})
        (self.bundle / "config.json").write_text(json.dumps(spec, indent=1))

    def start(self) -> None:
        """Runs the container in the foreground of a process of ours, and polls
        /healthz until 200 (raises if the runtime exits first)."""
        # Inside a chroot (`make fresh-check` runs the tests in one) the root is
        # not a mount point, so pivot_root(2) cannot move it: the runtimes'
        # `--no-pivot` switches roots with chroot(2) there instead.
        no_pivot = ["--no-pivot"] if chrooted() else []
        self.process = spawn(f"{Path(self.runtime).name} {self.name}",
                             [self.runtime, "--root", str(self.state_dir), "run", *no_pivot, "--bundle",
                              str(self.bundle), self.name],
                             self.bundle.parent / f"{Path(self.runtime).name}.log")
        wait_until(f"the control plane in {self.runtime}", lambda: self.health()[0] == 200,
                   timeout=60, alive=self.process.check_alive)

    def health(self) -> tuple[int, dict, bytes]:
        return http("GET", f"http://127.0.0.1:{self.port}/healthz", timeout=2)

    def pid(self) -> int:
        state = subprocess.run([self.runtime, "--root", str(self.state_dir), "state", self.name],
                               capture_output=True, text=True, check=True).stdout
        return json.loads(state)["pid"]

    def remove(self) -> None:
        subprocess.run([self.runtime, "--root", str(self.state_dir), "delete", "--force", self.name],
                       capture_output=True, timeout=30)
        if self.process is not None:
            self.process.stop()


def test_control_plane_image_serves_under_an_oci_runtime(tmp_path):
    """crun first, then runc (Debian's). crun 1.8 refuses hosts whose cgroups
    are in "hybrid" mode (v1 controllers plus a cgroup2 mount with a controller
    in it), as some CI sandboxes are; the test then says so and uses runc.
    If neither runs the image, it fails with what each said."""
    if os.geteuid() != 0:
        pytest.fail("running the image needs root (the runtimes here are not rootless); run `make test` as root")
    refusals = []
    for runtime in ("crun", "runc"):
        if shutil.which(runtime) is None:
            refusals.append(f"{runtime}: not installed")
            continue
        try:
            container = Container(runtime, tmp_path / runtime, free_port())
        except StackError as err:
            refusals.append(f"{runtime}: {err}")
            continue
        try:
            container.start()
        except StackError as err:
            refusals.append(f"{runtime}: {err}")
            container.remove()
            continue
        try:
            status, _, body = container.health()
            assert status == 200 and json.loads(body)["status"] == "ok", body
            pid = container.pid()
            # The image's user, not root.
            uid_line = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                            if line.startswith("Uid:"))
            assert uid_line.split()[1:] == ["65532"] * 4, uid_line
            # A read-only root, and the database written to the bind-mounted volume.
            root_mount = next(line.split() for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines()
                              if line.split()[4] == "/")
            assert "ro" in root_mount[5].split(","), root_mount
            assert (container.data_dir / "warden.db").exists()
        finally:
            container.remove()
        if refusals:
            warnings.warn(f"the image ran under {runtime}; before it: " + " | ".join(refusals))
        return
    pytest.fail("no OCI runtime ran the control plane's image:\n" + "\n".join(refusals))
