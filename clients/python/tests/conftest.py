"""Shared fixtures: the server binary must exist before any test starts a server."""

from __future__ import annotations

import pytest

import support


@pytest.fixture(scope="session")
def assent_binary() -> str:
    """The ``assent`` binary the servers run (``ASSENT_BIN``, default target/debug/assent)."""
    try:
        return str(support.assent_binary())
    except RuntimeError as error:
        pytest.fail(str(error))


@pytest.fixture(scope="module")
def single_server(assent_binary: str):
    """One server on its own SQLite store, for tests that need no replicas."""
    server = support.Server()
    yield server
    server.stop()
