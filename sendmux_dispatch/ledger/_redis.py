"""The shared ledger: Redis, for many workers on many machines."""

from __future__ import annotations

import hashlib
import struct
import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar

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

if TYPE_CHECKING:
    import redis

__all__ = ["RedisLedger"]

_T = TypeVar("_T")
_HEAD = struct.Struct(">Qd")  # attempt, created: in front of an intent's packed members
_INDEX_EVERY = 5.0  # seconds between refreshes of a job's score in the jobs index

# Every script touches only one job's keys, all sharing the hash tag {job id},
# so they run atomically on a single Redis and on a cluster alike.
# KEYS: acc (set), claims (hash digest -> key), pend (hash key -> blob), meta (hash)
# Digests travel packed, 8 bytes each, in one argument (the intent's blob
# already holds its members after the 16-byte head): one bulk string to
# encode instead of a hundred, which was most of a call's client-side cost.
# begin, finish and record are built from the same three functions, so a
# round recorded at once writes exactly what the calls one by one write (and
# what the previous release's scripts wrote: keys and values are unchanged).
_STEPS = """
local function stamp(now, job_key)
  redis.call('HSETNX', KEYS[4], 'job_key', job_key)
  local fresh = redis.call('HSETNX', KEYS[4], 'created', now)
  redis.call('HSET', KEYS[4], 'updated', now)
  return fresh
end

local function claim(key, blob)
  local taken = {}
  for i = 17, #blob, 8 do
    local d = string.sub(blob, i, i + 7)
    if redis.call('SISMEMBER', KEYS[1], d) == 1 then
      taken[#taken + 1] = d
    else
      local owner = redis.call('HGET', KEYS[2], d)
      if owner and owner ~= key then taken[#taken + 1] = d end
    end
  end
  if #taken == 0 and redis.call('HSETNX', KEYS[3], key, blob) == 1 then
    for i = 17, #blob, 8 do redis.call('HSET', KEYS[2], string.sub(blob, i, i + 7), key) end
  end
  return taken
end

local function settle(key, skey, sblob, acc)
  local digests = {}
  for i = 1, #acc, 8 do digests[#digests + 1] = string.sub(acc, i, i + 7) end
  for i = 1, #digests, 1000 do
    redis.call('SADD', KEYS[1], unpack(digests, i, math.min(i + 999, #digests)))
  end
  local blob = redis.call('HGET', KEYS[3], key)
  if not blob then return end
  for i = 17, #blob, 8 do
    local d = string.sub(blob, i, i + 7)
    if redis.call('HGET', KEYS[2], d) == key then redis.call('HDEL', KEYS[2], d) end
  end
  redis.call('HDEL', KEYS[3], key)
  if skey ~= '' and redis.call('HSETNX', KEYS[3], skey, sblob) == 1 then
    for i = 17, #sblob, 8 do redis.call('HSET', KEYS[2], string.sub(sblob, i, i + 7), skey) end
  end
end
"""

# ARGV: key, blob, now, job_key. Returns {1 if the job is new, taken digests}.
_BEGIN = (
    _STEPS
    + """
local taken = claim(ARGV[1], ARGV[2])
return {stamp(ARGV[3], ARGV[4]), taken}
"""
)

# ARGV: key, now, job_key, successor key ('' for none), successor blob, accepted digests
# (packed). Returns 1 if the job is new.
_FINISH = (
    _STEPS
    + """
settle(ARGV[1], ARGV[4], ARGV[5], ARGV[6])
return stamp(ARGV[2], ARGV[3])
"""
)

# ARGV: now, job_key, the number of finishes, then per finish its key, successor key,
# successor blob and accepted digests (as _FINISH), then per begin its key and blob.
# Returns {1 if the job is new, then each begin's taken digests}.
_RECORD = (
    _STEPS
    + """
local at = 4
for _ = 1, tonumber(ARGV[3]) do
  settle(ARGV[at], ARGV[at + 1], ARGV[at + 2], ARGV[at + 3])
  at = at + 4
end
local answers = {stamp(ARGV[1], ARGV[2])}
while at < #ARGV do
  answers[#answers + 1] = claim(ARGV[at], ARGV[at + 1])
  at = at + 2
end
return answers
"""
)

