"""send_bulk refuses a configuration it cannot count in, before reading the list."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

pytest.importorskip("celery")

from celery import Celery

from sendmux_celery import SettingsError, send_bulk
from sendmux_celery._progress import progress_url


def test_send_bulk_without_a_progress_redis_names_the_setting_and_reads_nothing() -> None:
    app = Celery("t", broker="memory://", backend="cache+memory://")
    read: list[int] = []

    def rows() -> Iterator[str]:
        read.append(1)
        yield "a@example.com"

    with pytest.raises(SettingsError, match="sendmux_progress_url"):
        send_bulk(
            app, {"from": "n@example.com", "subject": "s", "text_body": "t"}, rows(), job_key="j"
        )
    assert read == []


def test_progress_url_prefers_the_setting_then_a_redis_result_backend() -> None:
    assert progress_url(
        {"sendmux_progress_url": "redis://h/3", "result_backend": "redis://h/1"}
    ) == ("redis://h/3")
    assert progress_url({"result_backend": "rediss://h/1"}) == "rediss://h/1"
    with pytest.raises(SettingsError, match="must be a Redis URL string"):
        progress_url({"sendmux_progress_url": 3})
