"""The pacing algorithm both backends share; they supply only the storage calls.

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
* **Resynchronising with the server** (:meth:`~BasePacer.observe`): every
  response carries ``X-RateLimit-Remaining`` and ``-Reset``. When the server
  says the key is exhausted, every acquirer is held until the reset time; in
  Redis the "pause until" time is stored next to the counter so every process
  honours it. When the server reports far fewer requests remaining than our
  own count (someone else uses the key), the difference is taken out of our
  window. A 429 is reported with :meth:`~BasePacer.pause` (Retry-After). Any
  pause is capped at one window: a stale, skewed or malformed header never
  stalls the sender for longer than that.

Sync and async
--------------
Every operation has a blocking form and an awaitable twin (``acquire`` /
``aacquire``, ``observe`` / ``aobserve``, ``pause`` / ``apause``). The
decisions (is this state meaningful, is this pause later than the one we
hold, how large is the deficit) are made once, here, without I/O; only the
storage calls differ, so a coroutine never blocks its loop on Redis and no
background task is needed.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
import weakref
from dataclasses import dataclass

from limits import RateLimitItem, RateLimitItemPerSecond
from limits.util import WindowStats

from sendmux_dispatch.pacing._protocol import RateLimitState
from sendmux_dispatch.retry import LONG_WAIT_SECONDS

__all__ = ["BasePacer"]

logger = logging.getLogger("sendmux_dispatch.pacing")

#: Shortest sleep between two attempts: a freed slot can be taken by another
#: waiter (another process) between our stats read and our next hit; never spin.
_MIN_SLEEP = 0.001
#: Server-side counts are integers and race with our own; a difference this
#: small is noise, not "someone else is using the key".
_MIN_DEFICIT_TOLERANCE = 1


def effective_ceiling(limit: int, window: float, headroom: float) -> int:
    """``floor(limit * (1 - headroom))``, after checking all three."""
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


def make_item(ceiling: int, window: float, namespace: str) -> RateLimitItem:
    """The ``limits`` item for ``ceiling`` per ``window`` seconds (fractional in memory only)."""
    if float(window).is_integer():
        return RateLimitItemPerSecond(ceiling, int(window), namespace=namespace)
    return _FractionalWindowItem(ceiling, float(window), namespace)


def _log_pause(seconds: float) -> None:
    if seconds >= LONG_WAIT_SECONDS:
        logger.warning("pacer: waiting %.1f s, the server's Retry-After after a 429", seconds)


def _logged_wait(seconds: float, pacer: BasePacer) -> float:
    if seconds >= LONG_WAIT_SECONDS:
        logger.info(
            "pacer: waiting %.1f s for a free request slot (ceiling %d per %g s)",
            seconds,
            pacer.ceiling,
            pacer.window,
        )
    return seconds


@dataclass(frozen=True, slots=True)
class _Verdict:
    """What one rate-limit state asks of the pacer: a pause, or a comparison of counts."""

    #: The server says the key is exhausted: hold every acquirer until then.
    pause_until: float | None = None
    #: Otherwise the server's count, to compare with ours.
    server_remaining: int = 0


class BasePacer:
    """The algorithm; subclasses supply the storage operations, sync and async."""

    _item: RateLimitItem

    def __init__(self, *, limit: int, window: float, headroom: float) -> None:
        self._ceiling = effective_ceiling(limit, window, headroom)
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
        """Publish a pause to other processes (no-op in process); must not raise."""

    # ---- storage operations (async) ------------------------------------
    async def _ahit(self, cost: int = 1) -> bool:
        raise NotImplementedError

    async def _astats(self) -> WindowStats:
        raise NotImplementedError

    async def _ashared_pause_until(self) -> float:
        return 0.0

    async def _astore_pause_until(self, until: float) -> None:
        """Publish a pause to other processes (no-op in process); must not raise."""

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

    async def aacquire(self) -> None:
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

    async def acquire_async(self) -> None:
        """The former name of :meth:`aacquire`, kept for code written against it."""
        await self.aacquire()

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
        until = self._pause_request(seconds)
        if until is not None and self._hold_until(until):
            self._store_pause_until(until)

    async def apause(self, seconds: float) -> None:
        """:meth:`pause`, sharing the pause without blocking the event loop."""
        until = self._pause_request(seconds)
        if until is not None and self._hold_until(until):
            await self._astore_pause_until(until)

    def observe(self, state: RateLimitState) -> None:
        """Resynchronise with the rate-limit headers of one response.

        * ``remaining <= 0``: hold every acquirer until ``state.reset_at``.
        * ``remaining`` far below our own count of free slots (the key is used
          elsewhere too): take the difference out of our window.

        Malformed or stale states are ignored; no state holds acquirers for
        longer than one window.
        """
        verdict = self._judge(state)
        if verdict is None:
            return
        if verdict.pause_until is not None:
            if self._hold_until(verdict.pause_until):
                self._store_pause_until(verdict.pause_until)
            return
        try:
            deficit = self._deficit(verdict.server_remaining, self._stats().remaining)
            if deficit:
                # All-or-nothing in limits; losing the race to another acquirer
                # only means the deficit was (partly) used up already.
                self._hit(cost=deficit)
        except Exception:
            # observe() is advisory and runs after a response was received: a
            # storage outage must not turn a delivered request into an error.
            # The next acquire() reports the outage.
            logger.warning("pacer: could not resynchronise with the server", exc_info=True)

    async def aobserve(self, state: RateLimitState) -> None:
        """:meth:`observe`, with the storage calls awaited."""
        verdict = self._judge(state)
        if verdict is None:
            return
        if verdict.pause_until is not None:
            if self._hold_until(verdict.pause_until):
                await self._astore_pause_until(verdict.pause_until)
            return
        try:
            deficit = self._deficit(verdict.server_remaining, (await self._astats()).remaining)
            if deficit:
                await self._ahit(cost=deficit)
        except Exception:
            # Advisory, as in observe(): the next aacquire() reports an outage.
            logger.warning("pacer: could not resynchronise with the server", exc_info=True)

    def _pause_request(self, seconds: float) -> float | None:
        """When a pause of ``seconds`` ends (capped at one window); ``None`` if meaningless."""
        try:
            seconds = float(seconds)
        except (TypeError, ValueError):
            return None
        if not math.isfinite(seconds) or seconds <= 0:
            return None
        return time.time() + min(seconds, self.window)

    def _judge(self, state: RateLimitState) -> _Verdict | None:
        """What ``state`` asks of us; ``None`` when it is malformed or stale."""
        now = time.time()
        try:
            remaining = int(state.remaining)
            limit = int(state.limit)
            reset_at = float(state.reset_at)
            observed_at = float(state.observed_at)
        except (TypeError, ValueError, AttributeError):
            return None
        if (
            limit <= 0
            or remaining < 0
            or remaining > limit
            or not math.isfinite(reset_at)
            or not math.isfinite(observed_at)
            or now - observed_at > self.window  # read too long ago to mean anything now
            or reset_at <= now  # that server window is already over
        ):
            return None
        if remaining == 0:
            return _Verdict(pause_until=min(reset_at, now + self.window))
        return _Verdict(server_remaining=remaining)

    def _hold_until(self, until: float) -> bool:
        """Hold this process's acquirers until ``until``; whether that is news to share."""
        with self._state_lock:
            if until <= self._local_pause_until:
                return False
            self._local_pause_until = until
            return True

    def _deficit(self, server_remaining: int, our_remaining: int) -> int:
        tolerance = max(_MIN_DEFICIT_TOLERANCE, self.limit - self._ceiling)
        deficit = our_remaining - server_remaining
        return deficit if deficit > tolerance else 0
