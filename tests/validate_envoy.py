"""Runs `envoy --mode validate` on every Envoy configuration in the repository.

Each file under envoy/ is validated as written (from the repository root, as
`make run` uses it) and as the harness renders it for tests and for real
providers, so no variant Envoy may actually load goes unchecked. The files
under envoy/access-log/ are access-log fragments (the audit record in OCSF and
ECS shapes): each is validated in place of envoy.yaml's own access log, as
written and as the harness renders it (`Stack.start(access_log=...)`).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness.stack import (ENVOY_BIN, ENVOY_TEMPLATE, REAL_PROVIDERS, ROOT, Ports,  # noqa: E402
                           render_envoy_config)

ACCESS_LOGS = ROOT / "envoy" / "access-log"


# Validation loads the filter, which refuses a configuration whose control
# plane secret is missing from Envoy's environment: give it one, for this
# check only (it is never sent anywhere).
VALIDATION_ENV = {**os.environ, "WARDEN_GATEWAY_SECRET": "validation-only-not-a-secret"}


def validate(path: Path, label: str) -> bool:
    out = subprocess.run([str(ENVOY_BIN), "--mode", "validate", "-c", str(path),
                          "--disable-hot-restart", "--log-level", "warn"],
                         capture_output=True, text=True, cwd=ROOT, timeout=120, env=VALIDATION_ENV)
    ok = out.returncode == 0
    print(f"    {'ok  ' if ok else 'FAIL'} {label}")
    if not ok:
        print(out.stdout[-3000:], out.stderr[-3000:], sep="\n")
    return ok


def main() -> int:
    (ROOT / ".warden" / "logs").mkdir(parents=True, exist_ok=True)
    files = sorted((ROOT / "envoy").rglob("*.yaml"))
    if not files:
        print("no Envoy configurations found", file=sys.stderr)
        return 1
    fragments = [f for f in files if f.parent == ACCESS_LOGS]
    files = [f for f in files if f.parent != ACCESS_LOGS]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp_dir = Path(tmp)
        (tmp_dir / "logs").mkdir()
        for frag in fragments:
            label = str(frag.relative_to(ROOT))
            # As written: envoy.yaml with this access log, paths relative to the root.
            merged = yaml.safe_load(ENVOY_TEMPLATE.read_text())
            hcm = merged["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
            hcm.update(yaml.safe_load(frag.read_text()))
            written = tmp_dir / f"{frag.stem}-as-written.yaml"
            written.write_text(yaml.safe_dump(merged))
            results.append(validate(written, f"{label} (in envoy/envoy.yaml)"))
            rendered = tmp_dir / f"{frag.stem}-rendered.yaml"
            rendered.write_text(yaml.safe_dump(render_envoy_config(Ports.free(), tmp_dir, access_log=frag.stem)))
            results.append(validate(rendered, f"{label} (rendered for tests)"))
        for f in files:
            results.append(validate(f, str(f.relative_to(ROOT))))
            if f.name == "envoy.yaml":
                variants = {"rendered for tests": set(), "rendered for real providers": set(REAL_PROVIDERS)}
                for label, real in variants.items():
                    rendered = tmp_dir / f"{label.replace(' ', '-')}.yaml"
                    rendered.write_text(yaml.safe_dump(
                        render_envoy_config(Ports.free(), tmp_dir, real_clusters=real, template=f)))
                    results.append(validate(rendered, f"{f.relative_to(ROOT)} ({label})"))
    passed = sum(results)
    print(f"{passed} passed, {len(results) - passed} failed")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
