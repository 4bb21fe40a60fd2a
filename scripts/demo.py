"""`make demo`: a real send and a real 250-recipient batch job against a local sandbox.

Starts the Sendmux sandbox on a free loopback port, sends one email and then
250 personalised messages (three idempotent batches) through the same client a
production job would use, waits for the delivery logs, prints what happened
and what the sandbox counted, then runs example_dags/sendmux_scheduled_report
through `airflow dags test` against the same sandbox, then a 10,000-recipient
file through a Celery worker's bulk task (scripts/celery_demo.py: the local
RabbitMQ and Redis when they answer, else an embedded setup with no server),
and stops the sandbox.
"""

from __future__ import annotations

import time

from airflow_demo import run_scheduled_report
from celery_demo import run_bulk_job

from sendmux_dispatch import EmailMessage, SendmuxClient, dispatch
from sendmux_sandbox import SandboxConfig, SandboxServer


def main() -> None:
    config = SandboxConfig(delivery_delay=0.2)
    with SandboxServer(config) as sandbox:
        print(f"sandbox running: sending API {sandbox.sending_url}")
        print(f"                 management API {sandbox.management_url}\n")
        with SendmuxClient(
            sandbox.api_key,
            sending_url=sandbox.sending_url,
            management_url=sandbox.management_url,
        ) as client:
            me = client.me()
            print(f"key '{me.label}' of team '{me.team.name}': {', '.join(me.permissions)}\n")

            result = client.send(
                EmailMessage.model_validate(
                    {
                        "from": {"email": "reports@example.com", "name": "Reports"},
                        "to": {"email": "ceo@example.com", "name": "The CEO"},
                        "subject": "Nightly report",
                        "text_body": "Revenue is up.\nDetails attached tomorrow.",
                    }
                ),
                idempotency_key="demo-single-send",
            )
            print(f"single send: {result.status} as {result.message_id}")

            template = {
                "from": {"email": "news@example.com", "name": "Example News"},
                "subject": "Hello {{ name }}, your November digest",
                "html_body": "<p>Hi {{ name }}, you are reader #{{ number }}.</p>",
            }
            recipients = (
                {"email": f"reader{i}@example.com", "name": f"Reader {i}", "number": i}
                for i in range(250)
            )
            report = dispatch(client, template, recipients, job_key="demo-digest-2026-11")
            print(f"batch job:   {report.summary_line()}")

            # Delivery is asynchronous: logs go pending -> sent a moment later.
            time.sleep(config.delivery_delay + 0.3)
            sent = sum(1 for _ in client.iter_logs(status="sent", limit=100))
            print(f"delivery logs with status 'sent': {sent}")

            rerun = dispatch(client, template, recipients_again(), job_key="demo-digest-2026-11")
            print(f"same job re-run: {rerun.summary_line()}")

        stats = sandbox.stats()
        print("\nsandbox counted:")
        for name in (
            "requests",
            "accepted_messages",
            "unique_recipients",
            "duplicate_deliveries",
            "rate_limited",
        ):
            print(f"  {name:22} {stats[name]}")
        airflow_ok = run_scheduled_report(sandbox)
        celery_ok = run_bulk_job(sandbox)
    print("\nsandbox stopped.")
    if not (airflow_ok and celery_ok):
        raise SystemExit(1)


def recipients_again() -> list[dict[str, object]]:
    return [
        {"email": f"reader{i}@example.com", "name": f"Reader {i}", "number": i} for i in range(250)
    ]


if __name__ == "__main__":
    main()
