"""The pacer protocol, and the rate-limit state read from response headers.

The Sending API allows 1,800 requests per 60 s per key and reports where a key
stands on every response (``X-RateLimit-Limit``, ``-Remaining``, ``-Reset``).
The client hands that state to whatever pacer it was given, so a pacer can
resynchronise with the server instead of trusting only its own count.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

__all__ = ["Pacer", "RateLimitState"]


@dataclass(frozen=True, slots=True)
class RateLimitState:
    """What the server said about a key's budget on one response."""

    limit: int
    remaining: int
    #: Unix time (seconds) at which the current window resets.
    reset_at: float
    #: Local ``time.time()`` when the response was read.
    observed_at: float

    @classmethod
    def from_headers(cls, headers: Mapping[str, str]) -> RateLimitState | None:
        """Parse the ``X-RateLimit-*`` headers; ``None`` when they are absent or malformed."""
        try:
            limit = int(headers["x-ratelimit-limit"])
            remaining = int(headers["x-ratelimit-remaining"])
            reset_at = float(headers["x-ratelimit-reset"])
        except (KeyError, ValueError):
            return None
        return cls(limit=limit, remaining=remaining, reset_at=reset_at, observed_at=time.time())

    @property
    def seconds_to_reset(self) -> float:
        return max(0.0, self.reset_at - time.time())


@runtime_checkable
class Pacer(Protocol):
    """Keeps one API key under its request ceiling.

    Before every HTTP attempt to the Sending API, retries included,
    :class:`~sendmux_dispatch.SendmuxClient` calls :meth:`acquire`; after every
    response it calls :meth:`observe` with the rate-limit state, and after a
    429 with a ``Retry-After`` it calls :meth:`pause` (capped at the retry
    policy's ``max_retry_after``). :class:`~sendmux_dispatch.AsyncSendmuxClient`
    awaits the twins instead: :meth:`aacquire`, :meth:`aobserve`, :meth:`apause`.
    ``observe`` and ``pause`` are advisory: a pacer should log a storage outage
    rather than raise, since the response has been received by then.
    """

    def acquire(self) -> None: ...

    async def aacquire(self) -> None: ...

    def observe(self, state: RateLimitState) -> None: ...

    async def aobserve(self, state: RateLimitState) -> None: ...

    def pause(self, seconds: float) -> None: ...

    async def apause(self, seconds: float) -> None: ...
