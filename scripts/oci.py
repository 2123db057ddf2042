#!/usr/bin/env python3
"""Packs Warden as OCI images without a container engine (standard library only).

    scripts/oci.py filter         dist/warden-filter.wasm -> dist/oci/warden-filter/
    scripts/oci.py control-plane  target/<profile>/warden -> dist/oci/warden-control-plane/
    scripts/oci.py all            both (what scripts/build.sh runs)

Each output is an OCI image layout (https://github.com/opencontainers/image-spec,
image-layout.md): `oci-layout`, `index.json` and `blobs/sha256/<hex>`, which
`oras`, `skopeo copy oci:...`, `crane push` or `umoci` read as they are. Both are
deterministic: the same inputs give byte-identical blobs and the same manifest
digest (no timestamps, sorted JSON keys, tar entries sorted, mtime 0, owned by 0:0).

The filter: the "Wasm Image Specification" *oci* variant
(https://github.com/solo-io/wasm/blob/master/spec/spec.md), the one whose wasm
layer is the raw module. What the meshes accept, read in their source:
  - Istio, pkg/wasm/imagefetcher.go (WasmPlugin `url: oci://...`): PrepareFetch
    tries, in order, a Docker image (last layer tar+gzip with plugin.wasm), the
    *compat* variant (last layer application/vnd.oci.image.layer.v1.tar+gzip with
    plugin.wasm), then extractOCIArtifactImage: EXACTLY TWO layers ("number of
    layers must be 2 but got %d"), one of media type
    application/vnd.module.wasm.content.layer.v1+wasm whose blob is returned as
    the module, unpacked. Its test (pkg/wasm/imagefetcher_test.go, "OCI artifact")
    builds that pair: the wasm layer and an application/vnd.module.wasm.config.v1+json
    layer.
  - Envoy Gateway, internal/wasm/imagefetcher.go (EnvoyExtensionPolicy
    `code.type: Image`): the same three formats, the same two-layer rule
    (extractOCIArtifactImageWithLimit), plus a 256 MiB cap
    (maxWasmSize, internal/wasm/httpfetcher.go).
So a single raw-wasm layer is refused by both; this artifact has the two layers
they look for: the runtime config (JSON) and the module itself. The module's
layer blob IS dist/warden-filter.wasm, so its registry blob URL
(/v2/<repo>/blobs/sha256:<hex of the wasm>) is also a plain Envoy
`vm_config.code.remote` source, verified by the same sha256 (tests/e2e/test_oci.py).

The control plane: a FROM-scratch image of one gzip'd tar layer holding the
`warden` binary, exactly the shared libraries `ldd` says it loads (and the
loader), /etc/passwd and /etc/group naming a non-root user, and the data
directory; entrypoint `warden serve`.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DIST_OCI = ROOT / "dist" / "oci"

# OCI media types (image-spec v1.1).
OCI_LAYOUT_VERSION = "1.0.0"
INDEX_MEDIA_TYPE = "application/vnd.oci.image.index.v1+json"
MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
IMAGE_CONFIG_MEDIA_TYPE = "application/vnd.oci.image.config.v1+json"
TAR_GZIP_LAYER_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
# The Wasm Image Specification's *oci* variant (the names Istio and Envoy Gateway match).
WASM_CONFIG_MEDIA_TYPE = "application/vnd.module.wasm.config.v1+json"
WASM_LAYER_MEDIA_TYPE = "application/vnd.module.wasm.content.layer.v1+wasm"

TITLE = "org.opencontainers.image.title"
REF_NAME = "org.opencontainers.image.ref.name"

# The root context the filter registers (envoy/envoy.yaml's `root_id`), for the
# runtime config's `root_ids`, as the spec asks of an Envoy filter image.
FILTER_ROOT_ID = "warden"

# The control plane's user inside its image: a fixed number, so that Kubernetes'
# `runAsNonRoot` can verify it (a user given by name cannot be checked), and
# the name distroless images use for the same purpose.
CONTROL_PLANE_UID = 65532
CONTROL_PLANE_USER = "warden"
CONTROL_PLANE_BIN = "/usr/local/bin/warden"
CONTROL_PLANE_DATA_DIR = "/var/lib/warden"
CONTROL_PLANE_PORT = 8080


def canonical_json(value: object) -> bytes:
    """JSON with sorted keys and no spaces: the same value is always the same bytes."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def project_version() -> str:
    """The workspace's version (Cargo.toml), as the image's tag in index.json."""
    return tomllib.loads((ROOT / "Cargo.toml").read_text())["workspace"]["package"]["version"]


