"""BulkJob: the handle of a bulk job, read from its Redis counters (any process can hold one)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, cast

from sendmux_celery._progress import ProgressStore, job_id, progress_url
from sendmux_dispatch.report import DispatchReport, Failure, Outcome, StopCause

__all__ = ["BulkJob", "BulkProgress"]


@dataclass(frozen=True, slots=True)
class BulkProgress:
    """Where a bulk job stands.

    ``batches``/``messages``: enqueued so far (final once ``planning_done``);
    ``batches_done``/``messages_done``: batches whose task returned its
    verdict, and their messages; ``queued`` ... ``not_sent``: those messages
    by outcome (``failed`` includes retries run out); ``invalid`` also counts
    recipients refused while planning, ``already_accepted``, ``failed`` and
    ``not_sent`` those the send ledger settled while planning; ``in_flight``: batches enqueued and
    not yet done (waiting in the broker, running, or retrying). A job that
    a batch stopped (401, 403, 402, a Retry-After beyond the task policy)
    has ``stop_cause`` set: nothing more is published, and batches published
    before the stop end ``not_sent`` without a request.
    """

    planning_done: bool
    recipients: int
    batches: int
    messages: int
    batches_done: int
    messages_done: int
    queued: int
    failed: int
    invalid: int
    already_accepted: int
    not_sent: int
    duplicates_dropped: int
    #: Why the job stopped before its end (``"auth"``, ``"credits"``), as dispatch names it.
    stop_cause: StopCause | None = None
    #: The error that stopped it (``"AuthenticationError: ..."``), never the key.
    stopped_reason: str | None = None

    @property
    def in_flight(self) -> int:
        return self.batches - self.batches_done

    @property
    def done(self) -> bool:
        """Every batch of a finished plan has its verdict."""
        return self.planning_done and self.batches_done >= self.batches


class BulkJob:
    """A bulk job started by :func:`send_bulk` (or found again: ``BulkJob(app, job_key)``)."""

    def __init__(self, app: Any, job_key: str) -> None:
        self.app = app
        self.job_key = job_key
        self.job_id = job_id(job_key)
        self._store = ProgressStore(progress_url(app.conf))

    def __repr__(self) -> str:
        return f"BulkJob(job_key={self.job_key!r})"

    def progress(self) -> BulkProgress:
        """The counters now (one Redis round trip)."""
        meta, counts, _ = self._store.snapshot(self.job_id)
        return self._progress(meta, counts)

    @staticmethod
    def _progress(meta: dict[str, str], counts: dict[str, int]) -> BulkProgress:
        plan_invalid = int(meta.get("invalid", 0))
        done_messages = sum(counts.get(o.value, 0) for o in Outcome if o is not Outcome.DUPLICATE)
        return BulkProgress(
            planning_done=meta.get("planning_done") == "1",
            recipients=int(meta.get("recipients", 0)),
            batches=int(meta.get("batches", 0)),
            messages=int(meta.get("messages", 0)),
            batches_done=counts.get("batches", 0),
            messages_done=done_messages,
            queued=counts.get(Outcome.QUEUED.value, 0),
            failed=counts.get(Outcome.FAILED.value, 0) + int(meta.get("skipped_failed", 0)),
            invalid=counts.get(Outcome.INVALID.value, 0) + plan_invalid,
            already_accepted=counts.get(Outcome.ALREADY_ACCEPTED.value, 0)
            + int(meta.get("skipped_already_accepted", 0)),
            not_sent=counts.get(Outcome.NOT_SENT.value, 0) + int(meta.get("skipped_not_sent", 0)),
            duplicates_dropped=int(meta.get("duplicates_dropped", 0)),
            stop_cause=cast("StopCause | None", meta.get("stop_cause")),
            stopped_reason=meta.get("stopped_reason"),
        )

    def wait(self, timeout: float | None = None, interval: float = 0.5) -> DispatchReport:
        """Block until every batch has its verdict; the :meth:`report` then.

        Raises TimeoutError after ``timeout`` seconds (the job goes on: wait again).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while not (progress := self.progress()).done:
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(
                    f"bulk job {self.job_key!r} not done after {timeout:g} s: "
                    f"{progress.batches_done} of {progress.batches} batches have a verdict"
                    + ("" if progress.planning_done else " (still enqueueing)")
                )
            time.sleep(interval)
        return self.report()

    def report(self) -> DispatchReport:
        """The merged report of the batches done so far (final once :meth:`wait` returned).

        ``requests`` counts task attempts (each at least one HTTP request; the
        client's in-process retries are not seen here), ``retries`` the task
        retries; ``elapsed`` is not measured (0).
        """
        meta, counts, failures = self._store.snapshot(self.job_id)
        progress = self._progress(meta, counts)
        attempts = counts.get("attempts", 0)
        report = DispatchReport(
            job_key=self.job_key,
            total=progress.recipients,
            queued=progress.queued,
            failed=progress.failed,
            invalid=progress.invalid,
            duplicates_dropped=progress.duplicates_dropped,
            already_accepted=progress.already_accepted,
            not_sent=progress.not_sent,
            batches=progress.batches_done,
            requests=attempts,
            retries=max(attempts - progress.batches_done, 0),
            stopped_reason=progress.stopped_reason,
            stop_cause=progress.stop_cause,
        )
        for failure in json.loads(meta.get("plan_failures", "[]")) + failures:
            report.add_failure(
                Failure(
                    failure.get("position"),
                    failure.get("email"),
                    str(failure["code"]),
                    failure["message"],
                )
            )
        report.failures_omitted += int(meta.get("plan_failures_omitted", 0))
        report.failures_omitted += counts.get("failures_omitted", 0)
        return report
