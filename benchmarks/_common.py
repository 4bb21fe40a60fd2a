"""Helpers shared by the benchmarks: timing loops, environment facts, the results page.

Every figure in ``docs/benchmarks.md`` comes with the command that produced it.
Each benchmark owns one section of that page, between ``<!-- bench:NAME -->``
and ``<!-- /bench:NAME -->``, and rewrites only its own (:func:`write_section`).

The dispatch benchmarks send to a sandbox in a child process
(:class:`SandboxProcess`), so the sandbox's work is not counted as the sender's
time or memory.
"""

from __future__ import annotations

import datetime as _dt
import gc
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from types import TracebackType

from sendmux_sandbox import SandboxAdmin

ROOT = Path(__file__).resolve().parent.parent
RESULTS_PAGE = ROOT / "docs" / "benchmarks.md"

_INTRO = """# Benchmarks

Every figure on this page comes with the exact command that produced it, the
machine it ran on and the date. Re-run the command to check a figure; never
edit one by hand. Each benchmark rewrites only its own section (between its
`<!-- bench:NAME -->` markers) when run with `--write`.
"""


@dataclass(frozen=True)
class Timing:
    """Repeated timings of one contender processing ``items`` items per run."""

    name: str
    items: int
    seconds: tuple[float, ...]

    @property
    def median_rate(self) -> float:
        """Items per second, from the median run (the figure we report)."""
        return self.items / statistics.median(self.seconds)

    @property
    def best_rate(self) -> float:
        """Items per second, from the fastest run (least disturbed by other load)."""
        return self.items / min(self.seconds)


def time_once(run: Callable[[], object]) -> float:
    """Seconds one call of ``run`` takes, after a full collection.

    The collector stays on: allocation and collection are part of the real
    cost. Collecting first only keeps one run's garbage out of the next.
    """
    gc.collect()
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def compare(
    contenders: dict[str, Callable[[], object]],
    *,
    items: int,
    repeats: int,
    warmup: int = 1,
) -> dict[str, Timing]:
    """Time every contender ``repeats`` times, interleaved, after ``warmup`` runs each.

    Interleaving (A, B, C, A, B, C, ...) rather than running each contender's
    repeats back to back means a burst of load from elsewhere on the machine
    hits all of them alike, so their ratios stay meaningful.
    """
    for run in contenders.values():
        for _ in range(warmup):
            run()
    seconds: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, run in contenders.items():
            seconds[name].append(time_once(run))
    return {
        name: Timing(name=name, items=items, seconds=tuple(values))
        for name, values in seconds.items()
    }


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured markdown table; columns after the first are right-aligned."""
    lines = [
        "| " + " | ".join(headers) + " |",
        "| " + " | ".join([":---"] + ["---:"] * (len(headers) - 1)) + " |",
    ]
    lines.extend("| " + " | ".join(row) + " |" for row in rows)
    return "\n".join(lines)


def rates_table(
    timings: dict[str, Timing], labels: dict[str, str], versus: dict[str, float]
) -> str:
    """One row per contender: median and best messages/s, then the median as a
    ratio to each reference rate in ``versus`` (column title -> messages/s)."""
    rows = [
        [
            labels[name],
            f"{timing.median_rate:,.0f}",
            f"{timing.best_rate:,.0f}",
            *(f"{timing.median_rate / rate:.2f}x" for rate in versus.values()),
        ]
        for name, timing in timings.items()
    ]
    return markdown_table(["contender", "messages/s (median)", "messages/s (best)", *versus], rows)


def command_line() -> str:
    """The command that is running, as someone would type it from the repository root."""
    script = Path(sys.argv[0]).resolve()
    try:
        shown = str(script.relative_to(ROOT))
    except ValueError:
        shown = str(script)
    return shlex.join(["python", shown, *sys.argv[1:]])


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"


def environment(packages: Sequence[str] = ()) -> dict[str, str]:
    """Facts a reader needs to judge a figure: Python, CPUs, load, date, package versions."""
    cpus = os.cpu_count() or 0
    facts = {
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(terse=True),
        "cpus": str(cpus),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    if hasattr(os, "getloadavg"):
        facts["load average (1 min) at start"] = f"{os.getloadavg()[0]:.2f}"
    for name in packages:
        facts[name] = _version(name)
    return facts


def environment_markdown(facts: dict[str, str]) -> str:
    """The environment as a markdown bullet list."""
    return "\n".join(f"- {key}: {value}" for key, value in facts.items())


def _markers(name: str) -> tuple[str, str]:
    if not re.fullmatch(r"[a-z0-9_-]+", name):
        raise ValueError(f"section names are lowercase words with - or _, not {name!r}")
    return f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"


def write_section(name: str, markdown: str, *, page: Path = RESULTS_PAGE) -> Path:
    """Put ``markdown`` in section ``name`` of the results page, replacing its old text.

    The page is created with its introduction when missing; other sections are
    left exactly as they are; a new section goes at the end.
    """
    start, end = _markers(name)
    block = f"{start}\n{markdown.strip()}\n{end}"
    text = page.read_text(encoding="utf-8") if page.exists() else _INTRO
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _match: block, text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text(text, encoding="utf-8")
    return page


class SandboxProcess:
    """``sendmux-sandbox`` in a child process on a free port; ``args`` are its CLI options."""

    def __init__(self, *args: str) -> None:
        self.args = args
        self.process: subprocess.Popen[str] | None = None
        self.base_url = ""
        self.api_key = ""
        self._admin: SandboxAdmin | None = None

    def __enter__(self) -> SandboxProcess:
        command = [sys.executable, "-m", "sendmux_sandbox.cli", "--port", "0"]
        command += ["--log-level", "warning", *self.args]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        deadline = time.monotonic() + 30
        while not (self.base_url and self.api_key):
            line = self.process.stdout.readline()
            if not line or time.monotonic() > deadline:
                raise RuntimeError("the sandbox process did not start")
            if found := re.match(r"Sending API:\s+(http://\S+?)/sending/api/v1", line):
                self.base_url = found.group(1)
            if found := re.match(r"API key:\s+(\S+)", line):
                self.api_key = found.group(1)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._admin is not None:
            self._admin.close()
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def sending_url(self) -> str:
        return self.base_url + "/sending/api/v1"

    @property
    def management_url(self) -> str:
        return self.base_url + "/management/api/v1"

    @property
    def admin(self) -> SandboxAdmin:
        """Its admin API (stats of a million messages take a while: a long timeout)."""
        if self._admin is None:
            self._admin = SandboxAdmin(self.base_url, timeout=120)
        return self._admin
