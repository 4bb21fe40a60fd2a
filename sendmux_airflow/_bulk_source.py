"""Where a bulk send's recipients come from: a list (an XCom), or a CSV/JSONL file, streamed.

A file is opened through Airflow's ``ObjectStoragePath`` (a local path,
``file://``, ``s3://``, ``gs://``... with a connection) and read by the
core's readers one line at a time, so a list of millions costs a line's
memory. Every source is primed here: its first recipient is read before the
job starts, which is when a missing file, a header without the email column
or a wrong key fails the task with the field named, before any request.
"""

from __future__ import annotations

import codecs
import contextlib
import dataclasses
import itertools
from collections.abc import Iterable, Iterator, Mapping
from pathlib import PurePosixPath
from typing import IO, Any

from airflow.sdk import ObjectStoragePath
from airflow.sdk.exceptions import AirflowFailException

from sendmux_airflow._common import address_list
from sendmux_dispatch.errors import InputError
from sendmux_dispatch.recipients import (
    Recipient,
    RecipientFailure,
    iter_recipients,
    read_csv,
    read_jsonl,
    recipient_from_mapping,
)
from sendmux_dispatch.recipients import file_format as recipient_file_format

__all__ = ["file_recipients", "list_recipients", "with_shared"]

Item = Recipient | RecipientFailure


def _format_of(name: str, file_format: str | None) -> str:
    if file_format:
        chosen = file_format.strip().lower()
        if chosen not in ("csv", "jsonl"):
            raise AirflowFailException(f"file_format must be 'csv' or 'jsonl', not {file_format!r}")
        return chosen
    found = recipient_file_format(name)
    if found is None:
        suffix = PurePosixPath(name).suffix.lower()
        raise AirflowFailException(
            f"recipients_file: cannot tell the format of {name!r} from its suffix "
            f"({suffix or 'none'}); name it .csv or .jsonl, or set file_format='csv' or 'jsonl'"
        )
    return found


@contextlib.contextmanager
def file_recipients(
    location: str | ObjectStoragePath,
    *,
    file_format: str | None,
    email_column: str,
    name_column: str,
    encoding: str,
    conn_id: str | None,
) -> Iterator[Iterator[Item]]:
    """The recipients of a CSV or JSONL file, read lazily; the file closes with the block."""
    if isinstance(location, str) and not location.strip():
        raise AirflowFailException("recipients_file is empty: give a path or an object storage URL")
    try:
        path = (
            location
            if isinstance(location, ObjectStoragePath)
            else ObjectStoragePath(location.strip(), conn_id=conn_id)
        )
    except (TypeError, ValueError) as exc:
        raise AirflowFailException(f"recipients_file: {location!r} is not a path: {exc}") from None
    shown = str(path)
    kind = _format_of(path.name, file_format)
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise AirflowFailException(
            f"encoding: {encoding!r} is not an encoding Python knows (utf-8, cp1252, latin-1, ...)"
        ) from None
    try:
        handle: IO[bytes] = path.open("rb")  # type: ignore[no-untyped-call]
    except FileNotFoundError:
        raise AirflowFailException(
            f"recipients_file: no file at {shown}; check the path (and its rendered template)"
        ) from None
    except (OSError, ValueError) as exc:
        # ValueError: a scheme no installed provider registers (s3:// without amazon's).
        raise AirflowFailException(f"recipients_file: cannot open {shown}: {exc}") from None
    with handle:
        read = read_csv if kind == "csv" else read_jsonl
        reader = read(handle, email_column=email_column, name_column=name_column, encoding=encoding)
        with contextlib.closing(reader):
            yield _primed(reader, f"recipients_file {shown}", email_column)


def list_recipients(value: Any, *, email_column: str, name_column: str) -> Iterator[Item]:
    """The recipients of a list, an XCom's value or an address string; lazily, primed."""
    if isinstance(value, str):
        if value.strip().startswith(("[", "{")):
            raise AirflowFailException(
                "recipients rendered to text that looks like a list; pass the XComArg "
                "(recipients=build.output) or set render_template_as_native_obj=True on the DAG"
            )
        value = address_list(value)
    elif isinstance(value, Mapping) or not isinstance(value, Iterable):
        raise AirflowFailException(
            f"recipients must be a list of addresses or of mappings with {email_column!r}, "
            f"not {type(value).__name__}"
        )
    items: Iterable[object] = value
    if (email_column, name_column) != ("email", "name"):
        items = (
            recipient_from_mapping(item, position, email_key=email_column, name_key=name_column)
            if isinstance(item, Mapping)
            else item
            for position, item in enumerate(value)
        )
    return _primed(iter_recipients(items), "recipients", email_column)


def _primed(items: Iterator[Item], field: str, email_column: str) -> Iterator[Item]:
    """``items`` with the first one read now: a source that cannot start fails here."""
    try:
        first = next(items)
    except StopIteration:
        raise AirflowFailException(f"{field} holds no recipients") from None
    except (InputError, ValueError) as exc:  # ValueError: an encoding it cannot split (UTF-16)
        raise AirflowFailException(f"{field}: {exc}") from None
    if (
        isinstance(first, RecipientFailure)
        and first.code == "missing_email"
        and first.reason.endswith("is missing")
    ):
        # No header to check in JSON or a list: a first row without the key
        # means the key is wrong, and every row after it would fail the same way.
        raise AirflowFailException(
            f"{field}: the first recipient has no {email_column!r} key ({first.reason}); "
            f"set email_column= to the key that holds the address"
        )
    # A later InputError (a quote that never closes at line 90,000) stops the
    # job in dispatch, with what was sent before it reported.
    return itertools.chain([first], items)


def with_shared(items: Iterator[Item], shared: Mapping[str, Any]) -> Iterator[Item]:
    """Each recipient's variables over ``shared`` (the task's ``variables``), lazily."""
    if not shared:
        yield from items
        return
    for item in items:
        if isinstance(item, Recipient):
            yield dataclasses.replace(item, variables={**shared, **item.variables})
        else:
            yield item
