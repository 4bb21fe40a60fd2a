"""The Airflow half of `make demo`: the scheduled report DAG through `airflow dags test`.

Airflow runs in a subprocess, as a user would run it, on SQLite metadata under
``.demo/airflow`` (migrated on the first run, reused after), with the DAGs of
``example_dags/`` and the ``sendmux_default`` connection pointing at the
sandbox through ``AIRFLOW_CONN_SENDMUX_DEFAULT``.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEMO_HOME = REPO / ".demo" / "airflow"
DAG_ID = "sendmux_scheduled_report"


def airflow_env(sandbox: Any) -> dict[str, str]:
    reports = REPO / ".demo" / "reports"
    reports.mkdir(parents=True, exist_ok=True)
    connection = {
        "conn_type": "sendmux",
        "host": sandbox.sending_url,
        "password": sandbox.api_key,
        "extra": {"management_url": sandbox.management_url, "from_email": "reports@example.com"},
    }
    return dict(
        os.environ,
        AIRFLOW_HOME=str(DEMO_HOME),
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{DEMO_HOME / 'airflow.db'}",
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__DAGS_FOLDER=str(REPO / "example_dags"),
        AIRFLOW_CONN_SENDMUX_DEFAULT=json.dumps(connection),
        SENDMUX_REPORT_DIR=str(reports),
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    )


def airflow(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 -- our own interpreter and arguments
        [sys.executable, "-m", "airflow", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def run_scheduled_report(sandbox: Any) -> bool:
    """Run the DAG once for yesterday against ``sandbox``; print what happened. True on success."""
    DEMO_HOME.mkdir(parents=True, exist_ok=True)
    env = airflow_env(sandbox)
    print("\nAirflow: migrating the SQLite metadata DB (.demo/airflow) ...")
    migrated = airflow(env, "db", "migrate")
    if migrated.returncode != 0:
        print(migrated.stdout[-3000:], migrated.stderr[-3000:], sep="\n")
        return False
    day = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=1)).date().isoformat()
    before = {message["id"] for message in sandbox.messages()}
    print(f"Airflow: airflow dags test {DAG_ID} {day}")
    run = airflow(env, "dags", "test", DAG_ID, day)
    new = [message for message in sandbox.messages() if message["id"] not in before]
    if run.returncode != 0:
        print(run.stdout[-4000:], run.stderr[-4000:], sep="\n")
        print(f"Airflow: {DAG_ID} FAILED (exit {run.returncode})")
        return False
    print(f"Airflow: {DAG_ID} succeeded; the sandbox received {len(new)} messages:")
    for message in new:
        print(f"  to {message['to']}: {message['subject']!r}")
    return True
