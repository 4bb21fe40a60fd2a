"""Run every benchmark with ``--write`` so docs/benchmarks.md is refreshed (``make bench``).

Each script runs in its own process, one after another (they measure time and
memory, so they must not compete). Extra arguments are passed to every script.

    python benchmarks/run_all.py
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = (
    "bench_serialize.py",
    "bench_render.py",
    "bench_rate_ceiling.py",
    "bench_memory.py",
    "bench_soak.py",
)


def main() -> int:
    failed = []
    for script in SCRIPTS:
        print(f"== {script}", flush=True)
        started = time.monotonic()
        result = subprocess.run(
            [sys.executable, str(HERE / script), "--write"],
            cwd=HERE.parent,
            check=False,
        )
        print(f"== {script}: exit {result.returncode} in {time.monotonic() - started:.0f} s\n")
        if result.returncode != 0:
            failed.append(script)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
