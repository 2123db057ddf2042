"""Debian's Chromium, headless, driven by Playwright (the PyPI package, which
brings its own driver; Playwright never downloads a browser here).

A missing Chromium is a failure, not a skip: scripts/bootstrap.sh installs it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

# Flags that work on a closed network as root: without the background-networking
# ones Chromium keeps trying to reach Google's services.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path() -> str:
    """The Chromium binary: $WARDEN_CHROMIUM, else Debian's /usr/bin/chromium."""
    candidate = os.environ.get("WARDEN_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(candidate).exists():
        raise RuntimeError(
            f"Chromium not found at {candidate}: run scripts/bootstrap.sh "
            "(Debian packages chromium and chromium-driver)"
        )
    return candidate


def launch(playwright, user_data_dir: Path):
    """A fresh persistent context in `user_data_dir` (a new, empty profile)."""
    return playwright.chromium.launch_persistent_context(
        str(user_data_dir),
        executable_path=chromium_path(),
        headless=True,
        args=CHROMIUM_FLAGS,
    )
