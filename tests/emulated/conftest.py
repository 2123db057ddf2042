"""Fixtures of the emulated-host tests (tests/emulated/host.py runs the
compiled filter; support.py has the configuration and the shared steps)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tokens import RsaKey  # noqa: E402


@pytest.fixture(scope="session")
def key() -> RsaKey:
    """The IdP's signing key, made for this run (no private key is committed)."""
    return RsaKey("key-1")


@pytest.fixture(scope="session")
def rotated_key() -> RsaKey:
    """The key the IdP rotates to."""
    return RsaKey("key-2")
