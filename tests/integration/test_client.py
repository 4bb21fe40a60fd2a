"""SendmuxClient and AsyncSendmuxClient against the sandbox on loopback.

Every test talks HTTP to a real server (the sandbox in a thread). The retry
sleep is replaced by a recorder (``sleep_log``), so a test asserts on the
delays the client chose, not on wall time; by default the first retry sleep
clears the sandbox's faults, which makes "fails once, then succeeds" exact.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import date, datetime, timedelta, timezone
from typing import Any

import httpx
import pytest

from sendmux_dispatch import (
    APIError,
    AuthenticationError,
    EmailMessage,
    InvalidMessageError,
    PermissionDeniedError,
    RateLimitError,
    ServerError,
    ServiceUnavailableError,
    TransportError,
)
from sendmux_dispatch.batching import PlannedBatch, plan_batches
from sendmux_dispatch.client import (
    DEFAULT_MANAGEMENT_URL,
    DEFAULT_SENDING_URL,
    AsyncSendmuxClient,
    ClientStats,
    SendmuxClient,
    _Call,
)
from sendmux_dispatch.errors import (
    BadRequestError,
    IdempotencyConflictError,
    NotFoundError,
    PayloadTooLargeError,
    ValidationError,
)
from sendmux_dispatch.models import api_limits, batch_body, wire_message
from sendmux_dispatch.pacing import RateLimitState
from sendmux_dispatch.retry import RetryPolicy
from sendmux_sandbox.config import SEND_ONLY_API_KEY, SandboxConfig
from sendmux_sandbox.server import SandboxServer


def _addr(tag: str = "user") -> str:
    return f"{tag}-{uuid.uuid4().hex[:10]}@example.com"


def _msg(to: str | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "from": "Sender <sender@example.com>",
        "to": to or _addr(),
        "subject": "Hello",
        "text_body": "Hi there",
        **extra,
    }


def _too_many_cc() -> list[str]:
    # Valid for the client (the docs allow 100), refused by the sandbox (the
    # spec allows 49): the way to get a per-message server-side failure.
    return [f"cc{i}@example.com" for i in range(api_limits.SPEC_MAX_CC + 1)]


# -- success paths ----------------------------------------------------------


def test_send_returns_the_queued_message_and_request_id(client: Any, sandbox: Any) -> None:
    to = _addr()
    result = client.send(EmailMessage.model_validate(_msg(to)))
    assert result.status == "queued"
    assert result.message_id.startswith("eml_")
    assert result.request_id
    assert result.request_id.startswith("req_")
    [stored] = sandbox.messages(to=to)
    assert stored["id"] == result.message_id


def test_send_batch_reports_each_message_by_index(client: Any, sandbox: Any) -> None:
    recipients = [_addr() for _ in range(3)]
    bad = _msg(cc=_too_many_cc())
    result = client.send_batch([_msg(recipients[0]), bad, _msg(recipients[2])])
    assert result.summary.total == 3
    assert result.summary.queued == 2
    assert result.summary.failed == 1
    assert [item.index for item in result.queued] == [0, 2]
    [failed] = result.failed
    assert failed.index == 1
    assert failed.error is not None
    assert failed.error.code == "validation_error"
    assert any(issue.field.startswith("cc") for issue in failed.error.errors)
    assert result.request_id
    assert result.request_id.startswith("req_")
    assert sandbox.stats()["accepted_messages"] == 2


def test_every_post_carries_an_idempotency_key(client: Any, recorder: Any) -> None:
    client.send(_msg())
    client.send(_msg(), idempotency_key="caller-key_1")
    client.send_batch([_msg(), _msg()])
    keys = [request.headers.get("idempotency-key") for request in recorder.posts]
    assert len(keys) == 3
    assert all(keys)
    assert keys[1] == "caller-key_1"
    assert len(set(keys)) == 3  # a fresh random key per call


def test_retries_reuse_the_idempotency_key(
    client: Any, sandbox: Any, recorder: Any, sleep_log: Any
) -> None:
    sandbox.set_faults(error_503=1.0, retry_after=2)
    client.send(_msg())
    keys = [request.headers["idempotency-key"] for request in recorder.posts]
    assert len(keys) == 2
    assert keys[0] == keys[1]


def test_retry_after_is_honoured(client: Any, sandbox: Any, sleep_log: Any) -> None:
    sandbox.set_faults(error_503=1.0, retry_after=2)
    result = client.send(_msg())
    assert result.status == "queued"
    assert client.stats.retry_delays == [2.0]
    assert sleep_log.delays == [2.0]
    assert client.stats.requests == 2
    assert client.stats.retries == 1


def test_any_2xx_is_success_201_included() -> None:
    # The product docs say a send answers 201; the spec says 200.
    with (
        SandboxServer(SandboxConfig(send_status=201)) as server,
        SendmuxClient(
            server.api_key, sending_url=server.sending_url, management_url=server.management_url
        ) as client,
    ):
        assert client.send(_msg()).status == "queued"


def test_me_metrics_and_balance(client: Any) -> None:
    me = client.me()
    assert me.has_permission("email.send")
    client.send(_msg())
    metrics = client.metrics(window="7d", granularity="daily")
    assert metrics.summary.total >= 1
    since = datetime.now(timezone.utc) - timedelta(days=1)
    assert client.metrics(from_date=since, to_date=date.today()).summary.total >= 1
    balance = client.balance()
    assert balance.currency


def test_iter_logs_follows_cursors_lazily(client: Any) -> None:
    tag = uuid.uuid4().hex[:8]
    client.send_batch([_msg(f"logs-{tag}-{i}@example.com") for i in range(7)])
    before = client.stats.requests
    logs = client.iter_logs(search=f"logs-{tag}", limit=3)
    assert client.stats.requests == before  # nothing fetched until iterated
    first = next(logs)
    assert client.stats.requests == before + 1
    rest = list(logs)
    assert len(rest) + 1 == 7
    assert client.stats.requests == before + 3  # pages of 3, 3, 1
    assert len({log.id for log in [first, *rest]}) == 7


def test_iter_logs_by_status(client: Any) -> None:
    tag = uuid.uuid4().hex[:8]
    client.send_batch(
        [_msg(f"s-{tag}+fail@example.com"), _msg(f"s-{tag}@example.com")]
    )  # fmt: skip
    failed = list(client.iter_logs(status="failed", search=f"s-{tag}"))
    assert [log.status for log in failed] == ["failed"]


def test_get_log_uses_the_etag_cache(client: Any, recorder: Any) -> None:
    to = _addr()
    client.send(_msg(to))
    [summary] = client.iter_logs(search=to)
    first = client.get_log(summary.id)
    before = client.stats.requests
    second = client.get_log(summary.id)
    assert second is first  # 304 Not Modified: the cached model
    assert client.stats.requests == before + 1
    assert recorder.requests[-1].headers["if-none-match"].startswith('W/"')


# -- errors -----------------------------------------------------------------


def _check_api_error(error: APIError, status: int, code: str, retryable: bool) -> None:
    assert error.status == status
    assert error.code == code
    assert error.retryable is retryable
    assert error.message
    assert error.request_id
    assert error.request_id.startswith("req_")
    assert error.doc_url
    assert code in error.doc_url


def test_unknown_key_is_401_and_not_retried(make_client: Any) -> None:
    client = make_client(api_key="smx_root_unknown_key_0000000000")
    with pytest.raises(AuthenticationError) as caught:
        client.send(_msg())
    _check_api_error(caught.value, 401, "authentication_required", False)
    assert client.stats.requests == 1


def test_send_only_key_on_logs_is_403_and_not_retried(make_client: Any) -> None:
    client = make_client(api_key=SEND_ONLY_API_KEY)
    with pytest.raises(PermissionDeniedError) as caught:
        list(client.iter_logs())
    _check_api_error(caught.value, 403, "insufficient_permissions", False)
    assert client.stats.requests == 1


def test_management_key_is_used_for_management_calls(make_client: Any) -> None:
    client = make_client(api_key=SEND_ONLY_API_KEY, management_api_key=SandboxConfig().api_key)
    assert client.send(_msg()).status == "queued"
    assert client.balance().currency


def test_unknown_log_is_404(client: Any) -> None:
    with pytest.raises(NotFoundError) as caught:
        client.get_log("dlog_doesnotexist")
    _check_api_error(caught.value, 404, "not_found", False)


def test_same_key_different_body_is_409(client: Any) -> None:
    client.send(_msg(), idempotency_key="reused-key")
    with pytest.raises(IdempotencyConflictError) as caught:
        client.send(_msg(), idempotency_key="reused-key")
    _check_api_error(caught.value, 409, "idempotency_conflict", False)
    assert client.stats.requests == 2


def test_all_invalid_batch_is_422_with_every_issue(client: Any) -> None:
    with pytest.raises(ValidationError) as caught:
        client.send_batch([_msg(cc=_too_many_cc()), _msg(cc=_too_many_cc())])
    _check_api_error(caught.value, 422, "validation_error", False)
    fields = {issue.field.split(".")[1] for issue in caught.value.errors}
    assert fields == {"0", "1"}
    assert caught.value.param
    assert client.stats.requests == 1


def test_malformed_body_is_400(client: Any) -> None:
    # Bypasses the client's own validation: the raw body goes out unchanged.
    call = _Call("POST", "sending", "/emails/send", body=b"{not json", idempotency_key="raw-1")
    with pytest.raises(BadRequestError) as caught:
        client._request(call)
    _check_api_error(caught.value, 400, "invalid_parameter", False)


def test_oversize_body_is_413() -> None:
    with (
        SandboxServer(SandboxConfig(max_request_bytes=4096)) as server,
        SendmuxClient(
            server.api_key, sending_url=server.sending_url, management_url=server.management_url
        ) as client,
    ):
        with pytest.raises(PayloadTooLargeError) as caught:
            client.send(_msg(html_body="<p>" + "x" * 10_000 + "</p>"))
        _check_api_error(caught.value, 413, "payload_too_large", False)
        assert client.stats.requests == 1


def test_429_carries_retry_after_and_counts(make_client: Any, sandbox: Any) -> None:
    client = make_client(retry=RetryPolicy.none())
    sandbox.set_faults(error_429=1.0, retry_after=3)
    with pytest.raises(RateLimitError) as caught:
        client.send(_msg())
    _check_api_error(caught.value, 429, "rate_limit_exceeded", True)
    assert caught.value.retry_after == 3.0
    assert client.stats.rate_limited == 1
    assert client.stats.last_rate_limit is not None


def test_500_is_retried_until_attempts_run_out(
    make_client: Any, sandbox: Any, sleep_log: Any
) -> None:
    sleep_log.hooks.clear()  # keep failing
    client = make_client(retry=RetryPolicy(max_attempts=3, jitter=0.0, sleep=sleep_log))
    sandbox.set_faults(error_500=1.0)
    with pytest.raises(ServerError) as caught:
        client.send(_msg())
    _check_api_error(caught.value, 500, "internal_error", True)
    assert client.stats.requests == 3
    assert client.stats.retry_delays == [0.5, 1.0]  # backoff: no Retry-After on a 500
    assert sandbox.stats()["accepted_messages"] == 0


def test_503_maps_to_service_unavailable(make_client: Any, sandbox: Any) -> None:
    client = make_client(retry=RetryPolicy.none())
    sandbox.set_faults(error_503=1.0, retry_after=2)
    with pytest.raises(ServiceUnavailableError) as caught:
        client.send(_msg())
    _check_api_error(caught.value, 503, "service_unavailable", True)
    assert caught.value.retry_after == 2.0


# -- exactly once ------------------------------------------------------------


def test_dropped_connection_after_accept_delivers_once(client: Any, sandbox: Any) -> None:
    to = _addr()
    sandbox.set_faults(drop_after_accept=1.0)
    result = client.send(_msg(to))
    assert client.stats.retries == 1
    [stored] = sandbox.messages(to=to)
    assert stored["id"] == result.message_id
    stats = sandbox.stats()
    assert stats["duplicate_deliveries"] == 0
    assert stats["idempotent_replays"] == 1


def test_batch_timeout_after_accept_delivers_once(make_client: Any, sandbox: Any) -> None:
    client = make_client(timeout=0.3)
    recipients = [_addr() for _ in range(3)]
    sandbox.set_faults(slow_after_accept=1.0, slow_seconds=2.0)
    result = client.send_batch([_msg(to) for to in recipients])
    assert result.summary.queued == 3
    assert client.stats.retries == 1
    for to in recipients:
        assert len(sandbox.messages(to=to)) == 1
    assert sandbox.stats()["duplicate_deliveries"] == 0


def test_timeout_without_retries_raises_timeout_error(make_client: Any, sandbox: Any) -> None:
    client = make_client(timeout=0.3, retry=RetryPolicy.none())
    sandbox.set_faults(latency=2.0)
    with pytest.raises(TransportError) as caught:
        client.send(_msg())
    assert type(caught.value).__name__ == "SendmuxTimeoutError"
    assert "POST /emails/send" in str(caught.value)
    assert caught.value.retryable


# -- pacer hook ----------------------------------------------------------------


class RecordingPacer:
    """A pacer that only records: the client's side of the protocol under test."""

    def __init__(self) -> None:
        self.acquired = 0
        self.observed: list[RateLimitState] = []
        self.paused: list[float] = []

    def acquire(self) -> None:
        self.acquired += 1

    async def aacquire(self) -> None:
        self.acquired += 1

    def observe(self, state: RateLimitState) -> None:
        self.observed.append(state)

    async def aobserve(self, state: RateLimitState) -> None:
        self.observed.append(state)

    def pause(self, seconds: float) -> None:
        self.paused.append(seconds)

    async def apause(self, seconds: float) -> None:
        self.paused.append(seconds)


