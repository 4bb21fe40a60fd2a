"""dispatch / adispatch with a send ledger, on the sandbox, counting deliveries per recipient.

What a user checks after a re-run of a half-done job whose list changed: nobody
got the email twice, and everybody on the final list got it. The crash window
itself (the server answered, the ledger write never happened) is played two
ways: a ledger whose ``finish`` raises once (the job dies with an exception in
this process) and a child process that SIGKILLs itself inside ``finish``.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from sendmux_dispatch import (
    AsyncSendmuxClient,
    LedgerUnavailableError,
    SendmuxClient,
    SqliteLedger,
    adispatch,
    dispatch,
)
from sendmux_dispatch.ledger import Finish, Intent, recipient_digest
from sendmux_dispatch.recipients import normalize_email
from sendmux_dispatch.report import DispatchReport
from sendmux_dispatch.retry import RetryPolicy
from tests.integration.test_cli import cli_env

JOB = "ledger/wiring/run-1"


def template(subject: str = "Hello {{ name }}") -> dict[str, Any]:
    return {
        "from": {"email": "news@example.com", "name": "News"},
        "subject": subject,
        "html_body": "<p>Hi {{ name }}, your code is {{ code }}.</p>",
    }


def person(i: int, prefix: str = "p", *, valid: bool = True) -> dict[str, Any]:
    row: dict[str, Any] = {"email": f"{prefix}{i}@example.org", "name": f"P{i}"}
    if valid:
        row["code"] = f"C{i}"  # without it, the template's variable is undefined: invalid
    return row


def digest(email: str) -> int:
    return recipient_digest(normalize_email(email))


def deliveries(sandbox: Any) -> Counter[str]:
    return Counter(message["to"] for message in sandbox.messages(limit=1_000_000))


def check_totals(report: DispatchReport) -> None:
    assert report.total == (
        report.queued
        + report.failed
        + report.invalid
        + report.duplicates_dropped
        + report.already_accepted
        + report.not_sent
    ), report.summary_line()


class Crash(BaseException):
    """The process "dies": nothing in dispatch may catch it."""


class FlakyLedger:
    """A real ledger, except that call number ``at`` of ``method`` raises ``error``.

    With ``error=Crash`` on ``finish`` it is the crash window: the server
    answered, the answer is never recorded.
    """

    def __init__(self, inner: Any, method: str, at: int, error: BaseException) -> None:
        self.inner = inner
        self.method = method
        self.at = at
        self.error = error
        self.calls = 0
        self.failed_keys: list[str] = []
        self.lock = threading.Lock()

    def _maybe_fail(self, method: str, key: str | None = None) -> None:
        if method != self.method:
            return
        with self.lock:
            self.calls += 1
            hit = self.calls == self.at
        if hit:
            if key is not None:
                self.failed_keys.append(key)
            raise self.error

    def pending(self, job_key: str) -> list[Intent]:
        self._maybe_fail("pending")
        result: list[Intent] = self.inner.pending(job_key)
        return result

    def accepted_among(self, job_key: str, digests: Sequence[int]) -> set[int]:
        self._maybe_fail("accepted_among")
        result: set[int] = self.inner.accepted_among(job_key, digests)
        return result

    def begin(self, job_key: str, intent: Intent) -> set[int]:
        self._maybe_fail("begin", intent.key)
        result: set[int] = self.inner.begin(job_key, intent)
        return result

    def finish(
        self, job_key: str, key: str, accepted: Sequence[int], successor: Intent | None = None
    ) -> None:
        self._maybe_fail("finish", key)
        self.inner.finish(job_key, key, accepted, successor)

    def record(
        self, job_key: str, finishes: Sequence[Finish], begins: Sequence[Intent]
    ) -> list[set[int]]:
        # Dispatch's writer stores many calls per round: the round fails whole,
        # before anything is written, when one of its calls would.
        for finish in finishes:
            self._maybe_fail("finish", finish.key)
        for intent in begins:
            self._maybe_fail("begin", intent.key)
        result: list[set[int]] = self.inner.record(job_key, finishes, begins)
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def run_job(
    driver: str,
    sandbox: Any,
    rows: Sequence[dict[str, Any]],
    ledger: Any,
    *,
    subject: str = "Hello {{ name }}",
    **options: Any,
) -> DispatchReport:
    """One run of the job on its own client (a re-run is a new process in real life)."""
    urls = {"sending_url": sandbox.sending_url, "management_url": sandbox.management_url}
    retry = RetryPolicy(initial_delay=0.01, max_delay=0.05, jitter=0.0)
    options.setdefault("concurrency", 2)
    if driver == "sync":
        with SendmuxClient(sandbox.api_key, retry=retry, **urls) as client:
            return dispatch(client, template(subject), rows, job_key=JOB, ledger=ledger, **options)

    async def main() -> DispatchReport:
        async with AsyncSendmuxClient(sandbox.api_key, retry=retry, **urls) as client:
            return await adispatch(
                client, template(subject), rows, job_key=JOB, ledger=ledger, **options
            )

    return asyncio.run(main())


DRIVERS = pytest.mark.parametrize("driver", ["sync", "async"])


@DRIVERS
def test_a_rerun_after_a_crash_and_an_edited_list_mails_nobody_twice_and_nobody_is_lost(
    driver: str, sandbox: Any, tmp_path: Path
) -> None:
    path = tmp_path / "ledger.db"
    # 2,000 good rows and 10 that fail validation (no code), spread through the list:
    # long enough that the crash (its write round fails, and every call after it)
    # lands while most of the list is still to be sent, although dispatch begins
    # batches ahead of the sends.
    first = [person(i, valid=i % 201 != 7) for i in range(2010)]
    invalid = [row["email"] for row in first if "code" not in row]
    assert len(invalid) == 10
    crashing = FlakyLedger(SqliteLedger(path), "finish", at=2, error=Crash())
    with pytest.raises(Crash):
        run_job(driver, sandbox, first, crashing)
    [crashed_key] = crashing.failed_keys
    crashing.inner.close()
    after_first = deliveries(sandbox)
    assert 100 <= sum(after_first.values()) <= 1000, "the first run was not cut short"
    with SqliteLedger(path) as ledger:
        assert crashed_key in {intent.key for intent in ledger.pending(JOB)}

    # The re-run's list: 40 rows inserted at the top, 20 removed (10 of them
    # sent by the first run, 10 not), the invalid rows fixed; the subject edited.
    removed = {f"p{i}@example.org" for i in (*range(15, 25), *range(1950, 1960))}
    second = [
        *(person(i, "new") for i in range(40)),
        *(person(i) for i in range(2010) if f"p{i}@example.org" not in removed),
    ]
    with SqliteLedger(path) as ledger:
        report = run_job(driver, sandbox, second, ledger, subject="Hello again {{ name }}")
        assert ledger.pending(JOB) == []

    check_totals(report)
    assert report.ok, report.summary_line()
    assert report.stop_cause is None
    assert report.already_accepted >= 100
    final = {row["email"] for row in second}
    counts = deliveries(sandbox)
    stats = sandbox.stats()
    assert stats["duplicate_deliveries"] == 0
    assert max(counts.values()) == 1
    assert final <= set(counts), sorted(final - set(counts))[:5]
    # Removed rows: those the first run sent were sent once, the others never.
    assert sum(after_first[email] for email in removed) == 10
    for email in removed:
        assert counts[email] == after_first[email] <= 1
    assert stats["unique_recipients"] == len(final) + sum(after_first[e] for e in removed)
    # The crash-window batch was replayed under its recorded key (an
    # idempotency_conflict: the subject changed), not sent under a new one.
    assert stats["idempotency_conflicts"] >= 1
    assert report.queued + report.already_accepted == len(final)


#: The crash-window job: 50 batches, more than dispatch begins ahead of the sends
#: (ledger_ahead 32 plus 2 in flight), so the kill lands with batches still unsent.
ROWS_KILLED = 5000


def _child_killed_in_the_crash_window(url: str, api_key: str, path: str, driver: str) -> None:
    """Runs in a child: the write of the 2nd finish kills the process with SIGKILL first."""

    class Killing(FlakyLedger):
        def _maybe_fail(self, method: str, key: str | None = None) -> None:
            if method == "finish":
                self.calls += 1
                if self.calls == 2:
                    print(key, flush=True)  # the key that will be left pending
                    os.kill(os.getpid(), signal.SIGKILL)

    ledger = Killing(SqliteLedger(path), "finish", at=2, error=Crash())
    sandbox = type("S", (), {"sending_url": url, "management_url": url, "api_key": api_key})
    run_job(driver, sandbox, [person(i) for i in range(ROWS_KILLED)], ledger)


@DRIVERS
def test_a_process_killed_between_the_answer_and_the_ledger_write_replays_under_the_same_key(
    driver: str, sandbox: Any, tmp_path: Path
) -> None:
    path = tmp_path / "ledger.db"
    child = subprocess.run(
        [
            sys.executable,
            __file__,
            "killed-in-window",
            sandbox.sending_url,
            sandbox.api_key,
            str(path),
            driver,
        ],
        capture_output=True,
        text=True,
        env=cli_env(None),
        timeout=120,
        check=False,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr
    killed_key = child.stdout.strip().splitlines()[-1]
    sent = deliveries(sandbox)
    assert 100 <= sum(sent.values()) < ROWS_KILLED
    with SqliteLedger(path) as ledger:
        assert killed_key in {intent.key for intent in ledger.pending(JOB)}
        replays_before = sandbox.stats()["idempotent_replays"]
        # Rows inserted at the top move every batch; the pending one is rebuilt as it was.
        rows = [*(person(i, "top") for i in range(7)), *(person(i) for i in range(ROWS_KILLED))]
        report = run_job(driver, sandbox, rows, ledger)
        assert ledger.pending(JOB) == []
        stats = ledger.stats(JOB)
        assert stats is not None
        assert stats.accepted == ROWS_KILLED + 7

    check_totals(report)
    assert report.ok, report.summary_line()
    counts = deliveries(sandbox)
    assert sandbox.stats()["duplicate_deliveries"] == 0
    assert set(counts) == {row["email"] for row in rows}
    assert set(counts.values()) == {1}
    # Same body under the same key: the server replayed its stored answer.
    assert sandbox.stats()["idempotent_replays"] > replays_before
    assert report.queued >= 100  # the replayed batch is recorded as queued, plus the rest


@DRIVERS
@pytest.mark.parametrize(
    ("method", "at"), [("pending", 1), ("accepted_among", 2), ("begin", 2), ("finish", 2)]
)
def test_a_ledger_that_cannot_be_reached_stops_the_job_with_nothing_sent_unrecorded(
    driver: str, method: str, at: int, sandbox: Any, tmp_path: Path
) -> None:
    path = tmp_path / "ledger.db"
    # Ten batches: with two in flight and two begun ahead, an outage at the second
    # finish still leaves batches the job never sends.
    rows = [person(i) for i in range(1000)]
    outage = LedgerUnavailableError("the test ledger is down", backend="test", waited=30.0)
    with SqliteLedger(path) as seed:
        # A job with a record already (someone outside this list): planning then asks
        # the ledger about every chunk (a fresh job skips those lookups).
        seed.begin(JOB, Intent("earlier", (digest("someone@else.org"),)))
        seed.finish(JOB, "earlier", [digest("someone@else.org")])
    flaky = FlakyLedger(SqliteLedger(path), method, at=at, error=outage)
    report = run_job(driver, sandbox, rows, flaky)
    flaky.inner.close()

    check_totals(report)
    assert report.stop_cause == "ledger"
    assert "the test ledger is down" in (report.stopped_reason or "")
    sent = deliveries(sandbox)
    if method == "pending":
        # Stopped before the list was read: nothing read, nothing sent.
        assert report.total == 0
        assert not sent
    else:
        assert report.not_sent > 0
    assert sum(sent.values()) < 1000
    with SqliteLedger(path) as ledger:
        pending = {d for intent in ledger.pending(JOB) for d in intent.digests}
        accepted = ledger.accepted_among(JOB, [digest(email) for email in sent])
    # Everything the server accepted is recorded accepted or pending: nothing unrecorded.
    for email in sent:
        assert digest(email) in accepted | pending, email

    with SqliteLedger(path) as ledger:
        again = run_job(driver, sandbox, rows, ledger)
    check_totals(again)
    assert again.ok, again.summary_line()
    counts = deliveries(sandbox)
    assert sandbox.stats()["duplicate_deliveries"] == 0
    assert set(counts) == {row["email"] for row in rows}
    assert set(counts.values()) == {1}


@DRIVERS
def test_a_finished_job_rerun_skips_everyone_as_already_accepted(
    driver: str, sandbox: Any, tmp_path: Path
) -> None:
    rows = [person(i) for i in range(250)]
    results = tmp_path / "results.jsonl"
    with SqliteLedger(tmp_path / "ledger.db") as ledger:
        first = run_job(driver, sandbox, rows, ledger)
        requests = sandbox.stats()["requests"]
        again = run_job(driver, sandbox, rows, ledger, results_path=results)
    assert first.queued == 250
    assert again.already_accepted == 250
    assert again.queued == 0
    assert again.ok
    assert again.batches == 0
    assert sandbox.stats()["requests"] == requests  # not one request
    assert results.read_text().count('"status": "already_accepted"') == 250


def test_a_pending_batch_older_than_the_servers_memory_is_reported_not_resent(
    sandbox: Any, tmp_path: Path
) -> None:
    path = tmp_path / "ledger.db"
    old = [f"p{i}@example.org" for i in (3, 4, 5)]
    with SqliteLedger(path) as ledger:
        ledger.begin(JOB, Intent("old-batch", tuple(digest(email) for email in old)))
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE intents SET created = created - 86400")
    with SqliteLedger(path) as ledger:
        report = run_job("sync", sandbox, [person(i) for i in range(20)], ledger)
        assert [intent.key for intent in ledger.pending(JOB)] == ["old-batch"]  # left to the user
    check_totals(report)
    assert (report.queued, report.failed) == (17, 3)
    assert {f.code for f in report.failures} == {"unconfirmed_pending"}
    counts = deliveries(sandbox)
    assert not any(counts[email] for email in old)


def test_dedupe_cannot_be_turned_off_with_a_ledger(sandbox: Any, tmp_path: Path) -> None:
    with SqliteLedger(tmp_path / "ledger.db") as ledger, pytest.raises(ValueError, match="dedupe"):
        run_job("sync", sandbox, [person(1)], ledger, dedupe=False)


def test_two_runs_of_one_job_at_once_sharing_a_ledger_mail_each_person_once(
    sandbox: Any, tmp_path: Path
) -> None:
    rows = [person(i) for i in range(600)]
    # The second run's list is the first's with rows in front: different cuts race.
    shifted = [*(person(i, "front") for i in range(30)), *rows]
    path = tmp_path / "ledger.db"
    reports: list[DispatchReport] = []

    def worker(worker_rows: list[dict[str, Any]]) -> None:
        with SqliteLedger(path) as ledger:
            reports.append(run_job("sync", sandbox, worker_rows, ledger, concurrency=3))

    threads = [threading.Thread(target=worker, args=(r,)) for r in (rows, shifted)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for report in reports:
        check_totals(report)
        assert report.stop_cause is None
    counts = deliveries(sandbox)
    assert sandbox.stats()["duplicate_deliveries"] == 0
    assert set(counts.values()) == {1}
    # Everyone either got it or was left to the other run (claimed), never lost:
    # a re-run completes whatever a claim left behind.
    with SqliteLedger(path) as ledger:
        run_job("sync", sandbox, shifted, ledger)
    counts = deliveries(sandbox)
    assert set(counts) == {row["email"] for row in shifted}
    assert set(counts.values()) == {1}


if __name__ == "__main__" and sys.argv[1:2] == ["killed-in-window"]:
    _child_killed_in_the_crash_window(*sys.argv[2:6])


class ThreadNotingLedger(FlakyLedger):
    """A real ledger that notes which thread each call runs on."""

    def __init__(self, inner: Any) -> None:
        super().__init__(inner, method="none", at=0, error=Crash())
        self.threads: Counter[tuple[str, int]] = Counter()

    def _maybe_fail(self, method: str, key: str | None = None) -> None:
        with self.lock:
            self.threads[method, threading.get_ident()] += 1


def test_adispatch_never_calls_the_ledger_on_the_event_loop_thread(
    sandbox: Any, tmp_path: Path
) -> None:
    # A ledger call may wait out an outage for its bounded retry (30 s): on the event
    # loop that would freeze a triggerer or a web app. The lookups planning makes (a
    # resumed job asks about every chunk) must go to a thread like begin and finish.
    path = tmp_path / "ledger.db"
    with SqliteLedger(path) as seed:
        seed.begin(JOB, Intent("earlier", (digest("someone@else.org"),)))
        seed.finish(JOB, "earlier", [digest("someone@else.org")])
    noting = ThreadNotingLedger(SqliteLedger(path))
    loop_thread: list[int] = []

    async def main() -> DispatchReport:
        loop_thread.append(threading.get_ident())
        urls = {"sending_url": sandbox.sending_url, "management_url": sandbox.management_url}
        async with AsyncSendmuxClient(sandbox.api_key, **urls) as client:
            return await adispatch(
                client, template(), [person(i) for i in range(450)], job_key=JOB, ledger=noting
            )

    report = asyncio.run(main())
    noting.inner.close()
    assert report.ok, report.summary_line()
    assert report.queued == 450
    methods = {method for method, _ in noting.threads}
    assert {"pending", "accepted_among", "begin", "finish"} <= methods
    on_loop = {method for method, thread in noting.threads if thread == loop_thread[0]}
    assert not on_loop, f"ledger calls on the event loop thread: {sorted(on_loop)}"
    assert deliveries(sandbox) == Counter({person(i)["email"]: 1 for i in range(450)})


class PacerThatFailsAfterOne:
    """A real in-process pacer whose store "goes away" after the first request."""

    def __init__(self) -> None:
        from sendmux_dispatch import InProcessPacer

        self.inner = InProcessPacer(limit=1000, window=60.0)
        self.acquired = 0

    def _once(self) -> None:
        self.acquired += 1
        if self.acquired > 1:
            raise ConnectionRefusedError("the pacer's store is gone")

    def acquire(self) -> None:
        self._once()
        self.inner.acquire()

    async def aacquire(self) -> None:
        self._once()
        await self.inner.aacquire()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@DRIVERS
def test_a_pacer_failing_before_a_retry_counts_the_batch_failed_not_unsent(
    driver: str, sandbox: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The server accepts the batch and the connection drops; before the client's
    # retry the pacer's store fails. The batch may well have been accepted (here
    # it was): reporting it "not sent" would tell the user nobody got it.
    # The package re-exports the function under the module's name: import the module.
    dispatch_module = importlib.import_module("sendmux_dispatch.dispatch")
    monkeypatch.setattr(dispatch_module, "PACER_UNAVAILABLE_AFTER", 0.2)
    rows = [person(i) for i in range(40)]
    sandbox.set_faults(drop_after_accept=1.0)
    with SqliteLedger(tmp_path / "ledger.db") as ledger:
        report = run_job(driver, sandbox, rows, ledger, pacer=PacerThatFailsAfterOne())
        sandbox.set_faults()
        check_totals(report)
        assert report.stop_cause == "outage"
        assert (report.failed, report.not_sent, report.queued) == (40, 0, 0)
        assert "may have been accepted" in report.failures[0].message
        assert sum(deliveries(sandbox).values()) == 40
        # Its intent stayed pending: the re-run replays the key, nobody is mailed twice.
        again = run_job(driver, sandbox, rows, ledger)
    assert again.ok, again.summary_line()
    assert deliveries(sandbox) == Counter({row["email"]: 1 for row in rows})
