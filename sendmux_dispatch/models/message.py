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
import re
from collections.abc import Mapping, Sequence
from email import _header_value_parser as _parser
from email.errors import HeaderParseError
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from email_validator import EmailNotValidError, validate_email
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    StringConstraints,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)
from pydantic import ValidationError as PydanticValidationError
from pydantic_core import PydanticCustomError

from sendmux_dispatch.errors import FieldIssue, InvalidMessageError
from sendmux_dispatch.models import api_limits
from sendmux_dispatch.models._issues import issues_from_pydantic

__all__ = [
    "Address",
    "AddressError",
    "AddressInput",
    "Attachment",
    "BatchRequest",
    "EmailMessage",
    "parse_address",
]

EmailAddress = Annotated[
    str,
    StringConstraints(max_length=api_limits.MAX_ADDRESS_CHARS, pattern=api_limits.EMAIL_PATTERN),
]
DisplayName = Annotated[
    str,
    StringConstraints(
        max_length=api_limits.MAX_NAME_CHARS, pattern=api_limits.NO_LINE_BREAKS_PATTERN
    ),
]
Subject = Annotated[
    str,
    StringConstraints(
        min_length=1,
        max_length=api_limits.MAX_SUBJECT_CHARS,
        pattern=api_limits.NO_LINE_BREAKS_PATTERN,
    ),
]
HeaderName = Annotated[str, StringConstraints(pattern=api_limits.CUSTOM_HEADER_NAME_PATTERN)]
HeaderValue = Annotated[
    str,
    StringConstraints(
        max_length=api_limits.MAX_HEADER_VALUE_CHARS, pattern=api_limits.NO_LINE_BREAKS_PATTERN
    ),
]
NonEmptyBody = Annotated[str, StringConstraints(min_length=1)]
IdempotencyKey = Annotated[str, StringConstraints(pattern=api_limits.IDEMPOTENCY_KEY_PATTERN)]
DeliveryGroupId = Annotated[str, StringConstraints(pattern=api_limits.DELIVERY_GROUP_PATTERN)]


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
            try:
                return parse_address(data)
            except AddressError as exc:
                raise _custom_error(exc.code, exc.message) from None
        if isinstance(data, dict):
            email = data.get("email")
            if isinstance(email, str) and not email.isascii():
                # A dict's address is an addr-spec: only its domain is
                # converted (to IDNA); anything else is the pattern's to refuse.
                try:
                    return {**data, "email": _ascii_domain(email)}
                except AddressError:
                    return data
        return data

    def __str__(self) -> str:
        if not self.name:
            return self.email
        name = self.name
        if _NAME_SPECIALS.search(name):
            # Quoted, so that the string reads back as this one address
            # ("Lee, Ann" is a name, Lee, Ann is a list).
            name = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
        return f"{name} <{self.email}>"


def parse_address(text: str) -> dict[str, str]:
    """One address from a string, in the wire shape: ``{"email": ..., "name": ...}``.

    Accepts exactly one mailbox: a bare addr-spec (``ann@example.com``) or a
    display name and one angle address (``Ann Lee <ann@example.com>``,
    ``"Lee, Ann" <ann@example.com>``), with nothing left over. Refuses, with
    a :class:`ValueError` that names the problem, anything a reader could take
    for another address or for more than one: lists, groups, text after the
    address, a second ``<...>``, an unquoted ``@`` in the name, two ``@`` in
    the address, a CR or LF anywhere. An international domain is sent in its
    IDNA form (``ann@bücher.de`` → ``ann@xn--bcher-kva.de``). Whether the
    addr-spec itself is valid is left to the ``email`` field's pattern, so a
    string and a dict get the same error for the same address.
    """
    if _BARE_ADDRESS.fullmatch(text):
        return {"email": text}  # the common case, without the parser
    if "\r" in text or "\n" in text:
        raise AddressError(
            "line_break",
            f"{_shown(text)} contains a line break (CR or LF), which would start a new mail "
            "header; give one address on one line",
        )
    stripped = text.strip()
    if "<" not in stripped and ">" not in stripped:
        return {"email": _bare(stripped, text)}
    return _name_addr(stripped, text)


class AddressError(ValueError):
    """A string that is not exactly one address.

    ``problem`` says what is wrong (``address_list``, ``address_group``,
    ``two_addresses``, ``trailing_text``, ``two_at_signs``, ``line_break``,
    ``international_address``, ``invalid_address``); ``code`` is the
    :class:`~sendmux_dispatch.errors.FieldIssue` code it is reported under:
    ``line_break`` for a CR or LF, as for every other field, else
    ``invalid_email``, as for an address the pattern refuses.
    """

    def __init__(self, problem: str, message: str) -> None:
        super().__init__(message)
        self.problem = problem
        self.code = "line_break" if problem == "line_break" else "invalid_email"
        self.message = message


_BARE_ADDRESS = re.compile(api_limits.EMAIL_PATTERN)
# RFC 5322 specials: a display name holding one must be quoted.
_NAME_SPECIALS = re.compile(r'[()<>\[\]:;@\\,."]')
_QUOTE_HINT = "if it is a name, put it in double quotes"


