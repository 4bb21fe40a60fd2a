"""wire_message, the fast path, must agree with EmailMessage, the reference, on every input."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sendmux_dispatch import Attachment, EmailMessage, InvalidMessageError
from sendmux_dispatch.models import (
    BatchRequest,
    WireMessage,
    api_limits,
    batch_body,
    encode_message,
    wire_message,
    wire_message_with,
    wire_messages,
)

MESSAGE: dict[str, Any] = {
    "from": {"email": "news@shop.example.com", "name": "Shop"},
    "to": {"email": "ann@example.org", "name": "Ann"},
    "subject": "Your picks",
    "html_body": "<p>Hello</p>",
    "text_body": "Hello",
    "custom_headers": {"X-Campaign": "spring"},
}


def reference(data: Any) -> dict[str, Any]:
    """What EmailMessage makes of ``data``, in the wire shape (or its error, raised)."""
    return EmailMessage.model_validate(data).model_dump(
        mode="json", by_alias=True, exclude_none=True
    )


def test_the_wire_shape_names_exactly_the_model_fields() -> None:
    model_fields = {info.alias or name for name, info in EmailMessage.model_fields.items()}
    assert set(WireMessage.__annotations__) == model_fields


def test_a_wire_dict_comes_back_as_a_new_validated_dict() -> None:
    message = wire_message(MESSAGE)
    assert message == MESSAGE
    assert message is not MESSAGE
    assert message["to"] is not MESSAGE["to"]  # the caller's dicts are never shared


def test_the_shapes_only_the_model_reads_give_the_models_answer() -> None:
    friendly = {
        "from_": "Shop <news@shop.example.com>",
        "to": "ann@example.org",
        "cc": ["Bo <bo@example.org>"],
        "subject": "Hi",
        "text_body": "Hello <you>",
    }
    message = wire_message(friendly)
    assert message == reference(friendly)
    assert message["from"] == {"email": "news@shop.example.com", "name": "Shop"}
    assert message["html_body"] == '<pre style="white-space:pre-wrap">Hello &lt;you&gt;</pre>'
    with_attachment = {**MESSAGE, "attachments": [Attachment.from_bytes(b"hi", "a.txt")]}
    assert wire_message(with_attachment) == reference(with_attachment)
    model = EmailMessage.model_validate({**MESSAGE, "idempotency_key": "k-1"})
    assert wire_message(model)["idempotency_key"] == "k-1"


@pytest.mark.parametrize(
    ("change", "field", "code"),
    [
        ({"to": {"email": "ann@"}}, "to.email", "invalid_email"),
        ({"to": {"email": "a@example.org", "name": "A\r\nBcc: x"}}, "to.name", "line_break"),
        ({"subject": ""}, "subject", "empty"),
        ({"custom_headers": {"Subject": "x"}}, "custom_headers.Subject", "invalid_header_name"),
        ({"html_body": None, "text_body": None}, "html_body", "missing"),
        ({"colour": "red"}, "colour", "unknown_field"),
    ],
)
def test_an_invalid_message_raises_the_models_error(
    change: dict[str, Any], field: str, code: str
) -> None:
    data = {**MESSAGE, **change}
    with pytest.raises(InvalidMessageError) as fast:
        wire_message(data)
    with pytest.raises(InvalidMessageError) as model:
        EmailMessage.model_validate(data)
    assert fast.value.errors == model.value.errors
    assert (field, code) in [(issue.field, issue.code) for issue in fast.value.errors]


def test_big_bodies_get_the_models_size_check() -> None:
    huge = "x" * (api_limits.MAX_REQUEST_BYTES + 1)
    with pytest.raises(InvalidMessageError) as caught:
        wire_message({**MESSAGE, "html_body": huge})
    assert [issue.code for issue in caught.value.errors] == ["too_large"]


def test_batch_body_leaves_per_message_keys_out_unless_asked() -> None:
    messages = [wire_message({**MESSAGE, "idempotency_key": f"k-{i}"}) for i in range(3)]
    plain = json.loads(batch_body(messages))
    assert all("idempotency_key" not in m for m in plain["messages"])
    keyed = json.loads(batch_body(messages, include_idempotency_keys=True))
    assert [m["idempotency_key"] for m in keyed["messages"]] == ["k-0", "k-1", "k-2"]
    models = [EmailMessage.model_validate(m) for m in messages]
    assert plain == json.loads(BatchRequest(messages=models).to_json())
    assert "idempotency_key" in messages[0]  # the caller's dicts are not changed
    # One message, as it stands in those bodies.
    assert json.loads(encode_message(messages[0])) == plain["messages"][0]
    assert (
        json.loads(encode_message(messages[0], include_idempotency_key=True))
        == (keyed["messages"][0])
    )


# Values for each field, valid and invalid, in every shape a caller might use.
_emails = st.sampled_from(["a@example.org", "B.c+d@mail.example.com"]) | st.sampled_from(
    ["x@", "no-at-sign", "a@localhost", " ", "é@x.io"]
)
_names = st.sampled_from(["Ann", "", 'Ä "q" \\']) | st.sampled_from(["A\nB", "x" * 101, None])
_address = st.one_of(
    st.builds(lambda e: {"email": e}, _emails),
    st.builds(lambda e, n: {"email": e, "name": n}, _emails, _names),
    st.builds(lambda e, n: f"{n} <{e}>", _emails, st.sampled_from(["Ann", "A B"])),
    # Strings that are not exactly one address (issue 8): both paths refuse them alike.
    st.sampled_from(
        [
            "mallory@evil.example <victim@example.com>",
            "Bob <bob@example.com>, Carl <carl@example.com>",
            "Ann\r\nBcc: e@example.com <ann@example.com>",
            "ann@bücher.de",
            "Ann <ann@bücher.de>",
        ]
    ),
    st.builds(lambda e: {"email": e}, st.sampled_from(["ann@bücher.de", "ännchen@example.com"])),
    _emails,
    st.sampled_from([{"name": "no email"}, {"email": "a@example.org", "extra": 1}, 7, None]),
)
_text = st.one_of(
    st.sampled_from(["", "Hi", "x" * 999, "line\nbreak", "<b>&</b>", None, 3]),
    st.text(max_size=30),
)
_optional: dict[str, st.SearchStrategy[Any]] = {
    "html_body": _text,
    "text_body": _text,
    "reply_to": _address,
    "return_path": _emails,
    "cc": st.lists(_address, max_size=3) | st.just([{"email": "a@example.org"}] * 101),
    "bcc": st.lists(_address, max_size=2),
    "custom_headers": st.dictionaries(
        st.sampled_from(["X-Campaign", "x-id", "Subject", "X-Bad Name"]),
        st.sampled_from(["v", "two\nlines", "y" * 501]),
        max_size=2,
    ),
    "delivery_group": st.sampled_from(["dgrp_main", "bad group", ["dgrp_a"], [7]]),
    "idempotency_key": st.sampled_from(["job-1_a", "bad key!", "k" * 256]),
    "attachments": st.just([{"filename": "a.txt", "content": "aGk="}]),
    "colour": st.just("red"),
}


_valid: dict[str, Any] = {
    **MESSAGE,
    "reply_to": {"email": "help@shop.example.com"},
    "return_path": "bounce@shop.example.com",
    "cc": [{"email": "bo@example.org", "name": "Bo"}],
    "bcc": [{"email": "audit@example.org"}],
    "delivery_group": "dgrp_main",
    "idempotency_key": "job-1_a",
}


@st.composite
def messages(draw: st.DrawFn) -> dict[str, Any]:
    """A valid message with some fields left out and up to two drawn from anything."""
    message = {
        key: value
        for key, value in _valid.items()
        if key in ("from", "to", "subject") or draw(st.booleans())
    }
    fields = ["from", "from_", "to", "subject", *_optional]
    for key in draw(st.lists(st.sampled_from(fields), max_size=2, unique=True)):
        message[key] = draw(_text if key == "subject" else _optional.get(key, _address))
    return message


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages())
def test_fast_path_and_model_agree_on_every_message(data: dict[str, Any]) -> None:
    try:
        expected = reference(data)
    except InvalidMessageError as model_error:
        expected_issues = model_error.errors
    else:
        expected_issues = None
    if expected_issues is not None:
        with pytest.raises(InvalidMessageError) as fast_error:
            wire_message(data)
        assert fast_error.value.errors == expected_issues
        return
    message = wire_message(data)
    assert message == expected
    assert json.loads(batch_body([message], include_idempotency_keys=True)) == {
        "messages": [expected]
    }


_varying: dict[str, st.SearchStrategy[Any]] = {
    "to": _address,
    "subject": _text,
    "html_body": _text,
    "text_body": _text,
    "idempotency_key": _optional["idempotency_key"],
}


@st.composite
def template_and_changes(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, Any]]:
    """A validated base without ``to`` (bodies maybe left out), and per-message changes."""
    base = {
        key: value
        for key, value in _valid.items()
        if key in ("from", "subject") or (key != "to" and draw(st.booleans()))
    }
    if "html_body" not in base and "text_body" not in base:
        base["text_body"] = "for the check below; maybe dropped again"
    base = wire_message({**base, "to": {"email": "placeholder@example.com"}})
    del base["to"]
    for body in ("html_body", "text_body"):
        if draw(st.booleans()):
            base.pop(body, None)
    changes = {"to": draw(_address)}
    for key in draw(st.lists(st.sampled_from([*_varying, "cc", "colour"]), max_size=3)):
        changes[key] = draw(_varying[key] if key in _varying else _optional[key])
    if draw(st.booleans()):
        changes.pop("to")
    return base, changes


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(template_and_changes())
def test_checking_only_the_changes_agrees_with_checking_everything(
    case: tuple[dict[str, Any], dict[str, Any]],
) -> None:
    base, changes = case
    whole = {**base, **changes}
    try:
        expected = wire_message(whole)
    except InvalidMessageError as whole_error:
        expected_issues = whole_error.errors
    else:
        assert wire_message_with(base, changes) == expected
        return
    with pytest.raises(InvalidMessageError) as caught:
        wire_message_with(base, changes)
    assert caught.value.errors == expected_issues


def test_a_message_from_a_base_is_new_and_leaves_the_base_alone() -> None:
    base = wire_message(MESSAGE)
    del base["to"]
    before = json.dumps(base)
    message = wire_message_with(base, {"to": {"email": "bo@example.org"}, "subject": "Hi"})
    assert message is not base
    assert (message["to"], message["subject"], message["from"]) == (
        {"email": "bo@example.org"},
        "Hi",
        base["from"],
    )
    assert json.dumps(base) == before


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(messages(), min_size=1, max_size=4))
def test_a_list_checked_at_once_agrees_with_each_message_checked_alone(
    items: list[dict[str, Any]],
) -> None:
    expected: list[WireMessage] = []
    expected_issues = []
    for index, item in enumerate(items):
        try:
            expected.append(wire_message(item))
        except InvalidMessageError as error:
            expected_issues += [
                (f"messages.{index}.{issue.field}", issue.code, issue.message)
                for issue in error.errors
            ]
    if not expected_issues:
        assert wire_messages(items) == expected
        return
    with pytest.raises(InvalidMessageError) as caught:
        wire_messages(items)
    assert [(i.field, i.code, i.message) for i in caught.value.errors] == expected_issues


def test_every_bad_message_of_a_list_is_named_by_its_index() -> None:
    items = [MESSAGE, {**MESSAGE, "subject": ""}, MESSAGE, {**MESSAGE, "to": {"email": "x@"}}]
    with pytest.raises(InvalidMessageError) as caught:
        wire_messages(items)
    assert [(issue.field, issue.code) for issue in caught.value.errors] == [
        ("messages.1.subject", "empty"),
        ("messages.3.to.email", "invalid_email"),
    ]