# KEYS: acc. ARGV: digests (packed). Returns the accepted ones (8 bytes each),
# usually none: one small reply instead of a flag per digest.
_AMONG = """
local found = {}
local digests = ARGV[1]
for i = 1, #digests, 8 do
  local d = string.sub(digests, i, i + 7)
  if redis.call('SISMEMBER', KEYS[1], d) == 1 then found[#found + 1] = d end
end
return found
"""

# ARGV: cutoff. Deletes the job only if it is still old (a worker may have just written).
_PRUNE = """
local updated = redis.call('HGET', KEYS[4], 'updated')
if not updated or tonumber(updated) > tonumber(ARGV[1]) then return 0 end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4])
return 1
"""


def _pack(intent: Intent, now: float) -> bytes:
    return _HEAD.pack(intent.attempt, now) + _packed(intent.digests)


def _unpack(key: bytes, blob: bytes) -> Intent:
    attempt, created = _HEAD.unpack_from(blob)
    count = (len(blob) - _HEAD.size) // 8
    digests = struct.unpack_from(f">{count}Q", blob, _HEAD.size)
    return Intent(key.decode(), digests, attempt, created)


def _packed(digests: Sequence[int]) -> bytes:
    return struct.pack(f">{len(digests)}Q", *digests)


def _digest_set(raw: Sequence[bytes]) -> set[int]:
    return {int.from_bytes(digest, "big") for digest in raw}


def _successor_args(successor: Intent | None, now: float) -> tuple[str, bytes]:
    # A finish without a successor passes an empty key, which the script skips.
    return ("", b"") if successor is None else (successor.key, _pack(successor, now))


