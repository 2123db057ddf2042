"""Debian's Chromium, headless, driven by Playwright (the PyPI package, which
brings its own driver; Playwright never downloads a browser here).

A missing Chromium is a failure, not a skip: scripts/bootstrap.sh installs it.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import urllib.parse
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from playwright.sync_api import expect

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
def loopback_only_context(playwright, user_data_dir: Path, *, timeout_ms: int) -> Iterator:
    """A fresh context (see `launch`) that reaches 127.0.0.1 only: anything else
    (an IdP page's web fonts, say) is aborted, never fetched."""
    context = launch(playwright, user_data_dir)
    context.set_default_timeout(timeout_ms)
    context.route("**/*", lambda route: route.continue_() if route.request.url.startswith("http://127.0.0.1")
                  else route.abort())
    try:
        yield context
    finally:
        context.close()


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


def sign_in_on_dev_form(context, base_url: str, view: str, sub: str, groups: list[str], *,
                        issuer: str | None = None, email: str | None = None, fragment: str = ""):
    """Opens the web page's `view` (`approvals`, `sessions`, `keys`) at `base_url` and signs in
    on the dev issuer's form (at `issuer`, default `<base_url>/dev`), as a person would: the IdP
    returns to /approvals, the one redirect URI, and the page moves back to the view. Returns
    the page, back on the view, and the query of the authorization request the page made."""
    view_url = f"{base_url}/{view}{fragment}"
    page = context.new_page()
    page.goto(view_url)
    expect(page.locator(f"#signed-out-{view}")).to_be_visible()
    page.click("#sign-in")
    page.wait_for_url(re.compile(re.escape(f"{issuer or base_url + '/dev'}/authorize?")))
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(page.url).query)
    assert query["redirect_uri"] == [f"{base_url}/approvals"]
    page.fill("#sub", sub)
    if email:
        page.fill("#email", email)
    page.fill("#groups", ", ".join(groups))
    page.click("#sign-in-submit")
    expect(page.locator("#who-name")).to_contain_text(sub)
    page.wait_for_url(view_url)
    return page, query

