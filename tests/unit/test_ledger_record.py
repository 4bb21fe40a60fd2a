"""Group commit: SqliteLedger.record against the calls one by one, and the LedgerWriter thread."""

from __future__ import annotations

import random
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from sendmux_dispatch import LedgerUnavailableError, SqliteLedger
from sendmux_dispatch.ledger import Finish, GroupCommitLedger, Intent, LedgerWriter, record

JOB = "group-commit/2026-12"


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[SqliteLedger, SqliteLedger]]:
    with SqliteLedger(tmp_path / "a.db") as a, SqliteLedger(tmp_path / "b.db") as b:
        yield a, b


def state(ledger: SqliteLedger, universe: Sequence[int]) -> tuple[object, ...]:
    pending = sorted((i.key, i.digests, i.attempt) for i in ledger.pending(JOB))
    return pending, ledger.accepted_among(JOB, universe)


def test_record_answers_and_stores_exactly_as_the_calls_one_by_one(
    pair: tuple[SqliteLedger, SqliteLedger],
) -> None:
    grouped, single = pair
    assert isinstance(grouped, GroupCommitLedger)
    rng = random.Random(7)
    # A small universe, so begins collide with accepted members, with other
    # pending intents and with earlier begins of the same round.
    universe = [rng.randrange(1, 1 << 64) for _ in range(120)]
    pending: list[Intent] = []
    serial = 0
    taken_seen = 0
    for _ in range(150):
        finishes: list[Finish] = []
        for _ in range(rng.randrange(0, 4)):
            if not pending:
                break
            intent = pending.pop(rng.randrange(len(pending)))
            accepted = [d for d in intent.digests if rng.random() < 0.7]
            rest = tuple(d for d in intent.digests if d not in accepted)
            successor = None
            if rest and rng.random() < 0.3:
                serial += 1
                successor = Intent(f"resend-{serial}", rest, intent.attempt + 1)
            finishes.append(Finish(intent.key, accepted, successor))
        begins = []
        for _ in range(rng.randrange(0, 5)):
            serial += 1
            begins.append(Intent(f"batch-{serial}", tuple(rng.sample(universe, 4))))
        if pending and rng.random() < 0.2:
            begins.append(pending[0])  # a replay: the same key and members again
        answers = grouped.record(JOB, finishes, begins)
        for finish in finishes:
            single.finish(JOB, finish.key, finish.accepted, finish.successor)
        assert answers == [single.begin(JOB, intent) for intent in begins]
        assert state(grouped, universe) == state(single, universe)
        taken_seen += sum(1 for answer in answers if answer)
        pending = [Intent(k, d, a) for k, d, a in state(single, universe)[0]]  # type: ignore[misc]
    assert taken_seen > 20, "the rounds never collided: the test checks too little"
    assert grouped.record(JOB, [], []) == []


def test_a_round_is_a_few_statements_whatever_its_size(tmp_path: Path) -> None:
    with SqliteLedger(tmp_path / "ledger.db") as ledger:
        counts = []
        for size in (1, 40):
            statements: list[str] = []
            conn = ledger._connection()
            conn.set_trace_callback(statements.append)
            begins = [
                Intent(
                    f"k{size}-{i}",
                    tuple(range(1 + 1000 * i + size * 100_000, 101 + 1000 * i + size * 100_000)),
                )
                for i in range(size)
            ]
            ledger.record(JOB, [], begins)
            ledger.record(JOB, [Finish(i.key, i.digests) for i in begins], [])
            conn.set_trace_callback(None)
            counts.append(len(statements))
        assert counts[0] == counts[1] <= 12, counts


