"""The Celery tasks in real worker processes, on RabbitMQ and on Redis, against the sandbox.

The workers and brokers come from conftest.py (``celery_workers.Worker``).
"""

from __future__ import annotations

import json
import signal
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest

pytest.importorskip("celery")

from celery_workers import RESULT_TIMEOUT, WRONG_KEY, Worker, wait_for

from sendmux_dispatch import key_fingerprint


def _messages(n: int, tag: str) -> list[dict[str, Any]]:
    return [
        {
            "from": "news@example.com",
            "to": {"email": f"{tag}-{i}@example.com", "name": f"Reader {i}"},
            "subject": f"Issue {i}",
            "text_body": "Hello",
        }
        for i in range(n)
    ]


def _final(result: Any) -> dict[str, Any]:
    """The task's result once it succeeded (a worker-lost FAILURE on the way is transient)."""
    wait_for(lambda: result.state == "SUCCESS", RESULT_TIMEOUT, f"task {result.id}")
    value: dict[str, Any] = result.result
    return value


def _assert_each_once(sandbox: Any, n: int, tag: str) -> None:
    stats = sandbox.stats()
    assert stats["accepted_messages"] == n
    assert stats["unique_recipients"] == n
    assert stats["duplicate_deliveries"] == 0
    for i in (0, n // 2, n - 1):
        assert len(sandbox.messages(f"{tag}-{i}@example.com")) == 1


def _assert_no_key(summary: dict[str, Any], sandbox: Any) -> None:
    text = json.dumps(summary)
    assert sandbox.api_key not in text
    assert WRONG_KEY not in text
    assert "smx_" not in text


def _pacer_keys(url: str, api_key: str, *, delete: bool = False) -> list[str]:
    import redis

    store = redis.Redis.from_url(url)
    try:
        keys = [k.decode() for k in store.keys(f"*{key_fingerprint(api_key)}*")]
        if delete and keys:
            store.delete(*keys)
        return [k.decode() for k in store.keys("sendmux:pacer*")]
    finally:
        store.close()


def test_batch_of_100_is_delivered_once_even_when_sent_twice(worker: Worker, sandbox: Any) -> None:
    tag = uuid.uuid4().hex[:8]
    messages = _messages(100, tag)
    key = f"job-{tag}-batch-0"
    if worker.pacer_url:
        _pacer_keys(worker.pacer_url, sandbox.api_key, delete=True)  # none left from before

    sent = worker.send_batch(messages, key)
    first = _final(sent)
    # The producer publishing the same batch again (a re-run, same task id): a replay.
    sent.forget()
    second = _final(worker.send_batch(messages, key))

    assert first["status"] == "sent"
    assert first["counts"]["queued"] == 100
    assert all(first["message_ids"])
    assert second["message_ids"] == first["message_ids"]
    assert sandbox.stats()["idempotent_replays"] == 1
    _assert_each_once(sandbox, 100, tag)
    _assert_no_key(first, sandbox)
    if worker.pacer_url:
        keys = _pacer_keys(worker.pacer_url, sandbox.api_key)
        # The two requests went through the shared pacer, filed under the key's fingerprint.
        assert any(key_fingerprint(sandbox.api_key) in k for k in keys)
        assert not any(sandbox.api_key in k for k in keys)


def test_one_email_and_a_batch_with_invalid_messages(rabbitmq_worker: Worker, sandbox: Any) -> None:
    tag = uuid.uuid4().hex[:8]
    [message] = _messages(1, tag)
    email = _final(rabbitmq_worker.send_email(message, f"job-{tag}-one"))
    again = _final(rabbitmq_worker.send_email(message, f"job-{tag}-one"))
    assert email["status"] == "sent"
    assert again["message_id"] == email["message_id"]
    assert len(sandbox.messages(f"{tag}-0@example.com")) == 1

    mixed = _messages(3, f"{tag}m")
    mixed[1]["to"] = "not-an-address"
    summary = _final(rabbitmq_worker.send_batch(mixed, f"job-{tag}-mixed"))
    assert summary["status"] == "partial"
    assert summary["counts"]["queued"] == 2
    assert summary["counts"]["invalid"] == 1
    assert [f["index"] for f in summary["failures"]] == [1]
    assert summary["message_ids"][1] is None
    assert all(summary["message_ids"][i] for i in (0, 2))

    requests = sandbox.stats()["requests_by_api"].get("sending", 0)
    none_valid = _final(rabbitmq_worker.send_batch([mixed[1]], f"job-{tag}-none"))
    assert none_valid["status"] == "failed"
    assert none_valid["error"]["code"] == "invalid_message"
    assert none_valid["counts"]["invalid"] == 1
    assert sandbox.stats()["requests_by_api"].get("sending", 0) == requests  # no request
    assert sandbox.stats()["accepted_messages"] == 3


def test_batch_retried_through_503s_and_a_dropped_connection_is_delivered_once(
    redis_worker: Worker, sandbox: Any
) -> None:
    tag = uuid.uuid4().hex[:8]
    sandbox.set_faults(error_503=1.0, retry_after=1)
    result = redis_worker.send_batch(_messages(100, tag), f"job-{tag}-batch-0")

    # Three in-process attempts, then the fourth request is the task's retry.
    wait_for(lambda: sandbox.stats()["faults_injected"] >= 4, 20, "a task retry")
    # Now accepted, but the answer never arrives: the next attempt must replay.
    sandbox.set_faults(drop_after_accept=1.0)
    wait_for(lambda: sandbox.stats()["accepted_messages"] > 0, 20, "the batch accepted")
    sandbox.set_faults()
    summary = _final(result)

    assert summary["status"] == "sent"
    assert summary["attempts"] >= 2
    assert summary["counts"]["queued"] == 100
    assert sandbox.stats()["faults_by_kind"].get("drop_after_accept", 0) >= 1
    _assert_each_once(sandbox, 100, tag)
    assert "Retry" in redis_worker.text()


def test_batch_whose_retries_run_out_is_reported_failed_with_the_error(
    redis_worker: Worker, sandbox: Any
) -> None:
    tag = uuid.uuid4().hex[:8]
    sandbox.set_faults(error_503=1.0, retry_after=0)
    summary = _final(redis_worker.send_batch(_messages(100, tag), f"job-{tag}-batch-0"))

    # The test app's policy allows 4 attempts (3 HTTP requests each): then a verdict.
    assert summary["status"] == "failed"
    assert summary["attempts"] == 4
    assert summary["counts"]["failed"] == 100
    assert summary["error"]["type"] == "ServiceUnavailableError"
    assert summary["error"]["retryable"] is True
    assert {f["code"] for f in summary["failures"]} == {summary["error"]["code"]}
    assert sandbox.stats()["accepted_messages"] == 0
    assert "failed after 4 attempt(s)" in redis_worker.text()


def test_worker_pool_killed_mid_batch_redelivers_and_delivers_once(
    rabbitmq_worker: Worker, sandbox: Any
) -> None:
    tag = uuid.uuid4().hex[:8]
    # Accepted and delivered, then the answer is held: the kill lands in that window.
    sandbox.set_faults(slow_after_accept=1.0, slow_seconds=5.0)
    result = rabbitmq_worker.send_batch(_messages(100, tag), f"job-{tag}-batch-0")
    wait_for(lambda: sandbox.stats()["accepted_messages"] == 100, 20, "the batch accepted")
    for process in rabbitmq_worker.pool():
        process.send_signal(signal.SIGKILL)
    sandbox.set_faults()
    summary = _final(result)

    assert summary["status"] == "sent"
    assert summary["counts"]["queued"] == 100
    assert sandbox.stats()["idempotent_replays"] >= 1
    _assert_each_once(sandbox, 100, tag)
    assert "WorkerLostError" in rabbitmq_worker.text()


def test_wrong_key_fails_fast_with_the_error_in_the_result_and_no_key_anywhere(
    start_worker: Callable[..., Worker], rabbitmq_url: str, sandbox: Any
) -> None:
    worker = start_worker(rabbitmq_url, SENDMUX_API_KEY=WRONG_KEY)
    tag = uuid.uuid4().hex[:8]
    started = time.monotonic()
    summary = _final(worker.send_batch(_messages(100, tag), f"job-{tag}-batch-0"))

    assert summary["status"] == "failed"
    assert summary["error"]["type"] == "AuthenticationError"
    assert summary["error"]["status"] == 401
    assert summary["attempts"] == 1
    assert summary["counts"]["not_sent"] == 100
    assert time.monotonic() - started < 10
    stats = sandbox.stats()
    assert stats["accepted_messages"] == 0
    assert stats["requests_by_api"].get("sending", 0) == 1  # no retries of a 401
    _assert_no_key(summary, sandbox)
    assert WRONG_KEY not in worker.text()
    assert "AuthenticationError" in worker.text()
