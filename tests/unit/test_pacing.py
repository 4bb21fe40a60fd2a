"""InProcessPacer: the ceiling holds in any window, waits are driven by the server's state."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import redis

from sendmux_dispatch.pacing import (
    InProcessPacer,
    Pacer,
    RateLimitState,
    RedisPacer,
    key_fingerprint,
)

# Timestamps are taken when acquire() returns, a little after the pacer granted
# the slot (thread switches, GIL). Two grants exactly one window apart can
# therefore be recorded slightly less than a window apart; windows are
# checked this much shorter so that measurement jitter is not read as overshoot.
JITTER = 0.02


def max_in_window(stamps: list[float], length: float) -> int:
    """Most timestamps inside any half-open window ``[t, t + length)``."""
    stamps = sorted(stamps)
    best, lo = 0, 0
    for hi, t in enumerate(stamps):
        while t - stamps[lo] >= length:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def assert_paced(stamps: list[float], *, ceiling: int, window: float) -> None:
    assert max_in_window(stamps, window - JITTER) <= ceiling
    # Throughput over whole windows from the first grant: a moving window
    # grants `ceiling` per window, so 3 windows should see ~3 * ceiling.
    t0 = min(stamps)
    granted = sum(1 for t in stamps if t < t0 + 3 * window)
    assert granted >= 0.9 * 3 * ceiling, f"only {granted} of {3 * ceiling} slots used"


def state(remaining: int, reset_in: float, *, limit: int = 50) -> RateLimitState:
    now = time.time()
    return RateLimitState(
        limit=limit, remaining=remaining, reset_at=now + reset_in, observed_at=now
    )


def test_satisfies_the_pacer_protocol() -> None:
    assert isinstance(InProcessPacer(), Pacer)


def test_effective_ceiling_applies_headroom() -> None:
    assert InProcessPacer().ceiling == 1764  # floor(1800 * 0.98)
    assert InProcessPacer(limit=30, window=1.0, headroom=0.1).ceiling == 27
    assert InProcessPacer(limit=50, window=0.5, headroom=0).ceiling == 50


@pytest.mark.parametrize(
    "kwargs",
    [
        {"limit": 0},
        {"limit": 1.5},
        {"window": 0},
        {"window": float("nan")},
        {"headroom": 1.0},
        {"headroom": -0.1},
        {"limit": 10, "headroom": 0.95},
    ],
)
def test_rejects_bad_configuration(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - several messages, one type
        InProcessPacer(**kwargs)  # type: ignore[arg-type]


def test_ceiling_holds_across_threads() -> None:
    ceiling, window = 50, 0.5
    pacer = InProcessPacer(limit=ceiling, window=window, headroom=0)
    stamps: list[float] = []
    lock = threading.Lock()
    deadline = time.time() + 3 * window + 0.2

    def hammer() -> None:
        while time.time() < deadline:
            pacer.acquire()
            with lock:
                stamps.append(time.time())

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert_paced(stamps, ceiling=ceiling, window=window)


async def test_ceiling_holds_across_coroutines() -> None:
    ceiling, window = 50, 0.5
    pacer = InProcessPacer(limit=ceiling, window=window, headroom=0)
    stamps: list[float] = []
    deadline = time.time() + 3 * window + 0.2

    async def hammer() -> None:
        while time.time() < deadline:
            await pacer.aacquire()
            stamps.append(time.time())

    await asyncio.wait_for(asyncio.gather(*(hammer() for _ in range(40))), timeout=10)
    assert_paced(stamps, ceiling=ceiling, window=window)


async def test_waiting_does_not_block_the_event_loop() -> None:
    pacer = InProcessPacer(limit=2, window=0.4, headroom=0)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    for _ in range(3):  # the third waits ~0.4 s
        await pacer.aacquire()
    task.cancel()
    assert ticks >= 10


def test_threads_and_coroutines_share_one_count() -> None:
    pacer = InProcessPacer(limit=4, window=0.5, headroom=0)
    for _ in range(2):
        pacer.acquire()

    async def two_more() -> float:
        start = time.monotonic()
        for _ in range(3):
            await pacer.aacquire()
        return time.monotonic() - start

    # 2 sync + 3 async = 5 > 4: the fifth waits for the window.
    assert asyncio.run(two_more()) >= 0.4


def test_observe_exhausted_holds_until_reset() -> None:
    pacer = InProcessPacer(limit=50, window=1.0, headroom=0)
    pacer.observe(state(remaining=0, reset_in=0.3))
    start = time.monotonic()
    pacer.acquire()
    assert 0.25 <= time.monotonic() - start < 0.8


async def test_observe_exhausted_holds_async_acquirers_too() -> None:
    pacer = InProcessPacer(limit=50, window=1.0, headroom=0)
    pacer.observe(state(remaining=0, reset_in=0.3))
    start = time.monotonic()
    await pacer.aacquire()
    assert 0.25 <= time.monotonic() - start < 0.8


async def test_aobserve_and_apause_hold_async_acquirers() -> None:
    pacer = InProcessPacer(limit=50, window=1.0, headroom=0)
    await pacer.aobserve(state(remaining=0, reset_in=0.3))
    start = time.monotonic()
    await pacer.aacquire()
    assert 0.25 <= time.monotonic() - start < 0.8
    await pacer.apause(0.3)
    start = time.monotonic()
    await pacer.aacquire()
    assert 0.25 <= time.monotonic() - start < 0.8


async def test_aobserve_takes_out_requests_made_elsewhere() -> None:
    pacer = InProcessPacer(limit=50, window=0.5, headroom=0)
    await pacer.aobserve(state(remaining=5, reset_in=0.5))
    start = time.monotonic()
    for _ in range(5):
        await pacer.aacquire()
    assert time.monotonic() - start < 0.1
    await pacer.aacquire()  # the sixth waits for the window
    assert time.monotonic() - start >= 0.4


async def test_acquire_async_is_still_the_old_name_of_aacquire() -> None:
    pacer = InProcessPacer(limit=1, window=0.3, headroom=0)
    await pacer.acquire_async()
    start = time.monotonic()
    await pacer.aacquire()  # the same count: the second waits for the window
    assert time.monotonic() - start >= 0.2


def test_pause_holds_acquirers() -> None:
    pacer = InProcessPacer(limit=50, window=1.0, headroom=0)
    pacer.pause(0.3)
    start = time.monotonic()
    pacer.acquire()
    assert 0.25 <= time.monotonic() - start < 0.8


def test_a_pause_never_exceeds_one_window() -> None:
    pacer = InProcessPacer(limit=50, window=0.3, headroom=0)
    pacer.observe(state(remaining=0, reset_in=3600))  # skewed or bogus reset
    start = time.monotonic()
    pacer.acquire()
    held = time.monotonic() - start
    assert 0.2 <= held < 0.6  # one window (0.3 s), not an hour
    pacer.pause(3600)
    start = time.monotonic()
    pacer.acquire()
    assert 0.2 <= time.monotonic() - start < 0.6


@pytest.mark.parametrize(
    "bad",
    [
        RateLimitState(limit=50, remaining=0, reset_at=time.time() - 5, observed_at=time.time()),
        RateLimitState(limit=50, remaining=-1, reset_at=time.time() + 5, observed_at=time.time()),
        RateLimitState(limit=0, remaining=0, reset_at=time.time() + 5, observed_at=time.time()),
        RateLimitState(limit=50, remaining=0, reset_at=float("nan"), observed_at=time.time()),
        # read long ago: whatever it said is over
        RateLimitState(limit=50, remaining=0, reset_at=time.time() + 5, observed_at=0.0),
    ],
)
def test_stale_or_malformed_state_is_ignored(bad: RateLimitState) -> None:
    pacer = InProcessPacer(limit=50, window=1.0, headroom=0)
    pacer.observe(bad)
    start = time.monotonic()
    pacer.acquire()
    assert time.monotonic() - start < 0.1


@pytest.mark.parametrize("seconds", [0, -1, float("nan"), float("inf")])
def test_meaningless_pause_is_ignored(seconds: float) -> None:
    # A finite pause is capped at one window (test_a_pause_never_exceeds_one_window).
    pacer = InProcessPacer(limit=50, window=0.5, headroom=0)
    pacer.pause(seconds)
    start = time.monotonic()
    pacer.acquire()
    assert time.monotonic() - start < 0.1


def test_observe_takes_out_requests_made_elsewhere() -> None:
    # The server says 5 left while we think 50 are: someone else uses the key.
    pacer = InProcessPacer(limit=50, window=0.5, headroom=0)
    pacer.observe(state(remaining=5, reset_in=0.5))
    start = time.monotonic()
    for _ in range(5):
        pacer.acquire()
    assert time.monotonic() - start < 0.1
    pacer.acquire()  # the sixth waits for the window
    assert time.monotonic() - start >= 0.4


def test_observe_with_plenty_remaining_changes_nothing() -> None:
    pacer = InProcessPacer(limit=20, window=0.5, headroom=0)
    pacer.observe(state(remaining=20, reset_in=0.5, limit=20))
    start = time.monotonic()
    for _ in range(20):
        pacer.acquire()
    assert time.monotonic() - start < 0.1


def test_key_fingerprint_is_short_stable_and_not_the_key() -> None:
    key = "smx_live_abcdefghijklmnopqrstuvwx"
    fp = key_fingerprint(key)
    assert fp == key_fingerprint(key)
    assert fp != key_fingerprint(key + "y")
    assert len(fp) == 16
    assert all(c in "0123456789abcdef" for c in fp)
    assert "smx" not in fp
    with pytest.raises(ValueError, match="empty"):
        key_fingerprint("")


def test_redis_pacer_validates_without_connecting() -> None:
    # Construction does not talk to Redis, so these need no server.
    url = "redis://127.0.0.1:1/0"
    with pytest.raises(ValueError, match="whole number of seconds"):
        RedisPacer(url, key_id="k", window=0.5)
    with pytest.raises(ValueError, match="key_fingerprint"):
        RedisPacer(url, key_id="smx_live_abcdefghijklmnopqrstuvwx")
    with pytest.raises(ValueError, match="key_id"):
        RedisPacer(url, key_id="has space")
    with pytest.raises(ValueError, match="key_id"):
        RedisPacer(url, key_id="")


def test_redis_pacer_repr_hides_the_password() -> None:
    pacer = RedisPacer("redis://:s3cret@127.0.0.1:6379/15", key_id=key_fingerprint("smx_x"))
    assert "s3cret" not in repr(pacer)
    assert "s3cret" not in str(pacer)
    assert "127.0.0.1:6379/15" in repr(pacer)
    assert isinstance(pacer, Pacer)
    pacer.close()


def test_redis_outage_fails_acquire_but_not_observe() -> None:
    # Nothing listens on port 1: the connection is refused at once.
    pacer = RedisPacer("redis://127.0.0.1:1/0", key_id="outage", limit=50, window=1, headroom=0)
    pacer.observe(state(remaining=5, reset_in=0.5))  # advisory: logs, does not raise
    pacer.pause(0.01)
    with pytest.raises(redis.ConnectionError):
        pacer.acquire()
    pacer.close()


async def test_redis_outage_fails_aacquire_but_not_aobserve() -> None:
    pacer = RedisPacer("redis://127.0.0.1:1/0", key_id="outage", limit=50, window=1, headroom=0)
    await pacer.aobserve(state(remaining=5, reset_in=0.5))  # advisory: logs, does not raise
    await pacer.aobserve(state(remaining=0, reset_in=0.01))
    await pacer.apause(0.02)
    with pytest.raises(redis.ConnectionError):
        await pacer.aacquire()
    await pacer.aclose()
    pacer.close()
