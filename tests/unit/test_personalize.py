"""Personalisation: sandboxed Jinja2, autoescape in html only, failures per recipient."""

from __future__ import annotations

from typing import Any

import pytest

from sendmux_dispatch import (
    Attachment,
    EmailMessage,
    InvalidMessageError,
    Recipient,
    RecipientFailure,
)
from sendmux_dispatch.personalize import Personalizer

TEMPLATE: dict[str, Any] = {
    "from": {"email": "news@example.com", "name": "Shop"},
    "subject": "Hello {{ name }}",
    "html_body": "<p>Dear {{ name }}, your plan is {{ plan }}.</p>",
    "text_body": "Dear {{ name }}, your plan is {{ plan }}.",
    "custom_headers": {"X-Campaign": "spring"},
}


def ann(**variables: Any) -> Recipient:
    return Recipient("ann@example.com", "Ann", {"plan": "pro", **variables}, position=7)


def test_renders_every_templated_field_into_a_validated_message() -> None:
    message = Personalizer(TEMPLATE).render(ann())
    assert isinstance(message, EmailMessage)
    assert message.to.email == "ann@example.com"
    assert message.to.name == "Ann"
    assert message.from_.email == "news@example.com"
    assert message.subject == "Hello Ann"
    assert message.html_body == "<p>Dear Ann, your plan is pro.</p>"
    assert message.text_body == "Dear Ann, your plan is pro."
    assert message.custom_headers == {"X-Campaign": "spring"}


def test_context_has_email_name_and_recipient() -> None:
    template = {**TEMPLATE, "text_body": "{{ email }}|{{ recipient.position }}|{{ name }}"}
    message = Personalizer(template).render(ann())
    assert message.text_body == "ann@example.com|7|Ann"


def test_a_recipient_without_a_name_is_not_greeted_as_none() -> None:
    message = Personalizer(TEMPLATE).render(Recipient("bob@example.com", variables={"plan": "x"}))
    assert message.subject == "Hello "
    assert message.to.name is None
    template = {**TEMPLATE, "subject": "Hello {{ name or 'there' }}"}
    assert Personalizer(template).render(
        Recipient("b@example.com", variables={"plan": "x"})
    ).subject == ("Hello there")


def test_html_body_is_autoescaped_but_subject_and_text_are_not() -> None:
    evil = Recipient("eve@example.com", "<script>alert(1)</script>", {"plan": "<b>x</b>"})
    message = Personalizer(TEMPLATE).render(evil)
    assert message.html_body == (
        "<p>Dear &lt;script&gt;alert(1)&lt;/script&gt;, your plan is &lt;b&gt;x&lt;/b&gt;.</p>"
    )
    assert message.subject == "Hello <script>alert(1)</script>"
    assert message.text_body == "Dear <script>alert(1)</script>, your plan is <b>x</b>."
    assert type(message.html_body) is str  # not markupsafe.Markup


def test_fields_without_template_syntax_are_not_rendered() -> None:
    template = {**TEMPLATE, "subject": "Plain {subject}", "html_body": "<p>{ not jinja }</p>"}
    personalizer = Personalizer(template)
    assert personalizer.template_fields == ("text_body",)
    message = personalizer.render(ann())
    assert message.subject == "Plain {subject}"
    assert message.html_body == "<p>{ not jinja }</p>"


def test_undefined_variable_is_a_per_recipient_failure() -> None:
    template = {**TEMPLATE, "text_body": "Hi {{ first_name }}"}
    personalizer = Personalizer(template)
    failure = personalizer.personalize(ann())
    assert failure == RecipientFailure(
        7, "ann@example.com", "undefined_variable", "text_body: undefined variable 'first_name'"
    )
    with pytest.raises(InvalidMessageError) as caught:
        personalizer.render(ann())
    assert str(caught.value.errors[0]) == "text_body: undefined variable 'first_name'"
    # Another recipient with the variable is fine.
    assert personalizer.render(ann(first_name="Ann")).text_body == "Hi Ann"


