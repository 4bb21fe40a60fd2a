"""Local Sendmux-compatible API server for demos and tests.

Importing this package is cheap: the names that need Starlette or uvicorn
(the ``[sandbox]`` extra) are loaded on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sendmux_sandbox.admin_client import SandboxAdmin
    from sendmux_sandbox.app import create_app
    from sendmux_sandbox.config import (
        ALL_PERMISSIONS,
        DEFAULT_API_KEY,
        SEND_ONLY_API_KEY,
        FaultConfig,
        SandboxConfig,
        default_keys,
    )
    from sendmux_sandbox.server import SandboxServer

__all__ = [
    "ALL_PERMISSIONS",
    "DEFAULT_API_KEY",
    "SEND_ONLY_API_KEY",
    "FaultConfig",
    "SandboxAdmin",
    "SandboxConfig",
    "SandboxServer",
    "create_app",
    "default_keys",
]

_HOMES = {
    "ALL_PERMISSIONS": "sendmux_sandbox.config",
    "DEFAULT_API_KEY": "sendmux_sandbox.config",
    "SEND_ONLY_API_KEY": "sendmux_sandbox.config",
    "FaultConfig": "sendmux_sandbox.config",
    "SandboxConfig": "sendmux_sandbox.config",
    "default_keys": "sendmux_sandbox.config",
    "SandboxServer": "sendmux_sandbox.server",
    "SandboxAdmin": "sendmux_sandbox.admin_client",
    "create_app": "sendmux_sandbox.app",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'sendmux_sandbox' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
