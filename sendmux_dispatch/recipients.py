"""Recipients and the lazy sources that produce them.

A job may address millions of people, so nothing here builds a list: every
source is a generator that reads one row, yields one item and forgets it.
Memory stays flat whatever the length of the file or iterable.

Each source yields, in source order, either a :class:`Recipient` or a
:class:`RecipientFailure` for a row that cannot become one (no email, a line
that is not JSON, a value of the wrong type). A bad row never raises: it is
reported by its ``position`` (0-based index in the source) and the job goes on.
The file readers raise :class:`~sendmux_dispatch.errors.InputError` only where
the rest of the file cannot be trusted (a quote that never closes, a bad byte,
a bad header, an empty file), naming the physical line; dispatch then stops the
job instead of sending what follows.

Accepted inputs (:func:`iter_recipients`):

* a plain address string, ``"ann@example.com"`` or ``"Ann Lee <ann@example.com>"``;
* a mapping with ``email``, optional ``name``, and any other keys, which become
  template variables. Three keys are reserved: ``variables`` (a mapping, merged
  into the variables, so ``dataclasses.asdict(recipient)`` round-trips) and
  ``attachments`` (a list of :class:`~sendmux_dispatch.models.Attachment` or
  their wire dicts, added to this recipient's message only); ``position`` is
  ignored (the source sets it). A template variable with one of those three
  names goes inside ``variables``. A CSV file has no reserved names: every
  column but the email and name ones is a variable;
* a :class:`Recipient`.

Address syntax is not checked here: the message model checks it when the
personalised message is built, and a bad address becomes a failure there,
with the model's wording.
"""

from __future__ import annotations

import codecs
import csv
import json
import os
from collections.abc import Generator, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import IO, Any, Literal

from pydantic import ValidationError as PydanticValidationError

from sendmux_dispatch.errors import InputError
from sendmux_dispatch.models import Attachment, parse_address

__all__ = [
    "ReadStats",
    "Recipient",
    "RecipientFailure",
    "RecipientFile",
    "file_format",
    "iter_recipients",
    "normalize_email",
    "read_csv",
    "read_jsonl",
    "recipient_from_mapping",
    "sniff_delimiter",
]

#: What the file readers take: a path, or a file already open in binary or text mode.
RecipientFile = str | os.PathLike[str] | IO[bytes] | IO[str]

_NO_VARIABLES: Mapping[str, Any] = MappingProxyType({})
# Mapping keys with a meaning of their own: never template variables.
# ("position" is the pipeline's to set, so a stale one in the data is ignored.)
_SPECIAL_KEYS = frozenset({"variables", "attachments", "position"})


@dataclass(frozen=True, slots=True)
class Recipient:
    """One addressee of a bulk job.

    ``position`` is the 0-based index of the row in its source; the sources
    set it, so failures and sends can be traced back to the input row.
    ``attachments`` are added to the template's attachments for this
    recipient only (most jobs leave it empty).
    """

    email: str
    name: str | None = None
    variables: Mapping[str, Any] = field(default_factory=lambda: _NO_VARIABLES, hash=False)
    position: int = 0
    attachments: tuple[Attachment, ...] = field(default=(), hash=False)

    @property
    def identity(self) -> str:
        """The normalised email: what deduplication and idempotency keys use."""
        return normalize_email(self.email)

    def __str__(self) -> str:
        return f"{self.name} <{self.email}>" if self.name else self.email


@dataclass(frozen=True, slots=True)
class RecipientFailure:
    """A recipient that will not be sent to, and why.

    ``email`` is the address as given (``None`` when the row had none);
    ``code`` is machine-readable (``missing_email``, ``invalid_json``,
    ``invalid_email``, ``line_break``, ``undefined_variable``, ``too_large``,
    ...); ``reason`` is a sentence naming the field and the problem.
    """

    position: int
    email: str | None
    code: str
    reason: str

    def __str__(self) -> str:
        who = self.email if self.email is not None else "(no email)"
        return f"recipient #{self.position} {who}: {self.reason}"


