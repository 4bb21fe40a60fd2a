"""SendmuxDeliverySensor and SendmuxDeliveryTrigger in real Airflow, against the sandbox."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
from test_airflow_send_email import _task_state, _xcom

#: Messages stay pending this long, so every mode polls more than once.
DELIVERY_DELAY = 1.5
EXPECTED = {"total": 3, "sent": 2, "failed": 0, "rejected": 1, "pending": 0, "done": True}


def _reschedules(dag_id: str, run_id: str, task_id: str) -> int:
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.taskreschedule import TaskReschedule
    from airflow.utils.session import create_session

    with create_session() as session:
        return int(
            session.query(TaskReschedule)
            .join(TaskInstance, TaskInstance.id == TaskReschedule.ti_id)
            .filter(TaskInstance.dag_id == dag_id, TaskInstance.run_id == run_id)
            .filter(TaskInstance.task_id == task_id)
            .count()
        )


@pytest.fixture(scope="module")
def sandbox_server() -> Iterator[Any]:
    """This module's sandbox: messages are pending for DELIVERY_DELAY seconds, then settle."""
    from sendmux_sandbox.config import SandboxConfig
    from sendmux_sandbox.server import SandboxServer

    with SandboxServer(SandboxConfig(delivery_delay=DELIVERY_DELAY)) as server:
        yield server


def test_sensor_waits_for_delivery_in_poke_reschedule_and_deferrable_modes(
    test_dags: dict[str, Any],
    sandbox: Any,
    sendmux_connection: Any,
    capfd: pytest.CaptureFixture[str],
) -> None:
    sendmux_connection(from_email="ops@example.com")
    dag = test_dags["sendmux_delivery_test"]

    dagrun = dag.test()

    requests = []
    for mode in ("poke", "reschedule", "deferred"):
        task_id = f"wait_{mode}"
        assert _task_state(dagrun, task_id)[0] == "success", task_id
        assert _xcom(dag.dag_id, dagrun.run_id, f"send_{mode}")["queued"] == 3
        counts = _xcom(dag.dag_id, dagrun.run_id, task_id)
        assert {k: counts[k] for k in EXPECTED} == EXPECTED, task_id
        (failure,) = counts["failures"]
        assert failure["status"] == "rejected"
        assert failure["reason"].startswith("554")
        # one search per message, then polls by id while pending (304s while unchanged);
        # a rescheduled poke goes on from the state the last one stored
        assert counts["requests"] > 3, task_id
        assert sandbox.api_key not in json.dumps(counts)
        requests.append(counts["requests"])
    assert _reschedules(dag.dag_id, dagrun.run_id, "wait_reschedule") >= 1
    # the counts are the Management API requests really made (no other caller here)
    assert sandbox.stats()["requests_by_api"]["management"] == sum(requests)
    out = capfd.readouterr()
    log = out.out + out.err
    assert "2 of 3 sent, 0 failed, 1 rejected" in log
    assert "1 rejected of 3 messages" in log  # the warn policy's line
    assert sandbox.api_key not in log
    assert "dan+reject@" not in log


def test_a_failed_delivery_fails_the_sensor_without_retries(
    test_dags: dict[str, Any],
    sandbox: Any,
    sendmux_connection: Any,
    capfd: pytest.CaptureFixture[str],
) -> None:
    sendmux_connection(from_email="ops@example.com")
    dag = test_dags["sendmux_delivery_fail_test"]

    dagrun = dag.test()

    assert _task_state(dagrun, "send") == ("success", 1)
    assert _task_state(dagrun, "wait") == ("failed", 1)  # retries=2, yet no retry
    out = capfd.readouterr()
    log = out.out + out.err
    assert "1 failed and 0 rejected of 2 messages" in log
    assert "550 5.1.1 Mailbox unavailable" in log
    assert sandbox.api_key not in log


