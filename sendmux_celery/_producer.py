"""send_bulk: a recipient stream planned into ``sendmux.send_batch`` tasks, on the producer."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel

from sendmux_celery._job import BulkJob
from sendmux_celery._progress import ProgressStore, job_id, progress_url
from sendmux_celery._registry import SEND_BATCH, batch_task_id
from sendmux_dispatch.batching import Duplicate, PlannedBatch, plan_batches
from sendmux_dispatch.personalize import Personalizer
from sendmux_dispatch.recipients import RecipientFailure
from sendmux_dispatch.report import DEFAULT_MAX_FAILURES

__all__ = ["DEFAULT_TASK_BYTES", "send_bulk"]

#: The largest batch a task carries by default (bytes of request body). The
#: broker holds every pending batch: a megabyte keeps RabbitMQ and Redis at ease
#: where the API's own limit would let 25 MB of attachments into each message.
DEFAULT_TASK_BYTES = 1024 * 1024

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
    """
    store = ProgressStore(progress_url(app.conf))
    plan = plan_batches(
        template,
        recipients,
        job_key=job_key,
        max_messages=max_messages,
        max_bytes=max_task_bytes,
    )
    job = job_id(job_key)
    store.reset(job)
    failures: list[dict[str, Any]] = []
    omitted = 0
    options = dict(apply_options)
    if queue is not None:
        options["queue"] = queue

    def totals(done: bool) -> dict[str, int | str]:
        stats = plan.stats
        return {
            "job_key": job_key,
            "recipients": stats.recipients,
            "invalid": stats.failures,
            "duplicates_dropped": stats.duplicates_dropped,
            "plan_failures": json.dumps(failures),
            "plan_failures_omitted": omitted,
            "planning_done": int(done),
        }

    published = 0
    for item in plan:
        if isinstance(item, RecipientFailure):
            if len(failures) < DEFAULT_MAX_FAILURES:
                failures.append(
                    {
                        "position": item.position,
                        "email": item.email,
                        "code": item.code,
                        "message": item.reason,
                    }
                )
            else:
                omitted += 1
            continue
        if isinstance(item, Duplicate) or not isinstance(item, PlannedBatch):
            continue  # counted in plan.stats
        # Counted before it is published: a counter never lags behind a batch
        # a worker might already have finished.
        store.plan_batch(job, item.idempotency_key, len(item))
        app.send_task(
            SEND_BATCH,
            args=[list(item.messages), item.idempotency_key],
            kwargs={"bulk_job": job},
            task_id=batch_task_id(item.idempotency_key),
            serializer="json",
            **options,
        )
        published += 1
        if published % _TOTALS_EVERY == 0:
            store.set_plan(job, totals(False))
    store.set_plan(job, totals(True))
    return BulkJob(app, job_key)
