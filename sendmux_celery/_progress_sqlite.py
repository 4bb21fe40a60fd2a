"""A bulk job's progress in a SQLite file: the Redis counters' semantics, for one machine.

For setups with no Redis at all (``make demo``: kombu's filesystem transport
and a SQLite result backend): ``sendmux_progress_url = "sqlite:///path.db"``,
or a ``db+sqlite:///`` result backend, whose file then holds these tables
too. Every process must open the same file, so the producer and the workers
are on one machine. Each write is one ``BEGIN IMMEDIATE`` transaction, so a
batch delivered twice is counted once, as the Redis scripts do. Rows stay
until the job's next run resets them (no expiry).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import redis

from sendmux_celery._progress import ProgressStore
from sendmux_celery._results import BatchSummary
from sendmux_celery._stop import JobStop, stop_from_fields
from sendmux_dispatch.report import DEFAULT_MAX_FAILURES

__all__ = ["SqliteProgressError", "SqliteProgressStore", "sqlite_path"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sendmux_bulk_meta
    (job TEXT, name TEXT, value TEXT, PRIMARY KEY (job, name));
CREATE TABLE IF NOT EXISTS sendmux_bulk_planned (job TEXT, batch TEXT, PRIMARY KEY (job, batch));
CREATE TABLE IF NOT EXISTS sendmux_bulk_done
    (job TEXT, batch TEXT, status TEXT, PRIMARY KEY (job, batch));
CREATE TABLE IF NOT EXISTS sendmux_bulk_counts
    (job TEXT, name TEXT, n INTEGER, PRIMARY KEY (job, name));
CREATE TABLE IF NOT EXISTS sendmux_bulk_fail
    (id INTEGER PRIMARY KEY AUTOINCREMENT, job TEXT, line TEXT);
"""
_TABLES = ("meta", "planned", "done", "counts", "fail")
_ADD = (
    "INSERT INTO sendmux_bulk_counts VALUES (?, ?, ?) "
    "ON CONFLICT (job, name) DO UPDATE SET n = n + excluded.n"
)
_ADD_META = (
    "INSERT INTO sendmux_bulk_meta VALUES (?, ?, ?) ON CONFLICT (job, name) "
    "DO UPDATE SET value = CAST(CAST(value AS INTEGER) + excluded.value AS TEXT)"
)
_SET_META = (
    "INSERT INTO sendmux_bulk_meta VALUES (?, ?, ?) "
    "ON CONFLICT (job, name) DO UPDATE SET value = excluded.value"
)


def _stop_of(db: sqlite3.Connection, job: str) -> JobStop | None:
    rows = dict(
        db.execute(
            "SELECT name, value FROM sendmux_bulk_meta WHERE job = ? AND name IN "
            "('stop_cause', 'stopped_reason', 'stop_error')",
            (job,),
        ).fetchall()
    )
    if "stop_cause" not in rows:
        return None
    return stop_from_fields(
        rows["stop_cause"], rows.get("stopped_reason", ""), rows.get("stop_error", "")
    )


class SqliteProgressError(redis.RedisError):
    """The SQLite file could not be written (locked too long, disk full).

    A ``RedisError`` on purpose: the batch task already retries its
    bookkeeping on those, and the same retry is right here.
    """


def sqlite_path(url: str) -> str | None:
    """The file of a ``sqlite:///`` or ``db+sqlite:///`` URL; None for any other URL."""
    for scheme in ("sqlite:///", "db+sqlite:///"):
        if url.startswith(scheme):
            return url[len(scheme) :]
    return None


_lock = threading.Lock()
_connections: dict[tuple[int, str], sqlite3.Connection] = {}


def _connection(path: str) -> sqlite3.Connection:
    key = (os.getpid(), path)
    with _lock:
        # Per pid: a connection must not cross fork().
        connection = _connections.get(key)
        if connection is None:
            connection = sqlite3.connect(
                path, timeout=30.0, isolation_level=None, check_same_thread=False
            )
            connection.execute("PRAGMA journal_mode=WAL")
            connection.executescript(_SCHEMA)
            _connections[key] = connection
        return connection


