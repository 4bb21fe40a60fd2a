"""The Celery app both contenders of bench_celery.py run on (``celery -A celery_bench_app``).

The pack's tasks (``sendmux_celery.register``), and what a Celery user writes
without the pack: ``bench.naive_send``, one task per recipient calling the
official SDK (``sendmux-sending``), late acks so a killed worker's tasks are
delivered again, Celery's ``autoretry_for`` with exponential backoff for 429s
and 5xx, no pacer and no idempotency key (the SDK's is optional). Configured
from the environment bench_celery.py gives the worker.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery

import sendmux_celery

app = Celery("sendmux_bench")
app.conf.update(
    broker_url=os.environ["SENDMUX_BENCH_BROKER"],
    result_backend=os.environ["SENDMUX_BENCH_BACKEND"],
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
    sendmux_sending_url=os.environ["SENDMUX_BENCH_SENDING_URL"],
    sendmux_management_url=os.environ["SENDMUX_BENCH_MANAGEMENT_URL"],
    sendmux_pacer_url=os.environ["SENDMUX_BENCH_BACKEND"],
    sendmux_pacer_limit=int(os.environ["SENDMUX_BENCH_LIMIT"]),
    sendmux_pacer_window=float(os.environ["SENDMUX_BENCH_WINDOW"]),
)
sendmux_celery.register(app, queue=os.environ["SENDMUX_BENCH_QUEUE"])

_api: Any = None


def _emails_api() -> Any:
    """One SDK client per pool process, made on first use (after the fork)."""
    global _api
    if _api is None:
        from sendmux_sending import EmailsApi
        from sendmux_sending.client import create_sending_client

        client = create_sending_client(
            api_key=os.environ["SENDMUX_API_KEY"], base_url=os.environ["SENDMUX_BENCH_SENDING_URL"]
        )
        _api = EmailsApi(client)
    return _api


def _retryable() -> tuple[type[BaseException], ...]:
    from sendmux_core.errors import SendmuxApiError
    from urllib3.exceptions import HTTPError

    return (SendmuxApiError, HTTPError)


@app.task(  # type: ignore[untyped-decorator]
    name="bench.naive_send",
    acks_late=True,
    autoretry_for=_retryable(),
    retry_backoff=True,
    # Scaled with the window, as the limit is (Celery's default cap is 600 s).
    retry_backoff_max=int(float(os.environ["SENDMUX_BENCH_WINDOW"])),
    retry_jitter=True,
    max_retries=30,
)
def naive_send(message: dict[str, Any]) -> str:
    from sendmux_sending import EmailSendRequest

    response = _emails_api().sending_send_email(EmailSendRequest.from_dict(message))
    return str(response.data.message_id)
