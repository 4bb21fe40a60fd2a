"""``sendmux-send``: send a personalised job from the shell, outside Airflow and Celery.

    SENDMUX_API_KEY=smx_... sendmux-send --template msg.json --recipients list.csv --job-key K
    sendmux-send status [--job-key K]           # what the send ledger holds
    sendmux-send prune --older-than DAYS        # forget old jobs' records

The API key is read from the environment (or a file), never from the command
line, where every user of the machine could read it in the process list.
The recipients file is checked whole, with the same reader that feeds the
job, before anything is sent. A send ledger (SQLite, in the user's state
directory unless ``--ledger PATH`` or ``--no-ledger``) records who was
accepted, so a re-run after the list changed still mails nobody twice. Exit status (docs/cli.md):

- 0 every recipient was queued (or skipped as a duplicate or an earlier send);
- 1 an unexpected error (a bug: the traceback is worth reporting);
- 2 a usage or input error (nothing sent, or the job stopped at a bad line);
- 3 some recipients failed or were invalid;
- 4 the job stopped early (a bad key, no credits, rate limits, an outage);
- 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import shlex
import sys
import threading
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

from sendmux_dispatch.batching import STALE_PENDING_SECONDS
from sendmux_dispatch.client import DEFAULT_MANAGEMENT_URL, DEFAULT_SENDING_URL, SendmuxClient
from sendmux_dispatch.dispatch import dispatch
from sendmux_dispatch.errors import InputError, LedgerUnavailableError, SendmuxError
from sendmux_dispatch.ledger import JobStats, SqliteLedger
from sendmux_dispatch.recipients import (
    ReadStats,
    Recipient,
    RecipientFailure,
    file_format,
    read_csv,
    read_jsonl,
)
from sendmux_dispatch.report import DispatchReport, Failure, Progress

__all__ = [
    "EXIT_BUG",
    "EXIT_FAILURES",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_STOPPED",
    "EXIT_USAGE",
    "default_ledger_path",
    "main",
]

EXIT_OK = 0
EXIT_BUG = 1
EXIT_USAGE = 2
EXIT_FAILURES = 3
EXIT_STOPPED = 4
EXIT_INTERRUPTED = 130

#: Codes of a record whose structure is wrong: the CLI refuses such a file.
_STRUCTURE_CODES = frozenset({"malformed_row", "invalid_json", "too_large"})
#: Anything shaped like a Sendmux key (smx_mbx_..., smx_root_...).
_KEY_SHAPE = re.compile(r"smx_[A-Za-z0-9_\-]{6,}")
#: Failure groups printed before pointing at --results.
_MAX_GROUPS = 20

_EPILOG = """\
exit status:
  0    every recipient was queued (or skipped: duplicate, sent before)
  1    unexpected error (a bug; please report it with the traceback)
  2    usage or input error: nothing was sent, or the job stopped at a bad line
  3    some recipients failed or were invalid (see the list, or --results)
  4    the job stopped early: bad key, no credits, rate limits, outage, ledger
  130  interrupted (Ctrl-C); re-run the same command to resume

Re-running with the same --job-key never sends an accepted message twice,
even after the list changed: the send ledger (--ledger) records who was accepted.

other commands:
  sendmux-send status [--job-key K] [--ledger PATH]   what the ledger holds
  sendmux-send prune --older-than DAYS [--job-key K] [--ledger PATH]

