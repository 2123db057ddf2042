"""Fixtures for the end-to-end tests: a real stack per session (or per test when
a test needs its own configuration), on free ports, with every process's log
dumped when a test fails."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.stack import Ports, Stack, fresh_database  # noqa: E402


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


def _dump_on_failure(request, stack: Stack) -> None:
    for when in ("setup", "call"):
        rep = getattr(request.node, f"rep_{when}", None)
        if rep is not None and rep.failed:
            sys.stderr.write(f"\n===== logs of the stack for {request.node.nodeid} =====\n")
            sys.stderr.write(stack.dump_logs() + "\n")
            return


@pytest.fixture(scope="session")
def shared_stack(tmp_path_factory):
    stack = Stack.start(Ports.free(), tmp_path_factory.mktemp("stack"))
    try:
        yield stack
    finally:
        stack.stop()


@pytest.fixture
def stack(shared_stack, request):
    """The session's stack, with the provider's record cleared before each test."""
    shared_stack.provider_clear()
    yield shared_stack
    _dump_on_failure(request, shared_stack)


@pytest.fixture
def make_stack(tmp_path, request):
    """Starts a stack of the test's own (e.g. another filter configuration)."""
    started: list[Stack] = []

    def start(**kwargs) -> Stack:
        s = Stack.start(Ports.free(), tmp_path / f"stack{len(started)}", **kwargs)
        started.append(s)
        return s

    yield start
    for s in started:
        _dump_on_failure(request, s)
        s.stop()


@pytest.fixture(scope="module")
def playwright():
    """Playwright, once per module that drives Chromium."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def database_url(request):
    """The control plane's database, once per backend: None (SQLite in the
    stack's data dir), or a fresh database on the PostgreSQL server that
    scripts/test.sh starts (its URL in WARDEN_TEST_DATABASE_URL)."""
    if request.param == "sqlite":
        return None
    server = os.environ.get("WARDEN_TEST_DATABASE_URL")
    if not server:
        if os.environ.get("CI") or os.environ.get("WARDEN_REQUIRE_POSTGRES"):
            pytest.fail("WARDEN_TEST_DATABASE_URL is not set: scripts/test.sh starts PostgreSQL for this test")
        pytest.skip("PostgreSQL not started (run through `make test`, which starts one)")
    return fresh_database(server)


