"""Per-key fixed-window rate limiter and the ``X-RateLimit-*`` headers."""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass

__all__ = ["FixedWindowLimiter", "RateDecision"]


@dataclass(frozen=True, slots=True)
class RateDecision:
    allowed: bool
    limit: int
    remaining: int
    #: Unix time (seconds) at which the window ends.
    reset_at: float
    #: Seconds until the window ends, rounded up to a whole second (at least 1).
    retry_after: int

    def headers(self) -> dict[str, str]:
        return {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": _format_epoch(self.reset_at),
        }


def _format_epoch(value: float) -> str:
    # The docs show whole epoch seconds. Windows are aligned to multiples of
    # their length, so a whole-second window always ends on a whole second;
    # only sub-second windows (benchmarks scaling time down) need decimals.
    if value == int(value):
        return str(int(value))
    return f"{value:.3f}"


class FixedWindowLimiter:
    """``limit`` requests per key in windows aligned to multiples of ``window`` seconds."""

    def __init__(self, limit: int, window: float) -> None:
        self.limit = limit
        self.window = window
        self._lock = threading.Lock()
        self._windows: dict[str, tuple[int, int]] = {}

    def hit(self, key: str, now: float | None = None) -> RateDecision:
        """Count one request for ``key`` unless the window is already full."""
        now = time.time() if now is None else now
        index = math.floor(now / self.window)
        with self._lock:
            current, count = self._windows.get(key, (index, 0))
            if current != index:
                count = 0
            allowed = count < self.limit
            if allowed:
                count += 1
            self._windows[key] = (index, count)
        reset_at = (index + 1) * self.window
        if self.window == int(self.window):
            reset_at = float(round(reset_at))
        return RateDecision(
            allowed=allowed,
            limit=self.limit,
            remaining=self.limit - count,
            reset_at=reset_at,
            retry_after=max(1, math.ceil(reset_at - now)),
        )

    def reset(self) -> None:
        with self._lock:
            self._windows.clear()
