"""The send ledger of an Airflow task: on the task state store (3.3+) or from ``ledger_url``.

The first tests hold TaskStateStoreLedger to the protocol over an in-memory
store that behaves like Airflow's accessor (JSON values, one key per write)
and can "die" before any write; the last ones run real Airflow: a send task
whose first try fails half-way and whose retry reads an edited list.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from airflow_home import DAGS_FOLDER, airflow_env, run_airflow

from sendmux_airflow import TaskStateStoreLedger, ledger_for
from sendmux_airflow._ledger import (
    CHUNK_DIGESTS,
    HEAD_KEY,
    PENDING_KEY,
    _hex,
    chunk_key,
    ledger_from_url,
)
from sendmux_dispatch import Ledger, SqliteLedger
from sendmux_dispatch.errors import LedgerUnavailableError
from sendmux_dispatch.keys import job_key_for
from sendmux_dispatch.ledger import Intent, recipient_digest
from sendmux_dispatch.ledger._base import Finish, GroupCommitLedger, record

JOB = "dag/send/manual__2026-01-01/-1"


class Killed(BaseException):
    """The task process dying before a write (nothing catches a BaseException on the way)."""


class MemoryStore:
    """Airflow's TaskStateStoreAccessor in memory: JSON values, each write one key."""

    def __init__(self) -> None:
        self.values: dict[str, str] = {}
        self.writes = 0
        self.kill_at: int | None = None  # die before this write (0-based)
        self.retentions: list[timedelta | None] = []

    def _write(self) -> None:
        if self.kill_at is not None and self.writes >= self.kill_at:
            raise Killed
        self.writes += 1

    def get(self, key: str, default: Any = None) -> Any:
        text = self.values.get(key)
        return default if text is None else json.loads(text)

    def set(self, key: str, value: Any, *, retention: timedelta | None = None) -> None:
        self._write()
        self.retentions.append(retention)
        self.values[key] = json.dumps(value)

    def delete(self, key: str) -> None:
        self._write()
        self.values.pop(key, None)


def _digests(prefix: str, count: int) -> tuple[int, ...]:
    return tuple(recipient_digest(f"{prefix}{i}@example.com") for i in range(count))


A, B, C = _digests("a", 5), _digests("b", 3), _digests("c", 2)

# A job as dispatch drives it: begins, a partial answer with its resend as the
# successor, a release (C's second member refused). chunk_digests=4 below, so
# the accepted digests cross two chunk boundaries.
STEPS: list[tuple[str, tuple[Any, ...]]] = [
    ("begin", (Intent("k-a", A),)),
    ("begin", (Intent("k-b", B),)),
    ("finish", ("k-a", A[:4], Intent("k-a2", A[4:], attempt=1))),
    ("begin", (Intent("k-c", C),)),
    ("finish", ("k-b", B, None)),
    ("finish", ("k-a2", A[4:], None)),
    ("finish", ("k-c", C[:1], None)),
]


def _run(ledger: TaskStateStoreLedger, steps: list[tuple[str, tuple[Any, ...]]]) -> None:
    for name, args in steps:
        result = getattr(ledger, name)(JOB, *args)
        if name == "begin":
            assert result == set()


def _state(ledger: TaskStateStoreLedger) -> tuple[set[int], dict[str, tuple[tuple[int, ...], int]]]:
    every = set(A + B + C)
    pending = {i.key: (i.digests, i.attempt) for i in ledger.pending(JOB)}
    return ledger.accepted_among(JOB, sorted(every)), pending


def _accepted_in(rows: dict[str, Any]) -> int:
    """Recipients a task state store's rows record as accepted: full chunks and the tail."""
    chunks = rows.get(HEAD_KEY, {}).get("chunks", 0)  # no head until a chunk is full
    return sum(len(rows[chunk_key(i)]) // 16 for i in range(chunks)) + (
        len(rows[PENDING_KEY]["tail"]) // 16
    )


