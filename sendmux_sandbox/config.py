"""SandboxConfig, FaultConfig and the default API keys."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sendmux_dispatch.models.api_limits import (
    IDEMPOTENCY_TTL_SECONDS,
    MANAGEMENT_REQUESTS_PER_WINDOW,
    MAX_REQUEST_BYTES,
    RATE_WINDOW_SECONDS,
    SENDING_REQUESTS_PER_WINDOW,
)

__all__ = [
    "ALL_PERMISSIONS",
    "ANALYTICS_READ",
    "BILLING_READ",
    "DEFAULT_API_KEY",
    "EMAIL_SEND",
    "LOGS_READ",
    "SEND_ONLY_API_KEY",
    "FaultConfig",
    "SandboxConfig",
    "default_keys",
]

EMAIL_SEND = "email.send"
LOGS_READ = "logs.read"
ANALYTICS_READ = "analytics.read"
BILLING_READ = "billing.read"
ALL_PERMISSIONS: frozenset[str] = frozenset({EMAIL_SEND, LOGS_READ, ANALYTICS_READ, BILLING_READ})

#: A root key with every permission the sandbox knows.
DEFAULT_API_KEY = "smx_root_sandbox_0000000000000000"
#: A send-only key (``email.send`` alone): management calls with it answer 403.
SEND_ONLY_API_KEY = "smx_mbx_sandbox_sendonly_000000"


def default_keys() -> dict[str, frozenset[str]]:
    """The two keys a sandbox accepts unless told otherwise."""
    return {DEFAULT_API_KEY: ALL_PERMISSIONS, SEND_ONLY_API_KEY: frozenset({EMAIL_SEND})}


def _check_rate(name: str, value: float) -> None:
    if not (0.0 <= value <= 1.0) or math.isnan(value):
        raise ValueError(f"{name} must be a probability between 0 and 1, got {value!r}")


@dataclass(frozen=True)
class FaultConfig:
    """Faults injected into POST /emails/send and /emails/send/batch.

    The ``error_*`` rates are probabilities checked before anything is
    accepted (nothing is delivered); ``drop_after_accept`` and
    ``slow_after_accept`` are probabilities checked after the messages were
    accepted and delivered. The error rates together, and the two after-accept
    rates together, must not exceed 1. ``item_error`` is checked for each
    valid message of a batch: the message is refused with a retryable
    ``service_unavailable`` in its result item, and the others are accepted
    (a partially failed batch, which only the items' own resend recovers).
    """

    error_503: float = 0.0
    error_500: float = 0.0
    error_429: float = 0.0
    #: The ``Retry-After`` seconds sent with an injected 503 or 429; may be
    #: negative, to see how a client takes a broken header.
    retry_after: int = 1
    #: Seconds added to every send request before it is processed.
    latency: float = 0.0
    drop_after_accept: float = 0.0
    slow_after_accept: float = 0.0
    #: How long a slow response is held back; make it longer than the client's timeout.
    slow_seconds: float = 30.0
    #: Per message of a batch: refused with a retryable error, not accepted.
    item_error: float = 0.0
    #: Seed of the fault dice; ``None`` draws a fresh seed.
    seed: int | None = None

    def __post_init__(self) -> None:
        for name in (
            "error_503",
            "error_500",
            "error_429",
            "drop_after_accept",
            "slow_after_accept",
            "item_error",
        ):
            _check_rate(name, getattr(self, name))
        if self.error_503 + self.error_500 + self.error_429 > 1.0 + 1e-9:
            raise ValueError("error_503 + error_500 + error_429 must not exceed 1")
        if self.drop_after_accept + self.slow_after_accept > 1.0 + 1e-9:
            raise ValueError("drop_after_accept + slow_after_accept must not exceed 1")
        if self.latency < 0 or self.slow_seconds < 0:
            raise ValueError("latency and slow_seconds must not be negative")

    @property
    def active(self) -> bool:
        return any(
            (
                self.error_503,
                self.error_500,
                self.error_429,
                self.latency,
                self.drop_after_accept,
                self.slow_after_accept,
                self.item_error,
            )
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FaultConfig:
        """Build from JSON; unknown names raise ``ValueError``, numbers are coerced."""
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ValueError(f"unknown fault settings: {', '.join(unknown)}")
        kwargs: dict[str, Any] = {}
        for name, value in data.items():
            if name == "seed":
                if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                    raise ValueError("seed must be an integer or null")
                kwargs[name] = value
            elif name == "retry_after":
                if isinstance(value, bool) or not isinstance(value, int):
                    raise ValueError("retry_after must be an integer number of seconds")
                kwargs[name] = value
            else:
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise ValueError(f"{name} must be a number")
                kwargs[name] = float(value)
        return cls(**kwargs)


@dataclass(frozen=True)
class SandboxConfig:
    """How a sandbox behaves. Times are in seconds; ``None`` limits disable rate limiting."""

    #: API key -> its permissions.
    keys: Mapping[str, frozenset[str]] = field(default_factory=default_keys)
    #: The spec says 200 for a send; the product docs say 201. Pick either.
    send_status: int = 200
    rate_limit: int | None = SENDING_REQUESTS_PER_WINDOW
    rate_window: float = RATE_WINDOW_SECONDS
    management_rate_limit: int | None = MANAGEMENT_REQUESTS_PER_WINDOW
    management_rate_window: float = RATE_WINDOW_SECONDS
    #: How long an accepted message stays ``pending`` before its final status.
    delivery_delay: float = 0.5
    idempotency_ttl: float = float(IDEMPOTENCY_TTL_SECONDS)
    max_request_bytes: int = MAX_REQUEST_BYTES
    faults: FaultConfig = field(default_factory=FaultConfig)

    def __post_init__(self) -> None:
        if not self.keys:
            raise ValueError("a sandbox needs at least one API key")
        if self.send_status not in (200, 201, 202):
            raise ValueError("send_status must be 200, 201 or 202")
        for limit, window in (
            (self.rate_limit, self.rate_window),
            (self.management_rate_limit, self.management_rate_window),
        ):
            if limit is not None and limit < 1:
                raise ValueError("rate limits must be at least 1 (or None to disable)")
            if window <= 0:
                raise ValueError("rate windows must be positive")
        if self.delivery_delay < 0 or self.idempotency_ttl <= 0:
            raise ValueError("delivery_delay must be >= 0 and idempotency_ttl > 0")

    @property
    def api_key(self) -> str:
        """The key to hand a client: the default root key, else the one with most permissions."""
        if DEFAULT_API_KEY in self.keys:
            return DEFAULT_API_KEY
        return max(self.keys, key=lambda k: len(self.keys[k]))