def normalize_email(email: str) -> str:
    """The identity of an address: surrounding space removed, case folded.

    The whole address is lower-cased. Local parts are case-sensitive in
    theory, but no mailbox provider treats them so, and sending twice to
    ``Ann@x.com`` and ``ann@x.com`` is the failure people actually report.
    """
    return email.strip().lower()


def iter_recipients(source: Iterable[object]) -> Iterator[Recipient | RecipientFailure]:
    """Turn any iterable of recipients, in any accepted form, into positioned items.

    Consumes ``source`` lazily, one item per ``next()``. Items already
    produced by :func:`read_csv` / :func:`read_jsonl` pass through (their
    failures too); every item's ``position`` is its index in ``source``.

    A single string or mapping is refused (``TypeError``) at the call, since
    iterating it would make a recipient of each character or key.
    """
    if isinstance(source, str | bytes | Mapping):
        raise TypeError("recipients must be an iterable of recipients; wrap a single one in a list")
    return _positioned(source)


def _positioned(source: Iterable[object]) -> Iterator[Recipient | RecipientFailure]:
    for position, item in enumerate(source):
        if isinstance(item, Recipient | RecipientFailure):
            yield item if item.position == position else replace(item, position=position)
        elif isinstance(item, str):
            yield _from_string(item, position)
        elif isinstance(item, Mapping):
            yield recipient_from_mapping(item, position)
        else:
            yield RecipientFailure(
                position,
                None,
                "invalid_recipient",
                f"a recipient must be an address string, a mapping with 'email' or a "
                f"Recipient, not {type(item).__name__}",
            )


def _from_string(text: str, position: int) -> Recipient | RecipientFailure:
    try:
        parts = parse_address(text)
    except ValueError as exc:  # a list, trailing text, a line break: never a guess
        return RecipientFailure(position, text, getattr(exc, "code", "invalid_email"), str(exc))
    return Recipient(email=parts["email"], name=parts.get("name"), position=position)


def recipient_from_mapping(
    row: Mapping[Any, Any],
    position: int,
    *,
    email_key: str = "email",
    name_key: str = "name",
    where: str = "",
) -> Recipient | RecipientFailure:
    """Build a recipient from one mapping row; a row that cannot be one is a failure.

    ``where`` prefixes the reason (``"line 12: "``) so a file's failures point
    at the line to fix.
    """
    email = row.get(email_key)
    if not isinstance(email, str) or not email.strip():
        shown = email if isinstance(email, str) else None
        what = "is empty" if isinstance(email, str) or email is None else "is not text"
        if email_key not in row:
            what = "is missing"
        return RecipientFailure(
            position, shown, "missing_email", f"{where}the {email_key!r} value {what}"
        )
    email = email.strip()
    name = row.get(name_key)
    if name is not None and not isinstance(name, str):
        return RecipientFailure(
            position,
            email,
            "invalid_recipient",
            f"{where}the {name_key!r} value must be text, not {type(name).__name__}",
        )
    # One pass in C for the common row; the special keys are rare.
    variables: dict[str, Any] = {
        key if isinstance(key, str) else str(key): value
        for key, value in row.items()
        if key not in _SPECIAL_KEYS and key != email_key and key != name_key
    }
    nested = row.get("variables")
    if isinstance(nested, Mapping):
        variables = {**nested, **variables}
    elif nested is not None:
        variables["variables"] = nested
    attachments: tuple[Attachment, ...] = ()
    if "attachments" in row:
        parsed = _attachments(row["attachments"])
        if isinstance(parsed, str):
            return RecipientFailure(position, email, "invalid_attachment", where + parsed)
        attachments = parsed
    return Recipient(
        email=email,
        # An empty CSV cell means "no name", not a name of "".
        name=name.strip() or None if name is not None else None,
        variables=MappingProxyType(variables) if variables else _NO_VARIABLES,
        position=position,
        attachments=attachments,
    )