def test_ledger_keeps_the_protocol_and_survives_a_reload() -> None:
    store = MemoryStore()
    ledger = TaskStateStoreLedger(store, JOB, chunk_digests=4, retention=timedelta(days=3))
    assert isinstance(ledger, Ledger)
    assert ledger.stats(JOB) is None
    assert ledger.jobs() == []

    _run(ledger, STEPS[:3])
    # Taken members are refused and nothing is recorded: A's first four are
    # accepted, A[4] is pending under the successor k-a2.
    assert ledger.begin(JOB, Intent("k-x", (A[0], A[4], C[1]))) == {A[0], A[4]}
    assert ledger.begin(JOB, Intent("k-b", B)) == set()  # the same key again: a no-op
    _run(ledger, STEPS[3:])

    accepted, pending = _state(ledger)
    assert accepted == set(A) | set(B) | {C[0]}
    assert pending == {}
    stats = ledger.stats(JOB)
    assert stats is not None
    assert (stats.accepted, stats.pending, stats.oldest_pending) == (9, 0, None)
    assert ledger.jobs() == [stats]

    # A new try reads it all back: 9 digests, two full chunks as the head says and
    # the ninth in the tail, which rides in the pending value.
    again = TaskStateStoreLedger(store, JOB, chunk_digests=4)
    assert _state(again) == (accepted, pending)
    assert json.loads(store.values[HEAD_KEY])["chunks"] == 2
    assert len(json.loads(store.values[PENDING_KEY])["tail"]) == 16
    assert set(store.values) == {HEAD_KEY, PENDING_KEY, *(chunk_key(i) for i in range(2))}
    assert set(store.retentions) == {timedelta(days=3)}
    # No address in any value: digests only.
    assert "example.com" not in json.dumps(store.values)

    # One ledger per task instance: another job key is refused, by name.
    with pytest.raises(ValueError, match="holds job 'dag/send/manual__2026-01-01/-1'"):
        again.accepted_among("other/job", [A[0]])
    assert again.prune(0, job_key="other/job") == 0
    assert again.prune(timedelta(days=1)) == 0  # written just now
    assert again.prune(0) == 1
    assert store.values == {}
    assert again.stats(JOB) is None
    assert TaskStateStoreLedger(store, JOB).stats(JOB) is None


def _expected_after(
    count: int, steps: list[tuple[str, tuple[Any, ...]]] = STEPS
) -> tuple[set[int], dict[str, tuple[tuple[int, ...], int]]]:
    ledger = TaskStateStoreLedger(MemoryStore(), JOB, chunk_digests=4)
    _run(ledger, steps[:count])
    return _state(ledger)


def _killed_at(
    kill_at: int, steps: list[tuple[str, tuple[Any, ...]]]
) -> tuple[MemoryStore, TaskStateStoreLedger, int]:
    """``steps`` on a store that dies before its write number ``kill_at``: the store
    (alive again), the ledger and how many steps completed."""
    store = MemoryStore()
    store.kill_at = kill_at
    ledger = TaskStateStoreLedger(store, JOB, chunk_digests=4)
    done = 0
    try:
        for name, args in steps:
            getattr(ledger, name)(JOB, *args)
            done += 1
    except Killed:
        pass
    assert done < len(steps), kill_at
    store.kill_at = None
    return store, ledger, done


def test_a_try_killed_between_any_two_writes_leaves_a_state_the_retry_reads_safely() -> None:
    total = MemoryStore()
    _run(TaskStateStoreLedger(total, JOB, chunk_digests=4), STEPS)
    checked = 0
    for kill_at in range(total.writes):
        store, _, done = _killed_at(kill_at, STEPS)

        accepted, pending = _state(TaskStateStoreLedger(store, JOB, chunk_digests=4))
        before, after = _expected_after(done), _expected_after(done + 1)
        # Never claims accepted what the server was not said to accept, never forgets
        # what a completed step recorded.
        assert before[0] <= accepted <= after[0], kill_at
        # The pending intents are exactly those before the step or after it: an intent
        # whose answer was not wholly recorded is still pending, with its members and
        # attempt, and replays under its key.
        assert pending in (before[1], after[1]), kill_at
        if pending == after[1]:
            assert accepted == after[0], kill_at  # the pending write is the step's last
        checked += 1
    assert checked == total.writes >= 10


