"""Starts, watches and stops the Warden stack for `make run`, `make demo` and the tests."""
