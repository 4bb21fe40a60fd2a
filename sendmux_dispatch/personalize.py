"""Personalisation: one template, rendered for each recipient, validated.

A template is a message in the API's wire shape without ``to`` (a mapping,
or a pydantic model whose ``to`` is ignored). Its ``subject``, ``html_body``
and ``text_body`` are Jinja2 templates, and so are the sender's display name
(``from.name``) and the values of ``custom_headers`` when they contain Jinja2
syntax (plain text, not escaped, checked per recipient like any header). All
are rendered in Jinja2's *sandboxed* environment because the text may come from people who must not
be able to reach Python objects through it. ``html_body`` is autoescaped (a
recipient called ``<script>`` arrives as ``&lt;script&gt;``); ``subject`` and
``text_body`` are plain text and are not escaped. Undefined variables are
errors (``StrictUndefined``), never a silent empty string in a million emails.

The template context is the recipient's variables plus ``email``, ``name``
(``""`` when the recipient has none, so nobody is greeted as "None") and
``recipient`` (the :class:`~sendmux_dispatch.recipients.Recipient`).

Cost model, because this runs once per recipient:

* the template is checked and each field compiled once, in ``__init__``; a
  syntax error, or an invalid fixed field (a bad ``from``), raises
  :class:`~sendmux_dispatch.errors.InvalidMessageError` there, before any
  recipient is read;
* a field without Jinja syntax is not rendered at all;
* the fixed fields (``from``, ``cc``, attachments, ...) are validated once, in
  the wire shape: each message is a shallow copy of one prepared dict, and
  shares its nested values;
* per message only what varies (``to`` and the rendered fields) is
  validated (:func:`~sendmux_dispatch.models.wire_message_with`, one
  pydantic-core call, no model instances), and attachments, already
  validated (the template's here, a recipient's when its ``Attachment`` was
  built), are added after that check instead of being scanned again for
  every recipient;
* one context dict per recipient is shared by the three templates.

A problem with one recipient (an undefined variable, an address the model
refuses, a name with a line break) is returned as a
:class:`~sendmux_dispatch.recipients.RecipientFailure` by
:meth:`Personalizer.personalize`, or raised as ``InvalidMessageError`` by
:meth:`Personalizer.render`; it never concerns the other recipients.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from jinja2 import (
    StrictUndefined,
    Template,
    TemplateError,
    TemplateSyntaxError,
    UndefinedError,
)
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from pydantic import BaseModel

from sendmux_dispatch.errors import FieldIssue, InvalidMessageError
from sendmux_dispatch.models import (
    EmailMessage,
    WireMessage,
    api_limits,
    text_to_html,
    wire_message_with,
)
from sendmux_dispatch.recipients import Recipient, RecipientFailure

__all__ = ["TEMPLATE_FIELDS", "Personalizer", "failure_from_error", "has_template_syntax"]

#: The message fields rendered as Jinja2 templates.
TEMPLATE_FIELDS: tuple[str, ...] = ("subject", "html_body", "text_body")

# A stand-in for templated fields while the fixed fields are validated up
# front; the real values are checked per recipient.
_PLACEHOLDER = "placeholder"
_PLACEHOLDER_TO = {"email": "recipient@example.com"}
_UNDEFINED_NAME = re.compile(r"^'(.+)' is undefined$")


def has_template_syntax(text: str) -> bool:
    """Whether ``text`` contains a Jinja2 expression, statement or comment."""
    return "{{" in text or "{%" in text or "{#" in text


def _environment(*, autoescape: bool) -> ImmutableSandboxedEnvironment:
    # Immutable: a template cannot even modify the lists and dicts it is
    # given, so one recipient's rendering cannot leak into the next one's.
    return ImmutableSandboxedEnvironment(
        undefined=StrictUndefined,
        autoescape=autoescape,
        keep_trailing_newline=True,
    )


class Personalizer:
    """Renders one message template for each recipient.

    >>> p = Personalizer({"from": "news@example.com", "subject": "Hi {{ name }}",
    ...                   "text_body": "Your code: {{ code }}"})
    >>> p.render(Recipient("ann@example.com", "Ann", {"code": "X1"})).subject
    'Hi Ann'
    """

    def __init__(self, template: Mapping[str, Any] | BaseModel) -> None:
        data = _template_dict(template)
        self._html_env = _environment(autoescape=True)
        self._text_env = _environment(autoescape=False)
        self._compiled = _compile(
            (field, self._html_env if field == "html_body" else self._text_env, source)
            for field in TEMPLATE_FIELDS
            if isinstance(source := data.get(field), str) and has_template_syntax(source)
        )
        self._base = self._prepare_base(data)
        self._header_fields = self._compile_header_fields()
        # Both environments have the same globals (range, dict, namespace, ...);
        # they go into each context because contexts are built "shared".
        self._globals = dict(self._text_env.globals)

    def _prepare_base(self, data: dict[str, Any]) -> dict[str, Any]:
        """Validate the fixed fields once; return the dict each message is copied from."""
        probe = dict(data)
        for field, _ in self._compiled:
            probe[field] = _PLACEHOLDER
        probe["to"] = _PLACEHOLDER_TO
        try:
            prototype = EmailMessage.model_validate(probe).to_wire()
        except InvalidMessageError as exc:
            raise InvalidMessageError(
                exc.errors, message="the message template is not a valid message"
            ) from None
        # Absent fields stay absent: html_body derived from text_body is
        # derived again from each recipient's rendered text.
        base = {key: value for key, value in prototype.items() if key in data and key != "to"}
        self._attachments: list[dict[str, Any]] = base.pop("attachments", [])
        return base

    def _compile_header_fields(self) -> list[tuple[str, Template]]:
        """``from.name`` and custom header values with Jinja2 syntax, compiled (plain text).

        Read from the validated base, so that ``"{{ sender }} <news@example.com>"``
        and ``{"email": ..., "name": "{{ sender }}"}`` mean the same. The
        template text itself has already passed the field's rules (one line,
        the length limit); each rendering is checked again per recipient.
        """
        sources: list[tuple[str, str]] = []
        sender = self._base.get("from")
        if isinstance(sender, dict) and has_template_syntax(sender.get("name") or ""):
            sources.append(("from.name", sender["name"]))
        for name, value in (self._base.get("custom_headers") or {}).items():
            if has_template_syntax(value):
                sources.append((f"custom_headers.{name}", value))
        return _compile((field, self._text_env, source) for field, source in sources)

    @property
    def template_fields(self) -> tuple[str, ...]:
        """The fields that contain Jinja2 syntax and are rendered per recipient.

        ``subject``, ``html_body``, ``text_body``, then ``from.name`` and
        ``custom_headers.<name>`` when they hold a template.
        """
        return tuple(field for field, _ in self._compiled) + tuple(
            field for field, _ in self._header_fields
        )

    def context(self, recipient: Recipient) -> dict[str, Any]:
        """The variables a template sees for ``recipient``."""
        context = dict(self._globals)
        context.update(recipient.variables)
        context["email"] = recipient.email
        context["name"] = recipient.name or ""
        context["recipient"] = recipient
        return context

    def render(self, recipient: Recipient, *, idempotency_key: str | None = None) -> EmailMessage:
        """The validated message for ``recipient``, as a model.

        Raises :class:`~sendmux_dispatch.errors.InvalidMessageError` naming the
        field, e.g. ``text_body: undefined variable 'first_name'`` or
        ``to.email: 'x@' is not a valid email address ...``.
        """
        return EmailMessage.model_validate(
            self.render_wire(recipient, idempotency_key=idempotency_key)
        )

    def render_wire(
        self, recipient: Recipient, *, idempotency_key: str | None = None
    ) -> WireMessage:
        """Like :meth:`render`, as a dict in the wire shape (what batching uses: faster).

        The dict is new, but its nested values that come from the template
        (``from``, ``custom_headers``, ``cc``, ...) are shared by every
        message: do not change them in place.
        """
        changes: dict[str, Any] = {
            "to": {"email": recipient.email, "name": recipient.name}
            if recipient.name is not None
            else {"email": recipient.email}
        }
        if idempotency_key is not None:
            changes["idempotency_key"] = idempotency_key
        if self._compiled or self._header_fields:
            context = self.context(recipient)
            for field, template in self._compiled:
                changes[field] = _render(field, template, context)
            if self._header_fields:
                self._render_header_fields(context, changes)
        message = wire_message_with(self._base, changes)
        if self._attachments or recipient.attachments:
            message["attachments"] = self._attachments_for(recipient)
        return message

    def _render_header_fields(self, context: dict[str, Any], changes: dict[str, Any]) -> None:
        """Render ``from.name`` and header values into ``changes`` (new dicts, the base kept).

        The merged message then takes the full check (wire_message_with passes
        these fields on to wire_message), so a rendered CR or LF, or a name
        over the limit, is this recipient's InvalidMessageError, never a header.
        """
        headers: dict[str, str] | None = None
        for field, template in self._header_fields:
            text = _render(field, template, context)
            if field == "from.name":
                sender = {"email": self._base["from"]["email"]}
                if text.strip():  # an empty name is no name, not 'From: "" <...>'
                    sender["name"] = text
                changes["from"] = sender
            else:
                if headers is None:
                    headers = dict(self._base["custom_headers"])
                headers[field.removeprefix("custom_headers.")] = text
        if headers is not None:
            changes["custom_headers"] = headers

    def _attachments_for(self, recipient: Recipient) -> list[dict[str, str]]:
        attachments = self._attachments + [
            attachment.model_dump(exclude_none=True) for attachment in recipient.attachments
        ]
        if len(attachments) > api_limits.MAX_ATTACHMENTS:
            raise InvalidMessageError(
                [
                    FieldIssue(
                        "attachments",
                        "too_many",
                        f"has {len(attachments)} items (the template's and the recipient's); "
                        f"the limit is {api_limits.MAX_ATTACHMENTS}",
                    )
                ]
            )
        return attachments

    def personalize(
        self, recipient: Recipient, *, idempotency_key: str | None = None
    ) -> WireMessage | RecipientFailure:
        """Like :meth:`render_wire`, but a problem is returned as a failure, not raised."""
        try:
            return self.render_wire(recipient, idempotency_key=idempotency_key)
        except InvalidMessageError as exc:
            return failure_from_error(recipient, exc)


def _compile(
    sources: Iterable[tuple[str, ImmutableSandboxedEnvironment, str]],
) -> list[tuple[str, Template]]:
    """Compile each ``(field, environment, source)``; every syntax error is reported at once."""
    compiled: list[tuple[str, Template]] = []
    issues: list[FieldIssue] = []
    for field, env, source in sources:
        try:
            compiled.append((field, env.from_string(source)))
        except TemplateSyntaxError as exc:
            issues.append(
                FieldIssue(
                    field,
                    "template_syntax",
                    f"template syntax error on line {exc.lineno}: {exc.message}",
                )
            )
    if issues:
        raise InvalidMessageError(issues, message="the message template does not compile")
    return compiled


def _render(field: str, template: Template, context: dict[str, Any]) -> str:
    environment = template.environment
    try:
        # What Template.render does, minus three costs paid per recipient:
        # copying the context for every field (the context dict is shared:
        # it already holds the globals), turning the globals ChainMap into a
        # set (only needed by {% import %}, impossible without a loader), and
        # rewriting the traceback of an error (only its message is reported).
        run = environment.context_class(environment, context, template.name, template.blocks)
        return environment.concat(template.root_render_func(run))
    except UndefinedError as exc:
        match = _UNDEFINED_NAME.match(exc.message or "")
        text = f"undefined variable '{match.group(1)}'" if match else f"undefined: {exc.message}"
        raise InvalidMessageError([FieldIssue(field, "undefined_variable", text)]) from None
    except SecurityError as exc:
        raise InvalidMessageError(
            [FieldIssue(field, "template_error", f"unsafe operation refused: {exc}")]
        ) from None
    except TemplateError as exc:
        raise InvalidMessageError([FieldIssue(field, "template_error", str(exc))]) from None
    except Exception as exc:
        # A template runs arbitrary (sandboxed) expressions: 1/0, int("x"),
        # a filter given the wrong type. Whatever it raises concerns this
        # recipient only, so it is reported, never allowed to stop the job.
        raise InvalidMessageError(
            [FieldIssue(field, "template_error", f"{type(exc).__name__}: {exc}")]
        ) from None


def failure_from_error(recipient: Recipient, error: InvalidMessageError) -> RecipientFailure:
    """The failure record for a recipient whose message could not be built."""
    issues = error.errors
    code = issues[0].code if issues else "invalid_message"
    reason = "; ".join(str(issue) for issue in issues) if issues else error.message
    return RecipientFailure(recipient.position, recipient.email, code, reason)


def _template_dict(template: Mapping[str, Any] | BaseModel) -> dict[str, Any]:
    if isinstance(template, BaseModel):
        # A model (an EmailMessage built with a placeholder recipient, say):
        # its recipient is replaced per message, so it is left out here.
        data = template.model_dump(by_alias=True, exclude_none=True, exclude={"to"})
        text = data.get("text_body")
        if isinstance(text, str) and data.get("html_body") == text_to_html(text):
            # The model derived html_body from the text template; derive it
            # again from each rendered text instead of rendering it.
            del data["html_body"]
        return data
    if not isinstance(template, Mapping):
        raise TypeError(
            f"a message template is a mapping in the wire shape, not {type(template).__name__}"
        )
    # A null is an absent field, as in the model and in JSON templates
    # ("html_body": null): kept, it would stop html_body being derived from
    # each recipient's text and the placeholder's would be sent instead.
    data = {key: value for key, value in template.items() if value is not None}
    if "from_" in data and "from" not in data:
        data["from"] = data.pop("from_")
    if "to" in data:
        raise InvalidMessageError(
            [
                FieldIssue(
                    "to",
                    "not_allowed",
                    "must not be in a template: each recipient becomes the message's 'to'",
                )
            ],
            message="the message template is not a valid message",
        )
    return data
