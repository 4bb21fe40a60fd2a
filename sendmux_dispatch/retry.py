"""When to send a failed request again, and how long to wait first.

One :class:`RetryPolicy` serves three callers: the client's in-process retry
loop (run by tenacity), the countdown a Celery task retries with, and the
advice an Airflow task logs. The policy is ours; tenacity only runs the loop.

>>> from sendmux_dispatch.errors import ServiceUnavailableError
>>> policy = RetryPolicy(initial_delay=1.0, jitter=0.0)
>>> busy = ServiceUnavailableError("busy", status=503, retry_after=2.0)
>>> policy.should_retry(busy), policy.next_delay(1, busy), policy.next_delay(3)
(True, 2.0, 4.0)
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import tenacity

from sendmux_dispatch.errors import InvalidMessageError, SendmuxError
from sendmux_dispatch.models.api_limits import IDEMPOTENCY_TTL_SECONDS

__all__ = ["LONG_WAIT_SECONDS", "RetryPolicy"]

#: Waits at least this long are logged on the ``sendmux_dispatch`` loggers
#: (retry sleeps, resends, pacer waits), so a silent terminal is never a wait.
LONG_WAIT_SECONDS = 3.0

#: Statuses that no server hint can make retryable: the same request would
#: fail the same way (bad key, missing permission, no credits, invalid body).
_NEVER_RETRY_STATUSES = frozenset({400, 401, 402, 403, 404, 413, 422})

#: ``before_sleep(delay, error)``: told each wait before it happens.
BeforeSleep = Callable[[float, "BaseException | None"], None]


def _usable_retry_after(error: BaseException | None) -> float | None:
    # A negative or non-finite hint is a broken header, not "retry at once":
    # treated as absent, so the backoff applies (five instant retries otherwise).
    retry_after = getattr(error, "retry_after", None)
    if isinstance(retry_after, bool) or not isinstance(retry_after, (int, float)):
        return None
    if not math.isfinite(retry_after) or retry_after < 0:
        return None
    return float(retry_after)


def _failure(state: tenacity.RetryCallState) -> BaseException | None:
    return state.outcome.exception() if state.outcome is not None else None


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """Retry retryable errors with Retry-After first, else exponential backoff and jitter.

    * ``max_attempts``: attempts in all, the first one included (``1`` = no retries).
    * ``initial_delay``, ``multiplier``, ``max_delay``: the backoff before retry
      *n* is ``initial_delay * multiplier ** (n - 1)`` seconds, capped at ``max_delay``.
    * ``jitter``: a *fraction* (0 to 1) of that delay taken off at random, so
      the wait is uniform in ``[delay * (1 - jitter), delay]``. Spreads out
      many workers that failed together without ever exceeding ``max_delay``.
    * ``deadline``: seconds from the first attempt after which no retry
      starts (a retry whose wait would end past it is not made). It must stay
      under 24 h, the server's idempotency window: a retry after the window
      could deliver twice.
    * ``max_retry_after``: a server's ``Retry-After`` is honoured up to this
      many seconds; an error asking for a longer wait is not retried at all
      (:meth:`waits_too_long`): the client raises it at once, saying when to
      retry, instead of hammering a server that asked for an hour's rest. A
      negative or unreadable ``Retry-After`` counts as absent (backoff).
    * ``sleep`` / ``async_sleep``: how the client waits between attempts;
      tests inject a no-op and read the delays from ``client.stats``.
    """

    max_attempts: int = 6
    initial_delay: float = 0.5
    max_delay: float = 30.0
    multiplier: float = 2.0
    jitter: float = 0.5
    deadline: float = 600.0
    max_retry_after: float = 120.0
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False, compare=False)
    async_sleep: Callable[[float], Awaitable[None]] = field(
        default=asyncio.sleep, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int):
            raise TypeError("max_attempts must be an int")
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {self.max_attempts}")
        for name in ("initial_delay", "max_delay", "max_retry_after"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if not math.isfinite(self.multiplier) or self.multiplier < 1:
            raise ValueError(f"multiplier must be >= 1, got {self.multiplier!r}")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"jitter is a fraction of the delay, 0 to 1; got {self.jitter!r}")
        if not 0 < self.deadline < IDEMPOTENCY_TTL_SECONDS:
            raise ValueError(
                f"deadline must be > 0 and below the 24 h idempotency window "
                f"({IDEMPOTENCY_TTL_SECONDS} s), got {self.deadline!r}: a retry after the "
                "window could deliver a message twice"
            )

    @classmethod
    def none(cls) -> RetryPolicy:
        """A policy that never retries (one attempt)."""
        return cls(max_attempts=1)

    def should_retry(self, error: BaseException) -> bool:
        """True when ``error`` is ours and the server (or the documented default) says retry.

        The caller must only ask for idempotent requests: the client's are
        (GETs, and every POST carries an Idempotency-Key).
        """
        if not isinstance(error, SendmuxError) or isinstance(error, InvalidMessageError):
            return False
        if error.status in _NEVER_RETRY_STATUSES:
            return False
        if self.waits_too_long(error):
            return False
        return bool(error.retryable)

    def waits_too_long(self, error: BaseException) -> bool:
        """True when ``error`` carries a Retry-After beyond ``max_retry_after``.

        Such an error is not retried: waiting that long inside one call would
        hold a worker (and a terminal) silently for minutes or hours.
        """
        retry_after = _usable_retry_after(error)
        return retry_after is not None and retry_after > self.max_retry_after

    def too_long_error(self, error: SendmuxError, *, now: float | None = None) -> SendmuxError:
        """``error`` again (same class, status, code), its message saying when to retry.

        For an error :meth:`waits_too_long` flagged; ``now`` (Unix seconds)
        is for tests.
        """
        retry_after = _usable_retry_after(error) or 0.0
        when = datetime.fromtimestamp(
            (time.time() if now is None else now) + retry_after, tz=timezone.utc
        )
        at = (when + timedelta(microseconds=-when.microsecond)).isoformat().replace("+00:00", "Z")
        message = (
            f"{error.message} The server asks to retry in {retry_after:.0f} s (at {at}), beyond "
            f"this client's max_retry_after of {self.max_retry_after:g} s, so it was not "
            f"retried: try again after {at}, or raise RetryPolicy.max_retry_after."
        )
        return type(error)(
            message,
            status=error.status,
            code=error.code,
            param=error.param,
            doc_url=error.doc_url,
            retryable=error.retryable,
            request_id=error.request_id,
            errors=error.errors,
            retry_after=error.retry_after,
        )

    def next_delay(self, attempt: int, error: BaseException | None = None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based) before the next.

        The error's ``retry_after`` (the server's Retry-After) wins, capped at
        ``max_retry_after``; otherwise exponential backoff with jitter, capped
        at ``max_delay``. A Celery task can use this as its retry countdown.
        """
        retry_after = _usable_retry_after(error)
        if retry_after is not None:
            return min(retry_after, self.max_retry_after)
        exponent = max(attempt, 1) - 1
        try:
            backoff = self.initial_delay * self.multiplier**exponent
        except OverflowError:
            backoff = math.inf
        delay = min(backoff, self.max_delay)
        if self.jitter:
            delay *= 1.0 - self.jitter * random.random()  # noqa: S311 (not cryptographic)
        return delay

    def _tenacity_options(self, before_sleep: BeforeSleep | None) -> dict[str, Any]:
        def wait(state: tenacity.RetryCallState) -> float:
            return self.next_delay(state.attempt_number, _failure(state))

        def on_sleep(state: tenacity.RetryCallState) -> None:
            if before_sleep is not None:
                before_sleep(state.upcoming_sleep, _failure(state))

        return {
            # stop_before_delay looks at the coming wait, so no retry starts
            # (or sleeps) past the deadline.
            "stop": tenacity.stop_after_attempt(self.max_attempts)
            | tenacity.stop_before_delay(self.deadline),
            "wait": wait,
            "retry": tenacity.retry_if_exception(self.should_retry),
            "before_sleep": on_sleep,
            # The caller gets our exception (with status, request_id, ...), not RetryError.
            "reraise": True,
        }

    def retrying(self, *, before_sleep: BeforeSleep | None = None) -> tenacity.Retrying:
        """A tenacity ``Retrying`` driven by this policy.

        ``before_sleep(delay, error)`` is called before each wait with the
        delay chosen and the error that caused the retry.
        """
        return tenacity.Retrying(sleep=self.sleep, **self._tenacity_options(before_sleep))

    def async_retrying(self, *, before_sleep: BeforeSleep | None = None) -> tenacity.AsyncRetrying:
        """The asyncio twin of :meth:`retrying`, sleeping with ``async_sleep``."""
        return tenacity.AsyncRetrying(
            sleep=self.async_sleep, **self._tenacity_options(before_sleep)
        )
