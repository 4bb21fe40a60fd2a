"""Pacers: keep one Sendmux API key under its request ceiling.

The Sending API allows 1,800 requests per 60 s per key and answers 429 past
it. A pacer hands out one slot per HTTP attempt; when none is free the caller
sleeps (``acquire``) or awaits (``acquire_async``) until one frees up.

Two backends share one algorithm:

* :class:`InProcessPacer` counts in memory, shared by every thread and
  coroutine of one process.
* :class:`RedisPacer` counts in Redis, shared by every process and worker that
  uses the same ``key_id`` (Celery workers, Airflow tasks on several hosts).

Algorithm and why
-----------------
* **Moving window** (``limits``' ``MovingWindowRateLimiter``). Every granted
  slot is a timestamped entry; a slot is granted only while fewer than the
  ceiling entries lie in the last ``window`` seconds. So the ceiling holds in
  *any* window of that length. A fixed window would let a burst at the end of
  one window and another at the start of the next send twice the ceiling
  within one window length, and a server whose window boundaries differ from
  ours would answer 429. The sliding-window-counter strategy is an
  approximation that can overshoot as well. The moving window costs one list
  entry per request (at most ``limit`` of them), which is nothing at 1,800.
* **Headroom** (default 2 %). The effective ceiling is
  ``floor(limit * (1 - headroom))``: the server's window and clock are not
  ours (clock skew between hosts, and between us and Sendmux), a request is
  counted by the server when it arrives, not when we granted its slot
  (requests in flight, retries on other connections), and other tools may use
  the same key. A few percent below the ceiling is cheaper than a 429.
* **Waiting**: when no slot is free we ask the limiter for the window stats
  (the moving window's reset time is when its oldest entry ages out, i.e.
  when the next slot frees) and sleep exactly until then. Waiters on one
  pacer queue on a gate (a thread lock, and one asyncio lock per event loop),
  so a freed slot wakes one waiter per gate, not a thundering herd.
* **Resynchronising with the server** (:meth:`observe`): every response
  carries ``X-RateLimit-Remaining`` and ``-Reset``. When the server says the
  key is exhausted, every acquirer is held until the reset time; in Redis the
  "pause until" time is stored next to the counter so every process honours
  it. When the server reports far fewer requests remaining than our own count
  (someone else uses the key), the difference is taken out of our window.
  A 429 is reported with :meth:`pause` (Retry-After). Any pause is capped at
  one window: a stale, skewed or malformed header never stalls the sender for
  longer than that.

Windows
-------
``limits`` counts windows in whole seconds (``RateLimitItem.get_expiry`` is
an ``int``) and its Redis scripts set key TTLs with ``EXPIRE``, which takes
whole seconds. So :class:`RedisPacer` requires a whole number of seconds
(``window=1.0``, ``60.0``; a clear ``ValueError`` otherwise). Its in-memory
storage does plain float arithmetic on ``time.time()``, so
:class:`InProcessPacer` also accepts fractional windows (``0.5``), which
benchmarks and tests use to scale time down.

Secrets
-------
Redis key names never contain the API key: :class:`RedisPacer` takes a
``key_id``; derive one with :func:`key_fingerprint`. A ``key_id`` that looks
like a Sendmux API key (``smx_…``) is refused. ``repr()`` of a
:class:`RedisPacer` shows the Redis host, port and database, never the
password of the Redis URL.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import re
import threading
import time
import weakref
from typing import TYPE_CHECKING, cast

from limits import RateLimitItem, RateLimitItemPerSecond
from limits.aio.storage import RedisStorage as AsyncRedisStorage
from limits.aio.strategies import MovingWindowRateLimiter as AsyncMovingWindowRateLimiter
from limits.storage import MemoryStorage
from limits.storage import RedisStorage as SyncRedisStorage
from limits.strategies import MovingWindowRateLimiter
from limits.util import WindowStats

from sendmux_dispatch.models.limits import RATE_WINDOW_SECONDS, SENDING_REQUESTS_PER_WINDOW
from sendmux_dispatch.ratelimit import RateLimitState
from sendmux_dispatch.retry import LONG_WAIT_SECONDS

if TYPE_CHECKING:
    from collections.abc import Coroutine

    import redis
    import redis.asyncio
    import redis.asyncio.client
    import redis.client

__all__ = ["InProcessPacer", "RedisPacer", "key_fingerprint"]

logger = logging.getLogger(__name__)

#: Shortest sleep between two attempts: a freed slot can be taken by another
#: waiter (another process) between our stats read and our next hit; never spin.
_MIN_SLEEP = 0.001
#: Server-side counts are integers and race with our own; a difference this
#: small is noise, not "someone else is using the key".
_MIN_DEFICIT_TOLERANCE = 1
#: Sendmux API keys start with this; a key_id that does is a leaked secret.
_API_KEY_PREFIX = "smx_"
_KEY_ID_PATTERN = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
#: Member name inside the Redis pause key (a sorted set used as an atomic max).
_PAUSE_MEMBER = "until"


def key_fingerprint(api_key: str) -> str:
    """Return a short, stable, non-secret id for ``api_key`` (16 hex digits of SHA-256).

    Use it as ``RedisPacer(key_id=...)``: processes using the same API key
    derive the same id, and the key itself never reaches Redis.
    """
    if not api_key:
        raise ValueError("api_key must not be empty")
    return hashlib.sha256(api_key.encode("utf-8")).hexdigest()[:16]


def _effective_ceiling(limit: int, window: float, headroom: float) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"limit must be a positive integer, got {limit!r}")
    if not (isinstance(window, (int, float)) and math.isfinite(window) and window > 0):
        raise ValueError(f"window must be a positive number of seconds, got {window!r}")
    if not (isinstance(headroom, (int, float)) and 0.0 <= headroom < 1.0):
        raise ValueError(f"headroom must be in [0, 1), got {headroom!r}")
    # The epsilon keeps 1800 * 0.98 at 1764 if float rounding lands at 1763.999...
    ceiling = math.floor(limit * (1.0 - headroom) + 1e-9)
    if ceiling < 1:
        raise ValueError(f"limit={limit} with headroom={headroom} leaves no request per window")
    return ceiling


class _FractionalWindowItem(RateLimitItemPerSecond):
    """A per-second item whose window may be a fraction of a second.

    ``limits`` types the expiry as ``int``, but ``MemoryStorage`` only does
    float arithmetic with it (``entry.atime >= now - expiry``), so a float
    window works there. Only ever used with ``MemoryStorage``; the Redis
    backend refuses fractional windows instead (``EXPIRE`` needs whole seconds).
    """

    __slots__ = ("_window",)

    def __init__(self, amount: int, window: float, namespace: str) -> None:
        super().__init__(amount, 1, namespace=namespace)
        self._window = window

    def get_expiry(self) -> int:
        return self._window  # type: ignore[return-value]  # float on purpose, see docstring


def _make_item(ceiling: int, window: float, namespace: str) -> RateLimitItem:
    if float(window).is_integer():
        return RateLimitItemPerSecond(ceiling, int(window), namespace=namespace)
    return _FractionalWindowItem(ceiling, float(window), namespace)


def _log_pause(seconds: float) -> None:
    if seconds >= LONG_WAIT_SECONDS:
        logger.warning("pacer: waiting %.1f s, the server's Retry-After after a 429", seconds)


def _logged_wait(seconds: float, pacer: _BasePacer) -> float:
    if seconds >= LONG_WAIT_SECONDS:
        logger.info(
            "pacer: waiting %.1f s for a free request slot (ceiling %d per %g s)",
            seconds,
            pacer.ceiling,
            pacer.window,
        )
    return seconds


def _current_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class _BasePacer:
    """The algorithm; subclasses supply the storage operations."""

    _item: RateLimitItem

    def __init__(self, *, limit: int, window: float, headroom: float) -> None:
        self._ceiling = _effective_ceiling(limit, window, headroom)
        self.limit = limit
        self.window = float(window)
        self.headroom = float(headroom)
        # This process's view of the pause; the Redis backend also shares it.
        self._local_pause_until = 0.0
        self._state_lock = threading.Lock()
        # Waiters queue here, so one freed slot wakes one waiter per process/loop.
        self._sync_gate = threading.Lock()
        self._async_gates: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
            weakref.WeakKeyDictionary()
        )
        # Fire-and-forget work scheduled by observe()/pause() inside a loop;
        # referenced here so it is not garbage-collected mid-flight.
        self._background: set[asyncio.Task[None]] = set()

    @property
    def ceiling(self) -> int:
        """Requests granted per window: ``floor(limit * (1 - headroom))``."""
        return self._ceiling

    # ---- storage operations (sync) -------------------------------------
    def _hit(self, cost: int = 1) -> bool:
        raise NotImplementedError

    def _stats(self) -> WindowStats:
        raise NotImplementedError

    def _shared_pause_until(self) -> float:
        """The pause stored for other processes to see; 0.0 when none."""
        return 0.0

    def _store_pause_until(self, until: float) -> None:
        """Publish a pause to other processes (no-op in process)."""

    # ---- storage operations (async) ------------------------------------
    async def _ahit(self, cost: int = 1) -> bool:
        raise NotImplementedError

    async def _astats(self) -> WindowStats:
        raise NotImplementedError

    async def _ashared_pause_until(self) -> float:
        return 0.0

    async def _astore_pause_until(self, until: float) -> None:
        """Publish a pause to other processes (no-op in process)."""

    # ---- acquiring ------------------------------------------------------
    def acquire(self) -> None:
        """Block the calling thread until a request slot is free, and take it."""
        with self._sync_gate:
            while True:
                now = time.time()
                paused_until = max(self._local_pause_until, self._shared_pause_until())
                if paused_until > now:
                    _log_pause(paused_until - now)
                    time.sleep(min(paused_until - now, self.window))
                    continue
                if self._hit():
                    return
                time.sleep(_logged_wait(self._wait_for(self._stats()), self))

    async def acquire_async(self) -> None:
        """Wait, without blocking the event loop, until a request slot is free, and take it."""
        async with self._async_gate():
            while True:
                now = time.time()
                paused_until = max(self._local_pause_until, await self._ashared_pause_until())
                if paused_until > now:
                    _log_pause(paused_until - now)
                    await asyncio.sleep(min(paused_until - now, self.window))
                    continue
                if await self._ahit():
                    return
                await asyncio.sleep(_logged_wait(self._wait_for(await self._astats()), self))

    def _wait_for(self, stats: WindowStats) -> float:
        """Seconds until the oldest entry of the moving window ages out."""
        # Capped at one window: the reset time can never be later than that,
        # whatever a clock jump or a foreign entry in Redis suggests.
        return min(max(stats.reset_time - time.time(), _MIN_SLEEP), self.window)

    def _async_gate(self) -> asyncio.Lock:
        # asyncio.Lock is bound to one loop; a pacer may serve several loops
        # (an Airflow triggerer, pytest-asyncio's loop per test), so keep one each.
        loop = asyncio.get_running_loop()
        with self._state_lock:
            gate = self._async_gates.get(loop)
            if gate is None:
                gate = self._async_gates[loop] = asyncio.Lock()
            return gate

    # ---- learning from the server --------------------------------------
    def pause(self, seconds: float) -> None:
        """Hold every acquirer for ``seconds`` (a 429's Retry-After), capped at one window."""
        try:
            seconds = float(seconds)
        except (TypeError, ValueError):
            return
        if not math.isfinite(seconds) or seconds <= 0:
            return
        self._pause_until(time.time() + min(seconds, self.window))

    def observe(self, state: RateLimitState) -> None:
        """Resynchronise with the rate-limit headers of one response.

        * ``remaining <= 0``: hold every acquirer until ``state.reset_at``.
        * ``remaining`` far below our own count of free slots (the key is used
          elsewhere too): take the difference out of our window.

        Malformed or stale states are ignored; no state holds acquirers for
        longer than one window.
        """
        now = time.time()
        try:
            remaining = int(state.remaining)
            limit = int(state.limit)
            reset_at = float(state.reset_at)
            observed_at = float(state.observed_at)
        except (TypeError, ValueError, AttributeError):
            return
        if (
            limit <= 0
            or remaining < 0
            or remaining > limit
            or not math.isfinite(reset_at)
            or not math.isfinite(observed_at)
            or now - observed_at > self.window  # read too long ago to mean anything now
            or reset_at <= now  # that server window is already over
        ):
            return
        if remaining == 0:
            self._pause_until(min(reset_at, now + self.window))
            return
        self._absorb_deficit(remaining)

    def _deficit(self, server_remaining: int, our_remaining: int) -> int:
        tolerance = max(_MIN_DEFICIT_TOLERANCE, self.limit - self._ceiling)
        deficit = our_remaining - server_remaining
        return deficit if deficit > tolerance else 0

    def _absorb_deficit(self, server_remaining: int) -> None:
        if _current_loop() is not None and self._io_blocks_loop():
            self._spawn(self._aabsorb_deficit(server_remaining))
            return
        try:
            deficit = self._deficit(server_remaining, self._stats().remaining)
            if deficit:
                # All-or-nothing in limits; losing the race to another acquirer
                # only means the deficit was (partly) used up already.
                self._hit(cost=deficit)
        except Exception:
            # observe() is advisory and runs after a response was received: a
            # storage outage must not turn a delivered request into an error.
            # The next acquire() reports the outage.
            logger.warning("pacer: could not resynchronise with the server", exc_info=True)

    async def _aabsorb_deficit(self, server_remaining: int) -> None:
        deficit = self._deficit(server_remaining, (await self._astats()).remaining)
        if deficit:
            await self._ahit(cost=deficit)

    def _pause_until(self, until: float) -> None:
        with self._state_lock:
            if until <= self._local_pause_until:
                return
            self._local_pause_until = until
        if _current_loop() is not None and self._io_blocks_loop():
            self._spawn(self._astore_pause_until(until))
        else:
            self._store_pause_until(until)

    def _io_blocks_loop(self) -> bool:
        """Whether storage calls do network I/O (so must not run on an event loop)."""
        return False

    def _spawn(self, coro: Coroutine[object, object, None]) -> None:
        task = asyncio.get_running_loop().create_task(self._logged(coro))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _logged(self, coro: Coroutine[object, object, None]) -> None:
        try:
            await coro
        except Exception:
            # observe()/pause() are advisory: the local pause already applies,
            # and a storage outage will surface on the next acquire.
            logger.warning("pacer: could not share rate-limit state", exc_info=True)


class InProcessPacer(_BasePacer):
    """A moving-window pacer shared by the threads and coroutines of one process.

    ``limit`` requests per ``window`` seconds, minus ``headroom`` (a fraction).
    ``window`` may be fractional.
    """

    def __init__(
        self,
        *,
        limit: int = SENDING_REQUESTS_PER_WINDOW,
        window: float = RATE_WINDOW_SECONDS,
        headroom: float = 0.02,
    ) -> None:
        super().__init__(limit=limit, window=window, headroom=headroom)
        # One MemoryStorage for both paths: its operations are in-memory and
        # non-blocking, so coroutines call it directly. limits.aio's
        # MemoryStorage would be a second, separate count guarded by an
        # asyncio.Lock, which threads and other loops cannot share.
        self._storage = MemoryStorage()
        self._limiter = MovingWindowRateLimiter(self._storage)
        self._item = _make_item(self._ceiling, self.window, "sendmux-pacer")

    def _hit(self, cost: int = 1) -> bool:
        return self._limiter.hit(self._item, cost=cost)

    def _stats(self) -> WindowStats:
        return self._limiter.get_window_stats(self._item)

    async def _ahit(self, cost: int = 1) -> bool:
        return self._hit(cost)

    async def _astats(self) -> WindowStats:
        return self._stats()

    def __repr__(self) -> str:
        return (
            f"InProcessPacer(limit={self.limit}, window={self.window:g}, "
            f"headroom={self.headroom:g}, ceiling={self._ceiling})"
        )


class _AsyncRedis:
    """The async Redis client and limiter of one event loop."""

    def __init__(self, client: redis.asyncio.Redis, limiter: AsyncMovingWindowRateLimiter) -> None:
        self.client = client
        self.limiter = limiter


class RedisPacer(_BasePacer):
    """A moving-window pacer shared through Redis by every process using ``key_id``.

    ``url_or_client`` is a ``redis://`` / ``rediss://`` / ``unix://`` URL or a
    ``redis.Redis`` client. ``key_id`` names the API key in Redis; use
    :func:`key_fingerprint`, never the key. Every process sharing a ``key_id``
    must use the same ``limit``, ``window`` and ``headroom`` (the counter's
    Redis key includes them, so differently configured pacers do not share a
    count). ``window`` must be a whole number of seconds.

    Keys: ``{prefix}:{key_id}/{ceiling}/{window}/second`` (the ``limits``
    moving-window list) and ``{prefix}:{key_id}:pause`` (the shared pause).
    """

    def __init__(
        self,
        url_or_client: str | redis.Redis,
        *,
        key_id: str,
        limit: int = SENDING_REQUESTS_PER_WINDOW,
        window: float = RATE_WINDOW_SECONDS,
        headroom: float = 0.02,
        prefix: str = "sendmux:pacer",
    ) -> None:
        super().__init__(limit=limit, window=window, headroom=headroom)
        if not float(window).is_integer():
            raise ValueError(
                f"RedisPacer needs a whole number of seconds for window, got {window!r}: "
                "limits' Redis storage expires keys with EXPIRE, in whole seconds"
            )
        if not isinstance(key_id, str) or not _KEY_ID_PATTERN.match(key_id):
            raise ValueError("key_id must be 1-128 characters of [A-Za-z0-9_.:-]")
        if key_id.lower().startswith(_API_KEY_PREFIX):
            raise ValueError(
                "key_id looks like a Sendmux API key; pass key_fingerprint(api_key) instead"
            )
        if not prefix or any(c.isspace() for c in prefix):
            raise ValueError("prefix must be a non-empty string without whitespace")
        import redis as redis_lib  # optional dependency: the [redis] extra

        self._redis_lib = redis_lib
        self.key_id = key_id
        self.prefix = prefix
        self._owns_client = isinstance(url_or_client, str)
        if isinstance(url_or_client, str):
            # Kept private and never shown: the URL may carry a password.
            self._url: str | None = url_or_client
            self._client: redis.Redis = redis_lib.Redis.from_url(url_or_client)
        else:
            self._url = None
            self._client = url_or_client
        self._location = _describe(self._client)
        self._pause_key = f"{prefix}:{key_id}:pause"
        self._item = RateLimitItemPerSecond(self._ceiling, int(window), namespace=key_id)
        # The storage gets the client's pool, not the URL: the password then
        # lives only in redis-py's pool, not in limits' objects as well.
        # ("redis://" only tells limits which client library to use.)
        self._storage = SyncRedisStorage(
            "redis://", connection_pool=self._client.connection_pool, key_prefix=prefix
        )
        self._limiter = MovingWindowRateLimiter(self._storage)
        self._async: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _AsyncRedis] = (
            weakref.WeakKeyDictionary()
        )

    def __repr__(self) -> str:
        return (
            f"RedisPacer({self._location}, key_id={self.key_id!r}, limit={self.limit}, "
            f"window={self.window:g}, headroom={self.headroom:g}, ceiling={self._ceiling})"
        )

    __str__ = __repr__

    # ---- sync storage ----------------------------------------------------
    def _hit(self, cost: int = 1) -> bool:
        return self._limiter.hit(self._item, cost=cost)

    def _stats(self) -> WindowStats:
        return self._limiter.get_window_stats(self._item)

    def _shared_pause_until(self) -> float:
        score = self._client.zscore(self._pause_key, _PAUSE_MEMBER)
        return float(score) if score is not None else 0.0

    def _store_pause_until(self, until: float) -> None:
        try:
            pipe = self._client.pipeline(transaction=True)
            self._queue_pause(pipe, until)
            pipe.execute()
        except self._redis_lib.RedisError:
            logger.warning("pacer: could not share a pause through Redis", exc_info=True)

    def _queue_pause(
        self, pipe: redis.client.Pipeline | redis.asyncio.client.Pipeline, until: float
    ) -> None:
        # A sorted set with ZADD GT keeps the latest pause atomically (no
        # read-modify-write, no script). The TTL outlives any stored pause
        # (each is at most one window ahead) and lets the key disappear.
        pipe.zadd(self._pause_key, {_PAUSE_MEMBER: until}, gt=True)
        pipe.pexpire(self._pause_key, math.ceil(self.window * 2000))

    # ---- async storage ---------------------------------------------------
    def _io_blocks_loop(self) -> bool:
        return True

    def _loop_redis(self) -> _AsyncRedis | None:
        """This loop's async client and limiter; ``None`` when built from a sync client."""
        if self._url is None:
            return None
        loop = asyncio.get_running_loop()
        with self._state_lock:
            res = self._async.get(loop)
            if res is None:
                import redis.asyncio as aredis

                client = aredis.Redis.from_url(self._url)
                storage = AsyncRedisStorage(
                    "async+redis://",
                    implementation="redispy",
                    key_prefix=self.prefix,
                    # Documented by limits for the async storage too, though its
                    # **options annotation does not list a pool.
                    connection_pool=cast("str", client.connection_pool),
                )
                res = self._async[loop] = _AsyncRedis(client, AsyncMovingWindowRateLimiter(storage))
            return res

    async def _ahit(self, cost: int = 1) -> bool:
        res = self._loop_redis()
        if res is None:
            # Built from a sync client: run its round trip off the loop.
            return await asyncio.to_thread(self._hit, cost)
        return await res.limiter.hit(self._item, cost=cost)

    async def _astats(self) -> WindowStats:
        res = self._loop_redis()
        if res is None:
            return await asyncio.to_thread(self._stats)
        return await res.limiter.get_window_stats(self._item)

    async def _ashared_pause_until(self) -> float:
        res = self._loop_redis()
        if res is None:
            return await asyncio.to_thread(self._shared_pause_until)
        score = await res.client.zscore(self._pause_key, _PAUSE_MEMBER)
        return float(score) if score is not None else 0.0

    async def _astore_pause_until(self, until: float) -> None:
        res = self._loop_redis()
        if res is None:
            await asyncio.to_thread(self._store_pause_until, until)
            return
        async with res.client.pipeline(transaction=True) as pipe:
            self._queue_pause(pipe, until)
            await pipe.execute()

    # ---- lifecycle -------------------------------------------------------
    def close(self) -> None:
        """Close the Redis client this pacer created (a client passed in is left open)."""
        if self._owns_client:
            self._client.close()

    async def aclose(self) -> None:
        """Close the current event loop's async client, if this pacer made one."""
        loop = asyncio.get_running_loop()
        with self._state_lock:
            res = self._async.pop(loop, None)
        if res is not None:
            await res.client.aclose()


def _describe(client: redis.Redis) -> str:
    """Where the client connects, without credentials."""
    kwargs = client.connection_pool.connection_kwargs
    if "path" in kwargs:
        return f"unix://{kwargs['path']}?db={kwargs.get('db', 0)}"
    host, port = kwargs.get("host", "localhost"), kwargs.get("port", 6379)
    return f"redis://{host}:{port}/{kwargs.get('db', 0)}"
