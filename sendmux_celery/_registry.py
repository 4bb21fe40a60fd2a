"""register(app): the pack's tasks on a user's Celery app, with their options."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from sendmux_celery import _bodies
from sendmux_celery._results import BatchSummary
from sendmux_celery._task import SendmuxTask, check_task_policy
from sendmux_dispatch.retry import RetryPolicy

__all__ = [
    "SEND_BATCH",
    "SEND_BULK_FILE",
    "SEND_EMAIL",
    "RegisteredTasks",
    "batch_task_id",
    "register",
]

SEND_EMAIL = "sendmux.send_email"
SEND_BATCH = "sendmux.send_batch"
SEND_BULK_FILE = "sendmux.send_bulk_file"

BULK_FILE_DOC = """Send a template to everyone in a recipient file (CSV or JSON Lines).

Streams the file into ``sendmux.send_batch`` tasks as ``send_bulk`` does,
reports state ``PROGRESS`` (meta: the job's counters) and returns the merged
report as a dict. See docs/celery.md, "Bulk sends from a worker".
"""

# Options that would break the guarantees if a caller turned them off.
_FIXED = {"acks_late", "reject_on_worker_lost", "serializer", "bind", "base", "name"}


class RegisteredTasks(NamedTuple):
    """The tasks :func:`register` made (Celery task objects: ``.delay``, ``.apply_async``)."""

    send_email: Any
    send_batch: Any
    send_bulk_file: Any


def batch_task_id(idempotency_key: str) -> str:
    """A deterministic task id for the batch with this key (its result is found again)."""
    return f"sendmux-batch-{idempotency_key}"


def _route(app: Any, ours: Mapping[str, Mapping[str, str]]) -> None:
    # A route, not the task's ``queue`` attribute (deprecated in Celery 5.x,
    # gone in 6). Ours go first; the app's own routes still apply to the rest.
    routes = app.conf.task_routes
    if routes is None:
        app.conf.task_routes = ours
    elif isinstance(routes, Mapping):
        app.conf.task_routes = {**routes, **ours}
    elif isinstance(routes, (list, tuple)):
        app.conf.task_routes = [ours, *routes]
    else:
        app.conf.task_routes = [ours, routes]


def register(
    app: Any,
    *,
    queue: str | None = None,
    bulk_queue: str | None = None,
    retry_policy: RetryPolicy | None = None,
    **task_options: Any,
) -> RegisteredTasks:
    """Register ``sendmux.send_email``, ``sendmux.send_batch`` and ``sendmux.send_bulk_file``.

    ``queue``: the queue they are routed to (added to ``app.conf.task_routes``;
    Celery's default queue if none); ``bulk_queue``: the queue of
    ``send_bulk_file`` alone (default ``queue``), whose task holds a pool slot
    while its batches run;
    ``retry_policy``: the task-level retries (:data:`DEFAULT_TASK_RETRY`), its
    ``deadline`` at most 12 h; other keywords are Celery task options
    (``time_limit``, ``soft_time_limit``, ``priority``, ``rate_limit``, ...).
    Settings are read from ``app.conf`` when a task runs, not here.
    Raises ValueError when the names are already registered on ``app``
    (twice, or alongside the shared tasks of ``sendmux_celery.tasks``).
    """
    fixed = sorted(_FIXED & set(task_options))
    if fixed:
        raise TypeError(
            f"register() does not take {', '.join(fixed)}: the tasks ack late, are redelivered "
            "when a worker dies and speak JSON, by design"
        )
    options: dict[str, Any] = dict(task_options)
    options["sendmux_retry_policy"] = check_task_policy(
        SendmuxTask.sendmux_retry_policy if retry_policy is None else retry_policy
    )
    routes = {name: queue for name in (SEND_EMAIL, SEND_BATCH, SEND_BULK_FILE)}
    if bulk_queue is not None:
        routes[SEND_BULK_FILE] = bulk_queue
    chosen = {name: {"queue": q} for name, q in routes.items() if q is not None}
    if chosen:
        _route(app, chosen)

    def send_email(
        self: SendmuxTask, message: Mapping[str, Any], idempotency_key: str
    ) -> _bodies.EmailSummary:
        return _bodies.send_email(self, message, idempotency_key)

    def send_batch(
        self: SendmuxTask,
        messages: list[Mapping[str, Any]],
        idempotency_key: str,
        bulk_job: str | None = None,
        job_key: str | None = None,
        digests: list[int] | None = None,
        recorded: list[int] | None = None,
    ) -> BatchSummary:
        return _bodies.send_batch(
            self, messages, idempotency_key, bulk_job, job_key, digests, recorded
        )

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
        from sendmux_celery import _bulk_file  # imports the producer, which imports this

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

    made = []
    for name, fun, doc in (
        (SEND_EMAIL, send_email, _bodies.send_email.__doc__),
        (SEND_BATCH, send_batch, _bodies.send_batch.__doc__),
        (SEND_BULK_FILE, send_bulk_file, BULK_FILE_DOC),
    ):
        fun.__doc__ = doc
        # lazy=False: made now, so the shared tasks (built when the app is
        # finalized) cannot silently take the name and drop these options;
        # shared=False: Celery would otherwise put them on every app of the process.
        task = app.task(
            name=name, base=SendmuxTask, bind=True, lazy=False, shared=False, **options
        )(fun)
        if type(task).__dict__.get("__wrapped__") is not fun:
            raise ValueError(
                f"{name} is already registered on this app (a second register() call, or the "
                "shared tasks of sendmux_celery.tasks): use one of the two"
            )
        made.append(task)
    return RegisteredTasks(*made)
