"""A daily report by email: build a small CSV, mail it as an attachment, wait for delivery.

The connection ``sendmux_default`` gives the API key, the sending URL and the
default sender (its ``from_email`` extra); ``make demo`` points it at the
local sandbox through ``AIRFLOW_CONN_SENDMUX_DEFAULT``. Recipients are a DAG
param, so a manual run can send to someone else; a failed task alerts the
on-call address through SendmuxNotifier.

The report file is written where the next task can read it: fine on one
machine (the demo, a LocalExecutor); on Celery or Kubernetes workers point
``SENDMUX_REPORT_DIR`` at storage every worker mounts.
"""

from __future__ import annotations

import csv
import datetime as dt
import os
import tempfile
from pathlib import Path

from airflow.sdk import DAG, task

from sendmux_airflow import SendmuxDeliverySensor, SendmuxNotifier, SendmuxSendEmailOperator

REPORT_DIR = Path(os.environ.get("SENDMUX_REPORT_DIR", tempfile.gettempdir()))

with DAG(
    "sendmux_scheduled_report",
    schedule="@daily",
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc),
    catchup=False,
    params={"recipients": ["ceo@example.com", "cfo@example.com", "ops@example.com"]},
    tags=["sendmux", "example"],
    # Any task that fails (after its retries) mails the on-call list once.
    default_args={
        "on_failure_callback": SendmuxNotifier(
            to="oncall@example.com",
            subject="{{ dag.dag_id }}.{{ ti.task_id }} failed for {{ ds }}",
        )
    },
) as dag:

    @task
    def build_report(ds: str | None = None) -> str:
        """Yesterday's numbers as CSV; returns the file's path (a small XCom)."""
        rows = [("region", "orders", "revenue"), ("north", 120, 5400), ("south", 87, 3915)]
        path = REPORT_DIR / f"sendmux-report-{ds}.csv"
        with path.open("w", newline="", encoding="utf-8") as file:
            csv.writer(file).writerows(rows)
        return str(path)

    report = build_report()

    send = SendmuxSendEmailOperator(
        task_id="send_report",
        to="{{ params.recipients | join(',') }}",
        subject="Daily report for {{ ds }}",
        html_body="<p>Good morning. The report for {{ ds }} is attached.</p>",
        text_body="Good morning. The report for {{ ds }} is attached.",
        files="{{ ti.xcom_pull(task_ids='build_report') }}",
    )
    # Wait for the delivery logs to settle; in the triggerer, not a worker slot.
    delivered = SendmuxDeliverySensor(
        task_id="wait_for_delivery",
        message_ids=send.output["message_ids"],
        deferrable=True,
        poke_interval=5,
        timeout=3600,
        policy="fail",
    )
    report >> send >> delivered
