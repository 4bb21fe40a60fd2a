"""The send ledger's cost: planning throughput and memory, with and without a ledger.

Two measurements, each against the same run without a ledger:

1. **Throughput** (the target: the ledger costs at most 10 % of the planning
   pipeline's throughput, i.e. a ratio >= 0.90). The pipeline is
   ``benchmarks/bench_render.py``'s: ``plan_batches`` over the same lazily
   generated rows and marketing template, ``PlannedBatch.to_json()`` on every
   batch. With a ledger, planning also makes one ``accepted_among`` per 100
   recipients, and every batch one ``begin`` and one ``finish`` (all its
   members accepted). Those two are made as dispatch makes them: queued on
   the job's ``LedgerWriter``, whose thread stores them in group-commit
   rounds (see ``run_pipeline``). Every run uses a fresh job key; the "first run" rows skip the
   lookups as dispatch does for a job the ledger holds nothing of, the
   "resumed" rows make them (nothing is found: the cost of asking). Runs are
   interleaved; figures are the median.
2. **Memory while sending 1,000,000** (the target: at most 16 bytes per
   recipient held by the ledger path). ``dispatch`` sends the job to the
   sandbox (its own process, rate limit off) once per backend, each in a
   fresh child process whose RSS is sampled every 10 ms; the ledger path's
   bytes per recipient are (peak - baseline with the ledger) minus (peak -
   baseline without), over the number of recipients. The deduplication
   table (8 bytes a slot, there with or without a ledger) is not the
   ledger's.

Run from the repository root::

    python benchmarks/bench_ledger.py                    # both, print the section
    python benchmarks/bench_ledger.py --messages 5000 --memory-n 20000   # a quicker check
    python benchmarks/bench_ledger.py --write            # also update docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # the helpers sit beside this script
    SandboxProcess,
    Timing,
    command_line,
    compare,
    environment,
    environment_markdown,
    markdown_table,
    write_section,
)
from bench_memory import PeakRss
from bench_render import TEMPLATE, rows

from sendmux_dispatch import Ledger, RedisLedger, SendmuxClient, SqliteLedger, dispatch
from sendmux_dispatch.batching import LedgerStage, PlannedBatch, plan_batches
from sendmux_dispatch.dispatch import DEFAULT_LEDGER_AHEAD
from sendmux_dispatch.ledger import Intent, LedgerWriter

SECTION = "ledger"
THROUGHPUT_TARGET = 0.90
MEMORY_TARGET = 16.0
CONCURRENCY = 4
#: Begun batches waiting for one of the CONCURRENCY slots at most (dispatch's ledger_ahead).
AHEAD = DEFAULT_LEDGER_AHEAD
MB = 1024 * 1024
_keys = itertools.count()


def _answered(writer: LedgerWriter, batch: PlannedBatch, begun: Future[set[int]]) -> None:
    """A batch's send, once its begin is stored: instant, all accepted; the finish queued."""
    if begun.result():
        raise SystemExit("begin found members taken on a fresh job key: fix that first")
    writer.finish(batch.idempotency_key, batch.digests)


