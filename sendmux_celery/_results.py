"""The JSON results of the tasks: what happened to each message of a batch, never the key."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypedDict

from sendmux_dispatch.errors import SendmuxError
from sendmux_dispatch.models import BatchResult
from sendmux_dispatch.report import Outcome

__all__ = ["BatchSummary", "ErrorInfo", "FailureInfo", "error_info", "summarize"]


class ErrorInfo(TypedDict):
    """An error as plain JSON (the core's errors never hold the key)."""

    type: str
    message: str
    status: int | None
    code: str | None
    retryable: bool
    request_id: str | None
    errors: list[dict[str, str]]


class FailureInfo(TypedDict):
    """One message that was not accepted: its index in the task's ``messages``."""

    index: int
    to: str | None
    outcome: str
    code: str | None
    reason: str
    retryable: bool


class BatchSummary(TypedDict):
    """What ``sendmux.send_batch`` returns.

    ``status``: ``"sent"`` (every message accepted), ``"partial"``, or
    ``"failed"`` (none accepted: ``error`` says why). ``counts`` has one entry
    per :class:`~sendmux_dispatch.Outcome` value; ``message_ids[i]`` is the
    server's id for message *i*, ``None`` when it was not accepted.
    """

    status: str
    idempotency_key: str
    total: int
    counts: dict[str, int]
    message_ids: list[str | None]
    failures: list[FailureInfo]
    error: ErrorInfo | None
    attempts: int
    request_id: str | None


def error_info(error: BaseException) -> ErrorInfo:
    if isinstance(error, SendmuxError):
        return {
            "type": type(error).__name__,
            "message": error.message,
            "status": error.status,
            "code": error.code,
            "retryable": bool(error.retryable),
            "request_id": error.request_id,
            "errors": [
                {"field": i.field, "code": i.code, "message": i.message} for i in error.errors
            ],
        }
    # Not ours: only the class name, since a foreign message may quote anything.
    return {
        "type": type(error).__name__,
        "message": f"unexpected {type(error).__name__} in the worker (see the worker log)",
        "status": None,
        "code": "internal_error",
        "retryable": False,
        "request_id": None,
        "errors": [],
    }


def _recipient(message: Mapping[str, Any] | Any) -> str | None:
    to = message.get("to") if isinstance(message, Mapping) else None
    if isinstance(to, str):
        return to
    if isinstance(to, Mapping) and isinstance(to.get("email"), str):
        return str(to["email"])
    return None


def _status(counts: Mapping[str, int], total: int) -> str:
    done = counts[Outcome.QUEUED.value] + counts[Outcome.ALREADY_ACCEPTED.value]
    if total and done == total:
        return "sent"
    return "partial" if done else "failed"


def _empty_counts() -> dict[str, int]:
    # A batch task does not dedupe (the producer does), so no "duplicate" count.
    return {outcome.value: 0 for outcome in Outcome if outcome is not Outcome.DUPLICATE}


def summarize(
    *,
    key: str,
    messages: Sequence[Any],
    sent: Sequence[int],
    invalid: Mapping[int, SendmuxError],
    result: BatchResult | None,
    error: BaseException | None,
    whole_batch: Outcome,
    attempts: int,
) -> BatchSummary:
    """The summary of one batch task.

    ``sent[j]`` is the index in ``messages`` of the j-th message of the
    request body; ``invalid`` the messages refused before any request;
    ``result`` the server's answer, else ``error`` and the ``whole_batch``
    outcome of every message sent (``failed``, ``not_sent``, ``already_accepted``).
    """
    counts = _empty_counts()
    ids: list[str | None] = [None] * len(messages)
    failures: list[FailureInfo] = []
    for index, problem in sorted(invalid.items()):
        counts[Outcome.INVALID.value] += 1
        failures.append(
            {
                "index": index,
                "to": _recipient(messages[index]),
                "outcome": Outcome.INVALID.value,
                "code": problem.code,
                "reason": str(problem),
                "retryable": False,
            }
        )
    if result is not None:
        for item in result.results:
            index = sent[item.index]
            if item.status == "queued":
                counts[Outcome.QUEUED.value] += 1
                ids[index] = item.message_id
                continue
            counts[Outcome.FAILED.value] += 1
            detail = item.error
            failures.append(
                {
                    "index": index,
                    "to": _recipient(messages[index]),
                    "outcome": Outcome.FAILED.value,
                    "code": detail.code if detail else None,
                    "reason": detail.message if detail else "refused without a reason",
                    "retryable": bool(detail.retryable) if detail else False,
                }
            )
        failures.sort(key=lambda failure: failure["index"])
    elif sent:
        counts[whole_batch.value] += len(sent)
        if whole_batch is not Outcome.ALREADY_ACCEPTED and error is not None:
            reason = (
                f"{type(error).__name__}: {error.message}"
                if isinstance(error, SendmuxError)
                else f"unexpected {type(error).__name__}"
            )
            code = error.code if isinstance(error, SendmuxError) else "internal_error"
            failures.extend(
                {
                    "index": index,
                    "to": _recipient(messages[index]),
                    "outcome": whole_batch.value,
                    "code": code,
                    "reason": reason,
                    "retryable": bool(getattr(error, "retryable", False)),
                }
                for index in sent
            )
            failures.sort(key=lambda failure: failure["index"])
    return {
        "status": _status(counts, len(messages)),
        "idempotency_key": key,
        "total": len(messages),
        "counts": counts,
        "message_ids": ids,
        "failures": failures,
        "error": None if error is None else error_info(error),
        "attempts": attempts,
        "request_id": result.request_id if result is not None else None,
    }
