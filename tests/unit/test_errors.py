"""error_from_response: every status and code to the right class; errors survive pickling."""

from __future__ import annotations

import json
import pickle
from typing import Any

import pytest

from sendmux_dispatch.errors import (
    APIError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    FieldIssue,
    IdempotencyConflictError,
    InsufficientCreditsError,
    InvalidMessageError,
    LimitExceededError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RateLimitError,
    SendmuxError,
    SendmuxTimeoutError,
    ServerError,
    ServiceUnavailableError,
    TransportError,
    ValidationError,
    error_from_response,
)


def _envelope(code: str, retryable: bool, **extra: Any) -> bytes:
    error = {
        "code": code,
        "message": f"{code} happened",
        "param": "from_date",
        "doc_url": f"https://sendmux.ai/docs/api/errors#{code}",
        "retryable": retryable,
        **extra,
    }
    return json.dumps({"ok": False, "error": error, "meta": {"request_id": "req_abc"}}).encode()


# status, code, class, the documented default retryable
TABLE = [
    (400, "invalid_parameter", BadRequestError, False),
    (400, "missing_parameter", BadRequestError, False),
    (400, "validation_error", ValidationError, False),
    (401, "authentication_required", AuthenticationError, False),
    (402, "insufficient_credits", InsufficientCreditsError, False),
    (403, "insufficient_permissions", PermissionDeniedError, False),
    (404, "not_found", NotFoundError, False),
    (409, "conflict", ConflictError, False),
    (409, "limit_exceeded", LimitExceededError, False),
    (409, "idempotency_conflict", IdempotencyConflictError, False),
    (413, "payload_too_large", PayloadTooLargeError, False),
    (422, "validation_error", ValidationError, False),
    (429, "rate_limit_exceeded", RateLimitError, True),
    (500, "internal_error", ServerError, True),
    (503, "service_unavailable", ServiceUnavailableError, True),
]


@pytest.mark.parametrize(("status", "code", "cls", "retryable"), TABLE)
def test_each_documented_code_maps_to_its_class(
    status: int, code: str, cls: type[APIError], retryable: bool
) -> None:
    error = error_from_response(
        status, _envelope(code, retryable), request_id="req_header", retry_after=4.0
    )
    assert type(error) is cls
    assert error.status == status
    assert error.code == code
    assert error.message == f"{code} happened"
    assert error.param == "from_date"
    assert error.doc_url == f"https://sendmux.ai/docs/api/errors#{code}"
    assert error.retryable is retryable
    assert error.request_id == "req_abc"  # meta.request_id wins over the header
    assert error.retry_after == 4.0


def test_server_word_on_retryable_wins_over_the_default() -> None:
    error = error_from_response(409, _envelope("idempotency_conflict", True))
    assert isinstance(error, IdempotencyConflictError)
    assert error.retryable is True


def test_validation_errors_accumulate_every_issue() -> None:
    issues = [
        {"field": "messages.0.to", "code": "invalid", "message": "bad address"},
        {"field": "messages.1.subject", "code": "too_long", "message": "too long"},
    ]
    error = error_from_response(422, _envelope("validation_error", False, errors=issues))
    assert isinstance(error, ValidationError)
    assert error.errors == [
        FieldIssue("messages.0.to", "invalid", "bad address"),
        FieldIssue("messages.1.subject", "too_long", "too long"),
    ]
    assert "messages.1.subject" in str(error)


def test_html_502_from_a_proxy_is_a_retryable_server_error() -> None:
    error = error_from_response(
        502, b"<html><body><h1>502 Bad Gateway</h1></body></html>", request_id="req_hdr"
    )
    assert type(error) is ServerError
    assert error.status == 502
    assert error.retryable is True
    assert error.code is None
    assert error.request_id == "req_hdr"
    assert "502" in str(error)


@pytest.mark.parametrize(
    ("status", "cls", "retryable"),
    [
        (401, AuthenticationError, False),
        (404, NotFoundError, False),
        (418, APIError, False),
        (429, RateLimitError, True),
        (503, ServiceUnavailableError, True),
        (504, ServerError, True),
    ],
)
def test_bodies_without_an_envelope_fall_back_to_the_status(
    status: int, cls: type[APIError], retryable: bool
) -> None:
    for body in (b"", b"not json", b"[1, 2]", b'{"ok": false}'):
        error = error_from_response(status, body)
        assert type(error) is cls
        assert error.retryable is retryable


def test_a_code_that_contradicts_the_status_does_not_win() -> None:
    error = error_from_response(500, _envelope("not_found", False))
    assert isinstance(error, ServerError)


def test_unknown_code_keeps_the_status_class() -> None:
    error = error_from_response(409, _envelope("brand_new_conflict", False))
    assert type(error) is ConflictError
    assert error.code == "brand_new_conflict"


ALL_ERRORS: list[SendmuxError] = [
    error_from_response(status, _envelope(code, retryable), retry_after=2.0)
    for status, code, _, retryable in TABLE
] + [
    error_from_response(502, b"<html/>"),
    TransportError("POST /emails/send failed", code="transport_error"),
    SendmuxTimeoutError("POST /emails/send timed out", code="timeout"),
    InvalidMessageError([FieldIssue("subject", "invalid", "must not contain CR or LF")]),
]


@pytest.mark.parametrize("error", ALL_ERRORS, ids=lambda e: type(e).__name__)
def test_errors_survive_pickling(error: SendmuxError) -> None:
    # Celery pickles exceptions into task results and retries.
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error)
    for name in (
        "message", "status", "code", "param", "doc_url", "retryable", "request_id", "errors",
        "retry_after",
    ):  # fmt: skip
        assert getattr(copy, name) == getattr(error, name), name
    assert str(copy) == str(error)