def _attachments(value: object) -> tuple[Attachment, ...] | str:
    if value is None:
        return ()
    if not isinstance(value, list | tuple):
        return f"attachments must be a list, not {type(value).__name__}"
    out: list[Attachment] = []
    for index, item in enumerate(value):
        if isinstance(item, Attachment):
            out.append(item)
            continue
        try:
            out.append(Attachment.model_validate(item))
        except PydanticValidationError as exc:
            first = exc.errors(include_url=False)[0]
            return f"attachments.{index}: {first['msg']}"
    return tuple(out)


@dataclass(slots=True)
class ReadStats:
    """How a reader accounted for the lines of its file (filled in as it reads).

    Pass one to :func:`read_csv` or :func:`read_jsonl` as ``stats=``; when the
    reader has finished, ``lines == header_lines + record_lines + blank_lines``:
    every physical line is the header, part of exactly one record (one
    recipient or one failure), or blank. ``delimiter`` is the CSV delimiter
    used and ``sniffed`` says whether it was guessed from the header line.
    """

    lines: int = 0
    header_lines: int = 0
    records: int = 0
    record_lines: int = 0
    blank_lines: int = 0
    multiline_records: int = 0
    delimiter: str | None = None
    sniffed: bool = False


#: Delimiters tried, in this order, when none is given.
_SNIFFED_DELIMITERS = (",", ";", "\t", "|")

#: The recipient file formats, by the suffixes that name them.
_FORMATS: dict[str, Literal["csv", "jsonl"]] = {
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
}


def file_format(name: str | os.PathLike[str]) -> Literal["csv", "jsonl"] | None:
    """``"csv"`` or ``"jsonl"`` from a file name's suffix (any case); None for another one.

    The CLI, the Airflow bulk operator and the Celery bulk-file task all ask
    this; each decides what an unknown suffix means (CSV, or an error).
    """
    return _FORMATS.get(os.path.splitext(os.fspath(name))[1].lower())


def sniff_delimiter(header_line: str, email_column: str = "email") -> str:
    """The delimiter of a CSV header line: the one that isolates ``email_column``.

    Failing that, the candidate (``,`` ``;`` tab ``|``) the line holds most of;
    a line with none of them is comma-separated (a one-column file).
    """
    text = header_line.rstrip("\r\n")
    for candidate in _SNIFFED_DELIMITERS:
        try:
            cells = next(csv.reader([text], delimiter=candidate), [])
        except csv.Error:
            continue  # the header read proper says what is wrong with the line
        if len(cells) > 1 and email_column in (cell.strip() for cell in cells):
            return candidate
    counts = [(text.count(candidate), candidate) for candidate in _SNIFFED_DELIMITERS]
    best = max(counts, key=lambda pair: pair[0])
    return best[1] if best[0] else ","


_BARE_CR = (
    "a carriage return (\\r) inside the line, outside quotes; the file may use old Mac "
    "line endings: convert them to \\n, or quote the cell"
)


class _Lines:
    """The file's physical lines, decoded one by one so a bad byte names its line.

    A text handle's lines arrive decoded: they pass through, a byte-order mark
    at the start of the first one dropped (the handle was opened as utf-8, not
    utf-8-sig).
    """

    def __init__(self, handle: IO[bytes] | IO[str], shown: str, encoding: str) -> None:
        self._handle = handle
        self._shown = shown
        self._encoding = encoding
        self._decoder = codecs.getincrementaldecoder(_ascii_compatible(_without_bom(encoding)))()
        #: Physical lines handed out so far (the number of the last one).
        self.number = 0
        self.last = ""

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        raw = self._handle.readline()
        if not raw:
            raise StopIteration
        self.number += 1
        if isinstance(raw, str):
            self.last = raw.removeprefix("\ufeff") if self.number == 1 else raw
            return self.last
        try:
            self.last = self._decoder.decode(raw)
        except UnicodeDecodeError as exc:
            raise InputError(
                f"line {self.number}: byte {raw[exc.start : exc.start + 1]!r} (byte "
                f"{exc.start + 1} of the line) is not valid {self._encoding}; pass the "
                f"file's encoding with --encoding / encoding= (cp1252, latin-1, ...)",
                path=self._shown,
                line=self.number,
            ) from None
        return self.last


