"""What the operator, notifier and email backend share: addresses, progress, the failure rule."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any, Protocol

from airflow.sdk.exceptions import AirflowException

from sendmux_dispatch.report import DispatchReport, Progress

__all__ = ["ProgressLog", "address_list", "check_report"]


def address_list(value: str | Iterable[str] | None) -> list[str]:
    """Addresses from a list, or a string split at "," or ";" as Airflow's EmailOperator does."""
    if value is None:
        return []
    items = re.split(r"[,;]", value) if isinstance(value, str) else list(value)
    return [item.strip() for item in items if item and item.strip()]


class _InfoLogger(Protocol):
    # Both a stdlib Logger and the task SDK's structlog logger (``self.log``) fit.
    def info(self, event: Any, *args: Any) -> Any: ...


class ProgressLog:
    """The dispatch progress callback: one INFO line per batch, counts only, no addresses."""

    def __init__(self, log: _InfoLogger) -> None:
        self._log = log

    def __call__(self, progress: Progress) -> None:
        self._log.info(
            "Sendmux: %d batches, %d messages handled (%d queued, %d failed), %.1f msg/s",
            progress.batches_done,
            progress.messages_done,
            progress.queued,
            progress.failed,
            progress.rate,
        )


def check_report(report: DispatchReport, max_failure_ratio: float) -> None:
    """Fail the task when nothing was sent, or more than ``max_failure_ratio`` was not.

    Duplicates dropped are not failures; failed, invalid and never attempted
    recipients are. The message holds counts and error codes, never addresses.
    """
    handled = report.total - report.duplicates_dropped
    sent = report.queued + report.already_accepted
    missed = report.failed + report.invalid + report.not_sent
    codes = sorted({failure.code for failure in report.failures})
    why = f"{report.summary_line()}; failure codes: {', '.join(codes) or 'none'}"
    if sent == 0:
        raise AirflowException(f"nothing could be sent: {why}")
    if handled and missed / handled > max_failure_ratio:
        raise AirflowException(
            f"{missed} of {handled} recipients not sent, above max_failure_ratio="
            f"{max_failure_ratio}: {why}"
        )
