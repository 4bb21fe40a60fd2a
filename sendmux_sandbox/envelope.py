"""The JSON envelope, error codes and request ids shared by every endpoint."""

from __future__ import annotations

import json
import secrets
import string
from collections.abc import Mapping, Sequence
from typing import Any

from starlette.responses import Response

__all__ = [
    "ApiError",
    "error_body",
    "error_detail",
    "json_bytes",
    "json_response",
    "new_request_id",
    "success_body",
]

_ALPHABET = string.ascii_lowercase + string.digits
DOC_URL = "https://sendmux.ai/docs/api/errors#{code}"

#: Status and default ``retryable`` per error code (the Management API's errors table).
ERROR_CODES: dict[str, tuple[int, bool]] = {
    "invalid_parameter": (400, False),
    "missing_parameter": (400, False),
    "authentication_required": (401, False),
    "insufficient_permissions": (403, False),
    "not_found": (404, False),
    "conflict": (409, False),
    "idempotency_conflict": (409, False),
    "payload_too_large": (413, False),
    "validation_error": (422, False),
    "rate_limit_exceeded": (429, True),
    "internal_error": (500, True),
    "service_unavailable": (503, True),
}

#: A field issue inside ``error.errors[]``: (field dot path, code, message).
Issue = tuple[str, str, str]


def random_token(length: int) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(length))


def new_request_id() -> str:
    return "req_" + secrets.token_hex(13)[:25]


class ApiError(Exception):
    """Raised by a handler to answer with the error envelope."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        param: str | None = None,
        errors: Sequence[Issue] = (),
        retryable: bool | None = None,
        status: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        default_status, default_retryable = ERROR_CODES[code]
        self.code = code
        self.message = message
        self.param = param
        self.errors = list(errors)
        self.retryable = default_retryable if retryable is None else retryable
        self.status = default_status if status is None else status
        self.headers = dict(headers or {})

    def detail(self) -> dict[str, Any]:
        return error_detail(
            self.code, self.message, param=self.param, retryable=self.retryable, errors=self.errors
        )


def error_detail(
    code: str,
    message: str,
    *,
    param: str | None = None,
    retryable: bool = False,
    errors: Sequence[Issue] = (),
) -> dict[str, Any]:
    """An ``ErrorDetail`` object (also used inside batch results)."""
    detail: dict[str, Any] = {"code": code, "message": message}
    if param is not None:
        detail["param"] = param
    detail["doc_url"] = DOC_URL.format(code=code)
    detail["retryable"] = retryable
    if errors:
        detail["errors"] = [{"field": f, "code": c, "message": m} for f, c, m in errors]
    return detail


def success_body(
    data: Any, request_id: str, pagination: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {"ok": True, "data": data}
    if pagination is not None:
        body["pagination"] = dict(pagination)
    body["meta"] = {"request_id": request_id}
    return body


def error_body(detail: Mapping[str, Any], request_id: str) -> dict[str, Any]:
    return {"ok": False, "error": dict(detail), "meta": {"request_id": request_id}}


def json_bytes(body: Any) -> bytes:
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def json_response(
    body: Any | bytes, status: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    content = body if isinstance(body, bytes) else json_bytes(body)
    return Response(content, status_code=status, headers=headers, media_type="application/json")