def _shown(text: str) -> str:
    shown = repr(text)
    return shown if len(shown) <= 80 else shown[:77] + "..."


def _bare(address: str, text: str) -> str:
    """A string without angle brackets: one addr-spec, or refused with the reason."""
    if ":" in address:
        raise AddressError(
            "address_group",
            f"{_shown(text)} looks like a group ('name: addresses;'); give exactly one address",
        )
    if "," in address or ";" in address:
        raise AddressError(
            "address_list",
            f"{_shown(text)} looks like a list of addresses; give exactly one address "
            "(more recipients go in cc or bcc, or on rows of their own)",
        )
    if address.count("@") > 1:
        raise AddressError(
            "two_at_signs",
            f"{_shown(text)} has {address.count('@')} '@' signs; an address has exactly one",
        )
    # Without an '@' it is no address at all, and the pattern says so, as for a dict.
    if "@" in address and (any(char.isspace() for char in address) or "(" in address):
        raise AddressError(
            "trailing_text",
            f"{_shown(text)} has more than an address in it; write a name as "
            "'Name <name@example.com>'",
        )
    return _ascii_domain(address)


def _name_addr(stripped: str, text: str) -> dict[str, str]:
    """``Name <addr-spec>``: read by the stdlib's RFC 5322 parser, then checked whole."""
    inner = stripped[stripped.rfind("<") + 1 :].rstrip(">").strip()
    if inner.count("@") > 1:
        raise AddressError(
            "two_at_signs",
            f"{_shown(text)} has {inner.count('@')} '@' signs inside <...>; "
            "an address has exactly one",
        )
    try:
        mailbox, rest = _parser.get_mailbox(stripped)
        defects = [str(defect) for defect in mailbox.all_defects]
        first = str(mailbox).strip()
        addr_spec = mailbox.addr_spec if mailbox.domain is not None else mailbox.local_part
        name = mailbox.display_name
    except (HeaderParseError, IndexError, AttributeError, TypeError):
        # The parser is the stdlib's private one: besides its own error, a
        # few odd inputs ('. <a@b.com>') trip it inside a property.
        raise AddressError(
            "invalid_address", f"{_shown(text)} is not an address like 'Name <name@example.com>'"
        ) from None
    rest = rest.strip()
    if rest:
        raise _leftover(text, first, rest)
    for why in defects:
        if "trailing '>'" in why:
            raise AddressError("invalid_address", f"{_shown(text)} has no closing '>'")
        if "quoted string" in why:
            raise AddressError("invalid_address", f"{_shown(text)} has an unclosed '\"'")
        if "route" in why:
            raise AddressError(
                "invalid_address",
                f"{_shown(text)} has a source route ('<@host:...>'); give the address alone",
            )
    if addr_spec is None or addr_spec == "<>":
        addr_spec = ""
    # Belt and braces: the address sent must be the one a reader sees between
    # the brackets at the end, written out, not one the parser assembled from
    # comments or obsolete syntax.
    if not stripped.endswith(">") or inner != addr_spec:
        raise AddressError(
            "trailing_text",
            f"{_shown(text)} is not one address: expected 'Name <name@example.com>' with "
            "nothing after the '>'",
        )
    email = _ascii_domain(addr_spec)
    return {"email": email, "name": name} if name else {"email": email}


def _leftover(text: str, first: str, rest: str) -> AddressError:
    if rest[0] in ",;":
        return AddressError(
            "address_list",
            f"{_shown(text)} is a list of addresses; give exactly one address "
            "(more recipients go in cc or bcc, or on rows of their own)",
        )
    if rest[0] == ":":
        return AddressError(
            "address_group",
            f"{_shown(text)} looks like a group ('name: addresses;'); give exactly one address",
        )
    if rest[0] == "<":
        return AddressError(
            "two_addresses",
            f"{_shown(text)} has an address ({first!r}) before the one in <...>; "
            f"{_QUOTE_HINT}: '\"{first}\" {rest}'",
        )
    return AddressError(
        "trailing_text", f"{_shown(text)} has text after the address: {_shown(rest)}"
    )


def _ascii_domain(address: str) -> str:
    """``address`` with an international domain in its IDNA (``xn--``) form."""
    if address.isascii():
        return address
    local, _, domain = address.rpartition("@")
    if not local or not domain:
        return address  # not an address at all: the pattern says so
    if not local.isascii():
        raise AddressError(
            "international_address",
            f"{_shown(address)} has non-ASCII characters before the '@', which Sendmux does "
            "not accept; use an ASCII address for this mailbox",
        )
    try:
        result = validate_email(address, check_deliverability=False, allow_smtputf8=False)
    except EmailNotValidError as exc:
        raise AddressError(
            "international_address",
            f"{_shown(address)} has a domain that is not a valid international domain name "
            f"({str(exc).rstrip('.')}); check the spelling, or give its IDNA form (xn--...)",
        ) from None
    return f"{local}@{result.ascii_domain}"