# The job of STEPS-like events in write rounds as dispatch's ledger writer makes
# them (finishes, then begins), with what each round's begins answer.
ROUNDS: list[tuple[list[Finish], list[Intent]]] = [
    ([], [Intent("k-a", A), Intent("k-b", B)]),
    (
        [Finish("k-a", A[:4], Intent("k-a2", A[4:], attempt=1))],
        [
            Intent("k-c", C),
            # A[0] accepted, A[4] pending under the successor, C[1] under k-c, begun
            # earlier in this round: refused, nothing recorded.
            Intent("k-x", (A[0], A[4], C[1])),
            Intent("k-b", B),  # the same key again: a no-op
        ],
    ),
    # C[1] released by k-c's finish in this round: k-d takes it.
    ([Finish("k-b", B), Finish("k-a2", A[4:]), Finish("k-c", C[:1])], [Intent("k-d", C[1:])]),
]
ANSWERS = [[set(), set()], [set(), {A[0], A[4], C[1]}, set()], [set()]]
#: ROUNDS as steps of ``_run`` and ``_killed_at``.
ROUND_STEPS: list[tuple[str, tuple[Any, ...]]] = [("record", round_) for round_ in ROUNDS]


def _rounds(ledger: TaskStateStoreLedger) -> list[list[set[int]]]:
    return [ledger.record(JOB, finishes, begins) for finishes, begins in ROUNDS]


def _timeless(values: dict[str, str]) -> dict[str, Any]:
    """The stored values without their times, which differ from one run to the next."""

    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in ("created", "updated")}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    return {key: strip(json.loads(text)) for key, text in values.items()}


def test_record_stores_and_answers_exactly_as_the_calls_one_by_one() -> None:
    by_round, one_by_one = MemoryStore(), MemoryStore()
    ledger = TaskStateStoreLedger(by_round, JOB, chunk_digests=4)
    twin = TaskStateStoreLedger(one_by_one, JOB, chunk_digests=4)
    assert isinstance(ledger, GroupCommitLedger)
    assert _rounds(ledger) == ANSWERS
    answers = []
    for finishes, begins in ROUNDS:
        for finish in finishes:
            twin.finish(JOB, finish.key, finish.accepted, finish.successor)
        answers.append([twin.begin(JOB, intent) for intent in begins])
    assert answers == ANSWERS
    assert _timeless(by_round.values) == _timeless(one_by_one.values)
    again = TaskStateStoreLedger(by_round, JOB, chunk_digests=4)
    assert _state(again) == _state(ledger) == _state(twin)
    assert _state(again) == (set(A) | set(B) | {C[0]}, {"k-d": (C[1:], 0)})
    # The fallback of dispatch picks the method, and a round of nothing writes nothing.
    writes = by_round.writes
    assert record(ledger, JOB, [], []) == []
    assert by_round.writes == writes


def test_a_round_of_many_events_is_a_constant_number_of_writes() -> None:
    store = MemoryStore()
    ledger = TaskStateStoreLedger(store, JOB, chunk_digests=250)
    batches = [_digests(f"r{n}-", 10) for n in range(60)]
    # 30 begins: one write of pending.
    assert ledger.record(JOB, [], [Intent(f"k-{n}", batches[n]) for n in range(30)]) == [set()] * 30
    assert store.writes == 1
    # 20 finishes (200 accepted, in the tail) and 30 begins: one write again.
    finishes = [Finish(f"k-{n}", batches[n]) for n in range(20)]
    begins = [Intent(f"k-{n}", batches[n]) for n in range(30, 60)]
    assert ledger.record(JOB, finishes, begins) == [set()] * 30
    assert store.writes == 2
    # 40 finishes fill two chunks: both chunks, the head counting them, then pending.
    finishes = [Finish(f"k-{n}", batches[n]) for n in range(20, 60)]
    assert ledger.record(JOB, finishes, []) == []
    assert store.writes == 2 + 4
    assert json.loads(store.values[HEAD_KEY])["chunks"] == 2
    again = TaskStateStoreLedger(store, JOB, chunk_digests=250)
    every = [d for batch in batches for d in batch]
    assert again.accepted_among(JOB, every) == set(every)
    assert again.pending(JOB) == []


