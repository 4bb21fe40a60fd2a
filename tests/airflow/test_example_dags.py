"""example_dags/: every DAG imports cleanly, and the scheduled report runs end to end.

``airflow dags test`` in a subprocess, as `make demo` and a user run it, with
the example folder as the dags folder and the connection from the environment.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from airflow_home import REPO_ROOT, airflow_env, connection_json, run_airflow

EXAMPLES = REPO_ROOT / "example_dags"


def _json_output(stdout: str) -> Any:
    # Airflow's CLI prints warnings (no graphviz, ...) on stdout before the JSON line.
    (line,) = [line for line in stdout.splitlines() if line.startswith(("[", "{"))][-1:]
    return json.loads(line)


def _example_env(sandbox: Any, reports: Path) -> dict[str, str]:
    """The examples as the dags folder, ``sendmux_default`` on the sandbox (as `make demo`)."""
    connection = connection_json(sandbox, from_email="reports@example.com")
    return airflow_env(
        AIRFLOW__CORE__DAGS_FOLDER=str(EXAMPLES),
        AIRFLOW_CONN_SENDMUX_DEFAULT=connection,
        SENDMUX_REPORT_DIR=str(reports),
    )


def _delivery_statuses(sandbox: Any) -> list[dict[str, Any]]:
    from sendmux_dispatch import SendmuxClient

    with SendmuxClient(
        sandbox.api_key, sending_url=sandbox.sending_url, management_url=sandbox.management_url
    ) as client:
        return [log.model_dump() for log in client.iter_logs(limit=100)]


def test_example_dags_import_without_errors(airflow_db: Path) -> None:
    env = airflow_env(AIRFLOW__CORE__DAGS_FOLDER=str(EXAMPLES))
    done = run_airflow("dags", "list", "--local", "--output", "json", env=env)
    assert done.returncode == 0, done.stderr
    listed = {row["dag_id"] for row in _json_output(done.stdout)}
    expected = {path.stem for path in EXAMPLES.glob("sendmux_*.py")}
    assert expected <= listed, (expected, listed)
    errors = run_airflow("dags", "list-import-errors", "--local", "--output", "json", env=env)
    assert errors.returncode == 0, errors.stderr
    assert _json_output(errors.stdout) == []


def test_scheduled_report_mails_the_csv_to_each_recipient(
    airflow_db: Path, sandbox: Any, tmp_path: Path
) -> None:
    env = _example_env(sandbox, tmp_path)
    done = run_airflow("dags", "test", "sendmux_scheduled_report", "2026-12-01", env=env)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]

    report = tmp_path / "sendmux-report-2026-12-01.csv"
    assert report.read_text(encoding="utf-8").startswith("region,orders,revenue")
    messages = sandbox.messages()
    assert sorted(m["to"] for m in messages) == [
        "ceo@example.com",
        "cfo@example.com",
        "ops@example.com",
    ]
    assert {m["subject"] for m in messages} == {"Daily report for 2026-12-01"}
    assert {m["from"] for m in messages} == {"reports@example.com"}
    assert sandbox.stats()["duplicate_deliveries"] == 0
    # Exit 0 means every task succeeded, the deferrable sensor (policy "fail") too.
    assert {log["status"] for log in _delivery_statuses(sandbox)} == {"sent"}
    assert sandbox.api_key not in done.stdout + done.stderr


def test_scheduled_report_alerts_oncall_when_the_send_fails(
    airflow_db: Path, sandbox: Any, tmp_path: Path
) -> None:
    env = _example_env(sandbox, tmp_path)
    conf = json.dumps({"recipients": ["not-an-address"]})
    done = run_airflow(
        "dags", "test", "sendmux_scheduled_report", "2026-12-02", "--conf", conf, env=env
    )
    output = done.stdout + done.stderr
    assert done.returncode != 0, "a failed run must exit non-zero (make demo relies on it)"
    messages = sandbox.messages()
    assert [m["to"] for m in messages] == ["oncall@example.com"], output[-4000:]
    assert messages[0]["subject"] == "sendmux_scheduled_report.send_report failed for 2026-12-02"
    assert sandbox.api_key not in output
