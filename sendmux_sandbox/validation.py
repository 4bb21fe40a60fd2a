"""Server-side validation of send requests, with every problem accumulated.

The rules are the vendor OpenAPI spec's (``EmailSendRequest``), not the product
docs': cc and bcc hold at most 49 each and to + cc + bcc at most 50, and
``html_body`` is required. Issue codes follow the validator the real API uses
(zod: ``invalid_type``, ``too_small``, ``too_big``, ``invalid_string``,
``unrecognized_keys``, ``invalid_enum_value``).
"""

from __future__ import annotations

import re
from typing import Any

from sendmux_dispatch.models.api_limits import (
    ATTACHMENT_ID_PATTERN,
    BASE64_PATTERN,
    CUSTOM_HEADER_NAME_PATTERN,
    DELIVERY_GROUP_PATTERN,
    EMAIL_PATTERN,
    IDEMPOTENCY_KEY_PATTERN,
    MAX_ADDRESS_CHARS,
    MAX_ATTACHMENTS,
    MAX_BATCH_MESSAGES,
    MAX_FILENAME_CHARS,
    MAX_HEADER_VALUE_CHARS,
    MAX_NAME_CHARS,
    MAX_REQUEST_BYTES,
    MAX_SUBJECT_CHARS,
    SPEC_MAX_BCC,
    SPEC_MAX_CC,
    SPEC_MAX_RECIPIENTS,
)
from sendmux_sandbox.envelope import Issue

__all__ = ["MESSAGE_FIELDS", "validate_batch_shape", "validate_message"]

_EMAIL = re.compile(EMAIL_PATTERN)
_HEADER_NAME = re.compile(CUSTOM_HEADER_NAME_PATTERN)
_IDEMPOTENCY_KEY = re.compile(IDEMPOTENCY_KEY_PATTERN)
_ATTACHMENT_ID = re.compile(ATTACHMENT_ID_PATTERN)
_DELIVERY_GROUP = re.compile(DELIVERY_GROUP_PATTERN)
_BASE64 = re.compile(BASE64_PATTERN)
#: The spec's maxLength for html_body and text_body (25 MiB).
_MAX_BODY_CHARS = MAX_REQUEST_BYTES
_MAX_DELIVERY_GROUPS = 50

#: The spec's fields plus ``idempotency_key``: the batch reference documents a
#: per-message key the spec (``additionalProperties: false``) leaves out; we
#: accept it, as the client may send it.
MESSAGE_FIELDS = frozenset(
    {
        "from",
        "to",
        "subject",
        "html_body",
        "text_body",
        "reply_to",
        "return_path",
        "cc",
        "bcc",
        "custom_headers",
        "attachments",
        "delivery_group",
        "idempotency_key",
    }
)
_ADDRESS_FIELDS = frozenset({"email", "name"})
_INLINE_FIELDS = frozenset({"filename", "content", "type", "encoding"})
_REQUIRED = ("from", "to", "subject", "html_body")


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _wrong_type(path: str, expected: str, value: object) -> Issue:
    return (path, "invalid_type", f"{path} must be {expected}, got {_type_name(value)}")


def _has_line_break(value: str) -> bool:
    return "\r" in value or "\n" in value


def _check_email(path: str, value: object, issues: list[Issue]) -> None:
    if not isinstance(value, str):
        issues.append(_wrong_type(path, "a string", value))
    elif len(value) > MAX_ADDRESS_CHARS:
        issues.append(
            (
                path,
                "too_big",
                f"{path} must be at most {MAX_ADDRESS_CHARS} characters (got {len(value)})",
            )
        )
    elif not _EMAIL.match(value):
        issues.append((path, "invalid_string", f"{path} is not a valid email address"))


def _check_address(path: str, value: object, issues: list[Issue]) -> None:
    if not isinstance(value, dict):
        issues.append(_wrong_type(path, "an object with an email", value))
        return
    for key in sorted(value.keys() - _ADDRESS_FIELDS):
        issues.append((f"{path}.{key}", "unrecognized_keys", f"Unrecognized key '{key}' in {path}"))
    if "email" not in value:
        issues.append((f"{path}.email", "invalid_type", f"{path}.email is required"))
    else:
        _check_email(f"{path}.email", value["email"], issues)
    if "name" in value:
        name = value["name"]
        npath = f"{path}.name"
        if not isinstance(name, str):
            issues.append(_wrong_type(npath, "a string", name))
        elif len(name) > MAX_NAME_CHARS:
            issues.append(
                (
                    npath,
                    "too_big",
                    f"{npath} must be at most {MAX_NAME_CHARS} characters (got {len(name)})",
                )
            )
        elif _has_line_break(name):
            issues.append((npath, "invalid_string", f"{npath} must not contain CR or LF"))


