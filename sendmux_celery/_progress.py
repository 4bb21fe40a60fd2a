"""A bulk job's progress in Redis: counters the producer and the batch tasks update.

Not a chord or a group: those keep a counter per header task and slow down
badly past a few thousand tasks. Here each finished batch adds its counts
once, in one Lua script keyed by the batch's idempotency key, so a batch
delivered twice (a killed worker, a broker redelivery) is counted once. Keys
(``{job}`` is :func:`job_id` of the job key, never the key itself)::

    sendmux:bulk:{job}:meta     hash: planned batches/messages, planning totals, the stop
    sendmux:bulk:{job}:planned  set of the batch keys enqueued
    sendmux:bulk:{job}:done     hash batch key -> its status (once per key)
    sendmux:bulk:{job}:counts   hash outcome -> messages, plus batches, attempts
    sendmux:bulk:{job}:fail     list of the first failures (JSON), capped

Each :func:`send_bulk` call is a *run*: it starts the counters afresh, and
a batch counts only when this run planned it. All of them expire
:data:`PROGRESS_TTL_SECONDS` after the last write. On one machine without
Redis, a ``sqlite:///`` URL gives the same counters in a SQLite file
(``_progress_sqlite``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from collections.abc import Mapping
from typing import Any

from sendmux_celery._results import BatchSummary
from sendmux_celery._settings import SettingsError
from sendmux_celery._stop import JobStop, stop_from_fields
from sendmux_dispatch.report import DEFAULT_MAX_FAILURES

__all__ = ["PROGRESS_TTL_SECONDS", "ProgressStore", "job_id", "progress_url"]

#: How long a job's counters live after its last update (a week).
PROGRESS_TTL_SECONDS = 7 * 24 * 3600

_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
_SQLITE_SCHEMES = ("sqlite:///", "db+sqlite:///")
_SQLITE_BACKEND = "db+sqlite:///"

# KEYS: planned, meta. ARGV: batch key, messages, ttl.
# A stopped job plans nothing more: {-1, cause, reason, error JSON}; else {new}.
_PLAN = """
local cause = redis.call('HGET', KEYS[2], 'stop_cause')
if cause then
  return {-1, cause, redis.call('HGET', KEYS[2], 'stopped_reason') or '',
          redis.call('HGET', KEYS[2], 'stop_error') or '{}'}
end
local new = redis.call('SADD', KEYS[1], ARGV[1])
if new == 1 then
  redis.call('HINCRBY', KEYS[2], 'batches', 1)
  redis.call('HINCRBY', KEYS[2], 'messages', tonumber(ARGV[2]))
end
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
redis.call('EXPIRE', KEYS[2], tonumber(ARGV[3]))
return {new}
"""

# KEYS: planned, meta. ARGV: batch key, cause, reason, error JSON, ttl.
# The first stop wins; a batch this run did not plan (a straggler) stops nothing.
_STOP = """
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 0 then return 0 end
if redis.call('HSETNX', KEYS[2], 'stop_cause', ARGV[2]) == 1 then
  redis.call('HSET', KEYS[2], 'stopped_reason', ARGV[3], 'stop_error', ARGV[4])
end
redis.call('EXPIRE', KEYS[2], tonumber(ARGV[5]))
return 1
"""

# KEYS: done, counts, fail, planned. ARGV: batch key, status, ttl, max failures,
# attempts, then (outcome, n) pairs, then '|', then failure JSON lines.
# A batch the current run did not plan (a straggler of an earlier run) is not counted.
_RECORD = """
if redis.call('SISMEMBER', KEYS[4], ARGV[1]) == 0 then return -1 end
local first = redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2])
if first == 1 then
  redis.call('HINCRBY', KEYS[2], 'batches', 1)
  redis.call('HINCRBY', KEYS[2], 'status:' .. ARGV[2], 1)
  redis.call('HINCRBY', KEYS[2], 'attempts', tonumber(ARGV[5]))
  local i = 6
  while ARGV[i] ~= '|' do
    redis.call('HINCRBY', KEYS[2], ARGV[i], tonumber(ARGV[i + 1]))
    i = i + 2
  end
  i = i + 1
  local cap = tonumber(ARGV[4])
  while ARGV[i] ~= nil do
    if redis.call('LLEN', KEYS[3]) < cap then
      redis.call('RPUSH', KEYS[3], ARGV[i])
    else
      redis.call('HINCRBY', KEYS[2], 'failures_omitted', 1)
    end
    i = i + 1
  end
