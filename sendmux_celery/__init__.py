"""Celery task pack for Sendmux: batches that survive killed workers and redelivery.

``send_bulk(app, template, recipients, job_key=...)`` streams a recipient
list into batch tasks and returns a ``BulkJob`` (progress in Redis counters).
``register(app)`` puts ``sendmux.send_email``, ``sendmux.send_batch`` and
``sendmux.send_bulk_file`` (a recipient file streamed from inside a worker) on a
Celery app; ``sendmux_celery.tasks`` holds the same as shared tasks for
autodiscovery (not imported here, so importing the package registers nothing).
Only ``sendmux_dispatch`` speaks HTTP. See docs/celery.md.
"""

from sendmux_celery._bodies import EmailSummary
from sendmux_celery._bulk_file import PROGRESS, BulkFileError
from sendmux_celery._job import BulkJob, BulkProgress
from sendmux_celery._process import close_clients, worker_client
from sendmux_celery._producer import (
    DEFAULT_PUBLISH_RETRY,
    DEFAULT_TASK_BYTES,
    BrokerUnavailableError,
    send_bulk,
)
from sendmux_celery._progress import PROGRESS_TTL_SECONDS, job_id
from sendmux_celery._registry import (
    SEND_BATCH,
    SEND_BULK_FILE,
    SEND_EMAIL,
    RegisteredTasks,
    batch_task_id,
    register,
)
from sendmux_celery._results import BatchSummary, ErrorInfo, FailureInfo
from sendmux_celery._settings import API_KEY_ENV, SendmuxSettings, SettingsError
from sendmux_celery._stop import JobStoppedError
from sendmux_celery._task import (
    DEFAULT_TASK_RETRY,
    MAX_COUNTDOWN,
    MAX_RETRY_DEADLINE,
    SendmuxTask,
)

__all__ = [
    "API_KEY_ENV",
    "DEFAULT_PUBLISH_RETRY",
    "DEFAULT_TASK_BYTES",
    "DEFAULT_TASK_RETRY",
    "MAX_COUNTDOWN",
    "MAX_RETRY_DEADLINE",
    "PROGRESS",
    "PROGRESS_TTL_SECONDS",
    "SEND_BATCH",
    "SEND_BULK_FILE",
    "SEND_EMAIL",
    "BatchSummary",
    "BrokerUnavailableError",
    "BulkFileError",
    "BulkJob",
    "BulkProgress",
    "EmailSummary",
    "ErrorInfo",
    "FailureInfo",
    "JobStoppedError",
    "RegisteredTasks",
    "SendmuxSettings",
    "SendmuxTask",
    "SettingsError",
    "batch_task_id",
    "close_clients",
    "job_id",
    "register",
    "send_bulk",
    "worker_client",
]
