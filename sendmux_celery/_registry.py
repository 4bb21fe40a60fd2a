"""register(app): the pack's tasks on a user's Celery app, with their options."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from sendmux_celery import _bodies
from sendmux_celery._results import BatchSummary
from sendmux_celery._task import SendmuxTask, check_task_policy
from sendmux_dispatch.retry import RetryPolicy

__all__ = ["SEND_BATCH", "SEND_EMAIL", "RegisteredTasks", "batch_task_id", "register"]

SEND_EMAIL = "sendmux.send_email"
SEND_BATCH = "sendmux.send_batch"

# Options that would break the guarantees if a caller turned them off.
_FIXED = {"acks_late", "reject_on_worker_lost", "serializer", "bind", "base", "name"}


class RegisteredTasks(NamedTuple):
    """The tasks :func:`register` made (Celery task objects: ``.delay``, ``.apply_async``)."""

    send_email: Any
    send_batch: Any


def batch_task_id(idempotency_key: str) -> str:
    """A deterministic task id for the batch with this key (its result is found again)."""
    return f"sendmux-batch-{idempotency_key}"


def _route(app: Any, queue: str) -> None:
    # A route, not the task's ``queue`` attribute (deprecated in Celery 5.x,
    # gone in 6). Ours go first; the app's own routes still apply to the rest.
    ours = {SEND_EMAIL: {"queue": queue}, SEND_BATCH: {"queue": queue}}
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
    retry_policy: RetryPolicy | None = None,
    **task_options: Any,
) -> RegisteredTasks:
    """Register ``sendmux.send_email`` and ``sendmux.send_batch`` on ``app``.

    ``queue``: the queue they are routed to (added to ``app.conf.task_routes``;
    Celery's default queue if none);
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
    if queue is not None:
        _route(app, queue)

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

    made = []
    for name, fun in ((SEND_EMAIL, send_email), (SEND_BATCH, send_batch)):
        fun.__doc__ = getattr(_bodies, fun.__name__).__doc__
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