def test_trigger_round_trips_and_reports_delivery_from_the_sandbox(
    airflow_db: Any, sandbox: Any, sendmux_connection: Any
) -> None:
    from sendmux_airflow import SendmuxDeliveryTrigger
    from sendmux_dispatch.client import SendmuxClient

    with SendmuxClient(
        sandbox.api_key, sending_url=sandbox.sending_url, management_url=sandbox.management_url
    ) as client:
        result = client.send_batch(
            [
                {"from": "ops@example.com", "to": to, "subject": "Hi", "text_body": "Hi"}
                for to in ("ann@example.com", "eve+fail@example.com", "dan+reject@example.com")
            ]
        )
    ids = [item.message_id for item in result.results]
    trigger = SendmuxDeliveryTrigger(
        message_ids=ids, poll_interval=0.2, policy="ignore", deadline=None
    )
    path, kwargs = trigger.serialize()
    assert path == "sendmux_airflow.triggers.delivery.SendmuxDeliveryTrigger"
    json.dumps(kwargs)  # primitives only
    again = SendmuxDeliveryTrigger(**kwargs)
    assert again.serialize() == (path, kwargs)

    async def first_event() -> Any:
        async for event in again.run():
            return event.payload
        return None

    payload = asyncio.run(first_event())
    assert payload["status"] == "done"
    counts = payload["summary"]
    assert counts["requests"] > 3  # still pending at the first check: polled again
    assert (counts["sent"], counts["failed"], counts["rejected"], counts["pending"]) == (1, 1, 1, 0)
    assert json.loads(json.dumps(payload)) == payload
    assert sandbox.api_key not in json.dumps(payload)


# --- the bulk path: a send's window counted by status ---------------------------

WINDOW_DAGS = "sendmux_window_dags.py"


def _window_dag(sandbox: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    import importlib.util

    from airflow_home import DAGS_FOLDER

    monkeypatch.setenv("SENDMUX_TEST_SANDBOX_URL", sandbox.base_url)
    spec = importlib.util.spec_from_file_location("sendmux_window_dags", DAGS_FOLDER / WINDOW_DAGS)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sensor_counts_a_bulk_sends_window_in_reschedule_and_deferrable_modes(
    airflow_db: Any,
    sandbox: Any,
    sendmux_connection: Any,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    module = _window_dag(sandbox, monkeypatch)
    dag = module.window_dag
    failing = sum(1 for i in range(module.MESSAGES) if "+fail" in module._address(i))
    bouncing = sum(1 for i in range(module.MESSAGES) if "+reject" in module._address(i))

    dagrun = dag.test()

    window = _xcom(dag.dag_id, dagrun.run_id, "send")
    assert window["messages"] == module.MESSAGES
    for mode in ("reschedule", "deferred"):
        task_id = f"wait_{mode}"
        assert _task_state(dagrun, task_id)[0] == "success", task_id
        counts = _xcom(dag.dag_id, dagrun.run_id, task_id)
        assert counts["mode"] == "window"
        assert counts["done"] is True
        # The other sender's 30 messages in the widened window are not counted.
        assert counts["other_logs"] == 0
        expected = (module.MESSAGES - failing - bouncing, failing, bouncing, 0)
        got = (counts["sent"], counts["failed"], counts["rejected"], counts["pending"])
        assert got == expected, task_id
        assert {f["status"] for f in counts["failures"]} == {"failed", "rejected"}
        # Pages of 100, not a request per message: a census of 3 pages, then
        # rounds over pending/failed/rejected while the messages settle.
        assert 3 <= counts["requests"] < 40, counts["requests"]
    assert _reschedules(dag.dag_id, dagrun.run_id, "wait_reschedule") >= 1
    out = capfd.readouterr()
    log = out.out + out.err
    assert sandbox.api_key not in log
    assert "reader1@example.com" not in log


def test_a_bad_send_window_fails_with_the_field_named() -> None:
    from sendmux_airflow._delivery_window import SendWindow

    with pytest.raises(ValueError, match="send_window lacks messages"):
        SendWindow.parse({"from_date": "2026-12-03T09:00:00Z", "to_date": "2026-12-03T09:01:00Z"})
    with pytest.raises(ValueError, match=r"send_window\.from_date: 'yesterday'"):
        SendWindow.parse({"from_date": "yesterday", "to_date": "2026-12-03", "messages": 1})
    with pytest.raises(ValueError, match="to_date is before"):
        SendWindow.parse({"from_date": "2026-12-03", "to_date": "2026-12-02", "messages": 1})
    text = json.dumps(
        {
            "from_date": "2026-12-03T09:00:00",
            "to_date": "2026-12-03T09:01:00",
            "messages": 5,
            "from_email": "News@Example.com",
        }
    )
    window = SendWindow.parse(text)  # the string a template renders
    assert window.from_email == "news@example.com"
    assert window.from_date.tzinfo is not None  # naive is UTC
    assert SendWindow.parse(window.to_json()) == window
    from sendmux_airflow import SendmuxDeliverySensor

    with pytest.raises(ValueError, match="exactly one"):
        SendmuxDeliverySensor(task_id="w")
