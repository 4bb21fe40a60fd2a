"""Request models: what a caller may ask Sendmux to send.

Every documented rule is checked here, before any request exists, by
pydantic-core (the patterns run in Rust, which keeps validation fast enough
for millions of messages). An ``EmailMessage`` that fails raises
:class:`~sendmux_dispatch.errors.InvalidMessageError` listing every field at
fault, in words that name the limit.
"""

from __future__ import annotations

import base64
import html
import mimetypes
from collections.abc import Mapping
from email.utils import parseaddr
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    StringConstraints,
    model_validator,
)
from pydantic import ValidationError as PydanticValidationError

from sendmux_dispatch.errors import FieldIssue, InvalidMessageError
from sendmux_dispatch.models import api_limits as limits
from sendmux_dispatch.models._issues import issues_from_pydantic

__all__ = ["Address", "Attachment", "BatchRequest", "EmailMessage"]

EmailAddress = Annotated[
    str, StringConstraints(max_length=limits.MAX_ADDRESS_CHARS, pattern=limits.EMAIL_PATTERN)
]
DisplayName = Annotated[
    str, StringConstraints(max_length=limits.MAX_NAME_CHARS, pattern=limits.NO_LINE_BREAKS_PATTERN)
]
Subject = Annotated[
    str,
    StringConstraints(
        min_length=1, max_length=limits.MAX_SUBJECT_CHARS, pattern=limits.NO_LINE_BREAKS_PATTERN
    ),
]
HeaderName = Annotated[str, StringConstraints(pattern=limits.CUSTOM_HEADER_NAME_PATTERN)]
HeaderValue = Annotated[
    str,
    StringConstraints(
        max_length=limits.MAX_HEADER_VALUE_CHARS, pattern=limits.NO_LINE_BREAKS_PATTERN
    ),
]
NonEmptyBody = Annotated[str, StringConstraints(min_length=1)]
IdempotencyKey = Annotated[str, StringConstraints(pattern=limits.IDEMPOTENCY_KEY_PATTERN)]
DeliveryGroupId = Annotated[str, StringConstraints(pattern=limits.DELIVERY_GROUP_PATTERN)]


class _RequestModel(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        populate_by_name=True,
        # Spelled out because the patterns rely on Rust's `$` (end of text).
        regex_engine="rust-regex",
        # Instances handed back in (a list of EmailMessage into a batch) are
        # trusted rather than validated again: they were valid when built.
        revalidate_instances="never",
    )


class Address(_RequestModel):
    """An email address with an optional display name.

    A plain string is accepted wherever an Address is expected:
    ``"ann@example.com"`` or ``"Ann Lee <ann@example.com>"``.
    """

    email: EmailAddress
    name: DisplayName | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, data: Any) -> Any:
        if isinstance(data, str):
            return parse_address(data)
        return data

    def __str__(self) -> str:
        return f"{self.name} <{self.email}>" if self.name else self.email


def parse_address(text: str) -> dict[str, str]:
    """Split ``"Name <email>"`` into the wire shape; a bare address stays as it is."""
    if "<" not in text:
        return {"email": text.strip()}
    name, email = parseaddr(text)
    if not email:
        # Let the email pattern report the original text as invalid.
        return {"email": text}
    return {"email": email, "name": name} if name else {"email": email}


