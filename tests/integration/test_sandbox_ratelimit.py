"""Per-key fixed-window rate limits, their headers, 429 and Retry-After."""

from __future__ import annotations

import math
import time

import httpx

from sendmux_sandbox import DEFAULT_API_KEY, SEND_ONLY_API_KEY, SandboxConfig, SandboxServer

HTTP = httpx.Client(timeout=30)
MESSAGE = {
    "from": {"email": "app@example.com"},
    "to": {"email": "ann@example.com"},
    "subject": "Hello",
    "html_body": "<p>Hi</p>",
}


def send(sandbox, key=DEFAULT_API_KEY, batch=False) -> httpx.Response:
    path, body = (
        ("/emails/send/batch", {"messages": [MESSAGE] * 100})
        if batch
        else ("/emails/send", MESSAGE)
    )
    return HTTP.post(
        sandbox.sending_url + path, json=body, headers={"Authorization": f"Bearer {key}"}
    )


def test_every_response_reports_the_keys_budget(sendmux_sandbox):
    first, second = send(sendmux_sandbox), send(sendmux_sandbox)
    assert first.headers["x-ratelimit-limit"] == "1800"
    assert int(first.headers["x-ratelimit-remaining"]) == 1799
    assert int(second.headers["x-ratelimit-remaining"]) == 1798
    reset = int(first.headers["x-ratelimit-reset"])
    assert time.time() < reset <= time.time() + 60
    logs = HTTP.get(
        sendmux_sandbox.management_url + "/emails/logs",
        headers={"Authorization": f"Bearer {DEFAULT_API_KEY}"},
    )
    assert logs.headers["x-ratelimit-limit"] == "600"
    assert logs.headers["x-ratelimit-remaining"] == "599"


def test_past_the_limit_the_answer_is_429_with_retry_after():
    with SandboxServer(SandboxConfig(rate_limit=3, rate_window=1.0)) as sandbox:
        # Start at the top of a window so all four requests share it.
        time.sleep(math.ceil(time.time()) - time.time() + 0.01)
        answers = [send(sandbox) for _ in range(4)]
        assert [r.status_code for r in answers[:3]] == [200, 200, 200]
        limited = answers[3]
        assert limited.status_code == 429
        error = limited.json()["error"]
        assert error["code"] == "rate_limit_exceeded"
        assert error["retryable"] is True
        assert limited.headers["retry-after"] == "1"
        assert limited.headers["x-ratelimit-remaining"] == "0"
        stats = sandbox.stats()
        assert stats["rate_limited"] == 1
        assert stats["accepted_messages"] == 3
        # Another key has its own window.
        assert send(sandbox, SEND_ONLY_API_KEY).status_code == 200
        time.sleep(float(limited.headers["x-ratelimit-reset"]) - time.time() + 0.01)
        assert send(sandbox).status_code == 200


def test_a_batch_counts_as_one_request():
    with SandboxServer(SandboxConfig(rate_limit=5, rate_window=60.0)) as sandbox:
        r = send(sandbox, batch=True)
        assert r.json()["data"]["summary"]["queued"] == 100
        assert r.headers["x-ratelimit-remaining"] == "4"


def test_management_keys_are_limited_separately():
    config = SandboxConfig(management_rate_limit=2, management_rate_window=60.0)
    with SandboxServer(config) as sandbox:
        headers = {"Authorization": f"Bearer {DEFAULT_API_KEY}"}
        codes = [
            HTTP.get(sandbox.management_url + "/me", headers=headers).status_code for _ in range(3)
        ]
        assert codes == [200, 200, 429]
        assert send(sandbox).status_code == 200


def test_sub_second_windows_report_a_fractional_reset():
    with SandboxServer(SandboxConfig(rate_limit=1, rate_window=0.25)) as sandbox:
        ok = send(sandbox)
        reset = float(ok.headers["x-ratelimit-reset"])
        assert time.time() < reset <= time.time() + 0.25
        limited = send(sandbox)
        if limited.status_code == 429:  # the window may have rolled over in between
            assert limited.headers["retry-after"] == "1"


def test_rate_limiting_can_be_turned_off():
    with SandboxServer(SandboxConfig(rate_limit=None)) as sandbox:
        r = send(sandbox)
        assert r.status_code == 200
        assert "x-ratelimit-limit" not in r.headers
