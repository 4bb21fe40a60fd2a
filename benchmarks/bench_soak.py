"""Soak: 200,000 recipients through 20 % injected faults, exactly once, end to end.

The sandbox runs in its own process with the same fault mix as the
reliability tests (503 with Retry-After, 500, 429, a dropped connection
after acceptance, a response slower than the client's timeout after
acceptance; 20 % of requests in all). Exactly-once is checked from the
sandbox's admin stats (accepted == unique recipients == N, no duplicate
deliveries) and the report's counts are compared with the sandbox's.

    python benchmarks/bench_soak.py                # 200,000 recipients
    python benchmarks/bench_soak.py --n 20000      # smaller
    python benchmarks/bench_soak.py --write        # also update docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

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

from sendmux_dispatch import RetryPolicy, SendmuxClient, dispatch

SECTION = "soak"
CLIENT_TIMEOUT = 0.4
FAULT_ARGS = {
    "--error-503": "0.05",
    "--error-500": "0.05",
    "--error-429": "0.04",
    "--retry-after": "1",
    "--drop-after-accept": "0.03",
    "--slow-after-accept": "0.03",
    "--slow-seconds": str(CLIENT_TIMEOUT + 0.2),
    "--seed": "20260522",
}
FAULT_KINDS = ("error_503", "error_500", "error_429", "drop_after_accept", "slow_after_accept")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=200_000, help="recipients")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args(argv)
    facts = environment(["httpx", "tenacity"])
    sandbox_args = ["--rate-limit", "0", "--delivery-delay", "0"]
    for name, value in FAULT_ARGS.items():
        sandbox_args += [name, value]
    # The sandbox's 1 s Retry-After is within the policy (beyond it the job
    # would stop); the sleep cuts every wait to 50 ms.
    retry = RetryPolicy(
        max_attempts=15,
        initial_delay=0.01,
        max_delay=0.05,
        max_retry_after=1.0,
        deadline=600,
        sleep=lambda seconds: time.sleep(min(seconds, 0.05)),
    )
    with SandboxProcess(*sandbox_args) as sandbox:
        with SendmuxClient(
            sandbox.api_key, sending_url=sandbox.sending_url, timeout=CLIENT_TIMEOUT, retry=retry
        ) as client:
            started = time.monotonic()
            report = dispatch(
                client, TEMPLATE, people(args.n), job_key="bench-soak", concurrency=args.concurrency
            )
            elapsed = time.monotonic() - started
        stats = sandbox.admin.stats()
        spot = [
            len(sandbox.admin.messages(f"person.{i}@mail{i % 13}.example.org"))
            for i in range(0, args.n, max(1, args.n // 20))
        ]
    checks = {
        "accepted == N": stats["accepted_messages"] == args.n,
        "unique recipients == N": stats["unique_recipients"] == args.n,
        "duplicate deliveries == 0": stats["duplicate_deliveries"] == 0,
        "report queued == sandbox accepted": report.queued == stats["accepted_messages"],
        "report requests == sandbox requests": report.requests == stats["requests"],
        "spot-checked recipients have 1 message": all(count == 1 for count in spot),
        "every fault kind fired": all(stats["faults_by_kind"].get(k, 0) for k in FAULT_KINDS),
    }
    share = stats["faults_injected"] / max(stats["requests"], 1)
    faults = ", ".join(f"{k} {stats['faults_by_kind'].get(k, 0)}" for k in FAULT_KINDS)
    table = markdown_table(
        ["recipients", "requests", "faults injected", "replays", "elapsed", "recipients/s"],
        [
            [
                f"{args.n:,}",
                f"{stats['requests']:,}",
                f"{stats['faults_injected']:,} ({share:.0%})",
                f"{stats['idempotent_replays']:,}",
                f"{elapsed:.1f} s",
                f"{args.n / elapsed:,.0f}",
            ]
        ],
    )
    markdown = "\n\n".join(
        [
            "## Soak (exactly once through 20 % faults)",
            f"Command: `{command_line()}`",
            environment_markdown(facts),
            f"Sandbox in its own process, faults: {faults}. Client timeout "
            f"{CLIENT_TIMEOUT} s (slow responses take {CLIENT_TIMEOUT + 0.2:g} s), "
            f"concurrency {args.concurrency}, Retry-After capped at 0.05 s to keep the run short.",
            table,
            "Checks: "
            + "; ".join(f"{name}: {'yes' if ok else 'NO'}" for name, ok in checks.items()),
            f"Report: {report.summary_line()}",
        ]
    )
    print(markdown)
    if args.write:
        print(f"\nwrote {write_section(SECTION, markdown)}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