class Attachment(_RequestModel):
    """A file: inline base64 ``content`` with a ``filename``, or an uploaded ``attachment_id``.

    Build one with :meth:`from_path`, :meth:`from_bytes` or :meth:`uploaded`.
    """

    filename: (
        Annotated[
            str,
            StringConstraints(
                min_length=1,
                max_length=limits.MAX_FILENAME_CHARS,
                pattern=limits.NO_LINE_BREAKS_PATTERN,
            ),
        ]
        | None
    ) = None
    content: (
        Annotated[str, StringConstraints(min_length=1, pattern=limits.BASE64_PATTERN)] | None
    ) = None
    type: (
        Annotated[str, StringConstraints(max_length=255, pattern=limits.NO_LINE_BREAKS_PATTERN)]
        | None
    ) = None
    encoding: Literal["base64"] | None = None
    attachment_id: (
        Annotated[str, StringConstraints(pattern=limits.ATTACHMENT_ID_PATTERN)] | None
    ) = None

    @model_validator(mode="after")
    def _one_form(self) -> Attachment:
        if self.attachment_id is not None:
            if self.content is not None or self.filename is not None:
                raise ValueError(
                    "give either attachment_id (an uploaded file) or filename + content, not both"
                )
            return self
        if self.content is None or self.filename is None:
            raise ValueError("an inline attachment needs both filename and content (base64)")
        if len(self.content) % 4:
            raise ValueError(
                "content is not valid base64 (its length is not a multiple of 4); "
                "build it with Attachment.from_bytes() or Attachment.from_path()"
            )
        return self

    @classmethod
    def from_bytes(cls, data: bytes, filename: str, type: str | None = None) -> Attachment:
        """Inline attachment from raw bytes; the MIME type is guessed from the filename."""
        guessed = type or mimetypes.guess_type(filename)[0] or "application/octet-stream"
        return cls(filename=filename, content=base64.b64encode(data).decode("ascii"), type=guessed)

    @classmethod
    def from_path(
        cls, path: str | Path, filename: str | None = None, type: str | None = None
    ) -> Attachment:
        """Inline attachment read from a file."""
        file = Path(path)
        return cls.from_bytes(file.read_bytes(), filename or file.name, type)

    @classmethod
    def uploaded(cls, attachment_id: str) -> Attachment:
        """Reference to a file uploaded beforehand (``att_…``)."""
        return cls(attachment_id=attachment_id)

    @property
    def approx_size(self) -> int:
        """Bytes this attachment adds to a request body (base64 text, roughly)."""
        return len(self.content or "") + len(self.filename or "") + 64


class EmailMessage(_RequestModel):
    """One email, in the API's wire shape (``from`` is ``from_`` in Python).

    ``html_body`` is required by the API's spec; when only ``text_body`` is
    given, a minimal HTML body is derived from it (escaped, whitespace kept).
    """

    from_: Address = Field(alias="from")
    to: Address
    subject: Subject
    html_body: NonEmptyBody | None = None
    text_body: str | None = None
    reply_to: Address | None = None
    return_path: EmailAddress | None = None
    # The docs allow 100 each; the spec says 49 each and 50 recipients in
    # all. We enforce the docs and let a stricter server answer per message.
    cc: Annotated[list[Address], Field(max_length=limits.DOCS_MAX_CC)] | None = None
    bcc: Annotated[list[Address], Field(max_length=limits.DOCS_MAX_BCC)] | None = None
    custom_headers: dict[HeaderName, HeaderValue] | None = None
    attachments: Annotated[list[Attachment], Field(max_length=limits.MAX_ATTACHMENTS)] | None = None
    # The docs say a send cannot choose a delivery group; the spec has the
    # field. Modelled and passed through, absent unless the caller sets it.
    delivery_group: DeliveryGroupId | list[DeliveryGroupId] | None = None
    #: Per-message key inside a batch. The spec's batch schema has no such
    #: field (additionalProperties: false), so it is only put on the wire when
    #: the caller turns per-message keys on; the request's Idempotency-Key
    #: header is what protects a batch.
    idempotency_key: IdempotencyKey | None = None

    @model_validator(mode="wrap")
    @classmethod
    def _validate(cls, data: Any, handler: ModelWrapValidatorHandler[EmailMessage]) -> EmailMessage:
        if isinstance(data, cls):
            return data
        try:
            message = handler(data)
        except PydanticValidationError as exc:
            raise _invalid_message(exc, data) from None
        html_body = message.html_body
        if (
            html_body is not None
            and message.attachments is None
            and len(html_body) + len(message.text_body or "") <= OBVIOUSLY_SMALL_BODIES
        ):
            # Nothing to derive and far below the size limit whatever the
            # encoding: skip the size estimate, which costs as much again as
            # this whole check.
            return message
        issues = message._derive_and_check()
        if issues:
            raise InvalidMessageError(issues)
        return message

    def _derive_and_check(self) -> list[FieldIssue]:
        issues: list[FieldIssue] = []
        if self.html_body is None:
            if self.text_body:
                self.html_body = text_to_html(self.text_body)
            else:
                issues.append(_MISSING_BODY)
        size = self.approx_size
        if size > limits.MAX_REQUEST_BYTES:
            issues.append(
                FieldIssue(
                    "message",
                    "too_large",
                    f"is about {size / 1_048_576:.1f} MB; a request may be at most "
                    f"{limits.MAX_REQUEST_BYTES // 1_048_576} MB: shrink the bodies or "
                    "upload attachments and refer to them by attachment_id",
                )
            )
        return issues

    @property
    def approx_size(self) -> int:
        """Bytes this message adds to a request body (a close upper estimate)."""
        size = 512 + len(self.html_body or "") + len(self.text_body or "") + len(self.subject)
        if self.attachments:
            size += sum(attachment.approx_size for attachment in self.attachments)
        if size * 4 > limits.MAX_REQUEST_BYTES:
            # Only big messages pay for the exact UTF-8 length of their bodies.
            size += len((self.html_body or "").encode()) - len(self.html_body or "")
            size += len((self.text_body or "").encode()) - len(self.text_body or "")
        return size

    def to_wire(self, *, include_idempotency_key: bool = False) -> dict[str, Any]:
        """The JSON-ready dict the API expects."""
        exclude = None if include_idempotency_key else {"idempotency_key"}
        return self.model_dump(mode="json", by_alias=True, exclude_none=True, exclude=exclude)