def test_a_round_killed_before_each_of_its_writes_is_undone_and_can_be_repeated() -> None:
    total = MemoryStore()
    _rounds(TaskStateStoreLedger(total, JOB, chunk_digests=4))
    assert total.writes == 7  # pending; chunk, head, pending; chunk, head, pending
    for kill_at in range(total.writes):
        store, ledger, done = _killed_at(kill_at, ROUND_STEPS)
        before, after = _expected_after(done, ROUND_STEPS), _expected_after(done + 1, ROUND_STEPS)

        # The next try reads a safe state: nothing accepted that the server was not
        # said to accept, nothing lost that a completed round recorded, the pending
        # intents those before the round or after it.
        accepted, pending = _state(TaskStateStoreLedger(store, JOB, chunk_digests=4))
        assert before[0] <= accepted <= after[0], kill_at
        assert pending in (before[1], after[1]), kill_at
        # In memory the round is undone (its accepted digests kept: the server did
        # accept them), and repeating it whole answers and stores as the round would.
        assert _state(ledger)[1] == before[1], kill_at
        finishes, begins = ROUNDS[done]
        assert ledger.record(JOB, finishes, begins) == ANSWERS[done], kill_at
        assert _state(ledger) == after, kill_at
        assert _state(TaskStateStoreLedger(store, JOB, chunk_digests=4)) == after, kill_at


class SlowStore(MemoryStore):
    """A store whose writes take a while, as a round trip to the API server does."""

    def set(self, key: str, value: Any, *, retention: timedelta | None = None) -> None:
        time.sleep(0.005)
        super().set(key, value, retention=retention)


def test_concurrent_batches_share_writes_and_the_store_ends_as_memory() -> None:
    # dispatch runs begin and finish in its worker threads: eight batches in flight
    # share write rounds (a group commit) and the store, reloaded, holds it all.
    store = SlowStore()
    ledger = TaskStateStoreLedger(store, JOB, chunk_digests=250)
    batches = [_digests(f"t{n}-", 100) for n in range(40)]

    def one(n: int) -> None:
        key = f"k-{n}"
        assert ledger.begin(JOB, Intent(key, batches[n])) == set()
        if n % 5 == 0:  # the server refused two: resent under a successor
            successor = Intent(f"{key}-r", batches[n][98:], attempt=1)
            ledger.finish(JOB, key, batches[n][:98], successor)
        else:
            ledger.finish(JOB, key, batches[n])

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(40)))
    assert store.writes < 2 * 40 + 40 * 100 // 250  # fewer than one round per call
    again = TaskStateStoreLedger(store, JOB, chunk_digests=250)
    every = sorted(d for batch in batches for d in batch)
    expected = {d for n, batch in enumerate(batches) for d in (batch[:98] if n % 5 == 0 else batch)}
    assert again.accepted_among(JOB, every) == ledger.accepted_among(JOB, every) == expected
    assert {i.key for i in again.pending(JOB)} == {f"k-{n}-r" for n in range(0, 40, 5)}


def test_values_stay_under_airflows_advised_64_kb() -> None:
    store = MemoryStore()
    ledger = TaskStateStoreLedger(store, JOB)
    # The largest value is the pending one with a tail one short of a chunk.
    digests = _digests("big", CHUNK_DIGESTS * 2 - 1)
    for start in range(0, len(digests), 100):
        batch = digests[start : start + 100]
        assert ledger.begin(JOB, Intent(f"k-{start}", batch)) == set()
        ledger.finish(JOB, f"k-{start}", batch)
    for start in range(8):  # a wide job's batches in flight, 100 members each
        ledger.begin(JOB, Intent(f"p-{start}", _digests(f"p{start}-", 100)))
    sizes = {key: len(text) for key, text in store.values.items()}
    assert set(sizes) == {HEAD_KEY, PENDING_KEY, chunk_key(0)}
    assert len(json.loads(store.values[PENDING_KEY])["tail"]) == (CHUNK_DIGESTS - 1) * 16
    assert max(sizes.values()) < 65_535, sizes
    again = TaskStateStoreLedger(store, JOB)
    assert again.accepted_among(JOB, digests) == set(digests)
    assert len(again.pending(JOB)) == 8


