"""SandboxServer: the sandbox served by uvicorn in a background thread, for tests."""

from __future__ import annotations

import socket
import threading
import time
from types import TracebackType
from typing import Any

import uvicorn

from sendmux_sandbox.admin_client import SandboxAdmin
from sendmux_sandbox.app import MANAGEMENT_PREFIX, SENDING_PREFIX, create_app
from sendmux_sandbox.config import FaultConfig, SandboxConfig

__all__ = ["SandboxServer"]

_START_TIMEOUT = 10.0


class SandboxServer:
    """A running sandbox on loopback.

    >>> with SandboxServer() as sandbox:                      # doctest: +SKIP
    ...     client = SendmuxClient(sandbox.api_key, sending_url=sandbox.sending_url,
    ...                            management_url=sandbox.management_url)
    """

    def __init__(
        self,
        config: SandboxConfig | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        log_level: str = "warning",
    ) -> None:
        self.config = config or SandboxConfig()
        self.host = host
        self._requested_port = port
        self._log_level = log_level
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None
        self._port: int | None = None
        self._admin: SandboxAdmin | None = None

    # lifecycle

    def start(self) -> SandboxServer:
        """Start serving; returns once the server accepts connections."""
        if self._thread is not None:
            return self
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self._requested_port))
        self._port = sock.getsockname()[1]
        self._socket = sock
        config = uvicorn.Config(
            create_app(self.config),
            log_level=self._log_level,
            log_config=None,
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=1,
        )
        server = uvicorn.Server(config)
        self._server = server
        self._thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="sendmux-sandbox", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + _START_TIMEOUT
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the sandbox server did not start")
            time.sleep(0.005)
        return self

    def stop(self) -> None:
        """Stop serving (pending slow responses are cut short)."""
        server, thread, sock = self._server, self._thread, self._socket
        self._server = self._thread = self._socket = None
        if server is not None:
            server.should_exit = True
        if thread is not None:
            thread.join(timeout=3)
            if thread.is_alive() and server is not None:
                server.force_exit = True
                thread.join(timeout=3)
        if sock is not None:
            sock.close()
        if self._admin is not None:
            self._admin.close()
            self._admin = None

    def __enter__(self) -> SandboxServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # addresses

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the sandbox server is not running")
        return self._port

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def sending_url(self) -> str:
        return self.base_url + SENDING_PREFIX

    @property
    def management_url(self) -> str:
        return self.base_url + MANAGEMENT_PREFIX

    @property
    def api_key(self) -> str:
        return self.config.api_key

    # admin helpers

    @property
    def admin(self) -> SandboxAdmin:
        """The admin API client (made on first use, closed by :meth:`stop`)."""
        if self._admin is None:
            self._admin = SandboxAdmin(self.base_url)
        return self._admin

    def stats(self) -> dict[str, Any]:
        """Counters: requests, accepted_messages, unique_recipients, duplicate_deliveries, ..."""
        return self.admin.stats()

    def messages(self, to: str | None = None, *, limit: int | None = None) -> list[dict[str, Any]]:
        """Accepted messages: all to ``to`` (any case), else the most recent ``limit`` (1000)."""
        return self.admin.messages(to, limit=limit)

    def set_faults(self, **settings: Any) -> FaultConfig:
        """Replace the active faults (fields of :class:`FaultConfig`; none given clears them)."""
        return self.admin.set_faults(**settings)

    def reset(self) -> None:
        """Forget messages, idempotency records, counters and rate windows; restore start faults."""
        self.admin.reset()