def _check_recipients(name: str, value: object, limit: int, issues: list[Issue]) -> int:
    if not isinstance(value, list):
        issues.append(_wrong_type(name, "an array of addresses", value))
        return 0
    if len(value) > limit:
        issues.append(
            (name, "too_big", f"{name} may hold at most {limit} recipients (got {len(value)})")
        )
    for i, item in enumerate(value):
        _check_address(f"{name}.{i}", item, issues)
    return len(value)


def _check_headers(value: object, issues: list[Issue]) -> None:
    if not isinstance(value, dict):
        issues.append(_wrong_type("custom_headers", "an object", value))
        return
    for name, header in value.items():
        path = f"custom_headers.{name}"
        if not _HEADER_NAME.match(name):
            issues.append(
                (path, "invalid_string", f"Custom header names must start with X- ({name!r})")
            )
        if not isinstance(header, str):
            issues.append(_wrong_type(path, "a string", header))
        elif len(header) > MAX_HEADER_VALUE_CHARS:
            issues.append(
                (
                    path,
                    "too_big",
                    f"{path} must be at most {MAX_HEADER_VALUE_CHARS} characters"
                    f" (got {len(header)})",
                )
            )
        elif _has_line_break(header):
            issues.append((path, "invalid_string", f"{path} must not contain CR or LF"))


def _check_attachment(path: str, value: object, issues: list[Issue]) -> None:
    if not isinstance(value, dict):
        issues.append(_wrong_type(path, "an object", value))
        return
    if "attachment_id" in value:
        for key in sorted(value.keys() - {"attachment_id"}):
            issues.append(
                (
                    f"{path}.{key}",
                    "unrecognized_keys",
                    f"An uploaded attachment reference holds only attachment_id (got '{key}')",
                )
            )
        ref = value["attachment_id"]
        if not isinstance(ref, str) or not _ATTACHMENT_ID.match(ref):
            issues.append(
                (
                    f"{path}.attachment_id",
                    "invalid_string",
                    f"{path}.attachment_id must look like att_ followed by 24 [a-z0-9]",
                )
            )
        return
    for key in sorted(value.keys() - _INLINE_FIELDS):
        issues.append((f"{path}.{key}", "unrecognized_keys", f"Unrecognized key '{key}' in {path}"))
    filename = value.get("filename")
    fpath = f"{path}.filename"
    if "filename" not in value:
        issues.append((fpath, "invalid_type", f"{fpath} is required"))
    elif not isinstance(filename, str):
        issues.append(_wrong_type(fpath, "a string", filename))
    elif not 1 <= len(filename) <= MAX_FILENAME_CHARS:
        issues.append(
            (
                fpath,
                "too_small" if not filename else "too_big",
                f"{fpath} must be 1 to {MAX_FILENAME_CHARS} characters (got {len(filename)})",
            )
        )
    content = value.get("content")
    cpath = f"{path}.content"
    if "content" not in value:
        issues.append((cpath, "invalid_type", f"{cpath} is required"))
    elif not isinstance(content, str):
        issues.append(_wrong_type(cpath, "a base64 string", content))
    elif not content:
        issues.append((cpath, "too_small", f"{cpath} must not be empty"))
    elif len(content) % 4 or not _BASE64.match(content):
        issues.append((cpath, "invalid_string", f"{cpath} is not valid base64"))
    if "type" in value and not isinstance(value["type"], str):
        issues.append(_wrong_type(f"{path}.type", "a string", value["type"]))
    if "encoding" in value and value["encoding"] != "base64":
        issues.append(
            (f"{path}.encoding", "invalid_enum_value", f"{path}.encoding must be 'base64'")
        )


def _check_delivery_group(value: object, issues: list[Issue]) -> None:
    if isinstance(value, str):
        if not _DELIVERY_GROUP.match(value):
            issues.append(
                ("delivery_group", "invalid_string", "delivery_group must look like dgrp_...")
            )
        return
    if not isinstance(value, list):
        issues.append(_wrong_type("delivery_group", "a string or an array of strings", value))
        return
    if not 1 <= len(value) <= _MAX_DELIVERY_GROUPS:
        issues.append(
            (
                "delivery_group",
                "too_small" if not value else "too_big",
                f"delivery_group must hold 1 to {_MAX_DELIVERY_GROUPS} ids (got {len(value)})",
            )
        )
    for i, item in enumerate(value):
        if not isinstance(item, str) or not _DELIVERY_GROUP.match(item):
            issues.append(
                (f"delivery_group.{i}", "invalid_string", "delivery group ids look like dgrp_...")
            )


