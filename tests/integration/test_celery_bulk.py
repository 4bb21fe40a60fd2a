"""send_bulk through real workers: 20,000 recipients, each delivered exactly once.

One worker at concurrency 2 (two pool processes; on this project's 2-core
test machine a second worker process only adds a second main process) per
broker: RabbitMQ with the Redis result backend, and Redis as the broker.
Progress is read from the Redis counters (the result backend's Redis).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

pytest.importorskip("celery")

from celery_workers import Worker, wait_for

from sendmux_celery import BulkJob, send_bulk

TEMPLATE = {
    "from": "news@example.com",
    "subject": "Hello {{ name }}",
    "text_body": "Dear {{ name }}, your code is {{ code }}.",
}
BULK_TIMEOUT = 240.0


def _recipients(n: int, tag: str, read: list[int]) -> Iterator[dict[str, Any]]:
    # A generator: send_bulk must stream it (``read`` counts what it pulled).
    for i in range(n):
        read[0] += 1
        yield {"email": f"{tag}-{i}@example.com", "name": f"Reader {i}", "code": f"C{i}"}


def _assert_each_once(sandbox: Any, n: int, tag: str) -> None:
    stats = sandbox.stats()
    assert stats["duplicate_deliveries"] == 0
    assert stats["unique_recipients"] == n
    assert stats["accepted_messages"] == n
    for i in (0, n // 2, n - 1):
        [message] = sandbox.messages(f"{tag}-{i}@example.com")
        assert message["subject"] == f"Hello Reader {i}"


@pytest.fixture(params=["rabbitmq", "redis"])
def worker(request: pytest.FixtureRequest) -> Worker:
    return request.getfixturevalue(f"{request.param}_worker")  # type: ignore[no-any-return]


def test_bulk_job_of_20000_recipients_is_delivered_exactly_once(
    worker: Worker, sandbox: Any
) -> None:
    tag = uuid.uuid4().hex[:8]
    read = [0]
    started = time.monotonic()
    job = send_bulk(
        worker.producer,
        TEMPLATE,
        _recipients(20_000, tag, read),
        job_key=f"newsletter/{tag}",
        queue=worker.queue,
    )
    assert read[0] == 20_000
    planned = job.progress()
    assert planned.planning_done
    assert (planned.batches, planned.messages, planned.recipients) == (200, 20_000, 20_000)

    report = job.wait(timeout=BULK_TIMEOUT)
    elapsed = time.monotonic() - started

    assert report.total == 20_000
    assert report.queued == 20_000
    assert report.ok, report.summary_line()
    assert report.batches == 200
    assert report.requests >= 200
    done = job.progress()
    assert (done.batches_done, done.messages_done, done.in_flight) == (200, 20_000, 0)
    _assert_each_once(sandbox, 20_000, tag)
    assert sandbox.stats()["requests_by_api"]["sending"] == 200
    # A handle made later (another process) reads the same counters.
    assert BulkJob(worker.producer, f"newsletter/{tag}").report().queued == 20_000
    assert sandbox.api_key not in json.dumps(report.as_dict())
    print(f"20000 recipients via {worker.broker.split(':')[0]}: {elapsed:.1f} s")


def test_rerun_of_a_finished_bulk_job_sends_nothing_again_and_counts_once(
    rabbitmq_worker: Worker, sandbox: Any
) -> None:
    tag = uuid.uuid4().hex[:8]
    rows = [
        {"email": f"{tag}-{i}@example.com", "name": f"Reader {i}", "code": "x"} for i in range(250)
    ]
    rows.insert(7, {"email": f"{tag}-3@EXAMPLE.com", "name": "again", "code": "x"})
    rows.insert(9, {"email": "not an address", "name": "bad", "code": "x"})
    key = f"rerun/{tag}"
    first = send_bulk(
        rabbitmq_worker.producer, TEMPLATE, rows, job_key=key, queue=rabbitmq_worker.queue
    ).wait(timeout=60)
    again = send_bulk(
        rabbitmq_worker.producer, TEMPLATE, rows, job_key=key, queue=rabbitmq_worker.queue
    )
    wait_for(lambda: sandbox.stats()["idempotent_replays"] >= 3, 60, "the re-run's replays")
    second = again.wait(timeout=60)

    for report in (first, second):
        assert (report.total, report.queued) == (252, 250)
        assert (report.duplicates_dropped, report.invalid) == (1, 1)
        assert report.batches == 3
        assert [f.position for f in report.failures] == [9]
        assert report.failures[0].code == "invalid_email"
    _assert_each_once(sandbox, 250, tag)


# RabbitMQ only: on Redis a killed worker's unacked batches came back only
# after ~100 s even with visibility_timeout=5 (kombu's restore of unacked
# messages), too slow for this suite.
@pytest.mark.parametrize("broker", ["rabbitmq"])
def test_worker_killed_mid_job_and_restarted_loses_and_duplicates_nothing(
    broker: str, start_worker: Callable[..., Worker], request: pytest.FixtureRequest, sandbox: Any
) -> None:
    url = request.getfixturevalue(f"{broker}_url" if broker == "rabbitmq" else "redis_broker_url")
    # On Redis a dead worker's unacked batch comes back after the visibility
    # timeout: it would need a short one here.
    env = {"SENDMUX_CELERY_VISIBILITY": "5"} if broker == "redis" else {}
    first = start_worker(url, **env)
    tag = uuid.uuid4().hex[:8]
    # Each request held a little, so batches are in flight when the kill lands.
    sandbox.set_faults(latency=0.05)
    job = send_bulk(
        first.producer,
        TEMPLATE,
        _recipients(5_000, tag, [0]),
        job_key=f"kill/{tag}",
        queue=first.queue,
    )
    wait_for(lambda: job.progress().batches_done >= 10, 60, "ten batches done")
    first.kill()
    assert job.progress().in_flight > 0
    second = start_worker(url, queue=first.queue, **env)
    report = job.wait(timeout=120)
    sandbox.set_faults()

    assert report.ok, report.summary_line()
    assert (report.total, report.queued, report.batches) == (5_000, 5_000, 50)
    _assert_each_once(sandbox, 5_000, tag)
    assert " ready." in second.text()


@pytest.fixture(scope="module")
def ledger_worker(start_worker: Callable[..., Worker], rabbitmq_url: str, redis_url: str) -> Worker:
    worker = start_worker(rabbitmq_url, SENDMUX_CELERY_LEDGER=redis_url)
    worker.producer.conf.sendmux_ledger_url = redis_url
    return worker


def test_rerun_with_a_changed_list_on_the_ledger_mails_nobody_twice(
    ledger_worker: Worker, sandbox: Any
) -> None:
    worker = ledger_worker
    tag = uuid.uuid4().hex[:8]
    rows = [
        {"email": f"{tag}-{i}@example.com", "name": f"Reader {i}", "code": "x"} for i in range(900)
    ]
    key = f"ledger/{tag}"
    first = send_bulk(worker.producer, TEMPLATE, rows[300:], job_key=key, queue=worker.queue)
    assert first.wait(timeout=60).queued == 600
    # The re-run's list has 300 new rows in front and the old ones reversed:
    # every batch differs, so batch keys alone would send all 600 again.
    changed = rows[:300] + rows[300:][::-1]
    second = send_bulk(worker.producer, TEMPLATE, changed, job_key=key, queue=worker.queue)
    report = second.wait(timeout=60)

    assert (report.total, report.queued, report.already_accepted) == (900, 300, 600)
    assert report.ok, report.summary_line()
    _assert_each_once(sandbox, 900, tag)
    assert sandbox.stats()["idempotent_replays"] == 0


def test_batches_lost_before_any_worker_took_them_are_replayed_by_the_rerun(
    ledger_worker: Worker, redis_url: str, sandbox: Any
) -> None:
    from sendmux_dispatch.ledger import RedisLedger

    worker = ledger_worker
    tag = uuid.uuid4().hex[:8]
    rows = [
        {"email": f"{tag}-{i}@example.com", "name": f"Reader {i}", "code": "x"} for i in range(500)
    ]
    key = f"lost/{tag}"
    # The first run publishes to a queue nobody consumes, then the queue is lost.
    lost = f"{worker.queue}-lost"
    send_bulk(worker.producer, TEMPLATE, rows, job_key=key, queue=lost)
    with worker.producer.connection_for_write() as connection:
        connection.default_channel.queue_delete(lost)
    with RedisLedger(redis_url) as ledger:
        stats = ledger.stats(key)
        assert stats is not None
        assert (stats.pending, stats.accepted) == (5, 0)

    # The re-run's list is reordered: the pending batches go out under their recorded keys.
    report = send_bulk(worker.producer, TEMPLATE, rows[::-1], job_key=key, queue=worker.queue).wait(
        timeout=60
    )
    assert (report.total, report.queued, report.batches) == (500, 500, 5)
    _assert_each_once(sandbox, 500, tag)
    with RedisLedger(redis_url) as ledger:
        stats = ledger.stats(key)
        assert stats is not None
        assert (stats.pending, stats.accepted) == (0, 500)
