"""What ``sendmux.send_email`` and ``sendmux.send_batch`` do (the task functions call these)."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any, TypedDict

from sendmux_celery._ledger import finish_batch, ledger_for, ledger_url
from sendmux_celery._progress import ProgressStore, progress_url
from sendmux_celery._results import BatchSummary, ErrorInfo, error_info, summarize
from sendmux_celery._settings import SettingsError
from sendmux_celery._stop import JobStop, stop_for, stopped_error
from sendmux_celery._task import SendmuxTask
from sendmux_dispatch.errors import (
    AuthenticationError,
    FieldIssue,
    IdempotencyConflictError,
    InsufficientCreditsError,
    InvalidMessageError,
    LedgerUnavailableError,
    PermissionDeniedError,
    SendmuxError,
)
from sendmux_dispatch.models import WireMessage, api_limits, batch_body, wire_message
from sendmux_dispatch.report import Outcome

__all__ = ["EmailSummary", "send_batch", "send_email"]

logger = logging.getLogger("sendmux_celery")

#: A bulk batch whose verdict could not be counted (Redis down) runs again this much later.
_RECORD_RETRY_SECONDS = 10.0

_KEY = re.compile(api_limits.IDEMPOTENCY_KEY_PATTERN)
#: Every batch of the job would fail the same way: nothing was sent.
_NOT_SENT = (AuthenticationError, PermissionDeniedError, InsufficientCreditsError, SettingsError)


class EmailSummary(TypedDict):
    """What ``sendmux.send_email`` returns (``status``: ``"sent"`` or ``"failed"``)."""

    status: str
    idempotency_key: str
    outcome: str
    message_id: str | None
    error: ErrorInfo | None
    attempts: int
    request_id: str | None


def _key_error(key: object) -> InvalidMessageError | None:
    if isinstance(key, str) and _KEY.fullmatch(key):
        return None
    # Required, not generated: a random key per run would make a redelivered
    # task a new send instead of a replay.
    return InvalidMessageError(
        [
            FieldIssue(
                "idempotency_key",
                "invalid",
                "is required: 1 to 255 characters of A-Z, a-z, 0-9, '_' and '-', the same "
                "for every delivery of this task",
            )
        ]
    )


def _gave_up(task: SendmuxTask, error: SendmuxError, attempts: int) -> None:
    logger.error(
        "%s[%s]: failed after %d attempt(s): %s: %s",
        task.name,
        task.request.id,
        attempts,
        type(error).__name__,
        error.message,
    )


def _email(
    key: str,
    outcome: Outcome,
    attempts: int,
    *,
    error: BaseException | None = None,
    message_id: str | None = None,
    request_id: str | None = None,
) -> EmailSummary:
    sent = outcome in (Outcome.QUEUED, Outcome.ALREADY_ACCEPTED)
    return {
        "status": "sent" if sent else "failed",
        "idempotency_key": key,
        "outcome": outcome.value,
        "message_id": message_id,
        "error": None if error is None else error_info(error),
        "attempts": attempts,
        "request_id": request_id,
    }


def send_email(task: SendmuxTask, message: Mapping[str, Any], idempotency_key: str) -> EmailSummary:
    """Send one message (a dict in the API's wire shape) under ``idempotency_key``."""
    attempts = int(task.request.retries or 0) + 1
    first = task.first_attempt_at()
    key = idempotency_key if isinstance(idempotency_key, str) else ""
    bad_key = _key_error(idempotency_key)
    if bad_key is not None:
        return _email(key, Outcome.INVALID, attempts, error=bad_key)
    if not isinstance(message, Mapping):
        return _email(key, Outcome.INVALID, attempts, error=_not_a_message("message"))
    try:
        client = task.sendmux_client(task.sendmux_settings())
        result = client.send(message, idempotency_key=key)
    except InvalidMessageError as error:
        return _email(key, Outcome.INVALID, attempts, error=error)
    except IdempotencyConflictError as error:
        if error.retryable:
            task.retry_later(error, first)
            _gave_up(task, error, attempts)
            return _email(key, Outcome.FAILED, attempts, error=error)
        return _email(key, Outcome.ALREADY_ACCEPTED, attempts, error=error)
    except SendmuxError as error:
        if not isinstance(error, _NOT_SENT):
            task.retry_later(error, first)
        _gave_up(task, error, attempts)
        outcome = Outcome.NOT_SENT if isinstance(error, _NOT_SENT) else Outcome.FAILED
        return _email(key, outcome, attempts, error=error)
    return _email(
        key, Outcome.QUEUED, attempts, message_id=result.message_id, request_id=result.request_id
    )


def _not_a_message(field: str) -> InvalidMessageError:
    return InvalidMessageError(
        [FieldIssue(field, "invalid_type", "must be a JSON object in the API's wire shape")]
    )


def send_batch(
    task: SendmuxTask,
    messages: list[Mapping[str, Any]],
    idempotency_key: str,
    bulk_job: str | None = None,
    job_key: str | None = None,
    digests: list[int] | None = None,
    recorded: list[int] | None = None,
) -> BatchSummary:
    """Send up to 100 messages as one batch request under the batch's ``idempotency_key``.

    Messages that fail validation are reported ``invalid`` by index and the
    others are sent (the same ones on every delivery, so the body and its key
    stay paired); a batch with none valid sends nothing. ``bulk_job`` (set by
    :func:`send_bulk`) names the bulk job whose Redis counters the verdict
    is added to, once per batch key; ``job_key`` and ``digests`` (the
    members' ledger digests), when the producer used the send ledger, have
    the verdict recorded there first (``recorded``: the full member list of
    a replayed intent, when this run found only some of them).
    """
    if bulk_job is not None and _first_delivery(task):
        stop = _job_stopped(task, bulk_job)
        if stop is not None:
            # Published before the stop: not sent, no request. Its ledger intent
            # stays pending (a redelivery may follow an accepted first run): the
            # re-run replays it under its key.
            skipped = _skip(task, messages, idempotency_key, stop)
            _record(task, bulk_job, skipped)
            return skipped
    summary = _send_batch(task, messages, idempotency_key)
    if job_key is not None and digests is not None:
        _finish(task, job_key, digests, summary, recorded)
    if bulk_job is not None:
        fatal = stop_for(summary)
        if fatal is not None:
            _stop(task, bulk_job, summary["idempotency_key"], fatal)
        _record(task, bulk_job, summary)
    return summary


def _first_delivery(task: SendmuxTask) -> bool:
    # A retry or a redelivery may follow an attempt the server accepted: it
    # goes to the server, whose answer to the key settles it, stop or not.
    request = task.request
    info = getattr(request, "delivery_info", None) or {}
    return not (request.retries or info.get("redelivered"))


def _job_stopped(task: SendmuxTask, bulk_job: str) -> JobStop | None:
    import redis

    try:
        return ProgressStore(progress_url(task.app.conf)).stopped(bulk_job)
    except (SettingsError, redis.RedisError):
        # Not known to be stopped: send (recording the verdict says what went wrong).
        return None


def _skip(
    task: SendmuxTask, messages: list[Mapping[str, Any]], idempotency_key: str, stop: JobStop
) -> BatchSummary:
    items: list[Any] = list(messages) if isinstance(messages, (list, tuple)) else []
    logger.info(
        "%s[%s]: not sent, the bulk job stopped: %s", task.name, task.request.id, stop.reason
    )
    return summarize(
        key=idempotency_key if isinstance(idempotency_key, str) else "",
        messages=items,
        sent=range(len(items)),
        invalid={},
        result=None,
        error=stopped_error(stop),
        whole_batch=Outcome.NOT_SENT,
        attempts=int(task.request.retries or 0) + 1,
    )


def _stop(task: SendmuxTask, bulk_job: str, batch_key: str, stop: JobStop) -> None:
    import redis

    try:
        if ProgressStore(progress_url(task.app.conf)).stop(bulk_job, batch_key, stop):
            logger.error(
                "%s[%s]: the bulk job stops (%s): %s",
                task.name,
                task.request.id,
                stop.cause,
                stop.reason,
            )
    except (SettingsError, redis.RedisError) as error:
        # The job goes on: each batch fails the same way, fast, as not_sent.
        logger.warning(
            "%s[%s]: could not stop the bulk job (%s)",
            task.name,
            task.request.id,
            type(error).__name__,
        )


def _finish(
    task: SendmuxTask,
    job_key: str,
    digests: list[int],
    summary: BatchSummary,
    recorded: list[int] | None,
) -> None:
    url = ledger_url(task.app.conf)
    if url is None:
        # The producer recorded an intent the worker cannot settle: say so, loudly.
        logger.error(
            "%s[%s]: the batch belongs to a job on the send ledger, but this worker has no "
            "app.conf.sendmux_ledger_url: its intent stays pending",
            task.name,
            task.request.id,
        )
        return
    try:
        finish_batch(ledger_for(url), job_key, digests, summary, recorded)
    except LedgerUnavailableError as error:
        # Unrecorded, a re-run would replay the batch (harmless) but report it
        # pending; asking again keeps the ledger true. The rerun is a replay.
        logger.warning(
            "%s[%s]: the send ledger could not record the batch (%s); retry in %.0f s",
            task.name,
            task.request.id,
            error.message,
            _RECORD_RETRY_SECONDS,
        )
        raise task.retry(countdown=_RECORD_RETRY_SECONDS) from None


def _record(task: SendmuxTask, bulk_job: str, summary: BatchSummary) -> None:
    import redis

    try:
        ProgressStore(progress_url(task.app.conf)).record_batch(bulk_job, summary)
    except SettingsError:
        # No Redis to count in: the verdict is still in the result backend.
        logger.error(
            "%s[%s]: bulk progress not recorded: no progress URL", task.name, task.request.id
        )
    except redis.RedisError as error:
        # Uncounted, the job would never look done: ask again later. The rerun
        # replays the batch (same key) and counts it once.
        logger.warning(
            "%s[%s]: bulk progress not recorded (%s); retry in %.0f s",
            task.name,
            task.request.id,
            type(error).__name__,
            _RECORD_RETRY_SECONDS,
        )
        raise task.retry(countdown=_RECORD_RETRY_SECONDS) from None


def _send_batch(
    task: SendmuxTask, messages: list[Mapping[str, Any]], idempotency_key: str
) -> BatchSummary:
    attempts = int(task.request.retries or 0) + 1
    first = task.first_attempt_at()
    key = idempotency_key if isinstance(idempotency_key, str) else ""
    items: list[Any] = list(messages) if isinstance(messages, (list, tuple)) else []

    def done(
        *,
        sent: list[int] | None = None,
        invalid: dict[int, SendmuxError] | None = None,
        result: Any = None,
        error: BaseException | None = None,
        whole: Outcome = Outcome.FAILED,
    ) -> BatchSummary:
        return summarize(
            key=key,
            messages=items,
            sent=sent or [],
            invalid=invalid or {},
            result=result,
            error=error,
            whole_batch=whole,
            attempts=attempts,
        )

    bad_key = _key_error(idempotency_key)
    if bad_key is None and not isinstance(messages, (list, tuple)):
        bad_key = _not_a_message("messages")
    if bad_key is None and not 1 <= len(items) <= api_limits.MAX_BATCH_MESSAGES:
        bad_key = InvalidMessageError(
            [
                FieldIssue(
                    "messages",
                    "invalid_count",
                    f"has {len(items)} messages; a batch task takes 1 to "
                    f"{api_limits.MAX_BATCH_MESSAGES}",
                )
            ]
        )
    if bad_key is not None:
        return done(invalid=dict.fromkeys(range(len(items)), bad_key), error=bad_key)

    valid: list[WireMessage] = []
    sent: list[int] = []
    invalid: dict[int, SendmuxError] = {}
    for index, item in enumerate(items):
        if not isinstance(item, Mapping):
            invalid[index] = _not_a_message(f"messages.{index}")
            continue
        try:
            valid.append(wire_message(item))
        except InvalidMessageError as error:
            invalid[index] = error
            continue
        sent.append(index)
    if not valid:
        none_valid = InvalidMessageError(
            [FieldIssue("messages", "all_invalid", "no message of the batch is valid")]
        )
        _gave_up(task, none_valid, attempts)
        return done(invalid=invalid, error=none_valid)

    try:
        client = task.sendmux_client(task.sendmux_settings())
        result = client.send_batch_body(batch_body(valid), idempotency_key=key)
    except IdempotencyConflictError as error:
        if error.retryable:
            task.retry_later(error, first)
            _gave_up(task, error, attempts)
            return done(sent=sent, invalid=invalid, error=error)
        # The key already carried an accepted batch: this work was done before.
        return done(sent=sent, invalid=invalid, error=error, whole=Outcome.ALREADY_ACCEPTED)
    except SendmuxError as error:
        if isinstance(error, _NOT_SENT):
            _gave_up(task, error, attempts)
            return done(sent=sent, invalid=invalid, error=error, whole=Outcome.NOT_SENT)
        task.retry_later(error, first)
        _gave_up(task, error, attempts)
        if task.sendmux_retry_policy.waits_too_long(error):
            # Refused with a Retry-After beyond the policy: not accepted now, and
            # every other batch would be told the same (as dispatch: not_sent).
            return done(sent=sent, invalid=invalid, error=error, whole=Outcome.NOT_SENT)
        return done(sent=sent, invalid=invalid, error=error)
    return done(sent=sent, invalid=invalid, result=result)
