"""dispatch with a RedisLedger: two processes on one job, and Redis stopped mid-job.

Deliveries are counted per recipient on the sandbox. The outage test starts a
redis-server of its own on a free port (append-only file, fsync always) and
kills it while the job runs.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sendmux_dispatch import RedisLedger
from sendmux_dispatch.report import DispatchReport
from tests.integration.test_cli import cli_env
from tests.integration.test_dispatch_ledger import (
    JOB,
    check_totals,
    deliveries,
    digest,
    person,
    run_job,
)
from tests.integration.test_ledger_redis import _free_port, _start_redis

pytestmark = pytest.mark.redis

# The module (the package's ``dispatch`` attribute is the function).
dispatch_module = importlib.import_module("sendmux_dispatch.dispatch")


@pytest.fixture
def prefix(redis_url: str) -> Iterator[str]:
    name = f"test:dispatch-ledger:{uuid.uuid4().hex}"
    yield name
    import redis

    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter(match=f"{name}:*"):
        client.delete(key)
    client.close()


def _child_worker(url: str, api_key: str, redis_url: str, prefix: str, shift: str) -> None:
    rows = [*(person(i, "front") for i in range(int(shift))), *(person(i) for i in range(4000))]
    sandbox = type("S", (), {"sending_url": url, "management_url": url, "api_key": api_key})
    with RedisLedger(redis_url, prefix=prefix) as ledger:
        report = run_job("sync", sandbox, rows, ledger, concurrency=3)
    print(report.summary_line(), flush=True)


def test_two_processes_sharing_a_redis_ledger_mail_each_person_once(
    sandbox: Any, redis_url: str, prefix: str
) -> None:
    sandbox.set_faults(latency=0.05)
    # Same job, lists cut differently (the second has 40 rows in front).
    children = [
        subprocess.Popen(
            [
                sys.executable,
                __file__,
                "worker",
                sandbox.sending_url,
                sandbox.api_key,
                redis_url,
                prefix,
                shift,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=cli_env(None),
        )
        for shift in ("0", "40")
    ]
    for child in children:
        _, err = child.communicate(timeout=120)
        assert child.returncode == 0, err
        assert "Traceback" not in err
    sandbox.set_faults()
    counts = deliveries(sandbox)
    assert sandbox.stats()["duplicate_deliveries"] == 0
    assert set(counts.values()) == {1}
    # Recipients one worker found claimed by the other were left to it: all sent now.
    expected = {f"p{i}@example.org" for i in range(4000)} | {
        f"front{i}@example.org" for i in range(40)
    }
    with RedisLedger(redis_url, prefix=prefix) as ledger:
        rows = [*(person(i, "front") for i in range(40)), *(person(i) for i in range(4000))]
        report = run_job("sync", sandbox, rows, ledger)
        assert ledger.pending(JOB) == []
    check_totals(report)
    assert report.ok, report.summary_line()
    counts = deliveries(sandbox)
    assert set(counts) == expected
    assert set(counts.values()) == {1}


@pytest.mark.parametrize("driver", ["sync", "async"])
def test_redis_stopped_mid_job_stops_it_with_a_report_and_the_rerun_completes_exactly_once(
    driver: str, sandbox: Any, tmp_path: Path
) -> None:
    port = _free_port()
    url = f"redis://127.0.0.1:{port}/0"
    proc = _start_redis(port, tmp_path)
    # 60 batches: dispatch begins up to ledger_ahead (32) batches ahead of the
    # sends, so the list must outlast what is begun when Redis dies.
    rows = [person(i) for i in range(6000)]
    reports: list[DispatchReport] = []
    errors: list[BaseException] = []
    try:
        sandbox.set_faults(latency=0.05)
        ledger = RedisLedger(url, unavailable_after=1.5, socket_timeout=0.5)

        def job() -> None:
            try:
                reports.append(run_job(driver, sandbox, rows, ledger))
            except BaseException as exc:  # reported below
                errors.append(exc)

        thread = threading.Thread(target=job)
        thread.start()
        deadline = time.monotonic() + 60
        while sandbox.stats()["accepted_messages"] < 300:
            assert time.monotonic() < deadline, "the job made no progress"
            time.sleep(0.01)
        proc.kill()  # Redis gone mid-job
        proc.wait(timeout=10)
        thread.join(timeout=90)
        assert not thread.is_alive()
        assert not errors, errors
        [report] = reports
        ledger.close()
        check_totals(report)
        assert report.stop_cause == "ledger"
        assert f"127.0.0.1:{port}/0" in (report.stopped_reason or "")
        assert report.not_sent > 0
        sandbox.set_faults()
        sent = deliveries(sandbox)
        assert 300 <= sum(sent.values()) < 6000

        proc = _start_redis(port, tmp_path)  # back, from its append-only file
        with RedisLedger(url) as ledger:
            pending = {d for intent in ledger.pending(JOB) for d in intent.digests}
            accepted = ledger.accepted_among(JOB, [digest(email) for email in sent])
            # Nothing the server accepted went unrecorded (accepted, or pending a replay).
            for email in sent:
                assert digest(email) in accepted | pending, email
            again = run_job(driver, sandbox, rows, ledger)
            assert ledger.pending(JOB) == []
        check_totals(again)
        assert again.ok, again.summary_line()
        counts = deliveries(sandbox)
        assert sandbox.stats()["duplicate_deliveries"] == 0
        assert set(counts) == {row["email"] for row in rows}
        assert set(counts.values()) == {1}
    finally:
        proc.kill()
        proc.wait(timeout=10)


def _run_until_redis_dies(
    driver: str, sandbox: Any, rows: list[dict[str, Any]], proc: Any, **options: Any
) -> DispatchReport:
    """Run the job in a thread; kill the Redis server once 300 messages were accepted."""
    reports: list[DispatchReport] = []
    errors: list[BaseException] = []

    def job() -> None:
        try:
            reports.append(run_job(driver, sandbox, rows, **options))
        except BaseException as exc:  # reported below
            errors.append(exc)

    thread = threading.Thread(target=job)
    thread.start()
    deadline = time.monotonic() + 60
    while sandbox.stats()["accepted_messages"] < 300:
        assert time.monotonic() < deadline, "the job made no progress"
        time.sleep(0.01)
    proc.kill()
    proc.wait(timeout=10)
    thread.join(timeout=90)
    assert not thread.is_alive()
    assert not errors, errors  # before: a redis-py ConnectionError, and no report
    [report] = reports
    return report


@pytest.mark.parametrize("driver", ["sync", "async"])
def test_a_redis_pacer_that_goes_away_stops_the_job_with_a_report(
    driver: str, sandbox: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sendmux_dispatch import RedisPacer

    monkeypatch.setattr(dispatch_module, "PACER_UNAVAILABLE_AFTER", 1.0)
    port = _free_port()
    url = f"redis://127.0.0.1:{port}/0"
    proc = _start_redis(port, tmp_path)
    rows = [person(i) for i in range(3000)]
    try:
        sandbox.set_faults(latency=0.05)
        pacer = RedisPacer(url, key_id="pacer-outage-test")
        started = time.monotonic()
        report = _run_until_redis_dies(driver, sandbox, rows, proc, ledger=None, pacer=pacer)
        assert time.monotonic() - started < 60
        check_totals(report)
        assert report.stop_cause == "outage"
        assert "pacer" in (report.stopped_reason or "")
        assert report.not_sent > 0
        sandbox.set_faults()
        sent = deliveries(sandbox)
        assert sum(sent.values()) == report.queued

        proc = _start_redis(port, tmp_path)
        # The same list in the same order: the batches' keys replay, the rest is sent.
        again = run_job(
            driver, sandbox, rows, None, pacer=RedisPacer(url, key_id="pacer-outage-test")
        )
        assert again.ok, again.summary_line()
        counts = deliveries(sandbox)
        assert sandbox.stats()["duplicate_deliveries"] == 0
        assert set(counts) == {row["email"] for row in rows}
        assert set(counts.values()) == {1}
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_a_redis_pacer_blip_shorter_than_the_wait_costs_nothing(
    sandbox: Any, tmp_path: Path
) -> None:
    from sendmux_dispatch import RedisPacer

    port = _free_port()
    url = f"redis://127.0.0.1:{port}/0"
    proc = _start_redis(port, tmp_path)
    restarted: list[Any] = []
    rows = [person(i) for i in range(1500)]
    try:
        sandbox.set_faults(latency=0.05)
        timer = threading.Timer(1.0, lambda: restarted.append(_start_redis(port, tmp_path)))
        pacer = RedisPacer(url, key_id="pacer-blip-test")

        def kill_then_restart() -> None:
            proc.kill()
            proc.wait(timeout=10)
            timer.start()

        deadline = time.monotonic() + 60
        killer = threading.Thread(
            target=lambda: (
                _wait_accepted(sandbox, 300, deadline),
                kill_then_restart(),
            )
        )
        killer.start()
        report = run_job("sync", sandbox, rows, None, pacer=pacer)
        killer.join()
        timer.join()
        assert report.ok, report.summary_line()
        assert report.stop_cause is None
        counts = deliveries(sandbox)
        assert set(counts) == {row["email"] for row in rows}
        assert set(counts.values()) == {1}
    finally:
        for server in (proc, *restarted):
            server.kill()
            server.wait(timeout=10)


def _wait_accepted(sandbox: Any, count: int, deadline: float) -> None:
    while sandbox.stats()["accepted_messages"] < count:
        assert time.monotonic() < deadline
        time.sleep(0.01)


if __name__ == "__main__" and sys.argv[1:2] == ["worker"]:
    _child_worker(*sys.argv[2:7])
