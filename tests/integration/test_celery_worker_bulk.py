"""The in-worker bulk task and the shared pacer, through real worker processes.

``sendmux.send_bulk_file`` reads a recipient file on the worker and streams
it into batch tasks (the producer's ``send_bulk``), reporting ``PROGRESS``;
two workers at concurrency 4 on one key stay under the sandbox's limit
through the shared Redis pacer, and use most of it.
"""

from __future__ import annotations

import csv
import json
import math
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("celery")

from celery_workers import Worker, wait_for

from sendmux_celery import PROGRESS, SEND_BULK_FILE, send_bulk

TEMPLATE = {
    "from": "news@example.com",
    "subject": "Hello {{ name }}",
    "text_body": "Dear {{ name }}, your code is {{ code }}.",
}


def _write_csv(path: Path, tag: str, n: int) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["email", "name", "code"])
        for i in range(n):
            writer.writerow([f"{tag}-{i}@example.com", f"Reader {i}", f"C{i}"])
    return path


def _states(result: Any, timeout: float) -> list[tuple[str, Any]]:
    """Every (state, meta) the task went through, polled until it is ready."""
    seen: list[tuple[str, Any]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state, info = result.state, result.info
        if not seen or seen[-1][0] != state or state == PROGRESS:
            seen.append((state, info))
        if result.ready():
            return seen
        time.sleep(0.02)
    raise AssertionError(f"the bulk task is not done after {timeout:g} s: {seen[-3:]}")


def test_bulk_file_task_sends_a_csv_exactly_once_and_reports_progress(
    rabbitmq_worker: Worker, sandbox: Any, tmp_path: Path
) -> None:
    worker = rabbitmq_worker
    tag = uuid.uuid4().hex[:8]
    path = _write_csv(tmp_path / "subscribers.csv", tag, 3_000)
    # Each send held a little, so the job lasts long enough to be watched.
    sandbox.set_faults(latency=0.03)
    result = worker.producer.send_task(
        SEND_BULK_FILE, args=[str(path), TEMPLATE, f"file/{tag}"], queue=worker.queue
    )
    states = _states(result, 120)
    sandbox.set_faults()

    assert result.state == "SUCCESS", states[-1]
    progress = [meta for state, meta in states if state == PROGRESS]
    assert progress, f"no PROGRESS state seen: {[s for s, _ in states]}"
    assert {"job_key", "stage", "read", "batches_done", "queued", "in_flight"} <= set(progress[-1])
    assert all(meta["job_key"] == f"file/{tag}" for meta in progress)
    report = result.get(timeout=5)
    assert (report["total"], report["queued"], report["batches"]) == (3_000, 3_000, 30)
    assert report["ok"] is True
    stats = sandbox.stats()
    assert stats["duplicate_deliveries"] == 0
    assert (stats["accepted_messages"], stats["unique_recipients"]) == (3_000, 3_000)
    [message] = sandbox.messages(f"{tag}-1234@example.com")
    assert message["subject"] == "Hello Reader 1234"
    assert sandbox.api_key not in json.dumps([report, progress])


def test_bulk_file_task_takes_json_lines_and_a_rerun_mails_nobody_twice(
    rabbitmq_worker: Worker, sandbox: Any, tmp_path: Path
) -> None:
    worker = rabbitmq_worker
    tag = uuid.uuid4().hex[:8]
    path = tmp_path / "list.jsonl"
    lines = [{"email": f"{tag}-{i}@example.com", "name": f"R{i}", "code": "x"} for i in range(250)]
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\nnot json\n")
    reports = [
        worker.producer.send_task(
            SEND_BULK_FILE, args=[str(path), TEMPLATE, f"jsonl/{tag}"], queue=worker.queue
        ).get(timeout=60)
        for _ in range(2)
    ]
    for report in reports:
        assert (report["total"], report["queued"], report["invalid"]) == (251, 250, 1)
        assert report["failures"][0]["code"] == "invalid_json"
    stats = sandbox.stats()
    assert (stats["unique_recipients"], stats["duplicate_deliveries"]) == (250, 0)
    assert stats["idempotent_replays"] == 3


def test_bulk_file_task_with_a_missing_file_fails_naming_the_path_and_sends_nothing(
    rabbitmq_worker: Worker, sandbox: Any, tmp_path: Path
) -> None:
    result = rabbitmq_worker.producer.send_task(
        SEND_BULK_FILE,
        args=[str(tmp_path / "nowhere.csv"), TEMPLATE, "missing/file"],
        queue=rabbitmq_worker.queue,
    )
    with pytest.raises(Exception, match="path") as raised:
        result.get(timeout=30)
    assert "nowhere.csv" in str(raised.value)
    assert "shared volume" in str(raised.value)
    assert sandbox.stats()["requests"] == 0


def test_bulk_file_task_whose_worker_is_killed_is_redelivered_and_mails_nobody_twice(
    start_worker: Callable[..., Worker], rabbitmq_url: str, sandbox: Any, tmp_path: Path
) -> None:
    first = start_worker(rabbitmq_url)
    tag = uuid.uuid4().hex[:8]
    path = _write_csv(tmp_path / "list.csv", tag, 3_000)
    sandbox.set_faults(latency=0.03)
    result = first.producer.send_task(
        SEND_BULK_FILE, args=[str(path), TEMPLATE, f"killed/{tag}"], queue=first.queue
    )

    def some_batches_done() -> bool:
        info = result.info if result.state == PROGRESS else None
        return isinstance(info, dict) and info.get("batches_done", 0) >= 5

    wait_for(some_batches_done, 60, "five batches done")
    first.kill()  # the bulk task and a batch die mid-flight; both come back (acks_late)
    second = start_worker(rabbitmq_url, queue=first.queue)
    report = result.get(timeout=120)
    sandbox.set_faults()

    assert (report["total"], report["queued"], report["batches"]) == (3_000, 3_000, 30)
    wait_for(lambda: sandbox.stats()["accepted_messages"] >= 3_000, 10, "late arrivals")
    stats = sandbox.stats()
    assert stats["duplicate_deliveries"] == 0
    assert (stats["accepted_messages"], stats["unique_recipients"]) == (3_000, 3_000)
    assert stats["idempotent_replays"] >= 5  # the re-run replayed what the first run sent
    assert " ready." in second.text()


# --- pacing: two workers, one key, the sandbox's limit scaled down -----------

#: The API's 1,800 requests per 60 s at the same ratio, scaled down in size
#: (batches of 10 keep the sandbox light on a 2-core machine).
LIMIT, WINDOW = 20, 2


@pytest.fixture(scope="module")
def paced_sandbox() -> Iterator[Any]:
    from sendmux_sandbox import SandboxConfig, SandboxServer

    config = SandboxConfig(delivery_delay=0.0, rate_limit=LIMIT, rate_window=float(WINDOW))
    with SandboxServer(config) as server:
        yield server


@pytest.fixture(scope="module")
def paced_workers(
    paced_sandbox: Any,
    rabbitmq_url: str,
    redis_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[list[Worker]]:
    queue = f"sendmux-test-paced-{uuid.uuid4().hex[:8]}"
    env = {
        "SENDMUX_CELERY_PACER": redis_url,
        "SENDMUX_CELERY_PACER_LIMIT": str(LIMIT),
        "SENDMUX_CELERY_PACER_WINDOW": str(WINDOW),
    }
    workers = [
        Worker(
            broker=rabbitmq_url,
            backend=redis_url,
            sandbox=paced_sandbox,
            log=tmp_path_factory.mktemp("paced") / "worker.log",
            concurrency=4,
            queue=queue,
            **env,
        )
        for _ in range(2)
    ]
    try:
        for worker in workers:
            worker.wait_ready()
        yield workers
    finally:
        for worker in workers:
            worker.terminate()
        for worker in workers:
            worker.stop()
        for worker in workers:
            assert paced_sandbox.api_key not in worker.text()


def _request_times(sandbox: Any) -> list[float]:
    """When the sandbox accepted each batch request (its messages share the time)."""
    first: dict[str, float] = {}
    for message in sandbox.messages(limit=100_000):
        at = datetime.fromisoformat(message["created_at"].replace("Z", "+00:00")).timestamp()
        key = message["idempotency_key"]
        first[key] = min(at, first.get(key, at))
    return sorted(first.values())


def test_two_workers_at_concurrency_4_share_one_ceiling_and_use_most_of_it(
    paced_workers: list[Worker], paced_sandbox: Any
) -> None:
    sandbox = paced_sandbox
    sandbox.reset()
    sandbox.set_faults(latency=0.02)
    producer = paced_workers[0].producer
    tag = uuid.uuid4().hex[:8]
    batches = 110  # about 11 windows of the scaled limit
    rows = (
        {"email": f"{tag}-{i}@example.com", "name": f"R{i}", "code": "x"}
        for i in range(batches * 10)
    )
    job = send_bulk(
        producer,
        TEMPLATE,
        rows,
        job_key=f"paced/{tag}",
        queue=paced_workers[0].queue,
        max_messages=10,
    )
    report = job.wait(timeout=120)
    sandbox.set_faults()

    stats = sandbox.stats()
    assert stats["rate_limited"] == 0
    assert report.ok, report.summary_line()
    assert (report.queued, stats["unique_recipients"], stats["duplicate_deliveries"]) == (
        batches * 10,
        batches * 10,
        0,
    )
    # Both workers sent: one ceiling shared, not one each.
    for worker in paced_workers:
        wait_for(lambda w=worker: "succeeded" in w.text(), 10, "a task on each worker")
    times = _request_times(sandbox)
    assert len(times) == batches
    # Whole windows from the first request while work was waiting: the share
    # of the limit the sandbox saw used (the pacer keeps 2 % headroom).
    start = times[0]
    windows = math.floor((times[-1] - start) / WINDOW)
    assert windows >= 4
    used = sum(1 for t in times if t < start + windows * WINDOW) / (windows * LIMIT)
    print(f"pacing: {used:.1%} of {LIMIT} per {WINDOW} s over {windows} windows, 0 x 429")
    assert used >= 0.9
