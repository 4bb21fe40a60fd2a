"""What ``sendmux.send_bulk_file`` does: a recipient file streamed into batch tasks, from a worker.

The same flow as :func:`~sendmux_celery.send_bulk` on a producer (it calls
it): the file is read once, lazily, with the core's readers, and each batch
becomes a ``sendmux.send_batch`` task. The task then waits for the batches'
verdicts, reporting Celery state ``PROGRESS`` on the way, and returns the
merged report as a dict. It holds one pool slot while it waits: the batches
need others (concurrency of 2 or more, or the bulk task on a queue of its own).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from sendmux_celery._job import BulkJob, BulkProgress
from sendmux_celery._producer import DEFAULT_TASK_BYTES, send_bulk
from sendmux_celery._task import SendmuxTask
from sendmux_dispatch.errors import SendmuxError
from sendmux_dispatch.personalize import Personalizer
from sendmux_dispatch.recipients import Recipient, RecipientFailure, read_csv, read_jsonl
from sendmux_dispatch.recipients import file_format as recipient_file_format

__all__ = ["FORMATS", "PROGRESS", "BulkFileError", "send_bulk_file"]

#: The Celery state the task reports while it enqueues and waits.
PROGRESS = "PROGRESS"
#: ``format=`` values; ``None`` picks by the file's suffix (``.jsonl``/``.ndjson``, else CSV).
FORMATS = ("csv", "jsonl")
#: Seconds between two PROGRESS updates (each one result-backend write).
_EVERY = 0.5


class BulkFileError(ValueError):
    """The bulk task could not start or go on: bad arguments, an unreadable file, no progress store.

    One string argument, so that it comes back whole from a JSON result
    backend (``result.get()`` raises it); the message names the field and the fix.
    """


def _issue(field: str, message: str) -> BulkFileError:
    return BulkFileError(f"sendmux.send_bulk_file: {field} {message}")


def _reader(
    path: str, file_format: str | None, options: Mapping[str, str]
) -> Iterator[Recipient | RecipientFailure]:
    source = Path(path)
    chosen = file_format
    if chosen is None:
        chosen = "jsonl" if recipient_file_format(source) == "jsonl" else "csv"
    encoding = options.get("encoding", "utf-8")
    if chosen == "jsonl":
        return read_jsonl(source, encoding=encoding)
    return read_csv(
        source,
        email_column=options.get("email_column", "email"),
        name_column=options.get("name_column", "name"),
        encoding=encoding,
    )


def _check(path: object, template: object, job_key: object, file_format: object) -> None:
    """Bad arguments fail the task before anything is read or sent, naming the field."""
    if not isinstance(path, str) or not path:
        raise _issue("path", "must be the recipient file's path, as the worker sees it")
    if not Path(path).is_file():
        raise _issue(
            "path",
            f"{path!r} is not a file on this worker: put the list where every worker "
            "that may run the task can read it (a shared volume)",
        )
    if not isinstance(job_key, str) or not job_key:
        raise _issue("job_key", "is required: the work's name, the same for every re-run")
    if file_format is not None and file_format not in FORMATS:
        raise _issue("format", f"must be one of {', '.join(FORMATS)} or None, got {file_format!r}")
    if not isinstance(template, Mapping):
        raise _issue("template", "must be a JSON object: the message with {{ placeholders }}")
    Personalizer(template)  # raises InvalidMessageError naming the template's field


def _meta(job_key: str, stage: str, read: int, progress: BulkProgress | None) -> dict[str, Any]:
    meta: dict[str, Any] = {"job_key": job_key, "stage": stage, "read": read}
    if progress is not None:
        meta.update(dataclasses.asdict(progress), in_flight=progress.in_flight)
    return meta


def send_bulk_file(
    task: SendmuxTask,
    path: str,
    template: Mapping[str, Any],
    job_key: str,
    *,
    file_format: str | None = None,
    max_messages: int = 100,
    max_task_bytes: int | None = None,
    timeout: float | None = None,
    reader_options: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Send ``template`` to everyone in the file at ``path`` as a bulk job; the report dict.

    ``path``: a CSV (header row, ``email``/``name`` columns, every other
    column a template variable) or JSON Lines file the worker can read;
    ``template``: the message (wire shape, ``{{ placeholders }}``); ``job_key``:
    the work (a re-run with the same key replays the same batches: nobody is
    mailed twice). Batches go where ``sendmux.send_batch`` is routed. Reports
    Celery state ``PROGRESS`` with ``meta`` = the job's counters
    (:class:`~sendmux_celery.BulkProgress` fields, ``in_flight``, ``stage``:
    ``enqueueing`` then ``sending``, ``read``: records read from the file).
    ``timeout``: seconds to wait for the verdicts (none by default);
    TimeoutError after that, the batches go on.
    """
    try:
        return _run(
            task,
            path,
            template,
            job_key,
            file_format,
            max_messages,
            max_task_bytes,
            timeout,
            reader_options,
        )
    except SendmuxError as error:
        # The core's errors carry structured fields a JSON backend cannot rebuild.
        raise BulkFileError(str(error)) from None


def _run(
    task: SendmuxTask,
    path: str,
    template: Mapping[str, Any],
    job_key: str,
    file_format: str | None,
    max_messages: int,
    max_task_bytes: int | None,
    timeout: float | None,
    reader_options: Mapping[str, str] | None,
) -> dict[str, Any]:
    _check(path, template, job_key, file_format)
    job = BulkJob(task.app, job_key)
    read = 0
    last = 0.0

    def report(stage: str, *, force: bool = False) -> BulkProgress | None:
        nonlocal last
        now = time.monotonic()
        if not force and now - last < _EVERY:
            return None
        last = now
        progress = job.progress() if stage != "opening" else None
        task.update_state(state=PROGRESS, meta=_meta(job_key, stage, read, progress))
        return progress

    def counted(source: Iterator[Recipient | RecipientFailure]) -> Iterator[object]:
        nonlocal read
        for item in source:
            read += 1
            report("enqueueing")
            yield item

    report("opening", force=True)
    send_bulk(
        task.app,
        template,
        counted(_reader(path, file_format, reader_options or {})),
        job_key=job_key,
        max_messages=max_messages,
        max_task_bytes=DEFAULT_TASK_BYTES if max_task_bytes is None else max_task_bytes,
    )
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        progress = report("sending", force=True)
        if progress is not None and progress.done:
            break
        if deadline is not None and time.monotonic() >= deadline:
            job.wait(timeout=0)  # raises TimeoutError with the counts
        time.sleep(_EVERY)
    return job.report().as_dict()