def _check_text(
    name: str, value: object, min_len: int, max_len: int, one_line: bool, issues: list[Issue]
) -> None:
    if not isinstance(value, str):
        issues.append(_wrong_type(name, "a string", value))
    elif len(value) < min_len:
        issues.append((name, "too_small", f"{name} must not be empty"))
    elif len(value) > max_len:
        issues.append(
            (name, "too_big", f"{name} must be at most {max_len} characters (got {len(value)})")
        )
    elif one_line and _has_line_break(value):
        issues.append((name, "invalid_string", f"{name} must not contain CR or LF"))


def validate_message(msg: object) -> list[Issue]:
    """Every problem with one message (``EmailSendRequest``), in field order; empty if valid."""
    if not isinstance(msg, dict):
        return [_wrong_type("message", "an object", msg)]
    issues: list[Issue] = []
    for key in sorted(msg.keys() - MESSAGE_FIELDS):
        issues.append((key, "unrecognized_keys", f"Unrecognized key '{key}'"))
    for key in _REQUIRED:
        if key not in msg:
            issues.append((key, "invalid_type", f"{key} is required"))
    if "from" in msg:
        _check_address("from", msg["from"], issues)
    if "to" in msg:
        _check_address("to", msg["to"], issues)
    if "subject" in msg:
        _check_text("subject", msg["subject"], 1, MAX_SUBJECT_CHARS, True, issues)
    if "html_body" in msg:
        _check_text("html_body", msg["html_body"], 1, _MAX_BODY_CHARS, False, issues)
    if "text_body" in msg:
        _check_text("text_body", msg["text_body"], 0, _MAX_BODY_CHARS, False, issues)
    if "reply_to" in msg:
        _check_address("reply_to", msg["reply_to"], issues)
    if "return_path" in msg:
        _check_email("return_path", msg["return_path"], issues)
    copies = 0
    if "cc" in msg:
        copies += _check_recipients("cc", msg["cc"], SPEC_MAX_CC, issues)
    if "bcc" in msg:
        copies += _check_recipients("bcc", msg["bcc"], SPEC_MAX_BCC, issues)
    if 1 + copies > SPEC_MAX_RECIPIENTS:
        issues.append(
            (
                "bcc" if msg.get("bcc") else "cc",
                "too_big",
                f"to, cc and bcc together may hold at most {SPEC_MAX_RECIPIENTS} recipients"
                f" (got {1 + copies})",
            )
        )
    if "custom_headers" in msg:
        _check_headers(msg["custom_headers"], issues)
    if "attachments" in msg:
        attachments = msg["attachments"]
        if not isinstance(attachments, list):
            issues.append(_wrong_type("attachments", "an array", attachments))
        else:
            if len(attachments) > MAX_ATTACHMENTS:
                issues.append(
                    (
                        "attachments",
                        "too_big",
                        f"attachments may hold at most {MAX_ATTACHMENTS} files"
                        f" (got {len(attachments)})",
                    )
                )
            for i, attachment in enumerate(attachments):
                _check_attachment(f"attachments.{i}", attachment, issues)
    if "delivery_group" in msg:
        _check_delivery_group(msg["delivery_group"], issues)
    if "idempotency_key" in msg:
        key = msg["idempotency_key"]
        if not isinstance(key, str) or not _IDEMPOTENCY_KEY.match(key):
            issues.append(
                (
                    "idempotency_key",
                    "invalid_string",
                    "idempotency_key must be 1 to 255 characters of [A-Za-z0-9_-]",
                )
            )
    return issues


def validate_batch_shape(body: object) -> tuple[list[Any], list[Issue]]:
    """The batch envelope (``BatchSendRequest``) without looking inside each message."""
    if not isinstance(body, dict):
        return [], [_wrong_type("body", "an object with messages", body)]
    issues: list[Issue] = [
        (key, "unrecognized_keys", f"Unrecognized key '{key}'")
        for key in sorted(body.keys() - {"messages"})
    ]
    messages = body.get("messages")
    if "messages" not in body:
        issues.append(("messages", "invalid_type", "messages is required"))
        return [], issues
    if not isinstance(messages, list):
        issues.append(_wrong_type("messages", "an array", messages))
        return [], issues
    if not messages:
        issues.append(("messages", "too_small", "messages must hold at least 1 message"))
    elif len(messages) > MAX_BATCH_MESSAGES:
        issues.append(
            (
                "messages",
                "too_big",
                f"messages may hold at most {MAX_BATCH_MESSAGES} messages (got {len(messages)})",
            )
        )
    return messages, issues
