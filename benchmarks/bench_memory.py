"""Peak memory of the sending process for a 1,000,000-recipient job from a generator.

The sandbox runs in its own process (rate limit off, 10 ms delivery delay),
so only the sender's memory is measured: its peak RSS, sampled every 10 ms in
a thread (psutil), minus its RSS just before the job started (after imports
and the client were set up). Target: at most 64 MB over the baseline.
Throughput (recipients per second) is reported beside it.

    python benchmarks/bench_memory.py                 # 1,000,000 recipients
    python benchmarks/bench_memory.py --n 100000      # smaller
    python benchmarks/bench_memory.py --write         # also update docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import gc
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # the helpers sit beside this script
    SandboxProcess,
    command_line,
    environment,
    environment_markdown,
    markdown_table,
    write_section,
)
from bench_rate_ceiling import TEMPLATE, people

from sendmux_dispatch import SendmuxClient, dispatch

SECTION = "memory"
TARGET_MB = 64.0
MB = 1024 * 1024


class PeakRss:
    """Samples this process's RSS in a background thread; ``peak`` is the highest seen."""

    def __init__(self, interval: float = 0.01) -> None:
        self._process = psutil.Process()
        self._interval = interval
        self._stop = threading.Event()
        self.peak = self._process.memory_info().rss
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._process.memory_info().rss)
            self._stop.wait(self._interval)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._process.memory_info().rss)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=1_000_000, help="recipients")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args(argv)
    facts = environment(["pydantic", "httpx", "jinja2"])
    with SandboxProcess("--rate-limit", "0", "--delivery-delay", "0.01") as sandbox:
        with SendmuxClient(
            sandbox.api_key, sending_url=sandbox.sending_url, timeout=60.0
        ) as client:
            gc.collect()
            baseline = psutil.Process().memory_info().rss
            started = time.monotonic()
            with PeakRss() as sampler:
                report = dispatch(
                    client,
                    TEMPLATE,
                    people(args.n),
                    job_key="bench-memory",
                    concurrency=args.concurrency,
                )
            elapsed = time.monotonic() - started
        stats = sandbox.admin.stats()
        sandbox_rss = psutil.Process(sandbox.pid).memory_info().rss
    growth = (sampler.peak - baseline) / MB
    exactly_once = (
        stats["accepted_messages"] == stats["unique_recipients"] == args.n
        and stats["duplicate_deliveries"] == 0
    )
    table = markdown_table(
        ["recipients", "baseline RSS", "peak RSS", "peak - baseline", "recipients/s", "elapsed"],
        [
            [
                f"{args.n:,}",
                f"{baseline / MB:.1f} MB",
                f"{sampler.peak / MB:.1f} MB",
                f"{growth:.1f} MB",
                f"{args.n / elapsed:,.0f}",
                f"{elapsed:.1f} s",
            ]
        ],
    )
    verdict = (
        f"Target: peak - baseline <= {TARGET_MB:.0f} MB: "
        f"{'met' if growth <= TARGET_MB else 'NOT met'} ({growth / TARGET_MB:.0%} of the budget). "
        f"Report: {report.summary_line()}. Sandbox: {stats['accepted_messages']:,} accepted, "
        f"{stats['duplicate_deliveries']} duplicates (exactly once: {exactly_once}); the "
        f"sandbox process itself held {sandbox_rss / MB:.0f} MB (not counted)."
    )
    markdown = "\n\n".join(
        [
            "## Memory (1M recipients through the whole pipeline)",
            f"Command: `{command_line()}`",
            environment_markdown(facts),
            "Recipients from a generator -> personalise -> batch -> send (concurrency "
            f"{args.concurrency}) to the sandbox in its own process (rate limit off). "
            "RSS of the sending process sampled every 10 ms.",
            table,
            verdict,
        ]
    )
    print(markdown)
    if args.write:
        print(f"\nwrote {write_section(SECTION, markdown)}")
    return 0 if exactly_once else 1


if __name__ == "__main__":
    sys.exit(main())
