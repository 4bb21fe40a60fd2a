"""Fixtures of the integration tests: brokers and Celery worker subprocesses.

Brokers: ``SENDMUX_TEST_BROKER_URL`` (RabbitMQ, default the local one),
``SENDMUX_TEST_REDIS_BROKER_URL`` (default ``SENDMUX_TEST_REDIS_URL``);
results in ``SENDMUX_TEST_REDIS_URL``. With ``CI=true`` an unreachable broker
fails the tests instead of skipping them. Workers are module-scoped.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from celery_workers import DEFAULT_RABBITMQ_URL, WRONG_KEY, Worker, in_ci, shown


@pytest.fixture(scope="module")
def rabbitmq_url() -> str:
    url = os.environ.get("SENDMUX_TEST_BROKER_URL", DEFAULT_RABBITMQ_URL)
    from kombu import Connection

    try:
        with Connection(url, connect_timeout=2) as connection:
            connection.ensure_connection(max_retries=1, timeout=2)
    except Exception as exc:
        reason = f"RabbitMQ not reachable at {shown(url)}: {type(exc).__name__}: {exc}"
        if in_ci():
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
            reason = f"Redis broker not reachable at {shown(url)}: {type(exc).__name__}"
            if in_ci():
                pytest.fail(f"{reason} (CI=true: broker tests must run, not skip)")
            pytest.skip(reason)
    return url


@pytest.fixture(scope="module")
def start_worker(
    sandbox_server: Any, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., Worker]]:
    workers: list[Worker] = []

    def start(broker: str, concurrency: int = 2, queue: str | None = None, **env: str) -> Worker:
        log = tmp_path_factory.mktemp("worker") / "worker.log"
        worker = Worker(
            broker=broker,
            backend=redis_url,
            sandbox=sandbox_server,
            log=log,
            concurrency=concurrency,
            queue=queue,
            **env,
        )
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
