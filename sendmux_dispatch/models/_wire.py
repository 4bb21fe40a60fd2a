"""Messages as plain dicts in the API's wire shape, validated on a fast path.

:class:`~sendmux_dispatch.models.EmailMessage` is the reference for what a
valid message is: it accepts ``"Name <email>"`` strings, derives ``html_body``
from ``text_body``, checks attachments and sizes, and explains every problem.
Building one costs a model instance per message and per address, which is
most of the time a large batch spends in our code.

:func:`wire_message` validates a dict *as dicts*: one pydantic-core call over
a TypedDict schema with the same field types as the model (same patterns,
same limits), returning a new dict ready for JSON. Anything that schema does
not cover (attachments, address strings, ``from_``, a missing html_body,
bodies big enough to approach the size limit) and anything it refuses is
handed to ``EmailMessage``, so the answer, and every error message, is the
model's. Tests hold the two to the same verdicts and the same JSON.

The batch body's wrapping is written once (:func:`join_batch_body`), and
:data:`BATCH_ENVELOPE_BYTES` is measured from the same literals. The byte
budget (:func:`message_size_bound`) is a *safe upper bound*: each message is
measured by serialising it (as the request will) except its attachments,
which are counted field by field from their base64 text, so a 5 MB attachment
is never copied just to be measured. ``EmailMessage.approx_size`` is not used
because it is an estimate, not a bound (it does not count cc/bcc lists or
JSON escaping of quotes and line breaks).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from typing import Annotated, Any

from pydantic import ConfigDict, Field, TypeAdapter
from pydantic import ValidationError as PydanticValidationError
from pydantic_core import to_json
from typing_extensions import NotRequired, Required, TypedDict

from sendmux_dispatch.errors import FieldIssue, InvalidMessageError
from sendmux_dispatch.models import api_limits
from sendmux_dispatch.models.message import (
    OBVIOUSLY_SMALL_BODIES,
    DeliveryGroupId,
    DisplayName,
    EmailAddress,
    EmailMessage,
    HeaderName,
    HeaderValue,
    IdempotencyKey,
    NonEmptyBody,
    Subject,
    text_to_html,
)

__all__ = [
    "BATCH_ENVELOPE_BYTES",
    "WireAddress",
    "WireMessage",
    "batch_body",
    "encode_message",
    "join_batch_body",
    "message_size_bound",
    "wire_message",
    "wire_message_with",
    "wire_messages",
]

_CONFIG = ConfigDict(extra="forbid", regex_engine="rust-regex")


class WireAddress(TypedDict):
    """``{"email": ..., "name": ...}``: an address as the API takes it."""

    __pydantic_config__ = _CONFIG  # type: ignore[misc]
    email: Required[EmailAddress]
    name: NotRequired[DisplayName]


WireAddresses = Annotated[list[WireAddress], Field(max_length=api_limits.DOCS_MAX_CC)]

# Functional syntax because "from" is a keyword. Every key is the wire name of
# an EmailMessage field; tests check that the two lists agree.
WireMessage = TypedDict(
    "WireMessage",
    {
        "from": Required[WireAddress],
        "to": Required[WireAddress],
        "subject": Required[Subject],
        "html_body": NotRequired[NonEmptyBody],
        "text_body": NotRequired[str],
        "reply_to": NotRequired[WireAddress],
        "return_path": NotRequired[EmailAddress],
        "cc": NotRequired[WireAddresses],
        "bcc": NotRequired[WireAddresses],
        "custom_headers": NotRequired[dict[HeaderName, HeaderValue]],
        # Typed loosely here: a message with attachments is always validated
        # by EmailMessage (Attachment checks one-of forms and base64 lengths).
        "attachments": NotRequired[list[dict[str, str]]],
        "delivery_group": NotRequired[DeliveryGroupId | list[DeliveryGroupId]],
        "idempotency_key": NotRequired[IdempotencyKey],
    },
)
WireMessage.__doc__ = "A message as the API takes it, as a dict (see :func:`wire_message`)."
WireMessage.__pydantic_config__ = _CONFIG  # type: ignore[attr-defined]

_FAST = TypeAdapter(WireMessage)
_FAST_VALIDATE = _FAST.validate_python
_FAST_VALIDATE_LIST = TypeAdapter(list[WireMessage]).validate_python


# The fields one template's messages differ in: the recipient and what is
# rendered for them (see wire_message_with).
class _Varying(TypedDict, total=False):
    __pydantic_config__ = _CONFIG  # type: ignore[misc]
    to: WireAddress
    subject: Subject
    html_body: NonEmptyBody
    text_body: str
    idempotency_key: IdempotencyKey


_VARYING_VALIDATE = TypeAdapter(_Varying).validate_python
_REQUIRED_FIELDS = frozenset(WireMessage.__required_keys__)


def wire_message(data: Mapping[str, Any] | EmailMessage) -> WireMessage:
    """``data`` validated as one message, as a new JSON-ready dict in the wire shape.

    Accepts everything :class:`~sendmux_dispatch.models.EmailMessage` does
    and gives the same result as ``EmailMessage.model_validate(data).to_wire()``
    (idempotency_key included when set), only faster for the common case.
    Raises :class:`~sendmux_dispatch.errors.InvalidMessageError`, naming every
    field at fault, exactly as the model does.
    """
    if isinstance(data, EmailMessage):
        return _from_model(data)
    if not isinstance(data, Mapping) or "attachments" in data:
        return _from_model(EmailMessage.model_validate(data))
    try:
        message = _FAST_VALIDATE(data)
    except PydanticValidationError:
        # Refused, or in a shape only the model reads (address strings,
        # from_): the model decides, and words any error.
        return _from_model(EmailMessage.model_validate(data))
    return _with_bodies_checked(message, data)


def wire_messages(items: Iterable[Mapping[str, Any] | EmailMessage]) -> list[WireMessage]:
    """Each item validated as by :func:`wire_message`: the messages of one batch.

    Plain wire-shaped dicts (the common case) are validated in one
    pydantic-core call for the whole list. Raises
    :class:`~sendmux_dispatch.errors.InvalidMessageError` naming every field
    at fault in every message, as ``messages.<index>.<field>``.
    """
    items = list(items)
    plain = [item for item in items if isinstance(item, Mapping) and "attachments" not in item]
    if len(plain) == len(items):
        try:
            return [
                _with_bodies_checked(message, item)
                for message, item in zip(_FAST_VALIDATE_LIST(plain), plain, strict=True)
            ]
        except (PydanticValidationError, InvalidMessageError):
            pass  # one at a time below: every message's every error, in the model's words
    validated: list[WireMessage] = []
    issues: list[FieldIssue] = []
    for index, item in enumerate(items):
        try:
            validated.append(wire_message(item))
        except InvalidMessageError as exc:
            issues.extend(
                FieldIssue(f"messages.{index}.{issue.field}", issue.code, issue.message)
                for issue in exc.errors
            )
    if issues:
        raise InvalidMessageError(issues)
    return validated


def _with_bodies_checked(message: WireMessage, data: Mapping[str, Any]) -> WireMessage:
    """The checks the field types cannot make: a body is required, html_body
    is derived from text_body, big messages get the model's size check.
    ``message`` is ``data`` after the fast path; the model reads ``data``."""
    html_body = message.get("html_body")
    text_body = message.get("text_body")
    if html_body is None:
        if not text_body:
            return _from_model(EmailMessage.model_validate(data))  # raises: no body
        html_body = message["html_body"] = text_to_html(text_body)
    if len(html_body) + len(text_body or "") > OBVIOUSLY_SMALL_BODIES:
        # Big enough that the size check matters: the model does it.
        return _from_model(EmailMessage.model_validate(data))
    return message


def wire_message_with(base: Mapping[str, Any], changes: Mapping[str, Any]) -> WireMessage:
    """``wire_message({**base, **changes})``, checking only ``changes``.

    For many messages made from one template: ``base`` holds the fields they
    share, already validated (a dict from :func:`wire_message` or
    ``EmailMessage.to_wire()``, without ``to`` and without attachments), and
    ``changes`` what differs per message: ``to``, ``subject``,
    ``html_body``, ``text_body``, ``idempotency_key``. No field of a valid
    message depends on another except the body (one of the two bodies is
    required, html_body is derived from text_body, the size is bounded), and
    those are checked here, so the verdict is the same as validating the
    whole message. Anything else in ``changes``, and anything refused, goes
    through :func:`wire_message`, so errors are the model's.

    The result is a new dict that shares ``base``'s nested values (``from``,
    ``custom_headers``, ...): treat it as read-only.
    """
    try:
        checked = _VARYING_VALIDATE(changes)
    except PydanticValidationError:
        # Refused, or a field that is not one of these (extra="forbid").
        return wire_message({**base, **changes})
    message: WireMessage = {**base, **checked}  # type: ignore[typeddict-item]
    if not _REQUIRED_FIELDS.issubset(message):
        return wire_message(message)  # raises: names the missing field
    # The changes passed as they are, so the model reads the merged message
    # as it would have read {**base, **changes}.
    return _with_bodies_checked(message, message)


def _from_model(message: EmailMessage) -> WireMessage:
    wire: WireMessage = message.model_dump(  # type: ignore[assignment]
        mode="json", by_alias=True, exclude_none=True
    )
    return wire


def batch_body(messages: Iterable[WireMessage], *, include_idempotency_keys: bool = False) -> bytes:
    """The JSON body of POST /emails/send/batch for validated wire messages.

    Per-message ``idempotency_key`` s are left out unless asked for: the
    spec's batch schema has no such field, the request's header key is what
    protects a batch.
    """
    # One pydantic-core call for the whole list (a call per message measured
    # slower on bench_serialize); its compact ``[a,b]`` minus the brackets is
    # exactly the comma-joined messages join_batch_body expects.
    listed = to_json([_in_body(message, include_idempotency_keys) for message in messages])
    return join_batch_body((listed[1:-1],))


# pydantic-core writes compact JSON, so these bytes around the comma-joined
# messages are the body byte for byte as to_json({"messages": [...]}) gives it.
_BODY_OPEN = b'{"messages":['
_BODY_CLOSE = b"]}"
#: A batch body's bytes besides its messages and the commas between them.
BATCH_ENVELOPE_BYTES = len(_BODY_OPEN) + len(_BODY_CLOSE)


def join_batch_body(encoded: Iterable[bytes]) -> bytes:
    """The batch request body around messages already encoded by :func:`encode_message`."""
    return _BODY_OPEN + b",".join(encoded) + _BODY_CLOSE


def encode_message(message: WireMessage, *, include_idempotency_key: bool = False) -> bytes:
    """One message exactly as :func:`batch_body` writes it into a request body."""
    return to_json(_in_body(message, include_idempotency_key))


def _in_body(message: WireMessage, include_idempotency_key: bool) -> Mapping[str, Any]:
    if include_idempotency_key or "idempotency_key" not in message:
        return message
    return {key: value for key, value in message.items() if key != "idempotency_key"}


_encode_json_string: Callable[[str], str] = json.encoder.encode_basestring


def _json_string_bytes(text: str) -> int:
    # json's C escaper escapes exactly what pydantic-core (serde_json) does:
    # '"', '\\' and control characters; non-ASCII stays as UTF-8.
    escaped = _encode_json_string(text)
    return len(escaped) if escaped.isascii() else len(escaped.encode("utf-8", "surrogatepass"))


def _attachment_bytes(attachment: Mapping[str, str]) -> int:
    size = 1  # {} less the comma the last field does not have
    for name, value in attachment.items():
        # "name":value, -- content is validated base64 (nothing to escape),
        # so its length is exact without copying megabytes to escape them.
        size += len(name) + 4
        size += len(value) + 2 if name == "content" else _json_string_bytes(value)
    return size


def message_size_bound(message: WireMessage) -> int:
    """An upper bound of the bytes ``message`` adds to a batch request body.

    Counts the per-message idempotency key too, so the bound holds whether or
    not the request includes it.
    """
    attachments = message.get("attachments")
    if not attachments:
        return len(to_json(message))
    rest = {key: value for key, value in message.items() if key != "attachments"}
    size = len(to_json(rest)) + len(',"attachments":[]') + len(attachments)
    return size + sum(_attachment_bytes(attachment) for attachment in attachments)
