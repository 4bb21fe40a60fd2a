"""SqliteLedger against real files: the write-ahead intent, claims, prune, processes, privacy."""

from __future__ import annotations

import multiprocessing
import os
import pickle
import sqlite3
import stat
import time
from pathlib import Path

import pytest

from sendmux_dispatch import Ledger, LedgerUnavailableError, SendmuxError, SqliteLedger
from sendmux_dispatch.ledger import Intent, recipient_digest
from sendmux_dispatch.recipients import normalize_email

JOB = "newsletter/2026-12"


def digests(*emails: str) -> tuple[int, ...]:
    return tuple(recipient_digest(normalize_email(email)) for email in emails)


@pytest.fixture
def ledger(tmp_path: Path) -> SqliteLedger:
    with SqliteLedger(tmp_path / "ledger.db") as opened:
        yield opened


def test_it_is_a_ledger_and_uses_wal(ledger: SqliteLedger) -> None:
    assert isinstance(ledger, Ledger)
    conn = sqlite3.connect(ledger.path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_the_digest_is_the_one_deduplication_uses() -> None:
    from sendmux_dispatch._digests import DigestSet

    assert recipient_digest("ann@example.com") == DigestSet.digest("ann@example.com")
    assert digests(" Ann@Example.COM ") == digests("ann@example.com")


def test_pending_round_trip_then_finish_records_accepted_and_releases_the_rest(
    ledger: SqliteLedger,
) -> None:
    members = digests("a@x.com", "b@x.com", "c@x.com")
    assert ledger.begin(JOB, Intent("k-1", members)) == set()
    [pending] = ledger.pending(JOB)
    assert pending.key == "k-1"
    assert pending.digests == members  # order kept: the re-run rebuilds the batch in it
    assert pending.attempt == 0
    assert time.time() - pending.created < 60
    # Reopened from the file: the record is durable, not held in the object.
    with SqliteLedger(ledger.path) as again:
        assert again.pending(JOB) == [pending]

    ledger.finish(JOB, "k-1", accepted=members[:2])
    assert ledger.pending(JOB) == []
    assert ledger.accepted_among(JOB, members) == set(members[:2])
    # The member the server did not accept is free for a new batch.
    assert ledger.begin(JOB, Intent("k-2", members[2:])) == set()


def test_begin_refuses_members_accepted_or_pending_under_another_key(
    ledger: SqliteLedger,
) -> None:
    a, b, c, d = digests("a@x.com", "b@x.com", "c@x.com", "d@x.com")
    assert ledger.begin(JOB, Intent("k-1", (a, b))) == set()
    ledger.finish(JOB, "k-1", accepted=(a,))
    assert ledger.begin(JOB, Intent("k-2", (c,))) == set()
    assert ledger.begin(JOB, Intent("k-3", (a, c, d))) == {a, c}
    assert [intent.key for intent in ledger.pending(JOB)] == ["k-2"]  # k-3 not recorded
    # The same key again (a replay) is not a conflict with itself.
    assert ledger.begin(JOB, Intent("k-2", (c,))) == set()
    # Other jobs are other jobs.
    assert ledger.begin("another job", Intent("k-3", (a, c, d))) == set()


def test_finish_records_the_resend_as_pending_in_the_same_step(ledger: SqliteLedger) -> None:
    a, b, c = digests("a@x.com", "b@x.com", "c@x.com")
    ledger.begin(JOB, Intent("k-1", (a, b, c)))
    ledger.finish(JOB, "k-1", accepted=(a,), successor=Intent("k-1-r1", (b, c), attempt=1))
    [resend] = ledger.pending(JOB)
    assert (resend.key, resend.digests, resend.attempt) == ("k-1-r1", (b, c), 1)
    assert ledger.begin(JOB, Intent("k-9", (b,))) == {b}
    # A second worker finishing the same replay later adds no stale resend.
    ledger.finish(JOB, "k-1-r1", accepted=(b, c))
    ledger.finish(JOB, "k-1", accepted=(a,), successor=Intent("k-1-r1", (b, c), attempt=1))
    assert ledger.pending(JOB) == []
    assert ledger.accepted_among(JOB, (a, b, c)) == {a, b, c}


def test_stats_and_jobs(ledger: SqliteLedger) -> None:
    assert ledger.stats(JOB) is None
    members = digests(*(f"r{i}@x.com" for i in range(10)))
    ledger.begin(JOB, Intent("k-1", members[:5]))
    ledger.finish(JOB, "k-1", accepted=members[:5])
    ledger.begin(JOB, Intent("k-2", members[5:]))
    stats = ledger.stats(JOB)
    assert stats is not None
    assert (stats.job_key, stats.accepted, stats.pending, stats.pending_members) == (JOB, 5, 1, 5)
    assert stats.oldest_pending is not None
    assert stats.created <= stats.updated
    ledger.begin("older", Intent("k", members[:1]))
    assert [job.job_key for job in ledger.jobs()] == ["older", JOB]


def test_prune_forgets_whole_jobs_by_age(ledger: SqliteLedger) -> None:
    (a,) = digests("a@x.com")
    for job in ("old-1", "old-2", "fresh"):
        ledger.begin(job, Intent("k", (a,)))
        ledger.finish(job, "k", accepted=(a,))
    conn = sqlite3.connect(ledger.path)
    with conn:
        conn.execute(
            "UPDATE jobs SET updated = ? WHERE job_key LIKE 'old-%'", (time.time() - 8 * 86400,)
        )
    conn.close()
    assert ledger.prune(older_than=7 * 86400, job_key="fresh") == 0
    assert ledger.prune(older_than=7 * 86400, job_key="old-1") == 1
    assert ledger.stats("old-1") is None
    assert ledger.stats("old-2") is not None
    assert ledger.prune(older_than=7 * 86400) == 1  # across jobs: old-2 only
    assert [job.job_key for job in ledger.jobs()] == ["fresh"]
    assert ledger.accepted_among("old-2", (a,)) == set()
    assert ledger.prune(older_than=0, job_key="fresh") == 1  # forget it now
    assert ledger.jobs() == []
    with pytest.raises(ValueError, match="older_than"):
        ledger.prune(older_than=-1)


def test_the_file_holds_digests_only_never_an_address(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    emails = [f"person.{i}@private-example.org" for i in range(300)]
    with SqliteLedger(path, synchronous="full") as ledger:
        members = digests(*emails)
        for start in range(0, 300, 100):
            ledger.begin(JOB, Intent(f"k{start}", members[start : start + 100]))
        ledger.finish(JOB, "k0", accepted=members[:100])
    content = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    assert b"private-example" not in content
    assert b"person." not in content
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def _worker(
    path: str, worker: int, rounds: int, queue: multiprocessing.Queue[object], start: object
) -> None:
    wins: list[tuple[str, tuple[int, ...]]] = []
    with SqliteLedger(path) as ledger:
        start.wait(timeout=60)  # type: ignore[attr-defined]
        for round_ in range(rounds):
            # Both workers fight over the same members, under different keys.
            members = tuple(recipient_digest(f"r{round_}-{i}@x.com") for i in range(20))
            key = f"w{worker}-{round_}"
            if not ledger.begin(JOB, Intent(key, members)):
                wins.append((key, members))
                ledger.finish(JOB, key, accepted=members)
            # And each writes its own members, so the file sees interleaved writers.
            own = tuple(recipient_digest(f"w{worker}-{round_}-{i}@x.com") for i in range(50))
            ledger.begin(JOB, Intent(f"own-{worker}-{round_}", own))
            ledger.finish(JOB, f"own-{worker}-{round_}", accepted=own)
    queue.put(wins)


def test_two_processes_share_one_ledger_and_each_member_is_claimed_once(tmp_path: Path) -> None:
    path = str(tmp_path / "shared.db")
    SqliteLedger(path).close()
    context = multiprocessing.get_context("spawn")
    queue: multiprocessing.Queue[object] = context.Queue()
    rounds = 150
    start = context.Barrier(2)  # both open the file, then write at the same moment
    procs = [context.Process(target=_worker, args=(path, n, rounds, queue, start)) for n in (1, 2)]
    for proc in procs:
        proc.start()
    results = [queue.get(timeout=120) for _ in procs]
    for proc in procs:
        proc.join(timeout=30)
        assert proc.exitcode == 0
    wins = [win for result in results for win in result]  # type: ignore[attr-defined]
    # Every contested batch went to exactly one worker: no member pending twice.
    assert sorted(key.split("-", 1)[1] for key, _ in wins) == sorted(str(n) for n in range(rounds))
    with SqliteLedger(path) as ledger:
        stats = ledger.stats(JOB)
        assert stats is not None
        assert stats.accepted == rounds * 20 + 2 * rounds * 50
        assert stats.pending == 0


def test_a_locked_file_raises_ledger_unavailable_after_the_bounded_wait(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    ledger = SqliteLedger(path, unavailable_after=0.6, busy_timeout=0.1)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # another process holding the write lock
    started = time.monotonic()
    with pytest.raises(LedgerUnavailableError) as caught:
        ledger.begin(JOB, Intent("k", digests("a@x.com")))
    waited = time.monotonic() - started
    assert 0.5 <= waited < 5
    error = caught.value
    assert isinstance(error, SendmuxError)
    assert error.retryable
    assert error.backend == "sqlite"
    assert error.code == "ledger_unavailable"
    assert str(path) in str(error)
    assert "nothing was sent unrecorded" in str(error)
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.backend, copy.message) == ("sqlite", error.message)
    holder.execute("ROLLBACK")
    holder.close()
    assert ledger.begin(JOB, Intent("k", digests("a@x.com"))) == set()  # works again
    ledger.close()


def test_a_full_disk_raises_ledger_unavailable_and_records_nothing_in_part(
    tmp_path: Path,
) -> None:
    ledger = SqliteLedger(tmp_path / "ledger.db", unavailable_after=0.5)
    conn = ledger._conn
    assert conn is not None
    # SQLite's own "database or disk is full" (SQLITE_FULL), as on a full disk.
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages + 8}")
    begun: list[str] = []
    finished: list[str] = []

    def fill() -> None:
        for n in range(1000):
            members = digests(*(f"r{n}-{i}@x.com" for i in range(100)))
            key = f"k-{n}"
            ledger.begin(JOB, Intent(key, members))
            begun.append(key)
            ledger.finish(JOB, key, accepted=members)
            finished.append(key)

    with pytest.raises(LedgerUnavailableError, match="full") as caught:
        fill()
    assert caught.value.waited >= 0.5
    assert finished  # some fitted before the disk filled
    conn.execute("PRAGMA max_page_count = 1073741823")  # space again
    stats = ledger.stats(JOB)
    assert stats is not None
    # Each write landed whole or not at all: what was recorded is exactly what
    # returned, and a batch begun but not finished is still pending, whole.
    assert stats.accepted == 100 * len(finished)
    assert [intent.key for intent in ledger.pending(JOB)] == begun[len(finished) :]
    assert stats.pending_members == 100 * (len(begun) - len(finished))
    ledger.close()


def test_a_file_that_is_not_a_database_fails_at_once(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    path.write_bytes(b"this is not sqlite" * 100)
    started = time.monotonic()
    with pytest.raises(LedgerUnavailableError, match="not a database"):
        SqliteLedger(path, unavailable_after=10)
    assert time.monotonic() - started < 5


def test_intents_are_json_ready_and_small() -> None:
    intent = Intent("key-1", digests(*(f"r{i}@x.com" for i in range(100))), attempt=2)
    data = intent.to_json()
    import json

    text = json.dumps(data)
    assert len(text) < 2000
    assert Intent.from_json(json.loads(text)) == intent
    with pytest.raises(ValueError, match="distinct"):
        Intent("k", (5, 5))
    with pytest.raises(ValueError, match="64-bit"):
        Intent("k", (0,))


def _use_inherited(ledger: SqliteLedger) -> None:
    inherited = ledger._conn
    ledger.begin(JOB, Intent("child", digests("child@x.com")))
    ledger.finish(JOB, "child", accepted=digests("child@x.com"))
    # SQLite's locks belong to the process that opened the connection.
    if ledger._conn is inherited:
        raise SystemExit(3)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_ledger_inherited_through_fork_opens_its_own_connection(ledger: SqliteLedger) -> None:
    ledger.begin(JOB, Intent("parent", digests("parent@x.com")))
    parent_conn = ledger._conn
    child = multiprocessing.get_context("fork").Process(target=_use_inherited, args=(ledger,))
    child.start()
    child.join(timeout=60)
    assert child.exitcode == 0
    assert ledger._conn is parent_conn  # the parent's connection was left alone
    ledger.finish(JOB, "parent", accepted=digests("parent@x.com"))
    assert ledger.accepted_among(JOB, digests("parent@x.com", "child@x.com")) == set(
        digests("parent@x.com", "child@x.com")
    )
