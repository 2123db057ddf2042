"""Debian's Chromium, headless, driven by Playwright (the PyPI package, which
brings its own driver; Playwright never downloads a browser here).

A missing Chromium is a failure, not a skip: scripts/bootstrap.sh installs it.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

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


@contextmanager
def watched_context(playwright, user_data_dir: Path, *, timeout_ms: int, expected_statuses: tuple[int, ...],
                    request, logs: Callable[[], str]) -> Iterator:
    """A fresh context (see `launch`) that fails the test on any uncaught page error or
    console error (CSP violations and failed loads show up there), except the API
    refusals in `expected_statuses` that the page expects and shows; `logs()` is
    printed when the test itself failed (pytest's `request`, with conftest's rep_call)."""
    context = launch(playwright, user_data_dir)
    context.set_default_timeout(timeout_ms)
    errors: list[str] = []
    allowed = re.compile(r"status of (%s)" % "|".join(str(s) for s in expected_statuses))
    context.on("weberror", lambda e: errors.append(str(e.error)))
    context.on("console", lambda m: m.type == "error" and not allowed.search(m.text) and errors.append(m.text))
    try:
        yield context
    finally:
        context.close()
        rep = getattr(request.node, "rep_call", None)
        if rep is not None and rep.failed:
            sys.stderr.write("\n" + logs() + "\n")
    assert not errors, f"uncaught errors in the page: {errors}"
