"""A daily report mailed by Celery beat through the sendmux task pack: each period sends once.

Beat publishes ``reports.send_daily_report`` every morning; the task builds
yesterday's numbers and hands the list to ``sendmux_celery.send_bulk`` under
the job key ``daily-report/<day>``. The period is in the key, so a second
run for the same day (a beat restarted on a second host, a redelivered task,
someone running it by hand) replays the same batches: nobody gets the report
twice, and the next day is a new job.

Run it (the worker with an embedded beat; both read this module):

    export CELERY_BROKER_URL=amqp://guest:guest@localhost:5672//
    export CELERY_RESULT_BACKEND=redis://localhost:6379/1
    export SENDMUX_API_KEY=smx_...   # the pack's fallback: never a task argument
    celery --workdir examples/celery -A periodic_report worker -B --loglevel INFO

``REPORT_EVERY`` (seconds) replaces the daily schedule, to watch it fire;
``SENDMUX_SENDING_URL``/``SENDMUX_MANAGEMENT_URL`` point at a sandbox;
``REPORT_RECIPIENTS`` is a comma-separated list.
"""

from __future__ import annotations

import datetime as dt
import os
from typing import Any

from celery import Celery
from celery.schedules import crontab

import sendmux_celery

QUEUE = os.environ.get("REPORT_QUEUE", "mail")
RECIPIENTS = os.environ.get("REPORT_RECIPIENTS", "ceo@example.com,cfo@example.com,ops@example.com")
EVERY = os.environ.get("REPORT_EVERY")

app = Celery("periodic_report")
app.conf.update(
    broker_url=os.environ.get("CELERY_BROKER_URL", "amqp://guest:guest@localhost:5672//"),
    result_backend=os.environ.get("CELERY_RESULT_BACKEND", "redis://localhost:6379/1"),
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    worker_prefetch_multiplier=1,
    task_default_queue=QUEUE,  # the report task and the pack's batches alike
    timezone="UTC",
    sendmux_sending_url=os.environ.get("SENDMUX_SENDING_URL"),
    sendmux_management_url=os.environ.get("SENDMUX_MANAGEMENT_URL"),
    sendmux_pacer_url=os.environ.get("SENDMUX_PACER_URL"),
    sendmux_ledger_url=os.environ.get("SENDMUX_LEDGER_URL"),
    beat_schedule={
        "daily-report": {
            "task": "reports.send_daily_report",
            # 07:00 UTC, about the day before; REPORT_EVERY to see it fire.
            "schedule": float(EVERY) if EVERY else crontab(minute="0", hour="7"),
        }
    },
)
sendmux_celery.register(app)

TEMPLATE = {
    "from": {"email": "reports@example.com", "name": "Reports"},
    "subject": "Daily report for {{ day }}",
    "text_body": (
        "Good morning {{ name }},\n\n"
        "{% for region, orders in rows %}{{ region }}: {{ orders }} orders\n{% endfor %}"
    ),
}


def report_day(now: dt.datetime) -> str:
    """The period a run at ``now`` reports on: the day before, in UTC."""
    return (now.astimezone(dt.timezone.utc) - dt.timedelta(days=1)).date().isoformat()


def build_rows(day: str) -> list[list[Any]]:
    """The report's numbers for ``day`` (a real task would query its database here)."""
    return [["north", 120], ["south", 87]]


@app.task(name="reports.send_daily_report", acks_late=True)  # type: ignore[untyped-decorator]
def send_daily_report() -> dict[str, Any]:
    day = report_day(dt.datetime.now(dt.timezone.utc))
    rows = build_rows(day)
    recipients = (
        {"email": email.strip(), "name": email.split("@")[0], "day": day, "rows": rows}
        for email in RECIPIENTS.split(",")
    )
    # The period in the key: every run for this day is the same job (replays, not resends).
    job = sendmux_celery.send_bulk(app, TEMPLATE, recipients, job_key=f"daily-report/{day}")
    progress = job.progress()
    return {"job_key": job.job_key, "batches": progress.batches, "messages": progress.messages}
