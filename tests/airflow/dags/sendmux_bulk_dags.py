"""DAGs for tests/airflow/test_airflow_bulk_send.py (the dags folder of the tests' AIRFLOW_HOME).

Files to read come in as DAG params (``dag.test(run_conf=...)``), so each test
writes its own lists under its tmp_path.
"""

from __future__ import annotations

import datetime as dt
import os
from typing import Any

from airflow.sdk import DAG, task

from sendmux_airflow import SendmuxBulkSendOperator
from sendmux_sandbox.admin_client import SandboxAdmin

START = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)


def clear_sandbox_faults(context: Any) -> None:
    with SandboxAdmin(os.environ["SENDMUX_TEST_SANDBOX_URL"]) as admin:
        admin.set_faults()


with DAG(
    "sendmux_bulk_csv_test",
    schedule=None,
    start_date=START,
    params={"file": "", "issue": "7"},
) as csv_dag:
    SendmuxBulkSendOperator(
        task_id="send",
        recipients_file="{{ params.file }}",
        # The per-recipient template: the core renders it for each row, Airflow never does.
        subject="Hello {{ name }}, your code is {{ code }} (issue {{ issue }})",
        html_body="bulk_letter.html",
        text_body="Dear {{ name }}, your code is {{ code }}.",
        custom_headers={"X-Code": "{{ code }}"},
        variables={"issue": "{{ params.issue }}"},  # Airflow's values go in here
        delivery_group="dgrp_news-{{ params.issue }}",
    )

with DAG(
    "sendmux_bulk_sources_test",
    schedule=None,
    start_date=START,
    params={"jsonl": ""},
    render_template_as_native_obj=True,
) as sources_dag:

    @task
    def build() -> list[dict[str, Any]]:
        return [{"email": f"xcom{i}@example.com", "name": f"X{i}"} for i in range(3)]

    from_xcom = SendmuxBulkSendOperator(
        task_id="from_xcom",
        recipients="{{ ti.xcom_pull('build') }}",
        subject="Hi {{ name }}",
        text_body="Hello",
    )
    build() >> from_xcom
    SendmuxBulkSendOperator(
        task_id="from_list",
        recipients=["plain@example.com", {"email": "dict@example.com", "team": "blue"}],
        subject="Team {{ team | default('none') }}",
        text_body="Hello",
    )
    SendmuxBulkSendOperator(
        task_id="from_jsonl",
        recipients_file="file://{{ params.jsonl }}",
        email_column="address",
        subject="Order {{ order }} for {{ name }}",
        text_body="Thanks",
    )
    SendmuxBulkSendOperator.partial(
        task_id="mapped", subject="Batch for {{ email }}", text_body="Hello"
    ).expand(recipients=[["m0@example.com"], ["m1@example.com", "m2@example.com"]])

with DAG(
    "sendmux_bulk_bad_test",
    schedule=None,
    start_date=START,
    params={"csv": "", "jsonl": "", "missing": ""},
) as bad_dag:
    SendmuxBulkSendOperator(
        task_id="bad_column",
        recipients_file="{{ params.csv }}",
        email_column="mail",
        subject="Hi",
        text_body="Hello",
    )
    SendmuxBulkSendOperator(
        task_id="bad_key",
        recipients_file="{{ params.jsonl }}",
        file_format="jsonl",
        subject="Hi",
        text_body="Hello",
    )
    SendmuxBulkSendOperator(
        task_id="missing_file",
        recipients_file="{{ params.missing }}",
        subject="Hi",
        text_body="Hello",
    )
    SendmuxBulkSendOperator(
        task_id="airflow_name",
        recipients=["ann@example.com"],
        subject="Report for {{ ds }} ({{ run_id }})",
        text_body="Hello",
    )
    SendmuxBulkSendOperator(
        task_id="missing_html",
        recipients=["ann@example.com"],
        subject="Hi",
        html_body="no_such_letter.html",
    )

with DAG(
    "sendmux_bulk_retry_test", schedule=None, start_date=START, params={"file": ""}
) as retry_dag:
    SendmuxBulkSendOperator(
        task_id="send",
        recipients_file="{{ params.file }}",
        subject="Hi {{ name }}",
        text_body="Hello",
        retries=1,
        retry_delay=dt.timedelta(seconds=0),
        on_retry_callback=clear_sandbox_faults,
    )
