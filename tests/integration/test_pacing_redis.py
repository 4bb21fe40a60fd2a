"""RedisPacer against a real Redis: one ceiling for every thread, coroutine and process."""

from __future__ import annotations

import asyncio
import multiprocessing
import multiprocessing.queues
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
import redis

from sendmux_dispatch.pacing import Pacer, RateLimitState, RedisPacer, key_fingerprint

pytestmark = pytest.mark.redis

# See tests/unit/test_pacing.py: timestamps are taken after acquire() returns,
# so windows are checked slightly shorter than the pacer's window. Redis adds
# a round trip (and process scheduling) between grant and record.
JITTER = 0.03
PREFIX = "sendmux-test:pacer"


def max_in_window(stamps: list[float], length: float) -> int:
    stamps = sorted(stamps)
    best, lo = 0, 0
    for hi, t in enumerate(stamps):
        while t - stamps[lo] >= length:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


@pytest.fixture
def key_id(redis_url: str) -> Iterator[str]:
    """A fresh key id per test; its Redis keys are removed afterwards."""
    kid = f"t{uuid.uuid4().hex[:12]}"
    yield kid
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=f"{PREFIX}:{kid}*"))
    if keys:
        client.delete(*keys)
    client.close()


def make(redis_url: str, key_id: str, **kwargs: float) -> RedisPacer:
    return RedisPacer(redis_url, key_id=key_id, prefix=PREFIX, **kwargs)  # type: ignore[arg-type]


def test_ceiling_holds_across_threads(redis_url: str, key_id: str) -> None:
    ceiling, window = 20, 1.0
    pacer = make(redis_url, key_id, limit=ceiling, window=window, headroom=0)
    stamps: list[float] = []
    lock = threading.Lock()
    deadline = time.time() + 2 * window + 0.2

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
    pacer.close()
    assert max_in_window(stamps, window - JITTER) <= ceiling
    t0 = min(stamps)
    assert sum(1 for t in stamps if t < t0 + 2 * window) >= 0.9 * 2 * ceiling


async def test_ceiling_holds_across_coroutines(redis_url: str, key_id: str) -> None:
    ceiling, window = 20, 1.0
    pacer = make(redis_url, key_id, limit=ceiling, window=window, headroom=0)
    stamps: list[float] = []
    deadline = time.time() + 2 * window + 0.2

    async def hammer() -> None:
        while time.time() < deadline:
            await pacer.aacquire()
            stamps.append(time.time())

    await asyncio.wait_for(asyncio.gather(*(hammer() for _ in range(20))), timeout=10)
    await pacer.aclose()
    pacer.close()
    assert max_in_window(stamps, window - JITTER) <= ceiling
    t0 = min(stamps)
    assert sum(1 for t in stamps if t < t0 + 2 * window) >= 0.9 * 2 * ceiling


async def test_pacer_built_from_a_client_works_async(redis_url: str, key_id: str) -> None:
    client = redis.Redis.from_url(redis_url)
    pacer = RedisPacer(client, key_id=key_id, prefix=PREFIX, limit=3, window=1, headroom=0)
    assert isinstance(pacer, Pacer)
    start = time.monotonic()
    for _ in range(4):  # the fourth waits for the window
        await pacer.aacquire()
    assert time.monotonic() - start >= 0.9
    pacer.close()  # a client passed in stays open
    assert client.ping()
    client.close()


def _worker(
    url: str,
    key_id: str,
    start_at: float,
    stop_at: float,
    out: multiprocessing.queues.Queue[list[float]],
) -> None:
    pacer = RedisPacer(url, key_id=key_id, prefix=PREFIX, limit=20, window=1, headroom=0)
    stamps: list[float] = []
    time.sleep(max(0.0, start_at - time.time()))
    while time.time() < stop_at:
        pacer.acquire()
        stamps.append(time.time())
    pacer.close()
    out.put(stamps)


def test_ceiling_holds_across_processes(redis_url: str, key_id: str) -> None:
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    # Spawned interpreters take a while to import; start both at the same moment.
    start_at = time.time() + 2.0
    stop_at = start_at + 2.2
    procs = [
        ctx.Process(target=_worker, args=(redis_url, key_id, start_at, stop_at, out))
        for _ in range(2)
    ]
    for p in procs:
        p.start()
    results = [out.get(timeout=20) for _ in procs]
    for p in procs:
        p.join(timeout=10)
        assert p.exitcode == 0
    assert all(results), "each process should have been granted slots"
    stamps = [t for r in results for t in r]
    assert max_in_window(stamps, 1.0 - JITTER) <= 20
    t0 = min(stamps)
    assert sum(1 for t in stamps if t < t0 + 2.0) >= 0.9 * 2 * 20