@contextmanager
def _opened(path: RecipientFile) -> Iterator[tuple[IO[bytes] | IO[str], str]]:
    """The file to read and the name errors give it; a handle given stays the caller's to close."""
    if isinstance(path, str | os.PathLike):
        source = Path(path)
        with source.open("rb") as handle:
            yield handle, str(source)
    else:
        name = getattr(path, "name", None)
        yield path, name if isinstance(name, str) else "<stream>"


def _ascii_compatible(encoding: str) -> str:
    # Lines are split on the byte b"\n" before decoding, which only holds for
    # encodings that write "\n" as that byte (not UTF-16 or UTF-32).
    name = codecs.lookup(encoding).name
    if name.startswith(("utf-16", "utf-32")):
        raise ValueError(f"encoding {encoding!r} is not supported; convert the file to UTF-8")
    return name


def read_csv(
    path: RecipientFile,
    *,
    email_column: str = "email",
    name_column: str = "name",
    encoding: str = "utf-8",
    delimiter: str | None = None,
    stats: ReadStats | None = None,
) -> Generator[Recipient | RecipientFailure, None, None]:
    """Recipients from a CSV file with a header row, read one row at a time.

    The ``email_column`` and ``name_column`` cells become the address; every
    other column, whatever its name (``attachments`` and ``position`` too),
    becomes a template variable (a string). ``position`` counts records from 0
    (blank lines take none); reasons name the file's line (``line 12:``, or
    ``lines 12-14:`` for a record with a quoted line break).

    ``delimiter=None`` takes the one that isolates ``email_column`` in the
    header line (:func:`sniff_delimiter`), else a comma.

    A record that cannot become a recipient is a :class:`RecipientFailure`
    and the file goes on: no email (``missing_email``), fewer or more cells
    than the header or a quote misplaced within one line (``malformed_row``),
    a cell over the csv field limit on one line (``too_large``).

    :class:`~sendmux_dispatch.errors.InputError` (with ``line``) is raised
    where the rest of the file cannot be trusted: an empty file, a header
    with repeated names or without ``email_column`` (checked once, before the
    first row), a quote opened on one line that never closes or runs into
    misquoted text on a later one, a quoted field past the field limit across
    lines, a byte that is not valid in ``encoding``.

    ``path`` is a path, or a file already open (an object store's, a
    socket's): binary, decoded here with ``encoding``, or text (open it with
    ``newline=""`` so quoted line breaks survive). A handle is read from where
    it stands and left open for its owner to close.

    The file stays open until the generator is exhausted or closed
    (``reader.close()``), which a ``with contextlib.closing(...)`` makes sure of.
    """
    if delimiter is not None and (len(delimiter) != 1 or delimiter in '\r\n"'):
        raise ValueError(f"delimiter must be one character other than a quote, not {delimiter!r}")
    stats = stats if stats is not None else ReadStats()
    with _opened(path) as (handle, shown):
        lines = _Lines(handle, shown, encoding)
        header_line = _first_line(lines, stats)
        if header_line is None:
            raise InputError(f"{shown} is empty: expected a header row", path=shown, line=None)
        if delimiter is None:
            delimiter = sniff_delimiter(header_line, email_column)
            stats.sniffed = True
        stats.delimiter = delimiter
        try:
            header = next(csv.reader([header_line], delimiter=delimiter, strict=True), [])
        except csv.Error as exc:
            cr = "new-line character seen" in str(exc)
            raise InputError(
                f"line {lines.number}: the header row cannot be read: "
                + (_BARE_CR if cr else str(exc)),
                path=shown,
                line=lines.number,
            ) from None
        _check_header(header, lines.number, email_column, delimiter, shown, stats.sniffed)
        stats.header_lines = 1
        width = len(header)
        # Positions rather than names: a variable column may be called anything.
        email_index = header.index(email_column)
        name_index = header.index(name_column) if name_column in header else None
        reader = csv.reader(lines, delimiter=delimiter, strict=True)
        position = -1
        while True:
            first = lines.number + 1
            try:
                cells = next(reader)
            except StopIteration:
                stats.lines = lines.number
                return
            except csv.Error as exc:
                last = lines.number
                stats.lines = last
                if last > first or "unexpected end of data" in str(exc):
                    to = "the end of the file" if "end of data" in str(exc) else f"{exc}"
                    raise InputError(
                        f"line {first}: unterminated quote from line {first} (the quoted "
                        f"field runs on to line {last}, {to}); nothing after line {first - 1} "
                        f'can be trusted: close the quote, or double it ("") inside a '
                        f"quoted field",
                        path=shown,
                        line=first,
                    ) from None
                if "new-line character seen" in str(exc):
                    # A bare CR splits a record where line reading does not:
                    # old Mac line endings, or a stray CR inside a cell.
                    raise InputError(
                        f"line {first}: {_BARE_CR}",
                        path=shown,
                        line=first,
                    ) from None
                position += 1
                _count_record(stats, first, last)
                yield _row_error(exc, lines.last, first, position, delimiter, email_index, header)
                continue
            last = lines.number
            stats.lines = last
            if last == first and not "".join(cells).strip() and len(cells) <= 1:
                stats.blank_lines += 1
                continue
            position += 1
            _count_record(stats, first, last)
            where = f"line {first}: " if last == first else f"lines {first}-{last}: "
            if len(cells) != width:
                more_or_fewer = "more" if len(cells) > width else "fewer"
                yield RecipientFailure(
                    position,
                    _cell(cells[email_index]) if email_index < len(cells) else None,
                    "malformed_row",
                    f"{where}{len(cells)} cells where the header has {width} "
                    f"({more_or_fewer} than the header: an unquoted {delimiter!r} in a value, "
                    f"or a missing cell?)",
                )
                continue
            yield _csv_recipient(cells, header, email_index, name_index, position, where)