def test_a_version_1_ledger_with_a_partial_last_chunk_is_read_and_carried_on() -> None:
    # Version 1 rewrote the last chunk while it had room and kept no tail.
    store = MemoryStore()
    first, second = _digests("v1a", 4), _digests("v1b", 2)
    store.values = {
        HEAD_KEY: json.dumps(
            {"version": 1, "job_key": JOB, "chunks": 2, "created": 1.0, "updated": 2.0}
        ),
        chunk_key(0): json.dumps(_hex(first)),
        chunk_key(1): json.dumps(_hex(second)),
        PENDING_KEY: json.dumps({"job_key": JOB, "created": 1.0, "updated": 2.0, "intents": []}),
    }
    ledger = TaskStateStoreLedger(store, JOB, chunk_digests=4)
    more = _digests("v1c", 3)
    assert ledger.accepted_among(JOB, [*first, *second, *more]) == {*first, *second}
    assert ledger.begin(JOB, Intent("k-more", more)) == set()
    ledger.finish(JOB, "k-more", more)
    # Chunk 1 rewritten whole at its index, the head unchanged, one digest in the tail.
    assert len(json.loads(store.values[chunk_key(1)])) == 4 * 16
    assert json.loads(store.values[HEAD_KEY])["chunks"] == 2
    again = TaskStateStoreLedger(store, JOB, chunk_digests=4)
    assert again.accepted_among(JOB, [*first, *second, *more]) == {*first, *second, *more}


def test_a_ledger_missing_a_chunk_refuses_to_be_used() -> None:
    store = MemoryStore()
    _run(TaskStateStoreLedger(store, JOB, chunk_digests=4), STEPS)
    del store.values[chunk_key(1)]  # expired by the retention, or deleted by hand
    with pytest.raises(ValueError, match=r"incomplete: .*accepted/1.* trigger a new DAG run"):
        TaskStateStoreLedger(store, JOB, chunk_digests=4)


def test_a_store_that_keeps_failing_becomes_ledger_unavailable() -> None:
    from airflow.sdk.exceptions import AirflowRuntimeError, ErrorType
    from airflow.sdk.execution_time.comms import ErrorResponse

    class DownStore(MemoryStore):
        def set(self, key: str, value: Any, *, retention: timedelta | None = None) -> None:
            raise AirflowRuntimeError(ErrorResponse(error=ErrorType.API_SERVER_ERROR))

    ledger = TaskStateStoreLedger(
        DownStore(), JOB, unavailable_after=0.2, sleep=lambda seconds: None
    )
    with pytest.raises(LedgerUnavailableError, match="task state store"):
        ledger.begin(JOB, Intent("k-a", A))
    assert ledger.pending(JOB) == []  # nothing claimed in memory either


def test_ledger_for_picks_ledger_url_then_the_task_state_store_then_none(
    sendmux_connection: Any, tmp_path: Path
) -> None:
    from types import SimpleNamespace

    from sendmux_airflow import SendmuxConnectionError, SendmuxHook

    ti = SimpleNamespace(dag_id="d", task_id="t", run_id="r", map_index=-1)
    before_33: Any = {"ti": ti}  # no task state store: batch keys alone
    on_33: Any = {"ti": ti, "task_state_store": MemoryStore()}
    assert ledger_for(before_33, SendmuxHook()) is None
    ledger = ledger_for(on_33, SendmuxHook())
    assert isinstance(ledger, TaskStateStoreLedger)
    assert ledger.job_key == job_key_for("d", "t", "r", -1)

    sendmux_connection(ledger_url=str(tmp_path / "ledger.db"))
    chosen = ledger_for(on_33, SendmuxHook())  # the connection's ledger wins
    assert isinstance(chosen, SqliteLedger)
    chosen.close()

    # A Redis URL makes a RedisLedger, and its password is masked like the API key's.
    from airflow.sdk._shared.secrets_masker import redact

    from sendmux_dispatch import RedisLedger

    sendmux_connection(ledger_url="redis://:ledger-s3cret@127.0.0.1:6379/12")
    hook = SendmuxHook()
    redis_ledger = ledger_for(on_33, hook)
    assert isinstance(redis_ledger, RedisLedger)
    redis_ledger.close()
    assert redact("ledger-s3cret") == "***"
    assert "ledger-s3cret" not in repr(hook.settings) + repr(redis_ledger)

    sendmux_connection(ledger_url="ledger.db")
    with pytest.raises(SendmuxConnectionError, match="extra 'ledger_url' must be"):
        SendmuxHook().settings
    with pytest.raises(ValueError, match="relative path"):
        ledger_from_url("ledger.db")
    with pytest.raises(ValueError, match="a postgres:// URL"):
        ledger_from_url("postgres://h/db")


# --------------------------------------------------------------- real Airflow