def test_pacer_is_asked_before_every_sending_attempt(make_client: Any, sandbox: Any) -> None:
    pacer = RecordingPacer()
    client = make_client(pacer=pacer)
    sandbox.set_faults(error_429=1.0, retry_after=1)
    client.send(_msg())
    assert pacer.acquired == 2  # the first attempt and the retry
    assert pacer.paused == [1.0]
    assert len(pacer.observed) == 2
    assert pacer.observed[-1].limit == api_limits.SENDING_REQUESTS_PER_WINDOW
    client.balance()  # the Management API has its own budget: not paced
    assert pacer.acquired == 2


# -- configuration ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("argument", "url"),
    [
        ("sending_url", "http://smtp.sendmux.ai/api/v1"),
        ("management_url", "http://app.sendmux.ai/api/v1"),
        ("sending_url", "ftp://127.0.0.1/api/v1"),
        ("sending_url", "http://10.0.0.1/api/v1"),
        ("sending_url", "http://localhost.example.com/api/v1"),
    ],
)
def test_plain_http_is_refused_unless_loopback(argument: str, url: str) -> None:
    with pytest.raises(ValueError, match=argument):
        SendmuxClient("smx_root_x", **{argument: url})


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:8000/api/v1", "http://127.8.9.10/x", "http://[::1]:80/", "http://localhost"],
)
def test_loopback_http_is_allowed(url: str) -> None:
    SendmuxClient("smx_root_x", sending_url=url, management_url=url).close()


