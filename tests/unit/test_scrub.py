"""Server-provided text never carries a key into an exception, a log line or a report.

The sandbox never echoes a request header, but a proxy in front of the API
may: an httpx.MockTransport stands for that proxy here, echoing the
``Authorization`` header into every string the client reads (error envelope,
errors[] items, param, a non-JSON page, a 2xx batch's per-message errors).
"""

from __future__ import annotations

import json
import logging

import httpx
import pytest

from sendmux_dispatch import dispatch
from sendmux_dispatch.client import AsyncSendmuxClient, SendmuxClient
from sendmux_dispatch.errors import (
    APIError,
    AuthenticationError,
    ServerError,
    error_from_response,
    scrub_secrets,
)
from sendmux_dispatch.retry import RetryPolicy

KEY = "smx_root_Pr0xyEch0_do_not_leak_0001"
# Not shaped like a Sendmux key: only knowing it is the client's finds it.
OWN_KEY = "corp-gateway-key-Zq81x"
STRANGER = "smx_mbx_someone_elses_key_99"
PARTS = ("Pr0xyEch0", "do_not_leak", "Zq81x", "someone_elses")
MESSAGE = {"from": "a@example.com", "to": "b@example.com", "subject": "s", "text_body": "t"}


def _no_secret(*texts: str) -> None:
    for text in texts:
        for part in PARTS:
            assert part not in text, f"{part!r} leaked in {text!r}"


def test_scrub_replaces_own_keys_and_any_sendmux_shaped_key() -> None:
    text = f"Bearer {KEY}; x-key {OWN_KEY}; SMX_ROOT_{STRANGER[8:]}; {STRANGER}."
    scrubbed = scrub_secrets(text, [OWN_KEY])
    _no_secret(scrubbed)
    assert scrubbed == "Bearer [redacted]; x-key [redacted]; [redacted]; [redacted]."
    assert scrub_secrets("no key here: smx is a word", [OWN_KEY]) == "no key here: smx is a word"


def _echo_envelope(auth: str) -> bytes:
    return json.dumps(
        {
            "error": {
                "code": "authentication_required",
                "message": f"bad credentials: {auth}",
                "param": f"header:{auth}",
                "doc_url": f"https://proxy.example/?h={auth}",
                "retryable": False,
                "errors": [{"field": f"Authorization {auth}", "code": "x", "message": auth}],
            },
            "meta": {"request_id": f"req_{auth}"},
        }
    ).encode()


def test_every_string_of_an_error_envelope_is_scrubbed() -> None:
    auth = f"Bearer {KEY} {OWN_KEY}"
    error = error_from_response(401, _echo_envelope(auth), secrets=[OWN_KEY])
    assert isinstance(error, AuthenticationError)
    _no_secret(
        str(error),
        repr(error),
        error.message,
        error.param or "",
        error.doc_url or "",
        error.request_id or "",
        *(str(issue) + issue.code for issue in error.errors),
    )
    assert "bad credentials: Bearer [redacted] [redacted]" in error.message


def test_a_non_json_page_is_quoted_scrubbed() -> None:
    page = f"<html><body><h1>502</h1><pre>Authorization: Bearer {KEY}</pre></body></html>"
    error = error_from_response(502, page.encode(), secrets=[OWN_KEY])
    assert type(error) is ServerError
    _no_secret(str(error), repr(error))
    assert "Authorization: Bearer [redacted]" in error.message


# --- a proxy echoing the Authorization header, in front of a client -----------------


def _proxy(status: int, page: bool = False) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        auth = request.headers["authorization"]
        headers = {"x-request-id": f"req {auth}"}
        if page:
            return httpx.Response(status, text=f"upstream said: {auth}", headers=headers)
        if status < 300:
            count = len(json.loads(request.content)["messages"])
            failed = {
                "code": "validation_error",
                "message": f"rejected by {auth}",
                "retryable": False,
            }
            results = [
                {"index": index, "status": "failed", "error": failed} for index in range(count)
            ]
            data = {"results": results, "summary": {"total": count, "queued": 0, "failed": count}}
            return httpx.Response(status, json={"data": data}, headers=headers)
        return httpx.Response(status, content=_echo_envelope(auth), headers=headers)

    return httpx.MockTransport(handle)


def _client(transport: httpx.MockTransport, key: str = KEY) -> SendmuxClient:
    return SendmuxClient(
        key,
        sending_url="http://127.0.0.1:9/api/v1",
        management_url="http://127.0.0.1:9/api/v1",
        transport=transport,
        retry=RetryPolicy(max_attempts=2, jitter=0.0, sleep=lambda _: None),
    )


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG)
    for name in ("sendmux_dispatch", "httpx", "httpcore", "tenacity"):
        caplog.set_level(logging.DEBUG, logger=name)
    return caplog


@pytest.mark.parametrize(("status", "page"), [(401, False), (502, False), (502, True)])
@pytest.mark.parametrize("key", [KEY, OWN_KEY])
def test_an_echoing_proxy_puts_no_key_in_exceptions_or_logs(
    logs: pytest.LogCaptureFixture, status: int, page: bool, key: str
) -> None:
    with _client(_proxy(status, page), key) as client, pytest.raises(APIError) as caught:
        client.send(MESSAGE)
    error = caught.value
    assert error.status == status
    _no_secret(str(error), repr(error), error.request_id or "", logs.text)
    assert "[redacted]" in str(error)


def test_an_echoing_proxy_puts_no_key_in_a_report(logs: pytest.LogCaptureFixture) -> None:
    template = {"from": "a@example.com", "subject": "s", "text_body": "t"}
    people = [f"p{i}@example.com" for i in range(3)]
    with _client(_proxy(401)) as client:
        stopped = dispatch(client, template, people, job_key="echo-401")
    assert stopped.stopped_reason
    assert "[redacted]" in stopped.stopped_reason
    with _client(_proxy(200)) as client:
        refused = dispatch(client, template, people, job_key="echo-200")
    assert refused.failed == 3
    reasons = [failure.message for failure in refused.failures]
    assert all("[redacted]" in reason for reason in reasons)
    _no_secret(
        stopped.stopped_reason, repr(stopped), repr(refused), *reasons, logs.text, str(refused)
    )


async def test_the_async_client_scrubs_the_same(logs: pytest.LogCaptureFixture) -> None:
    sync_proxy = _proxy(502)

    async def handle(request: httpx.Request) -> httpx.Response:
        return sync_proxy.handle_request(request)

    client = AsyncSendmuxClient(
        KEY,
        sending_url="http://127.0.0.1:9/api/v1",
        transport=httpx.MockTransport(handle),
        retry=RetryPolicy.none(),
    )
    async with client:
        with pytest.raises(ServerError) as caught:
            await client.send(MESSAGE)
    _no_secret(str(caught.value), repr(caught.value), logs.text)
    assert "[redacted]" in caught.value.message
