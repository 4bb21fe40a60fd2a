"""Shared fixtures for the whole test suite (keep small; add yours below)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

DEFAULT_TEST_REDIS_URL = "redis://127.0.0.1:6379/15"


@pytest.fixture(scope="session")
def redis_url() -> str:
    """URL of a reachable Redis (``SENDMUX_TEST_REDIS_URL``, default db 15 on localhost).

    Outside CI an unreachable Redis skips the test with the reason; in CI
    (``CI=true``) it fails, so a broken service container cannot turn the
    Redis tests into silent skips.
    """
    url = os.environ.get("SENDMUX_TEST_REDIS_URL", DEFAULT_TEST_REDIS_URL)
    shown = re.sub(r"//[^@/]*@", "//***@", url)  # never print a password
    try:
        import redis

        client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
        try:
            client.ping()
        finally:
            client.close()
    except Exception as exc:
        reason = f"Redis not reachable at {shown}: {type(exc).__name__}: {exc}"
        if os.environ.get("CI", "").strip().lower() == "true":
            pytest.fail(f"{reason} (CI=true: Redis tests must run, not skip)")
        pytest.skip(f"{reason}; start redis-server or set SENDMUX_TEST_REDIS_URL")
    return url


@pytest.fixture(autouse=True)
def state_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test its own ``XDG_STATE_HOME``: ``sendmux-send`` keeps its send ledger
    there by default, and a test must neither read nor leave one in ~/.local/state."""
    home = tmp_path / "state"
    monkeypatch.setenv("XDG_STATE_HOME", str(home))
    return home


# --- Sendmux client fixtures (sandbox on loopback) ----------------------------

from collections.abc import AsyncIterator, Iterator  # noqa: E402
from typing import Any  # noqa: E402

import httpx  # noqa: E402


class Recorder:
    """Requests seen at the transport level, in order (method, path, headers, body)."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []

    @property
    def posts(self) -> list[httpx.Request]:
        return [r for r in self.requests if r.method == "POST"]


class RecordingTransport(httpx.BaseTransport):
    """Wraps the real transport: every request still goes to the sandbox."""

    def __init__(self, recorder: Recorder) -> None:
        self._inner = httpx.HTTPTransport()
        self._recorder = recorder

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self._recorder.requests.append(request)
        return self._inner.handle_request(request)

    def close(self) -> None:
        self._inner.close()


class AsyncRecordingTransport(httpx.AsyncBaseTransport):
    def __init__(self, recorder: Recorder) -> None:
        self._inner = httpx.AsyncHTTPTransport()
        self._recorder = recorder

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self._recorder.requests.append(request)
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


class SleepLog:
    """The retry sleep used by tests: records each delay, never waits, runs hooks."""

    def __init__(self) -> None:
        self.delays: list[float] = []
        self.hooks: list[Any] = []

    def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        for hook in self.hooks:
            hook()

    async def async_sleep(self, seconds: float) -> None:
        self(seconds)


@pytest.fixture(scope="session")
def sandbox_server() -> Iterator[Any]:
    """One sandbox for the session (messages settle at once: delivery_delay=0)."""
    from sendmux_sandbox.config import SandboxConfig
    from sendmux_sandbox.server import SandboxServer

    with SandboxServer(SandboxConfig(delivery_delay=0.0)) as server:
        yield server


@pytest.fixture
def sandbox(sandbox_server: Any) -> Iterator[Any]:
    """The session sandbox, reset (no messages, no faults) for each test."""
    sandbox_server.reset()
    yield sandbox_server
    sandbox_server.set_faults()


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def sleep_log(sandbox: Any) -> SleepLog:
    """No real waiting; by default the first retry sleep clears the sandbox's faults."""
    log = SleepLog()
    log.hooks.append(lambda: sandbox.set_faults() if len(log.delays) == 1 else None)
    return log


@pytest.fixture
def make_client(sandbox: Any, recorder: Recorder, sleep_log: SleepLog) -> Iterator[Any]:
    """Factory for a SendmuxClient on the sandbox; keyword arguments override the defaults."""
    from sendmux_dispatch.client import SendmuxClient
    from sendmux_dispatch.retry import RetryPolicy

    made: list[SendmuxClient] = []

    def make(**overrides: Any) -> SendmuxClient:
        options: dict[str, Any] = {
            "sending_url": sandbox.sending_url,
            "management_url": sandbox.management_url,
            "timeout": 5.0,
            "retry": RetryPolicy(jitter=0.0, sleep=sleep_log),
            "transport": RecordingTransport(recorder),
        }
        options.update(overrides)
        client = SendmuxClient(options.pop("api_key", sandbox.api_key), **options)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


@pytest.fixture
def client(make_client: Any) -> Any:
    """A SendmuxClient on the sandbox that records its requests and never really sleeps."""
    return make_client()


@pytest.fixture
async def make_async_client(
    sandbox: Any, recorder: Recorder, sleep_log: SleepLog
) -> AsyncIterator[Any]:
    from sendmux_dispatch.client import AsyncSendmuxClient
    from sendmux_dispatch.retry import RetryPolicy

    made: list[AsyncSendmuxClient] = []

    def make(**overrides: Any) -> AsyncSendmuxClient:
        options: dict[str, Any] = {
            "sending_url": sandbox.sending_url,
            "management_url": sandbox.management_url,
            "timeout": 5.0,
            "retry": RetryPolicy(jitter=0.0, sleep=sleep_log, async_sleep=sleep_log.async_sleep),
            "transport": AsyncRecordingTransport(recorder),
        }
        options.update(overrides)
        client = AsyncSendmuxClient(options.pop("api_key", sandbox.api_key), **options)
        made.append(client)
        return client

    yield make
    for client in made:
        await client.aclose()


@pytest.fixture
def async_client(make_async_client: Any) -> Any:
    return make_async_client()
