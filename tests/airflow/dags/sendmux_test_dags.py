"""DAGs for tests/airflow (the dags folder of the tests' AIRFLOW_HOME).

dag.test() on Airflow 3.3 runs a DAG the dags folder holds, so the tests'
DAGs live in a file; the sandbox's address comes from the environment.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Any

from airflow.sdk import DAG, task

from sendmux_airflow import SendmuxNotifier, SendmuxSendEmailOperator
from sendmux_sandbox.admin_client import SandboxAdmin

HERE = Path(__file__).parent
START = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)


def clear_sandbox_faults(context: Any) -> None:
    with SandboxAdmin(os.environ["SENDMUX_TEST_SANDBOX_URL"]) as admin:
        admin.set_faults()


with DAG(
    "sendmux_send_email_test",
    schedule=None,
    start_date=START,
    params={"total": 42, "boss": "cat@example.com"},
) as send_email_dag:
    SendmuxSendEmailOperator(
        task_id="send",
        # one string listing addresses (EmailOperator's habit): a templated one, a repeat
        to="ann@example.com, bob@example.com; {{ params.boss }}, ANN@example.com",
        # rendered by Airflow once; the literal braces must reach the inbox as written
        subject="Sales {{ ds }} {% raw %}{{ week }}{% endraw %}",
        html_body="report.html",
        files=[str(HERE / "sales.csv")],
        custom_headers={"X-Report": "sales"},
    )
    # Dynamic task mapping: each mapped instance is its own job (map_index in the key).
    SendmuxSendEmailOperator.partial(
        task_id="send_mapped", subject="Your share", text_body="Hello"
    ).expand(to=["dan@example.com", "eve@example.com"])

with DAG("sendmux_send_email_retry_test", schedule=None, start_date=START) as retry_dag:
    SendmuxSendEmailOperator(
        task_id="send",
        to=["ann@example.com", "bob@example.com", "cat@example.com"],
        subject="Nightly numbers",
        text_body="See attached.",
        retries=1,
        retry_delay=dt.timedelta(seconds=0),
        on_retry_callback=clear_sandbox_faults,
    )


def failure_alert() -> SendmuxNotifier:
    return SendmuxNotifier(
        to="oncall@example.com; {{ params.lead }}",
        subject="{{ ti.task_id }} failed in {{ dag.dag_id }}, try {{ ti.try_number }}",
        html_body="<p>{{ exception }}</p>",
    )


with DAG(
    "sendmux_alert_test", schedule=None, start_date=START, params={"lead": "lead@example.com"}
) as alert_dag:
    # The same alert twice on one event: a callback that fires twice must mail once.
    # email_on_failure goes through Airflow's [email] email_backend (set by the test).
    @task(
        on_failure_callback=[failure_alert(), failure_alert()],
        email=["alerts@example.com"],
        email_on_failure=True,
    )
    def load() -> None:
        raise RuntimeError("the warehouse is down")

    load()
