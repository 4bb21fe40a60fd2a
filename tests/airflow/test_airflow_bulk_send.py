"""SendmuxBulkSendOperator in real Airflow: dag.test() on a migrated SQLite DB, the sandbox."""

from __future__ import annotations

import csv
import datetime as dt
import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest
from airflow_home import DAGS_FOLDER

ROWS = 2_100


@pytest.fixture
def bulk_dags(airflow_db: Path, sandbox: Any, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The DAGs of ``dags/sendmux_bulk_dags.py`` by id, imported as the dags folder has them."""
    monkeypatch.setenv("SENDMUX_TEST_SANDBOX_URL", sandbox.base_url)
    spec = importlib.util.spec_from_file_location(
        "sendmux_bulk_dags", DAGS_FOLDER / "sendmux_bulk_dags.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    from airflow.sdk import DAG

    return {dag.dag_id: dag for dag in vars(module).values() if isinstance(dag, DAG)}


def _xcoms(dag_id: str, run_id: str) -> dict[tuple[str, int, str], Any]:
    """Every XCom of the run, by (task_id, map_index, key)."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.query(XComModel).filter_by(dag_id=dag_id, run_id=run_id).all()
        return {(row.task_id, row.map_index, row.key): row.value for row in rows}


def _rendered_fields(dag_id: str, run_id: str) -> list[dict[str, Any]]:
    from airflow.models.renderedtifields import RenderedTaskInstanceFields
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.query(RenderedTaskInstanceFields).filter_by(dag_id=dag_id, run_id=run_id)
        return [dict(row.rendered_fields) for row in rows]


def _states(dagrun: Any) -> dict[str, str]:
    return {f"{ti.task_id}[{ti.map_index}]": str(ti.state) for ti in dagrun.get_task_instances()}


def _write_csv(path: Path, rows: int) -> Path:
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=list(_person(0)))
        writer.writeheader()
        writer.writerows(_person(i) for i in range(rows))
    return path


def _person(i: int) -> dict[str, str]:
    return {
        "email": f"reader{i}@example.com",
        "name": f"Reader {i}",
        "code": f"C{i:05d}",
        "city": "Lisbon" if i % 2 else "Porto",
        "plan": "gold" if i % 7 == 0 else "free",
    }


def test_bulk_csv_task_mails_each_row_once_with_its_own_variables(
    bulk_dags: dict[str, Any],
    sandbox: Any,
    sendmux_connection: Any,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
) -> None:
    sendmux_connection(from_email="News Desk <News@Example.com>")
    path = _write_csv(tmp_path / "readers.csv", ROWS)
    dag = bulk_dags["sendmux_bulk_csv_test"]

    before = dt.datetime.now(dt.timezone.utc)
    dagrun = dag.test(run_conf={"file": str(path), "issue": "12"})

    assert _states(dagrun) == {"send[-1]": "success"}
    messages = sandbox.messages(limit=ROWS * 2)
    assert len(messages) == ROWS
    by_address = {message["to"]: message for message in messages}
    assert len(by_address) == ROWS  # every row once
    for i in range(ROWS):
        message = by_address[f"reader{i}@example.com"]
        assert message["subject"] == f"Hello Reader {i}, your code is C{i:05d} (issue 12)"
    for message in messages:
        assert message["from"] == "News@Example.com"  # as given; the XCom lowercases it
    stats = sandbox.stats()
    assert stats["duplicate_deliveries"] == 0
    assert stats["unique_recipients"] == ROWS

    xcoms = _xcoms(dag.dag_id, dagrun.run_id)
    summary = xcoms[("send", -1, "return_value")]
    assert summary["queued"] == ROWS
    assert summary["ok"] is True
    assert summary["job_key"] == f"sendmux_bulk_csv_test/send/{dagrun.run_id}/-1"
    assert len(json.dumps(summary)) < 2_000  # small whatever the list's length
    window = xcoms[("send", -1, "send_window")]
    assert set(window) == {"from_date", "to_date", "messages", "delivery_group", "from_email"}
    assert window["messages"] == ROWS
    assert window["delivery_group"] == "dgrp_news-12"
    assert window["from_email"] == "news@example.com"
    start, end = (dt.datetime.fromisoformat(window[key]) for key in ("from_date", "to_date"))
    assert before <= start <= end <= dt.datetime.now(dt.timezone.utc)
    created = sorted(dt.datetime.fromisoformat(m["created_at"]) for m in messages)
    assert start - dt.timedelta(seconds=1) <= created[0] <= created[-1] <= end
    assert ("send", -1, "message_ids") not in xcoms  # over 1,000 messages: not pushed

    out = capfd.readouterr()
    log = out.out + out.err
    assert f"{ROWS} queued" in log
    assert "reader1@example.com" not in log
    # The key is nowhere a user can read: log, XComs, rendered fields.
    everything = log + json.dumps(
        [list(xcoms.values()), _rendered_fields(dag.dag_id, dagrun.run_id)]
    )
    assert sandbox.api_key not in everything