class RedisLedger:
    """A :class:`~sendmux_dispatch.ledger.Ledger` in Redis, shared by every worker of a job.

    ``url_or_client`` is a ``redis://`` / ``rediss://`` / ``unix://`` URL or
    a ``redis.Redis`` client (needs the ``redis`` extra and Redis 6.2 or
    later). ``begin`` and ``finish`` are Lua scripts, so claiming a batch's
    members and recording its answer are each one atomic step even with many
    workers on one job; ``record`` runs a round of both as one script call.

    Keys, per job (``jid`` = blake2b-128 of the job key, so any job key makes
    a safe name)::

        {prefix}:{jid}:acc     set of 8-byte digests the server accepted
        {prefix}:{jid}:claims  hash digest -> the pending batch's key
        {prefix}:{jid}:pend    hash key -> attempt, created, members
        {prefix}:{jid}:meta    hash job_key, created, updated
        {prefix}:jobs          sorted set of jids by last update (listing, prune)

    A job's keys share the hash tag ``{jid}``, so a cluster keeps them on one
    node. Redis holds about 60 bytes per accepted recipient (a million-recipient
    job ≈ 60 MB): prune finished jobs. Durability is the server's: with
    ``appendonly yes`` and ``appendfsync everysec`` a Redis crash loses at
    most a second of writes; with snapshots alone, minutes.

    A Redis that cannot be reached is retried for ``unavailable_after``
    seconds (each attempt bounded by ``socket_timeout``), then
    :class:`~sendmux_dispatch.errors.LedgerUnavailableError`. A client you
    pass keeps its own timeouts: give it a ``socket_timeout``, or a network
    partition can hold one call past ``unavailable_after``.
    """

    def __init__(
        self,
        url_or_client: str | redis.Redis,
        *,
        prefix: str = "sendmux:ledger",
        unavailable_after: float = DEFAULT_UNAVAILABLE_AFTER,
        socket_timeout: float = 5.0,
    ) -> None:
        if not prefix or any(c.isspace() for c in prefix) or "{" in prefix or "}" in prefix:
            raise ValueError("prefix must be a non-empty string without whitespace or braces")
        import redis as redis_lib  # optional dependency: the [redis] extra

        self.prefix = prefix
        self._owns_client = isinstance(url_or_client, str)
        if isinstance(url_or_client, str):
            # The URL is never kept or shown: it may carry a password.
            self._client: redis.Redis = redis_lib.Redis.from_url(
                url_or_client, socket_timeout=socket_timeout, socket_connect_timeout=socket_timeout
            )
        else:
            self._client = url_or_client
        kwargs = self._client.connection_pool.connection_kwargs
        if "path" in kwargs:
            self.location = f"unix:{kwargs['path']}"
        else:
            self.location = f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}"
            self.location += f"/{kwargs.get('db', 0)}"
        errors = redis_lib.exceptions
        self._retry = Retrier(
            backend="redis",
            location=self.location,
            deadline=unavailable_after,
            transient=(
                errors.ConnectionError,
                errors.TimeoutError,
                errors.ReadOnlyError,
                errors.ResponseError,
            ),
            # Of the server's error replies only these pass: a replica that
            # has not taken over yet, a server still loading, a failing disk.
            is_transient=lambda exc: (
                not isinstance(exc, errors.ResponseError)
                or isinstance(exc, errors.ReadOnlyError)
                or str(exc).startswith(("MISCONF", "LOADING", "TRYAGAIN", "CLUSTERDOWN"))
            ),
        )
        self._indexed: dict[str, float] = {}
        self._begin = self._client.register_script(_BEGIN)
        self._finish = self._client.register_script(_FINISH)
        self._record = self._client.register_script(_RECORD)
        self._prune = self._client.register_script(_PRUNE)
        self._among = self._client.register_script(_AMONG)

    def __repr__(self) -> str:
        return f"RedisLedger({self.location!r}, prefix={self.prefix!r})"

    # ------------------------------------------------------------ names

    def _jid(self, job_key: str) -> str:
        return hashlib.blake2b(job_key.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()

    def _keys(self, jid: str) -> list[str]:
        base = f"{self.prefix}:{{{jid}}}"
        return [f"{base}:acc", f"{base}:claims", f"{base}:pend", f"{base}:meta"]

    @property
    def _index(self) -> str:
        return f"{self.prefix}:jobs"

    def _run(self, what: str, operation: Callable[[], _T]) -> _T:
        return self._retry(operation, what)

    # ------------------------------------------------------------ protocol

    def accepted_among(self, job_key: str, digests: Sequence[int]) -> set[int]:
        _check_job_key(job_key)
        if not digests:
            return set()
        _check_digests(digests)
        acc = self._keys(self._jid(job_key))[0]

        packed = _packed(digests)

        def query() -> set[int]:
            found: list[bytes] = self._among(keys=[acc], args=[packed])
            return _digest_set(found)

        return self._run("read accepted recipients", query)

    def pending(self, job_key: str) -> list[Intent]:
        _check_job_key(job_key)
        pend = self._keys(self._jid(job_key))[2]

        def query() -> list[Intent]:
            found: dict[bytes, bytes] = self._client.hgetall(pend)  # type: ignore[assignment]
            intents = [_unpack(key, blob) for key, blob in found.items()]
            return sorted(intents, key=lambda intent: (intent.created, intent.key))

        return self._run("read pending batches", query)

    def _touch(self, jid: str, now: float, fresh: object) -> None:
        # Outside the scripts on purpose: the index spans jobs (another hash
        # slot on a cluster) and only serves listing and pruning. Refreshed at
        # most every few seconds per job, saving a round trip per call: a
        # score older than the truth only makes a job a prune *candidate*
        # early, and the prune script re-checks the job's own `updated`.
        # A job the script just created (first write, or first since a prune)
        # is always indexed.
        if fresh or now - self._indexed.get(jid, 0.0) >= _INDEX_EVERY:
            self._client.zadd(self._index, {jid: now})
            self._indexed[jid] = now

    def begin(self, job_key: str, intent: Intent) -> set[int]:
        _check_job_key(job_key)
        jid = self._jid(job_key)
        keys = self._keys(jid)

        def write() -> set[int]:
            now = time.time()
            args: list[Any] = [intent.key, _pack(intent, now), now, job_key]
            fresh, taken = self._begin(keys=keys, args=args)
            self._touch(jid, now, fresh)
            return _digest_set(taken)

        return self._run("record a pending batch", write)

    def finish(
        self,
        job_key: str,
        key: str,
        accepted: Sequence[int],
        successor: Intent | None = None,
    ) -> None:
        _check_job_key(job_key)
        _check_digests(accepted)
        jid = self._jid(job_key)
        keys = self._keys(jid)
        packed = _packed(accepted)

        def write() -> None:
            now = time.time()
            args: list[Any] = [key, now, job_key, *_successor_args(successor, now), packed]
            fresh = self._finish(keys=keys, args=args)
            self._touch(jid, now, fresh)

        self._run("record a batch result", write)

    def record(
        self, job_key: str, finishes: Sequence[Finish], begins: Sequence[Intent]
    ) -> list[set[int]]:
        """Every finish, then every begin, in one script call: one round trip per round.

        The script runs the very steps of ``finish`` and ``begin`` in order,
        atomically, so each begin sees the finishes and the begins before it.
        """
        _check_job_key(job_key)
        for finish in finishes:
            _check_digests(finish.accepted)
        if not finishes and not begins:
            return []
        jid = self._jid(job_key)
        keys = self._keys(jid)
        # Packed once, not on every retry; blobs carry `now`, so they are built per try.
        accepted = [_packed(finish.accepted) for finish in finishes]

        def write() -> list[set[int]]:
            now = time.time()
            args: list[Any] = [now, job_key, len(finishes)]
            for finish, packed in zip(finishes, accepted, strict=True):
                args += [finish.key, *_successor_args(finish.successor, now), packed]
            for intent in begins:
                args += [intent.key, _pack(intent, now)]
            fresh, *taken = self._record(keys=keys, args=args)
            self._touch(jid, now, fresh)
            return [_digest_set(raw) for raw in taken]

        return self._run("record batch results and pending batches", write)

    def _stats_of(self, jid: str) -> JobStats | None:
        acc, claims, pend, meta = self._keys(jid)
        pipe = self._client.pipeline(transaction=True)
        pipe.hgetall(meta)
        pipe.scard(acc)
        pipe.hlen(claims)
        pipe.hvals(pend)
        info, accepted, members, blobs = pipe.execute()
        if not info:
            return None
        created = [_HEAD.unpack_from(blob)[1] for blob in blobs]
        return JobStats(
            job_key=info[b"job_key"].decode("utf-8", "surrogatepass"),
            accepted=int(accepted),
            pending=len(blobs),
            pending_members=int(members),
            created=float(info.get(b"created", 0.0)),
            updated=float(info.get(b"updated", 0.0)),
            oldest_pending=min(created) if created else None,
        )

    def stats(self, job_key: str) -> JobStats | None:
        _check_job_key(job_key)
        jid = self._jid(job_key)
        return self._run("read a job's totals", lambda: self._stats_of(jid))

    def jobs(self) -> list[JobStats]:
        def query() -> list[JobStats]:
            jids: list[bytes] = self._client.zrevrange(self._index, 0, -1)  # type: ignore[assignment]
            found = [self._stats_of(jid.decode()) for jid in jids]
            return [stats for stats in found if stats is not None]

        return self._run("list jobs", query)

    def prune(self, older_than: float | timedelta, *, job_key: str | None = None) -> int:
        cutoff = time.time() - seconds(older_than)
        if job_key is not None:
            _check_job_key(job_key)

        def write() -> int:
            if job_key is not None:
                candidates = [self._jid(job_key)]
            else:
                raw: list[bytes] = self._client.zrangebyscore(self._index, "-inf", cutoff)  # type: ignore[assignment]
                candidates = [jid.decode() for jid in raw]
            removed = 0
            for jid in candidates:
                if self._prune(keys=self._keys(jid), args=[cutoff]):
                    removed += 1
                    self._client.zrem(self._index, jid)
                elif not self._client.exists(self._keys(jid)[3]):
                    self._client.zrem(self._index, jid)  # an index entry left by a crash
            return removed

        return self._run("prune old jobs", write)

    def close(self) -> None:
        if self._owns_client:
            self._client.close()

    def __enter__(self) -> RedisLedger:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
