"""DAGs for tests/airflow/test_airflow_ledger.py: a send whose retry reads an edited list.

The recipient list is a file read when the task renders (a macro), so the
first try and the retry can read different lists, as they would when an
upstream task or a person changed it between tries. The paths come from the
environment the test sets.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from typing import Any

from airflow.sdk import DAG

from sendmux_airflow import SendmuxBulkSendOperator, SendmuxSendEmailOperator
from sendmux_sandbox.admin_client import SandboxAdmin

START = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)


def stored_task_state(ti: Any) -> dict[str, Any]:
    """The task instance's task state store rows, read from the metadata database.

    dag.test() runs callbacks in the test process, so the database is at hand.
    """
    from airflow.models.task_state_store import TaskStateStoreModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.query(TaskStateStoreModel).filter_by(
            dag_id=ti.dag_id, run_id=ti.run_id, task_id=ti.task_id, map_index=ti.map_index
        )
        return {row.key: json.loads(row.value) for row in rows}


def ledger_list() -> str:
    """The recipients, one per line in the list file, as one comma-separated string."""
    lines = Path(os.environ["SENDMUX_TEST_LEDGER_LIST"]).read_text().split()
    return ", ".join(lines)


def edit_list_between_tries(context: Any) -> None:
    """on_retry_callback: note what try 1 left in the task state store, edit the list,
    and clear the sandbox's faults."""
    Path(os.environ["SENDMUX_TEST_LEDGER_SNAPSHOT"]).write_text(
        json.dumps(
            {
                "try_number": context["ti"].try_number,
                # What the callback's own accessor reads, and what the database holds.
                "accessor_head": context["task_state_store"].get("sendmux_ledger/head"),
                "rows": stored_task_state(context["ti"]),
            }
        )
    )
    edited = Path(os.environ["SENDMUX_TEST_LEDGER_EDITED"]).read_text()
    Path(os.environ["SENDMUX_TEST_LEDGER_LIST"]).write_text(edited)
    with SandboxAdmin(os.environ["SENDMUX_TEST_SANDBOX_URL"]) as admin:
        admin.set_faults()


with DAG(
    "sendmux_ledger_retry_test",
    schedule=None,
    start_date=START,
    user_defined_macros={"ledger_list": ledger_list},
) as ledger_retry_dag:
    SendmuxSendEmailOperator(
        task_id="send",
        to="{{ ledger_list() }}",
        subject="Your statement",
        text_body="Hello",
        retries=1,
        retry_delay=dt.timedelta(seconds=0),
        on_retry_callback=edit_list_between_tries,
    )

with DAG("sendmux_ledger_kill_test", schedule=None, start_date=START) as ledger_kill_dag:
    # Run by `airflow tasks test` twice under one run id: the first process is
    # SIGKILLed mid-send, the second reads the edited file. A bulk task, since a
    # long list is where a kill half-way is most likely.
    SendmuxBulkSendOperator(
        task_id="send",
        recipients_file=os.environ.get("SENDMUX_TEST_LEDGER_CSV", "/nonexistent/list.csv"),
        subject="Your statement, {{ name }}",
        text_body="Hello {{ name }}",
    )