def test_a_failed_round_stores_none_of_it(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    with SqliteLedger(path, unavailable_after=0.2, busy_timeout=0.05) as ledger:
        ledger.record(JOB, [], [Intent("a", (1, 2))])
        blocker = sqlite3.connect(path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        with pytest.raises(LedgerUnavailableError):
            ledger.record(JOB, [Finish("a", (1, 2))], [Intent("b", (3,))])
        blocker.execute("ROLLBACK")
        blocker.close()
        assert [i.key for i in ledger.pending(JOB)] == ["a"]
        assert ledger.accepted_among(JOB, [1, 2, 3]) == set()
        # Repeated whole once the store is back: stored once.
        assert ledger.record(JOB, [Finish("a", (1, 2))], [Intent("b", (3,))]) == [set()]
        assert [i.key for i in ledger.pending(JOB)] == ["b"]
        assert ledger.accepted_among(JOB, [1, 2, 3]) == {1, 2}


class CountingLedger:
    """A real SqliteLedger without ``record``: the writer falls back to the calls one by one."""

    def __init__(self, inner: SqliteLedger) -> None:
        self.inner = inner
        self.calls: list[str] = []

    def begin(self, job_key: str, intent: Intent) -> set[int]:
        self.calls.append("begin")
        return self.inner.begin(job_key, intent)

    def finish(
        self, job_key: str, key: str, accepted: Sequence[int], successor: Any = None
    ) -> None:
        self.calls.append("finish")
        self.inner.finish(job_key, key, accepted, successor)

    def __getattr__(self, name: str) -> Any:
        if name == "record":
            raise AttributeError(name)
        return getattr(self.inner, name)


def test_record_falls_back_to_the_calls_one_by_one(tmp_path: Path) -> None:
    with SqliteLedger(tmp_path / "ledger.db") as inner:
        plain = CountingLedger(inner)
        assert not isinstance(plain, GroupCommitLedger)
        inner.begin(JOB, Intent("a", (1,)))
        assert record(plain, JOB, [Finish("a", (1,))], [Intent("b", (1,)), Intent("c", (2,))]) == [
            {1},
            set(),
        ]
        assert plain.calls == ["finish", "begin", "begin"]


def test_the_writer_groups_what_was_queued_during_a_round(tmp_path: Path) -> None:
    with SqliteLedger(tmp_path / "ledger.db") as inner:
        rounds: list[tuple[int, int]] = []

        original = inner.record

        def noted(
            job_key: str, finishes: Sequence[Finish], begins: Sequence[Intent]
        ) -> list[set[int]]:
            rounds.append((len(finishes), len(begins)))
            gate.wait()
            return original(job_key, finishes, begins)

        gate = threading.Event()
        inner.record = noted  # type: ignore[method-assign]
        writer = LedgerWriter(inner, JOB)
        first = writer.begin(Intent("k0", (1,)))
        # The first round is held at the gate: everything queued meanwhile is the next round.
        while not rounds:
            threading.Event().wait(0.001)
        later = [writer.begin(Intent(f"k{i}", (i + 1,))) for i in range(1, 30)]
        done = writer.finish("k0", (1,), wait=True)
        gate.set()
        writer.flush()
        assert first.result() == set()
        assert [future.result() for future in later] == [set()] * 29
        assert done is not None
        assert done.result() is None
        assert rounds == [(0, 1), (1, 29)]
        assert inner.accepted_among(JOB, [1]) == {1}
        assert len(inner.pending(JOB)) == 29
        writer.close()


def test_a_failed_round_fails_its_callers_and_every_later_call(tmp_path: Path) -> None:
    with SqliteLedger(tmp_path / "ledger.db") as inner:
        outage = LedgerUnavailableError("the store is gone", backend="test")

        def down(*args: object) -> list[set[int]]:
            raise outage

        inner.record = down  # type: ignore[method-assign]
        writer = LedgerWriter(inner, JOB)
        begun = writer.begin(Intent("a", (1,)))
        with pytest.raises(LedgerUnavailableError):
            begun.result(timeout=5)
        with pytest.raises(LedgerUnavailableError):
            writer.flush()
        assert writer.error is outage
        later = writer.finish("a", (1,), wait=True)
        assert later is not None
        assert later.exception(timeout=0) is outage
        assert writer.finish("a", (1,)) is None  # not waited for: the error is the record
        writer.close()


def test_release_frees_a_begun_batch_that_was_never_sent(tmp_path: Path) -> None:
    with SqliteLedger(tmp_path / "ledger.db") as inner:
        writer = LedgerWriter(inner, JOB)
        begun = writer.begin(Intent("a", (1, 2)))
        writer.release("a", begun)
        writer.flush()
        writer.flush()  # the release is queued when the begin is stored
        assert inner.pending(JOB) == []
        assert inner.accepted_among(JOB, [1, 2]) == set()
        writer.close()
        with pytest.raises(RuntimeError, match="closed"):
            writer.begin(Intent("b", (3,)))
