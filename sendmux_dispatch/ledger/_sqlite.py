"""The embedded ledger: one SQLite file in WAL mode, shared by the processes of one machine."""

from __future__ import annotations

import json
import os
import sqlite3
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Literal, TypeVar

from sendmux_dispatch.errors import LedgerUnavailableError
from sendmux_dispatch.ledger._base import (
    DEFAULT_UNAVAILABLE_AFTER,
    Finish,
    Intent,
    JobStats,
    Retrier,
    _check_digests,
    _check_job_key,
    seconds,
)

__all__ = ["SqliteLedger"]

_T = TypeVar("_T")
_SIGN = 1 << 63
_WRAP = 1 << 64

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_key TEXT NOT NULL UNIQUE,
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS accepted (
    job INTEGER NOT NULL,
    digest INTEGER NOT NULL,
    PRIMARY KEY (job, digest)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS intents (
    job INTEGER NOT NULL,
    key TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    created REAL NOT NULL,
    members BLOB NOT NULL,
    PRIMARY KEY (job, key)
);
"""


def _signed(digest: int) -> int:
    # SQLite integers are signed 64-bit; digests are unsigned.
    return digest - _WRAP if digest >= _SIGN else digest


def _unsigned(value: int) -> int:
    return value + _WRAP if value < 0 else value


def _json(digests: Sequence[int]) -> str:
    """Digests as one JSON array of signed integers, for ``json_each(?)``.

    One parameter instead of one per digest: a statement binds it and runs
    in one step, so a call makes a handful of steps whatever the batch size.
    (Each step releases the GIL and takes it back, and taking it back behind
    a busy planning thread is what made the worker threads slow.)
    """
    count = len(digests)
    signed = struct.unpack(f"={count}q", struct.pack(f"={count}Q", *digests))
    return json.dumps(signed)


def _from_json(text: str | None) -> set[int]:
    return {_unsigned(value) for value in json.loads(text)} if text else set()


def _pack(digests: Sequence[int]) -> bytes:
    return struct.pack(f">{len(digests)}Q", *digests)


def _unpack(blob: bytes) -> tuple[int, ...]:
    return struct.unpack(f">{len(blob) // 8}Q", blob)


class SqliteLedger:
    """A :class:`~sendmux_dispatch.ledger.Ledger` in one SQLite file.

    WAL mode, so readers never wait for the writer; every write is one
    ``BEGIN IMMEDIATE`` transaction, so several processes on one machine
    (workers, a re-run started while the first is still dying) can share the
    file. ``busy_timeout`` is how long SQLite itself waits for another
    writer's lock per attempt; a store that stays locked, full or unopenable
    is retried up to ``unavailable_after`` seconds, then
    :class:`~sendmux_dispatch.errors.LedgerUnavailableError`.

    ``synchronous="normal"`` (the default) survives a killed process (kill -9,
    OOM, a retried task) but may lose the last writes on a power cut or a
    kernel crash; ``"full"`` syncs every write to disk (one fsync per batch
    event). The file is created readable by its owner only (0600): it holds
    digests of addresses, which anyone with a candidate list can test.

    Not for network file systems (NFS, SMB): SQLite's locking is unreliable
    there; use :class:`~sendmux_dispatch.ledger.RedisLedger` across machines.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        unavailable_after: float = DEFAULT_UNAVAILABLE_AFTER,
        busy_timeout: float = 5.0,
        synchronous: Literal["normal", "full"] = "normal",
    ) -> None:
        if synchronous not in ("normal", "full"):
            raise ValueError('synchronous must be "normal" or "full"')
        if busy_timeout < 0:
            raise ValueError("busy_timeout must be 0 or more seconds")
        self.path = Path(path)
        self.synchronous = synchronous
        self.busy_timeout = busy_timeout
        self._retry = Retrier(
            backend="sqlite",
            location=str(self.path),
            deadline=unavailable_after,
            transient=(sqlite3.OperationalError,),
        )
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        # Reads go through one connection per thread, outside the write lock:
        # in WAL mode they never wait for the writer, so the planner's lookups
        # do not queue behind a write round that waits for the GIL.
        self._local = threading.local()
        self._readers: list[tuple[int, sqlite3.Connection]] = []  # (pid, connection)
        self._pid = os.getpid()
        self._closed = False
        # Opened now, so a bad path fails at construction rather than mid-job.
        self._run("open the file", lambda conn: None)

    def __repr__(self) -> str:
        return f"SqliteLedger({str(self.path)!r})"

    # ------------------------------------------------------------ connection

    def _connection(self) -> sqlite3.Connection:
        if self._closed:
            raise RuntimeError("this SqliteLedger is closed")
        if self._conn is not None and self._pid == os.getpid():
            return self._conn
        # A connection inherited through fork() must not be used by the
        # child: SQLite's locks belong to the parent. Open a fresh one.
        self._pid = os.getpid()
        self._conn = None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():
            os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
        conn = sqlite3.connect(
            self.path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False
        )
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise LedgerUnavailableError(
                    f"the SQLite ledger at {self.path} cannot use WAL mode (got {mode!r}); "
                    "put it on a local disk",
                    backend="sqlite",
                )
            try:
                conn.execute("SELECT json_each.value FROM json_each('[1]')").fetchone()
            except sqlite3.OperationalError as exc:
                raise LedgerUnavailableError(
                    f"the SQLite library ({sqlite3.sqlite_version}) has no JSON functions, "
                    "which the ledger's queries use: use a Python built with SQLite 3.38 or "
                    "later (or one with JSON1 compiled in)",
                    backend="sqlite",
                ) from exc
            conn.execute(f"PRAGMA synchronous={self.synchronous.upper()}")
            # A batch's accepted digests land on ~100 random pages, each copied
            # into the WAL; checkpointing every 10,000 pages (40 MB) rather than
            # 1,000 halves what a batch costs (docs/ledger.md, "Memory and cost").
            conn.execute("PRAGMA wal_autocheckpoint=10000")
            # executescript() would commit first: one statement at a time, in
            # one transaction, so two processes creating the file do not race.
            with self._write(conn):
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        return conn

    def _reader(self) -> sqlite3.Connection:
        if self._closed:
            raise RuntimeError("this SqliteLedger is closed")
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None and self._local.pid == os.getpid():
            return conn
        with self._lock:
            self._connection()  # the file exists, in WAL mode, with its tables
            conn = sqlite3.connect(
                self.path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False
            )
            self._readers.append((os.getpid(), conn))
        self._local.conn, self._local.pid = conn, os.getpid()
        return conn

    def _read(self, what: str, operation: Callable[[sqlite3.Connection], _T]) -> _T:
        return self._run(what, operation, read=True)

    def _run(
        self, what: str, operation: Callable[[sqlite3.Connection], _T], *, read: bool = False
    ) -> _T:
        def attempt() -> _T:
            if read:
                return operation(self._reader())
            with self._lock:
                return operation(self._connection())

        try:
            return self._retry(attempt, what)
        except sqlite3.DatabaseError as exc:
            # Not transient (a corrupt file, "file is not a database"): no point waiting.
            raise LedgerUnavailableError(
                f"the SQLite ledger at {self.path} could not {what}: {type(exc).__name__}: {exc}",
                backend="sqlite",
            ) from exc

    @staticmethod
    @contextmanager
    def _write(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            # Also when COMMIT itself failed (busy, disk full): a transaction
            # left open would make the retry's BEGIN fail for good.
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    @staticmethod
    def _job_id(conn: sqlite3.Connection, job_key: str) -> int | None:
        row = conn.execute("SELECT id FROM jobs WHERE job_key = ?", (job_key,)).fetchone()
        return None if row is None else int(row[0])

    @staticmethod
    def _touch(conn: sqlite3.Connection, job_key: str, now: float) -> int:
        row = conn.execute(
            "INSERT INTO jobs (job_key, created, updated) VALUES (?, ?, ?) "
            "ON CONFLICT (job_key) DO UPDATE SET updated = excluded.updated RETURNING id",
            (job_key, now, now),
        ).fetchone()
        return int(row[0])

    # ------------------------------------------------------------ protocol

    def accepted_among(self, job_key: str, digests: Sequence[int]) -> set[int]:
        _check_job_key(job_key)
        if not digests:
            return set()
        _check_digests(digests)
        values = _json(digests)

        def query(conn: sqlite3.Connection) -> set[int]:
            # One statement, one step: the job's id and the digests' lookup together.
            row = conn.execute(
                "SELECT json_group_array(digest) FROM accepted "
                "WHERE job = (SELECT id FROM jobs WHERE job_key = ?) "
                "AND digest IN (SELECT value FROM json_each(?))",
                (job_key, values),
            ).fetchone()
            return _from_json(row[0])

        return self._read("read accepted recipients", query)

    def pending(self, job_key: str) -> list[Intent]:
        _check_job_key(job_key)

        def query(conn: sqlite3.Connection) -> list[Intent]:
            job = self._job_id(conn, job_key)
            if job is None:
                return []
            rows = conn.execute(
                "SELECT key, attempt, created, members FROM intents WHERE job = ? "
                "ORDER BY created, key",
                (job,),
            )
            return [
                Intent(key, _unpack(members), attempt, created)
                for key, attempt, created, members in rows
            ]

        return self._read("read pending batches", query)

    def begin(self, job_key: str, intent: Intent) -> set[int]:
        return self._record(job_key, (), (intent,), "record a pending batch")[0]

    def finish(
        self,
        job_key: str,
        key: str,
        accepted: Sequence[int],
        successor: Intent | None = None,
    ) -> None:
        self._record(job_key, (Finish(key, accepted, successor),), (), "record a batch result")

    def record(
        self, job_key: str, finishes: Sequence[Finish], begins: Sequence[Intent]
    ) -> list[set[int]]:
        """Many finishes, then many begins, in one transaction of a few statements.

        The statements per round stay the same whatever the number of events
        (all digests travel as one JSON parameter each), so the GIL hand-offs
        and the transaction's fixed cost are shared by the whole round.
        ``begin`` and ``finish`` are a round of one.
        """
        return self._record(job_key, finishes, begins, "record batch events")

    def _record(
        self, job_key: str, finishes: Sequence[Finish], begins: Sequence[Intent], what: str
    ) -> list[set[int]]:
        _check_job_key(job_key)
        if not finishes and not begins:
            return []
        for finish in finishes:
            _check_digests(finish.accepted)
        # Unsorted and with repeats: the INSERT sorts in SQLite (in C, the GIL
        # released) and ignores repeats, so this thread holds the GIL less.
        accepted = [digest for finish in finishes for digest in finish.accepted]
        accepted_json = _json(accepted) if accepted else "[]"
        finished_json = json.dumps([finish.key for finish in finishes])
        begin_json = _json([digest for intent in begins for digest in intent.digests])
        begin_keys = json.dumps([intent.key for intent in begins])

        def write(conn: sqlite3.Connection) -> list[set[int]]:
            now = time.time()
            with self._write(conn):
                job = self._touch(conn, job_key, now)
                if finishes:
                    self._record_finishes(conn, job, finishes, accepted_json, finished_json, now)
                if not begins:
                    return []
                return self._record_begins(conn, job, begins, begin_json, begin_keys, now)

        return self._run(what, write)

    @staticmethod
    def _record_finishes(
        conn: sqlite3.Connection,
        job: int,
        finishes: Sequence[Finish],
        accepted_json: str,
        finished_json: str,
        now: float,
    ) -> None:
        conn.execute(
            "INSERT OR IGNORE INTO accepted (job, digest) "
            "SELECT ?, value FROM json_each(?) ORDER BY value",
            (job, accepted_json),
        )
        if not any(finish.successor is not None for finish in finishes):
            conn.execute(
                "DELETE FROM intents WHERE job = ? AND key IN (SELECT value FROM json_each(?))",
                (job, finished_json),
            )
            return
        # A resend is rare (a partial failure): one statement per finish, in
        # order, so a successor is added only if its key was still pending.
        for finish in finishes:
            gone = conn.execute(
                "DELETE FROM intents WHERE job = ? AND key = ?", (job, finish.key)
            ).rowcount
            if gone and finish.successor is not None:
                successor = finish.successor
                conn.execute(
                    "INSERT INTO intents (job, key, attempt, created, members) "
                    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (job, key) DO NOTHING",
                    (job, successor.key, successor.attempt, now, _pack(successor.digests)),
                )

    @staticmethod
    def _record_begins(
        conn: sqlite3.Connection,
        job: int,
        begins: Sequence[Intent],
        begin_json: str,
        begin_keys: str,
        now: float,
    ) -> list[set[int]]:
        # One step reads all the round's begins need: which of their members are
        # accepted, the members of every other pending intent, and those of
        # intents already stored under one of the round's keys (usually none).
        # Pending intents are few (what was in flight), so their members are
        # checked here rather than kept in an index: an index row per member
        # would double the random page writes of every batch.
        accepted, others, stored = conn.execute(
            "SELECT (SELECT json_group_array(digest) FROM accepted "
            "WHERE job = ?1 AND digest IN (SELECT value FROM json_each(?2))), "
            "(SELECT group_concat(hex(members), '') FROM intents "
            "WHERE job = ?1 AND key NOT IN (SELECT value FROM json_each(?3))), "
            "(SELECT json_group_object(key, hex(members)) FROM intents "
            "WHERE job = ?1 AND key IN (SELECT value FROM json_each(?3)))",
            (job, begin_json, begin_keys),
        ).fetchone()
        # Taken: accepted, or claimed by a pending intent under another key
        # (stored before, or recorded by an earlier begin of this round).
        taken_by_others = _from_json(accepted)
        if others:
            taken_by_others.update(_unpack(bytes.fromhex(others)))
        held: dict[str, str] = json.loads(stored)
        owner: dict[int, str] = {}
        for key, text in held.items():
            owner.update(dict.fromkeys(_unpack(bytes.fromhex(text)), key))
        answers: list[set[int]] = []
        rows: list[tuple[object, ...]] = []
        for intent in begins:
            key = intent.key
            members = set(intent.digests)
            taken = members & taken_by_others
            # Set operations in C: a round's begins are checked in microseconds.
            clash = owner.keys() & members
            if clash:
                taken.update(digest for digest in clash if owner[digest] != key)
            answers.append(taken)
            if taken or key in held:
                continue  # taken: nothing recorded; the key stored: a no-op, as begin
            held[key] = ""
            owner.update(dict.fromkeys(intent.digests, key))
            rows.append((job, key, intent.attempt, now, _pack(intent.digests)))
        # One INSERT with many rows (not executemany: a step per row); 200 rows
        # of 5 parameters stay far under SQLite's limit of bound parameters.
        for start in range(0, len(rows), 200):
            chunk = rows[start : start + 200]
            conn.execute(
                "INSERT INTO intents (job, key, attempt, created, members) VALUES "  # noqa: S608 - placeholders only
                + ", ".join(["(?, ?, ?, ?, ?)"] * len(chunk))
                + " ON CONFLICT (job, key) DO NOTHING",
                [value for row in chunk for value in row],
            )
        return answers

    def stats(self, job_key: str) -> JobStats | None:
        _check_job_key(job_key)

        def query(conn: sqlite3.Connection) -> JobStats | None:
            row = conn.execute(
                "SELECT id, job_key, created, updated FROM jobs WHERE job_key = ?", (job_key,)
            ).fetchone()
            return None if row is None else self._stats(conn, *row)

        return self._read("read a job's totals", query)

    def jobs(self) -> list[JobStats]:
        def query(conn: sqlite3.Connection) -> list[JobStats]:
            rows = conn.execute(
                "SELECT id, job_key, created, updated FROM jobs ORDER BY updated DESC"
            ).fetchall()
            return [self._stats(conn, *row) for row in rows]

        return self._read("list jobs", query)

    @staticmethod
    def _stats(
        conn: sqlite3.Connection, job: int, job_key: str, created: float, updated: float
    ) -> JobStats:
        accepted = conn.execute("SELECT count(*) FROM accepted WHERE job = ?", (job,)).fetchone()
        pending, oldest, members = conn.execute(
            "SELECT count(*), min(created), total(length(members)) / 8 FROM intents WHERE job = ?",
            (job,),
        ).fetchone()
        return JobStats(
            job_key=job_key,
            accepted=int(accepted[0]),
            pending=int(pending),
            pending_members=int(members),
            created=float(created),
            updated=float(updated),
            oldest_pending=None if oldest is None else float(oldest),
        )

    def prune(self, older_than: float | timedelta, *, job_key: str | None = None) -> int:
        cutoff = time.time() - seconds(older_than)
        if job_key is not None:
            _check_job_key(job_key)

        def write(conn: sqlite3.Connection) -> int:
            with self._write(conn):
                if job_key is None:
                    ids = conn.execute("SELECT id FROM jobs WHERE updated <= ?", (cutoff,))
                else:
                    ids = conn.execute(
                        "SELECT id FROM jobs WHERE updated <= ? AND job_key = ?",
                        (cutoff, job_key),
                    )
                doomed = [(row[0],) for row in ids.fetchall()]
                for table in ("accepted", "intents"):
                    conn.executemany(f"DELETE FROM {table} WHERE job = ?", doomed)  # noqa: S608
                conn.executemany("DELETE FROM jobs WHERE id = ?", doomed)
                return len(doomed)

        return self._run("prune old jobs", write)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            # Never a connection inherited through fork(): closing it in the
            # child would release the parent's locks.
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            for pid, reader in self._readers:
                if pid == os.getpid():
                    reader.close()
            self._conn = None
            self._readers.clear()

    def __enter__(self) -> SqliteLedger:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