def test_defaults_are_the_production_hosts() -> None:
    with SendmuxClient("smx_root_x") as client:
        assert client.sending_url == DEFAULT_SENDING_URL
        assert client.management_url == DEFAULT_MANAGEMENT_URL
        assert client.retry == RetryPolicy()


@pytest.mark.parametrize("key", ["", "   "])
def test_empty_api_key_is_refused(key: str) -> None:
    with pytest.raises(ValueError, match="api_key"):
        SendmuxClient(key)


def test_user_agent_names_the_package(client: Any, recorder: Any) -> None:
    client.me()
    assert recorder.requests[0].headers["user-agent"].startswith("sendmux-workflows/")
    assert "python-httpx/" in recorder.requests[0].headers["user-agent"]


# -- refused before any request -----------------------------------------------------


@pytest.mark.parametrize("count", [0, api_limits.MAX_BATCH_MESSAGES + 1])
def test_batch_size_is_checked_before_sending(client: Any, count: int) -> None:
    with pytest.raises(InvalidMessageError) as caught:
        client.send_batch([_msg() for _ in range(count)])
    [issue] = caught.value.errors
    assert issue.field == "messages"
    assert str(api_limits.MAX_BATCH_MESSAGES) in issue.message
    assert client.stats.requests == 0


def test_invalid_message_in_batch_names_its_index(client: Any) -> None:
    with pytest.raises(InvalidMessageError) as caught:
        client.send_batch([_msg(), _msg(subject="a\r\nBcc: x@example.com")])
    assert [issue.field for issue in caught.value.errors] == ["messages.1.subject"]
    assert client.stats.requests == 0