end
for _, key in ipairs(KEYS) do redis.call('EXPIRE', key, tonumber(ARGV[3])) end
return first
"""


_NOT_KEY_CHARS = re.compile(r"[^A-Za-z0-9_-]+")


def job_id(job_key: str) -> str:
    """The Redis name of a bulk job: a readable slug and a digest of the whole job key."""
    digest = hashlib.blake2b(job_key.encode("utf-8", "surrogatepass"), digest_size=12).hexdigest()
    slug = _NOT_KEY_CHARS.sub("-", job_key)[:40].strip("-") or "job"
    return f"{slug}-{digest}"


def progress_url(conf: Mapping[str, Any]) -> str:
    """``app.conf.sendmux_progress_url``, else the result backend when it is Redis."""
    url = conf.get("sendmux_progress_url")
    if url:
        if not isinstance(url, str):
            raise SettingsError("app.conf.sendmux_progress_url must be a Redis URL string")
        return url
    backend = conf.get("result_backend")
    if isinstance(backend, str) and backend.startswith(_REDIS_SCHEMES):
        return backend
    if isinstance(backend, str) and backend.startswith(_SQLITE_BACKEND):
        # One machine, no Redis (the demo): the result backend's file holds the counters too.
        return backend
    raise SettingsError(
        "a bulk job keeps its progress in Redis: set app.conf.sendmux_progress_url to a "
        "Redis URL (or use a redis:// result backend; on one machine a sqlite:/// URL), "
        "on the producer and the workers",
        code="missing_progress_url",
    )


_lock = threading.Lock()
_clients: dict[tuple[int, str], Any] = {}


class ProgressStore:
    """The Redis side of bulk progress (one connection pool per process and URL).

    ``ProgressStore("sqlite:///file.db")`` makes the SQLite variant
    (``_progress_sqlite``), for one machine with no Redis.
    """

    def __new__(cls, url: str) -> ProgressStore:
        if cls is ProgressStore and url.startswith(_SQLITE_SCHEMES):
            from sendmux_celery._progress_sqlite import SqliteProgressStore

            return object.__new__(SqliteProgressStore)
        return object.__new__(cls)

    def __init__(self, url: str) -> None:
        import redis

        key = (os.getpid(), url)
        with _lock:
            # Per pid: a pool inherited through fork() shares the parent's sockets.
            client = _clients.get(key)
            if client is None:
                client = _clients[key] = redis.Redis.from_url(
                    url, socket_timeout=10, socket_connect_timeout=5, health_check_interval=30
                )
        self._redis: Any = client

    @staticmethod
    def keys(job: str) -> dict[str, str]:
        base = f"sendmux:bulk:{job}"
        return {part: f"{base}:{part}" for part in ("meta", "planned", "done", "counts", "fail")}

    def reset(self, job: str) -> None:
        """Start a run: forget the counters of the job's previous run."""
        keys = self.keys(job)
        pipe = self._redis.pipeline()
        pipe.delete(*keys.values())
        pipe.hset(keys["meta"], mapping={"planning_done": 0})
        pipe.expire(keys["meta"], PROGRESS_TTL_SECONDS)
        pipe.execute()

    def plan_batch(self, job: str, batch_key: str, messages: int) -> JobStop | None:
        """Count a batch as enqueued (once per key), unless the job stopped: the stop then."""
        keys = self.keys(job)
        answer = self._redis.eval(
            _PLAN, 2, keys["planned"], keys["meta"], batch_key, messages, PROGRESS_TTL_SECONDS
        )
        if int(answer[0]) != -1:
            return None
        return stop_from_fields(answer[1], answer[2], answer[3])

    def stop(self, job: str, batch_key: str, stop: JobStop) -> bool:
        """Record that the job stops (the first stop wins); False for a batch not of this run."""
        keys = self.keys(job)
        done = self._redis.eval(
            _STOP,
            2,
            keys["planned"],
            keys["meta"],
            batch_key,
            stop.cause,
            stop.reason,
            json.dumps(stop.error),
            PROGRESS_TTL_SECONDS,
        )
        return bool(done)

    def stopped(self, job: str) -> JobStop | None:
        """The job's stop, if a batch recorded one in this run."""
        cause, reason, error = self._redis.hmget(
            self.keys(job)["meta"], "stop_cause", "stopped_reason", "stop_error"
        )
        return None if cause is None else stop_from_fields(cause, reason or b"", error or b"{}")

    def set_plan(self, job: str, totals: Mapping[str, int | str]) -> None:
        """Planning totals (overwritten by every update: a re-run writes the same values)."""
        keys = self.keys(job)
        pipe = self._redis.pipeline()
        pipe.hset(keys["meta"], mapping=dict(totals))
        pipe.expire(keys["meta"], PROGRESS_TTL_SECONDS)
        pipe.execute()

    def record_batch(self, job: str, summary: BatchSummary) -> bool:
        """Add a finished batch's counts, once per batch key; True when counted now."""
        keys = self.keys(job)
        args: list[Any] = [
            summary["idempotency_key"],
            summary["status"],
            PROGRESS_TTL_SECONDS,
            DEFAULT_MAX_FAILURES,
            summary["attempts"],
        ]
        for outcome, count in summary["counts"].items():
            args += [outcome, count]
        args.append("|")
        args += [
            json.dumps(
                {"email": f["to"], "code": f["code"] or f["outcome"], "message": f["reason"]}
            )
            for f in summary["failures"][:DEFAULT_MAX_FAILURES]
        ]
        first = self._redis.eval(
            _RECORD, 4, keys["done"], keys["counts"], keys["fail"], keys["planned"], *args
        )
        return bool(first == 1)

    def snapshot(self, job: str) -> tuple[dict[str, str], dict[str, int], list[dict[str, Any]]]:
        """The job's meta, counters and kept failures, read in one round trip."""
        keys = self.keys(job)
        pipe = self._redis.pipeline(transaction=False)
        pipe.hgetall(keys["meta"])
        pipe.hgetall(keys["counts"])
        pipe.lrange(keys["fail"], 0, -1)
        meta, counts, failures = pipe.execute()
        return (
            {k.decode(): v.decode() for k, v in meta.items()},
            {k.decode(): int(v) for k, v in counts.items()},
            [json.loads(line) for line in failures],
        )
