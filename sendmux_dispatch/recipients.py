"""Recipients and the lazy sources that produce them.

A job may address millions of people, so nothing here builds a list: every
source is a generator that reads one row, yields one item and forgets it.
Memory stays flat whatever the length of the file or iterable.

Each source yields, in source order, either a :class:`Recipient` or a
:class:`RecipientFailure` for a row that cannot become one (no email, a line
that is not JSON, a value of the wrong type). A bad row never raises: it is
reported by its ``position`` (0-based index in the source) and the job goes on.

Accepted inputs (:func:`iter_recipients`):

* a plain address string, ``"ann@example.com"`` or ``"Ann Lee <ann@example.com>"``;
* a mapping with ``email``, optional ``name``, and any other keys, which become
  template variables. Two keys are special: ``variables`` (a mapping, merged
  into the variables, so ``dataclasses.asdict(recipient)`` round-trips) and
  ``attachments`` (a list of :class:`~sendmux_dispatch.models.Attachment` or
  their wire dicts, added to this recipient's message only);
* a :class:`Recipient`.

Address syntax is not checked here: the message model checks it when the
personalised message is built, and a bad address becomes a failure there,
with the model's wording.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Generator, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from pydantic import ValidationError as PydanticValidationError

from sendmux_dispatch.models import Attachment, parse_address

__all__ = [
    "Recipient",
    "RecipientFailure",
    "iter_recipients",
    "normalize_email",
    "read_csv",
    "read_jsonl",
    "recipient_from_mapping",
]

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


def read_csv(
    path: str | Path,
    *,
    email_column: str = "email",
    name_column: str = "name",
    encoding: str = "utf-8",
) -> Generator[Recipient | RecipientFailure, None, None]:
    """Recipients from a CSV file with a header row, read one row at a time.

    The ``email_column`` and ``name_column`` cells become the address; every
    other column becomes a template variable (a string). ``position`` counts
    data rows from 0; reasons name the file line. A row without an email, or
    with more cells than the header, is a failure; the file goes on.

    A byte sequence that is not valid in ``encoding`` raises
    :class:`UnicodeDecodeError`: a wrongly-decoded file would garble every
    name, which is worth stopping for (re-running the job is safe: its
    batches keep their idempotency keys).

    The file stays open until the generator is exhausted or closed
    (``reader.close()``), which a ``with contextlib.closing(...)`` makes sure of.
    """
    with Path(path).open(newline="", encoding=_without_bom(encoding)) as handle:
        reader = csv.DictReader(handle)
        position = -1
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                # The reader carries on from the next line after a bad one.
                position += 1
                yield RecipientFailure(
                    position, None, "malformed_row", f"line {reader.line_num}: {exc}"
                )
                continue
            position += 1
            where = f"line {reader.line_num}: "
            if None in row:
                extra = row[None]
                yield RecipientFailure(
                    position,
                    _cell(row.get(email_column)),
                    "malformed_row",
                    f"{where}the row has {len(extra)} more cell(s) than the header",
                )
                continue
            yield recipient_from_mapping(
                row, position, email_key=email_column, name_key=name_column, where=where
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
    path: str | Path, *, encoding: str = "utf-8"
) -> Generator[Recipient | RecipientFailure, None, None]:
    """Recipients from a JSON Lines file: one JSON object per line, read lazily.

    Each object follows the mapping rules of :func:`iter_recipients`; a JSON
    string is an address. Blank lines are skipped and take no position; a line
    that is not JSON, or neither an object nor a string, is a failure with its
    line number.
    """
    with Path(path).open(encoding=_without_bom(encoding)) as handle:
        position = -1
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            position += 1
            where = f"line {line_number}: "
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
                    value if isinstance(value, str) else None,
                    "malformed_row",
                    f"{where}expected a JSON object or an address string, "
                    f"got {type(value).__name__}",
                )
                continue
            yield recipient_from_mapping(value, position, where=where)