def test_undefined_attribute_and_runtime_errors_are_failures() -> None:
    personalizer = Personalizer({**TEMPLATE, "subject": "{{ plan.missing.deeper }}"})
    failure = personalizer.personalize(ann())
    assert isinstance(failure, RecipientFailure)
    assert failure.code == "undefined_variable"
    assert failure.reason.startswith("subject: ")

    personalizer = Personalizer({**TEMPLATE, "subject": "{{ 1 // n }}"})
    failure = personalizer.personalize(ann(n=0))
    assert isinstance(failure, RecipientFailure)
    assert failure.code == "template_error"
    assert "ZeroDivisionError" in failure.reason


def test_the_sandbox_refuses_to_reach_python_internals_or_mutate_data() -> None:
    personalizer = Personalizer({**TEMPLATE, "subject": "{{ recipient.__class__.__mro__ }}"})
    failure = personalizer.personalize(ann())
    assert isinstance(failure, RecipientFailure)
    assert "unsafe" in failure.reason

    personalizer = Personalizer({**TEMPLATE, "subject": "{{ items.append(1) }}x"})
    items: list[int] = []
    failure = personalizer.personalize(ann(items=items))
    assert isinstance(failure, RecipientFailure)
    assert failure.code == "template_error"
    assert items == []


def test_rendered_values_are_validated_per_recipient() -> None:
    personalizer = Personalizer(TEMPLATE)
    bad_address = personalizer.personalize(Recipient("not-an-address", variables={"plan": "x"}))
    assert isinstance(bad_address, RecipientFailure)
    assert bad_address.code == "invalid_email"
    assert bad_address.reason.startswith("to.email:")

    crlf = personalizer.personalize(Recipient("a@example.com", "Ann\r\nBcc: x", {"plan": "x"}))
    assert isinstance(crlf, RecipientFailure)
    assert crlf.code == "line_break"
    assert crlf.reason.startswith("to.name:")

    subject = Personalizer({**TEMPLATE, "subject": "Hi {{ plan }}"}).personalize(ann(plan="a\nb"))
    assert isinstance(subject, RecipientFailure)
    assert subject.reason.startswith("subject:")


def test_template_syntax_errors_are_raised_up_front_naming_each_field() -> None:
    template = {**TEMPLATE, "subject": "Hi {{ name ", "html_body": "{% if %}"}
    with pytest.raises(InvalidMessageError) as caught:
        Personalizer(template)
    fields = {issue.field: issue for issue in caught.value.errors}
    assert set(fields) == {"subject", "html_body"}
    assert fields["subject"].code == "template_syntax"
    assert "line 1" in fields["subject"].message


def test_invalid_fixed_fields_are_raised_up_front() -> None:
    with pytest.raises(InvalidMessageError) as caught:
        Personalizer({**TEMPLATE, "from": "not an address", "custom_headers": {"Bad": "x"}})
    fields = {issue.field for issue in caught.value.errors}
    assert "from.email" in fields
    assert any(field.startswith("custom_headers") for field in fields)

    with pytest.raises(InvalidMessageError) as caught:
        Personalizer({"from": "a@example.com", "subject": "Hi"})
    assert [issue.field for issue in caught.value.errors] == ["html_body"]


def test_a_template_must_not_name_a_recipient() -> None:
    with pytest.raises(InvalidMessageError) as caught:
        Personalizer({**TEMPLATE, "to": "x@example.com"})
    assert caught.value.errors[0].field == "to"
    with pytest.raises(TypeError):
        Personalizer("not a mapping")  # type: ignore[arg-type]


def test_text_only_template_derives_html_from_each_rendered_text() -> None:
    template = {"from": "news@example.com", "subject": "Hi", "text_body": "Hi {{ name }} & co"}
    message = Personalizer(template).render(Recipient("a@example.com", "<Ann>"))
    assert message.text_body == "Hi <Ann> & co"
    assert message.html_body == '<pre style="white-space:pre-wrap">Hi &lt;Ann&gt; &amp; co</pre>'


def test_a_null_field_in_a_template_is_an_absent_one() -> None:
    # As a JSON template file has it: "html_body": null.
    template = {
        "from": "news@example.com",
        "subject": "Hi",
        "text_body": "Hi {{ name }}",
        "html_body": None,
        "reply_to": None,
    }
    message = Personalizer(template).render_wire(Recipient("a@example.com", "Ann"))
    assert message["html_body"] == '<pre style="white-space:pre-wrap">Hi Ann</pre>'
    assert "reply_to" not in message


