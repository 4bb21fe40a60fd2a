"""read_csv / read_jsonl on files already open: an object store's binary stream, a text file."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from sendmux_dispatch import Recipient, RecipientFailure, read_csv, read_jsonl
from sendmux_dispatch.errors import InputError

CSV = "email,name,plan\nann@example.com,Ann,gold\nbob@example.com,,free\n"


def _emails(items: list[Recipient | RecipientFailure]) -> list[str | None]:
    return [item.email for item in items]


def test_read_csv_reads_a_binary_handle_and_leaves_it_open() -> None:
    handle = io.BytesIO(("\ufeff" + CSV).encode("utf-8"))
    items = list(read_csv(handle))
    assert items == [
        Recipient("ann@example.com", "Ann", {"plan": "gold"}, position=0),
        Recipient("bob@example.com", None, {"plan": "free"}, position=1),
    ]
    assert not handle.closed  # the caller opened it, the caller closes it


def test_read_csv_reads_a_text_handle_with_a_quoted_line_break_and_a_bom(tmp_path: Path) -> None:
    path = tmp_path / "list.csv"
    path.write_text('\ufeffemail,note\nann@example.com,"two\nlines"\n', encoding="utf-8")
    with path.open(encoding="utf-8", newline="") as handle:
        (ann,) = list(read_csv(handle))
    assert isinstance(ann, Recipient)
    assert ann.variables == {"note": "two\nlines"}


def test_a_bad_header_in_a_handle_names_the_handle_and_the_column(tmp_path: Path) -> None:
    path = tmp_path / "list.csv"
    path.write_text("mail,name\nann@example.com,Ann\n", encoding="utf-8")
    with path.open("rb") as handle, pytest.raises(InputError) as caught:
        next(read_csv(handle))
    assert caught.value.path == str(path)
    assert "no 'email' column" in str(caught.value)
    with pytest.raises(InputError, match="<stream> is empty"):
        next(read_csv(io.BytesIO(b"")))


def test_a_bad_byte_in_a_binary_handle_names_its_line() -> None:
    handle = io.BytesIO(b"email\nann@example.com\nb\xe9b@example.com\n")
    reader = read_csv(handle)
    assert _emails([next(reader)]) == ["ann@example.com"]
    with pytest.raises(InputError) as caught:
        next(reader)
    assert caught.value.line == 3


def test_read_jsonl_reads_handles_with_a_chosen_email_key() -> None:
    text = '{"address": "ann@example.com", "who": "Ann", "plan": "gold"}\n\n"bob@example.com"\n'
    for handle in (io.BytesIO(text.encode()), io.StringIO(text)):
        items = list(read_jsonl(handle, email_column="address", name_column="who"))
        assert items == [
            Recipient("ann@example.com", "Ann", {"plan": "gold"}, position=0),
            Recipient("bob@example.com", position=1),
        ]
    (missing,) = list(read_jsonl(io.StringIO('{"email": "ann@example.com"}\n'), email_column="to"))
    assert isinstance(missing, RecipientFailure)
    assert missing.code == "missing_email"
    assert "'to'" in missing.reason


def test_file_format_comes_from_the_suffix_in_any_case() -> None:
    from pathlib import Path

    from sendmux_dispatch.recipients import file_format

    assert file_format("list.CSV") == "csv"
    assert file_format(Path("/data/list.jsonl")) == "jsonl"
    assert file_format("s3://bucket/list.ndjson") == "jsonl"
    assert file_format("list.txt") is None
    assert file_format("list") is None
