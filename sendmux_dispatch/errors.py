"""Every error a sendmux_dispatch call can raise, in one tree::

    SendmuxError                          .status .code .message .param .retryable .request_id
    ├── InvalidMessageError               refused before any request; .errors lists each field
    ├── InputError                        a recipient source that cannot be read on; .path .line
    ├── LedgerUnavailableError            the send ledger stayed unreachable; .backend .waited
    ├── TransportError                    no usable HTTP response (connect failure, dropped)
    │   └── SendmuxTimeoutError           the request timed out
    └── APIError                          the server answered with an error
        ├── BadRequestError               400 invalid_parameter, missing_parameter
        ├── ValidationError               400/422 validation_error; .errors accumulates every issue
        ├── AuthenticationError           401 authentication_required
        ├── InsufficientCreditsError      402
        ├── PermissionDeniedError         403 insufficient_permissions
        ├── NotFoundError                 404 not_found
        ├── ConflictError                 409 conflict
        │   ├── IdempotencyConflictError  409 idempotency_conflict
        │   └── LimitExceededError        409 limit_exceeded
        ├── PayloadTooLargeError          413 payload_too_large
        ├── RateLimitError                429 rate_limit_exceeded; .retry_after
        └── ServerError                   500 internal_error and any other 5xx
            └── ServiceUnavailableError   503 service_unavailable; .retry_after

``retryable`` is the server's own word on whether the *same request* may be
sent again; where the server gave none (a proxy's HTML error page, a dropped
connection) it follows the documented defaults: 429 and 5xx yes, 4xx no.

No error carries the API key: messages come from the server or from this
package, and request objects are never attached. What the server (or a proxy
in front of it) says is scrubbed first (:func:`scrub_secrets`): the client's
own keys, and anything shaped like a Sendmux key, become ``[redacted]``, so a
proxy that echoes the ``Authorization`` header cannot put the key into an
exception, a log line or a report.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "APIError",
    "AuthenticationError",
    "BadRequestError",
    "ConflictError",
    "FieldIssue",
    "IdempotencyConflictError",
    "InputError",
    "InsufficientCreditsError",
    "InvalidMessageError",
    "LedgerUnavailableError",
    "LimitExceededError",
    "NotFoundError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "RateLimitError",
    "SendmuxError",
    "SendmuxTimeoutError",
    "ServerError",
    "ServiceUnavailableError",
    "TransportError",
    "ValidationError",
    "error_from_response",
    "may_hold_secret",
    "scrub_json",
    "scrub_secrets",
]

#: What a secret is replaced with in server-provided text.
REDACTED = "[redacted]"
# Sendmux keys are smx_mbx_... (send-only, mailbox) and smx_root_...; any
# smx_ token is taken for one, whatever follows the prefix. Case-blind, and
# with '-' as well as word characters: a false positive costs a word of a
# message, a false negative a key.
_KEY_SHAPE = re.compile(r"smx_[A-Za-z0-9_-]+", re.IGNORECASE)
_KEY_HINT = re.compile(rb"smx_", re.IGNORECASE)


def scrub_secrets(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with each of ``secrets`` and every Sendmux-shaped key replaced by ``[redacted]``.

    For any string that came from a server (an error message, a page, a
    header) before it is shown, logged or stored.
    """
    for secret in secrets:
        if secret and secret in text:
            text = text.replace(secret, REDACTED)
    return _KEY_SHAPE.sub(REDACTED, text)


def scrub_json(value: Any, secrets: Iterable[str] = ()) -> Any:
    """A decoded JSON value with :func:`scrub_secrets` applied to every string in it (keys too)."""
    secrets = tuple(secrets)
    if isinstance(value, str):
        return scrub_secrets(value, secrets)
    if isinstance(value, list):
        return [scrub_json(item, secrets) for item in value]
    if isinstance(value, dict):
        return {
            scrub_secrets(str(key), secrets): scrub_json(item, secrets)
            for key, item in value.items()
        }
    return value


def may_hold_secret(body: bytes, secrets: Iterable[str] = ()) -> bool:
    """Whether ``body`` might contain a secret (a cheap test before scrubbing a whole reply)."""
    return _KEY_HINT.search(body) is not None or any(
        secret.encode() in body for secret in secrets if secret
    )


@dataclass(frozen=True, slots=True)
class FieldIssue:
    """One problem with one field: the shape of the API's ``errors[]`` items."""

    field: str
    code: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


