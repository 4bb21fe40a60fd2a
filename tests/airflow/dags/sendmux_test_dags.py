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

from sendmux_airflow import SendmuxDeliverySensor, SendmuxNotifier, SendmuxSendEmailOperator
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
        reply_to="finance@example.com",
        return_path="bounces@example.com",
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

with DAG("sendmux_delivery_test", schedule=None, start_date=START) as delivery_dag:
    # One send per mode, each sensor right after its send (a chain), so every
    # sensor starts while its messages are still pending. A rejected message
    # only warns, or is counted.
    modes: dict[str, dict[str, Any]] = {
        "poke": {"mode": "poke", "policy": "warn"},
        "reschedule": {"mode": "reschedule", "policy": "warn"},
        "deferred": {"deferrable": True, "policy": "ignore"},
    }
    previous: Any = None
    for name, extra in modes.items():
        sent = SendmuxSendEmailOperator(
            task_id=f"send_{name}",
            to=[f"ann.{name}@example.com", f"bob.{name}@example.com", f"dan+reject@{name}.com"],
            subject="Delivery",
            text_body="Hello",
            max_failure_ratio=1.0,
        )
        wait = SendmuxDeliverySensor(
            task_id=f"wait_{name}",
            message_ids=sent.output["message_ids"],
            poke_interval=0.5,
            timeout=60,
            **extra,
        )
        if previous is not None:
            previous >> sent
        sent >> wait
        previous = wait

with DAG("sendmux_delivery_fail_test", schedule=None, start_date=START) as delivery_fail_dag:
    SendmuxDeliverySensor(
        task_id="wait",
        # rendered from the XCom as a string, the form a Jinja template gives
        message_ids="{{ ti.xcom_pull(task_ids='send', key='message_ids') }}",
        policy="fail",
        deferrable=True,
        poke_interval=1,
        timeout=60,
        retries=2,
    ).set_upstream(
        SendmuxSendEmailOperator(
            task_id="send",
            to=["ann@example.com", "eve+fail@example.com"],
            subject="Delivery",
            text_body="Hello",
        )
    )
