"""SendmuxSendEmailOperator in real Airflow: dag.test() on a migrated SQLite DB, the sandbox."""

from __future__ import annotations

import json
from typing import Any

import pytest

RECIPIENTS = ["ann@example.com", "bob@example.com", "cat@example.com"]


def _xcom(dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> Any:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = (
            session.query(XComModel)
            .filter_by(dag_id=dag_id, run_id=run_id, task_id=task_id, map_index=map_index)
            .filter_by(key="return_value")
            .one()
        )
        return row.value


def _rendered_fields(dag_id: str, run_id: str, task_id: str) -> dict[str, Any]:
    from airflow.models.renderedtifields import RenderedTaskInstanceFields
    from airflow.utils.session import create_session

    with create_session() as session:
        row = (
            session.query(RenderedTaskInstanceFields)
            .filter_by(dag_id=dag_id, run_id=run_id, task_id=task_id)
            .one()
        )
        return dict(row.rendered_fields)


def _task_state(dagrun: Any, task_id: str) -> tuple[str, int]:
    ti = dagrun.get_task_instance(task_id)
    return str(ti.state), int(ti.try_number)


def test_send_email_task_mails_each_recipient_once_and_returns_the_summary(
    test_dags: dict[str, Any],
    sandbox: Any,
    sendmux_connection: Any,
    capfd: pytest.CaptureFixture[str],
) -> None:
    sendmux_connection(from_email="Reports <reports@example.com>")
    dag = test_dags["sendmux_send_email_test"]

    dagrun = dag.test()

    assert _task_state(dagrun, "send") == ("success", 1)
    assert {str(ti.state) for ti in dagrun.get_task_instances()} == {"success"}
    for address in RECIPIENTS:
        (message,) = sandbox.messages(address)
        assert message["subject"].startswith("Sales 20")
        assert message["subject"].endswith("{{ week }}")
        assert message["from"] == "reports@example.com"
        assert message["reply_to"] == "finance@example.com"
        assert message["return_path"] == "bounces@example.com"
        assert message["attachments"] == ["sales.csv"]
    assert sandbox.stats()["duplicate_deliveries"] == 0

    summary = _xcom(dag.dag_id, dagrun.run_id, "send")
    assert summary["queued"] == 3
    assert summary["duplicates_dropped"] == 1
    assert summary["ok"] is True
    assert summary["job_key"] == f"sendmux_send_email_test/send/{dagrun.run_id}/-1"
    assert sandbox.api_key not in json.dumps(summary)
    rendered = _rendered_fields(dag.dag_id, dagrun.run_id, "send")
    assert rendered["html_body"].startswith("<p>Total for 20")  # the .html file, rendered
    assert rendered["html_body"].rstrip().endswith(": 42</p>")
    assert sandbox.api_key not in json.dumps(rendered)

    for map_index, address in enumerate(["dan@example.com", "eve@example.com"]):
        assert len(sandbox.messages(address)) == 1
        mapped = _xcom(dag.dag_id, dagrun.run_id, "send_mapped", map_index)
        assert mapped["queued"] == 1
        assert mapped["job_key"].endswith(f"/send_mapped/{dagrun.run_id}/{map_index}")

    out = capfd.readouterr()
    log = out.out + out.err
    assert "3 queued" in log
    assert sandbox.api_key not in log
    for address in RECIPIENTS:
        assert address not in log


def test_retried_send_task_mails_nobody_twice(
    test_dags: dict[str, Any], sandbox: Any, sendmux_connection: Any
) -> None:
    # Try 1: the server accepts and delivers, then the answer is lost (no retries in
    # the task), so the task fails. Try 2 must replay the same batch, not send anew;
    # the task's on_retry_callback clears the fault in between.
    sendmux_connection(from_email="ops@example.com", max_attempts=1)
    sandbox.set_faults(drop_after_accept=1.0)
    dag = test_dags["sendmux_send_email_retry_test"]

    dagrun = dag.test()

    assert _task_state(dagrun, "send") == ("success", 2)
    stats = sandbox.stats()
    assert stats["faults_injected"] >= 1  # try 1 really lost its answer
    for address in RECIPIENTS:
        assert len(sandbox.messages(address)) == 1, address
    assert stats["duplicate_deliveries"] == 0
    assert stats["idempotent_replays"] >= 1
    assert _xcom(dag.dag_id, dagrun.run_id, "send")["queued"] == 3
