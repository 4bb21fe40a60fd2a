"""SandboxAdmin: the admin API (``/_sandbox/...``) of a running sandbox, over HTTP.

For a sandbox in this process (:class:`~sendmux_sandbox.server.SandboxServer`
uses it) or in another one (``sendmux-sandbox`` started from a shell, a
benchmark's child process).
"""

from __future__ import annotations

from types import TracebackType
from typing import Any

import httpx

from sendmux_sandbox.app import ADMIN_PREFIX
from sendmux_sandbox.config import FaultConfig

__all__ = ["SandboxAdmin"]


class SandboxAdmin:
    """Stats, stored messages, faults and reset of the sandbox at ``base_url``.

    ``base_url`` is the server's root (``http://127.0.0.1:PORT``), not one of
    its API prefixes.
    """

    def __init__(self, base_url: str, *, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> SandboxAdmin:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._http.request(method, self.base_url + ADMIN_PREFIX + path, **kwargs)
        response.raise_for_status()
        return response.json()

    def stats(self) -> dict[str, Any]:
        """Counters: requests, accepted_messages, unique_recipients, duplicate_deliveries, ..."""
        result: dict[str, Any] = self._call("GET", "/stats")
        return result

    def messages(self, to: str | None = None, *, limit: int | None = None) -> list[dict[str, Any]]:
        """Accepted messages: all to ``to`` (any case), else the most recent ``limit`` (1000)."""
        params: dict[str, str | int] = {}
        if to is not None:
            params["to"] = to
        if limit is not None:
            params["limit"] = limit
        result: list[dict[str, Any]] = self._call("GET", "/messages", params=params)["messages"]
        return result

    def set_faults(self, **settings: Any) -> FaultConfig:
        """Replace the active faults (fields of :class:`FaultConfig`; none given clears them)."""
        return FaultConfig(**self._call("POST", "/faults", json=settings)["faults"])

    def reset(self) -> None:
        """Forget messages, idempotency records, counters and rate windows; restore start faults."""
        self._call("POST", "/reset")