class SendmuxError(Exception):
    """Base of every error raised by sendmux_dispatch."""

    #: Default for errors whose server did not say.
    default_retryable = False

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        param: str | None = None,
        doc_url: str | None = None,
        retryable: bool | None = None,
        request_id: str | None = None,
        errors: list[FieldIssue] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.param = param
        self.doc_url = doc_url
        self.retryable = self.default_retryable if retryable is None else retryable
        self.request_id = request_id
        self.errors: list[FieldIssue] = list(errors or [])
        self.retry_after = retry_after

    def __str__(self) -> str:
        parts = [self.message]
        if self.errors:
            parts.extend(f"  - {issue}" for issue in self.errors)
        tail = [
            f"{name}={value}"
            for name, value in (
                ("status", self.status),
                ("code", self.code),
                ("request_id", self.request_id),
            )
            if value is not None
        ]
        if tail:
            parts[0] = f"{parts[0]} ({', '.join(tail)})"
        return "\n".join(parts)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(status={self.status!r}, code={self.code!r}, "
            f"message={self.message!r}, retryable={self.retryable!r}, "
            f"request_id={self.request_id!r})"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        # Celery pickles exceptions into results; keyword-only state must survive.
        return (_rebuild, (type(self), self.message, self._state()))

    def _state(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "code": self.code,
            "param": self.param,
            "doc_url": self.doc_url,
            "retryable": self.retryable,
            "request_id": self.request_id,
            "errors": self.errors,
            "retry_after": self.retry_after,
        }


def _rebuild(cls: type[SendmuxError], message: str, state: dict[str, Any]) -> SendmuxError:
    return cls(message, **state)


class InvalidMessageError(SendmuxError):
    """The message was refused before any request was sent.

    ``errors`` lists every problem found, each naming the field, what is wrong
    and the limit, e.g. ``subject: must not contain CR or LF``.
    """

    def __init__(self, errors: list[FieldIssue], *, message: str | None = None) -> None:
        if message is None:
            count = len(errors)
            message = f"{count} invalid field{'s' if count != 1 else ''} in the message"
        super().__init__(message, code="invalid_message", errors=errors, retryable=False)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.errors,), None)


class InputError(SendmuxError):
    """A recipient source that cannot be read on: a malformed line, a bad header, a bad byte.

    Raised by the readers in ``sendmux_dispatch.recipients`` (and accepted from
    any recipient iterable). ``line`` is the 1-based physical line of the file
    where the problem starts, when there is one; ``path`` the file's path.
    Dispatch stops the job on it with a report (``stop_cause == "input"``)
    instead of sending what follows a line it cannot trust.
    """

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None) -> None:
        super().__init__(message, code="invalid_input", retryable=False)
        self.path = path
        self.line = line

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.message,), {"path": self.path, "line": self.line})


class LedgerUnavailableError(SendmuxError):
    """The send ledger could not be read or written for ``waited`` seconds.

    Raised by ``sendmux_dispatch.ledger`` after its bounded retries (Redis down,
    SQLite locked or its disk full). Dispatch stops the job on it with a report
    (``stop_cause == "ledger"``) rather than send what it could not record.
    Retryable: a later re-run of the same job key, once the store is back,
    replays what was pending. ``backend`` is ``"sqlite"`` or ``"redis"``; the
    message names the path or host, never a password.
    """

    default_retryable = True

    def __init__(self, message: str, *, backend: str = "unknown", waited: float = 0.0) -> None:
        super().__init__(message, code="ledger_unavailable")
        self.backend = backend
        self.waited = waited

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.message,), {"backend": self.backend, "waited": self.waited})


class TransportError(SendmuxError):
    """No usable HTTP response: the connection failed or was dropped.

    Retryable, because every POST this package sends carries an
    Idempotency-Key: if the server did accept the request, the retry replays
    the original answer instead of sending again.
    """

    default_retryable = True


class SendmuxTimeoutError(TransportError):
    """The request timed out (connect, read, write or pool)."""


class APIError(SendmuxError):
    """The server answered with an error status."""


class BadRequestError(APIError):
    """400: a malformed parameter or body."""


class ValidationError(APIError):
    """400/422: the body parsed but broke a rule; ``errors`` accumulates every issue."""


class AuthenticationError(APIError):
    """401: no API key, or an unknown one."""


class InsufficientCreditsError(APIError):
    """402: the team's balance cannot pay for the send."""


class PermissionDeniedError(APIError):
    """403: the key lacks the permission (``email.send``, ``logs.read``, ...)."""


class NotFoundError(APIError):
    """404: no such resource for this team."""


class ConflictError(APIError):
    """409: the resource's state forbids the operation."""


class IdempotencyConflictError(ConflictError):
    """409: the Idempotency-Key was used with another body, or is still in flight.

    The server marks the in-flight case retryable: the first request is still
    running and a later replay will return its result.
    """


class LimitExceededError(ConflictError):
    """409: a team resource limit was reached."""


class PayloadTooLargeError(APIError):
    """413: the request body is over the server's 25 MB limit."""


class RateLimitError(APIError):
    """429: the key's request budget is spent; wait ``retry_after`` seconds."""

    default_retryable = True


class ServerError(APIError):
    """5xx: the server failed; the same request may be retried."""

    default_retryable = True


class ServiceUnavailableError(ServerError):
    """503: a component is briefly unavailable; may carry ``retry_after``."""