Input rules, examples: docs/cli.md.
"""


class _Usage(Exception):
    """A person's mistake: one line on stderr, exit 2, no traceback."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sendmux-send",
        description="Send one templated email to every recipient of a CSV or JSONL file, "
        "in idempotent batches of up to 100.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add("--template", required=True, type=Path, help="JSON file: the message without 'to'")
    add(
        "--recipients",
        required=True,
        type=Path,
        help="CSV file with a header row, or JSONL (.jsonl/.ndjson): one object per line",
    )
    add(
        "--job-key",
        required=True,
        help="names the work: the same key re-run replays instead of sending again",
    )
    add(
        "--api-key-env",
        default="SENDMUX_API_KEY",
        metavar="NAME",
        help="NAME of the environment variable holding the API key (default: %(default)s)",
    )
    add("--api-key-file", type=Path, metavar="PATH", help="read the API key from this file")
    add("--sending-url", default=DEFAULT_SENDING_URL, help="Sending API (default: %(default)s)")
    add(
        "--management-url",
        default=DEFAULT_MANAGEMENT_URL,
        help="Management API (default: %(default)s)",
    )
    add("--concurrency", type=int, default=4, help="batches in flight (default: %(default)s)")
    add("--email-column", default="email", help="CSV column of the address (default: email)")
    add("--name-column", default="name", help="CSV column of the name (default: name)")
    add(
        "--delimiter",
        help="CSV delimiter (default: sniffed from the header line among , ; tab |)",
    )
    add("--encoding", default="utf-8", help="the file's text encoding (default: %(default)s)")
    add(
        "--results",
        type=Path,
        metavar="PATH",
        help="write one JSON line per recipient here, as the server answers",
    )
    add("--overwrite", action="store_true", help="replace an existing --results file")
    add(
        "--keep-duplicates",
        action="store_true",
        help="do not drop repeated addresses (turns the default ledger off)",
    )
    ledger = parser.add_mutually_exclusive_group()
    ledger.add_argument(
        "--ledger",
        type=Path,
        metavar="PATH",
        help="SQLite send ledger: who was accepted, per job key (default: "
        "$XDG_STATE_HOME/sendmux/ledger.db or ~/.local/state/sendmux/ledger.db)",
    )
    ledger.add_argument(
        "--no-ledger",
        action="store_true",
        help="no ledger: a re-run is exactly once only if the list and its order are unchanged",
    )
    add("--quiet", action="store_true", help="no progress line and no input summary")
    return parser


def default_ledger_path() -> Path:
    """``$XDG_STATE_HOME/sendmux/ledger.db``, else ``~/.local/state/sendmux/ledger.db``.

    One file for every job: its records are kept per job key.
    """
    state = os.environ.get("XDG_STATE_HOME", "").strip()
    # The XDG spec: a relative value is invalid and must be ignored.
    base = Path(state) if state and os.path.isabs(state) else Path.home() / ".local" / "state"
    return base / "sendmux" / "ledger.db"


def _open_ledger(path: Path) -> SqliteLedger:
    path = path.expanduser()
    if path.is_dir():
        raise _Usage(f"--ledger {path} is a directory; give a file path (e.g. {path}/ledger.db)")
    try:
        return SqliteLedger(path)
    except LedgerUnavailableError as exc:
        raise _Usage(f"cannot open the send ledger: {exc.message}") from None
    except OSError as exc:
        raise _Usage(f"cannot open the send ledger {path}: {exc.strerror or exc}") from None


def _ledger_for_send(args: argparse.Namespace) -> SqliteLedger | None:
    if args.no_ledger:
        return None
    if args.keep_duplicates:
        if args.ledger is not None:
            raise _Usage(
                "--keep-duplicates cannot be used with --ledger: the ledger records each "
                "address once; drop one of them"
            )
        return None
    return _open_ledger(args.ledger if args.ledger is not None else default_ledger_path())


def _redact(text: str) -> str:
    return _KEY_SHAPE.sub("smx_***", text)


def _api_key(args: argparse.Namespace) -> str:
    if _KEY_SHAPE.fullmatch(args.api_key_env.strip()):
        raise _Usage(
            "--api-key-env takes the NAME of an environment variable, and the value given "
            "looks like an API key itself (not shown); use --api-key-env SENDMUX_API_KEY "
            "and set that variable, or --api-key-file"
        )
    if args.api_key_file is not None:
        try:
            key = str(args.api_key_file.read_text(encoding="utf-8")).strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "unreadable"
            raise _Usage(f"cannot read --api-key-file {args.api_key_file}: {reason}") from None
        if not key:
            raise _Usage(f"--api-key-file {args.api_key_file} is empty")
        return key
    key = str(os.environ.get(args.api_key_env, "")).strip()
    if not key:
        raise _Usage(f"no API key: set {args.api_key_env} or pass --api-key-file")
    return key


