"""The request models refuse what the API would refuse, and say why, before any request."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sendmux_dispatch import Address, Attachment, EmailMessage, InvalidMessageError
from sendmux_dispatch.models import BatchRequest, api_limits

BASE = {
    "from": {"email": "reports@example.com", "name": "Reports"},
    "to": {"email": "ann@example.com", "name": "Ann"},
    "subject": "Nightly report",
    "html_body": "<p>Attached.</p>",
}


def issues_of(data: dict[str, object]) -> dict[str, str]:
    with pytest.raises(InvalidMessageError) as caught:
        EmailMessage.model_validate(data)
    return {issue.field: issue.message for issue in caught.value.errors}


def test_wire_shape_and_python_names_build_the_same_message() -> None:
    from_wire = EmailMessage.model_validate(BASE)
    from_python = EmailMessage(
        from_=Address(email="reports@example.com", name="Reports"),
        to="Ann <ann@example.com>",  # type: ignore[arg-type]
        subject="Nightly report",
        html_body="<p>Attached.</p>",
    )
    assert from_wire == from_python
    assert from_wire.to_wire() == BASE


def test_text_only_message_gets_an_escaped_html_body() -> None:
    message = EmailMessage.model_validate(
        {**{k: v for k, v in BASE.items() if k != "html_body"}, "text_body": "1 < 2\n<b>x</b>"}
    )
    assert (
        message.html_body
        == '<pre style="white-space:pre-wrap">1 &lt; 2\n&lt;b&gt;x&lt;/b&gt;</pre>'
    )
    assert message.to_wire()["text_body"] == "1 < 2\n<b>x</b>"


def test_a_message_without_any_body_names_html_body_and_the_fix() -> None:
    issues = issues_of({k: v for k, v in BASE.items() if k != "html_body"})
    assert "text_body" in issues["html_body"]


def test_every_problem_is_reported_at_once_with_its_field_and_limit() -> None:
    issues = issues_of(
        {
            **BASE,
            "to": {"email": "not-an-address"},
            "subject": "x" * (api_limits.MAX_SUBJECT_CHARS + 1),
            "cc": [{"email": f"cc{i}@example.com"} for i in range(101)],
            "custom_headers": {"Campaign": "spring"},
        }
    )
    assert "not a valid email address" in issues["to.email"]
    assert "999 characters; the limit is 998" in issues["subject"]
    assert "101 items; the limit is 100" in issues["cc"]
    assert "must start with X-" in issues["custom_headers.Campaign"]


def test_docs_limit_of_100_cc_is_accepted_even_though_the_spec_says_49() -> None:
    message = EmailMessage.model_validate(
        {**BASE, "cc": [f"cc{i}@example.com" for i in range(100)]}
    )
    assert message.cc is not None
    assert len(message.cc) == 100


def test_more_than_ten_attachments_are_refused() -> None:
    attachment = Attachment.from_bytes(b"x", "a.txt")
    issues = issues_of({**BASE, "attachments": [attachment] * 11})
    assert "the limit is 10" in issues["attachments"]


def test_attachment_from_path_guesses_the_mime_type(tmp_path: Path) -> None:
    report = tmp_path / "report.csv"
    report.write_text("a,b\n1,2\n")
    attachment = Attachment.from_path(report)
    assert attachment.filename == "report.csv"
    assert attachment.type == "text/csv"
    assert attachment.content is not None
    assert base64.b64decode(attachment.content) == b"a,b\n1,2\n"


def test_non_base64_content_is_refused_with_the_fix() -> None:
    issues = issues_of({**BASE, "attachments": [{"filename": "a.txt", "content": "not base64!"}]})
    assert "from_bytes" in issues["attachments.0.content"]


def test_uploaded_attachment_reference_is_accepted_and_checked() -> None:
    good = Attachment.uploaded("att_" + "a" * 24)
    assert good.model_dump(exclude_none=True) == {"attachment_id": "att_" + "a" * 24}
    issues = issues_of({**BASE, "attachments": [{"attachment_id": "att_NOPE"}]})
    assert "uploaded attachment id" in issues["attachments.0.attachment_id"]


def test_a_message_over_25_mb_is_refused_before_sending() -> None:
    big = Attachment.from_bytes(b"\0" * (20 * 1024 * 1024), "big.bin")
    issues = issues_of({**BASE, "attachments": [big]})
    assert "25 MB" in issues["message"]


def test_unknown_fields_are_refused() -> None:
    assert "is not a Sendmux message field" in issues_of({**BASE, "priority": "high"})["priority"]


def test_per_message_idempotency_key_stays_off_the_wire_unless_asked() -> None:
    message = EmailMessage.model_validate({**BASE, "idempotency_key": "job-1-0"})
    assert "idempotency_key" not in message.to_wire()
    assert message.to_wire(include_idempotency_key=True)["idempotency_key"] == "job-1-0"
    batch = json.loads(BatchRequest(messages=[message]).to_json())
    assert "idempotency_key" not in batch["messages"][0]


def test_batch_holds_one_to_one_hundred_messages() -> None:
    message = EmailMessage.model_validate(BASE)
    assert len(json.loads(BatchRequest(messages=[message] * 100).to_json())["messages"]) == 100
    with pytest.raises(ValueError, match="at most 100"):
        BatchRequest(messages=[message] * 101)


# --- properties -----------------------------------------------------------------------

line_break_text = st.builds(
    lambda head, brk, tail: head + brk + tail,
    st.text(max_size=20),
    st.sampled_from(["\r", "\n", "\r\n"]),
    st.text(max_size=20),
)


@given(subject=line_break_text)
def test_any_subject_with_cr_or_lf_is_refused(subject: str) -> None:
    assert "CR or LF" in issues_of({**BASE, "subject": subject})["subject"]


@given(name=line_break_text)
def test_any_display_name_with_cr_or_lf_is_refused(name: str) -> None:
    assert (
        "CR or LF" in issues_of({**BASE, "to": {"email": "a@example.com", "name": name}})["to.name"]
    )


@given(value=line_break_text)
def test_any_custom_header_value_with_cr_or_lf_is_refused(value: str) -> None:
    issues = issues_of({**BASE, "custom_headers": {"X-Tag": value}})
    assert "CR or LF" in issues["custom_headers.X-Tag"]


no_breaks = st.text(
    alphabet=st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)),
    min_size=1,
    max_size=60,
)
local_part = st.from_regex(r"\A[a-z0-9][a-z0-9._+-]{0,20}\Z")
domain = st.from_regex(r"\A[a-z0-9]{1,10}\.(com|org|io|example)\Z")
addresses = st.builds(lambda lp, d: f"{lp}@{d}", local_part, domain)


@settings(max_examples=200)
@given(
    to=addresses,
    name=st.none() | no_breaks.filter(lambda s: len(s) <= api_limits.MAX_NAME_CHARS),
    subject=no_breaks,
    body=st.text(min_size=1, max_size=200),
    header=st.none() | no_breaks,
)
def test_valid_messages_round_trip_through_the_wire_shape(
    to: str, name: str | None, subject: str, body: str, header: str | None
) -> None:
    data: dict[str, object] = {
        "from": {"email": "app@example.com"},
        "to": {"email": to, **({"name": name} if name is not None else {})},
        "subject": subject,
        "html_body": body,
    }
    if header is not None:
        data["custom_headers"] = {"X-Tag": header}
    message = EmailMessage.model_validate(data)
    wire = json.loads(BatchRequest(messages=[message]).to_json())["messages"][0]
    assert wire == data
    assert EmailMessage.model_validate(wire) == message


# --- the fast paths keep every rule (see the comments in models/message.py) ------------


def test_addresses_as_strings_are_parsed_in_every_address_field() -> None:
    message = EmailMessage.model_validate(
        {
            **BASE,
            "from": "Reports <reports@example.com>",
            "to": "ann@example.com",
            "reply_to": "Help <help@example.com>",
            "cc": ["Bo <bo@example.com>", {"email": "cy@example.com"}],
            "bcc": ["audit@example.com"],
        }
    )
    assert message.from_ == Address(email="reports@example.com", name="Reports")
    assert message.to == Address(email="ann@example.com")
    assert message.reply_to == Address(email="help@example.com", name="Help")
    assert message.cc == [
        Address(email="bo@example.com", name="Bo"),
        Address(email="cy@example.com"),
    ]
    assert message.bcc == [Address(email="audit@example.com")]
    # Python names work too, and the caller's data is never modified.
    data: dict[str, object] = {**BASE, "to": "Ann <ann@example.com>"}
    assert EmailMessage(**data).to == Address(email="ann@example.com", name="Ann")  # type: ignore[arg-type]
    assert data["to"] == "Ann <ann@example.com>"


def test_string_addresses_report_the_same_issues_as_dicts() -> None:
    from_text = issues_of({**BASE, "to": "Ann <not-an-address>", "cc": ["bad"], "subject": ""})
    from_dicts = issues_of(
        {**BASE, "to": {"email": "not-an-address"}, "cc": [{"email": "bad"}], "subject": ""}
    )
    assert from_text.keys() == from_dicts.keys() == {"to.email", "cc.0.email", "subject"}
    assert from_text["cc.0.email"] == from_dicts["cc.0.email"]
    assert "'bad' is not a valid email address" in from_text["cc.0.email"]
    assert "dictionary" in issues_of({**BASE, "to": 5})["to"]


def test_address_on_its_own_still_accepts_a_string() -> None:
    assert Address.model_validate("Ann <ann@example.com>") == Address(
        email="ann@example.com", name="Ann"
    )
    with pytest.raises(ValueError, match="pattern"):
        Address.model_validate("not-an-address")


def test_big_bodies_without_attachments_are_still_measured() -> None:
    # 7 million 4-byte characters: few enough characters to look small, 28 MB on the wire.
    issues = issues_of({**BASE, "html_body": "\U0001f600" * 7_000_000})
    assert "25 MB" in issues["message"]


def test_a_batch_validates_dicts_fully_and_trusts_messages() -> None:
    message = EmailMessage.model_validate(BASE)
    batch = BatchRequest.model_validate({"messages": [message, {**BASE, "to": "bo@example.com"}]})
    assert batch.messages[0] is message
    assert batch.messages[1].to == Address(email="bo@example.com")
    with pytest.raises(InvalidMessageError) as caught:
        BatchRequest.model_validate({"messages": [message, {**BASE, "subject": "a\nb"}]})
    assert [issue.field for issue in caught.value.errors] == ["subject"]
    derived = BatchRequest.model_validate(
        {"messages": [{k: v for k, v in {**BASE, "text_body": "hi"}.items() if k != "html_body"}]}
    )
    assert derived.messages[0].html_body is not None
    with pytest.raises(ValueError, match="at least 1"):
        BatchRequest(messages=[])


def test_batch_json_leaves_out_keys_only_when_some_message_has_one() -> None:
    plain = EmailMessage.model_validate(BASE)
    keyed = EmailMessage.model_validate({**BASE, "idempotency_key": "job-1-1"})
    body = json.loads(BatchRequest(messages=[plain, keyed]).to_json())
    assert body == {"messages": [BASE, BASE]}
    with_keys = json.loads(
        BatchRequest(messages=[plain, keyed]).to_json(include_idempotency_keys=True)
    )
    assert with_keys["messages"][1]["idempotency_key"] == "job-1-1"
    assert "idempotency_key" not in with_keys["messages"][0]