def test_observed_exhaustion_holds_every_process(redis_url: str, key_id: str) -> None:
    # Two pacers on one key id stand in for two processes: the one that read
    # the header shares the pause through Redis, the other honours it.
    seen_it = make(redis_url, key_id, limit=50, window=1, headroom=0)
    other = make(redis_url, key_id, limit=50, window=1, headroom=0)
    now = time.time()
    seen_it.observe(RateLimitState(limit=50, remaining=0, reset_at=now + 0.3, observed_at=now))
    start = time.monotonic()
    other.acquire()
    assert 0.25 <= time.monotonic() - start < 0.8
    seen_it.close()
    other.close()


async def test_pause_inside_an_event_loop_is_shared(redis_url: str, key_id: str) -> None:
    # Inside a loop the awaited twin writes the pause, without blocking the loop.
    a = make(redis_url, key_id, limit=50, window=1, headroom=0)
    b = make(redis_url, key_id, limit=50, window=1, headroom=0)
    await a.apause(0.3)
    start = time.monotonic()
    await asyncio.sleep(0.02)  # let the write land
    await b.aacquire()
    assert 0.25 <= time.monotonic() - start < 0.8
    for p in (a, b):
        await p.aclose()
        p.close()


async def test_aobserve_shares_exhaustion_before_it_returns(redis_url: str, key_id: str) -> None:
    # No background task: once aobserve() returns, another process (here a
    # second pacer, blocking) already sees the pause.
    seen_it = make(redis_url, key_id, limit=50, window=1, headroom=0)
    other = make(redis_url, key_id, limit=50, window=1, headroom=0)
    now = time.time()
    await seen_it.aobserve(
        RateLimitState(limit=50, remaining=0, reset_at=now + 0.3, observed_at=now)
    )
    assert asyncio.all_tasks() == {asyncio.current_task()}
    start = time.monotonic()
    await asyncio.to_thread(other.acquire)
    assert 0.25 <= time.monotonic() - start < 0.8
    await seen_it.aclose()
    for p in (seen_it, other):
        p.close()


async def test_aobserve_takes_out_requests_made_elsewhere(redis_url: str, key_id: str) -> None:
    seen_it = make(redis_url, key_id, limit=50, window=1, headroom=0)
    other = make(redis_url, key_id, limit=50, window=1, headroom=0)
    now = time.time()
    await seen_it.aobserve(
        RateLimitState(limit=50, remaining=5, reset_at=now + 1.0, observed_at=now)
    )
    start = time.monotonic()
    for _ in range(5):
        await other.aacquire()
    assert time.monotonic() - start < 0.5
    await other.aacquire()  # the sixth waits for the window
    assert time.monotonic() - start >= 0.8
    for p in (seen_it, other):
        await p.aclose()
        p.close()


def test_redis_never_sees_the_api_key(redis_url: str) -> None:
    api_key = "smx_live_" + uuid.uuid4().hex
    kid = key_fingerprint(api_key)
    url = redis_url.replace("redis://", "redis://:s3cret@", 1) if "@" not in redis_url else None
    if url is not None:
        shown = RedisPacer(url, key_id=kid, prefix=PREFIX)
        assert "s3cret" not in repr(shown)
        assert "s3cret" not in str(shown)
        shown.close()
    pacer = make(redis_url, kid, limit=50, window=1, headroom=0)
    pacer.acquire()
    now = time.time()
    pacer.observe(RateLimitState(limit=50, remaining=0, reset_at=now + 0.05, observed_at=now))
    pacer.pause(0.05)
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{PREFIX}:*"))
        mine = [k for k in keys if kid.encode() in k]
        assert len(mine) == 2  # the moving-window list and the pause
        for k in keys:
            assert api_key.encode() not in k
            assert b"smx_" not in k
        for k in mine:
            dump = client.dump(k) or b""
            assert api_key.encode() not in dump
        client.delete(*mine)
    finally:
        client.close()
        pacer.close()
