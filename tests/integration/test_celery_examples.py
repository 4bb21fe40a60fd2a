"""examples/celery/: the beat example imports, and under a real beat each period sends once.

``celery -A periodic_report worker -B`` runs in a subprocess, as the
example's docstring tells a user to, with the schedule shortened to one
second: beat fires again and again within one day, and the sandbox sees one
report per recipient.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("celery")

from celery_workers import REPO, wait_for

EXAMPLES = REPO / "examples" / "celery"
RECIPIENTS = ["ceo@example.com", "cfo@example.com", "ops@example.com"]


@pytest.fixture
def example(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.syspath_prepend(str(EXAMPLES))
    import periodic_report

    yield periodic_report
    sys.modules.pop("periodic_report", None)


def test_the_beat_example_imports_with_a_daily_schedule_and_the_day_in_its_key(
    example: Any,
) -> None:
    from celery.schedules import crontab

    entry = example.app.conf.beat_schedule["daily-report"]
    assert entry["task"] == "reports.send_daily_report"
    assert isinstance(entry["schedule"], crontab)
    assert "reports.send_daily_report" in example.app.tasks
    assert "sendmux.send_batch" in example.app.tasks
    morning = dt.datetime(2026, 12, 4, 7, 0, tzinfo=dt.timezone.utc)
    assert example.report_day(morning) == "2026-12-03"
    assert example.report_day(morning + dt.timedelta(hours=16)) == "2026-12-03"


def _successes(log: Path) -> int:
    text = log.read_text(errors="replace")
    return sum(
        1
        for line in text.splitlines()
        if "reports.send_daily_report[" in line and "succeeded" in line
    )


def test_beat_firing_many_times_in_one_day_mails_each_recipient_once(
    rabbitmq_url: str, redis_url: str, sandbox: Any, tmp_path: Path
) -> None:
    log = tmp_path / "worker.log"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), str(EXAMPLES)]),
        "CELERY_BROKER_URL": rabbitmq_url,
        "CELERY_RESULT_BACKEND": redis_url,
        "SENDMUX_API_KEY": sandbox.api_key,
        "SENDMUX_SENDING_URL": sandbox.sending_url,
        "SENDMUX_MANAGEMENT_URL": sandbox.management_url,
        "REPORT_QUEUE": f"sendmux-test-beat-{uuid.uuid4().hex[:8]}",
        "REPORT_RECIPIENTS": ",".join(RECIPIENTS),
        "REPORT_EVERY": "1",
    }
    with log.open("wb") as out:
        worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "--workdir",
                str(EXAMPLES),
                "-A",
                "periodic_report",
                "worker",
                "-B",
                "--schedule",
                str(tmp_path / "beat-schedule"),
                "--concurrency",
                "2",
                "--queues",
                env["REPORT_QUEUE"],
                "--without-gossip",
                "--without-mingle",
                "--loglevel",
                "INFO",
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_for(lambda: _successes(log) >= 3 or worker.poll() is not None, 60, "3 beat runs")
            wait_for(lambda: sandbox.stats()["idempotent_replays"] >= 2, 30, "the replays")
        finally:
            worker.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                worker.wait(timeout=10)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(timeout=10)
    text = log.read_text(errors="replace")
    assert _successes(log) >= 3, text[-3000:]
    stats = sandbox.stats()
    assert (stats["accepted_messages"], stats["unique_recipients"]) == (3, 3)
    assert stats["duplicate_deliveries"] == 0
    day = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=1)).date().isoformat()
    for email in RECIPIENTS:
        [message] = sandbox.messages(email)
        assert message["subject"] == f"Daily report for {day}"
    assert sandbox.api_key not in text