def _first_line(lines: _Lines, stats: ReadStats) -> str | None:
    for line in lines:
        if line.strip():
            return line
        stats.blank_lines += 1
    return None


def _check_header(
    header: list[str], line: int, email_column: str, delimiter: str, path: str, sniffed: bool
) -> None:
    seen: set[str] = set()
    repeated: list[str] = []
    for name in header:
        if name in seen:
            repeated.append(name)
        seen.add(name)
    if repeated:
        raise InputError(
            f"line {line}: the header names {', '.join(map(repr, dict.fromkeys(repeated)))} "
            f"more than once; each column needs its own name",
            path=path,
            line=line,
        )
    if email_column in header:
        return
    hints = []
    near = [name for name in header if name.strip().lower() == email_column.lower()]
    if near:
        hints.append(f"--email-column {near[0]!r} (email_column=)")
    if len(header) == 1 and not sniffed:
        hints.append("another --delimiter")
    hint = f"; try {' or '.join(hints)}" if hints else "; choose one with --email-column"
    found = ", ".join(repr(name) for name in header)
    raise InputError(
        f"line {line}: no {email_column!r} column in the header (split on {delimiter!r}, "
        f"found: {found}){hint}",
        path=path,
        line=line,
    )


def _count_record(stats: ReadStats, first: int, last: int) -> None:
    stats.records += 1
    stats.record_lines += last - first + 1
    if last > first:
        stats.multiline_records += 1


