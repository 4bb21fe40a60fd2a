"""RedisLedger against a real Redis: the shared one (db from SENDMUX_TEST_REDIS_URL) and one
the test starts, kills and restarts itself."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import redis

from sendmux_dispatch import Ledger, LedgerUnavailableError, RedisLedger
from sendmux_dispatch.ledger import Intent, recipient_digest
from sendmux_dispatch.ledger._base import Finish, GroupCommitLedger, record

pytestmark = pytest.mark.redis

JOB = "dag/task/run-1/-1"


def digests(*emails: str) -> tuple[int, ...]:
    return tuple(recipient_digest(email) for email in emails)


def _opened(redis_url: str | redis.Redis, **kwargs: Any) -> Iterator[RedisLedger]:
    prefix = f"test:ledger:{uuid.uuid4().hex}"
    opened = RedisLedger(redis_url, prefix=prefix, **kwargs)
    yield opened
    client = opened._client
    for key in client.scan_iter(match=f"{prefix}:*"):
        client.delete(key)
    opened.close()


@pytest.fixture
def ledger(redis_url: str) -> Iterator[RedisLedger]:
    yield from _opened(redis_url)


@pytest.fixture
def twin(redis_url: str) -> Iterator[RedisLedger]:
    """A second ledger on the same Redis, under its own prefix."""
    yield from _opened(redis_url)


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


# ---------------------------------------------------------------- record: a round at once

# Before the round: A accepted, B and C pending under k-1, D and E under k-2.
A, B, C, D, E, F, G, H, K, J = digests(*(f"{n}@x.com" for n in "abcdefghkj"))


def _before_the_round(ledger: RedisLedger) -> None:
    ledger.begin(JOB, Intent("k-0", (A,)))
    ledger.finish(JOB, "k-0", accepted=(A,))
    ledger.begin(JOB, Intent("k-1", (B, C)))
    ledger.begin(JOB, Intent("k-2", (D, E)))


FINISHES = [
    # D accepted, E resent under a successor: E pending under k-2-r1.
    Finish("k-2", (D,), Intent("k-2-r1", (E,), attempt=1)),
    # k-0 was finished already: F is added, the stale successor is not.
    Finish("k-0", (F,), Intent("k-0-r1", (G,), attempt=1)),
    # B accepted, C released.
    Finish("k-1", (B,)),
]
BEGINS = [
    Intent("k-3", (G, A)),  # A accepted: taken
    Intent("k-4", (H, E)),  # E pending under k-2-r1: taken
    Intent("k-5", (C, H)),  # C released by a finish of this round: recorded
    Intent("k-6", (K, C)),  # C pending under k-5, begun earlier in this round: taken
    Intent("k-5", (C, H)),  # the same key again: a no-op
    Intent("k-7", (G, K, J)),  # G free (k-3 took nothing, k-0-r1 was not added)
]
ANSWERS = [{A}, {E}, set(), {C}, set(), set()]


def _one_by_one(
    ledger: RedisLedger, finishes: Sequence[Finish], begins: Sequence[Intent]
) -> list[set[int]]:
    for finish in finishes:
        ledger.finish(JOB, finish.key, finish.accepted, finish.successor)
    return [ledger.begin(JOB, intent) for intent in begins]


def _stored(ledger: RedisLedger) -> tuple[object, ...]:
    """The job's keys as stored, but for the times (which differ between two runs)."""
    client = ledger._client
    acc, claims, _pend, meta = ledger._keys(ledger._jid(JOB))
    pending = [(i.key, i.digests, i.attempt) for i in ledger.pending(JOB)]
    return (
        client.smembers(acc),
        client.hgetall(claims),
        pending,
        client.hget(meta, "job_key"),
        ledger.accepted_among(JOB, (A, B, C, D, E, F, G, H, K, J)),
    )


def test_record_stores_and_answers_exactly_as_the_calls_one_by_one(
    ledger: RedisLedger, twin: RedisLedger
) -> None:
    assert isinstance(ledger, GroupCommitLedger)
    for each in (ledger, twin):
        _before_the_round(each)
    assert record(ledger, JOB, FINISHES, BEGINS) == ANSWERS
    assert _one_by_one(twin, FINISHES, BEGINS) == ANSWERS
    assert _stored(ledger) == _stored(twin)
    assert [i.key for i in ledger.pending(JOB)] == ["k-2-r1", "k-5", "k-7"]
    assert ledger.accepted_among(JOB, (A, B, C, D, E, F, G)) == {A, B, D, F}
    stats = ledger.stats(JOB)
    assert stats is not None
    assert (stats.accepted, stats.pending, stats.pending_members) == (4, 3, 6)
    # A round on a job Redis has never seen creates and indexes it.
    assert ledger.record("fresh/job", [], [Intent("k-1", (A,))]) == [set()]
    assert "fresh/job" in {job.job_key for job in ledger.jobs()}


def test_record_repeated_whole_changes_nothing(ledger: RedisLedger) -> None:
    _before_the_round(ledger)
    assert ledger.record(JOB, FINISHES, BEGINS) == ANSWERS
    stored = _stored(ledger)
    # A retry after a lost reply: the same state, every recorded begin still
    # answered "recorded"; a refused one is still refused, and may now also find
    # members that begins after it recorded (k-3's G, pending under k-7).
    again = ledger.record(JOB, FINISHES, BEGINS)
    assert _stored(ledger) == stored
    assert [bool(taken) for taken in again] == [bool(taken) for taken in ANSWERS]
    assert all(first <= second for first, second in zip(ANSWERS, again, strict=True))
    assert again[0] == {A, G}