def run_pipeline(
    n: int,
    ledger: Ledger | None,
    *,
    lookups: bool = False,
    pool: ThreadPoolExecutor | None = None,
) -> int:
    """Plan ``n`` rows, build every body; with a ledger, record every batch in it.

    ``lookups``: a job the ledger already holds records of (a resumed one),
    where planning asks it about every chunk of 100; without, a first run,
    where dispatch skips them (``begin`` still checks every member).

    Where the ledger calls are made:

    - by default (judged): as dispatch makes them. Each batch is begun
      through the job's :class:`LedgerWriter` as the planner takes it; its
      send takes no time (the ledger's cost alone), so its finish is queued
      the moment its begin is stored; the planner waits when more than
      ``AHEAD + CONCURRENCY`` begins are not yet stored (dispatch's bound:
      ``ledger_ahead`` begun batches waiting for one of ``concurrency``
      slots); the writer is flushed at the end.
    - with a ``pool`` (context): the same, with each batch handed to one of
      ``CONCURRENCY`` worker threads that waits for its begin and queues
      its finish, as dispatch's workers do; with no ledger, the same hand-over
      of an empty batch (the cost of dispatch's threads, ledger or not).
    """
    job_key = f"bench-ledger-{next(_keys)}-{uuid.uuid4().hex[:8]}"
    stage = (
        None
        if ledger is None
        else LedgerStage(partial(ledger.accepted_among, job_key), fresh=not lookups)
    )
    writer = None if ledger is None else LedgerWriter(ledger, job_key)
    waiting: deque[Future[set[int]] | Future[None]] = deque()
    messages = 0
    for item in plan_batches(TEMPLATE, rows(n), job_key=job_key, ledger=stage):
        if not isinstance(item, PlannedBatch):
            raise SystemExit(f"the pipeline did not plan every row ({item!r}); fix that first")
        item.to_json()
        messages += len(item)
        if writer is None:
            if pool is not None:
                waiting.append(pool.submit(len, item.recipients))  # the hand-over alone
            continue
        begun = writer.begin(Intent(item.idempotency_key, item.digests))
        if pool is not None:
            waiting.append(pool.submit(_answered, writer, item, begun))
        else:
            begun.add_done_callback(lambda done, item=item: _answered(writer, item, done))
            waiting.append(begun)
        while len(waiting) > (AHEAD if writer is not None else 0) + CONCURRENCY:
            waiting.popleft().result()
    for future in waiting:
        future.result()
    if writer is not None:
        writer.flush()
        writer.close()
    if messages != n:
        raise SystemExit(f"planned {messages} of {n} messages; fix that first")
    return messages


def _redis(url: str) -> RedisLedger | None:
    try:
        import redis

        client = redis.Redis.from_url(url, socket_connect_timeout=2)
        client.ping()
    except Exception as exc:
        print(f"redis at {url}: skipped ({type(exc).__name__}: {exc})", file=sys.stderr)
        return None
    return RedisLedger(client, prefix=f"bench:ledger:{uuid.uuid4().hex}")


LABELS = {
    "none": "no ledger: `plan_batches` + `to_json()` (bench_render's pipeline)",
    "sqlite": "`SqliteLedger`, a first run",
    "redis": "`RedisLedger` (loopback), a first run",
    "sqlite-lookups": "`SqliteLedger`, a resumed job (a lookup per 100 recipients)",
    "redis-lookups": "`RedisLedger`, a resumed job (a lookup per 100 recipients)",
    "pool-none": "no ledger, each batch handed to one of 4 worker threads (context)",
    "pool-sqlite": "`SqliteLedger`, a first run, the workers wait for begin (context)",
    "pool-redis": "`RedisLedger`, a first run, the workers wait for begin (context)",
}
#: Rows the target is judged on: the calls where dispatch makes them.
JUDGED = ("sqlite", "redis", "sqlite-lookups", "redis-lookups")
#: The run each row is compared with: the same pipeline without a ledger.
BASELINE = {"pool-sqlite": "pool-none", "pool-redis": "pool-none"}


def throughput(
    n: int, repeats: int, redis_url: str, directory: Path
) -> tuple[dict[str, Timing], list[str]]:
    notes: list[str] = []
    sqlite = SqliteLedger(directory / "bench-ledger.db")
    redis_ledger = _redis(redis_url)
    pool = ThreadPoolExecutor(CONCURRENCY, thread_name_prefix="ledger")
    contenders: dict[str, Callable[[], object]] = {
        "none": lambda: run_pipeline(n, None),
        "sqlite": lambda: run_pipeline(n, sqlite),
        "sqlite-lookups": lambda: run_pipeline(n, sqlite, lookups=True),
        "pool-none": lambda: run_pipeline(n, None, pool=pool),
        "pool-sqlite": lambda: run_pipeline(n, sqlite, pool=pool),
    }
    if redis_ledger is not None:
        contenders["redis"] = lambda: run_pipeline(n, redis_ledger)
        contenders["redis-lookups"] = lambda: run_pipeline(n, redis_ledger, lookups=True)
        contenders["pool-redis"] = lambda: run_pipeline(n, redis_ledger, pool=pool)
    else:
        notes.append(f"Redis at {redis_url} was not reachable: no Redis rows.")
    try:
        timings = compare(contenders, items=n, repeats=repeats)
    finally:
        pool.shutdown()
        sqlite.close()
        if redis_ledger is not None:
            redis_ledger.prune(older_than=0)
            redis_ledger.close()
    return {name: timings[name] for name in LABELS if name in timings}, notes


