"""The Celery app the worker subprocesses of test_celery_tasks.py run (``celery -A ...``).

Configured from the environment the test gives the worker: broker, result
backend, queue and the sandbox's URL. The API key comes from SENDMUX_API_KEY,
the pack's documented fallback, so it is in no argument and no app setting.
"""

from __future__ import annotations

import os
import signal
import threading
import time

from celery import Celery
from celery.signals import worker_init

import sendmux_celery
from sendmux_dispatch import RetryPolicy

app = Celery("sendmux_test_worker")
app.conf.update(
    broker_url=os.environ.get("SENDMUX_CELERY_BROKER", "memory://"),
    result_backend=os.environ.get("SENDMUX_CELERY_BACKEND", "cache+memory://"),
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
    broker_transport_options={
        "visibility_timeout": float(os.environ.get("SENDMUX_CELERY_VISIBILITY", "3600")),
        # Redis: kombu sweeps a dead worker's unacked messages back every
        # interval x throttle seconds (10 x 10 by default); the fault tests
        # set a short interval so their visibility timeout is what counts.
        **(
            {"unacked_restore_interval": int(restore), "unacked_restore_throttle": 1}
            if (restore := os.environ.get("SENDMUX_CELERY_RESTORE_INTERVAL"))
            else {}
        ),
    },
    sendmux_sending_url=os.environ.get("SENDMUX_CELERY_SENDING_URL"),
    sendmux_management_url=os.environ.get("SENDMUX_CELERY_MANAGEMENT_URL"),
    sendmux_pacer_url=os.environ.get("SENDMUX_CELERY_PACER") or None,
    # The pacing test scales the API's 1,800 per 60 s down to the sandbox's limit.
    sendmux_pacer_limit=int(os.environ.get("SENDMUX_CELERY_PACER_LIMIT", "1800")),
    sendmux_pacer_window=float(os.environ.get("SENDMUX_CELERY_PACER_WINDOW", "60")),
    sendmux_ledger_url=os.environ.get("SENDMUX_CELERY_LEDGER") or None,
    sendmux_request_attempts=int(os.environ.get("SENDMUX_CELERY_ATTEMPTS", "3")),
    sendmux_timeout=float(os.environ.get("SENDMUX_CELERY_TIMEOUT", "10")),
)
sendmux_celery.register(
    app,
    queue=os.environ.get("SENDMUX_CELERY_QUEUE", "celery"),
    retry_policy=RetryPolicy(
        max_attempts=int(os.environ.get("SENDMUX_CELERY_TASK_ATTEMPTS", "4")),
        initial_delay=0.5,
        max_delay=2.0,
        deadline=float(os.environ.get("SENDMUX_CELERY_TASK_DEADLINE", "120")),
        max_retry_after=60.0,
    ),
)


def _watchdog(**_: object) -> None:
    # A worker the test forgot (or a test killed half-way) must not live on:
    # warm shutdown after SENDMUX_CELERY_MAX_SECONDS, then the whole group.
    limit = float(os.environ.get("SENDMUX_CELERY_MAX_SECONDS", "180"))

    def run() -> None:
        time.sleep(limit)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(10)
        os.killpg(os.getpgid(0), signal.SIGKILL)

    threading.Thread(target=run, name="test-worker-watchdog", daemon=True).start()


worker_init.connect(_watchdog, weak=False)