class SqliteProgressStore(ProgressStore):
    """:class:`ProgressStore` on a SQLite file (``sqlite:///path``)."""

    def __init__(self, url: str) -> None:
        path = sqlite_path(url)
        if path is None:
            raise ValueError(f"not a SQLite URL: {url!r}")
        self._db = _connection(path)
        self._write = threading.Lock()

    @contextmanager
    def _transaction(self, begin: str = "BEGIN IMMEDIATE") -> Iterator[sqlite3.Connection]:
        with self._write:
            try:
                self._db.execute(begin)
                try:
                    yield self._db
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            except sqlite3.Error as error:
                raise SqliteProgressError(f"bulk progress in SQLite: {error}") from error

    def reset(self, job: str) -> None:
        with self._transaction() as db:
            for table in _TABLES:
                db.execute(f"DELETE FROM sendmux_bulk_{table} WHERE job = ?", (job,))  # noqa: S608
            db.execute(_SET_META, (job, "planning_done", "0"))

    def plan_batch(self, job: str, batch_key: str, messages: int) -> JobStop | None:
        with self._transaction() as db:
            stop = _stop_of(db, job)
            if stop is not None:
                return stop  # a stopped job plans nothing more
            new = db.execute(
                "INSERT OR IGNORE INTO sendmux_bulk_planned VALUES (?, ?)", (job, batch_key)
            ).rowcount
            if new:
                db.execute(_ADD_META, (job, "batches", 1))
                db.execute(_ADD_META, (job, "messages", messages))
        return None

    def stop(self, job: str, batch_key: str, stop: JobStop) -> bool:
        with self._transaction() as db:
            planned = db.execute(
                "SELECT 1 FROM sendmux_bulk_planned WHERE job = ? AND batch = ?", (job, batch_key)
            ).fetchone()
            if planned is None:
                return False  # a straggler of an earlier run stops nothing
            if _stop_of(db, job) is None:  # the first stop wins
                fields = [
                    ("stop_cause", stop.cause),
                    ("stopped_reason", stop.reason),
                    ("stop_error", json.dumps(stop.error)),
                ]
                db.executemany(_SET_META, [(job, name, value) for name, value in fields])
        return True

    def stopped(self, job: str) -> JobStop | None:
        with self._transaction("BEGIN") as db:
            return _stop_of(db, job)

    def set_plan(self, job: str, totals: Mapping[str, int | str]) -> None:
        with self._transaction() as db:
            db.executemany(_SET_META, [(job, name, str(value)) for name, value in totals.items()])

    def record_batch(self, job: str, summary: BatchSummary) -> bool:
        key, status = summary["idempotency_key"], summary["status"]
        with self._transaction() as db:
            planned = db.execute(
                "SELECT 1 FROM sendmux_bulk_planned WHERE job = ? AND batch = ?", (job, key)
            ).fetchone()
            if planned is None:
                return False  # a straggler of an earlier run
            first = db.execute(
                "INSERT OR IGNORE INTO sendmux_bulk_done VALUES (?, ?, ?)", (job, key, status)
            ).rowcount
            if not first:
                return False
            adds = [("batches", 1), (f"status:{status}", 1), ("attempts", summary["attempts"])]
            adds += list(summary["counts"].items())
            db.executemany(_ADD, [(job, name, n) for name, n in adds])
            (kept,) = db.execute(
                "SELECT count(*) FROM sendmux_bulk_fail WHERE job = ?", (job,)
            ).fetchone()
            for failure in summary["failures"][:DEFAULT_MAX_FAILURES]:
                if kept < DEFAULT_MAX_FAILURES:
                    line = json.dumps(
                        {
                            "email": failure["to"],
                            "code": failure["code"] or failure["outcome"],
                            "message": failure["reason"],
                        }
                    )
                    db.execute(
                        "INSERT INTO sendmux_bulk_fail (job, line) VALUES (?, ?)", (job, line)
                    )
                    kept += 1
                else:
                    db.execute(_ADD, (job, "failures_omitted", 1))
        return True

    def snapshot(self, job: str) -> tuple[dict[str, str], dict[str, int], list[dict[str, Any]]]:
        with self._transaction("BEGIN") as db:  # one consistent read, no write lock
            meta = db.execute(
                "SELECT name, value FROM sendmux_bulk_meta WHERE job = ?", (job,)
            ).fetchall()
            counts = db.execute(
                "SELECT name, n FROM sendmux_bulk_counts WHERE job = ?", (job,)
            ).fetchall()
            lines = db.execute(
                "SELECT line FROM sendmux_bulk_fail WHERE job = ? ORDER BY id", (job,)
            ).fetchall()
        return (
            {str(name): str(value) for name, value in meta},
            {str(name): int(n) for name, n in counts},
            [json.loads(line) for (line,) in lines],
        )
