"""InProcessPacer: the moving window counted in memory, for one process."""

from __future__ import annotations

from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter
from limits.util import WindowStats

from sendmux_dispatch.models.api_limits import RATE_WINDOW_SECONDS, SENDING_REQUESTS_PER_WINDOW
from sendmux_dispatch.pacing._algorithm import BasePacer, make_item

__all__ = ["InProcessPacer"]


class InProcessPacer(BasePacer):
    """A moving-window pacer shared by the threads and coroutines of one process.

    ``limit`` requests per ``window`` seconds, minus ``headroom`` (a fraction).
    ``window`` may be fractional: ``limits``' in-memory storage does plain
    float arithmetic on ``time.time()``, which benchmarks and tests use to
    scale time down.
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
        self._item = make_item(self._ceiling, self.window, "sendmux-pacer")

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
