"""An address string is exactly one address: never a guess, never the wrong mailbox.

The three strings at the top were delivered to the wrong mailbox (or to one of
two) by the old ``parseaddr``-based parser; the sandbox tests at the end send
them and ask the sandbox's admin API who got mail.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from sendmux_dispatch import dispatch
from sendmux_dispatch.client import SendmuxClient
from sendmux_dispatch.errors import InvalidMessageError
from sendmux_dispatch.models import Address, EmailMessage, parse_address, wire_message
from sendmux_dispatch.models.message import AddressError

MISDELIVERED = {
    "mallory@evil.example <victim@example.com>": "two_addresses",
    "Bob <bob@example.com>, Carl <carl@example.com>": "address_list",
    "Ann\r\nBcc: e@example.com <ann@example.com>": "line_break",
}
BASE = {"from": "news@example.com", "subject": "Hi", "text_body": "Hello"}


def _issue(to: Any) -> tuple[str, str, str]:
    with pytest.raises(InvalidMessageError) as caught:
        EmailMessage.model_validate({**BASE, "to": to})
    (issue,) = caught.value.errors
    return issue.field, issue.code, issue.message


@pytest.mark.parametrize(("text", "code"), MISDELIVERED.items())
def test_the_misdelivered_strings_are_refused_with_their_reason(text: str, code: str) -> None:
    field, got_code, message = _issue(text)
    with pytest.raises(AddressError) as caught:
        parse_address(text)
    assert caught.value.problem == code
    assert (field, got_code) == ("to", caught.value.code)
    assert repr(text)[:40] in message
    # The fast path hands strings to the model: same verdict, same words.
    with pytest.raises(InvalidMessageError) as fast:
        wire_message({**BASE, "to": text})
    assert [(e.field, e.code, e.message) for e in fast.value.errors] == [(field, got_code, message)]


@pytest.mark.parametrize(
    ("text", "code", "words"),
    [
        ("friends: a@example.com, b@example.com;", "address_group", "group"),
        ("Team: a@example.com;", "address_group", "group"),
        ("Ann <ann@example.com> trailing", "trailing_text", "'trailing'"),
        ("ann@example.com (Ann)", "trailing_text", "Name <name@example.com>"),
        ("Ann ann@example.com", "trailing_text", "Name <name@example.com>"),
        ("Ann <ann@example.com>>", "trailing_text", "after the address"),
        ("a@b@example.com", "two_at_signs", "2 '@' signs"),
        ("Ann <a@b@example.com>", "two_at_signs", "2 '@' signs"),
        ("<a@example.com> <b@example.com>", "two_addresses", "double quotes"),
        ("Ann Lee <ann@example.com", "invalid_address", "closing '>'"),
        ('"Ann <ann@example.com>', "invalid_address", "'\"'"),
        ("ann@example.com\n", "line_break", "CR or LF"),
        ("Ann <ann@example.com>\r", "line_break", "CR or LF"),
        ("ännchen@example.com", "international_address", "before the '@'"),
        ("ann@☃.example", "international_address", "IDNA"),
        ("a@b.com, ", "address_list", "exactly one"),
    ],
)
def test_not_one_address_is_refused_naming_the_problem(text: str, code: str, words: str) -> None:
    with pytest.raises(AddressError) as caught:
        parse_address(text)
    assert caught.value.problem == code
    assert caught.value.code == ("line_break" if code == "line_break" else "invalid_email")
    assert words in str(caught.value)
    assert _issue(text) == ("to", caught.value.code, str(caught.value))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ann@example.com", {"email": "ann@example.com"}),
        ("  ann@example.com\t", {"email": "ann@example.com"}),
        ("Ann Lee <ann@example.com>", {"email": "ann@example.com", "name": "Ann Lee"}),
        ("Ann<ann@example.com>", {"email": "ann@example.com", "name": "Ann"}),
        ("<ann@example.com>", {"email": "ann@example.com"}),
        ('"Lee, Ann" <ann@example.com>', {"email": "ann@example.com", "name": "Lee, Ann"}),
        ("Ä Ö <ann@example.com>", {"email": "ann@example.com", "name": "Ä Ö"}),
        ("A. B. Lee <ann@example.com>", {"email": "ann@example.com", "name": "A. B. Lee"}),
        (
            '"mallory@evil.example" <victim@example.com>',
            {"email": "victim@example.com", "name": "mallory@evil.example"},
        ),
        ("ann@bücher.de", {"email": "ann@xn--bcher-kva.de"}),
        ("Ann <ann@Bücher.de>", {"email": "ann@xn--bcher-kva.de", "name": "Ann"}),
    ],
)
def test_one_mailbox_is_read_as_a_person_reads_it(text: str, expected: dict[str, str]) -> None:
    assert parse_address(text) == expected
    assert Address.model_validate(text) == Address.model_validate(expected)


def test_international_domains_are_sent_in_idna_form_from_dicts_too() -> None:
    message = EmailMessage.model_validate({**BASE, "to": {"email": "ann@bücher.de", "name": "A"}})
    assert message.to == Address(email="ann@xn--bcher-kva.de", name="A")
    assert wire_message({**BASE, "to": {"email": "ann@bücher.de"}})["to"] == {
        "email": "ann@xn--bcher-kva.de"
    }
    field, code, message_text = _issue({"email": "ännchen@example.com"})
    assert (field, code) == ("to.email", "invalid_email")
    assert "non-ASCII characters may only be in the domain" in message_text


def test_a_bad_addr_spec_in_brackets_is_reported_like_the_same_dict() -> None:
    assert _issue("Ann <not-an-address>") == _issue({"email": "not-an-address", "name": "Ann"})


# --- property: an accepted string is sent to the address a reader picks ---------------

_local = st.from_regex(r"\A[a-z0-9][a-z0-9._+-]{0,12}\Z")
_domain = st.from_regex(r"\A[a-z0-9]{1,8}\.(com|org|example)\Z")
_addr_specs = st.builds(lambda lp, d: f"{lp}@{d}", _local, _domain)
# Names a person writes, plus every character that means something in a header.
_names = st.text(
    alphabet=st.sampled_from(list("Ann Lee.,;:<>@\"'()\\\r\n\tÄ=?")), min_size=0, max_size=20
)
_junk = st.sampled_from(
    [
        "",
        " ",
        ",",
        ", ",
        ";",
        ":",
        ">",
        "<",
        "\r\n",
        "\n",
        " trailing",
        " (c)",
        "@",
        ", x@example.org",
    ]
)
# Junk that ends in a word character would join the address in front of it
# (" trailing" + "0@0.com" is the valid "trailing0@0.com"), so it only trails.
_leading_junk = _junk.filter(lambda junk: not junk[-1:].isalnum())


@st.composite
def adversarial(draw: st.DrawFn) -> tuple[str, str | None, str]:
    """A string, the name and the addr-spec a reader would pick from it."""
    addr = draw(_addr_specs)
    name = draw(_names)
    shape = draw(st.sampled_from(["bare", "angle", "quoted", "decoy", "list"]))
    if shape == "bare":
        text = addr
    elif shape == "angle":
        text = f"{name} <{addr}>"
    elif shape == "quoted":
        escaped = name.replace("\\", "\\\\").replace('"', '\\"')
        text = f'"{escaped}" <{addr}>'
    elif shape == "decoy":
        text = f"{draw(_addr_specs)} <{addr}>"
    else:
        text = f"{name} <{addr}>, {draw(_addr_specs)}"
    return draw(_leading_junk) + text + draw(_junk), name, addr


@settings(max_examples=400)
@given(adversarial())
@example(("mallory@evil.example <victim@example.com>", None, "victim@example.com"))
@example(("Bob <bob@example.com>, Carl <carl@example.com>", "Bob", "bob@example.com"))
@example(("Ann\r\nBcc: e@example.com <ann@example.com>", "Ann", "ann@example.com"))
def test_an_accepted_string_goes_to_the_address_a_reader_picks(
    case: tuple[str, str | None, str],
) -> None:
    text, _name, addr = case
    try:
        parsed = parse_address(text)
    except AddressError:
        return  # refused: nothing is sent
    # Accepted: the addr-spec between the brackets (or the whole string), never another.
    assert parsed["email"] == addr
    assert "\r" not in text
    assert "\n" not in text
    assert text.count("@") == 1 or text.rstrip().endswith(f"<{addr}>")
    if "<" in text:
        assert text.rstrip().endswith(f"<{addr}>")


@settings(max_examples=200)
@given(adversarial())
def test_the_model_agrees_with_the_parser(case: tuple[str, str | None, str]) -> None:
    text = case[0]
    try:
        expected: Any = parse_address(text)
    except AddressError:
        expected = None
    try:
        message = EmailMessage.model_validate({**BASE, "to": text})
    except InvalidMessageError:
        # Refused by the parser, or its addr-spec or name broke a field rule.
        return
    assert expected is not None
    assert message.to.email == expected["email"]


# --- through the sandbox: who gets mail ------------------------------------------------


@pytest.mark.parametrize("text", MISDELIVERED)
def test_a_send_to_a_misleading_string_sends_nothing(
    client: SendmuxClient, sandbox: Any, text: str
) -> None:
    with pytest.raises(InvalidMessageError):
        client.send({**BASE, "to": text})
    assert sandbox.messages() == []
    assert sandbox.stats()["accepted_messages"] == 0


def test_dispatch_refuses_each_misleading_recipient_and_sends_the_rest(
    client: SendmuxClient, sandbox: Any
) -> None:
    recipients = [*MISDELIVERED, "Dee <dee@example.com>"]
    template = {"from": "news@example.com", "subject": "Hi", "text_body": "Hello {{ name }}"}
    report = dispatch(client, template, recipients, job_key="one-address")
    assert report.queued == 1
    assert report.invalid == 3
    delivered = sorted(message["to"] for message in sandbox.messages())
    assert delivered == ["dee@example.com"]


@settings(max_examples=500)
@given(st.text(alphabet=st.sampled_from(list('ab.@<>," ;:()\\\r\n\t')), max_size=30))
def test_any_accepted_string_is_its_own_addr_spec_or_ends_with_it_in_brackets(text: str) -> None:
    try:
        parsed = parse_address(text)
    except AddressError:
        return
    email = parsed["email"]
    stripped = text.strip()
    inner = stripped[stripped.rfind("<") + 1 : -1].strip() if "<" in stripped else None
    assert email == stripped or (stripped.endswith(">") and inner == email)
    assert "\r" not in text
    assert "\n" not in text


def test_an_international_domain_is_delivered_to_its_idna_form(
    client: SendmuxClient, sandbox: Any
) -> None:
    client.send({**BASE, "to": "Ann <ann@bücher.de>"})
    client.send_batch([{**BASE, "to": {"email": "bo@bücher.de"}}])
    delivered = sorted(message["to"] for message in sandbox.messages())
    assert delivered == ["ann@xn--bcher-kva.de", "bo@xn--bcher-kva.de"]


@pytest.mark.parametrize(
    "name", ["Ann", "Lee, Ann", 'Ann "Q" Lee', "a\\b", "x@y.com", "A. B.", "Ä Ö"]
)
def test_an_address_written_out_reads_back_as_itself(name: str) -> None:
    address = Address(email="ann@example.com", name=name)
    assert Address.model_validate(str(address)) == address