class ImageLayout:
    """An OCI image layout being written in a scratch directory; `commit()`
    replaces the destination with it in one rename, so a reader never sees a
    half-written layout and blobs of an older build never linger."""

    def __init__(self, destination: Path):
        self.destination = destination
        self.scratch = destination.with_name(f".{destination.name}.tmp")
        shutil.rmtree(self.scratch, ignore_errors=True)
        (self.scratch / "blobs" / "sha256").mkdir(parents=True)

    def add_blob(self, media_type: str, data: bytes, annotations: dict | None = None) -> dict:
        """Stores a blob; returns its descriptor."""
        digest = sha256_hex(data)
        (self.scratch / "blobs" / "sha256" / digest).write_bytes(data)
        descriptor = {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}
        if annotations:
            descriptor["annotations"] = annotations
        return descriptor

    def commit(self, manifest: dict, tag: str, platform_: dict | None = None) -> str:
        """Stores the manifest, names it `tag` in index.json, and puts the layout
        in place. Returns the manifest's digest (`sha256:<hex>`)."""
        descriptor = self.add_blob(MANIFEST_MEDIA_TYPE, canonical_json(manifest), {REF_NAME: tag})
        if platform_:
            descriptor["platform"] = platform_
        index = {"schemaVersion": 2, "mediaType": INDEX_MEDIA_TYPE, "manifests": [descriptor]}
        (self.scratch / "index.json").write_bytes(canonical_json(index))
        (self.scratch / "oci-layout").write_bytes(canonical_json({"imageLayoutVersion": OCI_LAYOUT_VERSION}))
        shutil.rmtree(self.destination, ignore_errors=True)
        self.destination.parent.mkdir(parents=True, exist_ok=True)
        os.rename(self.scratch, self.destination)
        return descriptor["digest"]


def write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.rename(tmp, path)


# --- the filter -------------------------------------------------------------------

def proxy_wasm_abi_versions(wasm: bytes) -> list[str]:
    """The proxy-wasm ABI versions the module declares: the SDK exports an empty
    function named after each (e.g. `proxy_abi_version_0_2_1`), which is how
    Envoy itself tells them apart."""
    return sorted({m.decode() for m in re.findall(rb"proxy_abi_version_[0-9]+_[0-9]+_[0-9]+", wasm)})


def pack_filter(wasm_path: Path, out: Path) -> str:
    wasm = wasm_path.read_bytes()
    if not wasm.startswith(b"\0asm"):
        raise SystemExit(f"{wasm_path} is not a WebAssembly module")
    abi_versions = proxy_wasm_abi_versions(wasm)
    if not abi_versions:
        raise SystemExit(f"{wasm_path} declares no proxy-wasm ABI version (proxy_abi_version_*)")
    layout = ImageLayout(out)
    # The runtime config of the spec (Envoy filter: type, ABI versions, root ids).
    # It is both the manifest's config and the first of the two layers the
    # meshes' fetchers require; one blob, stored once.
    runtime_config = canonical_json({"type": "envoy_proxy", "abiVersions": abi_versions,
                                     "config": {"root_ids": [FILTER_ROOT_ID]}})
    config = layout.add_blob(WASM_CONFIG_MEDIA_TYPE, runtime_config)
    config_layer = layout.add_blob(WASM_CONFIG_MEDIA_TYPE, runtime_config, {TITLE: "runtime-config.json"})
    # The module itself, unchanged: the blob's digest is the wasm's sha256.
    wasm_layer = layout.add_blob(WASM_LAYER_MEDIA_TYPE, wasm, {TITLE: "warden-filter.wasm"})
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": config,
        "layers": [config_layer, wasm_layer],
        "annotations": {TITLE: "warden-filter", "org.opencontainers.image.version": project_version(),
                        "org.opencontainers.image.description":
                            "Warden's proxy-wasm filter for Envoy (Wasm Image Specification, oci variant)"},
    }
    digest = layout.commit(manifest, project_version())
    write_atomically(wasm_path.with_name(wasm_path.name + ".sha256"), sha256_hex(wasm) + "\n")
    write_atomically(out.with_name(out.name + ".digest"), digest + "\n")
    return digest


