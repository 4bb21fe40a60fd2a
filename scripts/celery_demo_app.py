"""The Celery app of `make demo`'s worker (``celery -A celery_demo_app worker``).

Configured from the environment scripts/celery_demo.py gives it: the broker
and result backend (kombu's filesystem transport and SQLite by default, or
the local RabbitMQ and Redis), the sandbox's URLs, and the key through
``SENDMUX_API_KEY``, the pack's documented fallback.
"""

from __future__ import annotations

import json
import os

from celery import Celery

import sendmux_celery

app = Celery("sendmux_demo")
app.conf.update(
    broker_url=os.environ["SENDMUX_DEMO_BROKER"],
    broker_transport_options=json.loads(os.environ.get("SENDMUX_DEMO_TRANSPORT", "{}")),
    result_backend=os.environ["SENDMUX_DEMO_BACKEND"],
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
    sendmux_sending_url=os.environ["SENDMUX_DEMO_SENDING_URL"],
    sendmux_management_url=os.environ["SENDMUX_DEMO_MANAGEMENT_URL"],
    sendmux_pacer_url=os.environ.get("SENDMUX_DEMO_PACER") or None,
)
# The bulk task on a queue of its own: it holds a pool slot while its batches run.
sendmux_celery.register(app, queue="demo-mail", bulk_queue="demo-bulk")
