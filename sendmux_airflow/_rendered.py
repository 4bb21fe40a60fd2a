"""Sending text Airflow already rendered, without the core's Jinja2 pass reading it again.

The core personalises ``subject``, the bodies and header values per
recipient with Jinja2. An operator's fields were rendered by Airflow already,
so a report whose text happens to hold ``{{`` or ``{%`` (a code sample, an
XCom) would be read as a template a second time and fail for every
recipient. Such a field is sent as a variable instead: the template becomes
``{{ sendmux_rendered['subject'] }}`` and each recipient carries the text,
which Jinja2 outputs as it is (``|safe`` in ``html_body``, where it
autoescapes). The core has no "render nothing" switch; this is the small
workaround until it has one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator
from typing import Any

from sendmux_dispatch.personalize import has_template_syntax
from sendmux_dispatch.recipients import Recipient, RecipientFailure, iter_recipients

__all__ = ["literal_recipients", "literal_template"]

_VARIABLE = "sendmux_rendered"


def literal_template(template: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """``template`` with every field holding Jinja2 syntax replaced by a variable lookup."""
    literal: dict[str, str] = {}
    out = dict(template)
    for name in ("subject", "html_body", "text_body"):
        value = out.get(name)
        if isinstance(value, str) and has_template_syntax(value):
            literal[name] = value
            safe = " | safe" if name == "html_body" else ""
            out[name] = f"{{{{ {_VARIABLE}[{name!r}]{safe} }}}}"
    headers = dict(out.get("custom_headers") or {})
    for header, value in headers.items():
        if isinstance(value, str) and has_template_syntax(value):
            key = f"header:{header}"
            literal[key] = value
            headers[header] = f"{{{{ {_VARIABLE}[{key!r}] }}}}"
    if headers:
        out["custom_headers"] = headers
    return out, literal


def literal_recipients(
    addresses: Iterable[str], literal: dict[str, str]
) -> Iterator[Recipient | RecipientFailure]:
    """The recipients of ``addresses``, each carrying the fields ``literal_template`` moved."""
    variables = {_VARIABLE: literal}
    for item in iter_recipients(addresses):
        if literal and isinstance(item, Recipient):
            yield dataclasses.replace(item, variables=variables)
        else:
            yield item