def test_bulk_task_takes_an_xcom_a_list_a_jsonl_file_and_mapped_lists(
    bulk_dags: dict[str, Any], sandbox: Any, sendmux_connection: Any, tmp_path: Path
) -> None:
    sendmux_connection(from_email="shop@example.com")
    path = tmp_path / "orders.jsonl"
    path.write_text(
        '{"address": "ann@example.com", "name": "Ann", "order": 17}\n'
        "\n"
        '{"address": "bob@example.com", "order": 18}\n'
        '{"address": "ANN@example.com", "order": 19}\n',
        encoding="utf-8",
    )
    dag = bulk_dags["sendmux_bulk_sources_test"]

    dagrun = dag.test(run_conf={"jsonl": str(path)})

    assert set(_states(dagrun).values()) == {"success"}, _states(dagrun)
    assert [m["subject"] for m in sandbox.messages("xcom1@example.com")] == ["Hi X1"]
    assert [m["subject"] for m in sandbox.messages("dict@example.com")] == ["Team blue"]
    assert [m["subject"] for m in sandbox.messages("plain@example.com")] == ["Team none"]
    assert [m["subject"] for m in sandbox.messages("ann@example.com")] == ["Order 17 for Ann"]
    assert [m["subject"] for m in sandbox.messages("bob@example.com")] == ["Order 18 for "]
    for address in ("m0@example.com", "m1@example.com", "m2@example.com"):
        assert [m["subject"] for m in sandbox.messages(address)] == [f"Batch for {address}"]
    assert sandbox.stats()["duplicate_deliveries"] == 0

    xcoms = _xcoms(dag.dag_id, dagrun.run_id)
    jsonl = xcoms[("from_jsonl", -1, "return_value")]
    assert (jsonl["queued"], jsonl["duplicates_dropped"]) == (2, 1)
    ids = xcoms[("from_jsonl", -1, "message_ids")]
    assert sorted(ids) == sorted(
        m["id"] for m in sandbox.messages() if m["to"] in {"ann@example.com", "bob@example.com"}
    )
    assert xcoms[("from_xcom", -1, "send_window")]["messages"] == 3
    assert xcoms[("mapped", 1, "return_value")]["job_key"].endswith(f"/mapped/{dagrun.run_id}/1")
    assert xcoms[("mapped", 1, "return_value")]["queued"] == 2


def test_bad_column_file_or_template_fails_before_any_request_naming_the_field(
    bulk_dags: dict[str, Any],
    sandbox: Any,
    sendmux_connection: Any,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
) -> None:
    sendmux_connection(from_email="ops@example.com")
    bad_csv = tmp_path / "list.csv"
    bad_csv.write_text("Mail,name\nann@example.com,Ann\n", encoding="utf-8")
    bad_jsonl = tmp_path / "list.txt"
    bad_jsonl.write_text('{"mail": "ann@example.com"}\n', encoding="utf-8")
    conf = {"csv": str(bad_csv), "jsonl": str(bad_jsonl), "missing": str(tmp_path / "no.csv")}
    dag = bulk_dags["sendmux_bulk_bad_test"]

    dagrun = dag.test(run_conf=conf)

    states = _states(dagrun)
    assert set(states.values()) == {"failed"}, states
    assert {ti.try_number for ti in dagrun.get_task_instances()} == {1}  # no retry
    assert sandbox.stats()["requests"] == 0
    out = capfd.readouterr()
    log = out.out + out.err
    assert "no 'mail' column in the header" in log
    assert "try --email-column 'Mail' (email_column=)" in log
    assert "has no 'email' key" in log
    assert "set email_column=" in log
    assert f"recipients_file: no file at {tmp_path / 'no.csv'}" in log
    assert "uses Airflow's ds, run_id" in log
    assert "variables={" in log
    assert "html_body: no template file 'no_such_letter.html'" in log
    assert sandbox.api_key not in log


def test_bulk_task_retried_after_lost_answers_mails_each_row_once(
    bulk_dags: dict[str, Any], sandbox: Any, sendmux_connection: Any, tmp_path: Path
) -> None:
    # Try 1: every batch is accepted and delivered, then its answer is lost, so the
    # task fails; try 2 (same job key: never the try number) replays, sends nothing anew.
    sendmux_connection(from_email="ops@example.com", max_attempts=1)
    sandbox.set_faults(drop_after_accept=1.0)
    path = _write_csv(tmp_path / "readers.csv", 450)
    dag = bulk_dags["sendmux_bulk_retry_test"]

    dagrun = dag.test(run_conf={"file": str(path)})

    ti = dagrun.get_task_instance("send")
    assert (str(ti.state), ti.try_number) == ("success", 2)
    stats = sandbox.stats()
    assert stats["faults_injected"] >= 1
    assert stats["idempotent_replays"] >= 1
    assert stats["duplicate_deliveries"] == 0
    assert stats["unique_recipients"] == stats["accepted_messages"] == 450
    xcoms = _xcoms(dag.dag_id, dagrun.run_id)
    assert xcoms[("send", -1, "return_value")]["queued"] == 450
    # The window of try 2 starts with the run: it covers what try 1 sent.
    window = xcoms[("send", -1, "send_window")]
    first = min(dt.datetime.fromisoformat(m["created_at"]) for m in sandbox.messages(limit=500))
    assert dt.datetime.fromisoformat(window["from_date"]) <= first
    assert window["messages"] == 450
    assert len(xcoms[("send", -1, "message_ids")]) == 450


