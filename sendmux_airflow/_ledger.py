"""The send ledger of an Airflow task: on the task state store (3.3+), else from the connection.

:class:`TaskStateStoreLedger` keeps the core's :class:`~sendmux_dispatch.Ledger`
in ``context["task_state_store"]``, which Airflow 3.3 scopes to one task
instance (dag_id, run_id, task_id, map_index) and keeps across its tries,
while XComs are cleared before each new try. The store has one-key writes,
JSON values (64 KB advised per value), and no listing of keys, so the ledger
uses fixed key names and orders its writes so that a task killed between any
two of them leaves a state the next try reads safely (docs/ledger.md, "The
Airflow task state store").

:func:`ledger_for` picks a task's ledger: the connection's ``ledger_url`` when
set, else the task state store, else none (batch keys alone).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast
from urllib.parse import urlsplit

from airflow.sdk.exceptions import AirflowFailException, AirflowRuntimeError

from sendmux_dispatch._digests import DigestSet
from sendmux_dispatch.dispatch import DEFAULT_LEDGER_AHEAD
from sendmux_dispatch.keys import job_key_for
from sendmux_dispatch.ledger import Intent, JobStats, Ledger, RedisLedger, SqliteLedger
from sendmux_dispatch.ledger._base import (
    DEFAULT_UNAVAILABLE_AFTER,
    Finish,
    Retrier,
    _check_digests,
    _check_job_key,
    seconds,
)

if TYPE_CHECKING:
    from airflow.sdk import Context

    from sendmux_airflow.hooks.sendmux import SendmuxHook

__all__ = [
    "CHUNK_DIGESTS",
    "HEAD_KEY",
    "PENDING_KEY",
    "TaskStateStoreLedger",
    "chunk_key",
    "ledger_ahead",
    "ledger_for",
    "ledger_from_url",
]

_T = TypeVar("_T")

#: The keys, under one prefix so they are easy to find in the UI's task state view.
PREFIX = "sendmux_ledger"
HEAD_KEY = f"{PREFIX}/head"
PENDING_KEY = f"{PREFIX}/pending"
#: Digests per accepted chunk: 16 hex characters each, 32,000 characters for
#: 2,000, under ``[state_store] max_value_storage_bytes`` (65,535 by default)
#: with room in the pending value, which carries the tail (a chunk's worth at
#: most) beside the intents in flight.
CHUNK_DIGESTS = 2000
#: 2: full chunks only, the tail in the pending value (1: the last chunk
#: rewritten while it had room; still read).
_VERSION = 2


def chunk_key(index: int) -> str:
    """The key of accepted chunk ``index`` (0, 1, ...)."""
    return f"{PREFIX}/accepted/{index}"


class StateStore(Protocol):
    """What the ledger uses of Airflow's ``TaskStateStoreAccessor`` (3.3+)."""

    def get(self, key: str, default: Any = None) -> Any: ...

    def set(self, key: str, value: Any, *, retention: timedelta | None = None) -> None: ...

    def delete(self, key: str) -> None: ...


def _hex(digests: Sequence[int]) -> str:
    return "".join(f"{digest:016x}" for digest in digests)


def _unhex(text: str) -> list[int]:
    if len(text) % 16:
        raise ValueError("a ledger chunk holds 16 hex characters per digest")
    return [int(text[i : i + 16], 16) for i in range(0, len(text), 16)]