#: What an address field accepts: an Address, ``"Name <a@b.com>"`` or
#: ``"a@b.com"``, or the wire dict ``{"email": ..., "name": ...}``.
AddressInput = Address | str | Mapping[str, str]


def _attachment_name(data: Mapping[str, Any]) -> str:
    filename = data.get("filename")
    return f"attachment {filename!r}:" if filename else "the attachment's"


def _custom_error(code: str, message: str) -> PydanticCustomError:
    # The message goes in as context: braces in it (a file name, an address)
    # would otherwise be read as placeholders of the template.
    return PydanticCustomError(code, "{message}", {"message": message})


class Attachment(_RequestModel):
    """A file: inline base64 ``content`` with a ``filename``, or an uploaded ``attachment_id``.

    Build one with :meth:`from_path`, :meth:`from_bytes` or :meth:`uploaded`.
    """

    filename: (
        Annotated[
            str,
            StringConstraints(
                min_length=1,
                max_length=api_limits.MAX_FILENAME_CHARS,
                pattern=api_limits.NO_LINE_BREAKS_PATTERN,
            ),
        ]
        | None
    ) = None
    content: (
        Annotated[str, StringConstraints(min_length=1, pattern=api_limits.BASE64_PATTERN)] | None
    ) = None
    type: (
        Annotated[str, StringConstraints(max_length=255, pattern=api_limits.NO_LINE_BREAKS_PATTERN)]
        | None
    ) = None
    encoding: Literal["base64"] | None = None
    attachment_id: (
        Annotated[str, StringConstraints(pattern=api_limits.ATTACHMENT_ID_PATTERN)] | None
    ) = None

    @field_validator("content", mode="wrap")
    @classmethod
    def _base64(
        cls, value: Any, handler: ValidatorFunctionWrapHandler, info: ValidationInfo
    ) -> Any:
        try:
            return handler(value)
        except PydanticValidationError as exc:
            if not any(error["type"] == "string_pattern_mismatch" for error in exc.errors()):
                raise
        # pydantic would say "String should match pattern '^[A-Za-z0-9+/]*={0,2}$'".
        raise _custom_error(
            "invalid_base64",
            f"{_attachment_name(info.data)} content is not valid base64 (only A-Z, a-z, 0-9, "
            "+ and /, with = padding at the end); build the attachment with "
            "Attachment.from_bytes() or Attachment.from_path()",
        )

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
            raise _custom_error(
                "invalid_base64",
                f"{_attachment_name({'filename': self.filename})} content is not valid base64 "
                "(its length is not a multiple of 4); build it with Attachment.from_bytes() "
                "or Attachment.from_path()",
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
    cc: Annotated[list[Address], Field(max_length=api_limits.DOCS_MAX_CC)] | None = None
    bcc: Annotated[list[Address], Field(max_length=api_limits.DOCS_MAX_BCC)] | None = None
    custom_headers: dict[HeaderName, HeaderValue] | None = None
    attachments: (
        Annotated[list[Attachment], Field(max_length=api_limits.MAX_ATTACHMENTS)] | None
    ) = None
    # The docs say a send cannot choose a delivery group; the spec has the
    # field. Modelled and passed through, absent unless the caller sets it.
    delivery_group: DeliveryGroupId | list[DeliveryGroupId] | None = None
    #: Per-message key inside a batch. The spec's batch schema has no such
    #: field (additionalProperties: false), so it is only put on the wire when
    #: the caller turns per-message keys on; the request's Idempotency-Key
    #: header is what protects a batch.
    idempotency_key: IdempotencyKey | None = None

    if TYPE_CHECKING:
        # What a caller may pass, for type checkers without the pydantic
        # plugin (mypy's default, pyright): the synthesised signature would
        # ask for `from` (the alias, not a valid keyword) and an Address
        # where a string is accepted. Runtime construction is pydantic's.
        def __init__(
            self,
            *,
            from_: AddressInput,
            to: AddressInput,
            subject: str,
            html_body: str | None = None,
            text_body: str | None = None,
            reply_to: AddressInput | None = None,
            return_path: str | None = None,
            cc: Sequence[AddressInput] | None = None,
            bcc: Sequence[AddressInput] | None = None,
            custom_headers: Mapping[str, str] | None = None,
            attachments: Sequence[Attachment | Mapping[str, str]] | None = None,
            delivery_group: str | Sequence[str] | None = None,
            idempotency_key: str | None = None,
        ) -> None: ...

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
        if size > api_limits.MAX_REQUEST_BYTES:
            issues.append(
                FieldIssue(
                    "message",
                    "too_large",
                    f"is about {size / 1_048_576:.1f} MB; a request may be at most "
                    f"{api_limits.MAX_REQUEST_BYTES // 1_048_576} MB: shrink the bodies or "
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
        if size * 4 > api_limits.MAX_REQUEST_BYTES:
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
OBVIOUSLY_SMALL_BODIES = (api_limits.MAX_REQUEST_BYTES // 4) - 512 - api_limits.MAX_SUBJECT_CHARS


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
        list[EmailMessage], Field(min_length=1, max_length=api_limits.MAX_BATCH_MESSAGES)
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
