"""RedisPacer: the moving window counted in Redis, shared by every process on one key.

Windows
-------
``limits`` counts windows in whole seconds (``RateLimitItem.get_expiry`` is
an ``int``) and its Redis scripts set key TTLs with ``EXPIRE``, which takes
whole seconds. So :class:`RedisPacer` requires a whole number of seconds
(``window=1.0``, ``60.0``; a clear ``ValueError`` otherwise).

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
import weakref
from typing import TYPE_CHECKING, cast

from limits import RateLimitItemPerSecond
from limits.aio.storage import RedisStorage as AsyncRedisStorage
from limits.aio.strategies import MovingWindowRateLimiter as AsyncMovingWindowRateLimiter
from limits.storage import RedisStorage as SyncRedisStorage
from limits.strategies import MovingWindowRateLimiter
from limits.util import WindowStats

from sendmux_dispatch.models.api_limits import RATE_WINDOW_SECONDS, SENDING_REQUESTS_PER_WINDOW
from sendmux_dispatch.pacing._algorithm import BasePacer

if TYPE_CHECKING:
    import redis
    import redis.asyncio

__all__ = ["RedisPacer", "key_fingerprint"]

logger = logging.getLogger("sendmux_dispatch.pacing")

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


class _AsyncRedis:
    """The async Redis client and limiter of one event loop."""

    def __init__(self, client: redis.asyncio.Redis, limiter: AsyncMovingWindowRateLimiter) -> None:
        self.client = client
        self.limiter = limiter


class RedisPacer(BasePacer):
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
        # The TTL outlives any stored pause (each is at most one window ahead)
        # and lets the key disappear.
        self._pause_ttl_ms = math.ceil(self.window * 2000)
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
            # A sorted set with ZADD GT keeps the latest pause atomically (no
            # read-modify-write, no script).
            pipe.zadd(self._pause_key, {_PAUSE_MEMBER: until}, gt=True)
            pipe.pexpire(self._pause_key, self._pause_ttl_ms)
            pipe.execute()
        except self._redis_lib.RedisError:
            # Advisory: the local pause already applies, and an outage
            # surfaces on the next acquire.
            logger.warning("pacer: could not share a pause through Redis", exc_info=True)

    # ---- async storage ---------------------------------------------------
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
        try:
            async with res.client.pipeline(transaction=True) as pipe:
                # As in _store_pause_until: ZADD GT keeps the latest pause.
                pipe.zadd(self._pause_key, {_PAUSE_MEMBER: until}, gt=True)
                pipe.pexpire(self._pause_key, self._pause_ttl_ms)
                await pipe.execute()
        except self._redis_lib.RedisError:
            logger.warning("pacer: could not share a pause through Redis", exc_info=True)

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