def test_an_email_message_can_serve_as_template() -> None:
    model = EmailMessage.model_validate(
        {
            "from": "news@example.com",
            "to": "placeholder@example.com",
            "subject": "Hi {{ name }}",
            "text_body": "Dear {{ name }}",
        }
    )
    personalizer = Personalizer(model)
    message = personalizer.render(Recipient("ann@example.com", "Ann"))
    assert message.to.email == "ann@example.com"
    assert message.subject == "Hi Ann"
    assert message.html_body == '<pre style="white-space:pre-wrap">Dear Ann</pre>'


def test_recipient_attachments_are_added_to_the_templates() -> None:
    shared = Attachment.from_bytes(b"terms", "terms.txt")
    own = Attachment.from_bytes(b"invoice", "invoice.txt")
    personalizer = Personalizer({**TEMPLATE, "attachments": [shared]})
    mine = personalizer.render(
        Recipient("a@example.com", variables={"plan": "x"}, attachments=(own,))
    )
    theirs = personalizer.render(Recipient("b@example.com", variables={"plan": "x"}))
    assert [a.filename for a in mine.attachments or []] == ["terms.txt", "invoice.txt"]
    assert [a.filename for a in theirs.attachments or []] == ["terms.txt"]


def test_more_than_ten_attachments_in_all_is_that_recipients_failure() -> None:
    shared = [Attachment.from_bytes(b"t", f"t{i}.txt") for i in range(8)]
    own = tuple(Attachment.from_bytes(b"o", f"o{i}.txt") for i in range(3))
    personalizer = Personalizer({**TEMPLATE, "attachments": shared})
    failure = personalizer.personalize(
        Recipient("a@example.com", variables={"plan": "x"}, attachments=own, position=4)
    )
    assert isinstance(failure, RecipientFailure)
    assert (failure.position, failure.code) == (4, "too_many")
    assert "has 11 items" in failure.reason
    assert "the limit is 10" in failure.reason
    fine = personalizer.render_wire(Recipient("b@example.com", variables={"plan": "x"}))
    assert [a["filename"] for a in fine["attachments"]] == [f"t{i}.txt" for i in range(8)]


def test_idempotency_key_is_set_when_given() -> None:
    message = Personalizer(TEMPLATE).render(ann(), idempotency_key="job-m1-abc")
    assert message.idempotency_key == "job-m1-abc"
    assert Personalizer(TEMPLATE).render(ann()).idempotency_key is None


def test_messages_do_not_share_mutable_state() -> None:
    personalizer = Personalizer({**TEMPLATE, "cc": ["c@example.com"]})
    bo = Recipient("b@example.com", variables={"plan": "x"})
    first, second = personalizer.render_wire(ann()), personalizer.render_wire(bo)
    assert first is not second
    assert first["to"] is not second["to"]
    first["subject"] = "changed"
    first["to"]["email"] = "changed@example.com"
    assert personalizer.render_wire(bo) == second
    assert second["to"] == {"email": "b@example.com"}
    # Models are built afresh: their lists are never shared.
    assert personalizer.render(ann()).cc is not personalizer.render(bo).cc


def test_globals_macros_and_blocks_work_with_the_shared_context() -> None:
    template = {
        **TEMPLATE,
        "text_body": (
            "{% macro greet(who) %}Hi {{ who }}{% endmacro %}{{ greet(name) }}"
            "{% for i in range(3) %}{{ i }}{% endfor %}{% set ns = namespace(n=1) %}{{ ns.n }}"
            "{% block tail %}!{% endblock %}"
        ),
    }
    personalizer = Personalizer(template)
    assert personalizer.render(ann()).text_body == "Hi Ann0121!"
    # Nothing a template sets leaks into the next recipient's rendering.
    assert personalizer.render(Recipient("b@example.com", "Bo", {"plan": "x"})).text_body == (
        "Hi Bo0121!"
    )
