"""The two DAGs ``bench_airflow.py`` runs through ``airflow dags test``.

``sendmux_bench_bulk``: one ``SendmuxBulkSendOperator`` task over a CSV.
``sendmux_bench_mapped``: what Airflow users write without this provider, one
mapped task per recipient calling the official SDK (``sendmux-sending``),
the key read from a connection (``sendmux_sdk``, the sandbox's send-only
``smx_mbx_`` key: the SDK refuses others for sending).
Sizes and paths come from the environment the benchmark sets.
"""

from __future__ import annotations

import datetime as dt
import os

from airflow.sdk import DAG, BaseHook, task

from sendmux_airflow import SendmuxBulkSendOperator

START = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
MAPPED = int(os.environ.get("SENDMUX_BENCH_MAPPED", "1024"))

with DAG("sendmux_bench_bulk", schedule=None, start_date=START, catchup=False):
    SendmuxBulkSendOperator(
        task_id="bulk",
        recipients_file=os.environ.get("SENDMUX_BENCH_CSV", "/nonexistent.csv"),
        # Per recipient, by the core (the operator keeps these out of Airflow's rendering).
        subject="Your spring picks, {{ name }}",
        text_body="Hello {{ name }}, your spring picks are in.",
        concurrency=int(os.environ.get("SENDMUX_BENCH_CONCURRENCY", "8")),
    )


@task
def send_one(address: str) -> str:
    # The pattern this provider replaces: one task, one request, one message.
    from sendmux_sending import create_sending_client
    from sendmux_sending.api.emails_api import EmailsApi
    from sendmux_sending.models.email_send_request import EmailSendRequest

    conn = BaseHook.get_connection("sendmux_sdk")  # the SDK wants a smx_mbx_ key
    client = create_sending_client(api_key=conn.password, base_url=conn.host)
    request = EmailSendRequest.from_dict(
        {
            "from": {"email": "news@shop.example.com"},
            "to": {"email": address},
            "subject": "Your spring picks",
            "html_body": "<p>Hello, your spring picks are in.</p>",
            "text_body": "Hello, your spring picks are in.",
        }
    )
    answer = EmailsApi(client).sending_send_email(request)
    return str(answer.data.message_id)


with DAG("sendmux_bench_mapped", schedule=None, start_date=START, catchup=False):
    send_one.expand(address=[f"mapped.{i}@mail{i % 13}.example.org" for i in range(MAPPED)])