_MISSING_BODY = FieldIssue(
    "html_body", "missing", "is required: give html_body, or text_body to derive it from"
)
#: Bodies (in characters) that cannot make a message too large: a character
#: is at most 4 UTF-8 bytes, and the subject (at most 998 characters) and the
#: 512 bytes allowed for the rest come on top, as in EmailMessage.approx_size.
OBVIOUSLY_SMALL_BODIES = (limits.MAX_REQUEST_BYTES // 4) - 512 - limits.MAX_SUBJECT_CHARS


def _invalid_message(exc: PydanticValidationError, data: Any) -> InvalidMessageError:
    """InvalidMessageError listing every issue pydantic found, plus a missing body."""
    issues = issues_from_pydantic(exc)
    if isinstance(data, Mapping) and not data.get("html_body") and not data.get("text_body"):
        issues.append(_MISSING_BODY)
    # InvalidMessageError is not a ValueError, so pydantic lets it through
    # unchanged to the caller.
    return InvalidMessageError(issues)


def text_to_html(text: str) -> str:
    """A minimal HTML body for a text-only message: escaped, line breaks kept."""
    return f'<pre style="white-space:pre-wrap">{html.escape(text)}</pre>'


class BatchRequest(_RequestModel):
    """The body of POST /emails/send/batch: 1 to 100 messages."""

    messages: Annotated[
        list[EmailMessage], Field(min_length=1, max_length=limits.MAX_BATCH_MESSAGES)
    ]

    def to_json(self, *, include_idempotency_keys: bool = False) -> bytes:
        """Serialise for the wire (done by pydantic-core, the fast path)."""
        exclude: Any = None
        if not include_idempotency_keys and any(
            message.idempotency_key is not None for message in self.messages
        ):
            # Only when there is a key to leave out: an `exclude` makes
            # pydantic-core check every field of every message against it,
            # which costs about a fifth of the serialisation, and looking for
            # a key costs a small fraction of that.
            exclude = {"messages": {"__all__": {"idempotency_key"}}}
        # The serializer's bytes as they are: model_dump_json would decode
        # them to str and we would encode them again.
        return self.__pydantic_serializer__.to_json(
            self, by_alias=True, exclude_none=True, exclude=exclude
        )
