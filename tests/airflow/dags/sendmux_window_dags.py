"""The delivery sensor's bulk path: a send's window counted by status (tests/airflow)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from airflow.sdk import DAG, task

from sendmux_airflow import SendmuxDeliverySensor, SendmuxHook
from sendmux_dispatch import dispatch

START = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
#: Messages in the send; every 50th fails, every 40th bounces (the sandbox's +tags).
MESSAGES = 250


def _address(i: int) -> str:
    tag = "+fail" if i % 50 == 7 else "+reject" if i % 40 == 3 else ""
    return f"reader{i}{tag}@example.com"


with DAG("sendmux_delivery_window_test", schedule=None, start_date=START) as window_dag:

    @task
    def send() -> dict[str, Any]:
        # What a bulk send hands the sensor: its window, not 250 message ids.
        hook = SendmuxHook()
        started = dt.datetime.now(dt.timezone.utc)
        report = dispatch(
            hook.get_client(),
            {"from": "news@example.com", "subject": "Window", "text_body": "Hello"},
            [_address(i) for i in range(MESSAGES)],
            job_key="window-test",
        )
        hook.close()
        return {
            "from_date": started.isoformat(),
            "to_date": dt.datetime.now(dt.timezone.utc).isoformat(),
            "messages": report.queued,
            "from_email": "news@example.com",
            "delivery_group": None,
        }

    @task
    def other_sender() -> None:
        # Another sender in the same window: the sensor must not count it.
        hook = SendmuxHook()
        dispatch(
            hook.get_client(),
            {"from": "billing@example.com", "subject": "Invoice", "text_body": "Hi"},
            [f"payer{i}@example.com" for i in range(30)],
            job_key="window-test-other",
        )
        hook.close()

    window = send()
    other_sender() >> window
    for name, extra in {
        "reschedule": {"mode": "reschedule"},
        "deferred": {"deferrable": True},
    }.items():
        SendmuxDeliverySensor(
            task_id=f"wait_{name}",
            send_window=window,
            policy="ignore",
            poke_interval=0.5,
            timeout=90,
            **extra,
        )
