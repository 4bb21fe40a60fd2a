"""Celery worker subprocesses for the integration tests (the fixtures are in conftest.py).

Each worker is ``celery -A celery_worker_app worker --pool prefork`` in a
subprocess of its own session (so a kill reaches its pool too), on a queue
of its own.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
DEFAULT_RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672//"
WRONG_KEY = "smx_root_wrong_0123456789abcdef"
WORKER_START_TIMEOUT = 30.0
RESULT_TIMEOUT = 40.0


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() == "true"


def shown(url: str) -> str:
    return re.sub(r"//[^@/]*@", "//***@", url)


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


class Worker:
    """A ``celery worker`` subprocess (prefork, 2 processes by default) and its log file."""

    def __init__(
        self,
        *,
        broker: str,
        backend: str,
        sandbox: Any,
        log: Path,
        concurrency: int = 2,
        queue: str | None = None,
        **env: str,
    ) -> None:
        from celery import Celery

        self.queue = queue or f"sendmux-test-{uuid.uuid4().hex[:10]}"
        self.broker = broker
        self.backend = backend
        self.log = log
        self.pacer_url = env.get("SENDMUX_CELERY_PACER")
        environ = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(REPO), str(HERE)]),
            "SENDMUX_CELERY_BROKER": broker,
            "SENDMUX_CELERY_BACKEND": backend,
            "SENDMUX_CELERY_QUEUE": self.queue,
            "SENDMUX_CELERY_SENDING_URL": sandbox.sending_url,
            "SENDMUX_CELERY_MANAGEMENT_URL": sandbox.management_url,
            "SENDMUX_CELERY_MAX_SECONDS": "150",
            "SENDMUX_API_KEY": sandbox.api_key,
            **env,
        }
        self._out = log.open("wb")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "celery_worker_app",
                "worker",
                "--pool",
                "prefork",
                "--concurrency",
                str(concurrency),
                "--queues",
                self.queue,
                "--hostname",
                f"{self.queue}-{uuid.uuid4().hex[:6]}@%h",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "--loglevel",
                "INFO",
            ],
            cwd=REPO,
            env=environ,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.producer = Celery("sendmux_test_producer", broker=broker, backend=backend)
        self.producer.conf.update(
            task_serializer="json", result_serializer="json", accept_content=["json"]
        )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self) -> None:
        deadline = time.monotonic() + WORKER_START_TIMEOUT
        while " ready." not in self.text():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"the worker did not start:\n{self.text()[-3000:]}")
            time.sleep(0.1)

    def pool(self) -> list[psutil.Process]:
        return psutil.Process(self.process.pid).children()

    def send_batch(self, messages: list[dict[str, Any]], key: str) -> Any:
        from sendmux_celery import SEND_BATCH, batch_task_id

        return self.producer.send_task(
            SEND_BATCH, args=[messages, key], queue=self.queue, task_id=batch_task_id(key)
        )

    def terminate(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # warm shutdown

    def send_email(self, message: dict[str, Any], key: str) -> Any:
        from sendmux_celery import SEND_EMAIL

        return self.producer.send_task(SEND_EMAIL, args=[message, key], queue=self.queue)

    def kill(self) -> None:
        """``kill -9`` the worker and its pool at once (a machine losing power, an OOM kill)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        self.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)
        # The worker's own session: its pool children go too, whatever state they are in.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)
        self._out.close()
        self.producer.close()
