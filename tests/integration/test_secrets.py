"""The API keys never show: not in logs, output, exceptions, their chains or tracebacks.

Each scenario fails a real request against the sandbox (or a closed port),
with every logger at DEBUG (httpx and httpcore included) and stdout/stderr
captured, then searches everything for the keys.
"""

from __future__ import annotations

import logging
import pickle
import socket
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from sendmux_dispatch.client import SendmuxClient
from sendmux_dispatch.errors import (
    AuthenticationError,
    SendmuxError,
    SendmuxTimeoutError,
    ServerError,
    TransportError,
)
from sendmux_dispatch.retry import RetryPolicy
from sendmux_sandbox.config import ALL_PERMISSIONS, SandboxConfig
from sendmux_sandbox.server import SandboxServer

SECRET = "smx_root_TOPSECRET_k3y_do_not_leak_0001"
MANAGEMENT_SECRET = "smx_root_TOPSECRET_mgmt_do_not_leak_0002"
# A piece of the key that would still identify it if only part leaked.
SECRET_PARTS = ("TOPSECRET", "do_not_leak")

MESSAGE = {"from": "a@example.com", "to": "b@example.com", "subject": "s", "text_body": "t"}


@pytest.fixture(scope="module")
def secret_sandbox() -> Iterator[SandboxServer]:
    config = SandboxConfig(
        keys={SECRET: ALL_PERMISSIONS, MANAGEMENT_SECRET: ALL_PERMISSIONS}, delivery_delay=0.0
    )
    with SandboxServer(config, log_level="debug") as server:
        yield server


@pytest.fixture
def capture_everything(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG)
    for name in ("httpx", "httpcore", "sendmux_dispatch", "tenacity", "uvicorn", "sendmux_sandbox"):
        caplog.set_level(logging.DEBUG, logger=name)
    return caplog


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _texts_of(error: BaseException) -> list[str]:
    """str, repr, attributes and formatted traceback of an error and its whole chain."""
    texts = ["".join(traceback.format_exception(type(error), error, error.__traceback__))]
    seen: set[int] = set()
    todo: list[BaseException | None] = [error]
    while todo:
        current = todo.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        texts += [str(current), repr(current), repr(vars(current)), repr(current.args)]
        # An httpx exception keeps its request, whose raw headers hold the key
        # (httpx masks it only in repr): anything reachable counts as leaked.
        request = getattr(current, "_request", None)
        if request is not None:
            texts.append(repr(request.headers.raw))
        texts.append(repr(pickle.loads(pickle.dumps(current)).__dict__))
        todo += [current.__cause__, current.__context__]
    return texts


def _assert_clean(texts: list[str]) -> None:
    for text in texts:
        for part in (SECRET, MANAGEMENT_SECRET, *SECRET_PARTS):
            # The message shows where, with the secret itself blanked out.
            assert part not in text, f"secret leaked into: {text.replace(part, '<KEY>')[:300]!r}"


def _scenario(server: SandboxServer | None, **options: Any) -> SendmuxClient:
    base = f"http://127.0.0.1:{_closed_port()}/api/v1"
    options.setdefault("retry", RetryPolicy(max_attempts=3, jitter=0.0, sleep=lambda _: None))
    return SendmuxClient(
        SECRET,
        management_api_key=MANAGEMENT_SECRET,
        sending_url=server.sending_url if server else base,
        management_url=server.management_url if server else base,
        **options,
    )


def _run(
    client: SendmuxClient,
    action: Callable[[SendmuxClient], Any],
    expected: type[SendmuxError],
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> SendmuxError:
    with client, pytest.raises(expected) as caught:
        action(client)
    out, err = capsys.readouterr()
    texts = [out, err, caplog.text, *(r.getMessage() for r in caplog.records)]
    texts += [repr(r.args) for r in caplog.records]
    texts += _texts_of(caught.value)
    texts += [repr(client), str(client), repr(client.stats), repr(client.retry)]
    _assert_clean(texts)
    return caught.value


def test_the_check_itself_can_fail() -> None:
    with pytest.raises(AssertionError):
        _assert_clean([f"Authorization: Bearer {SECRET}"])


def test_refused_connection(capture_everything: Any, capsys: Any) -> None:
    error = _run(
        _scenario(None), lambda c: c.send(MESSAGE), TransportError, capture_everything, capsys
    )
    assert "POST /emails/send" in str(error)
    assert error.__cause__ is None
    assert error.__context__ is None


def test_unknown_key_401(
    secret_sandbox: SandboxServer, capture_everything: Any, capsys: Any
) -> None:
    secret_sandbox.reset()
    client = SendmuxClient(
        SECRET.replace("0001", "9999"),
        sending_url=secret_sandbox.sending_url,
        management_url=secret_sandbox.management_url,
    )
    with client, pytest.raises(AuthenticationError) as caught:
        client.send(MESSAGE)
    out, err = capsys.readouterr()
    texts = [out, err, capture_everything.text, *_texts_of(caught.value), repr(client)]
    for text in texts:
        assert SECRET.replace("0001", "9999") not in text
        assert "TOPSECRET" not in text


def test_server_error_with_retries(
    secret_sandbox: SandboxServer, capture_everything: Any, capsys: Any
) -> None:
    secret_sandbox.reset()
    secret_sandbox.set_faults(error_500=1.0)
    client = _scenario(secret_sandbox)
    _run(client, lambda c: c.send(MESSAGE), ServerError, capture_everything, capsys)
    assert client.stats.requests == 3
    assert capture_everything.records  # the logs were really captured
    secret_sandbox.set_faults()


def test_timeout(secret_sandbox: SandboxServer, capture_everything: Any, capsys: Any) -> None:
    secret_sandbox.reset()
    secret_sandbox.set_faults(latency=1.0)
    # One attempt: a retry would meet the first request still in flight (409).
    client = _scenario(secret_sandbox, timeout=0.2, retry=RetryPolicy.none())
    _run(client, lambda c: c.send(MESSAGE), SendmuxTimeoutError, capture_everything, capsys)
    secret_sandbox.set_faults()


def test_management_failure(
    secret_sandbox: SandboxServer, capture_everything: Any, capsys: Any
) -> None:
    secret_sandbox.reset()
    client = _scenario(secret_sandbox)
    _run(client, lambda c: c.get_log("dlog_missing"), SendmuxError, capture_everything, capsys)


def test_repr_masks_the_keys() -> None:
    with SendmuxClient(SECRET, management_api_key=MANAGEMENT_SECRET) as client:
        _assert_clean([repr(client), str(client), repr(vars(client))])
        assert "**" in repr(client)


def test_bad_key_characters_are_refused_without_echoing_the_key() -> None:
    with pytest.raises(ValueError, match="api_key") as caught:
        SendmuxClient(SECRET + "\n")
    _assert_clean(_texts_of(caught.value))


def test_credentials_in_a_base_url_are_refused_without_echoing_them() -> None:
    with pytest.raises(ValueError, match="credentials") as caught:
        SendmuxClient("smx_root_x", sending_url=f"https://user:{SECRET}@smtp.sendmux.ai/api/v1")
    _assert_clean(_texts_of(caught.value))