def test_record_of_nothing_and_bad_input(ledger: RedisLedger) -> None:
    assert ledger.record(JOB, [], []) == []
    assert ledger.stats(JOB) is None  # no write at all
    with pytest.raises(ValueError, match="64-bit integer"):
        ledger.record(JOB, [Finish("k-1", (0,))], [])
    with pytest.raises(ValueError, match="job_key"):
        ledger.record("", [], [Intent("k-1", (A,))])
    assert ledger.stats(JOB) is None


class CountingConnection(redis.Connection):
    """Counts what the client sends: each send is one round trip (a pipeline sends once)."""

    sent = 0

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        CountingConnection.sent += 1
        super().send_packed_command(command, check_health)


def test_a_round_of_many_events_is_one_round_trip(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url, connection_class=CountingConnection)
    for ledger in _opened(client):
        members = digests(*(f"r{i}@x.com" for i in range(30 * 100)))
        batches = [members[i : i + 100] for i in range(0, len(members), 100)]
        # The first round creates the job (indexed: a second command) and loads the script.
        ledger.record(JOB, [], [Intent(f"k-{n}", batch) for n, batch in enumerate(batches[:15])])
        CountingConnection.sent = 0
        finishes = [Finish(f"k-{n}", batch) for n, batch in enumerate(batches[:15])]
        begins = [Intent(f"k-{n}", batch) for n, batch in enumerate(batches[15:], 15)]
        assert ledger.record(JOB, finishes, begins) == [set()] * 15
        assert CountingConnection.sent == 1
        stats = ledger.stats(JOB)
        assert stats is not None
        assert (stats.accepted, stats.pending, stats.pending_members) == (1500, 15, 1500)
    client.close()


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


class OwnRedis:
    """A redis-server of the test's own (append-only, on a free port) to kill and restart."""

    def __init__(self, directory: Path) -> None:
        self.port = _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.directory = directory
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = _start_redis(self.port, self.directory)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def impatient_ledger(self) -> RedisLedger:
        """A ledger that gives up on this server within 1.5 s (0.5 s per attempt)."""
        return RedisLedger(self.url, unavailable_after=1.5, socket_timeout=0.5)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    server = OwnRedis(tmp_path)
    server.start()
    yield server
    server.kill()


def test_redis_down_raises_after_the_bounded_wait_and_works_after_a_restart(
    own_redis: OwnRedis,
) -> None:
    ledger = own_redis.impatient_ledger()
    a, b, c = digests("a@x.com", "b@x.com", "c@x.com")
    ledger.begin(JOB, Intent("k-1", (a, b)))
    ledger.finish(JOB, "k-1", accepted=(a, b))
    ledger.begin(JOB, Intent("k-2", (c,)))

    own_redis.kill()  # mid-job: Redis is gone
    started = time.monotonic()
    with pytest.raises(LedgerUnavailableError) as caught:
        ledger.finish(JOB, "k-2", accepted=(c,))
    waited = time.monotonic() - started
    assert 1.4 <= waited < 6
    error = caught.value
    assert error.backend == "redis"
    assert error.retryable
    assert f"127.0.0.1:{own_redis.port}/0" in str(error)
    with pytest.raises(LedgerUnavailableError):
        ledger.accepted_among(JOB, (a,))

    own_redis.start()  # back, from its append-only file
    assert ledger.accepted_among(JOB, (a, b, c)) == {a, b}
    [pending] = ledger.pending(JOB)  # the unrecorded answer is still pending
    assert pending.key == "k-2"
    ledger.finish(JOB, "k-2", accepted=(c,))
    assert ledger.accepted_among(JOB, (a, b, c)) == {a, b, c}
    assert ledger.pending(JOB) == []
    ledger.close()


def test_a_redis_that_comes_back_within_the_wait_costs_nothing(own_redis: OwnRedis) -> None:
    ledger = RedisLedger(own_redis.url, unavailable_after=20)
    (a,) = digests("a@x.com")
    ledger.begin(JOB, Intent("k-1", (a,)))
    own_redis.kill()
    timer = threading.Timer(1.0, own_redis.start)
    timer.start()
    ledger.finish(JOB, "k-1", accepted=(a,))  # waits through the outage
    timer.join()
    assert ledger.accepted_among(JOB, (a,)) == {a}
    ledger.close()


def test_record_on_a_redis_that_is_down_raises_in_time_and_can_be_repeated_whole(
    own_redis: OwnRedis,
) -> None:
    ledger = own_redis.impatient_ledger()
    _before_the_round(ledger)
    own_redis.kill()
    started = time.monotonic()
    with pytest.raises(LedgerUnavailableError) as caught:
        ledger.record(JOB, FINISHES, BEGINS)
    assert 1.4 <= time.monotonic() - started < 6
    assert caught.value.backend == "redis"

    own_redis.start()
    assert [i.key for i in ledger.pending(JOB)] == ["k-1", "k-2"]  # nothing of the round
    assert ledger.record(JOB, FINISHES, BEGINS) == ANSWERS  # the round, repeated whole
    assert [i.key for i in ledger.pending(JOB)] == ["k-2-r1", "k-5", "k-7"]
    ledger.close()