def test_a_file_source_streams_a_big_list_in_flat_memory(airflow_db: Path, tmp_path: Path) -> None:
    import tracemalloc

    from sendmux_airflow._bulk_source import file_recipients

    path = _write_csv(tmp_path / "big.csv", 40_000)
    size = path.stat().st_size  # about 2.8 MB
    options = {"email_column": "email", "name_column": "name", "encoding": "utf-8"}
    tracemalloc.start()
    try:
        with file_recipients(f"file://{path}", file_format=None, conn_id=None, **options) as items:
            count = sum(1 for _ in items)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 40_000
    # A row at a time: the peak is the readers' buffers, far under the file's size.
    assert peak < min(1_000_000, size // 2), f"peak {peak:,} bytes for a {size:,}-byte file"


def test_bulk_send_example_mails_each_subscriber_their_own_notice(
    airflow_db: Path, sandbox: Any, sendmux_connection: Any, tmp_path: Path
) -> None:
    from airflow_home import REPO_ROOT, airflow_env, run_airflow

    env = airflow_env(
        AIRFLOW__CORE__DAGS_FOLDER=str(REPO_ROOT / "example_dags"),
        AIRFLOW_CONN_SENDMUX_DEFAULT=sendmux_connection(from_email="team@example.com"),
        SENDMUX_EXPORT_DIR=str(tmp_path),
    )
    done = run_airflow("dags", "test", "sendmux_bulk_send", "2026-12-01", env=env)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]

    subjects = {m["to"]: m["subject"] for m in sandbox.messages()}
    assert subjects == {
        "ann@example.com": "Ann, your pro plan renews on 2026-12-09",
        "bob@example.com": "Bob, your basic plan renews on 2026-12-14",
        "cat@example.com": "Hello, your basic plan renews on 2026-12-20",
    }
    assert sandbox.stats()["duplicate_deliveries"] == 0
    assert sandbox.api_key not in done.stdout + done.stderr


def test_file_source_errors_name_the_field_and_the_fix(airflow_db: Path, tmp_path: Path) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    from sendmux_airflow._bulk_source import file_recipients

    good = tmp_path / "list.csv"
    good.write_text("email\nann@example.com\n", encoding="utf-8")
    (tmp_path / "list.txt").write_text("email\nann@example.com\n", encoding="utf-8")
    (tmp_path / "empty.csv").write_text("email\n", encoding="utf-8")
    cases = {
        (str(tmp_path / "list.txt"), None, "utf-8"): "set file_format='csv' or 'jsonl'",
        (str(good), "xml", "utf-8"): "file_format must be 'csv' or 'jsonl', not 'xml'",
        (str(good), None, "klingon"): "encoding: 'klingon' is not an encoding",
        (str(good), None, "utf-16"): "encoding 'utf-16' is not supported; convert",
        ("memory://lists/a.csv", None, "utf-8"): "recipients_file: cannot open memory://",
        (str(tmp_path / "empty.csv"), None, "utf-8"): "holds no recipients",
        ("  ", None, "utf-8"): "recipients_file is empty",
    }
    for (location, file_format, encoding), expected in cases.items():
        with (
            pytest.raises(AirflowFailException) as caught,
            file_recipients(
                location,
                file_format=file_format,
                email_column="email",
                name_column="name",
                encoding=encoding,
                conn_id=None,
            ),
        ):
            pass
        assert expected in str(caught.value), (location, str(caught.value))
    with file_recipients(
        str(tmp_path / "list.txt"),
        file_format="CSV",
        email_column="email",
        name_column="name",
        encoding="latin-1",
        conn_id=None,
    ) as items:
        assert [item.email for item in items] == ["ann@example.com"]


def test_a_bulk_task_needs_exactly_one_recipient_source(airflow_db: Path) -> None:
    from sendmux_airflow import SendmuxBulkSendOperator

    with pytest.raises(ValueError, match="no recipients: give recipients="):
        SendmuxBulkSendOperator(task_id="none", subject="Hi")
    with pytest.raises(ValueError, match="not both"):
        SendmuxBulkSendOperator(
            task_id="both", subject="Hi", recipients=["a@example.com"], recipients_file="a.csv"
        )
    with pytest.raises(ValueError, match="max_failure_ratio"):
        SendmuxBulkSendOperator(
            task_id="ratio", subject="Hi", recipients=["a@example.com"], max_failure_ratio=2
        )