def _ledger_dags() -> dict[str, Any]:
    path = DAGS_FOLDER / "sendmux_ledger_dags.py"
    spec = importlib.util.spec_from_file_location("sendmux_ledger_dags", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    from airflow.sdk import DAG

    return {dag.dag_id: dag for dag in vars(module).values() if isinstance(dag, DAG)}


def _task_state_store(dag_id: str, run_id: str, task_id: str) -> dict[str, Any]:
    from airflow.models.task_state_store import TaskStateStoreModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.query(TaskStateStoreModel).filter_by(
            dag_id=dag_id, run_id=run_id, task_id=task_id, map_index=-1
        )
        return {row.key: json.loads(row.value) for row in rows}


def _deliveries(sandbox: Any) -> Counter[str]:
    counts: Counter[str] = Counter()
    for message in sandbox.messages(limit=10_000):
        counts[message["to"].lower()] += 1
    return counts


@pytest.mark.parametrize("where", ["task_state_store", "ledger_url"])
def test_send_task_failing_half_way_then_retried_on_an_edited_list_mails_everyone_once(
    where: str,
    airflow_db: Path,
    sandbox: Any,
    sendmux_connection: Any,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    # 450 recipients, five batches. Try 1 runs under faults with no retries inside the
    # task: some batches are answered, some are accepted but their answer is lost (the
    # crash window), some are refused with a 503; the task fails. Between the tries the
    # list is edited: 30 rows inserted at the top, 20 removed from the batches, so every
    # later batch would be cut differently. The retry must mail each recipient of the
    # final list exactly once.
    first = [f"user{i:03d}@example.com" for i in range(450)]
    removed = set(first[5:450:22])  # across every batch
    final = [f"new{i:02d}@example.com" for i in range(30)] + [a for a in first if a not in removed]
    assert len(removed) == 21
    files = {name: tmp_path / f"{name}.txt" for name in ("list", "edited", "snapshot")}
    files["list"].write_text("\n".join(first))
    files["edited"].write_text("\n".join(final))
    for name, path in files.items():
        env = "LIST" if name == "list" else name.upper()
        monkeypatch.setenv(f"SENDMUX_TEST_LEDGER_{env}", str(path))
    monkeypatch.setenv("SENDMUX_TEST_SANDBOX_URL", sandbox.base_url)
    extra: dict[str, Any] = {"from_email": "bank@example.com", "max_attempts": 1}
    if where == "ledger_url":
        extra["ledger_url"] = str(tmp_path / "ledger.db")
    sendmux_connection(**extra)
    sandbox.set_faults(drop_after_accept=0.4, error_503=0.2, seed=3)
    dag = _ledger_dags()["sendmux_ledger_retry_test"]

    dagrun = dag.test()

    ti = dagrun.get_task_instance("send")
    assert (str(ti.state), ti.try_number) == ("success", 2)
    counts = _deliveries(sandbox)
    for address in final:
        assert counts[address] == 1, address
    assert set(counts) <= set(final) | removed
    stats = sandbox.stats()
    assert stats["duplicate_deliveries"] == 0
    assert stats["faults_injected"] >= 2

    job_key = job_key_for(dag.dag_id, "send", dagrun.run_id, -1)
    store = _task_state_store(dag.dag_id, dagrun.run_id, "send")
    if where == "ledger_url":
        # The connection's ledger wins; the task state store is left alone.
        assert not any(key.startswith("sendmux_ledger/") for key in store)
        with SqliteLedger(tmp_path / "ledger.db") as sqlite:
            recorded = sqlite.stats(job_key)
        assert recorded is not None
        assert (recorded.accepted, recorded.pending) == (stats["unique_recipients"], 0)
        return

    # Try 1 left a half-done job in the task state store, seen from its retry callback:
    # two batches recorded accepted, three pending (two accepted with their answer
    # lost, one refused with a 503), and try 2 found them.
    snapshot = json.loads(files["snapshot"].read_text())
    assert snapshot["try_number"] == 1
    left = snapshot["rows"]
    first_accepted = _accepted_in(left)
    assert first_accepted in (150, 200)
    assert len(left[PENDING_KEY]["intents"]) == 3
    # Airflow 3.3.2: the retry callback's own accessor reads nothing (its try's task
    # instance id is gone by then), though the rows are there for the next try.
    assert snapshot["accessor_head"] is None
    # Everyone the server accepted is recorded, nothing is left pending.
    assert store[PENDING_KEY]["job_key"] == job_key
    assert store[PENDING_KEY]["intents"] == []
    accepted = _accepted_in(store)
    assert accepted == stats["unique_recipients"] == len(counts)
    summary = _xcom_summary(dag.dag_id, dagrun.run_id)
    assert summary["already_accepted"] >= first_accepted - len(removed)
    assert summary["ok"] is True


def _xcom_summary(dag_id: str, run_id: str) -> dict[str, Any]:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = (
            session.query(XComModel)
            .filter_by(dag_id=dag_id, run_id=run_id, task_id="send", key="return_value")
            .one()
        )
        value: dict[str, Any] = row.value
        return value


def test_bulk_task_killed_mid_send_then_rerun_on_an_edited_file_mails_everyone_once(
    airflow_db: Path, sandbox: Any, sendmux_connection: Any, tmp_path: Path
) -> None:
    # A real SIGKILL: `airflow tasks test` runs the task in its own process, so killing
    # that process mid-send kills the task between ledger writes, wherever it is. Then
    # the same task instance (same run id, same task state store) runs again on an
    # edited list. (A retry inside one `dag.test()` cannot be killed without killing
    # pytest, and a second `airflow dags test` of one date deletes the run first.)
    # 30 batches: more than the task has in flight and begun ahead (8 + 4), so
    # the kill lands with batches not yet sent.
    first = [f"kill{i:04d}@example.com" for i in range(3000)]
    removed = set(first[7:3000:150])
    final = [f"top{i:02d}@example.com" for i in range(25)] + [a for a in first if a not in removed]
    listing = tmp_path / "list.csv"

    def write_list(addresses: list[str]) -> None:
        rows = (f"{address},{address.split('@')[0].title()}" for address in addresses)
        listing.write_text("email,name\n" + "\n".join(rows) + "\n")

    write_list(first)
    connection = sendmux_connection(from_email="bank@example.com")
    env = airflow_env(
        AIRFLOW_CONN_SENDMUX_DEFAULT=connection,
        SENDMUX_TEST_LEDGER_CSV=str(listing),
        SENDMUX_TEST_SANDBOX_URL=sandbox.base_url,
    )
    dag_id, run_id = "sendmux_ledger_kill_test", "ledger-kill-1"
    for args in (("dags", "reserialize"), ("dags", "trigger", dag_id, "--run-id", run_id)):
        done = run_airflow(*args, env=env)
        assert done.returncode == 0, done.stderr[-2000:]
    task_test = [sys.executable, "-m", "airflow", "tasks", "test", dag_id, "send", run_id]

    # Slow requests, so the kill lands with batches in flight.
    sandbox.set_faults(latency=0.15)
    child = subprocess.Popen(
        task_test,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while sandbox.stats()["accepted_messages"] < 300:
            assert child.poll() is None, "the task ended before it could be killed"
            assert time.monotonic() < deadline, "the task sent nothing"
            time.sleep(0.02)
        os.killpg(child.pid, signal.SIGKILL)
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    time.sleep(1.0)  # let requests already in the server finish
    killed_at = sandbox.stats()["accepted_messages"]
    assert 300 <= killed_at < 3000
    left = _task_state_store(dag_id, run_id, "send")
    assert left[PENDING_KEY]["intents"], "the kill left no batch in flight"

    sandbox.set_faults()
    write_list(final)
    done = subprocess.run(
        task_test, env=env, capture_output=True, text=True, timeout=240, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]

    counts = _deliveries(sandbox)
    for address in final:
        assert counts[address] == 1, address
    # Each with their own variables, on the first try and the second alike.
    (late,) = sandbox.messages(final[-1])
    assert late["subject"] == f"Your statement, {final[-1].split('@')[0].title()}"
    assert set(counts) <= set(final) | removed
    stats = sandbox.stats()
    assert stats["duplicate_deliveries"] == 0
    store = _task_state_store(dag_id, run_id, "send")
    assert store[PENDING_KEY]["intents"] == []
    accepted = _accepted_in(store)
    assert accepted == stats["unique_recipients"] == len(counts)
    log = done.stdout + done.stderr
    assert "already accepted" in log
    assert sandbox.api_key not in log
