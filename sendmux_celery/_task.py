"""SendmuxTask: the base class of the pack's tasks (delivery options, settings, retries)."""

from __future__ import annotations

import logging
import time
from typing import Any

from celery import Task

from sendmux_celery._process import worker_client
from sendmux_celery._settings import SendmuxSettings
from sendmux_dispatch.client import SendmuxClient
from sendmux_dispatch.errors import SendmuxError
from sendmux_dispatch.models.api_limits import IDEMPOTENCY_TTL_SECONDS
from sendmux_dispatch.retry import RetryPolicy

__all__ = [
    "DEFAULT_TASK_RETRY",
    "FIRST_ATTEMPT_HEADER",
    "MAX_COUNTDOWN",
    "MAX_RETRY_DEADLINE",
    "SendmuxTask",
    "check_task_policy",
]

logger = logging.getLogger("sendmux_celery")

#: The longest countdown a task retries with. Longer ones go wrong on both
#: brokers: on Redis a message held past ``visibility_timeout`` is delivered
#: again (and again), on RabbitMQ an unacked message past ``consumer_timeout``
#: (30 min by default) closes the channel. The server is simply asked again.
MAX_COUNTDOWN = 300.0

#: Retrying stops this long after the first attempt at the latest: half the
#: server's 24 h idempotency window, so a retry never lands after the server
#: forgot the key (and a replay would deliver twice).
MAX_RETRY_DEADLINE = IDEMPOTENCY_TTL_SECONDS / 2

#: Message header carrying the first attempt's Unix time across task retries.
FIRST_ATTEMPT_HEADER = "sendmux_first_attempt"

#: Task-level retries: up to an hour of Retry-After honoured (countdowns are
#: still cut to MAX_COUNTDOWN: the task asks again), backoff to 5 minutes,
#: given up after 6 hours.
DEFAULT_TASK_RETRY = RetryPolicy(
    max_attempts=100,
    initial_delay=5.0,
    max_delay=MAX_COUNTDOWN,
    multiplier=2.0,
    jitter=0.5,
    deadline=6 * 3600.0,
    max_retry_after=3600.0,
)


def check_task_policy(policy: object) -> RetryPolicy:
    """``policy`` if it can drive task retries, else a ValueError/TypeError that says why."""
    if not isinstance(policy, RetryPolicy):
        raise TypeError(f"retry_policy must be a RetryPolicy, got {type(policy).__name__}")
    if policy.deadline > MAX_RETRY_DEADLINE:
        raise ValueError(
            f"retry_policy.deadline is {policy.deadline:g} s; task retries must stop within "
            f"{MAX_RETRY_DEADLINE:g} s (half the 24 h idempotency window), or a late retry "
            "could deliver twice"
        )
    return policy


class SendmuxTask(Task):  # type: ignore[misc]  # celery ships no type hints
    """Base of ``sendmux.*`` tasks: late acks, redelivery when a worker dies, JSON, our retries.

    ``acks_late`` + ``reject_on_worker_lost``: a message is acknowledged only
    when the task has finished, so a killed worker's batch is delivered again;
    the batch's idempotency key makes the second send a replay. Celery's own
    retry counter is off (``max_retries = None``): :attr:`sendmux_retry_policy`
    decides, with the server's Retry-After, which ``autoretry_for`` ignores.
    """

    acks_late = True
    reject_on_worker_lost = True
    serializer = "json"
    max_retries = None
    sendmux_retry_policy: RetryPolicy = DEFAULT_TASK_RETRY

    def sendmux_settings(self) -> SendmuxSettings:
        """The settings in ``self.app.conf`` now (raises SettingsError)."""
        return SendmuxSettings.from_conf(self.app.conf)

    def sendmux_client(self, settings: SendmuxSettings) -> SendmuxClient:
        """This worker process's client for ``settings``."""
        return worker_client(settings)

    def first_attempt_at(self) -> float:
        """Unix time of this task's first attempt, as carried by its retries (else now)."""
        request = self.request
        value: Any = getattr(request, FIRST_ATTEMPT_HEADER, None)
        if value is None:
            headers = getattr(request, "headers", None) or {}
            value = headers.get(FIRST_ATTEMPT_HEADER)
        try:
            first = float(value)
        except (TypeError, ValueError):
            return time.time()
        return min(first, time.time())

    def retry_later(self, error: SendmuxError, first_attempt: float) -> None:
        """Raise Celery's ``Retry`` for ``error`` if the policy allows; return to give up.

        The countdown is the policy's (Retry-After first), cut to
        :data:`MAX_COUNTDOWN`; no retry is made that would start past the
        policy's deadline counted from ``first_attempt``.
        """
        policy = self.sendmux_retry_policy
        attempt = int(self.request.retries or 0) + 1
        if not policy.should_retry(error) or attempt >= policy.max_attempts:
            return
        countdown = min(policy.next_delay(attempt, error), MAX_COUNTDOWN)
        if time.time() + countdown - first_attempt > policy.deadline:
            return
        logger.warning(
            "%s[%s]: %s: %s; retry %d in %.1f s",
            self.name,
            self.request.id,
            type(error).__name__,
            error.message,
            attempt,
            countdown,
        )
        headers = dict(getattr(self.request, "headers", None) or {})
        headers[FIRST_ATTEMPT_HEADER] = first_attempt
        raise self.retry(countdown=countdown, exc=error, headers=headers)
