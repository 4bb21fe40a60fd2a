"""``sendmux-send``: send a personalised job from the shell, outside Airflow and Celery.

    SENDMUX_API_KEY=smx_... sendmux-send --template msg.json --recipients list.csv --job-key K

The API key is read from the environment (or a file), never from the command
line, where every user of the machine could read it in the process list.
Exit status: 0 when every recipient was queued (or skipped as a duplicate or
an earlier accepted send), 1 when anything failed, 2 for a usage error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, TextIO

from sendmux_dispatch.client import DEFAULT_MANAGEMENT_URL, DEFAULT_SENDING_URL, SendmuxClient
from sendmux_dispatch.dispatch import dispatch
from sendmux_dispatch.errors import SendmuxError
from sendmux_dispatch.recipients import read_csv, read_jsonl
from sendmux_dispatch.report import DispatchReport, Progress

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sendmux-send",
        description="Send one templated email to every recipient of a CSV or JSONL file, "
        "in idempotent batches of up to 100.",
    )
    parser.add_argument(
        "--template", required=True, type=Path, help="JSON file: the message without 'to'"
    )
    parser.add_argument(
        "--recipients", required=True, type=Path, help="CSV (with a header) or JSONL file"
    )
    parser.add_argument(
        "--job-key",
        required=True,
        help="names the work: the same key re-run replays instead of sending again",
    )
    parser.add_argument("--api-key-env", default="SENDMUX_API_KEY", help="default: %(default)s")
    parser.add_argument("--api-key-file", type=Path, help="read the API key from this file")
    parser.add_argument("--sending-url", default=DEFAULT_SENDING_URL)
    parser.add_argument("--management-url", default=DEFAULT_MANAGEMENT_URL)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--results", type=Path, help="write one JSON line per recipient here")
    parser.add_argument("--keep-duplicates", action="store_true", help="do not drop repeats")
    parser.add_argument("--quiet", action="store_true", help="no progress line")
    return parser


def _api_key(args: argparse.Namespace) -> str | None:
    if args.api_key_file is not None:
        return str(args.api_key_file.read_text(encoding="utf-8").strip()) or None
    return os.environ.get(args.api_key_env, "").strip() or None


def _recipients(path: Path) -> Iterable[object]:
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        return read_jsonl(path)
    return read_csv(path)


def _count_rows(path: Path) -> int | None:
    # One cheap pass over the file so the progress line can show a percentage.
    try:
        with path.open("rb") as handle:
            lines = sum(1 for line in handle if line.strip())
    except OSError:
        return None
    return lines - 1 if path.suffix.lower() == ".csv" else lines


class _ProgressLine:
    def __init__(self, total: int | None, stream: TextIO) -> None:
        self.total = total
        self.stream = stream

    def __call__(self, progress: Progress) -> None:
        if self.total:
            share = min(1.0, progress.messages_done / self.total)
            filled = int(share * 30)
            bar = f"[{'#' * filled}{'.' * (30 - filled)}] {share:6.1%} "
        else:
            bar = ""
        self.stream.write(
            f"\r{bar}{progress.messages_done} messages, {progress.batches_done} batches, "
            f"{progress.failed} failed, {progress.rate:,.0f} msg/s"
        )
        self.stream.flush()

    def finish(self, report: DispatchReport) -> None:
        # Batches carry only valid, new recipients, so the last batch's line
        # stops short of 100 % when rows were refused or dropped: end on the whole.
        bar = f"[{'#' * 30}] {1:6.1%} " if self.total else ""
        self.stream.write(f"\r{bar}{report.total} recipients in {report.elapsed:.1f} s\n")
        self.stream.flush()


def _print_report(report: DispatchReport, stream: TextIO) -> None:
    stream.write(report.summary_line() + "\n")
    for failure in report.failures:
        where = f"#{failure.position}" if failure.position is not None else "-"
        stream.write(f"  {where} {failure.email}: {failure.code}: {failure.message}\n")
    if report.failures_omitted:
        stream.write(f"  ... and {report.failures_omitted} more failures (see --results)\n")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        template: Any = json.loads(args.template.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        print(f"sendmux-send: cannot read --template {args.template}: {exc}", file=sys.stderr)
        return 2
    if not isinstance(template, dict):
        print("sendmux-send: --template must hold one JSON object", file=sys.stderr)
        return 2
    if not args.recipients.is_file():
        print(f"sendmux-send: --recipients {args.recipients} is not a file", file=sys.stderr)
        return 2
    api_key = _api_key(args)
    if api_key is None:
        print(
            f"sendmux-send: no API key: set {args.api_key_env} or pass --api-key-file",
            file=sys.stderr,
        )
        return 2
    progress = None if args.quiet else _ProgressLine(_count_rows(args.recipients), sys.stderr)
    try:
        with SendmuxClient(
            api_key, sending_url=args.sending_url, management_url=args.management_url
        ) as client:
            report = dispatch(
                client,
                template,
                _recipients(args.recipients),
                job_key=args.job_key,
                concurrency=args.concurrency,
                on_progress=progress,
                results_path=args.results,
                dedupe=not args.keep_duplicates,
            )
    except (SendmuxError, ValueError) as exc:
        print(f"\nsendmux-send: {exc}", file=sys.stderr)
        return 2
    if progress is not None:
        progress.finish(report)
    _print_report(report, sys.stdout)
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
