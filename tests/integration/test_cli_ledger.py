"""sendmux-send's send ledger as a person meets it: on by default, where it is, status, prune."""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_cli import cli_env, command, write

# ``state_home`` (tests/conftest.py, autouse) points XDG_STATE_HOME at the test's own folder.


def csv(emails: list[str]) -> str:
    return "email,name\n" + "".join(f"{email},N\n" for email in emails)


def run(
    tmp_path: Path, sandbox: Any, recipients: Path, *extra: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command(tmp_path, sandbox, recipients, *extra),
        capture_output=True,
        text=True,
        env=cli_env(sandbox.api_key),
        timeout=120,
        check=False,
    )


def tool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sendmux_dispatch.cli", *args],
        capture_output=True,
        text=True,
        env=cli_env(None),
        timeout=60,
        check=False,
    )


def counts(sandbox: Any) -> Counter[str]:
    return Counter(m["to"] for m in sandbox.messages(limit=100_000))


def test_the_default_ledger_is_in_the_state_directory_and_a_changed_list_mails_nobody_twice(
    tmp_path: Path, sandbox: Any, state_home: Path
) -> None:
    first = [f"a{i}@example.com" for i in range(250)]
    path = write(tmp_path / "list.csv", csv(first))
    result = run(tmp_path, sandbox, path)
    assert result.returncode == 0, result.stderr
    ledger = state_home / "sendmux" / "ledger.db"
    assert f"ledger: {ledger} (nothing recorded yet for this job key)" in result.stderr
    assert ledger.is_file()
    assert oct(ledger.stat().st_mode & 0o777) == "0o600"

    # 30 sign-ups at the top: without the ledger every later batch would move.
    second = [f"new{i}@example.com" for i in range(30)] + first
    write(path, csv(second))
    result = run(tmp_path, sandbox, path)
    assert result.returncode == 0, result.stderr
    assert "250 already accepted, 0 batches pending a replay" in result.stderr
    assert "30 queued" in result.stdout
    assert "250 already accepted" in result.stdout
    sent = counts(sandbox)
    assert set(sent) == set(second)
    assert set(sent.values()) == {1}


def test_no_ledger_says_so_and_writes_nothing(
    tmp_path: Path, sandbox: Any, state_home: Path
) -> None:
    path = write(tmp_path / "list.csv", csv(["b1@example.com", "b2@example.com"]))
    result = run(tmp_path, sandbox, path, "--no-ledger")
    assert result.returncode == 0, result.stderr
    assert "ledger: off (--no-ledger)" in result.stderr
    assert not state_home.exists()
    result = run(tmp_path, sandbox, path, "--keep-duplicates")
    assert "ledger: off (--keep-duplicates)" in result.stderr
    result = run(tmp_path, sandbox, path, "--keep-duplicates", "--ledger", str(tmp_path / "l.db"))
    assert result.returncode == 2
    assert "--keep-duplicates cannot be used with --ledger" in result.stderr
    result = run(tmp_path, sandbox, path, "--no-ledger", "--ledger", str(tmp_path / "l.db"))
    assert result.returncode == 2  # argparse: not allowed together


def test_ledger_path_status_and_prune(tmp_path: Path, sandbox: Any, state_home: Path) -> None:
    ledger = tmp_path / "my" / "ledger.db"
    path = write(tmp_path / "list.csv", csv([f"c{i}@example.com" for i in range(120)]))
    result = run(tmp_path, sandbox, path, "--ledger", str(ledger))
    assert result.returncode == 0, result.stderr
    assert f"ledger: {ledger}" in result.stderr
    # A pending batch, as a crash would leave it (its key, 3 members).
    with sqlite3.connect(ledger) as conn:
        (job,) = conn.execute("SELECT id FROM jobs").fetchone()
        conn.execute(
            "INSERT INTO intents VALUES (?, 'cli-test-left-pending', 1, ?, ?)",
            (job, time.time() - 90000, bytes(range(1, 25))),
        )

    status = tool("status", "--job-key", "cli-test", "--ledger", str(ledger))
    assert status.returncode == 0, status.stderr
    out = status.stdout
    assert f"ledger: {ledger}" in out
    assert "job cli-test: 120 recipients accepted, 1 batches pending (3 recipients)" in out
    assert re.search(r"last write  \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC \(\d+ s ago\)", out)
    assert "pending cli-test-left-pending: 3 recipients, resend 1, recorded 25.0 h ago" in out
    assert "past 23 h" in out
    listing = tool("status", "--ledger", str(ledger))
    assert "job cli-test: 120 recipients accepted" in listing.stdout
    assert (
        "nothing recorded" in tool("status", "--job-key", "other", "--ledger", str(ledger)).stdout
    )
    assert "no ledger at" in tool("status").stdout  # the default one was never used

    kept = tool("prune", "--older-than", "30", "--ledger", str(ledger))
    assert kept.returncode == 0, kept.stderr
    assert "pruned 0 jobs last written more than 30 days ago" in kept.stdout
    gone = tool("prune", "--older-than", "0d", "--job-key", "cli-test", "--ledger", str(ledger))
    assert "pruned 1 job cli-test" in gone.stdout
    assert (
        "nothing recorded"
        in tool("status", "--job-key", "cli-test", "--ledger", str(ledger)).stdout
    )
    bad = tool("prune", "--older-than", "soon", "--ledger", str(ledger))
    assert bad.returncode == 2
    assert "not a number of days" in bad.stderr


def test_a_ledger_path_that_is_a_folder_is_a_usage_error(tmp_path: Path, sandbox: Any) -> None:
    path = write(tmp_path / "list.csv", csv(["d1@example.com"]))
    result = run(tmp_path, sandbox, path, "--ledger", str(tmp_path))
    assert result.returncode == 2
    assert "is a directory" in result.stderr
    assert "Traceback" not in result.stderr
    assert counts(sandbox) == Counter()


def test_a_relative_xdg_state_home_is_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    from sendmux_dispatch.cli import default_ledger_path

    monkeypatch.setenv("XDG_STATE_HOME", "relative/state")
    assert default_ledger_path() == Path.home() / ".local" / "state" / "sendmux" / "ledger.db"
    monkeypatch.setenv("XDG_STATE_HOME", os.sep + "abs")
    assert default_ledger_path() == Path(os.sep, "abs", "sendmux", "ledger.db")
