"""Text Airflow rendered reaches the message as written, braces and markup included."""

from __future__ import annotations

from sendmux_airflow._common import address_list
from sendmux_airflow._rendered import literal_recipients, literal_template
from sendmux_dispatch.personalize import Personalizer
from sendmux_dispatch.recipients import Recipient


def test_rendered_text_with_jinja_syntax_is_sent_verbatim() -> None:
    template = {
        "from": "r@example.com",
        "subject": "Week {{ 7 }} {% if %}",
        "html_body": "<p>{{ x }} & <b>bold</b> {#</p>",
        "text_body": "plain, no braces",
        "custom_headers": {"X-Note": "{{ raw }}", "X-Plain": "ok"},
    }
    prepared, literal = literal_template(template)
    (recipient,) = literal_recipients(["Ann <ann@example.com>"], literal)
    assert isinstance(recipient, Recipient)
    assert recipient.name == "Ann"

    message = Personalizer(prepared).render(recipient)

    assert message.subject == template["subject"]
    assert message.html_body == template["html_body"]  # not autoescaped a second time
    assert message.text_body == "plain, no braces"
    assert message.custom_headers == template["custom_headers"]


def test_address_lists_read_as_airflow_email_operator_does() -> None:
    assert address_list("a@x.com, b@x.com;c@x.com ,") == ["a@x.com", "b@x.com", "c@x.com"]
    assert address_list(["Ann <a@x.com>", " "]) == ["Ann <a@x.com>"]
    assert address_list(None) == []