# ---------------------------------------------------------------- memory


def memory_child(backend: str, n: int, url: str, api_key: str, store: str) -> None:
    """In a fresh process: send ``n`` recipients with ``backend``; print RSS figures as JSON."""
    from bench_rate_ceiling import TEMPLATE as SEND_TEMPLATE
    from bench_rate_ceiling import people

    ledger: Ledger | None = None
    if backend == "sqlite":
        ledger = SqliteLedger(store)
    elif backend == "redis":
        ledger = RedisLedger(store, prefix=f"bench:ledger-memory:{uuid.uuid4().hex}")
    with SendmuxClient(api_key, sending_url=url, timeout=60.0) as client:
        gc.collect()
        baseline = psutil.Process().memory_info().rss
        started = time.monotonic()
        with PeakRss() as sampler:
            report = dispatch(
                client,
                SEND_TEMPLATE,
                people(n),
                job_key=f"bench-ledger-memory-{backend}",
                concurrency=CONCURRENCY,
                ledger=ledger,
            )
        elapsed = time.monotonic() - started
    if isinstance(ledger, RedisLedger):
        ledger.prune(older_than=0)
    if ledger is not None:
        ledger.close()
    print(
        json.dumps(
            {
                "baseline": baseline,
                "peak": sampler.peak,
                "elapsed": elapsed,
                "queued": report.queued,
                "summary": report.summary_line(),
            }
        )
    )


