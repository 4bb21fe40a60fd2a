"""Pytest fixtures for testing code against a local sandbox.

``sendmux_sandbox`` gives each test a running :class:`~sendmux_sandbox.SandboxServer`
reset to a clean state; override ``sendmux_sandbox_config`` to configure it.
Loaded by every pytest run where this package is installed, so it imports
nothing heavy until a fixture is used.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from sendmux_sandbox.config import SandboxConfig
    from sendmux_sandbox.server import SandboxServer

__all__ = ["sendmux_sandbox", "sendmux_sandbox_config", "sendmux_sandbox_server"]


@pytest.fixture(scope="session")
def sendmux_sandbox_config() -> SandboxConfig:
    """The configuration of the session's sandbox; override it in a conftest.py."""
    from sendmux_sandbox.config import SandboxConfig

    return SandboxConfig()


@pytest.fixture(scope="session")
def sendmux_sandbox_server(sendmux_sandbox_config: SandboxConfig) -> Iterator[SandboxServer]:
    """One sandbox server for the whole session (state shared between tests)."""
    try:
        from sendmux_sandbox.server import SandboxServer
    except ImportError as exc:  # pragma: no cover - depends on the install
        pytest.fail(f"the sendmux_sandbox fixtures need the [sandbox] extra: {exc}")
    with SandboxServer(sendmux_sandbox_config) as server:
        yield server


@pytest.fixture
def sendmux_sandbox(sendmux_sandbox_server: SandboxServer) -> SandboxServer:
    """The session's sandbox, reset (messages, counters, keys' windows, faults) for this test."""
    sendmux_sandbox_server.reset()
    return sendmux_sandbox_server
