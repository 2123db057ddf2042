#!/usr/bin/env python3
"""Renders examples/{istio,envoy-gateway,kubernetes} with a real filter artifact.

The committed manifests pin the filter with a placeholder digest, 64 zeros
(PLACEHOLDER below), and name the artifact `ghcr.io/OWNER/warden-filter:0.1.0`.
The real digest changes with every build, so it is not committed (a stale one
would fail every pull; a placeholder fails loudly, and only where it stands).

What `sha256` means in these manifests: for an `oci://` reference, both Istio
(pkg/wasm/imagefetcher.go compares the image's manifest digest) and Envoy
Gateway (image.sha256: "must match the digest of the OCI image") check the
OCI *manifest* digest, not the .wasm file's hash that the build writes to
dist/warden-filter.wasm.sha256. So this takes the manifest digest: --oci-digest
HEX (as `crane digest`/`oras push` print it), or --oci-layout DIR (an OCI image
layout, its index.json's first manifest). --wasm-sha256 only checks that
dist/warden-filter.wasm.sha256 names the file you are about to push.

    scripts/render-examples.py --image registry.example.com/warden-filter:0.4.2 \
        --oci-digest 3f5c... [--out target/examples]

writes a copy under --out (default target/examples) and changes nothing else.

The control plane's image (`warden-control-plane:latest` in the committed
manifests) is pinned the same way when --control-plane-image names where it
was pushed: `registry/name@sha256:<digest>`, the digest from
--control-plane-layout DIR (dist/oci/warden-control-plane) or
--control-plane-digest HEX.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DIRS = ["istio", "envoy-gateway", "kubernetes"]
PLACEHOLDER = "0" * 64
IMAGE = "ghcr.io/OWNER/warden-filter:0.1.0"
CONTROL_PLANE_IMAGE = "image: warden-control-plane:latest"


def manifest_digest(layout: str | None, given: str | None) -> str:
    if layout:
        index = json.loads((Path(layout) / "index.json").read_text())
        digest = index["manifests"][0]["digest"]
    else:
        digest = given or ""
    digest = digest.removeprefix("sha256:")
    if not re.fullmatch(r"[0-9a-f]{64}", digest) or digest == PLACEHOLDER:
        sys.exit(f"render-examples: not a sha256 digest (64 lowercase hex): {digest!r}")
    return digest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--oci-digest", help="the pushed artifact's manifest digest (hex, or sha256:hex)")
    source.add_argument("--oci-layout", help="an OCI image layout directory of the artifact")
    parser.add_argument("--image", default=IMAGE, help="registry/name:tag of the pushed artifact")
    parser.add_argument("--wasm-sha256", action="store_true",
                        help="check that dist/warden-filter.wasm.sha256 matches dist/warden-filter.wasm")
    parser.add_argument("--out", default=str(ROOT / "target" / "examples"))
    parser.add_argument("--control-plane-image", help="registry/name the control plane's image was pushed to")
    control_plane = parser.add_mutually_exclusive_group()
    control_plane.add_argument("--control-plane-layout", help="its OCI image layout (dist/oci/warden-control-plane)")
    control_plane.add_argument("--control-plane-digest", help="its manifest digest (hex, or sha256:hex)")
    args = parser.parse_args()
    digest = manifest_digest(args.oci_layout, args.oci_digest)
    pinned_control_plane = None
    if args.control_plane_image:
        if not (args.control_plane_layout or args.control_plane_digest):
            sys.exit("render-examples: --control-plane-image needs --control-plane-layout or --control-plane-digest")
        if not re.fullmatch(r"[A-Za-z0-9._/:-]+", args.control_plane_image) or "@" in args.control_plane_image:
            sys.exit(f"render-examples: --control-plane-image is registry/name ({args.control_plane_image!r})")
        name = args.control_plane_image
        if ":" in name.rsplit("/", 1)[-1]:  # a tag (not a registry's port): the digest replaces it
            name = name[:name.rfind(":")]
        pinned_control_plane = "image: {}@sha256:{}".format(
            name, manifest_digest(args.control_plane_layout, args.control_plane_digest))
    if args.wasm_sha256:
        wasm = ROOT / "dist" / "warden-filter.wasm"
        recorded = (ROOT / "dist" / "warden-filter.wasm.sha256").read_text().split()[0]
        if hashlib.sha256(wasm.read_bytes()).hexdigest() != recorded:
            sys.exit("render-examples: dist/warden-filter.wasm.sha256 does not match dist/warden-filter.wasm")
    if not re.fullmatch(r"[A-Za-z0-9._/:-]+", args.image) or args.image.startswith("oci://"):
        sys.exit(f"render-examples: --image is registry/name:tag, without oci:// ({args.image!r})")
    out = Path(args.out)
    replaced = 0
    for name in DIRS:
        for src in sorted((ROOT / "examples" / name).rglob("*.yaml")):
            text = src.read_text()
            replaced += text.count(PLACEHOLDER)
            dst = out / src.relative_to(ROOT / "examples")
            dst.parent.mkdir(parents=True, exist_ok=True)
            text = text.replace(PLACEHOLDER, digest).replace(IMAGE, args.image)
            if pinned_control_plane:
                text = text.replace(CONTROL_PLANE_IMAGE, pinned_control_plane)
            dst.write_text(text)
    if replaced == 0:
        sys.exit("render-examples: no placeholder digest found in examples/ (nothing rendered)")
    print(f"rendered {out} ({replaced} digests pinned to {digest[:12]}..., image {args.image})")


if __name__ == "__main__":
    main()
