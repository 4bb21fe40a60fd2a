"""SendmuxHook against the sandbox, with the connection from AIRFLOW_CONN_SENDMUX_DEFAULT."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest

from sendmux_airflow import SendmuxHook, SendmuxSettings
from sendmux_dispatch import RedisPacer, key_fingerprint
from sendmux_sandbox.config import SEND_ONLY_API_KEY


def _assert_no_secret(secret: str, *texts: str) -> None:
    for text in texts:
        assert secret not in text


def test_connection_test_names_the_key_and_its_permissions(
    sandbox: Any, sendmux_connection: Any, caplog: pytest.LogCaptureFixture
) -> None:
    from airflow.sdk._shared.secrets_masker import redact

    sendmux_connection(management_api_key=SEND_ONLY_API_KEY)
    caplog.set_level(logging.DEBUG)
    hook = SendmuxHook()

    ok, message = hook.test_connection()

    assert ok, message
    assert "email.send" in message
    assert "logs.read" in message
    assert sandbox.sending_url in message
    assert sandbox.stats()["requests"] >= 1  # a real GET /me reached the server
    client = hook.get_client()
    assert client.sending_url == sandbox.sending_url
    assert client.management_url == sandbox.management_url
    # Both keys are registered with Airflow's masker, so task logs show *** instead.
    assert redact(f"key={sandbox.api_key}") == "key=***"
    assert redact(SEND_ONLY_API_KEY) == "***"
    texts = [message, repr(hook), repr(hook.settings), repr(client)]
    texts += [record.getMessage() for record in caplog.records]
    _assert_no_secret(sandbox.api_key, *texts)
    _assert_no_secret(SEND_ONLY_API_KEY, *texts)


def test_connection_test_fails_with_the_reason_on_a_bad_key(
    sandbox: Any, sendmux_connection: Any, caplog: pytest.LogCaptureFixture
) -> None:
    bad_key = "smx_root_not_a_real_key_123456789"
    sendmux_connection(api_key=bad_key)
    caplog.set_level(logging.DEBUG)

    ok, message = SendmuxHook().test_connection()

    assert not ok
    assert "AuthenticationError" in message
    assert "401" in message
    _assert_no_secret(bad_key, message, *(r.getMessage() for r in caplog.records))


@pytest.mark.parametrize(
    ("connection", "expected"),
    [
        ({"conn_type": "sendmux"}, "has no API key: put it in the Password field"),
        (
            {"conn_type": "sendmux", "password": "smx_x_1234567", "extra": {"timeout": "soon"}},
            "extra 'timeout' must be a number greater than 0, got 'soon'",
        ),
        (
            {"conn_type": "sendmux", "password": "smx_x_1234567", "extra": {"max_attempts": 0}},
            "extra 'max_attempts' must be a whole number greater than 0",
        ),
    ],
)
def test_connection_test_names_the_field_to_fix(
    monkeypatch: pytest.MonkeyPatch, connection: dict[str, Any], expected: str
) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_SENDMUX_BROKEN", json.dumps(connection))
    ok, message = SendmuxHook("sendmux_broken").test_connection()
    assert not ok
    assert "connection 'sendmux_broken'" in message
    assert expected in message
    assert "smx_x_1234567" not in message


def test_uri_form_and_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    # The URI form splits a URL into host and schema; the hook puts it back together.
    monkeypatch.setenv("AIRFLOW_CONN_SENDMUX_URI", "sendmux://:smx_k_1234567@mail.example.com")
    settings = SendmuxHook("sendmux_uri").settings
    assert settings == SendmuxSettings(
        conn_id="sendmux_uri",
        api_key="smx_k_1234567",
        sending_url="https://mail.example.com/api/v1",
    )
    assert "smx_k_1234567" not in repr(settings)


def test_async_client_and_the_shared_pacer(
    sandbox: Any, sendmux_connection: Any, redis_url: str
) -> None:
    import redis

    sendmux_connection(pacer_url=redis_url, from_email="Reports <reports@example.com>")
    hook = SendmuxHook()
    assert hook.settings.from_email == "Reports <reports@example.com>"
    pacer = hook.get_pacer()
    assert isinstance(pacer, RedisPacer)
    assert hook.get_client().pacer is pacer  # one pacer per hook, on the client

    async def me_label() -> str:
        async with hook.get_async_client() as client:
            assert client.pacer is pacer
            return (await client.me()).label

    assert asyncio.run(me_label())
    hook.get_client().me()

    # Both calls counted in Redis, under the key's fingerprint, never the key.
    store = redis.Redis.from_url(redis_url)
    try:
        names = [name.decode() for name in store.scan_iter("sendmux:pacer:*")]
    finally:
        store.close()
    assert any(key_fingerprint(sandbox.api_key) in name for name in names), names
    assert not any(sandbox.api_key in name for name in names)
    hook.close()


def test_a_task_paces_itself_without_a_pacer_url(monkeypatch: pytest.MonkeyPatch) -> None:
    """No pacer URL: the hook's in-process pacer keeps one task under the key's ceiling."""
    from sendmux_dispatch import InProcessPacer, dispatch
    from sendmux_sandbox.config import SandboxConfig
    from sendmux_sandbox.server import SandboxServer

    # The Sending API's ratio (1,800 per 60 s) scaled down in time: 10 per 1 s on the
    # connection. The sandbox allows a little more (a loaded machine delays some
    # requests more than others, which bunches them in the server's fixed windows);
    # without a pacer the 30 requests would still meet its 429s.
    config = SandboxConfig(delivery_delay=0.0, rate_limit=13, rate_window=1.0)
    with SandboxServer(config) as box:
        monkeypatch.setenv(
            "AIRFLOW_CONN_SENDMUX_SCALED",
            json.dumps(
                {
                    "conn_type": "sendmux",
                    "host": box.sending_url,
                    "password": box.api_key,
                    "extra": {"rate_limit": 10, "rate_window": 1, "from_email": "r@example.com"},
                }
            ),
        )
        hook = SendmuxHook("sendmux_scaled")
        pacer = hook.get_pacer()
        assert isinstance(pacer, InProcessPacer)
        assert (pacer.limit, pacer.window) == (10, 1.0)
        template = {"from": "r@example.com", "subject": "Hi", "text_body": "Hello"}
        people = ({"email": f"p{i}@example.com"} for i in range(3000))
        try:
            report = dispatch(hook.get_client(), template, people, job_key="paced", concurrency=8)
        finally:
            hook.close()
        stats = box.stats()
    assert report.queued == stats["unique_recipients"] == 3000
    # 30 requests at 10 a second (9 with the pacer's headroom): paced, no 429.
    assert stats["rate_limited"] == report.rate_limited == 0
    assert report.elapsed >= 2.0


def test_a_fractional_rate_window_with_a_pacer_url_names_the_field(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from sendmux_airflow.hooks.sendmux import SendmuxConnectionError

    extra = {"pacer_url": "redis://127.0.0.1:6379/0", "rate_window": 0.5}
    monkeypatch.setenv(
        "AIRFLOW_CONN_SENDMUX_HALF",
        json.dumps({"conn_type": "sendmux", "password": "smx_k_1234567", "extra": extra}),
    )
    with pytest.raises(SendmuxConnectionError, match="'rate_window' must be a whole number"):
        _ = SendmuxHook("sendmux_half").settings