@pytest.mark.parametrize("key", ["", "has space", "x" * 256, "ünïcode"])
def test_bad_idempotency_key_is_refused(client: Any, key: str) -> None:
    with pytest.raises(InvalidMessageError) as caught:
        client.send(_msg(), idempotency_key=key)
    assert caught.value.errors[0].field == "idempotency_key"
    assert client.stats.requests == 0


def test_batch_over_25_mb_is_refused_before_sending(client: Any) -> None:
    half = "x" * (api_limits.MAX_REQUEST_BYTES // 2)
    with pytest.raises(InvalidMessageError) as caught:
        client.send_batch([_msg(html_body=half), _msg(html_body=half)])
    [issue] = caught.value.errors
    assert str(api_limits.MAX_REQUEST_BYTES) in issue.message
    assert client.stats.requests == 0


def test_send_batch_body_posts_a_planned_batch_as_it_is(client: Any, sandbox: Any) -> None:
    recipients = [_addr() for _ in range(3)]
    [batch] = [
        item
        for item in plan_batches(
            {"from": "Sender <sender@example.com>", "subject": "Hi {{ name }}", "text_body": "x"},
            recipients,
            job_key="body-test",
        )
        if isinstance(item, PlannedBatch)
    ]
    result = client.send_batch_body(batch.to_json(), idempotency_key=batch.idempotency_key)
    assert result.summary.queued == 3
    for to in recipients:
        [stored] = sandbox.messages(to=to)
        assert stored["id"] in {item.message_id for item in result.queued}
    again = client.send_batch_body(batch.to_json(), idempotency_key=batch.idempotency_key)
    assert again.summary.queued == 3
    assert sandbox.stats()["accepted_messages"] == 3  # the replay sent nobody twice


def test_send_batch_body_counts_a_call_in_the_stats_it_is_given(client: Any, sandbox: Any) -> None:
    client.send(_msg())
    body = batch_body([wire_message(_msg())])
    sandbox.set_faults(error_429=1.0, retry_after=1)  # the first retry sleep clears it
    job = ClientStats()
    result = client.send_batch_body(body, idempotency_key="own-stats", stats=job)
    assert result.summary.queued == 1
    assert (job.requests, job.retries, job.rate_limited) == (2, 1, 1)
    # The client's counters hold this call and the earlier send.
    assert (client.stats.requests, client.stats.retries, client.stats.rate_limited) == (3, 1, 1)
    # Given the client's own stats, a call is still counted once.
    client.send_batch_body(body, idempotency_key="own-stats-2", stats=client.stats)
    assert client.stats.requests == 4


def test_send_batch_body_checks_only_the_size(client: Any) -> None:
    with pytest.raises(InvalidMessageError) as caught:
        client.send_batch_body(b" " * (api_limits.MAX_REQUEST_BYTES + 1))
    [issue] = caught.value.errors
    assert issue.field == "body"
    assert client.stats.requests == 0


# -- cases the sandbox cannot produce (httpx.MockTransport) --------------------------


def _mock_client(handler: Any, **options: Any) -> SendmuxClient:
    options.setdefault("retry", RetryPolicy(jitter=0.0, sleep=lambda _: None))
    return SendmuxClient("smx_root_x", transport=httpx.MockTransport(handler), **options)


def test_html_502_from_a_proxy_is_a_retryable_server_error() -> None:
    # A proxy in front of the API answers with HTML; the sandbox never does.
    answers: Iterator[httpx.Response] = iter(
        [
            httpx.Response(502, html="<html><body>Bad Gateway</body></html>"),
            httpx.Response(
                200, json={"ok": True, "data": {"message_id": "eml_1", "status": "queued"}}
            ),
        ]
    )
    client = _mock_client(lambda request: next(answers))
    assert client.send(_msg()).message_id == "eml_1"
    assert client.stats.retries == 1


def test_retry_after_as_an_http_date() -> None:
    # RFC 9110 allows an HTTP-date; the sandbox only sends seconds.
    when = datetime.now(timezone.utc) + timedelta(seconds=30)
    header = when.strftime("%a, %d %b %Y %H:%M:%S GMT")
    client = _mock_client(
        lambda request: httpx.Response(503, headers={"Retry-After": header}, text=""),
        retry=RetryPolicy.none(),
    )
    with pytest.raises(ServiceUnavailableError) as caught:
        client.send(_msg())
    assert caught.value.retry_after is not None
    assert 25 <= caught.value.retry_after <= 30


def test_a_2xx_that_is_not_an_envelope_is_an_api_error() -> None:
    # Also a proxy's doing (a captive portal page with 200).
    client = _mock_client(lambda request: httpx.Response(200, text="<html>hi</html>"))
    with pytest.raises(APIError) as caught:
        client.send(_msg())
    assert caught.value.code == "invalid_response"
    assert client.stats.requests == 1


# -- async twins ---------------------------------------------------------------------


async def test_async_send_and_batch(async_client: AsyncSendmuxClient, sandbox: Any) -> None:
    to = _addr()
    sent = await async_client.send(_msg(to))
    assert sent.message_id.startswith("eml_")
    batch = await async_client.send_batch([_msg(), _msg(cc=_too_many_cc())])
    assert [item.status for item in batch.results] == ["queued", "failed"]
    assert len(sandbox.messages(to=to)) == 1


async def test_async_retry_after_and_single_delivery(
    async_client: AsyncSendmuxClient, sandbox: Any, recorder: Any
) -> None:
    sandbox.set_faults(error_503=1.0, retry_after=2)
    await async_client.send(_msg())
    assert async_client.stats.retry_delays == [2.0]
    to = _addr()
    sandbox.set_faults(drop_after_accept=1.0)
    await async_client.send(_msg(to))
    assert len(sandbox.messages(to=to)) == 1
    keys = [request.headers["idempotency-key"] for request in recorder.posts]
    assert keys[0] == keys[1]
    assert keys[2] == keys[3]
    assert keys[0] != keys[2]


class AsyncOnlyPacer(RecordingPacer):
    """Records like RecordingPacer, but fails if a blocking method is called."""

    def acquire(self) -> None:
        raise AssertionError("the async client called the blocking acquire()")

    def observe(self, state: RateLimitState) -> None:
        raise AssertionError("the async client called the blocking observe()")

    def pause(self, seconds: float) -> None:
        raise AssertionError("the async client called the blocking pause()")


async def test_async_client_awaits_the_pacers_async_methods(
    make_async_client: Any, sandbox: Any
) -> None:
    # A RedisPacer's observe()/pause() are Redis round trips: on the event
    # loop they must be the awaited twins, never the blocking ones.
    pacer = AsyncOnlyPacer()
    client = make_async_client(pacer=pacer)
    sandbox.set_faults(error_429=1.0, retry_after=1)
    await client.send(_msg())
    assert pacer.acquired == 2  # the first attempt and the retry
    assert pacer.paused == [1.0]
    assert len(pacer.observed) == 2
    await client.balance()  # the Management API has its own budget: not paced
    assert pacer.acquired == 2


async def test_async_errors_are_mapped(make_async_client: Any) -> None:
    client = make_async_client(api_key="smx_root_unknown_key_0000000000")
    with pytest.raises(AuthenticationError) as caught:
        await client.me()
    _check_api_error(caught.value, 401, "authentication_required", False)
    assert client.stats.requests == 1
    send_only = make_async_client(api_key=SEND_ONLY_API_KEY)
    with pytest.raises(PermissionDeniedError):
        await send_only.balance()


async def test_async_logs_etags_and_reads(async_client: AsyncSendmuxClient) -> None:
    tag = uuid.uuid4().hex[:8]
    await async_client.send_batch([_msg(f"a-{tag}-{i}@example.com") for i in range(5)])
    logs = [log async for log in async_client.iter_logs(search=f"a-{tag}", limit=2)]
    assert len(logs) == 5
    first = await async_client.get_log(logs[0].id)
    assert await async_client.get_log(logs[0].id) is first
    assert (await async_client.me()).permissions
    assert (await async_client.metrics()).summary.total >= 5
    assert (await async_client.balance()).currency


async def test_async_context_manager_closes(sandbox: Any) -> None:
    async with AsyncSendmuxClient(
        sandbox.api_key, sending_url=sandbox.sending_url, management_url=sandbox.management_url
    ) as client:
        await client.me()
    assert client._http.is_closed


def test_send_accepts_the_wire_shape_and_the_model_alike(client: Any, recorder: Any) -> None:
    wire = _msg(to="same@example.com")
    client.send(wire, idempotency_key="k1")
    client.send(EmailMessage.model_validate(wire), idempotency_key="k1")  # same body: a replay
    bodies = [json.loads(request.content) for request in recorder.posts]
    assert bodies[0] == bodies[1]


def test_one_client_shared_by_threads_counts_every_request(client: Any, sandbox: Any) -> None:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda i: client.send(_msg(f"t{i}@example.com")), range(40)))
    assert len({result.message_id for result in results}) == 40
    assert client.stats.requests == 40
    assert sandbox.stats()["accepted_messages"] == 40


def test_stats_convert_to_a_plain_dict(client: Any, sandbox: Any) -> None:
    import dataclasses

    sandbox.set_faults(error_503=1.0, retry_after=1)
    client.send(_msg())
    stats = dataclasses.asdict(client.stats)
    assert stats["requests"] == 2
    assert stats["retries"] == 1
    assert stats["retry_delays"] == [1.0]
    assert stats["last_rate_limit"]["limit"] == api_limits.SENDING_REQUESTS_PER_WINDOW
