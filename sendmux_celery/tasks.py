"""The pack's tasks as shared tasks, for apps that find their tasks by autodiscovery.

``app.autodiscover_tasks(["sendmux_celery"])`` imports this module, and every
app then has ``sendmux.send_email`` and ``sendmux.send_batch`` with the
default options. Use :func:`sendmux_celery.register` instead to choose a queue
or the retry policy (not both on one app). Settings come from ``app.conf``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from celery import shared_task

from sendmux_celery import _bodies, _bulk_file
from sendmux_celery._registry import SEND_BATCH, SEND_BULK_FILE, SEND_EMAIL
from sendmux_celery._results import BatchSummary
from sendmux_celery._task import SendmuxTask

__all__ = ["send_batch", "send_bulk_file", "send_email"]


@shared_task(name=SEND_EMAIL, base=SendmuxTask, bind=True)  # type: ignore[untyped-decorator]
def send_email(
    self: SendmuxTask, message: Mapping[str, Any], idempotency_key: str
) -> _bodies.EmailSummary:
    """Send one message (a dict in the API's wire shape) under ``idempotency_key``."""
    return _bodies.send_email(self, message, idempotency_key)


@shared_task(name=SEND_BATCH, base=SendmuxTask, bind=True)  # type: ignore[untyped-decorator]
def send_batch(
    self: SendmuxTask,
    messages: list[Mapping[str, Any]],
    idempotency_key: str,
    bulk_job: str | None = None,
    job_key: str | None = None,
    digests: list[int] | None = None,
    recorded: list[int] | None = None,
) -> BatchSummary:
    """Send up to 100 messages as one batch under the batch's ``idempotency_key``."""
    return _bodies.send_batch(self, messages, idempotency_key, bulk_job, job_key, digests, recorded)


@shared_task(name=SEND_BULK_FILE, base=SendmuxTask, bind=True)  # type: ignore[untyped-decorator]
def send_bulk_file(
    self: SendmuxTask,
    path: str,
    template: Mapping[str, Any],
    job_key: str,
    file_format: str | None = None,
    max_messages: int = 100,
    max_task_bytes: int | None = None,
    timeout: float | None = None,
    reader_options: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Send a template to everyone in a recipient file (CSV or JSON Lines) as a bulk job."""
    return _bulk_file.send_bulk_file(
        self,
        path,
        template,
        job_key,
        file_format=file_format,
        max_messages=max_messages,
        max_task_bytes=max_task_bytes,
        timeout=timeout,
        reader_options=reader_options,
    )
