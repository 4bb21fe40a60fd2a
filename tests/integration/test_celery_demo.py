"""The Celery part of `make demo` (scripts/celery_demo.py), run as the demo runs it.

On the embedded setup (kombu's filesystem transport, SQLite results and
progress): no server but the sandbox the script starts for itself.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("celery")

from celery_workers import REPO


def test_celery_demo_sends_10000_recipients_exactly_once_with_no_server(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "celery_demo.py"), "--embedded"],
        env={**os.environ, "SENDMUX_DEMO_DIR": str(tmp_path), "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    assert "embedded: kombu filesystem transport" in output
    assert "PROGRESS" in output
    assert "total 10,000, queued 10,000, failed 0, invalid 0, batches 100" in output
    assert "accepted_messages      10,000" in output
    assert "unique_recipients      10,000" in output
    assert "duplicate_deliveries   0" in output
    assert "exactly once: yes" in output
    assert (tmp_path / "celery" / "results.db").exists()
    assert "smx_" not in output  # the key is in no line the demo prints
