"""The Celery tasks in real worker processes, on RabbitMQ and on Redis, against the sandbox.

Each worker is ``celery -A celery_worker_app worker --pool prefork`` in a
subprocess of its own session (so a kill reaches its pool too), on a queue
of its own. Brokers: ``SENDMUX_TEST_BROKER_URL`` (RabbitMQ, default the local
one), ``SENDMUX_TEST_REDIS_BROKER_URL`` (default ``SENDMUX_TEST_REDIS_URL``);
results in ``SENDMUX_TEST_REDIS_URL``. With ``CI=true`` an unreachable broker
fails the tests instead of skipping them.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

pytest.importorskip("celery")

from celery import Celery

from sendmux_celery import SEND_BATCH, SEND_EMAIL, batch_task_id
from sendmux_dispatch import key_fingerprint

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
DEFAULT_RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672//"
WRONG_KEY = "smx_root_wrong_0123456789abcdef"
WORKER_START_TIMEOUT = 30.0
RESULT_TIMEOUT = 40.0


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() == "true"


def _shown(url: str) -> str:
    return re.sub(r"//[^@/]*@", "//***@", url)


@pytest.fixture(scope="module")
def rabbitmq_url() -> str:
    url = os.environ.get("SENDMUX_TEST_BROKER_URL", DEFAULT_RABBITMQ_URL)
    from kombu import Connection

    try:
        with Connection(url, connect_timeout=2) as connection:
            connection.ensure_connection(max_retries=1, timeout=2)
    except Exception as exc:
        reason = f"RabbitMQ not reachable at {_shown(url)}: {type(exc).__name__}: {exc}"
        if _in_ci():
            pytest.fail(f"{reason} (CI=true: broker tests must run, not skip)")
        pytest.skip(f"{reason}; start rabbitmq-server or set SENDMUX_TEST_BROKER_URL")
    return url


@pytest.fixture(scope="module")
def redis_broker_url(redis_url: str) -> str:
    # Checked by the redis_url fixture when it is the same server; else here.
    url = os.environ.get("SENDMUX_TEST_REDIS_BROKER_URL", redis_url)
    if url != redis_url:
        import redis

        try:
            redis.Redis.from_url(url, socket_connect_timeout=2).ping()
        except Exception as exc:
            reason = f"Redis broker not reachable at {_shown(url)}: {type(exc).__name__}"
            if _in_ci():
                pytest.fail(f"{reason} (CI=true: broker tests must run, not skip)")
            pytest.skip(reason)
    return url


class Worker:
    """A ``celery worker`` subprocess (prefork, 2 processes) and its log file."""

    def __init__(self, *, broker: str, backend: str, sandbox: Any, log: Path, **env: str) -> None:
        self.queue = f"sendmux-test-{uuid.uuid4().hex[:10]}"
        self.broker = broker
        self.backend = backend
        self.log = log
        self.pacer_url = env.get("SENDMUX_CELERY_PACER")
        environ = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(REPO), str(HERE)]),
            "SENDMUX_CELERY_BROKER": broker,
            "SENDMUX_CELERY_BACKEND": backend,
            "SENDMUX_CELERY_QUEUE": self.queue,
            "SENDMUX_CELERY_SENDING_URL": sandbox.sending_url,
            "SENDMUX_CELERY_MANAGEMENT_URL": sandbox.management_url,
            "SENDMUX_CELERY_MAX_SECONDS": "150",
            "SENDMUX_API_KEY": sandbox.api_key,
            **env,
        }
        self._out = log.open("wb")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "celery_worker_app",
                "worker",
                "--pool",
                "prefork",
                "--concurrency",
                "2",
                "--queues",
                self.queue,
                "--hostname",
                f"{self.queue}@%h",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "--loglevel",
                "INFO",
            ],
            cwd=REPO,
            env=environ,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.producer = Celery("sendmux_test_producer", broker=broker, backend=backend)
        self.producer.conf.update(
            task_serializer="json", result_serializer="json", accept_content=["json"]
        )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self) -> None:
        deadline = time.monotonic() + WORKER_START_TIMEOUT
        while " ready." not in self.text():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"the worker did not start:\n{self.text()[-3000:]}")
            time.sleep(0.1)

    def pool(self) -> list[psutil.Process]:
        return psutil.Process(self.process.pid).children()

    def send_batch(self, messages: list[dict[str, Any]], key: str) -> Any:
        return self.producer.send_task(
            SEND_BATCH, args=[messages, key], queue=self.queue, task_id=batch_task_id(key)
        )

    def terminate(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # warm shutdown

    def send_email(self, message: dict[str, Any], key: str) -> Any:
        return self.producer.send_task(SEND_EMAIL, args=[message, key], queue=self.queue)

    def stop(self) -> None:
        self.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)
        # The worker's own session: its pool children go too, whatever state they are in.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)
        self._out.close()
        self.producer.close()


@pytest.fixture(scope="module")
def start_worker(
    sandbox_server: Any, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., Worker]]:
    workers: list[Worker] = []

    def start(broker: str, **env: str) -> Worker:
        log = tmp_path_factory.mktemp("worker") / "worker.log"
        worker = Worker(broker=broker, backend=redis_url, sandbox=sandbox_server, log=log, **env)
        workers.append(worker)
        worker.wait_ready()
        return worker

    yield start
    for worker in workers:
        worker.terminate()  # all at once: each warm shutdown takes a moment
    for worker in workers:
        worker.stop()
    for worker in workers:
        # The key of every worker (the sandbox's and the wrong one) is in no log line.
        text = worker.text()
        assert sandbox_server.api_key not in text
        assert WRONG_KEY not in text


@pytest.fixture(scope="module")
def rabbitmq_worker(start_worker: Callable[..., Worker], rabbitmq_url: str) -> Worker:
    return start_worker(rabbitmq_url)


@pytest.fixture(scope="module")
def redis_worker(
    start_worker: Callable[..., Worker], redis_broker_url: str, redis_url: str
) -> Worker:
    # Longer than any task here: a shorter one would hand a running task to a second worker.
    # This worker also paces through the shared Redis pacer (app.conf.sendmux_pacer_url).
    return start_worker(
        redis_broker_url, SENDMUX_CELERY_VISIBILITY="30", SENDMUX_CELERY_PACER=redis_url
    )


@pytest.fixture(params=["rabbitmq", "redis"])
def worker(request: pytest.FixtureRequest) -> Worker:
    return request.getfixturevalue(f"{request.param}_worker")  # type: ignore[no-any-return]


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


def _wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _final(result: Any) -> dict[str, Any]:
    """The task's result once it succeeded (a worker-lost FAILURE on the way is transient)."""
    _wait_for(lambda: result.state == "SUCCESS", RESULT_TIMEOUT, f"task {result.id}")
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
    _wait_for(lambda: sandbox.stats()["faults_injected"] >= 4, 20, "a task retry")
    # Now accepted, but the answer never arrives: the next attempt must replay.
    sandbox.set_faults(drop_after_accept=1.0)
    _wait_for(lambda: sandbox.stats()["accepted_messages"] > 0, 20, "the batch accepted")
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
    _wait_for(lambda: sandbox.stats()["accepted_messages"] == 100, 20, "the batch accepted")
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
