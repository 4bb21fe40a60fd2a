"""The pack's settings, read from ``app.conf`` when a task runs (the environment as fallback)."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import SecretStr

from sendmux_dispatch.client import DEFAULT_MANAGEMENT_URL, DEFAULT_SENDING_URL
from sendmux_dispatch.errors import SendmuxError
from sendmux_dispatch.models.api_limits import RATE_WINDOW_SECONDS, SENDING_REQUESTS_PER_WINDOW

__all__ = ["API_KEY_ENV", "SendmuxSettings", "SettingsError"]

#: Read when ``app.conf.sendmux_api_key`` is not set.
API_KEY_ENV = "SENDMUX_API_KEY"


class SettingsError(SendmuxError):
    """The worker's configuration cannot work (no key, a bad value); never retried."""

    default_retryable = False


def _positive(conf: Mapping[str, Any], name: str, default: float) -> float:
    value = conf.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise SettingsError(f"app.conf.{name} must be a positive number, got {value!r}")
    if not math.isfinite(value):
        raise SettingsError(f"app.conf.{name} must be finite, got {value!r}")
    return float(value)


def _optional_url(conf: Mapping[str, Any], name: str) -> str | None:
    value = conf.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise SettingsError(f"app.conf.{name} must be a URL string, got {type(value).__name__}")
    return value


@dataclass(frozen=True)
class SendmuxSettings:
    """What a worker process needs to send: the key, the URLs, the shared pacer's Redis.

    Read by :meth:`from_conf` from these ``app.conf`` settings:

    * ``sendmux_api_key`` (else the ``SENDMUX_API_KEY`` environment variable)
    * ``sendmux_sending_url``, ``sendmux_management_url`` (the production URLs by default)
    * ``sendmux_pacer_url``: a Redis URL; every worker on the key shares one
      :class:`~sendmux_dispatch.RedisPacer` there (none: each process paces alone)
    * ``sendmux_pacer_limit``, ``sendmux_pacer_window``: that pacer's ceiling,
      requests per window of whole seconds (1,800 per 60 s, the API's); every
      worker on the key must use the same values
    * ``sendmux_ledger_url``: the send ledger on Redis, used by the bulk flow
      (:func:`~sendmux_celery.send_bulk` and its batch tasks)
    * ``sendmux_timeout``: seconds per HTTP request (30)
    * ``sendmux_request_attempts``: HTTP attempts within one task run (3), for
      blips; longer waits are task retries through the broker
    """

    api_key: SecretStr = field(repr=False)
    sending_url: str = DEFAULT_SENDING_URL
    management_url: str = DEFAULT_MANAGEMENT_URL
    pacer_url: str | None = None
    ledger_url: str | None = None
    pacer_limit: int = SENDING_REQUESTS_PER_WINDOW
    pacer_window: float = RATE_WINDOW_SECONDS
    timeout: float = 30.0
    request_attempts: int = 3

    @classmethod
    def from_conf(
        cls, conf: Mapping[str, Any], environ: Mapping[str, str] | None = None
    ) -> SendmuxSettings:
        """Settings from a Celery ``app.conf`` (any mapping); raises :class:`SettingsError`."""
        env = os.environ if environ is None else environ
        key = conf.get("sendmux_api_key") or env.get(API_KEY_ENV)
        if isinstance(key, SecretStr):
            key = key.get_secret_value()
        if not key:
            raise SettingsError(
                f"no Sendmux API key: set app.conf.sendmux_api_key or the {API_KEY_ENV} "
                "environment variable of the worker (never a task argument)",
                code="missing_api_key",
            )
        if not isinstance(key, str):
            raise SettingsError("app.conf.sendmux_api_key must be a string", code="bad_api_key")
        attempts = conf.get("sendmux_request_attempts", 3)
        if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
            raise SettingsError(
                f"app.conf.sendmux_request_attempts must be an int >= 1, got {attempts!r}"
            )
        limit = conf.get("sendmux_pacer_limit", SENDING_REQUESTS_PER_WINDOW)
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise SettingsError(f"app.conf.sendmux_pacer_limit must be an int >= 1, got {limit!r}")
        window = _positive(conf, "sendmux_pacer_window", RATE_WINDOW_SECONDS)
        if not window.is_integer():
            # The Redis pacer's counters expire in whole seconds.
            raise SettingsError(
                f"app.conf.sendmux_pacer_window must be a whole number of seconds, got {window!r}"
            )
        return cls(
            api_key=SecretStr(key),
            sending_url=_optional_url(conf, "sendmux_sending_url") or DEFAULT_SENDING_URL,
            management_url=_optional_url(conf, "sendmux_management_url") or DEFAULT_MANAGEMENT_URL,
            pacer_url=_optional_url(conf, "sendmux_pacer_url"),
            ledger_url=_optional_url(conf, "sendmux_ledger_url"),
            pacer_limit=limit,
            pacer_window=window,
            timeout=_positive(conf, "sendmux_timeout", 30.0),
            request_attempts=attempts,
        )