# --- the control plane ------------------------------------------------------------

def shared_libraries(binary: Path) -> list[str]:
    """The absolute paths `ldd` resolves for the binary: its libraries and the
    loader, without the vDSO (the kernel maps it; no file). A statically linked
    binary has none."""
    done = subprocess.run(["ldd", str(binary)], capture_output=True, text=True)
    if done.returncode != 0:
        if "not a dynamic executable" in done.stdout + done.stderr:
            return []
        raise SystemExit(f"ldd {binary} failed: {done.stderr.strip()}")
    paths = []
    for line in done.stdout.splitlines():
        if "not found" in line:
            raise SystemExit(f"ldd {binary}: a library is missing: {line.strip()}")
        # "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
        match = re.search(r"(?:=>\s*)?(/\S+)\s+\(0x[0-9a-f]+\)", line)
        if match:
            paths.append(match.group(1))
    return sorted(set(paths))


class DeterministicTar:
    """A tar built from an explicit list of entries, written sorted by path,
    every entry with mtime 0 and owner 0:0 unless told otherwise."""

    def __init__(self) -> None:
        self.entries: dict[str, tuple[tarfile.TarInfo, bytes | None]] = {}

    def _info(self, path: str, kind: bytes, mode: int, uid: int = 0, gid: int = 0) -> tarfile.TarInfo:
        info = tarfile.TarInfo(path.lstrip("/"))
        info.type, info.mode, info.mtime = kind, mode, 0
        info.uid, info.gid, info.uname, info.gname = uid, gid, "", ""
        return info

    def directory(self, path: str, mode: int = 0o755, uid: int = 0, gid: int = 0) -> None:
        self.entries[path.strip("/") + "/"] = (self._info(path.strip("/") + "/", tarfile.DIRTYPE, mode, uid, gid), None)

    def file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        # Every parent directory gets an entry of its own (root-owned, 0755).
        parts = path.strip("/").split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i]) + "/"
            if parent not in self.entries:
                self.directory(parent)
        info = self._info(path, tarfile.REGTYPE, mode)
        info.size = len(data)
        self.entries[path.strip("/")] = (info, data)

    def bytes(self) -> bytes:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for name in sorted(self.entries):
                info, data = self.entries[name]
                tar.addfile(info, io.BytesIO(data) if data is not None else None)
        return buf.getvalue()


