"""Micro-benchmark of the send ledger alone: what recording a job costs per backend.

Each 100-member batch makes the calls dispatch will make: one
``accepted_among`` (planning), one ``begin`` (before the request), one
``finish`` (after the answer). Prints recipients recorded per second, and the
bytes on disk (SQLite) or in Redis per recipient. Not written to
docs/benchmarks.md: the real figure is the ratio to the planning pipeline,
measured once dispatch is wired to the ledger.

    python benchmarks/bench_ledger.py [--recipients 1000000] [--redis-url URL]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from pathlib import Path

from sendmux_dispatch.ledger import Intent, Ledger, RedisLedger, SqliteLedger, recipient_digest

BATCH = 100


def run(ledger: Ledger, recipients: int, job_key: str) -> float:
    started = time.perf_counter()
    for start in range(0, recipients, BATCH):
        digests = tuple(
            recipient_digest(f"r{i}@example.com")
            for i in range(start, min(start + BATCH, recipients))
        )
        assert not ledger.accepted_among(job_key, digests)
        key = f"bench-{start}"
        assert not ledger.begin(job_key, Intent(key, digests))
        ledger.finish(job_key, key, accepted=digests)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipients", type=int, default=1_000_000)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/14")
    args = parser.parse_args()
    n = args.recipients

    with tempfile.TemporaryDirectory() as directory:
        for mode in ("normal", "full"):
            path = Path(directory) / f"ledger-{mode}.db"
            with SqliteLedger(path, synchronous=mode) as ledger:  # type: ignore[arg-type]
                seconds = run(ledger, n, "bench")
                stats = ledger.stats("bench")
                assert stats is not None
                assert stats.accepted == n
            size = sum(p.stat().st_size for p in Path(directory).glob(f"ledger-{mode}.db*"))
            print(
                f"sqlite synchronous={mode}: {n / seconds:,.0f} recipients/s "
                f"({seconds * 1e6 / (n / BATCH):,.0f} us per batch), {size / n:.1f} B/recipient"
            )

    try:
        import redis

        client = redis.Redis.from_url(args.redis_url)
        client.ping()
    except Exception as exc:
        print(f"redis: skipped ({type(exc).__name__}: {exc})")
        return 0
    prefix = f"bench:ledger:{uuid.uuid4().hex}"
    before = int(client.info("memory")["used_memory"])
    ledger = RedisLedger(client, prefix=prefix)
    seconds = run(ledger, n, "bench")
    used = int(client.info("memory")["used_memory"]) - before
    ledger.prune(older_than=0)
    print(
        f"redis: {n / seconds:,.0f} recipients/s ({seconds * 1e6 / (n / BATCH):,.0f} us per "
        f"batch), ~{used / n:.0f} B/recipient in Redis"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
