"""The issue's big test, scaled: a CLI job with a SQLite ledger, killed -9 ten times.

Between runs the list is edited the ways real lists change: rows inserted at
the top, rows removed, invalid rows fixed, and once the template's subject.
At the end every recipient of the final list was delivered exactly once, and
the removed rows that had been sent were sent once.

Sizes: the issue's own (50,000 recipients; 500 inserted at the top, 300
removed, 200 invalid rows fixed, spread over the runs; the subject changed
once), ~20 s on the shared 2-core machine when quiet. The sandbox's latency
fault slows each request so every kill lands mid-job, often between an
answer and its ledger write; each run is killed after a random number of new
acceptances (up to a tenth of the list), so the ten killed runs work through
about half of it and a last clean run the rest. If the suite outgrows its
budget, N is the knob: the kills and edits do not depend on it.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from tests.integration.test_cli import cli_env

N = 50_000
KILLS = 10
# The edits, spread over the runs: 500 inserted, 300 removed, 200 fixed.
INSERT_PER_RUN, REMOVE_PER_RUN, FIX_PER_RUN = 50, 30, 20
INVALID = 400  # half of them fixed along the way, half stay invalid
SEED = 20261202


def row(email: str, i: int) -> str:
    return f"{email},Reader {i}\n"


def cli(tmp_path: Path, sandbox: Any, recipients: Path, subject: str) -> list[str]:
    template = tmp_path / "msg.json"
    template.write_text(
        json.dumps(
            {
                "from": {"email": "news@example.com"},
                "subject": subject,
                "html_body": "<p>Hi {{ name }}</p>",
            }
        )
    )
    return [
        sys.executable,
        "-m",
        "sendmux_dispatch.cli",
        "--template",
        str(template),
        "--recipients",
        str(recipients),
        "--job-key",
        "kills/announcement",
        "--ledger",
        str(tmp_path / "ledger.db"),
        "--concurrency",
        "4",
        "--quiet",
        "--sending-url",
        sandbox.sending_url,
        "--management-url",
        sandbox.management_url,
    ]


def test_ten_kill_9s_with_the_list_edited_between_runs_mail_everyone_exactly_once(
    tmp_path: Path, sandbox: Any
) -> None:
    dice = random.Random(SEED)
    # The list: (address, valid?) in file order; invalid ones are fixable typos.
    people: list[tuple[str, bool]] = [(f"r{i}@example.com", True) for i in range(N)]
    for i, spot in enumerate(sorted(dice.sample(range(N), INVALID))):
        people[spot] = (f"bad{i}@@example.com", False)
    removed: set[str] = set()
    recipients = tmp_path / "list.csv"
    subject = "Our announcement"

    def write_list() -> None:
        lines = ["email,name\n"] + [row(email, i) for i, (email, _) in enumerate(people)]
        recipients.write_text("".join(lines))

    sandbox.set_faults(latency=0.05)
    inserted = 0
    kills = 0
    started = time.monotonic()
    for run in range(KILLS):
        write_list()
        before = sandbox.stats()["accepted_messages"]
        proc = subprocess.Popen(
            cli(tmp_path, sandbox, recipients, subject),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=cli_env(sandbox.api_key),
        )
        # Killed after a random number of new acceptances: mid-job, at a random point.
        target = before + dice.randint(1, N // KILLS)
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            if sandbox.stats()["accepted_messages"] >= target:
                break
            time.sleep(dice.uniform(0.0, 0.02))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        _, err = proc.communicate(timeout=120)
        assert "Traceback" not in err, err

        # The edits before the next run.
        for _ in range(INSERT_PER_RUN):
            people.insert(0, (f"new{inserted}@example.com", True))
            inserted += 1
        for spot in dice.sample(range(len(people)), REMOVE_PER_RUN):
            removed.add(people[spot][0])
        people = [person for person in people if person[0] not in removed]
        broken = [k for k, (_, valid) in enumerate(people) if not valid]
        for spot in broken[:FIX_PER_RUN]:
            email, _ = people[spot]
            people[spot] = (email.replace("@@", "@"), True)
        if run == KILLS // 2:
            subject = "Our announcement (updated)"
    killed_phase = time.monotonic() - started

    # One clean run on the final list, exactly as it stands after the last edits.
    write_list()
    sandbox.set_faults()
    final = subprocess.run(
        cli(tmp_path, sandbox, recipients, subject),
        capture_output=True,
        text=True,
        env=cli_env(sandbox.api_key),
        timeout=120,
        check=False,
    )
    assert final.returncode in (0, 3), final.stderr
    assert "Traceback" not in final.stderr

    assert kills == KILLS, f"only {kills} runs were killed mid-job"
    valid = {email for email, ok in people if ok}
    assert len(valid) >= N - INVALID
    counts = Counter(m["to"] for m in sandbox.messages(limit=1_000_000))
    stats = sandbox.stats()
    assert stats["duplicate_deliveries"] == 0
    assert max(counts.values()) == 1
    missing = valid - set(counts)
    assert not missing, sorted(missing)[:10]
    # Nobody outside the final list except removed rows (each sent at most once, above).
    extra = set(counts) - valid
    assert extra <= removed
    assert stats["unique_recipients"] == len(valid) + len(extra)
    # Invalid rows that were never fixed were never sent.
    assert not any("@@" in email for email in counts)
    assert "already accepted" in final.stdout
    print(f"{kills} kills in {killed_phase:.1f} s, {len(valid)} final valid recipients")
