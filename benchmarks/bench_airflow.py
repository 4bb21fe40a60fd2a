"""A whole list in one Airflow task against the pattern Airflow users write today.

Both run through ``airflow dags test`` (SQLite metadata in a temporary
AIRFLOW_HOME), against one sandbox in its own process whose rate limit is the
Sending API's ratio scaled in time (300 per 10 s, as 1,800 per 60 s):

* **bulk**: one ``SendmuxBulkSendOperator`` task reading a CSV of
  ``--recipients`` rows (100,000 by default), batches of 100, paced by the
  hook at the scaled ceiling (connection extras ``rate_limit``/``rate_window``).
  Figures: the share of the ceiling used while sending (goal >= 95 %), the
  sandbox's 429s (goal 0), exactly once, and the task process's peak RSS.
* **mapped**: dynamic task mapping over one send per recipient with the
  official SDK (``sendmux-sending``), at the 1,024-instance cap
  (``--mapped``). Figures: messages per second per key and wall time per
  1,000 recipients.

    python benchmarks/bench_airflow.py            # print the table
    python benchmarks/bench_airflow.py --write    # also update docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # the helpers sit beside this script
    ROOT,
    SandboxProcess,
    command_line,
    environment,
    environment_markdown,
    markdown_table,
    write_section,
)

from sendmux_sandbox.config import SEND_ONLY_API_KEY

SECTION = "airflow"
DAGS = Path(__file__).resolve().parent / "airflow_dags"
TARGET_SHARE = 0.95


def _child(rss_file: str, airflow_args: list[str]) -> int:
    """Run Airflow's CLI in this process; write this process's peak RSS (KiB) at exit."""
    import atexit

    def record() -> None:
        Path(rss_file).write_text(str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))

    atexit.register(record)
    from airflow.__main__ import main as airflow_main

    sys.argv = ["airflow", *airflow_args]
    airflow_main()
    return 0


class Airflow:
    """An AIRFLOW_HOME of its own, the bench DAGs, and the connection to the sandbox."""

    def __init__(
        self,
        home: Path,
        sandbox: SandboxProcess,
        limit: int,
        window: float,
        ledger_url: str | None = None,
    ) -> None:
        connection: dict[str, Any] = {
            "conn_type": "sendmux",
            "host": sandbox.sending_url,
            "password": sandbox.api_key,
            "extra": {
                "management_url": sandbox.management_url,
                "from_email": "news@shop.example.com",
                "rate_limit": limit,
                "rate_window": window,
            },
        }
        if ledger_url:
            connection["extra"]["ledger_url"] = ledger_url
        self.home = home
        self.env = dict(
            os.environ,
            AIRFLOW_HOME=str(home),
            AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{home / 'airflow.db'}",
            AIRFLOW__CORE__LOAD_EXAMPLES="False",
            AIRFLOW__CORE__DAGS_FOLDER=str(DAGS),
            AIRFLOW__LOGGING__LOGGING_LEVEL="WARNING",
            AIRFLOW_CONN_SENDMUX_DEFAULT=json.dumps(connection),
            AIRFLOW_CONN_SENDMUX_SDK=json.dumps(
                {"conn_type": "sendmux", "host": sandbox.sending_url, "password": SEND_ONLY_API_KEY}
            ),
            PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        )

    def run(self, *args: str, **env: str) -> tuple[float, int]:
        """``airflow ARGS`` in a child process: (wall seconds, peak RSS in MiB)."""
        rss = self.home / "rss.txt"
        rss.unlink(missing_ok=True)
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, __file__, "--child", str(rss), *args],
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=3600,
            check=False,
        )
        wall = time.monotonic() - started
        if done.returncode != 0:
            raise RuntimeError(
                f"airflow {' '.join(args)} failed ({done.returncode}):\n"
                f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
            )
        return wall, int(rss.read_text()) // 1024 if rss.exists() else 0

    def xcom(self, dag_id: str, task_id: str) -> Any:
        with sqlite3.connect(self.home / "airflow.db") as db:
            row = db.execute(
                "SELECT value FROM xcom WHERE dag_id = ? AND task_id = ? AND key = ?"
                " ORDER BY timestamp DESC LIMIT 1",
                (dag_id, task_id, "return_value"),
            ).fetchone()
        if row is None:
            raise RuntimeError(f"no return value of {dag_id}.{task_id}")
        value = row[0]
        return json.loads(value) if isinstance(value, str | bytes) else value


def write_csv(path: Path, n: int) -> None:
    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(["email", "name"])
        for i in range(n):
            writer.writerow([f"person.{i}@mail{i % 13}.example.org", f"P{i}"])


def measure(args: argparse.Namespace) -> dict[str, Any]:
    ceiling = args.limit / args.window
    with (
        tempfile.TemporaryDirectory(prefix="sendmux-bench-airflow-") as tmp,
        SandboxProcess(
            *("--rate-limit", str(args.limit), "--rate-window", str(args.window)),
            *("--latency", str(args.latency), "--delivery-delay", "0"),
        ) as sandbox,
    ):
        home = Path(tmp)
        recipients = home / "recipients.csv"
        write_csv(recipients, args.recipients)
        variants = [("task state store", None)]
        if args.ledger_url:
            variants.append(("`ledger_url` " + args.ledger_kind, args.ledger_url))
        bulks = []
        for label, url in variants:
            ledger_url = url.replace("{tmp}", str(home)) if url else None
            airflow = Airflow(home, sandbox, args.limit, args.window, ledger_url)
            if not bulks:
                airflow.run("db", "migrate")
            sandbox.admin.reset()
            wall, rss = airflow.run(
                "dags",
                "test",
                "sendmux_bench_bulk",
                SENDMUX_BENCH_CSV=str(recipients),
                SENDMUX_BENCH_CONCURRENCY=str(args.concurrency),
            )
            report = airflow.xcom("sendmux_bench_bulk", "bulk")
            stats = sandbox.admin.stats()
            bulk = {
                "ledger": label,
                "wall": wall,
                "rss_mib": rss,
                "elapsed": float(report["elapsed"]),
                "requests": int(report["requests"]),
                "queued": int(report["queued"]),
                "rate_limited": int(stats["rate_limited"]),
                "unique": int(stats["unique_recipients"]),
                "duplicates": int(stats["duplicate_deliveries"]),
            }
            bulk["share"] = bulk["requests"] / bulk["elapsed"] / ceiling
            # The fastest the limit allows: a full window at the start (the moving
            # window starts empty), then a window's worth every window.
            fastest = args.window * (math.ceil(bulk["requests"] / args.limit) - 1)
            bulk["vs_fastest"] = fastest / bulk["elapsed"] if fastest > 0 else float("nan")
            bulk["per_second"] = bulk["queued"] / bulk["elapsed"]
            bulks.append(bulk)

        sandbox.admin.reset()
        wall, rss = airflow.run(
            "dags", "test", "sendmux_bench_mapped", SENDMUX_BENCH_MAPPED=str(args.mapped)
        )
        stats = sandbox.admin.stats()
        mapped = {
            "wall": wall,
            "rss_mib": rss,
            "queued": int(stats["accepted_messages"]),
            "rate_limited": int(stats["rate_limited"]),
            "duplicates": int(stats["duplicate_deliveries"]),
        }
        mapped["per_second"] = mapped["queued"] / wall
    return {"bulks": bulks, "mapped": mapped, "ceiling": ceiling}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--child"]:
        return _child(argv[1], argv[2:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--recipients", type=int, default=100_000, help="rows of the bulk CSV")
    parser.add_argument("--mapped", type=int, default=1024, help="mapped SDK tasks (cap 1,024)")
    parser.add_argument("--limit", type=int, default=300, help="requests per window (scaled)")
    parser.add_argument("--window", type=float, default=10.0, help="seconds (scaled)")
    parser.add_argument("--latency", type=float, default=0.1, help="sandbox latency per send")
    parser.add_argument(
        "--concurrency", type=int, default=8, help="the bulk task's (its default: 8)"
    )
    parser.add_argument(
        "--ledger-url",
        default="{tmp}/ledger.db",
        help="a second bulk run with this ledger_url ({tmp}: the run's directory; "
        "empty: none). The first always runs on the task state store ledger",
    )
    parser.add_argument("--ledger-kind", default="(SQLite)", help="the second row's label")
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args(argv)
    facts = environment(["apache-airflow", "sendmux-sending"])
    result = measure(args)
    bulks, mapped = result["bulks"], result["mapped"]
    rows = [
        [
            f"`SendmuxBulkSendOperator`, one task, {args.recipients:,} recipients, "
            f"ledger: {bulk['ledger']}",
            f"{bulk['per_second']:,.0f}",
            f"{bulk['wall'] / args.recipients * 1000:.2f} s",
            f"{bulk['share']:.1%}",
            f"{bulk['vs_fastest']:.1%}",
            str(bulk["rate_limited"]),
            f"{bulk['rss_mib']:,} MiB",
        ]
        for bulk in bulks
    ]
    rows.append(
        [
            f"dynamic mapping, {args.mapped:,} tasks x one SDK send",
            f"{mapped['per_second']:,.1f}",
            f"{mapped['wall'] / args.mapped * 1000:.1f} s",
            "-",
            "-",
            str(mapped["rate_limited"]),
            f"{mapped['rss_mib']:,} MiB",
        ]
    )
    table = markdown_table(
        [
            "contender",
            "messages/s per key",
            "wall time per 1,000",
            "of the ceiling",
            "of the fastest",
            "429s",
            "peak RSS",
        ],
        rows,
    )
    bulk = bulks[0]  # the default: the task state store
    exactly_once = all(
        b["unique"] == b["queued"] == args.recipients and not b["duplicates"] for b in bulks
    )
    no_429 = all(b["rate_limited"] == 0 for b in bulks)
    met = bulk["share"] >= TARGET_SHARE and no_429 and exactly_once
    ratio = bulk["per_second"] / mapped["per_second"] if mapped["per_second"] else float("inf")
    verdict = (
        f"Bulk (default ledger): **{bulk['share']:.1%}** of the ceiling while sending (goal "
        f">= {TARGET_SHARE:.0%}); 429s: {sum(b['rate_limited'] for b in bulks)}; "
        f"{'each recipient exactly once in every run' if exactly_once else 'NOT exactly once'}; "
        f"**{ratio:,.0f}x** the mapped pattern's messages/s per key: "
        + ("met." if met else "NOT met.")
    )
    markdown = "\n\n".join(
        [
            "## Airflow: one bulk task against dynamic task mapping",
            f"Command: `{command_line()}`",
            environment_markdown(facts),
            f"Both through `airflow dags test` (SQLite metadata), against a sandbox in its "
            f"own process: {args.limit} requests per {args.window:g} s (1,800 per 60 s "
            f"scaled in time), {args.latency * 1000:.0f} ms latency per send. Bulk: "
            "messages/s and the ceiling's share over the task's sending time (the report's "
            "`elapsed`); wall time includes Airflow's start. Mapped: accepted messages / "
            "wall time of the whole run. Peak RSS is the `airflow dags test` process's.",
            table,
            verdict,
            NOTES,
        ]
    )
    print(markdown)
    if args.write:
        print(f"\nwrote {write_section(SECTION, markdown)}")
    return 0 if met else 1


NOTES = """Notes: "of the ceiling" is the average request rate over the limit's rate, as
in the rate-ceiling section; it includes the first window's burst (the moving window
starts empty), so a short run can pass 100 %. "Of the fastest" is the least time the
limit allows for the task's requests (a window's worth per window, the first at once)
over the task's time. The bulk task's ledger is the task state store (the default on
Airflow 3.3), whose writes are round trips to the API server, which `airflow dags
test` runs inside the task's process (about 20 ms of its CPU each); the second row
has the connection's `ledger_url` on a local SQLite file instead.
`airflow dags test` runs mapped instances one after another; a deployment
runs them in parallel slots, which divides the mapped wall time by the slots but
cannot pass one message per request: at 1,800 requests a minute that pattern's
ceiling is 30 messages/s per key, against 3,000 for batches of 100. The cap of
1,024 mapped instances (`max_map_length`) also means a longer list does not fit in
one mapped task at all; the bulk task streams its file, so its memory does not
grow with the list."""


if __name__ == "__main__":
    sys.exit(main())