def memory(n: int, redis_url: str, directory: Path) -> dict[str, dict[str, Any]]:
    backends = {"none": "", "sqlite": str(directory / "memory.db")}
    if _redis(redis_url) is not None:
        backends["redis"] = redis_url
    found: dict[str, dict[str, Any]] = {}
    for backend, store in backends.items():
        # A fresh sandbox each: its own memory (and its idempotency store) start empty.
        with SandboxProcess("--rate-limit", "0", "--delivery-delay", "0.01") as sandbox:
            child = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--memory-child",
                    backend,
                    str(n),
                    sandbox.sending_url,
                    sandbox.api_key,
                    store,
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            if child.returncode != 0:
                raise SystemExit(f"the {backend} memory run failed:\n{child.stderr}")
            result = json.loads(child.stdout.strip().splitlines()[-1])
            stats = sandbox.admin.stats()
            result["exactly_once"] = (
                stats["accepted_messages"] == stats["unique_recipients"] == n
                and stats["duplicate_deliveries"] == 0
            )
            found[backend] = result
    return found


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--messages", type=int, default=50_000, help="recipients per timed run")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per contender")
    parser.add_argument(
        "--memory-n", type=int, default=1_000_000, help="recipients sent per memory run (0: skip)"
    )
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/14")
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args(argv)
    if args.messages < 1 or args.repeats < 1:
        parser.error("need at least 1 message and 1 repeat")
    facts = environment(["jinja2", "pydantic", "redis", "sendmux-workflows"])
    import sqlite3

    facts["sqlite"] = sqlite3.sqlite_version
    n: int = args.messages

    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        timings, notes = throughput(n, args.repeats, args.redis_url, directory)
        memory_runs = memory(args.memory_n, args.redis_url, directory) if args.memory_n else {}

    def ratio(name: str) -> float:
        # Paired: each round's run against its baseline's run of the same round
        # (interleaved, seconds apart), then the median over the rounds. On a
        # shared machine whose speed drifts, pairs cancel what medians of
        # separate runs do not.
        base = timings[BASELINE.get(name, "none")].seconds
        return statistics.median(b / s for b, s in zip(base, timings[name].seconds, strict=True))

    rows_ = [
        [
            LABELS[name],
            f"{timing.median_rate:,.0f}",
            f"{timing.best_rate:,.0f}",
            f"{ratio(name):.2f}x",
        ]
        for name, timing in timings.items()
    ]
    table = markdown_table(
        [
            "pipeline",
            "messages/s (median)",
            "messages/s (best)",
            "vs the same without a ledger (median of paired rounds)",
        ],
        rows_,
    )
    checked = [name for name in JUDGED if name in timings]
    ratios = {name: ratio(name) for name in checked}
    ok = all(ratio >= THROUGHPUT_TARGET for ratio in ratios.values())
    verdicts = [
        "Throughput target: with a ledger >= "
        f"{THROUGHPUT_TARGET:.2f}x the run without (the ledger costs at most 10 %): "
        + ", ".join(f"{name} **{ratio:.2f}x**" for name, ratio in ratios.items())
        + f": {'met' if ok else 'NOT met'}."
    ]
    parts = [
        "## Send ledger (planning throughput and memory)",
        "",
        f"Throughput: {n:,} recipients per run through bench_render's pipeline and template; "
        "with a ledger, every batch begun and finished through the job's `LedgerWriter` "
        "(group commit) as dispatch makes them: begun as the planner takes it, at most "
        f"{AHEAD} + {CONCURRENCY} begins not yet stored (dispatch's `ledger_ahead` and "
        "`concurrency`), each batch's send instant and all accepted, its finish queued "
        "without waiting, the writer flushed at the end; for a resumed job, one "
        "`accepted_among` per 100 recipients in the planning thread (a first run skips "
        "them). The context rows hand each batch to worker threads as dispatch does "
        "(compared with the same hand-over without a ledger). A fresh job key per run. "
        f"{args.repeats} interleaved rounds after one warm-up each; rates are medians, "
        "ratios the median over rounds of each run against its baseline's run in the same "
        "round (the machine's speed drifts between rounds).",
        "",
        "```",
        command_line(),
        "```",
        "",
        environment_markdown(facts),
        "",
        table,
        "",
    ]
    if memory_runs:
        none = memory_runs["none"]
        none_growth = none["peak"] - none["baseline"]
        memory_rows = []
        memory_ok = True
        for backend, run in memory_runs.items():
            growth = run["peak"] - run["baseline"]
            per = (growth - none_growth) / args.memory_n if backend != "none" else 0.0
            if backend != "none":
                memory_ok = memory_ok and per <= MEMORY_TARGET
            memory_ok = memory_ok and run["exactly_once"]
            memory_rows.append(
                [
                    backend,
                    f"{run['baseline'] / MB:.1f} MB",
                    f"{run['peak'] / MB:.1f} MB",
                    f"{growth / MB:.1f} MB",
                    "-" if backend == "none" else f"{per:.1f} B",
                    f"{args.memory_n / run['elapsed']:,.0f}",
                    "yes" if run["exactly_once"] else "NO",
                ]
            )
        parts += [
            f"Memory: `dispatch` sends {args.memory_n:,} recipients to the sandbox (own "
            "process, rate limit off), concurrency 4, each backend in a fresh child "
            "process; RSS sampled every 10 ms. The ledger path's share is the growth "
            "beyond the run without a ledger.",
            "",
            markdown_table(
                [
                    "ledger",
                    "baseline RSS",
                    "peak RSS",
                    "peak - baseline",
                    "ledger path per recipient",
                    "recipients/s",
                    "exactly once",
                ],
                memory_rows,
            ),
            "",
        ]
        verdicts.append(
            f"Memory target: <= {MEMORY_TARGET:.0f} bytes per recipient held by the ledger "
            f"path while sending {args.memory_n:,}: {'met' if memory_ok else 'NOT met'}."
        )
        ok = ok and memory_ok
    notes.append(
        "How the writer works, where the time still goes and what is next: docs/ledger.md, "
        '"Group commit".'
    )
    parts += [" ".join(verdicts), "", *notes]
    markdown = "\n".join(parts)
    print(markdown)
    if args.write:
        print(f"\nwrote {write_section(SECTION, markdown)}")
    return 0 if ok else 1


if __name__ == "__main__":
    if sys.argv[1:2] == ["--memory-child"]:
        memory_child(sys.argv[2], int(sys.argv[3]), *sys.argv[4:7])
        raise SystemExit(0)
    raise SystemExit(main())
