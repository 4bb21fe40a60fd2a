"""One Sendmux client per worker process, made after the fork and closed at shutdown.

A client holds an HTTP connection pool; a pool inherited through ``fork()``
shares its sockets with the parent and the other children, so the prefork
pool's children must each build their own. ``worker_process_init`` drops any
inherited client (without closing it: closing would shut the parent's
sockets); the first task in the child makes a fresh one; ``worker_process_shutdown``
closes it. The pid check covers pools that fork without those signals.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from celery.signals import worker_process_init, worker_process_shutdown

from sendmux_celery._settings import SendmuxSettings, SettingsError
from sendmux_dispatch.client import SendmuxClient
from sendmux_dispatch.pacing import RedisPacer, key_fingerprint
from sendmux_dispatch.retry import RetryPolicy

__all__ = ["close_clients", "worker_client"]

# In-process retries are for blips only: short waits, so a task never holds
# a worker for minutes. Anything longer becomes a task retry (broker countdown).
_IN_PROCESS_MAX_DELAY = 5.0
_IN_PROCESS_DEADLINE = 30.0

_lock = threading.Lock()
_pid: int | None = None
_clients: dict[SendmuxSettings, SendmuxClient] = {}


def _make_client(settings: SendmuxSettings) -> SendmuxClient:
    key = settings.api_key.get_secret_value()
    pacer = None
    if settings.pacer_url is not None:
        # The pacer's Redis keys are named by a fingerprint, never by the key.
        pacer = RedisPacer(
            settings.pacer_url,
            key_id=key_fingerprint(key),
            limit=settings.pacer_limit,
            window=settings.pacer_window,
        )
    return SendmuxClient(
        key,
        sending_url=settings.sending_url,
        management_url=settings.management_url,
        timeout=settings.timeout,
        retry=RetryPolicy(
            max_attempts=settings.request_attempts,
            max_delay=_IN_PROCESS_MAX_DELAY,
            deadline=_IN_PROCESS_DEADLINE,
            max_retry_after=_IN_PROCESS_MAX_DELAY,
        ),
        pacer=pacer,
        user_agent_extra="sendmux-celery",
    )


def worker_client(settings: SendmuxSettings) -> SendmuxClient:
    """This process's client for ``settings`` (made on first use, after any fork)."""
    global _pid
    with _lock:
        if _pid != os.getpid():
            _clients.clear()  # inherited from the parent: not ours to close
            _pid = os.getpid()
        client = _clients.get(settings)
        if client is None:
            client = _clients[settings] = _make_client(settings)
        return client


def close_clients() -> None:
    """Close this process's clients (the worker does this at process shutdown)."""
    with _lock:
        clients = list(_clients.values()) if _pid == os.getpid() else []
        _clients.clear()
    for client in clients:
        client.close()


def _after_fork(**_: Any) -> None:
    global _pid
    with _lock:
        _clients.clear()
        _pid = os.getpid()
    from celery import current_app

    try:
        worker_client(SendmuxSettings.from_conf(current_app.conf))
    except (SettingsError, ValueError, TypeError):
        # Reported by each task, in its result, rather than killing the pool.
        return


def _at_shutdown(**_: Any) -> None:
    close_clients()


worker_process_init.connect(_after_fork, weak=False)
worker_process_shutdown.connect(_at_shutdown, weak=False)