class TaskStateStoreLedger:
    """A :class:`~sendmux_dispatch.Ledger` in one task instance's task state store.

    One task instance is one job (its job key) and runs one try at a time,
    so the whole ledger is read once, at construction, into memory (a
    :class:`DigestSet`, 11 to 23 bytes per accepted recipient) and every
    ``begin`` / ``finish`` writes through. Keys (JSON values)::

        sendmux_ledger/head          {"version", "job_key", "chunks", "created", "updated"}
        sendmux_ledger/accepted/<n>  accepted digests, hex, ``chunk_digests`` each (full)
        sendmux_ledger/pending       {"job_key", "created", "updated", "intents": [...],
                                      "tail": the accepted digests in no chunk yet, hex}

    Accepted digests go to the *tail*, which rides in the pending value, so
    recording an answer (the tail grown, the intent cleared, its successor
    added) is one atomic write; a tail that reaches ``chunk_digests`` leaves
    as a full chunk, written before the head that counts it, which is
    written before the pending value that no longer holds those digests.
    The head is the only place the chunk count lives, so a chunk written by
    a try killed before its head is ignored (its digests are still in the
    stored tail, or their intents still pending). The pending intents (what
    was in flight: ``concurrency`` batches and their resends, ~1.7 KB
    each) and the tail are one value, so ``begin`` and ``finish`` are each
    one write but for the chunk and head of a full tail; a member found
    both accepted and pending is one whose answer was half recorded, and
    its replay under the recorded key gets the server's stored answer back.

    ``LEDGER_AHEAD``: how far ahead of the sends dispatch should begin
    batches with this ledger (its ``ledger_ahead``; :func:`ledger_ahead`
    picks it): every begun batch is an intent in the one pending value, so
    eight in flight and four ahead keep it near 60 KB with a full tail.

    ``retention`` is passed to every write (None: Airflow's
    ``[state_store] default_retention_days``); a chunk the head counts but the
    store no longer has (expired, deleted by hand) makes construction fail
    rather than mail its recipients again. Store errors are retried for
    ``unavailable_after`` seconds, then
    :class:`~sendmux_dispatch.errors.LedgerUnavailableError`.
    """

    #: Batches begun ahead of the sends (dispatch's ``ledger_ahead``) with this ledger.
    LEDGER_AHEAD = 4

    def __init__(
        self,
        store: StateStore,
        job_key: str,
        *,
        retention: timedelta | None = None,
        unavailable_after: float = DEFAULT_UNAVAILABLE_AFTER,
        chunk_digests: int = CHUNK_DIGESTS,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        _check_job_key(job_key)
        if chunk_digests < 1:
            raise ValueError("chunk_digests must be at least 1")
        self.job_key = job_key
        self.retention = retention
        self.chunk_digests = chunk_digests
        self._store = store
        self._retry = Retrier(
            backend="task state store",
            location=f"task instance {job_key!r}",
            deadline=unavailable_after,
            transient=(AirflowRuntimeError, OSError),
            sleep=sleep,
        )
        # _lock guards memory (held briefly); _io makes one writer at a time. A
        # begin or finish changes memory, then waits until a write covering its
        # change is done: whoever writes next writes every change made so far, so
        # concurrent batches share writes (a group commit) instead of queueing one
        # round trip to the API server each.
        self._lock = threading.Lock()
        self._io = threading.Lock()
        self._version = 0  # changes made in memory
        self._durable = 0  # changes the store holds
        self._accepted = DigestSet()
        self._chunks = 0  # chunks in memory, the last one the tail
        self._head_chunks = 0  # chunks the stored head counts
        self._tail: list[int] = []  # accepted, in no chunk yet: kept in the pending value
        #: Chunks changed since the last write (index -> digests); a full one is
        #: kept only until it is written.
        self._dirty: dict[int, list[int]] = {}
        self._pending_dirty = False
        self._intents: dict[str, Intent] = {}
        self._claims: dict[int, str] = {}  # digest -> the pending intent holding it
        self._created: float | None = None
        self._updated = 0.0
        self._load()

    def __repr__(self) -> str:
        return f"TaskStateStoreLedger({self.job_key!r})"

    # ------------------------------------------------------------ store access

    def _get(self, key: str) -> Any:
        return self._retry(lambda: self._store.get(key), f"read {key}")

    def _set(self, key: str, value: object) -> None:
        def write() -> None:
            self._store.set(key, value, retention=self.retention)

        self._retry(write, f"write {key}")

    def _delete(self, key: str) -> None:
        self._retry(lambda: self._store.delete(key), f"delete {key}")

    def _load(self) -> None:
        head = self._get(HEAD_KEY)
        pending = self._get(PENDING_KEY)
        for name, value in ((HEAD_KEY, head), (PENDING_KEY, pending)):
            if value is None:
                continue
            if not isinstance(value, dict) or value.get("job_key") != self.job_key:
                found = value.get("job_key") if isinstance(value, dict) else type(value).__name__
                raise ValueError(
                    f"task state key {name!r} belongs to job {found!r}, not {self.job_key!r}: "
                    "another writer used this task instance's sendmux_ledger/ keys"
                )
        if head is not None:
            self._chunks = self._head_chunks = int(head["chunks"])
            self._created = float(head["created"])
            self._updated = float(head["updated"])
        for index in range(self._chunks):
            text = self._get(chunk_key(index))
            if not isinstance(text, str):
                raise ValueError(
                    f"the send ledger of {self.job_key!r} is incomplete: task state key "
                    f"{chunk_key(index)!r} (chunk {index + 1} of {self._chunks}) is gone, "
                    "expired by [state_store] default_retention_days or deleted. Re-sending "
                    "would mail its recipients again; to send to everyone again, trigger a "
                    "new DAG run"
                )
            digests = _unhex(text)
            for digest in digests:
                self._accepted.add(digest)
            if index == self._chunks - 1 and len(digests) < self.chunk_digests:
                # A last chunk with room (written by version 1): it becomes the tail
                # again, and is rewritten whole, at its index, once full.
                self._chunks -= 1
                self._tail = digests
        if pending is not None:
            created = float(pending["created"])
            self._created = created if self._created is None else min(self._created, created)
            self._updated = max(self._updated, float(pending["updated"]))
            for data in pending["intents"]:
                self._hold(Intent.from_json(data))
            tail = [d for d in _unhex(str(pending.get("tail", ""))) if d not in self._accepted]
            for digest in tail:
                self._accepted.add(digest)
            self._tail.extend(tail)

    def _hold(self, intent: Intent) -> None:
        self._intents[intent.key] = intent
        for digest in intent.digests:
            self._claims[digest] = intent.key

    def _release(self, key: str) -> None:
        intent = self._intents.pop(key)
        for digest in intent.digests:
            if self._claims.get(digest) == key:
                del self._claims[digest]

    def _own(self, job_key: str) -> None:
        _check_job_key(job_key)
        if job_key != self.job_key:
            raise ValueError(
                f"this TaskStateStoreLedger holds job {self.job_key!r} (its task instance's); "
                f"got {job_key!r}: a task state store belongs to one task instance, so give "
                "each job its own task, or use a SqliteLedger or RedisLedger"
            )

    def _touch(self, now: float) -> None:
        if self._created is None:
            self._created = now
        self._updated = now

    def _pending_value(self, now: float) -> dict[str, Any]:
        assert self._created is not None
        return {
            "job_key": self.job_key,
            "created": self._created,
            "updated": now,
            "intents": [intent.to_json() for intent in self._intents.values()],
            "tail": _hex(self._tail),
        }

    def _add_accepted(self, digests: Sequence[int]) -> None:
        """Add those of ``digests`` not yet accepted to the tail; full chunks leave it."""
        new = list(dict.fromkeys(d for d in digests if d not in self._accepted))
        if not new:
            return
        for digest in new:
            self._accepted.add(digest)
        self._tail.extend(new)
        self._pending_dirty = True  # the tail rides in the pending value
        while len(self._tail) >= self.chunk_digests:
            full, self._tail = self._tail[: self.chunk_digests], self._tail[self.chunk_digests :]
            self._dirty[self._chunks] = full
            self._chunks += 1

    def _changed(self) -> int:
        self._version += 1
        return self._version

    def _sync(self, version: int) -> None:
        """Return once the store holds every change up to ``version``.

        One write round: the changed chunks, then the head if the chunk count
        grew, then the pending intents, in that order (see the class
        docstring); taken from one snapshot of memory, so it covers every
        change made before it started.
        """
        with self._io:
            with self._lock:
                if self._durable >= version:
                    return  # another thread's write covered this change
                covered = self._version
                now = time.time()
                chunks = [(index, _hex(self._dirty[index])) for index in sorted(self._dirty)]
                dirty, self._dirty = self._dirty, {}
                head: dict[str, Any] | None = None
                if self._chunks > self._head_chunks:
                    assert self._created is not None
                    head = {
                        "version": _VERSION,
                        "job_key": self.job_key,
                        "chunks": self._chunks,
                        "created": self._created,
                        "updated": now,
                    }
                pending = self._pending_value(now) if self._pending_dirty else None
                self._pending_dirty = False
            try:
                for index, text in chunks:
                    self._set(chunk_key(index), text)
                if head is not None:
                    self._set(HEAD_KEY, head)
                if pending is not None:
                    self._set(PENDING_KEY, pending)
            except BaseException:
                with self._lock:  # still to be written by the next round
                    self._dirty = {**dirty, **self._dirty}
                    self._pending_dirty = self._pending_dirty or pending is not None
                raise
            with self._lock:
                self._durable = covered
                if head is not None:
                    self._head_chunks = int(head["chunks"])

    # ------------------------------------------------------------ protocol

    def accepted_among(self, job_key: str, digests: Sequence[int]) -> set[int]:
        self._own(job_key)
        _check_digests(digests)
        with self._lock:
            return {digest for digest in digests if digest in self._accepted}

    def pending(self, job_key: str) -> list[Intent]:
        self._own(job_key)
        with self._lock:
            return sorted(self._intents.values(), key=lambda intent: (intent.created, intent.key))

    def _begin_in_memory(self, intent: Intent, now: float) -> tuple[set[int], bool]:
        """``begin``'s change to memory (under ``_lock``): the members taken, and whether
        it recorded the intent (not when a member is taken, nor when the key is
        already pending: the same begin again).
        """
        taken = {
            digest
            for digest in intent.digests
            if digest in self._accepted or self._claims.get(digest, intent.key) != intent.key
        }
        if taken or intent.key in self._intents:
            return taken, False
        self._touch(now)
        self._hold(dataclasses.replace(intent, created=now))
        self._pending_dirty = True
        return taken, True

    def _undo_begin(self, key: str) -> None:
        """After a failed write (under ``_lock``): the intent a begin recorded is not pending."""
        if key in self._intents:
            self._release(key)
            self._pending_dirty = True

    def _finish_in_memory(
        self, key: str, accepted: Sequence[int], successor: Intent | None, now: float
    ) -> Intent | None:
        """``finish``'s change to memory (under ``_lock``); returns the intent it cleared."""
        # Accepted first (the write round puts chunks before pending): killed
        # before the pending write, the intent replays under its key and the
        # server answers as it did.
        if accepted:
            self._touch(now)
        self._add_accepted(accepted)
        before = self._intents.get(key)
        if before is not None:
            self._release(key)
            if successor is not None and successor.key not in self._intents:
                self._hold(dataclasses.replace(successor, created=now))
            self._touch(now)
            self._pending_dirty = True
        return before

    def _undo_finish(self, key: str, before: Intent | None, successor: Intent | None) -> None:
        """After a failed write (under ``_lock``): the intent still pending, no successor.

        The digests stay accepted in memory (the server did accept them) and
        are written by the next round, if any.
        """
        if before is None:
            return
        if successor is not None and successor.key in self._intents:
            self._release(successor.key)
        if key not in self._intents:
            self._hold(before)
        self._pending_dirty = True

    def begin(self, job_key: str, intent: Intent) -> set[int]:
        self._own(job_key)
        with self._lock:
            taken, recorded = self._begin_in_memory(intent, time.time())
            if not recorded:
                return taken
            version = self._changed()
        try:
            self._sync(version)
        except BaseException:
            with self._lock:
                self._undo_begin(intent.key)
            raise
        return set()

    def finish(
        self,
        job_key: str,
        key: str,
        accepted: Sequence[int],
        successor: Intent | None = None,
    ) -> None:
        self._own(job_key)
        _check_digests(accepted)
        with self._lock:
            before = self._finish_in_memory(key, accepted, successor, time.time())
            version = self._changed()
        try:
            self._sync(version)
        except BaseException:
            with self._lock:
                self._undo_finish(key, before, successor)
            raise

    def record(
        self, job_key: str, finishes: Sequence[Finish], begins: Sequence[Intent]
    ) -> list[set[int]]:
        """Every finish, then every begin, in memory, then one write round for them all.

        A round writes ``pending`` once (plus any chunks the tail filled and
        their head), however many events it holds. A failed write undoes in
        memory what each call would have undone, last first, so the undo of
        a begin that took members a finish of the round released comes
        before the finish's undo re-claims them.
        """
        self._own(job_key)
        for finish in finishes:
            _check_digests(finish.accepted)
        if not finishes and not begins:
            return []
        with self._lock:
            now = time.time()
            cleared = [
                self._finish_in_memory(finish.key, finish.accepted, finish.successor, now)
                for finish in finishes
            ]
            answers: list[set[int]] = []
            recorded: list[str] = []
            for intent in begins:
                taken, added = self._begin_in_memory(intent, now)
                answers.append(taken)
                if added:
                    recorded.append(intent.key)
            version = self._changed()
        try:
            self._sync(version)
        except BaseException:
            with self._lock:
                for key in reversed(recorded):
                    self._undo_begin(key)
                for finish, before in reversed(list(zip(finishes, cleared, strict=True))):
                    self._undo_finish(finish.key, before, finish.successor)
            raise
        return answers

    def stats(self, job_key: str) -> JobStats | None:
        self._own(job_key)
        with self._lock:
            if self._created is None:
                return None
            created = [intent.created for intent in self._intents.values()]
            return JobStats(
                job_key=self.job_key,
                accepted=len(self._accepted),
                pending=len(self._intents),
                pending_members=sum(len(i.digests) for i in self._intents.values()),
                created=self._created,
                updated=self._updated,
                oldest_pending=min(created) if created else None,
            )

    def jobs(self) -> list[JobStats]:
        stats = self.stats(self.job_key)
        return [] if stats is None else [stats]

    def prune(self, older_than: float | timedelta, *, job_key: str | None = None) -> int:
        """Forget this task's ledger if it was last written ``older_than`` ago (0: now).

        Rarely needed: Airflow's retention (``[state_store]
        default_retention_days``, ``airflow state-store clean``) and deleting
        the DAG run remove the keys. The head goes first, so a prune cut short
        forgets every accepted chunk at once, never a part of them.
        """
        cutoff = time.time() - seconds(older_than)
        if job_key is not None and job_key != self.job_key:
            _check_job_key(job_key)
            return 0
        with self._io, self._lock:
            if self._created is None or self._updated > cutoff:
                return 0
            self._delete(HEAD_KEY)
            for index in range(max(self._chunks, self._head_chunks)):
                self._delete(chunk_key(index))
            self._delete(PENDING_KEY)
            self._accepted = DigestSet()
            self._chunks, self._head_chunks, self._tail = 0, 0, []
            self._dirty.clear()
            self._pending_dirty = False
            self._intents.clear()
            self._claims.clear()
            self._created, self._updated = None, 0.0
            return 1

    def close(self) -> None:
        """Nothing to release: the store belongs to the task instance."""


def ledger_from_url(url: str, *, where: str = "ledger_url") -> Ledger:
    """A ledger from a URL or path: ``redis://`` / ``rediss://`` → RedisLedger, a path → SQLite.

    ``where`` names the setting in the error a bad value raises.
    """
    scheme = urlsplit(url).scheme.lower()
    if scheme in ("redis", "rediss"):
        return RedisLedger(url)
    path = Path(url).expanduser()
    if scheme or not path.is_absolute():
        raise ValueError(
            f"{where} must be a redis:// or rediss:// URL, or an absolute path to a SQLite "
            f"file on the worker's local disk (e.g. /var/lib/sendmux/ledger.db); got "
            f"{'a ' + scheme + ':// URL' if scheme else 'a relative path'}"
        )
    return SqliteLedger(path)


def ledger_ahead(ledger: Ledger | None) -> int:
    """Dispatch's ``ledger_ahead`` for ``ledger``: fewer for the task state store's one value."""
    if isinstance(ledger, TaskStateStoreLedger):
        return TaskStateStoreLedger.LEDGER_AHEAD
    return DEFAULT_LEDGER_AHEAD


def ledger_for(context: Context, hook: SendmuxHook) -> Ledger | None:
    """The ledger for a task's send: ``ledger_url``, else the task state store, else None.

    The connection's ``ledger_url`` wins when set (a Redis for lists of
    millions, or a store shared with other tools); otherwise on Airflow 3.3+
    the task state store of this task instance; before 3.3 without it, None
    (the batch keys alone make a retry of the same list exactly once). The
    caller closes it.
    """
    ti = context["ti"]
    job_key = job_key_for(ti.dag_id, ti.task_id, ti.run_id, ti.map_index)
    url = hook.settings.ledger_url
    if url is not None:
        return ledger_from_url(url, where=f"connection {hook.sendmux_conn_id!r} extra 'ledger_url'")
    store = cast("Mapping[str, Any]", context).get("task_state_store")
    if store is None:
        return None
    try:
        return TaskStateStoreLedger(store, job_key)
    except ValueError as exc:
        # A retry would read the same keys: fail the task instead of retrying it.
        raise AirflowFailException(str(exc)) from exc
