"""Bulk progress stores: Redis and SQLite count the same way (once per batch key, this run only)."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("celery")

from sendmux_celery._progress import ProgressStore, progress_url
from sendmux_celery._progress_sqlite import SqliteProgressStore
from sendmux_celery._results import BatchSummary
from sendmux_celery._stop import JobStop


def _summary(key: str, *, failed: int = 0, attempts: int = 1) -> BatchSummary:
    return {
        "status": "partial" if failed else "sent",
        "idempotency_key": key,
        "total": 10,
        "counts": {"queued": 10 - failed, "failed": failed},
        "message_ids": [],
        "failures": [
            {
                "index": i,
                "to": f"f{i}@example.com",
                "outcome": "failed",
                "code": "service_unavailable",
                "reason": "try later",
                "retryable": True,
            }
            for i in range(failed)
        ],
        "error": None,
        "attempts": attempts,
        "request_id": None,
    }


@pytest.fixture(params=["sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ProgressStore:
    if request.param == "sqlite":
        return ProgressStore(f"sqlite:///{tmp_path / 'progress.db'}")
    url: str = request.getfixturevalue("redis_url")
    return ProgressStore(url)


def test_a_batch_counts_once_and_only_when_this_run_planned_it(store: ProgressStore) -> None:
    job = f"job-{uuid.uuid4().hex[:8]}"
    store.reset(job)
    assert store.plan_batch(job, "b0", 10) is None  # planned: no stop
    assert store.plan_batch(job, "b0", 10) is None  # published twice: counted once (below)
    assert store.plan_batch(job, "b1", 10) is None
    store.set_plan(job, {"recipients": 20, "planning_done": 1})
    assert store.record_batch(job, _summary("b0", failed=2, attempts=2))
    assert not store.record_batch(job, _summary("b0"))  # redelivered: counted once
    assert not store.record_batch(job, _summary("old"))  # an earlier run's straggler
    meta, counts, failures = store.snapshot(job)
    assert (meta["batches"], meta["messages"], meta["planning_done"]) == ("2", "20", "1")
    assert counts == {"batches": 1, "status:partial": 1, "attempts": 2, "queued": 8, "failed": 2}
    assert [f["email"] for f in failures] == ["f0@example.com", "f1@example.com"]
    store.reset(job)  # the next run starts afresh
    meta, counts, failures = store.snapshot(job)
    assert (meta, counts, failures) == ({"planning_done": "0"}, {}, [])


def test_the_first_stop_wins_and_a_stopped_job_plans_nothing_more(store: ProgressStore) -> None:
    job = f"job-{uuid.uuid4().hex[:8]}"
    store.reset(job)
    assert store.plan_batch(job, "b0", 10) is None
    assert store.stopped(job) is None
    error: Any = {"type": "AuthenticationError", "code": "authentication_required"}
    auth = JobStop("auth", "AuthenticationError: the key is not valid", error)
    assert not store.stop(job, "old", auth)  # a straggler of an earlier run stops nothing
    assert store.stopped(job) is None
    assert store.stop(job, "b0", auth)
    later = JobStop("credits", "InsufficientCreditsError", {**error, "code": "credits"})
    assert store.stop(job, "b0", later)  # recorded, but the first stop wins
    assert store.stopped(job) == auth
    assert store.plan_batch(job, "b1", 10) == auth
    meta, _, _ = store.snapshot(job)
    assert meta["batches"] == "1"  # b1 was not planned
    assert meta["stop_cause"] == "auth"
    store.reset(job)
    assert store.stopped(job) is None


def test_the_sqlite_store_is_chosen_by_url_and_by_a_sqlite_result_backend(tmp_path: Path) -> None:
    url = f"db+sqlite:///{tmp_path / 'results.db'}"
    assert progress_url({"result_backend": url}) == url
    assert isinstance(ProgressStore(url), SqliteProgressStore)
    assert type(ProgressStore("redis://127.0.0.1:1/0")) is ProgressStore


def test_failures_beyond_the_cap_are_counted_as_omitted(tmp_path: Path) -> None:
    from sendmux_dispatch.report import DEFAULT_MAX_FAILURES

    store: Any = ProgressStore(f"sqlite:///{tmp_path / 'p.db'}")
    store.reset("j")
    for i in range(12):
        store.plan_batch("j", f"b{i}", 10)
        store.record_batch("j", _summary(f"b{i}", failed=10))
    _, counts, failures = store.snapshot("j")
    assert len(failures) == DEFAULT_MAX_FAILURES
    assert counts["failures_omitted"] == 120 - DEFAULT_MAX_FAILURES