def _template(path: Path) -> dict[str, Any]:
    try:
        template: Any = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise _Usage(f"cannot read --template {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise _Usage(f"--template {path} is not JSON: {exc}") from None
    if not isinstance(template, dict):
        raise _Usage("--template must hold one JSON object")
    return template


def _results_path(args: argparse.Namespace) -> Path | None:
    results: Path | None = args.results
    if results is None:
        return None
    same = results.exists() and os.path.samefile(results, args.recipients)
    if same or results.resolve() == args.recipients.resolve():
        raise _Usage(f"--results {results} is the recipients file; writing it would erase the list")
    if results.is_dir():
        raise _Usage(f"--results {results} is a directory")
    if results.exists() and not args.overwrite:
        raise _Usage(f"--results {results} exists; pass --overwrite to replace it, or another path")
    parent = results.resolve().parent
    if not parent.is_dir():
        raise _Usage(f"--results {results}: the folder {parent} does not exist")
    target = results if results.exists() else parent
    if not os.access(target, os.W_OK):
        raise _Usage(f"--results {results}: permission denied")
    return results


def _is_jsonl(path: Path) -> bool:
    return file_format(path) == "jsonl"


def _reader(
    args: argparse.Namespace, stats: ReadStats | None = None
) -> Generator[Recipient | RecipientFailure, None, None]:
    if _is_jsonl(args.recipients):
        return read_jsonl(args.recipients, encoding=args.encoding, stats=stats)
    return read_csv(
        args.recipients,
        email_column=args.email_column,
        name_column=args.name_column,
        encoding=args.encoding,
        delimiter=args.delimiter,
        stats=stats,
    )


@dataclass
class _Checked:
    stats: ReadStats
    malformed: list[RecipientFailure] = field(default_factory=list)
    malformed_count: int = 0


def _check_input(args: argparse.Namespace) -> _Checked:
    """Read the whole file with the job's own reader: refuse a bad one before sending."""
    checked = _Checked(ReadStats())
    try:
        with contextlib.closing(_reader(args, checked.stats)) as reader:
            for item in reader:
                if isinstance(item, RecipientFailure) and item.code in _STRUCTURE_CODES:
                    checked.malformed_count += 1
                    if len(checked.malformed) < 10:
                        checked.malformed.append(item)
    except InputError as exc:
        raise _Usage(f"{args.recipients}: {exc.message}") from None
    except (OSError, ValueError) as exc:
        # ValueError: an unknown or unsupported --encoding.
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise _Usage(f"cannot read --recipients {args.recipients}: {reason}") from None
    if checked.malformed_count:
        lines = "\n".join(f"  {item.reason}" for item in checked.malformed)
        more = checked.malformed_count - len(checked.malformed)
        tail = f"\n  ... and {more} more" if more else ""
        raise _Usage(
            f"{args.recipients}: {checked.malformed_count} malformed record(s); nothing was "
            f"sent. Fix them and run again:\n{lines}{tail}"
        )
    if checked.stats.records == 0:
        raise _Usage(f"{args.recipients} has no recipients (only a header); nothing to send")
    return checked


def _input_line(args: argparse.Namespace, stats: ReadStats) -> str:
    parts = []
    if stats.header_lines:
        parts.append("1 header")
    parts.append(f"{stats.records:,} records")
    if stats.multiline_records:
        parts.append(f"{stats.multiline_records:,} of them over several lines")
    if stats.blank_lines:
        parts.append(f"{stats.blank_lines:,} blank")
    how = ""
    if stats.delimiter is not None:
        name = {"\t": "tab", ",": "comma", ";": "semicolon", "|": "pipe"}.get(
            stats.delimiter, repr(stats.delimiter)
        )
        how = f", {name}-separated" + (" (sniffed; --delimiter to choose)" if stats.sniffed else "")
    return f"{args.recipients}: {stats.lines:,} lines = {', '.join(parts)}{how}"


class _ProgressLine:
    """The one-line progress display; log lines are printed above it, not through it."""

    def __init__(self, total: int | None, stream: TextIO) -> None:
        self.total = total
        self.stream = stream
        self.lock = threading.Lock()
        self.shown = ""

    def __call__(self, progress: Progress) -> None:
        if self.total:
            share = min(1.0, progress.messages_done / self.total)
            filled = int(share * 30)
            bar = f"[{'#' * filled}{'.' * (30 - filled)}] {share:6.1%} "
        else:
            bar = ""
        self._show(
            f"{bar}{progress.messages_done} messages, {progress.batches_done} batches, "
            f"{progress.failed} failed, {progress.rate:,.0f} msg/s"
        )

    def _show(self, text: str) -> None:
        with self.lock:
            # Pad over a longer previous line instead of relying on terminal codes.
            pad = " " * max(0, len(self.shown) - len(text))
            self.stream.write(f"\r{text}{pad}")
            self.stream.flush()
            self.shown = text

    def above(self, line: str) -> None:
        """Print ``line`` on its own line, then redraw the progress line under it."""
        with self.lock:
            blank = " " * len(self.shown)
            self.stream.write(f"\r{blank}\r{line}\n")
            if self.shown:
                self.stream.write(self.shown)
            self.stream.flush()

    def finish(self, report: DispatchReport) -> None:
        # Batches carry only valid, new recipients, so the last batch's line
        # stops short of 100 % when rows were refused or dropped: end on the whole.
        whole = self.total and report.stop_cause is None
        bar = f"[{'#' * 30}] {1:6.1%} " if whole else ""
        self._show(f"{bar}{report.total} recipients in {report.elapsed:.1f} s")
        with self.lock:
            self.stream.write("\n")
            self.stream.flush()
            self.shown = ""


class _LogLines(logging.Handler):
    """The ``sendmux_dispatch`` logger's lines (waits, stops) on stderr, above the progress."""

    def __init__(self, progress: _ProgressLine | None, stream: TextIO) -> None:
        super().__init__(logging.INFO)
        self.progress = progress
        self.stream = stream

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = "sendmux-send: " + _redact(record.getMessage())
            if self.progress is not None:
                self.progress.above(line)
            else:
                self.stream.write(line + "\n")
                self.stream.flush()
        except Exception:
            self.handleError(record)


def _print_report(report: DispatchReport, stream: TextIO) -> None:
    stream.write(_redact(report.summary_line()) + "\n")
    # Grouped by what went wrong: a wrong key is one line, not one per recipient.
    groups: dict[tuple[str, str], list[Failure]] = {}
    for failure in report.failures:
        groups.setdefault((failure.code, failure.message), []).append(failure)
    for shown, ((code, message), members) in enumerate(groups.items()):
        if shown == _MAX_GROUPS:
            stream.write(f"  ... and {len(groups) - shown} more kinds of failure (see --results)\n")
            break
        first = members[0]
        where = f"#{first.position}" if first.position is not None else "-"
        if len(members) == 1:
            stream.write(_redact(f"  {where} {first.email}: {code}: {message}\n"))
        else:
            stream.write(
                _redact(
                    f"  {len(members)} recipients ({where} {first.email}, ...): {code}: {message}\n"
                )
            )
    if report.failures_omitted:
        stream.write(f"  ... and {report.failures_omitted} more failures (see --results)\n")


def _resume_command(argv: Sequence[str]) -> str:
    return _redact(shlex.join(["sendmux-send", *argv]))


def _exit_code(report: DispatchReport) -> int:
    if report.stop_cause == "interrupted":
        return EXIT_INTERRUPTED
    if report.stop_cause == "input":
        return EXIT_USAGE
    if report.stop_cause is not None or report.stopped_reason:
        return EXIT_STOPPED
    return EXIT_OK if report.ok else EXIT_FAILURES


def _send(
    args: argparse.Namespace, argv: Sequence[str], api_key: str, template: dict[str, Any]
) -> int:
    results = _results_path(args)
    checked = _check_input(args)
    if not args.quiet:
        sys.stderr.write(_input_line(args, checked.stats) + "\n")
    progress = None if args.quiet else _ProgressLine(checked.stats.records, sys.stderr)
    handler = _LogLines(progress, sys.stderr)
    logger = logging.getLogger("sendmux_dispatch")
    logger.addHandler(handler)
    if logger.level == logging.NOTSET or logger.level > logging.INFO:
        logger.setLevel(logging.INFO)
    ledger = _ledger_for_send(args)
    if not args.quiet:
        sys.stderr.write(_ledger_line(args, ledger) + "\n")
    # The file was checked whole above; read again with the same rules for the job.
    stats = ReadStats()
    try:
        with (
            contextlib.closing(ledger) if ledger is not None else contextlib.nullcontext(),
            SendmuxClient(
                api_key, sending_url=args.sending_url, management_url=args.management_url
            ) as client,
            contextlib.closing(_reader(args, stats)) as recipients,
        ):
            report = dispatch(
                client,
                template,
                recipients,
                job_key=args.job_key,
                concurrency=args.concurrency,
                on_progress=progress,
                results_path=results,
                dedupe=not args.keep_duplicates,
                ledger=ledger,
            )
    except KeyboardInterrupt:
        # A second Ctrl-C (dispatch settles the in-flight batches on the first
        # one and returns its report): no report to print.
        sys.stderr.write(
            "\nsendmux-send: interrupted before the batches in flight were settled (their "
            "messages may or may not have been accepted). Resume with the same command; "
            "the same --job-key never sends an accepted message twice:\n  "
            + _resume_command(argv)
            + "\n"
        )
        return EXIT_INTERRUPTED
    finally:
        logger.removeHandler(handler)
    if progress is not None:
        progress.finish(report)
    code = _exit_code(report)
    if code in (EXIT_INTERRUPTED, EXIT_STOPPED) or report.stop_cause == "input":
        sys.stderr.write(
            "sendmux-send: to resume (accepted messages are not sent again):\n  "
            + _resume_command(argv)
            + "\n"
        )
    try:
        _print_report(report, sys.stdout)
        sys.stdout.flush()
    except BrokenPipeError:
        _quiet_broken_pipe()
    return code


def _ledger_line(args: argparse.Namespace, ledger: SqliteLedger | None) -> str:
    if ledger is None:
        why = "--keep-duplicates" if args.keep_duplicates and not args.no_ledger else "--no-ledger"
        return (
            f"ledger: off ({why}); a re-run is exactly once only if the list and its order "
            "are unchanged"
        )
    held = ledger.stats(args.job_key)
    if held is None:
        what = "nothing recorded yet for this job key"
    else:
        what = f"{held.accepted:,} already accepted, {held.pending} batches pending a replay"
    return f"ledger: {ledger.path} ({what})"


# ---------------------------------------------------------------- status, prune


def _when(epoch: float) -> str:
    stamp = datetime.fromtimestamp(epoch, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"{stamp} ({_age(time.time() - epoch)} ago)"


def _age(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def _status_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sendmux-send status",
        description="Print what the send ledger holds: per job key, the recipients accepted, "
        "the batches pending a replay, the last write.",
    )
    parser.add_argument("--job-key", help="this job only, with its pending batches")
    parser.add_argument(
        "--ledger", type=Path, metavar="PATH", help="the ledger file (default: the state directory)"
    )
    return parser


def _print_job(stats: JobStats, stream: TextIO) -> None:
    stream.write(
        f"job {stats.job_key}: {stats.accepted:,} recipients accepted, {stats.pending} "
        f"batches pending ({stats.pending_members:,} recipients)\n"
        f"  first write {_when(stats.created)}\n  last write  {_when(stats.updated)}\n"
    )


def _status(argv: Sequence[str]) -> int:
    args = _status_parser().parse_args(argv)
    path = (args.ledger if args.ledger is not None else default_ledger_path()).expanduser()
    if not path.exists():
        sys.stdout.write(f"no ledger at {path}: nothing was sent with one there yet\n")
        return EXIT_OK
    with contextlib.closing(_open_ledger(path)) as ledger:
        sys.stdout.write(f"ledger: {path}\n")
        if args.job_key is None:
            jobs = ledger.jobs()
            if not jobs:
                sys.stdout.write("no jobs recorded\n")
            for stats in jobs:
                _print_job(stats, sys.stdout)
            return EXIT_OK
        held = ledger.stats(args.job_key)
        if held is None:
            sys.stdout.write(f"job {args.job_key}: nothing recorded\n")
            return EXIT_OK
        _print_job(held, sys.stdout)
        now = time.time()
        for intent in ledger.pending(args.job_key):
            age = now - intent.created
            stale = (
                "  past 23 h: the server may have forgotten the key; not replayed (check "
                "the delivery logs)"
                if age > STALE_PENDING_SECONDS
                else ""
            )
            sys.stdout.write(
                f"  pending {intent.key}: {len(intent.digests)} recipients, resend "
                f"{intent.attempt}, recorded {_age(age)} ago{stale}\n"
            )
    return EXIT_OK


def _days(text: str) -> float:
    value = text.strip().lower().removesuffix("d")
    try:
        days = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of days: {text!r} (e.g. 30)") from None
    if not days >= 0:
        raise argparse.ArgumentTypeError("--older-than must be 0 days or more")
    return days


def _prune_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sendmux-send prune",
        description="Forget whole jobs whose last ledger write is older than DAYS. A job that "
        "runs again after it was pruned sends to everyone: prune only finished work.",
    )
    parser.add_argument(
        "--older-than", required=True, type=_days, metavar="DAYS", help="e.g. 30 (or 30d)"
    )
    parser.add_argument("--job-key", help="this job only (with --older-than 0: forget it now)")
    parser.add_argument(
        "--ledger", type=Path, metavar="PATH", help="the ledger file (default: the state directory)"
    )
    return parser


def _prune(argv: Sequence[str]) -> int:
    args = _prune_parser().parse_args(argv)
    path = (args.ledger if args.ledger is not None else default_ledger_path()).expanduser()
    if not path.exists():
        sys.stdout.write(f"no ledger at {path}: nothing to prune\n")
        return EXIT_OK
    with contextlib.closing(_open_ledger(path)) as ledger:
        count = ledger.prune(args.older_than * 86400.0, job_key=args.job_key)
    which = f"job {args.job_key}" if args.job_key is not None else "jobs"
    sys.stdout.write(
        f"pruned {count} {which} last written more than {args.older_than:g} days ago from {path}\n"
    )
    return EXIT_OK


_COMMANDS = {"status": _status, "prune": _prune}


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments and arguments[0] in _COMMANDS:
        try:
            return _COMMANDS[arguments[0]](arguments[1:])
        except _Usage as exc:
            sys.stderr.write(f"sendmux-send: {_redact(str(exc))}\n")
            return EXIT_USAGE
        except LedgerUnavailableError as exc:
            sys.stderr.write(f"sendmux-send: {_redact(str(exc))}\n")
            return EXIT_STOPPED
    args = _parser().parse_args(arguments)
    try:
        if args.concurrency < 1:
            raise _Usage("--concurrency must be at least 1")
        if args.delimiter is not None:
            # A shell user types tab as \t or the word; the reader wants the character.
            args.delimiter = {"\\t": "\t", "tab": "\t"}.get(args.delimiter, args.delimiter)
            if len(args.delimiter) != 1 or args.delimiter in '\r\n"':
                raise _Usage(f"--delimiter must be one character, not {args.delimiter!r}")
        template = _template(args.template)
        if not args.recipients.is_file():
            raise _Usage(f"--recipients {args.recipients} is not a file")
        api_key = _api_key(args)
        return _send(args, arguments, api_key, template)
    except _Usage as exc:
        sys.stderr.write(f"sendmux-send: {_redact(str(exc))}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        sys.stderr.write("\nsendmux-send: interrupted before sending; nothing was sent\n")
        return EXIT_INTERRUPTED
    except OSError as exc:
        # The results file vanished or its disk filled up mid-job, and the like.
        sys.stderr.write(f"\nsendmux-send: {_redact(str(exc))}\n")
        return EXIT_USAGE
    except (SendmuxError, ValueError) as exc:
        sys.stderr.write(f"\nsendmux-send: {_redact(str(exc))}\n")
        return EXIT_USAGE


def _quiet_broken_pipe() -> None:
    # The reader of stdout went away (``| head``): stop quietly, and keep the
    # interpreter from reporting the same error again when it flushes at exit.
    with contextlib.suppress(OSError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


if __name__ == "__main__":
    raise SystemExit(main())
