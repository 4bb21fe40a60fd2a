"""RedisLedger against a real Redis: the shared one (db from SENDMUX_TEST_REDIS_URL) and one
the test starts, kills and restarts itself."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from sendmux_dispatch import Ledger, LedgerUnavailableError, RedisLedger
from sendmux_dispatch.ledger import Intent, recipient_digest

pytestmark = pytest.mark.redis

JOB = "dag/task/run-1/-1"


def digests(*emails: str) -> tuple[int, ...]:
    return tuple(recipient_digest(email) for email in emails)


@pytest.fixture
def ledger(redis_url: str) -> Iterator[RedisLedger]:
    prefix = f"test:ledger:{uuid.uuid4().hex}"
    opened = RedisLedger(redis_url, prefix=prefix)
    yield opened
    client = opened._client
    for key in client.scan_iter(match=f"{prefix}:*"):
        client.delete(key)
    opened.close()


def test_pending_round_trip_and_finish(ledger: RedisLedger) -> None:
    assert isinstance(ledger, Ledger)
    a, b, c = digests("a@x.com", "b@x.com", "c@x.com")
    assert ledger.begin(JOB, Intent("k-1", (c, a, b))) == set()
    [pending] = ledger.pending(JOB)
    assert (pending.key, pending.digests, pending.attempt) == ("k-1", (c, a, b), 0)
    assert time.time() - pending.created < 60
    ledger.finish(JOB, "k-1", accepted=(a, c), successor=Intent("k-1-r1", (b,), attempt=1))
    [resend] = ledger.pending(JOB)
    assert (resend.key, resend.digests, resend.attempt) == ("k-1-r1", (b,), 1)
    assert ledger.accepted_among(JOB, (a, b, c)) == {a, c}
    ledger.finish(JOB, "k-1-r1", accepted=())
    assert ledger.pending(JOB) == []
    assert ledger.accepted_among(JOB, (a, b, c)) == {a, c}
    assert ledger.begin(JOB, Intent("k-2", (b,))) == set()  # released, free again


def test_begin_refuses_taken_members_and_is_idempotent_for_its_own_key(
    ledger: RedisLedger,
) -> None:
    a, b, c, d = digests("a@x.com", "b@x.com", "c@x.com", "d@x.com")
    ledger.begin(JOB, Intent("k-1", (a, b)))
    ledger.finish(JOB, "k-1", accepted=(a,))
    ledger.begin(JOB, Intent("k-2", (c,)))
    assert ledger.begin(JOB, Intent("k-3", (a, c, d))) == {a, c}
    assert [intent.key for intent in ledger.pending(JOB)] == ["k-2"]
    assert ledger.begin(JOB, Intent("k-2", (c,))) == set()
    # A late finish of a batch someone else already finished adds no stale resend.
    ledger.finish(JOB, "k-2", accepted=(c,))
    ledger.finish(JOB, "k-2", accepted=(c,), successor=Intent("k-2-r1", (c,), attempt=1))
    assert ledger.pending(JOB) == []


def test_stats_jobs_and_prune(ledger: RedisLedger) -> None:
    members = digests(*(f"r{i}@x.com" for i in range(10)))
    for job in ("old", JOB):
        ledger.begin(job, Intent("k-1", members[:6]))
        ledger.finish(job, "k-1", accepted=members[:6])
        ledger.begin(job, Intent("k-2", members[6:]))
    stats = ledger.stats(JOB)
    assert stats is not None
    assert (stats.job_key, stats.accepted, stats.pending, stats.pending_members) == (JOB, 6, 1, 4)
    assert stats.oldest_pending is not None
    assert ledger.stats("never ran") is None
    assert {job.job_key for job in ledger.jobs()} == {"old", JOB}

    client = ledger._client
    meta = ledger._keys(ledger._jid("old"))[3]
    past = time.time() - 40 * 86400
    client.hset(meta, "updated", past)
    client.zadd(ledger._index, {ledger._jid("old"): past})
    assert ledger.prune(older_than=30 * 86400, job_key=JOB) == 0
    assert ledger.prune(older_than=30 * 86400) == 1
    assert [job.job_key for job in ledger.jobs()] == [JOB]
    assert ledger.accepted_among("old", members) == set()
    assert ledger.pending("old") == []
    assert ledger.prune(older_than=0, job_key=JOB) == 1
    assert ledger.prune(older_than=0, job_key="never ran") == 0
    assert ledger.jobs() == []
    # Written again right after it was forgotten: listed (and prunable) again.
    ledger.begin(JOB, Intent("k-9", members[:1]))
    assert [job.job_key for job in ledger.jobs()] == [JOB]
    assert ledger.prune(older_than=0) == 1


def test_workers_racing_for_the_same_members_never_both_win(ledger: RedisLedger) -> None:
    wins: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(4)

    def worker(n: int) -> None:
        start.wait()
        for round_ in range(100):
            members = digests(*(f"r{round_}-{i}@x.com" for i in range(10)))
            key = f"w{n}-{round_}"
            if not ledger.begin(JOB, Intent(key, members)):
                with lock:
                    wins.append(key)
                ledger.finish(JOB, key, accepted=members)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(int(key.split("-")[1]) for key in wins) == list(range(100))
    stats = ledger.stats(JOB)
    assert stats is not None
    assert (stats.accepted, stats.pending, stats.pending_members) == (1000, 0, 0)


def test_redis_keeps_digests_only(ledger: RedisLedger) -> None:
    emails = [f"person.{i}@private-example.org" for i in range(50)]
    ledger.begin(JOB, Intent("k", digests(*emails)))
    ledger.finish(JOB, "k", accepted=digests(*emails[:25]))
    client = ledger._client
    for key in client.scan_iter(match=f"{ledger.prefix}:*"):
        dumped = client.dump(key)
        assert dumped is not None
        assert b"private-example" not in dumped


# ---------------------------------------------------------------- a Redis of our own


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start_redis(port: int, directory: Path) -> subprocess.Popen[bytes]:
    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("redis-server is not installed")
    proc = subprocess.Popen(
        [
            server,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(directory),
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--save",
            "",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    pytest.fail("the test's own redis-server did not start")


def test_redis_down_raises_after_the_bounded_wait_and_works_after_a_restart(
    tmp_path: Path,
) -> None:
    port = _free_port()
    proc = _start_redis(port, tmp_path)
    try:
        ledger = RedisLedger(
            f"redis://127.0.0.1:{port}/0", unavailable_after=1.5, socket_timeout=0.5
        )
        a, b, c = digests("a@x.com", "b@x.com", "c@x.com")
        ledger.begin(JOB, Intent("k-1", (a, b)))
        ledger.finish(JOB, "k-1", accepted=(a, b))
        ledger.begin(JOB, Intent("k-2", (c,)))

        proc.kill()  # mid-job: Redis is gone
        proc.wait(timeout=10)
        started = time.monotonic()
        with pytest.raises(LedgerUnavailableError) as caught:
            ledger.finish(JOB, "k-2", accepted=(c,))
        waited = time.monotonic() - started
        assert 1.4 <= waited < 6
        error = caught.value
        assert error.backend == "redis"
        assert error.retryable
        assert f"127.0.0.1:{port}/0" in str(error)
        with pytest.raises(LedgerUnavailableError):
            ledger.accepted_among(JOB, (a,))

        proc = _start_redis(port, tmp_path)  # back, from its append-only file
        assert ledger.accepted_among(JOB, (a, b, c)) == {a, b}
        [pending] = ledger.pending(JOB)  # the unrecorded answer is still pending
        assert pending.key == "k-2"
        ledger.finish(JOB, "k-2", accepted=(c,))
        assert ledger.accepted_among(JOB, (a, b, c)) == {a, b, c}
        assert ledger.pending(JOB) == []
        ledger.close()
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_a_redis_that_comes_back_within_the_wait_costs_nothing(tmp_path: Path) -> None:
    port = _free_port()
    proc = _start_redis(port, tmp_path)
    try:
        ledger = RedisLedger(f"redis://127.0.0.1:{port}/0", unavailable_after=20)
        (a,) = digests("a@x.com")
        ledger.begin(JOB, Intent("k-1", (a,)))
        proc.kill()
        proc.wait(timeout=10)
        restarted: list[subprocess.Popen[bytes]] = []
        timer = threading.Timer(1.0, lambda: restarted.append(_start_redis(port, tmp_path)))
        timer.start()
        ledger.finish(JOB, "k-1", accepted=(a,))  # waits through the outage
        timer.join()
        proc = restarted[0]
        assert ledger.accepted_among(JOB, (a,)) == {a}
        ledger.close()
    finally:
        proc.kill()
        proc.wait(timeout=10)
