"""``from.name`` and custom header values are templates too; attachments' errors are plain."""

from __future__ import annotations

import json
from typing import Any

import pytest

from sendmux_dispatch import Recipient, RecipientFailure, dispatch
from sendmux_dispatch.client import SendmuxClient
from sendmux_dispatch.errors import InvalidMessageError
from sendmux_dispatch.personalize import Personalizer
from sendmux_dispatch.recipients import recipient_from_mapping

TEMPLATE: dict[str, Any] = {
    "from": "{{ rep }} at Shop <news@example.com>",
    "subject": "Hi {{ name }}",
    "text_body": "Hello",
    "custom_headers": {"X-Customer": "{{ code }}", "X-Campaign": "spring"},
}


def test_from_name_and_header_values_are_rendered_per_recipient() -> None:
    personalizer = Personalizer(TEMPLATE)
    assert personalizer.template_fields == ("subject", "from.name", "custom_headers.X-Customer")
    ann = personalizer.render_wire(Recipient("ann@example.com", "Ann", {"rep": "Bo", "code": "7"}))
    cy = personalizer.render_wire(Recipient("cy@example.com", "Cy", {"rep": "Di", "code": "8"}))
    assert ann["from"] == {"email": "news@example.com", "name": "Bo at Shop"}
    assert ann["custom_headers"] == {"X-Customer": "7", "X-Campaign": "spring"}
    assert cy["from"] == {"email": "news@example.com", "name": "Di at Shop"}
    assert cy["custom_headers"] == {"X-Customer": "8", "X-Campaign": "spring"}
    # The model path agrees, and html is not escaped into a header.
    model = personalizer.render(Recipient("e@example.com", None, {"rep": "<Ed & Co>", "code": "9"}))
    assert model.from_.name == "<Ed & Co> at Shop"


def test_the_dict_form_of_from_is_rendered_the_same() -> None:
    personalizer = Personalizer(
        {**TEMPLATE, "from": {"email": "news@example.com", "name": "{{ rep }} at Shop"}}
    )
    wire = personalizer.render_wire(Recipient("ann@example.com", "Ann", {"rep": "Bo", "code": "7"}))
    assert wire["from"] == {"email": "news@example.com", "name": "Bo at Shop"}


def test_an_empty_rendered_name_sends_no_name() -> None:
    personalizer = Personalizer({**TEMPLATE, "from": "{{ rep }} <news@example.com>"})
    wire = personalizer.render_wire(Recipient("ann@example.com", "Ann", {"rep": "", "code": "7"}))
    assert wire["from"] == {"email": "news@example.com"}


@pytest.mark.parametrize(
    ("variables", "field"),
    [
        ({"rep": "Bo\r\nBcc: x@evil.example", "code": "7"}, "from.name"),
        ({"rep": "Bo", "code": "7\nX-Evil: 1"}, "custom_headers.X-Customer"),
        ({"rep": "B" * 120, "code": "7"}, "from.name"),
        ({"code": "7"}, "from.name"),
    ],
)
def test_a_bad_rendering_is_that_recipients_failure(variables: dict[str, str], field: str) -> None:
    personalizer = Personalizer(TEMPLATE)
    failure = personalizer.personalize(Recipient("ann@example.com", "Ann", variables))
    assert isinstance(failure, RecipientFailure)
    assert failure.reason.startswith(f"{field}: ")


def test_a_syntax_error_in_a_header_template_is_raised_at_construction() -> None:
    with pytest.raises(InvalidMessageError) as caught:
        Personalizer({**TEMPLATE, "custom_headers": {"X-Customer": "{{ code "}})
    assert [issue.field for issue in caught.value.errors] == ["custom_headers.X-Customer"]
    assert caught.value.errors[0].code == "template_syntax"


def test_dispatch_sends_each_recipient_their_own_sender_name(
    client: SendmuxClient, sandbox: Any, recorder: Any
) -> None:
    recipients = [
        {"email": "ann@example.com", "name": "Ann", "rep": "Bo", "code": "1"},
        {"email": "cy@example.com", "name": "Cy", "rep": "Di\r\nBcc: x@evil.example", "code": "2"},
        {"email": "ed@example.com", "name": "Ed", "rep": "Fay", "code": "3"},
    ]
    report = dispatch(client, TEMPLATE, recipients, job_key="from-name")
    assert (report.queued, report.invalid) == (2, 1)
    assert report.failures[0].email == "cy@example.com"
    assert sorted(m["to"] for m in sandbox.messages()) == ["ann@example.com", "ed@example.com"]
    sent = [m for post in recorder.posts for m in json.loads(post.content)["messages"]]
    assert {m["to"]["email"]: (m["from"]["name"], m["custom_headers"]) for m in sent} == {
        "ann@example.com": ("Bo at Shop", {"X-Customer": "1", "X-Campaign": "spring"}),
        "ed@example.com": ("Fay at Shop", {"X-Customer": "3", "X-Campaign": "spring"}),
    }


@pytest.mark.parametrize(
    "content", ["not base64!", "YWJj=", "abc\n"], ids=["bad chars", "bad length", "newline"]
)
def test_a_bad_recipient_attachment_says_not_valid_base64_and_names_it(content: str) -> None:
    row = {"email": "ann@example.com", "attachments": [{"filename": "r.pdf", "content": content}]}
    failure = recipient_from_mapping(row, 3)
    assert isinstance(failure, RecipientFailure)
    assert "attachment 'r.pdf': content is not valid base64" in failure.reason
    assert "pattern" not in failure.reason
    assert "Value error" not in failure.reason
