"""The Celery half of `make demo`: a 10,000-recipient file sent by a worker's bulk task.

A ``celery worker`` subprocess (prefork, 2 processes) runs the pack's tasks;
``sendmux.send_bulk_file`` reads the CSV, streams it into 100 batch tasks and
reports PROGRESS until every batch has its verdict. The broker and result
backend are the local RabbitMQ and Redis when both answer, else an embedded
setup that needs no server: kombu's filesystem transport and a SQLite result
backend under ``.demo/celery`` (which also holds the job's progress). The
sandbox then counts every recipient exactly once.

    python scripts/celery_demo.py [--embedded]   # alone, against a sandbox of its own
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
RECIPIENTS = 10_000
JOB_KEY = "demo/celery-newsletter"
TEMPLATE = {
    "from": {"email": "news@example.com", "name": "Example News"},
    "subject": "Hello {{ name }}, your December digest",
    "text_body": "Hi {{ name }}, you are reader #{{ number }}.",
}
# Two pool processes: the bulk task holds one while the other sends its batches.
WORKER_ARGS = ["--pool", "prefork", "--concurrency", "2", "--queues", "demo-bulk,demo-mail"]
WORKER_ARGS += ["--without-gossip", "--without-mingle", "--loglevel", "WARNING"]
LOCAL_RABBITMQ = "amqp://guest:guest@127.0.0.1:5672//"
LOCAL_REDIS = "redis://127.0.0.1:6379/0"


def _answers(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True
    return False


def setup(home: Path, *, embedded: bool) -> tuple[str, dict[str, str]]:
    """(a description, the worker's broker environment)."""
    if not embedded and _answers(5672) and _answers(6379):
        redis = os.environ.get("SENDMUX_DEMO_REDIS_URL", LOCAL_REDIS)
        return f"local RabbitMQ and Redis ({redis})", {
            "SENDMUX_DEMO_BROKER": LOCAL_RABBITMQ,
            "SENDMUX_DEMO_BACKEND": redis,
            "SENDMUX_DEMO_PACER": redis,
        }
    broker = home / "broker"
    shutil.rmtree(broker, ignore_errors=True)  # no message of an earlier run
    for folder in ("queue", "processed", "control"):
        (broker / folder).mkdir(parents=True)
    transport = {
        "data_folder_in": str(broker / "queue"),
        "data_folder_out": str(broker / "queue"),
        "processed_folder": str(broker / "processed"),
        "control_folder": str(broker / "control"),
        "polling_interval": 0.02,  # a free pool process asks again this soon (1 s by default)
    }
    results = home / "results.db"
    results.unlink(missing_ok=True)
    return "embedded: kombu filesystem transport, SQLite results and progress (no server)", {
        "SENDMUX_DEMO_BROKER": "filesystem://",
        "SENDMUX_DEMO_TRANSPORT": json.dumps(transport),
        "SENDMUX_DEMO_BACKEND": f"db+sqlite:///{results}",
    }


def write_list(path: Path) -> Path:
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(["email", "name", "number"])
        for i in range(RECIPIENTS):
            writer.writerow([f"subscriber{i}@demo.example.com", f"Subscriber {i}", i])
    return path


def run_bulk_job(sandbox: Any, *, embedded: bool = False, home: Path | None = None) -> bool:
    """The bulk job through a worker against ``sandbox``; prints what happened. True on success."""
    from celery import Celery

    from sendmux_celery import PROGRESS, SEND_BULK_FILE

    home = home or Path(os.environ.get("SENDMUX_DEMO_DIR", REPO / ".demo")) / "celery"
    home.mkdir(parents=True, exist_ok=True)
    described, broker_env = setup(home, embedded=embedded)
    print(f"\nCelery: {described}")
    env = {
        **os.environ,
        **broker_env,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), str(HERE)])),
        "SENDMUX_DEMO_SENDING_URL": sandbox.sending_url,
        "SENDMUX_DEMO_MANAGEMENT_URL": sandbox.management_url,
        "SENDMUX_API_KEY": sandbox.api_key,
    }
    log = home / "worker.log"
    with log.open("wb") as out:
        worker = subprocess.Popen(  # noqa: S603 -- our own interpreter and arguments
            [sys.executable, "-m", "celery", "-A", "celery_demo_app", "worker", *WORKER_ARGS],
            cwd=HERE,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    producer = Celery("sendmux_demo_producer")
    producer.conf.update(
        broker_url=broker_env["SENDMUX_DEMO_BROKER"],
        broker_transport_options=json.loads(broker_env.get("SENDMUX_DEMO_TRANSPORT", "{}")),
        result_backend=broker_env["SENDMUX_DEMO_BACKEND"],
        task_serializer="json",
        accept_content=["json"],
    )
    before = sandbox.stats()
    try:
        path = write_list(home / "subscribers.csv")
        print(f"Celery: sendmux.send_bulk_file({path.name}: {RECIPIENTS:,} recipients)")
        started = time.monotonic()
        result = producer.send_task(
            SEND_BULK_FILE, args=[str(path), TEMPLATE, JOB_KEY], queue="demo-bulk"
        )
        shown = 0.0
        while not result.ready():
            if worker.poll() is not None:
                print(log.read_text(errors="replace")[-3000:])
                print("Celery: the worker exited")
                return False
            if result.state == PROGRESS and time.monotonic() - shown >= 2.0:
                meta = {"batches_done": 0, "batches": 0, "queued": 0, **result.info}
                shown = time.monotonic()
                print(
                    f"  PROGRESS {meta['stage']:10} read {meta['read']:>6,}  batches "
                    f"{meta['batches_done']:>3}/{meta['batches']:<3} queued {meta['queued']:>6,}"
                )
            if time.monotonic() - started > 600:
                print("Celery: the job did not finish in 10 minutes")
                return False
            time.sleep(0.1)
        report = result.get(timeout=10, propagate=False)
        elapsed = time.monotonic() - started
    finally:
        producer.close()
        worker.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            worker.wait(timeout=15)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(timeout=10)
    if not isinstance(report, dict):
        print(f"Celery: the bulk task failed: {report!r}")
        return False
    after = sandbox.stats()
    print(
        f"Celery: report in {elapsed:.1f} s: total {report['total']:,}, queued "
        f"{report['queued']:,}, failed {report['failed']}, invalid {report['invalid']}, "
        f"batches {report['batches']}, task attempts {report['requests']}"
    )
    counts = {
        name: after[name] - before[name]
        for name in ("accepted_messages", "unique_recipients", "duplicate_deliveries")
    }
    print("Celery: the sandbox counted for this job:")
    for name, value in counts.items():
        print(f"  {name:22} {value:,}")
    once = counts == {
        "accepted_messages": RECIPIENTS,
        "unique_recipients": RECIPIENTS,
        "duplicate_deliveries": 0,
    }
    print(f"Celery: exactly once: {'yes' if once else 'NO'}")
    return bool(report["ok"]) and once


def main() -> None:
    from sendmux_sandbox import SandboxConfig, SandboxServer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--embedded", action="store_true", help="no server, even if one answers")
    args = parser.parse_args()
    with SandboxServer(SandboxConfig(delivery_delay=0.0)) as sandbox:
        ok = run_bulk_job(sandbox, embedded=args.embedded)
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