def oci_architecture() -> str:
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def pack_control_plane(binary: Path, out: Path) -> str:
    if not os.access(binary, os.X_OK):
        raise SystemExit(f"{binary} is missing or not executable; run scripts/build.sh")
    rootfs = DeterministicTar()
    rootfs.file(CONTROL_PLANE_BIN, binary.read_bytes(), 0o755)
    # Each library at the path ldd printed (the path the loader searches), with
    # the content of the file it resolves to (Debian's merged /usr makes /lib a
    # link; the image has plain directories).
    for library in shared_libraries(binary):
        rootfs.file(library, Path(library).resolve().read_bytes(), 0o755)
    user, uid = CONTROL_PLANE_USER, CONTROL_PLANE_UID
    rootfs.file("/etc/passwd", f"root:x:0:0:root:/root:/sbin/nologin\n"
                               f"{user}:x:{uid}:{uid}:Warden control plane:{CONTROL_PLANE_DATA_DIR}:/sbin/nologin\n".encode())
    rootfs.file("/etc/group", f"root:x:0:\n{user}:x:{uid}:\n".encode())
    # The data directory (SQLite database, the dev issuer's keys) is the one
    # entry the user owns: without a volume mounted there, the server can still
    # create its files. Everything else is root's and read-only to it.
    rootfs.directory("/var/")
    rootfs.directory("/var/lib/")
    rootfs.directory(CONTROL_PLANE_DATA_DIR, 0o750, uid, uid)
    # A writable /tmp, for anything that wants one.
    rootfs.directory("/tmp/", 0o1777)
    layer_tar = rootfs.bytes()
    compressed = io.BytesIO()
    # mtime=0 and no file name in the gzip header: the same tar is the same gzip.
    with gzip.GzipFile(filename="", mode="wb", fileobj=compressed, mtime=0, compresslevel=6) as gz:
        gz.write(layer_tar)

    layout = ImageLayout(out)
    layer = layout.add_blob(TAR_GZIP_LAYER_MEDIA_TYPE, compressed.getvalue())
    image_config = {
        "architecture": oci_architecture(),
        "os": "linux",
        "config": {
            "User": f"{uid}:{uid}",
            "Entrypoint": [CONTROL_PLANE_BIN, "serve"],
            "Env": [
                "PATH=/usr/local/bin",
                # Reachable from outside the container (the binary's default is loopback).
                f"WARDEN_LISTEN=0.0.0.0:{CONTROL_PLANE_PORT}",
                f"WARDEN_DATA_DIR={CONTROL_PLANE_DATA_DIR}",
            ],
            "ExposedPorts": {f"{CONTROL_PLANE_PORT}/tcp": {}},
            "Volumes": {CONTROL_PLANE_DATA_DIR: {}},
            "WorkingDir": CONTROL_PLANE_DATA_DIR,
            "Labels": {"org.opencontainers.image.title": "warden-control-plane",
                       "org.opencontainers.image.version": project_version()},
        },
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{sha256_hex(layer_tar)}"]},
        "history": [{"created_by": "scripts/oci.py control-plane"}],
    }
    config = layout.add_blob(IMAGE_CONFIG_MEDIA_TYPE, canonical_json(image_config))
    manifest = {"schemaVersion": 2, "mediaType": MANIFEST_MEDIA_TYPE, "config": config, "layers": [layer],
                "annotations": {TITLE: "warden-control-plane", "org.opencontainers.image.version": project_version()}}
    digest = layout.commit(manifest, project_version(), {"architecture": oci_architecture(), "os": "linux"})
    write_atomically(out.with_name(out.name + ".digest"), digest + "\n")
    return digest


def main() -> int:
    native_profile = os.environ.get("WARDEN_NATIVE_PROFILE", "local")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["filter", "control-plane", "all"])
    parser.add_argument("--wasm", type=Path, default=ROOT / "dist" / "warden-filter.wasm")
    parser.add_argument("--binary", type=Path, default=ROOT / "target" / native_profile / "warden")
    parser.add_argument("--out-dir", type=Path, default=DIST_OCI, help="where the layouts go (default dist/oci)")
    args = parser.parse_args()
    if args.what in ("filter", "all"):
        digest = pack_filter(args.wasm, args.out_dir / "warden-filter")
        print(f"{args.out_dir / 'warden-filter'} {digest}")
    if args.what in ("control-plane", "all"):
        digest = pack_control_plane(args.binary, args.out_dir / "warden-control-plane")
        print(f"{args.out_dir / 'warden-control-plane'} {digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
