"""The benchmark scripts still run, at toy sizes, so they cannot rot between releases.

These are not timed tests: speed is judged by the full-size runs in
``benchmarks/`` (figures in docs/benchmarks.md). Here a script may miss a
speed target at a toy size (exit 1), but it must not crash, must print its
section, must not touch docs/benchmarks.md without ``--write``, and whatever
it checks about correctness (exactly once, no 429s) must hold.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "docs" / "benchmarks.md"


def run_script(name: str, *args: str) -> tuple[int, str]:
    before = RESULTS.read_bytes()
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / name), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    assert RESULTS.read_bytes() == before, f"{name} wrote docs/benchmarks.md without --write"
    return result.returncode, output


@pytest.mark.parametrize(
    ("script", "heading", "verdict"),
    [
        ("bench_serialize.py", "## Serialisation", r"ours/sdk = \*\*[\d.]+x\*\*"),
        ("bench_render.py", "## Personalised rendering", r"one key's ceiling \(3,000"),
    ],
)
def test_cpu_benchmarks_compare_and_give_a_verdict(script: str, heading: str, verdict: str) -> None:
    # Each checks first that its contenders produce the same output (else it
    # exits with a message, not a table), then times them.
    code, output = run_script(script, "--messages", "300", "--repeats", "1")
    assert code in (0, 1), output
    assert heading in output
    assert re.search(verdict, output), output
    assert re.search(r"\*\*[\d.]+x\*\*", output), "the headline ratio is missing"
    assert ("NOT met" in output) == (code == 1), output


def test_rate_ceiling_benchmark_sees_no_429s() -> None:
    code, output = run_script(
        "bench_rate_ceiling.py",
        *("--limit", "20", "--window", "1", "--seconds", "2.5"),
        *("--latency", "0.01", "--concurrency", "4", "--headroom", "0.05"),
    )
    assert code in (0, 1), output
    table_row = r"^\| headroom 0\.05 .*\| (\d+) \| [\d.]+ \| [\d.]+% \| (\d+) \|$"
    row = re.search(table_row, output, re.MULTILINE)
    assert row is not None, output
    requests, rate_limited = int(row.group(1)), int(row.group(2))
    assert requests > 20  # more than one window's worth: the pacer was exercised
    assert rate_limited == 0


def test_memory_benchmark_sends_everyone_once() -> None:
    code, output = run_script("bench_memory.py", "--n", "3000")
    assert code == 0, output  # exits 1 unless the sandbox saw every recipient exactly once
    assert "exactly once: True" in output
    assert "3000 queued, 0 failed" in output


def test_soak_benchmark_checks_exactly_once_through_faults() -> None:
    code, output = run_script("bench_soak.py", "--n", "10000")
    checks = dict(re.findall(r"(?:Checks: |; )([^:;]+): (yes|NO)", output))
    assert "accepted == N" in checks, output
    # At a toy size a rare fault kind may not come up; every other check is
    # about exactly-once and must hold.
    required = {name: ok for name, ok in checks.items() if name != "every fault kind fired"}
    assert set(required.values()) == {"yes"}, output
    assert code == (0 if checks["every fault kind fired"] == "yes" else 1), output


def test_ledger_benchmark_compares_backends_and_sends_everyone_once(redis_url: str) -> None:
    code, output = run_script(
        "bench_ledger.py",
        *("--messages", "300", "--repeats", "1", "--memory-n", "300"),
        *("--redis-url", redis_url),
    )
    assert code in (0, 1), output
    assert "## Send ledger" in output
    assert re.search(r"sqlite \*\*[\d.]+x\*\*, redis \*\*[\d.]+x\*\*", output), output
    assert output.count("| yes |") == 3, output  # every memory run: exactly once
    assert ("NOT met" in output) == (code == 1), output


def test_celery_benchmark_compares_the_pack_with_the_naive_task(
    rabbitmq_url: str, redis_url: str
) -> None:
    code, output = run_script(
        "bench_celery.py",
        *("--limit", "20", "--window", "1", "--pack-n", "1000", "--naive-n", "30"),
        # 50 requests at 20 a second (past the first window's burst): the kill
        # run lasts long enough to be killed in (1,000 was over in one poll).
        *("--kill-pack-n", "5000", "--kill-naive-n", "30"),
        *("--broker", rabbitmq_url, "--redis-url", redis_url),
    )
    assert code in (0, 1), output
    assert "## Celery: the task pack against one task per recipient" in output
    assert re.search(r"pack / naive = \*\*[\d.]+x\*\*", output), output
    # The pack is exactly once with no 429s, also across the kill, at any size.
    assert re.search(r"^\| pack: .*\| 1,000 \| .* \| 0 \| 0 \|$", output, re.MULTILINE), output
    # The kill rows: recipients, kills, lost, duplicates, 429s.
    assert re.search(r"^\| pack \| 5,000 \| [1-3] \| 0 \| 0 \| 0 \|", output, re.MULTILINE), output
    assert re.search(r"^\| naive \| 30 \| [0-3] \| 0 \| \d+ \|", output, re.MULTILINE), output
    assert ("NOT met" in output) == (code == 1), output


def test_airflow_benchmark_runs_both_patterns_and_sends_everyone_once() -> None:
    # Two bulk runs (task state store, SQLite ledger_url) and two mapped SDK tasks,
    # each through `airflow dags test`.
    code, output = run_script("bench_airflow.py", "--recipients", "500", "--mapped", "2")
    assert code in (0, 1), output
    assert "## Airflow: one bulk task against dynamic task mapping" in output
    assert re.search(r"ledger: task state store \| [\d,]+ \|", output), output
    assert re.search(r"ledger: `ledger_url` \(SQLite\) \| [\d,]+ \|", output), output
    assert re.search(r"^\| dynamic mapping, 2 tasks x one SDK send \|", output, re.M), output
    assert "each recipient exactly once in every run; " in output
    assert "429s: 0;" in output
    assert ("NOT met" in output) == (code == 1), output
