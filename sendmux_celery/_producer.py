"""send_bulk: a recipient stream planned into ``sendmux.send_batch`` tasks, on the producer."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from kombu.exceptions import OperationalError
from pydantic import BaseModel

from sendmux_celery._job import BulkJob
from sendmux_celery._ledger import ledger_for, ledger_url
from sendmux_celery._progress import ProgressStore, job_id, progress_url
from sendmux_celery._registry import SEND_BATCH, batch_task_id
from sendmux_celery._stop import JobStop, stopped_message
from sendmux_dispatch.batching import Duplicate, LedgerStage, PlannedBatch, Skipped, plan_batches
from sendmux_dispatch.errors import LedgerUnavailableError, SendmuxError
from sendmux_dispatch.ledger import Intent, RedisLedger
from sendmux_dispatch.personalize import Personalizer
from sendmux_dispatch.recipients import RecipientFailure
from sendmux_dispatch.report import DEFAULT_MAX_FAILURES

__all__ = ["DEFAULT_PUBLISH_RETRY", "DEFAULT_TASK_BYTES", "BrokerUnavailableError", "send_bulk"]

#: The largest batch a task carries by default (bytes of request body). The
#: broker holds every pending batch: a megabyte keeps RabbitMQ and Redis at ease
#: where the API's own limit would let 25 MB of attachments into each message.
DEFAULT_TASK_BYTES = 1024 * 1024

#: How send_bulk retries a publish while the broker is away (kombu's
#: ``retry_policy``): about 30 s, then :class:`BrokerUnavailableError`.
DEFAULT_PUBLISH_RETRY: Mapping[str, float] = {
    "max_retries": 16,
    "interval_start": 0,
    "interval_step": 1,
    "interval_max": 2,
}

logger = logging.getLogger("sendmux_celery")


class BrokerUnavailableError(SendmuxError):
    """send_bulk could not publish a batch: the broker stayed unreachable (re-run the job)."""

    default_retryable = True


_CLAIMED = (
    "recorded as being sent by another run of this job (send ledger); that run, or the next "
    "re-run, settles it"
)

#: Producer-side totals written to Redis every this many batches (and at the end).
_TOTALS_EVERY = 10


def send_bulk(
    app: Any,
    template: Personalizer | Mapping[str, Any] | BaseModel,
    recipients: Iterable[object],
    *,
    job_key: str,
    queue: str | None = None,
    max_messages: int = 100,
    max_task_bytes: int = DEFAULT_TASK_BYTES,
    **apply_options: Any,
) -> BulkJob:
    """Plan ``recipients`` into ``sendmux.send_batch`` tasks on ``app`` and return the job.

    ``recipients`` is any iterable :func:`~sendmux_dispatch.plan_batches`
    takes (a generator, ``read_csv(...)``, a database cursor's rows as
    mappings); it is read once, lazily: one batch is in memory at a time.
    ``job_key`` identifies the work (the same key for a re-run of the same
    job: its batches get the same idempotency keys and task ids, so they are
    replays); ``queue`` the queue the tasks go to; ``max_task_bytes`` caps
    each task's request body (a message larger than that is reported
    ``invalid``, code ``too_large``). Other keywords go to ``send_task``
    (``priority``, ``expires``, ...).

    Progress goes to Redis (``app.conf.sendmux_progress_url``, else a Redis
    result backend): raises :class:`SettingsError` before reading anything
    when there is none. The workers must see the same URL in their conf.
    With ``app.conf.sendmux_ledger_url`` the send ledger makes re-runs with a
    changed list exactly once; a ledger that cannot be reached raises
    :class:`~sendmux_dispatch.errors.LedgerUnavailableError` (what was
    published goes on; a re-run sends the rest).

    A batch refused with 401, 403 or 402 (or a Retry-After beyond the task
    policy's ``max_retry_after``) stops the job: nothing more is published,
    the rest of the list is counted ``not_sent``, and the report's
    ``stop_cause``/``stopped_reason`` say why. Publishing retries a broker
    that is away for about 30 s (:data:`DEFAULT_PUBLISH_RETRY`; pass
    ``retry_policy=`` to change it), then raises
    :class:`BrokerUnavailableError`: run the job again once the broker is back.
    """
    store = ProgressStore(progress_url(app.conf))
    url = ledger_url(app.conf)
    ledger = None if url is None else ledger_for(url)
    stage = None
    outage: list[LedgerUnavailableError] = []
    if ledger is not None:
        lookup = ledger

        def accepted_among(digests: Sequence[int]) -> set[int]:
            try:
                return lookup.accepted_among(job_key, digests)
            except LedgerUnavailableError as error:
                # The planner ends the plan quietly here; the producer must not.
                outage.append(error)
                raise

        # Read before the list: what an earlier run left in flight is replayed.
        stage = LedgerStage(
            accepted_among,
            ledger.pending(job_key),
            fresh=ledger.stats(job_key) is None,
        )
    plan = plan_batches(
        template,
        recipients,
        job_key=job_key,
        max_messages=max_messages,
        max_bytes=max_task_bytes,
        ledger=stage,
    )
    job = job_id(job_key)
    store.reset(job)
    failures: list[dict[str, Any]] = []
    omitted = 0
    skipped = {"already_accepted": 0, "failed": 0, "not_sent": 0}

    def fail(position: int | None, email: str | None, code: str, message: str) -> None:
        nonlocal omitted
        if len(failures) < DEFAULT_MAX_FAILURES:
            failures.append(
                {"position": position, "email": email, "code": code, "message": message}
            )
        else:
            omitted += 1

    options = dict(apply_options)
    if queue is not None:
        options["queue"] = queue
    if "retry_policy" not in options:
        # Celery's default gives up after about a second; a broker restart takes longer.
        options["retry_policy"] = dict(DEFAULT_PUBLISH_RETRY)

    def totals(done: bool) -> dict[str, int | str]:
        stats = plan.stats
        return {
            "job_key": job_key,
            "recipients": stats.recipients,
            "invalid": stats.failures,
            "duplicates_dropped": stats.duplicates_dropped,
            "plan_failures": json.dumps(failures),
            "plan_failures_omitted": omitted,
            **{f"skipped_{name}": count for name, count in skipped.items()},
            "planning_done": int(done),
        }

    published = 0
    stop: JobStop | None = None
    for item in plan:
        if isinstance(item, RecipientFailure):
            fail(item.position, item.email, item.code, item.reason)
            continue
        if isinstance(item, Skipped):
            skipped[item.status] += 1
            if item.status != "already_accepted":
                fail(item.position, item.email, item.code or item.status, item.message or "")
            continue
        if isinstance(item, Duplicate) or not isinstance(item, PlannedBatch):
            continue  # counted in plan.stats
        if stop is not None:
            # As dispatch does: the rest of the list is read and counted not_sent.
            _not_sent(item, stop, skipped, fail)
            continue
        batch: PlannedBatch | None = item
        if ledger is not None and item.intent is None:
            batch = _begin(ledger, job_key, item, skipped, fail)
        if batch is None:
            continue
        # Counted before it is published: a counter never lags behind a batch
        # a worker might already have finished. The same round trip says
        # whether a worker stopped the job (401, 403, 402): then not published.
        stop = store.plan_batch(job, batch.idempotency_key, len(batch))
        if stop is not None:
            logger.warning(
                "bulk job %r stops: %s; %d batches were published, the rest are not_sent",
                job_key,
                stop.reason,
                published,
            )
            if ledger is not None and item.intent is None:
                # Begun by this run and never published: nothing can be accepted.
                ledger.finish(job_key, batch.idempotency_key, [])
            _not_sent(batch, stop, skipped, fail)
            continue
        kwargs: dict[str, Any] = {"bulk_job": job}
        if ledger is not None:
            kwargs.update(job_key=job_key, digests=list(batch.digests))
            if batch.intent is not None and batch.intent.digests != batch.digests:
                kwargs["recorded"] = list(batch.intent.digests)
        try:
            app.send_task(
                SEND_BATCH,
                args=[list(batch.messages), batch.idempotency_key],
                kwargs=kwargs,
                task_id=batch_task_id(batch.idempotency_key),
                serializer="json",
                **options,
            )
        except OperationalError as error:
            # The broker stayed unreachable past the publish retries. What was
            # published goes on; a re-run (same job key) replays it and sends the rest.
            store.set_plan(job, totals(False))
            raise BrokerUnavailableError(
                f"the broker could not be reached to publish batch {published + 1} of bulk job "
                f"{job_key!r} ({type(error).__name__}: {error}); {published} batches were "
                "published and go on. Run send_bulk again with the same job_key once the "
                "broker is back: the published batches are replays, the rest is sent",
                code="broker_unavailable",
                retryable=True,
            ) from None
        published += 1
        if published % _TOTALS_EVERY == 0:
            store.set_plan(job, totals(False))
    if outage:
        # What was published goes on; the rest of the list was not read. A
        # re-run (same job key) skips what was accepted and sends the rest.
        store.set_plan(job, totals(False))
        raise outage[0]
    store.set_plan(job, totals(True))
    return BulkJob(app, job_key)


def _begin(
    ledger: RedisLedger,
    job_key: str,
    batch: PlannedBatch,
    skipped: dict[str, int],
    fail: Callable[[int | None, str | None, str, str], None],
) -> PlannedBatch | None:
    """Record ``batch`` pending before it is published; drop members already taken.

    As dispatch does: members accepted meanwhile count ``already_accepted``,
    members pending under another run's key ``not_sent`` (that run or the
    next re-run settles them); the rest go out rebuilt under their own key.
    """
    current = batch
    while True:
        taken = ledger.begin(job_key, Intent(current.idempotency_key, current.digests))
        if not taken:
            return current
        found = ledger.accepted_among(job_key, sorted(taken))
        keep = []
        for index, (recipient, digest) in enumerate(
            zip(current.recipients, current.digests, strict=True)
        ):
            if digest in found:
                skipped["already_accepted"] += 1
            elif digest in taken:
                skipped["not_sent"] += 1
                fail(recipient.position, recipient.email, "claimed_by_another_run", _CLAIMED)
            else:
                keep.append(index)
        if not keep:
            return None
        current = current.rebuilt(keep, job_key)


def _not_sent(
    batch: PlannedBatch,
    stop: JobStop,
    skipped: dict[str, int],
    fail: Callable[[int | None, str | None, str, str], None],
) -> None:
    """A batch not published because the job stopped: every member ``not_sent``."""
    skipped["not_sent"] += len(batch)
    code, message = stop.error["code"] or "job_stopped", stopped_message(stop)
    for recipient in batch.recipients:
        fail(recipient.position, recipient.email, code, message)
