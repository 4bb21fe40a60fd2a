"""register(app), the shared tasks and the settings, on apps that never reach a broker."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("celery")

from celery import Celery
from celery.exceptions import DuplicateTaskNameWarning

import sendmux_celery
from sendmux_celery import SEND_BATCH, SEND_EMAIL, SendmuxSettings, SettingsError, register
from sendmux_dispatch import RetryPolicy

PACKAGE = Path(sendmux_celery.__file__).parent


def _app() -> Any:
    return Celery("t", broker="memory://", backend="cache+memory://", set_as_current=False)


def test_register_puts_both_tasks_on_the_app_with_the_delivery_options() -> None:
    app = _app()
    tasks = register(app, queue="mail", time_limit=120)
    assert set(app.tasks) >= {SEND_EMAIL, SEND_BATCH}
    for task in (tasks.send_email, tasks.send_batch, app.tasks[SEND_BATCH]):
        assert task.acks_late is True
        assert task.reject_on_worker_lost is True
        assert task.serializer == "json"
        assert task.time_limit == 120
        assert task.max_retries is None
    assert app.amqp.router.route({}, SEND_BATCH)["queue"].name == "mail"
    # Registered on this app only, not on every app of the process.
    assert SEND_BATCH not in _app().tasks


def test_register_twice_on_one_app_is_refused() -> None:
    app = _app()
    register(app)
    with (
        pytest.warns(DuplicateTaskNameWarning),
        pytest.raises(ValueError, match="already registered"),
    ):
        register(app, queue="other")


def test_register_refuses_to_turn_the_guarantees_off() -> None:
    with pytest.raises(TypeError, match="acks_late"):
        register(_app(), acks_late=False)


def test_a_retry_deadline_near_the_idempotency_window_is_refused() -> None:
    with pytest.raises(ValueError, match="idempotency window"):
        register(_app(), retry_policy=RetryPolicy(deadline=20 * 3600.0))


@pytest.mark.filterwarnings("ignore::celery.exceptions.DuplicateTaskNameWarning")
def test_shared_tasks_reach_an_app_by_autodiscovery_style_import() -> None:
    import sendmux_celery.tasks  # noqa: F401  (what autodiscover_tasks imports)

    app = _app()
    assert app.tasks[SEND_BATCH].acks_late is True
    assert app.tasks[SEND_EMAIL].name == SEND_EMAIL


def test_settings_come_from_app_conf_and_the_key_from_the_environment_as_fallback() -> None:
    conf = {"sendmux_sending_url": "http://127.0.0.1:1/api/v1"}
    settings = SendmuxSettings.from_conf(conf, {"SENDMUX_API_KEY": "smx_root_env_000000"})
    assert settings.api_key.get_secret_value() == "smx_root_env_000000"
    assert settings.sending_url == "http://127.0.0.1:1/api/v1"
    assert "smx_root_env" not in repr(settings)
    own = SendmuxSettings.from_conf({"sendmux_api_key": "smx_root_conf_0000"}, {})
    assert own.api_key.get_secret_value() == "smx_root_conf_0000"
    with pytest.raises(SettingsError, match="SENDMUX_API_KEY"):
        SendmuxSettings.from_conf({}, {})


def test_the_pack_does_not_speak_http_itself() -> None:
    for path in PACKAGE.glob("*.py"):
        tree = ast.parse(path.read_text())
        imported = {
            alias.name.split(".")[0]
            for node in ast.walk(tree)
            if isinstance(node, ast.Import)
            for alias in node.names
        } | {
            (node.module or "").split(".")[0]
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom)
        }
        assert not imported & {"httpx", "requests", "urllib3", "sendmux_airflow"}, path.name


@pytest.mark.parametrize(
    ("messages", "key", "code"),
    [
        ([], "job-1-batch-0", "invalid_count"),
        ([{"to": "a@example.com"}] * 101, "job-1-batch-0", "invalid_count"),
        ([{"to": "a@example.com"}], "no spaces allowed", "invalid"),
        ([{"to": "a@example.com"}], "", "invalid"),
    ],
)
def test_a_batch_that_cannot_be_sent_fails_before_any_setting_or_request(
    messages: list[dict[str, str]], key: str, code: str
) -> None:
    # No API key and no URL configured: the verdict comes before they are needed.
    summary = register(_app()).send_batch.apply(args=[messages, key]).get()
    assert summary["status"] == "failed"
    assert summary["error"]["errors"][0]["code"] == code
    assert summary["counts"]["queued"] == 0
    assert summary["counts"]["invalid"] == len(messages)


def test_the_bulk_file_task_is_registered_and_can_have_a_queue_of_its_own() -> None:
    from sendmux_celery import SEND_BULK_FILE

    app = _app()
    tasks = register(app, queue="mail", bulk_queue="bulk")
    assert tasks.send_bulk_file.name == SEND_BULK_FILE
    assert tasks.send_bulk_file.acks_late is True
    assert app.amqp.router.route({}, SEND_BULK_FILE)["queue"].name == "bulk"
    assert app.amqp.router.route({}, SEND_BATCH)["queue"].name == "mail"
    same = _app()
    register(same, queue="mail")
    assert same.amqp.router.route({}, SEND_BULK_FILE)["queue"].name == "mail"


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["/nowhere/list.csv", {"from": "a@example.com", "subject": "s"}, "job"], "path"),
        ([__file__, {"from": "a@example.com", "subject": "s"}, ""], "job_key"),
        ([__file__, ["not", "a", "template"], "job"], "template"),
    ],
)
def test_the_bulk_file_task_refuses_bad_arguments_naming_the_field(
    args: list[Any], field: str
) -> None:
    from sendmux_celery import BulkFileError

    result = register(_app()).send_bulk_file.apply(args=args)
    with pytest.raises(BulkFileError, match=f"send_bulk_file: {field} "):
        result.get()


def test_pacer_limit_and_window_come_from_app_conf_and_bad_ones_are_refused() -> None:
    key = {"sendmux_api_key": "smx_root_conf_0000"}
    settings = SendmuxSettings.from_conf(
        {**key, "sendmux_pacer_limit": 30, "sendmux_pacer_window": 1}
    )
    assert (settings.pacer_limit, settings.pacer_window) == (30, 1.0)
    assert SendmuxSettings.from_conf(key).pacer_limit == 1800
    with pytest.raises(SettingsError, match="whole number of seconds"):
        SendmuxSettings.from_conf({**key, "sendmux_pacer_window": 0.5})
    with pytest.raises(SettingsError, match="sendmux_pacer_limit"):
        SendmuxSettings.from_conf({**key, "sendmux_pacer_limit": 0})


@pytest.mark.filterwarnings("ignore::celery.exceptions.DuplicateTaskNameWarning")
def test_the_shared_tasks_include_the_bulk_file_task() -> None:
    import sendmux_celery.tasks  # noqa: F401  (what autodiscover_tasks imports)
    from sendmux_celery import SEND_BULK_FILE

    task = _app().tasks[SEND_BULK_FILE]
    assert task.acks_late is True
    assert task.reject_on_worker_lost is True
