"""Recipient sources: every input form, read lazily, bad rows reported not raised."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from sendmux_dispatch import (
    Attachment,
    InputError,
    Recipient,
    RecipientFailure,
    iter_recipients,
    read_csv,
    read_jsonl,
)
from sendmux_dispatch.recipients import ReadStats, normalize_email


def test_address_strings_become_recipients_with_positions() -> None:
    items = list(iter_recipients(["ann@example.com", "Bob Lee <bob@example.com>"]))
    assert items == [
        Recipient("ann@example.com", None, position=0),
        Recipient("bob@example.com", "Bob Lee", position=1),
    ]


def test_mappings_give_email_name_and_every_other_key_as_variables() -> None:
    [item] = iter_recipients([{"email": " ann@example.com ", "name": "Ann", "plan": "pro", "n": 3}])
    assert isinstance(item, Recipient)
    assert item.email == "ann@example.com"
    assert item.name == "Ann"
    assert dict(item.variables) == {"plan": "pro", "n": 3}
    assert item.position == 0


def test_a_nested_variables_mapping_is_merged_so_asdict_round_trips() -> None:
    [item] = iter_recipients(
        [{"email": "a@example.com", "variables": {"plan": "pro", "x": 1}, "x": 2, "position": 9}]
    )
    assert isinstance(item, Recipient)
    assert dict(item.variables) == {"plan": "pro", "x": 2}
    assert item.position == 0


def test_mapping_attachments_belong_to_that_recipient() -> None:
    attachment = Attachment.from_bytes(b"hello", "a.txt")
    [item] = iter_recipients(
        [
            {
                "email": "a@example.com",
                "attachments": [attachment, {"filename": "b.txt", "content": "aGk="}],
            }
        ]
    )
    assert isinstance(item, Recipient)
    assert [a.filename for a in item.attachments] == ["a.txt", "b.txt"]
    assert "attachments" not in item.variables


def test_recipient_objects_pass_through_and_get_their_source_position() -> None:
    given = Recipient("ann@example.com", "Ann", {"k": "v"}, position=42)
    items = list(iter_recipients(["x@example.com", given]))
    assert items[1] == Recipient("ann@example.com", "Ann", {"k": "v"}, position=1)


@pytest.mark.parametrize(
    ("row", "code"),
    [
        ({"name": "No Email"}, "missing_email"),
        ({"email": ""}, "missing_email"),
        ({"email": None}, "missing_email"),
        ({"email": 12}, "missing_email"),
        ({"email": "a@example.com", "name": 5}, "invalid_recipient"),
        ({"email": "a@example.com", "attachments": "nope"}, "invalid_attachment"),
        ({"email": "a@example.com", "attachments": [{"filename": "x"}]}, "invalid_attachment"),
    ],
)
def test_malformed_mappings_become_failures_not_exceptions(
    row: dict[str, object], code: str
) -> None:
    items = list(iter_recipients([row, "ok@example.com"]))
    failure = items[0]
    assert isinstance(failure, RecipientFailure)
    assert failure.position == 0
    assert failure.code == code
    assert failure.reason
    assert isinstance(items[1], Recipient)


def test_an_unsupported_item_type_is_a_failure() -> None:
    [failure] = iter_recipients([42])
    assert isinstance(failure, RecipientFailure)
    assert failure.code == "invalid_recipient"
    assert "int" in failure.reason


def test_sources_are_consumed_one_item_at_a_time() -> None:
    def explodes_after_three() -> Iterator[str]:
        yield from ("a@example.com", "b@example.com", "c@example.com")
        raise RuntimeError("read too far")

    taken = list(itertools.islice(iter_recipients(explodes_after_three()), 3))
    assert [r.email for r in taken if isinstance(r, Recipient)] == [
        "a@example.com",
        "b@example.com",
        "c@example.com",
    ]


def test_normalize_email_strips_and_folds_case() -> None:
    assert normalize_email("  Ann.Lee@Example.COM ") == "ann.lee@example.com"
    assert Recipient("Ann@Example.com").identity == "ann@example.com"


# ---------------------------------------------------------------- CSV


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


def test_read_csv_maps_columns_to_fields_and_variables(tmp_path: Path) -> None:
    path = write(
        tmp_path / "r.csv",
        "email,name,plan,city\nann@example.com,Ann Lee,pro,Oslo\nbob@example.com,,free,\n",
    )
    items = list(read_csv(path))
    assert items == [
        Recipient("ann@example.com", "Ann Lee", {"plan": "pro", "city": "Oslo"}, position=0),
        Recipient("bob@example.com", None, {"plan": "free", "city": ""}, position=1),
    ]


def test_read_csv_custom_columns_encoding_and_byte_order_mark(tmp_path: Path) -> None:
    path = write(
        tmp_path / "r.csv",
        "\ufeffAddress;Full name\r\nzoe@example.com;Zoë\r\n".replace(";", ","),
        encoding="utf-8",
    )
    [item] = read_csv(path, email_column="Address", name_column="Full name")
    assert item == Recipient("zoe@example.com", "Zoë", position=0)

    latin = write(tmp_path / "l.csv", "email,name\nzoe@example.com,Zoë\n", encoding="latin-1")
    [item] = read_csv(latin, encoding="latin-1")
    assert isinstance(item, Recipient)
    assert item.name == "Zoë"


def test_read_csv_reports_bad_rows_by_position_and_line(tmp_path: Path) -> None:
    path = write(
        tmp_path / "r.csv",
        "email,name\n"
        "ann@example.com,Ann\n"
        ",No Email\n"
        "bob@example.com,Bob,extra cell\n"
        '"multi\nline@example.com",Multi\n'
        "cid@example.com,Cid\n",
    )
    items = list(read_csv(path))
    assert [type(item).__name__ for item in items] == [
        "Recipient",
        "RecipientFailure",
        "RecipientFailure",
        "Recipient",
        "Recipient",
    ]
    missing, extra = items[1], items[2]
    assert isinstance(missing, RecipientFailure)
    assert (missing.position, missing.code) == (1, "missing_email")
    assert missing.reason.startswith("line 3:")
    assert isinstance(extra, RecipientFailure)
    assert (extra.position, extra.email, extra.code) == (2, "bob@example.com", "malformed_row")
    assert items[4] == Recipient("cid@example.com", "Cid", position=4)


def test_read_csv_without_the_email_column_is_one_error_listing_the_columns(
    tmp_path: Path,
) -> None:
    # Before: one missing_email failure per row (100,000 rows, 100,000 lines).
    path = write(tmp_path / "r.csv", "Email,Name\nann@example.com,Ann\nbob@example.com,Bob\n")
    reader = read_csv(path)
    with pytest.raises(InputError) as caught:
        next(reader)
    assert caught.value.line == 1
    assert "'Email', 'Name'" in str(caught.value)
    assert "--email-column 'Email'" in str(caught.value)


def test_read_csv_sniffs_a_semicolon_export_and_takes_a_given_delimiter(tmp_path: Path) -> None:
    path = write(tmp_path / "r.csv", "email;name\nann@example.com;Ann Lee\n")
    stats = ReadStats()
    assert list(read_csv(path, stats=stats)) == [Recipient("ann@example.com", "Ann Lee")]
    assert (stats.delimiter, stats.sniffed) == (";", True)
    with pytest.raises(InputError, match="another --delimiter"):
        list(read_csv(path, delimiter=","))
    tabs = write(tmp_path / "t.csv", "name\tmail\nAnn\tann@example.com\n")
    [item] = read_csv(tabs, email_column="mail", delimiter="\t")
    assert item == Recipient("ann@example.com", "Ann")


def test_read_csv_refuses_a_repeated_header_name(tmp_path: Path) -> None:
    # Before: the last 'email' column silently won.
    path = write(tmp_path / "r.csv", "email,name,email\nann@example.com,Ann,bob@example.com\n")
    with pytest.raises(InputError, match="'email' more than once") as caught:
        list(read_csv(path))
    assert caught.value.line == 1


@pytest.mark.parametrize("text", ["", "\n\n"])
def test_an_empty_file_is_an_input_error(tmp_path: Path, text: str) -> None:
    with pytest.raises(InputError, match="empty"):
        list(read_csv(write(tmp_path / "r.csv", text)))
    with pytest.raises(InputError, match="empty"):
        list(read_jsonl(write(tmp_path / "r.jsonl", text)))


def test_a_short_row_is_malformed_not_sent_with_none(tmp_path: Path) -> None:
    # Before: the missing cell became the text "None" in the message.
    path = write(
        tmp_path / "r.csv", "email,name,plan\nann@example.com,Ann\nbob@example.com,B,pro\n"
    )
    short, bob = read_csv(path)
    assert isinstance(short, RecipientFailure)
    assert (short.position, short.email, short.code) == (0, "ann@example.com", "malformed_row")
    assert short.reason.startswith("line 2: 2 cells where the header has 3")
    assert bob == Recipient("bob@example.com", "B", {"plan": "pro"}, position=1)


def test_an_unterminated_quote_names_its_line_and_stops(tmp_path: Path) -> None:
    # Before: row 11's quote swallowed the 989 rows after it into one field.
    rows = [f"u{i}@example.com,U {i}" for i in range(1000)]
    rows[10] = 'u10@example.com,"U 10'
    path = write(tmp_path / "r.csv", "email,name\n" + "\n".join(rows) + "\n")
    stats = ReadStats()
    reader = read_csv(path, stats=stats)
    got = [next(reader) for _ in range(10)]
    assert all(isinstance(item, Recipient) for item in got)
    with pytest.raises(InputError, match="unterminated quote from line 12") as caught:
        next(reader)
    assert caught.value.line == 12
    assert (stats.header_lines, stats.records, stats.record_lines) == (1, 10, 10)


def test_a_quote_closed_by_misquoted_text_lines_later_is_unterminated(tmp_path: Path) -> None:
    path = write(
        tmp_path / "r.csv",
        'email,name\nann@example.com,"Ann\nbob@example.com,Bob\ncid@example.com,"Lee, Cid"\n',
    )
    with pytest.raises(InputError, match="unterminated quote from line 2") as caught:
        list(read_csv(path))
    assert caught.value.line == 2


def test_a_quoted_field_past_the_field_limit_across_lines_stops(tmp_path: Path) -> None:
    # Before: the reader lost its place and later rows merged into garbage addresses.
    body = ("y" * 1000 + "\n") * 200
    path = write(
        tmp_path / "r.csv",
        f'email,name,notes\nann@example.com,Ann,a\nbob@example.com,Bob,"{body}\n'
        "cid@example.com,Cid,c\n",
    )
    with pytest.raises(InputError, match="from line 3") as caught:
        list(read_csv(path))
    assert caught.value.line == 3


def test_an_oversized_cell_on_one_line_names_that_line_and_its_email(tmp_path: Path) -> None:
    # Before: "line 4" for line 5, and the email shown as None.
    big = "x" * 200_000
    path = write(
        tmp_path / "r.csv",
        "email,name,notes\n"
        + "".join(f"u{i}@example.com,U,n\n" for i in range(3))
        + f"big@example.com,Big,{big}\nlast@example.com,Last,n\n",
    )
    items = list(read_csv(path))
    failure = items[3]
    assert isinstance(failure, RecipientFailure)
    assert (failure.email, failure.code) == ("big@example.com", "too_large")
    assert failure.reason.startswith("line 5: the 'notes' cell")
    assert items[4] == Recipient("last@example.com", "Last", {"notes": "n"}, position=4)


def test_a_bad_byte_names_its_line_not_a_buffer_offset(tmp_path: Path) -> None:
    # Before: "position 4514" (an offset in a read buffer).
    rows = "".join(f"u{i}@example.com,User {i}\n" for i in range(600))
    data = ("email,name\n" + rows).encode()
    data = data.replace(b"User 498\n", b"User 498\xe9\n")
    path = tmp_path / "r.csv"
    path.write_bytes(data)
    with pytest.raises(InputError, match=r"line 500: byte b'\\xe9'") as caught:
        list(read_csv(path))
    assert caught.value.line == 500
    jsonl = tmp_path / "r.jsonl"
    jsonl.write_bytes(b'{"email": "a@example.com"}\n{"email": "b@example.com", "name": "\xff"}\n')
    with pytest.raises(InputError, match="line 2:"):
        list(read_jsonl(jsonl))


def test_old_mac_line_endings_stop_instead_of_losing_the_rest(tmp_path: Path) -> None:
    path = write(tmp_path / "r.csv", "email,name\rann@example.com,Ann\rbob@example.com,Bob\r")
    with pytest.raises(InputError, match="carriage return") as caught:
        list(read_csv(path))
    assert caught.value.line == 1


def test_csv_columns_named_like_reserved_keys_stay_template_variables(tmp_path: Path) -> None:
    # Before: 'attachments' made every row invalid and 'position' vanished.
    path = write(
        tmp_path / "r.csv", "email,attachments,position,variables\nann@example.com,,CTO,x\n"
    )
    [item] = read_csv(path)
    assert isinstance(item, Recipient)
    assert dict(item.variables) == {"attachments": "", "position": "CTO", "variables": "x"}
    assert item.attachments == ()


def test_read_stats_account_for_every_physical_line(tmp_path: Path) -> None:
    path = write(
        tmp_path / "r.csv",
        '\nemail,name\nann@example.com,Ann\n\n"bob@example.com",Bob,x\n'
        'cid@example.com,"Cid\nLee"\ndan@example.com,Dan\n',
    )
    stats = ReadStats()
    items = list(read_csv(path, stats=stats))
    assert len(items) == stats.records == 4
    assert stats.lines == 8
    assert stats.lines == stats.header_lines + stats.record_lines + stats.blank_lines
    assert (stats.blank_lines, stats.multiline_records) == (2, 1)


def test_read_csv_reads_lazily(tmp_path: Path) -> None:
    path = tmp_path / "big.csv"
    with path.open("w") as handle:
        handle.write("email\n")
        for i in range(50_000):
            handle.write(f"user{i}@example.com\n")
    reader = read_csv(path)
    first = next(reader)
    assert first == Recipient("user0@example.com", position=0)
    # Closing the generator closes the file; nothing else was read into memory.
    reader.close()


def test_read_csv_feeds_iter_recipients_keeping_positions(tmp_path: Path) -> None:
    path = write(tmp_path / "r.csv", "email\n\na@example.com\n")
    assert [i.position for i in iter_recipients(read_csv(path))] == [0]


# ---------------------------------------------------------------- JSONL


def test_read_jsonl_objects_strings_blank_lines_and_bad_lines(tmp_path: Path) -> None:
    lines = [
        json.dumps({"email": "ann@example.com", "name": "Ann", "plan": "pro"}),
        "",
        '"Bob <bob@example.com>"',
        "{not json",
        "[1, 2]",
        json.dumps({"name": "nobody"}),
        json.dumps({"email": "cid@example.com"}),
    ]
    items = list(read_jsonl(write(tmp_path / "r.jsonl", "\n".join(lines) + "\n")))
    assert items[0] == Recipient("ann@example.com", "Ann", {"plan": "pro"}, position=0)
    assert items[1] == Recipient("bob@example.com", "Bob", position=1)
    bad_json, not_object, no_email = items[2], items[3], items[4]
    assert isinstance(bad_json, RecipientFailure)
    assert (bad_json.position, bad_json.code) == (2, "invalid_json")
    assert bad_json.reason.startswith("line 4:")
    assert isinstance(not_object, RecipientFailure)
    assert not_object.code == "malformed_row"
    assert isinstance(no_email, RecipientFailure)
    assert no_email.code == "missing_email"
    assert items[5] == Recipient("cid@example.com", position=5)


def test_read_jsonl_is_lazy(tmp_path: Path) -> None:
    path = write(tmp_path / "r.jsonl", '{"email": "a@example.com"}\n' * 1000)
    reader = read_jsonl(path)
    assert next(reader) == Recipient("a@example.com", position=0)
    reader.close()


def test_failure_str_names_position_and_reason() -> None:
    failure = RecipientFailure(3, None, "missing_email", "the 'email' value is missing")
    assert str(failure) == "recipient #3 (no email): the 'email' value is missing"


@pytest.mark.parametrize("source", ["ann@example.com", {"email": "ann@example.com"}])
def test_a_single_recipient_instead_of_an_iterable_is_refused_at_once(source: object) -> None:
    with pytest.raises(TypeError, match="iterable"):
        iter_recipients(source)  # type: ignore[arg-type]
