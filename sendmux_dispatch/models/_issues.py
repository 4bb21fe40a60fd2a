"""Turn pydantic's validation errors into issues a person can act on.

Pydantic reports a failed pattern as "String should match pattern '^[^\\r\\n]*$'",
which tells nobody what to fix. Each documented rule gets its own sentence here,
naming the field, the problem and the limit.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError as PydanticValidationError

from sendmux_dispatch.errors import FieldIssue
from sendmux_dispatch.models import api_limits

_PATTERN_MESSAGES: dict[str, tuple[str, str]] = {
    api_limits.EMAIL_PATTERN: (
        "invalid_email",
        "{value} is not a valid email address (expected name@domain.tld, at most "
        f"{api_limits.MAX_ADDRESS_CHARS} characters)",
    ),
    api_limits.NO_LINE_BREAKS_PATTERN: (
        "line_break",
        "must not contain CR or LF (a line break would start a new mail header); "
        "put it on one line",
    ),
    api_limits.CUSTOM_HEADER_NAME_PATTERN: (
        "invalid_header_name",
        "{value} is not allowed: custom header names must start with X- (for example "
        "X-Campaign) and contain no spaces or colons",
    ),
    api_limits.IDEMPOTENCY_KEY_PATTERN: (
        "invalid_idempotency_key",
        "must be 1 to 255 characters of A-Z, a-z, 0-9, _ and -",
    ),
    api_limits.ATTACHMENT_ID_PATTERN: (
        "invalid_attachment_id",
        "{value} is not an uploaded attachment id (att_ followed by 24 lowercase letters "
        "or digits)",
    ),
    api_limits.DELIVERY_GROUP_PATTERN: (
        "invalid_delivery_group",
        "{value} is not a delivery group id (dgrp_ followed by lowercase letters, digits, _ or -)",
    ),
    api_limits.BASE64_PATTERN: (
        "invalid_base64",
        "is not base64 text; build the attachment with Attachment.from_bytes() or "
        "Attachment.from_path()",
    ),
}


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _field(loc: tuple[int | str, ...]) -> str:
    # Dict keys show up as an extra "[key]" step; the key itself is already in loc.
    return ".".join(str(part) for part in loc if part != "[key]") or "message"


def _describe(error: Any) -> tuple[str, str]:
    kind: str = error["type"]
    ctx: dict[str, Any] = error.get("ctx") or {}
    value = error.get("input")
    if kind == "string_pattern_mismatch":
        code, template = _PATTERN_MESSAGES.get(
            str(ctx.get("pattern")), ("invalid_format", "{value} has the wrong format")
        )
        message = template.format(value=_short(value))
        if code == "invalid_email" and isinstance(value, str) and not value.isascii():
            message += (
                "; non-ASCII characters may only be in the domain (sent in its IDNA form, "
                "xn--...), not before the '@'"
            )
        return code, message
    if kind == "string_too_long":
        return "too_long", (
            f"is {len(value)} characters; the limit is {ctx['max_length']}"
            if isinstance(value, str)
            else f"is longer than {ctx['max_length']} characters"
        )
    if kind == "string_too_short":
        return "empty", "must not be empty"
    if kind == "too_long":
        count = len(value) if hasattr(value, "__len__") else "too many"
        return "too_many", f"has {count} items; the limit is {ctx['max_length']}"
    if kind == "too_short":
        return "too_few", f"needs at least {ctx['min_length']} item(s)"
    if kind == "missing":
        return "missing", "is required"
    if kind == "extra_forbidden":
        return (
            "unknown_field",
            "is not a Sendmux message field; remove it or fix its spelling",
        )
    if kind == "literal_error":
        return "invalid_choice", f"must be {ctx.get('expected')}"
    if kind in ("string_type", "model_type", "model_attributes_type", "list_type", "dict_type"):
        return "wrong_type", f"has the wrong type ({type(value).__name__}): {error['msg']}"
    return kind, str(error["msg"]).removeprefix("Value error, ")


def issues_from_pydantic(exc: PydanticValidationError) -> list[FieldIssue]:
    """Every error pydantic found, one issue each, with full dot paths (``to.email``)."""
    issues: list[FieldIssue] = []
    for error in exc.errors(include_url=False):
        code, message = _describe(error)
        issues.append(FieldIssue(_field(tuple(error["loc"])), code, message))
    return _prune_union_noise(issues)


def _prune_union_noise(issues: list[FieldIssue]) -> list[FieldIssue]:
    # delivery_group is `str | list[str]`: pydantic reports one error per
    # branch, with the branch's type in the path. Keep one, under the field name.
    kept: list[FieldIssue] = []
    union_reported = False
    for issue in issues:
        if not issue.field.startswith("delivery_group"):
            kept.append(issue)
        elif not union_reported:
            union_reported = True
            kept.append(FieldIssue("delivery_group", issue.code, issue.message))
    return kept
