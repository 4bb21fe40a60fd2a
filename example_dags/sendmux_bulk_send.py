"""A personalised bulk send: one template, a CSV of subscribers, one task for the whole list.

The first task exports the subscribers as CSV (here a few made-up rows; in
production a warehouse query writing to object storage). The bulk task reads
the file one row at a time, whatever its length, and renders the template
for each row: ``{{ name }}``, ``{{ plan }}`` and ``{{ renews_on }}`` are the
file's columns. The subject, the bodies and the ``.html`` file are that
per-recipient template, which Airflow leaves alone; Airflow's own values
(``{{ ds }}``) reach it through ``variables``.

``recipients_file`` takes a local path or any object storage URL Airflow
knows (``s3://bucket/subscribers.csv`` with ``storage_conn_id="aws_default"``).
A local file works on one machine (the demo, a LocalExecutor); on Celery or
Kubernetes workers point ``SENDMUX_EXPORT_DIR`` at shared storage, or export
to object storage. The connection ``sendmux_default`` gives the API key and
the default sender (its ``from_email`` extra). The last task waits until the
messages have left: it counts the send's window of delivery logs by status.
"""

from __future__ import annotations

import csv
import datetime as dt
import os
import tempfile
from pathlib import Path

from airflow.sdk import DAG, task

from sendmux_airflow import SendmuxBulkSendOperator, SendmuxDeliverySensor

EXPORT_DIR = Path(os.environ.get("SENDMUX_EXPORT_DIR", tempfile.gettempdir()))

with DAG(
    "sendmux_bulk_send",
    schedule="@monthly",
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc),
    catchup=False,
    tags=["sendmux", "example"],
) as dag:

    @task
    def export_subscribers(ds: str | None = None) -> str:
        """The subscribers due for a renewal notice, as CSV; returns the file's path."""
        path = EXPORT_DIR / f"sendmux-subscribers-{ds}.csv"
        rows = [
            ("email", "name", "plan", "renews_on"),
            ("ann@example.com", "Ann", "pro", "2026-12-09"),
            ("bob@example.com", "Bob", "basic", "2026-12-14"),
            ("cat@example.com", "", "basic", "2026-12-20"),
        ]
        with path.open("w", newline="", encoding="utf-8") as file:
            csv.writer(file).writerows(rows)
        return str(path)

    send = SendmuxBulkSendOperator(
        task_id="send_renewal_notices",
        recipients_file=export_subscribers(),  # the path the task returned (an XCom)
        subject="{{ name or 'Hello' }}, your {{ plan }} plan renews on {{ renews_on }}",
        html_body="sendmux_bulk_welcome.html",  # beside this file, rendered per recipient
        text_body="Your {{ plan }} plan renews on {{ renews_on }}.",
        variables={"issue": "{{ ds }}"},
        # A handful of failed recipients in a long list should not fail the task.
        max_failure_ratio=0.01,
    )

    # Waits in the triggerer, counting the send's window by status (100 logs a
    # request, not one per message); a bounced address is logged, not fatal.
    send >> SendmuxDeliverySensor(
        task_id="wait_for_delivery",
        send_window=send.output["send_window"],
        policy="warn",
        deferrable=True,
        poke_interval=30,
        timeout=6 * 3600,
    )
