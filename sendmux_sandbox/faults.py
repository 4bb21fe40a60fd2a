"""Fault injection: error answers, latency, and misbehaviour after acceptance."""

from __future__ import annotations

import logging
import random
import threading
from dataclasses import dataclass

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from sendmux_sandbox.config import FaultConfig

__all__ = ["DroppedResponse", "FaultDice", "FaultPlan", "quiet_dropped_connections"]

#: What uvicorn logs when an app ends a response short of its Content-Length.
_INCOMPLETE_RESPONSE = "ASGI callable returned without completing response."


@dataclass(frozen=True, slots=True)
class FaultPlan:
    """The faults chosen for one request."""

    #: ``"error_503"``, ``"error_500"``, ``"error_429"`` or ``None``.
    error: str | None
    #: ``"drop_after_accept"``, ``"slow_after_accept"`` or ``None``.
    after_accept: str | None
    latency: float


_NO_FAULTS = FaultPlan(None, None, 0.0)


class FaultDice:
    """Draws a :class:`FaultPlan` per send request; seeded for reproducible runs."""

    def __init__(self, config: FaultConfig) -> None:
        self._lock = threading.Lock()
        self.configure(config)

    def configure(self, config: FaultConfig) -> None:
        with self._lock:
            self.config = config
            self._random = random.Random(config.seed)  # noqa: S311 - dice, not secrets
            # A stream of its own, so item faults leave the per-request draws
            # (and a seeded run's request faults) as they were.
            items_seed = None if config.seed is None else f"items-{config.seed}"
            self._items = random.Random(items_seed)  # noqa: S311

    def roll(self) -> FaultPlan:
        # Two draws per request whatever the outcome, so a seeded run sees
        # the same faults on the same requests.
        with self._lock:
            config = self.config
            if not config.active:
                return _NO_FAULTS
            first, second = self._random.random(), self._random.random()
        error = None
        threshold = 0.0
        for name, rate in (
            ("error_503", config.error_503),
            ("error_500", config.error_500),
            ("error_429", config.error_429),
        ):
            threshold += rate
            if first < threshold:
                error = name
                break
        after = None
        if second < config.drop_after_accept:
            after = "drop_after_accept"
        elif second < config.drop_after_accept + config.slow_after_accept:
            after = "slow_after_accept"
        return FaultPlan(error, after, config.latency)

    def failing_items(self, count: int) -> list[bool]:
        """For each of ``count`` messages of a batch, whether it is refused (``item_error``)."""
        with self._lock:
            rate = self.config.item_error
            if not rate:
                return [False] * count
            return [self._items.random() < rate for _ in range(count)]


class DroppedResponse(Response):
    """Announces the full body, sends half of it, and lets the server close the connection.

    The client sees a transport error (an incomplete body) after the
    messages were accepted: the case an Idempotency-Key exists for.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        await send(
            {
                "type": "http.response.body",
                "body": self.body[: len(self.body) // 2],
                "more_body": True,
            }
        )


class _DropFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg != _INCOMPLETE_RESPONSE


_filter_installed = False


def quiet_dropped_connections() -> None:
    """Keep uvicorn from logging an error for every connection dropped on purpose."""
    global _filter_installed
    if not _filter_installed:
        logging.getLogger("uvicorn.error").addFilter(_DropFilter())
        _filter_installed = True
