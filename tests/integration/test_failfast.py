"""Fail fast and say what you wait for (issue 8 §4), and the async client across loops (§5).

Every test runs against the sandbox on loopback and counts what it accepted;
the retry policy's injected sleeps (``sleep_log``) mean nothing really waits.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from sendmux_dispatch import (
    AsyncSendmuxClient,
    RetryPolicy,
    SendmuxClient,
    adispatch,
    dispatch,
)
from sendmux_dispatch.errors import (
    InputError,
    RateLimitError,
    SendmuxError,
    ServiceUnavailableError,
)
from sendmux_dispatch.pacing import InProcessPacer
from sendmux_dispatch.retry import LONG_WAIT_SECONDS

TEMPLATE: dict[str, Any] = {
    "from": "news@shop.example.com",
    "subject": "Hello {{ name }}",
    "text_body": "Hello {{ name }}.",
}
MESSAGE: dict[str, Any] = {
    "from": "news@shop.example.com",
    "to": "ann@example.com",
    "subject": "Hi",
    "text_body": "Hello",
}


def people(n: int, *, then: BaseException | None = None) -> Iterator[dict[str, str]]:
    """``n`` recipients; then ``then`` is raised, as a reader meeting a bad line does."""
    for i in range(n):
        yield {"email": f"p{i}@example.org", "name": f"P{i}"}
    if then is not None:
        raise then


def accepted(sandbox: Any, *indexes: int) -> list[int]:
    return [len(sandbox.messages(to=f"p{i}@example.org")) for i in indexes]


def totals_add_up(report: Any) -> bool:
    return bool(
        report.total
        == report.queued
        + report.failed
        + report.invalid
        + report.duplicates_dropped
        + report.already_accepted
        + report.not_sent
    )


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# --- Retry-After beyond the policy ----------------------------------------------


def test_a_retry_after_beyond_the_policy_raises_at_once_saying_when(
    sandbox: Any, client: SendmuxClient, sleep_log: Any
) -> None:
    sandbox.set_faults(error_429=1.0, retry_after=3600)

    with pytest.raises(RateLimitError) as caught:
        client.send(MESSAGE)

    assert sleep_log.delays == []  # not a single 120 s wait
    message = caught.value.message
    assert "3600 s" in message
    assert re.search(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", message), message
    assert caught.value.retry_after == 3600
    assert sandbox.messages(to="ann@example.com") == []


def test_a_503_with_a_long_retry_after_raises_service_unavailable_at_once(
    sandbox: Any, client: SendmuxClient, sleep_log: Any
) -> None:
    sandbox.set_faults(error_503=1.0, retry_after=900)

    with pytest.raises(ServiceUnavailableError, match="900 s"):
        client.send(MESSAGE)
    assert sleep_log.delays == []
    assert client.stats.requests == 1


async def test_the_async_client_raises_at_once_too(
    sandbox: Any, async_client: AsyncSendmuxClient, sleep_log: Any
) -> None:
    sandbox.set_faults(error_429=1.0, retry_after=3600)

    with pytest.raises(RateLimitError, match="3600 s"):
        await async_client.send(MESSAGE)
    assert sleep_log.delays == []


def test_dispatch_stops_on_a_long_retry_after_and_counts_the_rest_not_sent(
    sandbox: Any, client: SendmuxClient
) -> None:
    sandbox.set_faults(error_429=1.0, retry_after=3600)

    report = dispatch(client, TEMPLATE, people(1000), job_key="long-wait", concurrency=2)

    assert report.stop_cause == "rate_limited"
    assert report.stopped_reason is not None
    assert "3600 s" in report.stopped_reason
    assert report.not_sent == 1000
    assert report.queued == 0
    assert client.stats.requests <= 2  # only the batches already in flight asked
    assert sandbox.stats()["accepted_messages"] == 0


def test_a_negative_retry_after_means_backoff_not_an_instant_retry(
    sandbox: Any, client: SendmuxClient, sleep_log: Any
) -> None:
    sandbox.set_faults(error_503=1.0, retry_after=-5)

    client.send(MESSAGE)  # the first sleep clears the fault (sleep_log's hook)

    assert sleep_log.delays == [client.retry.initial_delay]
    assert len(sandbox.messages(to="ann@example.com")) == 1


# --- the circuit breaker ----------------------------------------------------------


def test_a_server_failing_every_batch_the_same_way_trips_the_breaker(
    sandbox: Any, make_client: Any, sleep_log: Any
) -> None:
    sleep_log.hooks.clear()  # the 500s never stop
    sandbox.set_faults(error_500=1.0)
    client = make_client(retry=RetryPolicy(max_attempts=2, jitter=0.0, sleep=sleep_log))

    report = dispatch(
        client,
        TEMPLATE,
        people(2000),
        job_key="outage",
        concurrency=1,
        max_consecutive_failures=3,
    )

    assert report.stop_cause == "outage"
    assert report.stopped_reason is not None
    assert "3 batches in a row" in report.stopped_reason
    assert "ServerError" in report.stopped_reason
    assert report.failed == 300  # the three batches that were tried
    assert report.not_sent == 1700
    assert report.requests == 6  # 3 batches x 2 attempts, then nothing
    assert totals_add_up(report)


def test_a_refused_connection_trips_the_breaker_with_the_default_limit(
    make_client: Any, sleep_log: Any
) -> None:
    url = f"http://127.0.0.1:{closed_port()}/api/v1"
    client = make_client(
        sending_url=url, retry=RetryPolicy(max_attempts=2, jitter=0.0, sleep=sleep_log)
    )

    report = dispatch(client, TEMPLATE, people(1500), job_key="refused", concurrency=1)

    assert report.stop_cause == "outage"
    assert report.stopped_reason is not None
    assert "TransportError" in report.stopped_reason
    assert report.failed == 500  # the default: 5 batches in a row
    assert report.not_sent == 1000


async def test_the_async_driver_has_the_same_breaker(
    sandbox: Any, make_async_client: Any, sleep_log: Any
) -> None:
    sleep_log.hooks.clear()
    sandbox.set_faults(error_500=1.0)
    client = make_async_client(
        retry=RetryPolicy(
            max_attempts=1, jitter=0.0, sleep=sleep_log, async_sleep=sleep_log.async_sleep
        )
    )

    report = await adispatch(
        client,
        TEMPLATE,
        people(1000),
        job_key="a-outage",
        concurrency=1,
        max_consecutive_failures=2,
    )

    assert report.stop_cause == "outage"
    assert (report.failed, report.not_sent) == (200, 800)


def test_a_batch_that_gets_through_resets_the_breaker(
    sandbox: Any, make_client: Any, sleep_log: Any
) -> None:
    # Every other batch fails: never two in a row, so the job runs to the end.
    sleep_log.hooks.clear()
    client = make_client(retry=RetryPolicy.none())
    batches = 0

    def alternate(_progress: Any) -> None:
        nonlocal batches
        batches += 1
        if batches % 2:
            sandbox.set_faults()
        else:
            sandbox.set_faults(error_500=1.0)

    sandbox.set_faults(error_500=1.0)
    report = dispatch(
        client,
        TEMPLATE,
        people(1000),
        job_key="flaky",
        concurrency=1,
        max_consecutive_failures=2,
        on_progress=alternate,
    )

    assert report.stop_cause is None
    assert (report.queued, report.failed) == (500, 500)


# --- InputError and Ctrl-C ----------------------------------------------------------


@pytest.mark.parametrize("concurrency", [1, 3])
def test_an_unreadable_line_stops_the_job_and_nothing_after_it_is_sent(
    sandbox: Any, client: SendmuxClient, concurrency: int
) -> None:
    bad = InputError("unterminated quote from line 252", path="list.csv", line=252)

    report = dispatch(
        client, TEMPLATE, people(250, then=bad), job_key="bad-line", concurrency=concurrency
    )

    assert report.stop_cause == "input"
    assert report.stopped_reason is not None
    assert "line 252" in report.stopped_reason
    assert report.total == 250
    assert totals_add_up(report)
    # The two full batches went out; the 50 rows read before the bad line
    # were not sent as a partial batch (a fixed re-run sends them in full).
    assert (report.queued, report.not_sent) == (200, 50)
    assert sandbox.stats()["accepted_messages"] == 200
    assert accepted(sandbox, 0, 199, 200, 249) == [1, 1, 0, 0]


async def test_the_async_driver_stops_on_an_unreadable_line_too(
    sandbox: Any, async_client: AsyncSendmuxClient
) -> None:
    bad = InputError("invalid UTF-8 on line 131", line=131)

    report = await adispatch(async_client, TEMPLATE, people(130, then=bad), job_key="a-bad")

    assert report.stop_cause == "input"
    assert report.stopped_reason is not None
    assert "line 131" in report.stopped_reason
    assert (report.queued, report.not_sent) == (100, 30)
    assert sandbox.stats()["accepted_messages"] == 100


def test_ctrl_c_while_reading_stops_taking_batches_and_returns_the_report(
    sandbox: Any, client: SendmuxClient
) -> None:
    report = dispatch(client, TEMPLATE, people(250, then=KeyboardInterrupt()), job_key="ctrl-c")

    assert report.stop_cause == "interrupted"
    assert (report.queued, report.not_sent) == (200, 50)
    assert totals_add_up(report)
    assert sandbox.stats()["accepted_messages"] == 200


def test_ctrl_c_while_waiting_settles_the_batches_in_flight(
    sandbox: Any, client: SendmuxClient
) -> None:
    sandbox.set_faults(latency=0.2)
    calls = 0

    def interrupt_once(_progress: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise KeyboardInterrupt

    report = dispatch(
        client,
        TEMPLATE,
        people(1000),
        job_key="ctrl-c-wait",
        concurrency=2,
        on_progress=interrupt_once,
    )

    assert report.stop_cause == "interrupted"
    assert totals_add_up(report)
    assert report.total >= 200
    # The batch that ended and the one still in flight were both settled.
    assert report.queued == sandbox.stats()["accepted_messages"] == 200
    assert report.not_sent == report.total - 200


def test_a_second_ctrl_c_abandons_the_batches_in_flight(
    sandbox: Any, client: SendmuxClient
) -> None:
    sandbox.set_faults(latency=1.5)
    # The first Ctrl-C comes from the reader (after two batches went out), the
    # second as a real SIGINT while dispatch waits for those two.
    second = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT))
    started = time.monotonic()
    second.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            dispatch(
                client,
                TEMPLATE,
                people(250, then=KeyboardInterrupt()),
                job_key="ctrl-c-twice",
                concurrency=3,
            )
    finally:
        second.cancel()
    assert time.monotonic() - started < 1.3  # did not wait for the batches in flight
    time.sleep(1.6)  # let the abandoned requests land before the next test's reset


async def test_cancelling_an_async_job_cancels_its_batches_and_re_raises(
    sandbox: Any, make_async_client: Any
) -> None:
    sandbox.set_faults(latency=0.5)
    client = make_async_client()
    job = asyncio.ensure_future(
        adispatch(client, TEMPLATE, people(1000), job_key="cancel", concurrency=3)
    )
    await asyncio.sleep(0.2)
    job.cancel()
    with pytest.raises(asyncio.CancelledError):
        await job
    # Nothing of the job is left running once the cancellation returned.
    assert asyncio.all_tasks() == {asyncio.current_task()}

    sandbox.set_faults()
    await asyncio.sleep(0.6)  # the server finishes the requests cut off
    report = await adispatch(client, TEMPLATE, people(1000), job_key="cancel")
    assert report.queued == 1000
    assert sandbox.stats()["duplicate_deliveries"] == 0


# --- waits are logged ---------------------------------------------------------------


def test_a_long_retry_wait_is_logged_with_what_it_waits_for(
    sandbox: Any, client: SendmuxClient, sleep_log: Any, caplog: pytest.LogCaptureFixture
) -> None:
    sandbox.set_faults(error_503=1.0, retry_after=10)

    with caplog.at_level(logging.INFO, logger="sendmux_dispatch"):
        client.send(MESSAGE)

    assert sleep_log.delays == [10.0]
    waits = [r for r in caplog.records if "waiting 10.0 s" in r.getMessage()]
    assert waits
    assert waits[0].levelno == logging.WARNING
    assert "Retry-After" in waits[0].getMessage()
    assert all(sandbox.api_key not in r.getMessage() for r in caplog.records)


def test_a_long_pacer_wait_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    pacer = InProcessPacer()
    pacer.pause(LONG_WAIT_SECONDS + 0.1)

    with caplog.at_level(logging.INFO, logger="sendmux_dispatch"):
        pacer.acquire()

    assert any("pacer: waiting" in r.getMessage() for r in caplog.records)


# --- the async client and event loops -------------------------------------------------


def test_an_async_client_works_in_a_second_event_loop_and_sends_once(sandbox: Any) -> None:
    client = AsyncSendmuxClient(
        sandbox.api_key, sending_url=sandbox.sending_url, management_url=sandbox.management_url
    )

    async def send(to: str) -> None:
        await client.send({**MESSAGE, "to": to})

    asyncio.run(send("first@example.com"))
    asyncio.run(send("second@example.com"))  # a bare RuntimeError after sending, before
    asyncio.run(client.aclose())

    assert len(sandbox.messages(to="first@example.com")) == 1
    assert len(sandbox.messages(to="second@example.com")) == 1
    assert sandbox.stats()["accepted_messages"] == 2


def test_an_async_client_on_a_callers_transport_refuses_a_new_loop_before_sending(
    sandbox: Any,
) -> None:
    import httpx

    client = AsyncSendmuxClient(
        sandbox.api_key,
        sending_url=sandbox.sending_url,
        management_url=sandbox.management_url,
        transport=httpx.AsyncHTTPTransport(),
    )

    async def send(to: str) -> None:
        await client.send({**MESSAGE, "to": to})

    asyncio.run(send("first@example.com"))
    with pytest.raises(SendmuxError) as caught:
        asyncio.run(send("second@example.com"))

    assert caught.value.code == "event_loop_changed"
    assert "nothing was sent" in caught.value.message
    assert sandbox.messages(to="second@example.com") == []
    assert sandbox.stats()["accepted_messages"] == 1