def _row_error(
    exc: csv.Error,
    line_text: str,
    line: int,
    position: int,
    delimiter: str,
    email_index: int,
    header: list[str],
) -> RecipientFailure:
    """A csv error confined to one line: that record fails, the next line starts afresh."""
    if "field larger than field limit" not in str(exc):
        return RecipientFailure(position, None, "malformed_row", f"line {line}: {exc}")
    limit = csv.field_size_limit()
    # The cells before the oversized one still parse from a cut-down copy,
    # which gives the row's email and the column at fault.
    cells = next(csv.reader([line_text[:limit]], delimiter=delimiter, strict=False), [])
    email = _cell(cells[email_index]) if email_index < len(cells) - 1 else None
    column = header[len(cells) - 1] if 0 < len(cells) <= len(header) else "?"
    return RecipientFailure(
        position,
        email,
        "too_large",
        f"line {line}: the {column!r} cell is over the {limit:,}-character field limit",
    )


def _csv_recipient(
    cells: list[str],
    header: list[str],
    email_index: int,
    name_index: int | None,
    position: int,
    where: str,
) -> Recipient | RecipientFailure:
    email = cells[email_index].strip()
    if not email:
        return RecipientFailure(
            position, "", "missing_email", f"{where}the {header[email_index]!r} value is empty"
        )
    name = cells[name_index].strip() if name_index is not None else ""
    variables = {
        column: value
        for index, (column, value) in enumerate(zip(header, cells, strict=True))
        if index != email_index and index != name_index
    }
    return Recipient(
        email=email,
        # An empty CSV cell means "no name", not a name of "".
        name=name or None,
        variables=MappingProxyType(variables) if variables else _NO_VARIABLES,
        position=position,
    )


def _without_bom(encoding: str) -> str:
    # Spreadsheet exports start with a byte-order mark, which would otherwise
    # become part of the first column's name ("\ufeffemail"). utf-8-sig
    # drops it when present and is plain utf-8 otherwise.
    if encoding.lower().replace("-", "").replace("_", "") == "utf8":
        return "utf-8-sig"
    return encoding


def _cell(value: object) -> str | None:
    return value.strip() if isinstance(value, str) else None


def read_jsonl(
    path: RecipientFile,
    *,
    email_column: str = "email",
    name_column: str = "name",
    encoding: str = "utf-8",
    stats: ReadStats | None = None,
) -> Generator[Recipient | RecipientFailure, None, None]:
    """Recipients from a JSON Lines file: one JSON object per line, read lazily.

    Each object follows the mapping rules of :func:`iter_recipients`; a JSON
    string is an address. Blank lines are skipped and take no position; a line
    that is not JSON (``invalid_json``), or neither an object nor a string
    (``malformed_row``), is a failure with its line number and the file goes on
    (each line stands alone, so the next one can still be trusted).
    ``email_column`` and ``name_column`` are the keys of the address and the
    name; ``path`` may be an open handle, as for :func:`read_csv`.

    :class:`~sendmux_dispatch.errors.InputError` is raised for a byte that is
    not valid in ``encoding`` (naming its line) and for a file with no
    non-blank line.
    """
    stats = stats if stats is not None else ReadStats()
    with _opened(path) as (handle, shown):
        lines = _Lines(handle, shown, encoding)
        position = -1
        for line in lines:
            stats.lines = lines.number
            if not line.strip():
                stats.blank_lines += 1
                continue
            position += 1
            _count_record(stats, lines.number, lines.number)
            where = f"line {lines.number}: "
            try:
                value = json.loads(line)
            except ValueError as exc:
                yield RecipientFailure(position, None, "invalid_json", f"{where}{exc}")
                continue
            if isinstance(value, str):
                yield _from_string(value, position)
                continue
            if not isinstance(value, dict):
                yield RecipientFailure(
                    position,
                    None,
                    "malformed_row",
                    f"{where}expected a JSON object or an address string, "
                    f"got {type(value).__name__}",
                )
                continue
            yield recipient_from_mapping(
                value, position, email_key=email_column, name_key=name_column, where=where
            )
        if position < 0:
            raise InputError(f"{shown} is empty: expected one JSON object per line", path=shown)
