"""Alerts: SendmuxNotifier on a failing task, and Airflow's [email] backend, against the sandbox."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from sendmux_dispatch.client import SendmuxClient

BACKEND = "sendmux_airflow.email_backend.send_email"
SALES_CSV = Path(__file__).parent / "dags" / "sales.csv"


@pytest.fixture
def email_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Airflow's [email] section pointing at this backend and the Sendmux connection."""
    monkeypatch.setenv("AIRFLOW__EMAIL__EMAIL_BACKEND", BACKEND)
    monkeypatch.setenv("AIRFLOW__EMAIL__EMAIL_CONN_ID", "sendmux_default")
    monkeypatch.setenv("AIRFLOW__EMAIL__FROM_EMAIL", "Airflow <airflow@example.com>")


def _logged(capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> str:
    out = capfd.readouterr()
    return out.out + out.err + caplog.text


def test_failing_task_alerts_once_through_the_notifier_and_the_email_backend(
    test_dags: dict[str, Any],
    sandbox: Any,
    sendmux_connection: Any,
    email_settings: None,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    sendmux_connection(from_email="Alerts <alerts-bot@example.com>")
    dag = test_dags["sendmux_alert_test"]

    dagrun = dag.test()

    ti = dagrun.get_task_instance("load")
    assert str(ti.state) == "failed"
    subject = "load failed in sendmux_alert_test, try 1"
    # Two notifiers fired on the one failure: each recipient mailed once, the second replayed.
    for address in ("oncall@example.com", "lead@example.com"):
        (message,) = sandbox.messages(address)
        assert message["subject"] == subject
        assert message["from"] == "alerts-bot@example.com"
    assert sandbox.stats()["idempotent_replays"] >= 1
    # email_on_failure through [email] email_backend: Airflow's own alert, our backend.
    (legacy,) = sandbox.messages("alerts@example.com")
    assert legacy["subject"].startswith("Airflow alert:")
    assert legacy["from"] == "airflow@example.com"

    # The same event again, now from a triggerer's loop (async_notify): still no new mail.
    from sendmux_airflow import SendmuxNotifier

    context: Any = {
        "ti": SimpleNamespace(
            dag_id=dag.dag_id, run_id=dagrun.run_id, task_id="load", map_index=-1, try_number=1
        ),
        "run_id": dagrun.run_id,
        "exception": RuntimeError("the warehouse is down"),
    }
    again = SendmuxNotifier(
        to="oncall@example.com, lead@example.com",
        subject=subject,
        html_body="<p>the warehouse is down</p>",
    )
    asyncio.run(again.async_notify(context))
    for address in ("oncall@example.com", "lead@example.com"):
        assert len(sandbox.messages(address)) == 1, address
    assert sandbox.stats()["duplicate_deliveries"] == 0

    log = _logged(capfd, caplog)
    assert "the warehouse is down" in log  # the task's log really was captured
    assert sandbox.api_key not in log


def test_email_backend_through_airflows_send_email_with_cc_and_files(
    sandbox: Any,
    sendmux_connection: Any,
    email_settings: None,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    # airflow.utils.email.send_email exists in 3.3: it reads [email] email_backend,
    # email_conn_id and from_email, then calls the backend.
    from airflow.utils.email import send_email

    caplog.set_level(logging.INFO)
    send_email(
        "ann@example.com, bob@example.com",
        "Nightly report {{ not a template }}",
        "<p>Attached.</p>",
        files=[str(SALES_CSV)],
        cc="boss@example.com",
    )

    for address in ("ann@example.com", "bob@example.com"):
        (message,) = sandbox.messages(address)
        assert message["subject"] == "Nightly report {{ not a template }}"  # as written
        assert message["from"] == "airflow@example.com"  # [email] from_email
        with SendmuxClient(
            sandbox.api_key,
            sending_url=sandbox.sending_url,
            management_url=sandbox.management_url,
        ) as client:
            detail = client.get_log(message["log_id"])
        assert detail.recipients is not None
        copies = {(r.email, r.type) for r in detail.recipients}
        assert copies == {(address, "to"), ("boss@example.com", "cc")}
        assert detail.size_bytes is not None
        assert detail.size_bytes >= SALES_CSV.stat().st_size  # the file went with it

    send_email("carl@example.com", "Dry", "<p>run</p>", dryrun=True)
    assert sandbox.messages("carl@example.com") == []
    assert sandbox.api_key not in _logged(capfd, caplog)


def test_email_backend_raises_when_the_send_fails(
    sandbox: Any,
    sendmux_connection: Any,
    email_settings: None,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    from airflow.sdk.exceptions import AirflowException
    from airflow.utils.email import send_email

    caplog.set_level(logging.INFO)
    wrong_key = "smx_root_wrong_key_0123456789abcdef"
    sendmux_connection(api_key=wrong_key, max_attempts=1)
    with pytest.raises(AirflowException, match="nothing could be sent") as raised:
        send_email(["ann@example.com"], "Alert", "<p>down</p>")
    assert "authentication" in str(raised.value)
    assert wrong_key not in str(raised.value)
    assert wrong_key not in _logged(capfd, caplog)

    # Bad input fails before any request, naming the field.
    sendmux_connection()
    with pytest.raises(ValueError, match=r"files\[0\]: cannot attach"):
        send_email("ann@example.com", "Alert", "<p>down</p>", files=["/no/such/file.csv"])
    with pytest.raises(ValueError, match="to is empty"):
        send_email(" , ", "Alert", "<p>down</p>")
    assert sandbox.messages("ann@example.com") == []