_BY_CODE: dict[str, type[APIError]] = {
    "invalid_parameter": BadRequestError,
    "missing_parameter": BadRequestError,
    "validation_error": ValidationError,
    "authentication_required": AuthenticationError,
    "insufficient_credits": InsufficientCreditsError,
    "insufficient_permissions": PermissionDeniedError,
    "not_found": NotFoundError,
    "conflict": ConflictError,
    "idempotency_conflict": IdempotencyConflictError,
    "limit_exceeded": LimitExceededError,
    "payload_too_large": PayloadTooLargeError,
    "rate_limit_exceeded": RateLimitError,
    "internal_error": ServerError,
    "service_unavailable": ServiceUnavailableError,
}

_BY_STATUS: dict[int, type[APIError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    402: InsufficientCreditsError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLargeError,
    422: ValidationError,
    429: RateLimitError,
    503: ServiceUnavailableError,
}


def _error_class(status: int, code: str | None) -> type[APIError]:
    by_code = _BY_CODE.get(code) if code else None
    by_status = _BY_STATUS.get(status) or (ServerError if status >= 500 else APIError)
    # A known code refines the status (409 → idempotency_conflict), but a code
    # whose class contradicts the status family never wins over the status.
    if by_code is not None and issubclass(by_code, by_status):
        return by_code
    if by_code is ValidationError and status in (400, 422):
        return ValidationError
    return by_status


def _issues(raw: object, secrets: tuple[str, ...]) -> list[FieldIssue]:
    if not isinstance(raw, list):
        return []
    return [
        FieldIssue(
            field=scrub_secrets(str(item.get("field", "")), secrets),
            code=scrub_secrets(str(item.get("code", "")), secrets),
            message=scrub_secrets(str(item.get("message", "")), secrets),
        )
        for item in raw
        if isinstance(item, Mapping)
    ]


def error_from_response(
    status: int,
    body: bytes,
    *,
    request_id: str | None = None,
    retry_after: float | None = None,
    secrets: Iterable[str] = (),
) -> APIError:
    """Map an error response (any status ≥ 400) to the right exception.

    Works on the documented envelope and on anything else a proxy might put in
    front of the API (an HTML 502 page becomes a retryable ``ServerError``,
    with the start of the page's text in its message). Every string taken
    from the response is scrubbed of ``secrets`` (the caller's API keys) and
    of anything shaped like a Sendmux key.
    """
    keys = tuple(secret for secret in secrets if secret)

    def clean(value: object) -> str | None:
        return scrub_secrets(value, keys) if isinstance(value, str) else None

    payload: Any = None
    try:
        payload = json.loads(body) if body else None
    except ValueError:
        payload = None
    error = payload.get("error") if isinstance(payload, dict) else None
    meta = payload.get("meta") if isinstance(payload, dict) else None
    if isinstance(meta, dict) and isinstance(meta.get("request_id"), str):
        request_id = meta["request_id"]
    request_id = clean(request_id)
    if not isinstance(error, dict):
        cls = _error_class(status, None)
        reason = _REASONS.get(status, "error")
        page = _page_text(body, keys)
        return cls(
            f"HTTP {status} {reason} without a Sendmux error body"
            + (f" (the page says: {page!r})" if page else ""),
            status=status,
            code=None,
            request_id=request_id,
            retryable=status == 429 or status >= 500,
            retry_after=retry_after,
        )
    raw_code = error.get("code") if isinstance(error.get("code"), str) else None
    retryable = error.get("retryable")
    cls = _error_class(status, raw_code)
    return cls(
        clean(error.get("message")) or f"HTTP {status}",
        status=status,
        code=clean(raw_code),
        param=clean(error.get("param")),
        doc_url=clean(error.get("doc_url")),
        retryable=retryable if isinstance(retryable, bool) else None,
        request_id=request_id,
        errors=_issues(error.get("errors"), keys),
        retry_after=retry_after,
    )


_TAG = re.compile(r"<[^>]*>")
_SPACE = re.compile(r"\s+")
#: Characters of a non-JSON error page quoted in the error's message.
PAGE_EXCERPT_CHARS = 200


def _page_text(body: bytes, secrets: tuple[str, ...]) -> str:
    """The start of a non-JSON page's text (tags dropped), scrubbed; "" for none."""
    if not body:
        return ""
    # Scrubbed whole before it is cut, so that no key is cut in half first.
    text = body.decode("utf-8", errors="replace")
    text = scrub_secrets(_SPACE.sub(" ", _TAG.sub(" ", text)).strip(), secrets)
    if len(text) > PAGE_EXCERPT_CHARS:
        text = text[: PAGE_EXCERPT_CHARS - 3] + "..."
    return text


_REASONS = {
    400: "Bad Request",
    401: "Unauthorized",
    402: "Payment Required",
    403: "Forbidden",
    404: "Not Found",
    409: "Conflict",
    413: "Payload Too Large",
    422: "Unprocessable Entity",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}
