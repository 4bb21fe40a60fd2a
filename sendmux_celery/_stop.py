"""Stopping a bulk job when every further batch would fail the same way.

401 or 403 (``auth``), 402 (``credits``), or a 429/503 whose Retry-After is
beyond the task policy's ``max_retry_after`` (``rate_limited``).

As dispatch does (``DispatchReport.stop_cause``), a bulk job stops on a
wrong key, a missing permission or no credits: more batches would only
make more refused requests. The worker that meets the error records the
stop in the job's progress hash (first one wins); the producer sees it in
the same round trip that counts each batch before publishing it, and
publishes nothing more; a worker that takes a batch published before the
stop sees it too and reports the batch ``not_sent`` without a request.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import cast

from sendmux_celery._results import BatchSummary, ErrorInfo
from sendmux_dispatch.errors import SendmuxError
from sendmux_dispatch.report import StopCause

__all__ = [
    "JobStop",
    "JobStoppedError",
    "stop_for",
    "stop_from_fields",
    "stopped_error",
    "stopped_message",
]

# Statuses after which the same key gets the same answer for every batch.
_CAUSES: dict[int, StopCause] = {401: "auth", 403: "auth", 402: "credits"}
# A worker with no key at all refuses every batch of the job too.
_SETTINGS_CAUSES: dict[str, StopCause] = {"missing_api_key": "auth", "bad_api_key": "auth"}


@dataclass(frozen=True, slots=True)
class JobStop:
    """Why a bulk job stopped: the cause (as dispatch names it) and the error, never the key."""

    cause: StopCause
    reason: str
    error: ErrorInfo


def stop_from_fields(cause: str | bytes, reason: str | bytes, error: str | bytes) -> JobStop:
    """A stop as a progress store keeps it: three text fields (Redis answers bytes)."""

    def text(value: str | bytes) -> str:
        return value.decode() if isinstance(value, bytes) else value

    return JobStop(
        cast("StopCause", text(cause)), text(reason), cast("ErrorInfo", json.loads(error or "{}"))
    )


class JobStoppedError(SendmuxError):
    """A batch not sent because its bulk job had stopped (``stop_cause`` says why)."""

    default_retryable = False


def stopped_message(stop: JobStop) -> str:
    return f"not sent: the bulk job stopped ({stop.reason})"


def stopped_error(stop: JobStop) -> JobStoppedError:
    """What a batch skipped because of ``stop`` reports: the stopping error's code, as
    dispatch gives the recipients it did not send (a plain init: it pickles)."""
    return JobStoppedError(stopped_message(stop), code=stop.error["code"] or "job_stopped")


def stop_for(summary: BatchSummary) -> JobStop | None:
    """The stop a batch's verdict calls for, or None (its error is not job-wide)."""
    error = summary["error"]
    if error is None or not summary["counts"].get("not_sent"):
        return None
    cause = None
    if error["type"] == "SettingsError":
        cause = _SETTINGS_CAUSES.get(error["code"] or "")
    elif error["retryable"] and error["status"] in (429, 503):
        # A retryable error ends not_sent only when its Retry-After is beyond
        # the task policy's max_retry_after: the other batches would wait as long.
        cause = "rate_limited"
    elif error["status"] is not None:
        cause = _CAUSES.get(error["status"])
    if cause is None:
        return None
    return JobStop(cause, f"{error['type']}: {error['message']}", error)
