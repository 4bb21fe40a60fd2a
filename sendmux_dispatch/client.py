"""HTTP clients for the Sendmux Sending and Management APIs.

:class:`SendmuxClient` (blocking, on ``httpx.Client``) and
:class:`AsyncSendmuxClient` (asyncio, on ``httpx.AsyncClient``) share
everything in :class:`_BaseClient`: configuration checks, request building,
response parsing into models or errors, the ETag cache and the stats. The two
differ only where I/O happens (sending, sleeping, pacing).

Secrets: the API keys are held as ``SecretStr`` and only put into the
``Authorization`` header of each request. No repr, exception or log line of
this module contains them: httpx exceptions (which carry the request and so
the header) are replaced by our own :class:`~sendmux_dispatch.errors.TransportError`
raised outside the ``except`` block, so not even ``__context__`` refers to them.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import email.utils
import ipaddress
import json
import logging
import math
import re
import secrets
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from typing import Any, Literal, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, SecretStr
from pydantic import ValidationError as PydanticValidationError

from sendmux_dispatch._version import __version__
from sendmux_dispatch.errors import (
    APIError,
    FieldIssue,
    InvalidMessageError,
    SendmuxError,
    SendmuxTimeoutError,
    TransportError,
    error_from_response,
    may_hold_secret,
    scrub_json,
    scrub_secrets,
)
from sendmux_dispatch.models import (
    Balance,
    BatchResult,
    DeliveryLog,
    EmailMessage,
    Me,
    Metrics,
    SendResult,
    api_limits,
    batch_body,
    wire_messages,
)
from sendmux_dispatch.pacing import Pacer, RateLimitState
from sendmux_dispatch.retry import LONG_WAIT_SECONDS, RetryPolicy

__all__ = [
    "DEFAULT_MANAGEMENT_URL",
    "DEFAULT_SENDING_URL",
    "AsyncSendmuxClient",
    "ClientStats",
    "LogsPage",
    "SendmuxClient",
]

DEFAULT_SENDING_URL = "https://smtp.sendmux.ai/api/v1"
DEFAULT_MANAGEMENT_URL = "https://app.sendmux.ai/api/v1"

#: ETags remembered by ``get_log`` (least recently used dropped first).
ETAG_CACHE_SIZE = 1024
#: Retry delays kept in ``ClientStats.retry_delays`` (the most recent ones).
MAX_RECORDED_DELAYS = 1000

_LOG_STATUSES = frozenset({"pending", "sent", "failed", "rejected"})
_METRICS_WINDOWS = frozenset({"24h", "7d", "30d"})
_GRANULARITIES = frozenset({"hourly", "daily"})
_IDEMPOTENCY_KEY = re.compile(r"[A-Za-z0-9_-]{1,255}")
# Printable ASCII without spaces: what can go into a Bearer header unchanged.
# Checked up front so that httpx never fails while encoding the header (its
# UnicodeEncodeError would carry the key).
_API_KEY = re.compile(r"[\x21-\x7e]+")

_M = TypeVar("_M", bound=BaseModel)
_DateLike = datetime | date | str

logger = logging.getLogger(__name__)


@dataclass
class ClientStats:
    """Counters of one client, safe to update from several threads.

    ``requests`` counts HTTP attempts (retries included), ``retries`` the
    retries made, ``rate_limited`` the 429 answers seen; ``retry_delays``
    holds the most recent waits in seconds (what the retry loop slept, so
    tests and reports need not time anything).
    """

    requests: int = 0
    retries: int = 0
    rate_limited: int = 0
    retry_delays: list[float] = field(default_factory=list)
    last_rate_limit: RateLimitState | None = None

    def __post_init__(self) -> None:
        # Not a dataclass field, so dataclasses.asdict() and copies still work.
        self._lock = threading.Lock()

    def _add_request(self) -> None:
        with self._lock:
            self.requests += 1

    def _add_retry(self, delay: float) -> None:
        with self._lock:
            self.retries += 1
            self.retry_delays.append(delay)
            if len(self.retry_delays) > MAX_RECORDED_DELAYS:
                del self.retry_delays[:-MAX_RECORDED_DELAYS]

    def _add_rate_limited(self) -> None:
        with self._lock:
            self.rate_limited += 1

    def _set_rate_limit(self, state: RateLimitState) -> None:
        with self._lock:
            self.last_rate_limit = state


@dataclass(frozen=True, slots=True)
class LogsPage:
    """One page of ``GET /emails/logs``: the logs, newest first, and the cursor of the next.

    ``next_cursor`` is None on the last page. A caller that pages by hand
    (a sensor with a request budget per check) keeps it to go on later.
    """

    logs: list[DeliveryLog]
    next_cursor: str | None


@dataclass(frozen=True)
class _Call:
    """One logical API call; the retry loop turns it into one or more HTTP attempts."""

    method: Literal["GET", "POST"]
    api: Literal["sending", "management"]
    path: str
    params: Mapping[str, str] | None = None
    body: bytes | None = None
    idempotency_key: str | None = None
    if_none_match: str | None = None
    #: This call's pacer, instead of the client's (dispatch(pacer=...) uses it).
    pacer: Pacer | None = None
    #: Counters this call also updates, besides the client's: one job's own
    #: counts while other jobs share the client (dispatch uses it).
    stats: ClientStats | None = None

    @property
    def label(self) -> str:
        # Method and path only: queries may carry user data, headers the key.
        return f"{self.method} {self.path}"


@dataclass(frozen=True)
class _Reply:
    """A parsed success: the envelope's ``data``, plus what the callers need from it."""

    status: int
    data: Any
    request_id: str | None
    pagination: Mapping[str, Any] | None
    etag: str | None


@dataclass(frozen=True, slots=True)
class _PacerFeedback:
    """What one response tells the call's pacer; the sync or async client tells it."""

    pacer: Pacer
    state: RateLimitState | None
    #: Seconds every acquirer should wait: a 429's Retry-After, capped by the policy.
    pause: float | None


def _check_base_url(name: str, url: str) -> str:
    try:
        parsed = httpx.URL(url)
    except Exception:
        raise ValueError(f"{name} is not a valid URL") from None
    if parsed.userinfo:
        # Never echoed: user:password in a URL is a secret too.
        raise ValueError(f"{name} must not contain credentials (user:password@)")
    host = parsed.host
    allowed = (parsed.scheme == "https" and bool(host)) or (
        parsed.scheme == "http" and _is_loopback(host)
    )
    if not allowed:
        raise ValueError(
            f"{name} must be an https:// URL (plain http is allowed only for a loopback "
            f"host such as 127.0.0.1, ::1 or localhost); got {url!r}"
        )
    if parsed.query or parsed.fragment:
        raise ValueError(f"{name} must not have a query or fragment: {url!r}")
    return str(parsed).rstrip("/")


def _is_loopback(host: str) -> bool:
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_api_key(name: str, key: str | SecretStr | None) -> SecretStr:
    value = key.get_secret_value() if isinstance(key, SecretStr) else key
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{name} must be a non-empty string")
    if not _API_KEY.fullmatch(value):
        # Never echo the value: it is (most likely) a secret.
        raise ValueError(f"{name} must be printable ASCII without spaces or line breaks")
    return SecretStr(value)


def _check_idempotency_key(key: str | None) -> str:
    if key is None:
        # A fresh random key per call, generated once, so that in-process
        # retries of this call replay instead of sending again. The server
        # only deduplicates requests that carry a key, and a retry after a
        # dropped connection is only safe if the first attempt had one.
        return secrets.token_urlsafe(24)
    if not isinstance(key, str) or not _IDEMPOTENCY_KEY.fullmatch(key):
        raise InvalidMessageError(
            [
                FieldIssue(
                    "idempotency_key",
                    "invalid",
                    "must be 1 to 255 characters of A-Z, a-z, 0-9, '_' and '-'",
                )
            ]
        )
    return key


def _format_date(name: str, value: _DateLike) -> str:
    # The API takes ISO 8601 in UTC; date-only values mean a whole UTC day.
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(timezone.utc).replace(tzinfo=None)
        # A naive datetime is taken to be UTC already.
        text = value.isoformat(timespec="milliseconds" if value.microsecond else "seconds")
        return text + "Z"
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, str) and value.strip():
        return value.strip()
    raise ValueError(f"{name} must be a datetime, date or ISO 8601 string, got {value!r}")


def _parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` is delta-seconds or an HTTP-date (RFC 9110 §10.2.3)."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        # A negative delta is a broken header, not "now": absent, so backoff applies.
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(when.timestamp() - time.time(), 0.0)


def _invalid_response(call: _Call, status: int, why: str, request_id: str | None) -> APIError:
    return APIError(
        f"{call.label} answered {status} with {why}",
        status=status,
        code="invalid_response",
        retryable=False,
        request_id=request_id,
    )


class _BaseClient:
    """Everything the sync and async clients share; no I/O happens here."""

    _http: httpx.Client | httpx.AsyncClient

    def __init__(
        self,
        api_key: str,
        *,
        sending_url: str = DEFAULT_SENDING_URL,
        management_url: str = DEFAULT_MANAGEMENT_URL,
        management_api_key: str | None = None,
        timeout: float | httpx.Timeout = 30.0,
        retry: RetryPolicy | None = None,
        pacer: Pacer | None = None,
        user_agent_extra: str | None = None,
    ) -> None:
        self._api_key = _check_api_key("api_key", api_key)
        self._management_api_key = (
            self._api_key
            if management_api_key is None
            else _check_api_key("management_api_key", management_api_key)
        )
        self.sending_url = _check_base_url("sending_url", sending_url)
        self.management_url = _check_base_url("management_url", management_url)
        if isinstance(timeout, httpx.Timeout):
            self._timeout = timeout
        elif isinstance(timeout, (int, float)) and not isinstance(timeout, bool) and timeout > 0:
            self._timeout = httpx.Timeout(float(timeout))
        else:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        self.retry = RetryPolicy() if retry is None else retry
        if not isinstance(self.retry, RetryPolicy):
            raise TypeError("retry must be a RetryPolicy (RetryPolicy.none() disables retries)")
        self.pacer = pacer
        user_agent = f"sendmux-workflows/{__version__} python-httpx/{httpx.__version__}"
        if user_agent_extra:
            if not re.fullmatch(r"[\x20-\x7e]+", user_agent_extra):
                raise ValueError("user_agent_extra must be printable ASCII on one line")
            user_agent = f"{user_agent} {user_agent_extra}"
        self._user_agent = user_agent
        self.stats = ClientStats()
        self._etags: collections.OrderedDict[str, tuple[str, DeliveryLog]] = (
            collections.OrderedDict()
        )
        self._etag_lock = threading.Lock()

    def _secrets(self) -> tuple[str, str]:
        return (self._api_key.get_secret_value(), self._management_api_key.get_secret_value())

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(sending_url={self.sending_url!r}, "
            f"management_url={self.management_url!r}, api_key={self._api_key!r})"
        )

    # -- request building -------------------------------------------------

    def _send_call(
        self, message: EmailMessage | Mapping[str, Any], idempotency_key: str | None
    ) -> _Call:
        key = _check_idempotency_key(idempotency_key)
        validated = EmailMessage.model_validate(message)
        body = validated.model_dump_json(
            by_alias=True, exclude_none=True, exclude={"idempotency_key"}
        ).encode()
        self._check_size(body)
        return _Call("POST", "sending", "/emails/send", body=body, idempotency_key=key)

    def _batch_call(
        self,
        messages: Iterable[EmailMessage | Mapping[str, Any]],
        idempotency_key: str | None,
        per_message_keys: bool,
    ) -> _Call:
        _check_idempotency_key(idempotency_key)  # before the work of validating
        items = list(messages)
        if not 1 <= len(items) <= api_limits.MAX_BATCH_MESSAGES:
            raise InvalidMessageError(
                [
                    FieldIssue(
                        "messages",
                        "invalid_count",
                        f"has {len(items)} messages; a batch takes 1 to "
                        f"{api_limits.MAX_BATCH_MESSAGES}",
                    )
                ]
            )
        validated = wire_messages(items)
        # per_message_keys=True puts each message's own idempotency_key into
        # the body, as the product docs describe; the OpenAPI spec's batch
        # schema has no such field (additionalProperties: false). The header
        # key is what protects the batch either way.
        return self._batch_body_call(
            batch_body(validated, include_idempotency_keys=per_message_keys), idempotency_key
        )

    def _batch_body_call(
        self,
        body: bytes,
        idempotency_key: str | None,
        pacer: Pacer | None = None,
        stats: ClientStats | None = None,
    ) -> _Call:
        key = _check_idempotency_key(idempotency_key)
        self._check_size(body)
        return _Call(
            "POST",
            "sending",
            "/emails/send/batch",
            body=body,
            idempotency_key=key,
            pacer=pacer,
            stats=stats,
        )

    @staticmethod
    def _check_size(body: bytes) -> None:
        if len(body) > api_limits.MAX_REQUEST_BYTES:
            raise InvalidMessageError(
                [
                    FieldIssue(
                        "body",
                        "too_large",
                        f"is {len(body)} bytes; a request may be at most "
                        f"{api_limits.MAX_REQUEST_BYTES} bytes (25 MB): send fewer messages per "
                        "batch or upload attachments and refer to them by attachment_id",
                    )
                ]
            )

    @staticmethod
    def _logs_params(
        status: str | None,
        from_date: _DateLike | None,
        to_date: _DateLike | None,
        search: str | None,
        provider_id: str | None,
        limit: int | None,
    ) -> dict[str, str]:
        params: dict[str, str] = {}
        if status is not None:
            if status not in _LOG_STATUSES:
                raise ValueError(f"status must be one of {sorted(_LOG_STATUSES)}, got {status!r}")
            params["status"] = status
        if from_date is not None:
            params["from_date"] = _format_date("from_date", from_date)
        if to_date is not None:
            params["to_date"] = _format_date("to_date", to_date)
        if search is not None:
            params["search"] = search
        if provider_id is not None:
            params["provider_id"] = provider_id
        if limit is not None:
            if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 100:
                raise ValueError(f"limit is the page size, 1 to 100; got {limit!r}")
            params["limit"] = str(limit)
        return params

    @staticmethod
    def _metrics_call(
        window: str | None,
        from_date: _DateLike | None,
        to_date: _DateLike | None,
        granularity: str | None,
        provider_id: str | None,
    ) -> _Call:
        params: dict[str, str] = {}
        if window is not None:
            if window not in _METRICS_WINDOWS:
                raise ValueError(f"window must be one of {sorted(_METRICS_WINDOWS)}")
            params["window"] = window
        if from_date is not None:
            params["from_date"] = _format_date("from_date", from_date)
        if to_date is not None:
            params["to_date"] = _format_date("to_date", to_date)
        if granularity is not None:
            if granularity not in _GRANULARITIES:
                raise ValueError(f"granularity must be one of {sorted(_GRANULARITIES)}")
            params["granularity"] = granularity
        if provider_id is not None:
            params["provider_id"] = provider_id
        return _Call("GET", "management", "/emails/metrics", params=params)

    def _log_call(self, log_id: str) -> _Call:
        if not isinstance(log_id, str) or not log_id:
            raise ValueError("log_id must be a non-empty string (dlog_...)")
        with self._etag_lock:
            cached = self._etags.get(log_id)
        return _Call(
            "GET",
            "management",
            f"/emails/logs/{quote(log_id, safe='')}",
            if_none_match=cached[0] if cached else None,
        )

    def _build_request(self, call: _Call) -> httpx.Request:
        if call.api == "sending":
            base, key = self.sending_url, self._api_key
        else:
            base, key = self.management_url, self._management_api_key
        headers = {
            "Authorization": f"Bearer {key.get_secret_value()}",
            "User-Agent": self._user_agent,
            "Accept": "application/json",
        }
        if call.body is not None:
            headers["Content-Type"] = "application/json"
        if call.idempotency_key is not None:
            headers["Idempotency-Key"] = call.idempotency_key
        if call.if_none_match is not None:
            headers["If-None-Match"] = call.if_none_match
        # build_request (not httpx.Request) so the client's timeout applies.
        return self._http.build_request(
            call.method, base + call.path, params=call.params, headers=headers, content=call.body
        )

    # -- response handling -------------------------------------------------

    def _paced(self, call: _Call) -> Pacer | None:
        # The pacer guards the Sending API key's 1,800 requests / 60 s. The
        # Management API is limited separately (600 / 60 s), so its responses
        # must not feed a pacer tuned for the other budget.
        if call.api != "sending":
            return None
        return call.pacer if call.pacer is not None else self.pacer

    def _transport_failure(self, call: _Call, exc: httpx.RequestError) -> TransportError:
        # Only our words and the exception's class and text: the httpx
        # exception itself (and its request, and so the key) stays behind.
        detail = scrub_secrets(str(exc), self._secrets()) or type(exc).__name__
        if isinstance(exc, httpx.TimeoutException):
            return SendmuxTimeoutError(
                f"{call.label} timed out ({type(exc).__name__}: {detail})", code="timeout"
            )
        return TransportError(
            f"{call.label} failed without a response ({type(exc).__name__}: {detail})",
            code="transport_error",
        )

    def _counters(self, call: _Call) -> tuple[ClientStats, ...]:
        """The stats ``call`` is counted in: the client's, and the call's own if it has them."""
        if call.stats is None or call.stats is self.stats:
            return (self.stats,)
        return (self.stats, call.stats)

    def _pacer_feedback(self, call: _Call, response: httpx.Response) -> _PacerFeedback | None:
        """Record the rate-limit state; return what the call's pacer should learn.

        No I/O here: for a :class:`~sendmux_dispatch.pacing.RedisPacer` telling
        is a Redis round trip, so the two clients do it, blocking or awaited.
        """
        state = RateLimitState.from_headers(response.headers)
        if state is not None:
            self.stats._set_rate_limit(state)
        pacer = self._paced(call)
        if pacer is None:
            return None
        pause: float | None = None
        if response.status_code == 429:
            retry_after = _parse_retry_after(response.headers.get("retry-after"))
            if retry_after is not None:
                # Capped: a wait beyond the policy is not taken (the call
                # raises), so other calls must not sleep an hour in the pacer.
                pause = min(retry_after, self.retry.max_retry_after)
        if state is None and pause is None:
            return None
        return _PacerFeedback(pacer, state, pause)

    def _handle_response(self, call: _Call, response: httpx.Response) -> _Reply:
        """Stats, then the parsed reply, or the error to raise."""
        status = response.status_code
        secrets = self._secrets()
        # Everything the server says is scrubbed of the keys before it is
        # logged or raised: a proxy may echo the Authorization header.
        request_id = response.headers.get("x-request-id")
        if request_id is not None:
            request_id = scrub_secrets(request_id, secrets)
        logger.debug("%s -> %s (request_id=%s)", call.label, status, request_id)
        if status == 304 and call.if_none_match is not None:
            return _Reply(status, None, request_id, None, response.headers.get("etag"))
        if not 200 <= status < 300:
            retry_after = _parse_retry_after(response.headers.get("retry-after"))
            if status == 429:
                for stats in self._counters(call):
                    stats._add_rate_limited()
            raise error_from_response(
                status,
                response.content,
                request_id=request_id,
                retry_after=retry_after,
                secrets=secrets,
            )
        # Any 2xx is success: the product docs say a send answers 201, the
        # OpenAPI spec says 200.
        envelope: Any = None
        with contextlib.suppress(ValueError):
            envelope = json.loads(response.content)
        if may_hold_secret(response.content, secrets):
            envelope = scrub_json(envelope, secrets)  # per-message errors reach the report
        if not isinstance(envelope, dict) or "data" not in envelope:
            raise _invalid_response(
                call, status, "a body that is not a Sendmux envelope", request_id
            )
        meta = envelope.get("meta")
        if isinstance(meta, dict) and isinstance(meta.get("request_id"), str):
            request_id = meta["request_id"]
        pagination = envelope.get("pagination")
        return _Reply(
            status,
            envelope["data"],
            request_id,
            pagination if isinstance(pagination, dict) else None,
            response.headers.get("etag"),
        )

    @staticmethod
    def _model(call: _Call, reply: _Reply, model: type[_M], **extra: Any) -> _M:
        data = reply.data
        if extra:
            data = {**data, **extra} if isinstance(data, dict) else data
        failure: APIError | None = None
        try:
            return model.model_validate(data)
        except PydanticValidationError as exc:
            failure = _invalid_response(
                call,
                reply.status,
                f"a {model.__name__} the client cannot read ({exc.error_count()} problems)",
                reply.request_id,
            )
        raise failure

    def _log_from_reply(self, call: _Call, log_id: str, reply: _Reply) -> DeliveryLog:
        with self._etag_lock:
            if reply.status == 304:
                cached = self._etags.get(log_id)
                if cached is not None:
                    self._etags.move_to_end(log_id)
                    return cached[1]
        if reply.status == 304:
            raise _invalid_response(call, 304, "Not Modified for an uncached log", reply.request_id)
        log = self._model(call, reply, DeliveryLog)
        with self._etag_lock:
            if reply.etag:
                self._etags[log_id] = (reply.etag, log)
                self._etags.move_to_end(log_id)
                while len(self._etags) > ETAG_CACHE_SIZE:
                    self._etags.popitem(last=False)
            else:
                self._etags.pop(log_id, None)
        return log

    def _page_item(self, call: _Call, reply: _Reply, item: Any) -> DeliveryLog:
        return self._model(
            call, _Reply(reply.status, item, reply.request_id, None, None), DeliveryLog
        )

    def _page_call(
        self,
        *,
        status: str | None,
        from_date: _DateLike | None,
        to_date: _DateLike | None,
        search: str | None,
        provider_id: str | None,
        limit: int | None,
        cursor: str | None,
    ) -> _Call:
        params = self._logs_params(status, from_date, to_date, search, provider_id, limit)
        if cursor is not None:
            if not isinstance(cursor, str) or not cursor:
                raise ValueError("cursor must be a page's next_cursor (a non-empty string)")
            params["cursor"] = cursor
        return _Call("GET", "management", "/emails/logs", params=params)

    def _page(self, call: _Call, reply: _Reply) -> LogsPage:
        if not isinstance(reply.data, list):
            raise _invalid_response(call, reply.status, "a non-list data", reply.request_id)
        logs = [self._page_item(call, reply, item) for item in reply.data]
        return LogsPage(logs, self._next_cursor(reply))

    @staticmethod
    def _next_cursor(reply: _Reply) -> str | None:
        pagination = reply.pagination or {}
        cursor = pagination.get("next_cursor")
        if pagination.get("has_more") and isinstance(cursor, str) and cursor:
            return cursor
        return None

    def _on_retry(self, call: _Call) -> Callable[[float, BaseException | None], None]:
        def record(delay: float, error: BaseException | None) -> None:
            for stats in self._counters(call):
                stats._add_retry(delay)
            hinted = getattr(error, "retry_after", None) is not None
            logger.log(
                logging.WARNING if delay >= LONG_WAIT_SECONDS else logging.INFO,
                "waiting %.1f s before retrying %s (%s) after %s (status=%s, request_id=%s)",
                delay,
                call.label,
                "the server's Retry-After" if hinted else "backoff",
                type(error).__name__,
                getattr(error, "status", None),
                getattr(error, "request_id", None),
            )

        return record

    def _retry_later(self, error: SendmuxError) -> SendmuxError | None:
        """The error to raise instead of ``error`` when its Retry-After is beyond the policy."""
        if self.retry.waits_too_long(error):
            return self.retry.too_long_error(error)
        return None


class SendmuxClient(_BaseClient):
    """Blocking client; one connection pool, safe to share between threads.

    >>> with SendmuxClient("smx_root_...") as client:  # doctest: +SKIP
    ...     client.send({"from": "a@example.com", "to": "b@example.com",
    ...                  "subject": "Hi", "text_body": "Hello"})
    """

    _http: httpx.Client

    def __init__(
        self,
        api_key: str,
        *,
        sending_url: str = DEFAULT_SENDING_URL,
        management_url: str = DEFAULT_MANAGEMENT_URL,
        management_api_key: str | None = None,
        timeout: float | httpx.Timeout = 30.0,
        retry: RetryPolicy | None = None,
        pacer: Pacer | None = None,
        transport: httpx.BaseTransport | None = None,
        user_agent_extra: str | None = None,
    ) -> None:
        super().__init__(
            api_key,
            sending_url=sending_url,
            management_url=management_url,
            management_api_key=management_api_key,
            timeout=timeout,
            retry=retry,
            pacer=pacer,
            user_agent_extra=user_agent_extra,
        )
        self._http = httpx.Client(timeout=self._timeout, transport=transport)

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> SendmuxClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _attempt(self, call: _Call) -> _Reply:
        pacer = self._paced(call)
        if pacer is not None:
            pacer.acquire()
        request = self._build_request(call)
        for stats in self._counters(call):
            stats._add_request()
        failure: TransportError | None = None
        try:
            response = self._http.send(request)
        except httpx.RequestError as exc:
            failure = self._transport_failure(call, exc)
        if failure is not None:
            raise failure  # outside the except: no __context__ pointing at httpx
        feedback = self._pacer_feedback(call, response)
        if feedback is not None:
            if feedback.state is not None:
                feedback.pacer.observe(feedback.state)
            if feedback.pause is not None:
                feedback.pacer.pause(feedback.pause)
        return self._handle_response(call, response)

    def _request(self, call: _Call) -> _Reply:
        retrying = self.retry.retrying(before_sleep=self._on_retry(call))
        later: SendmuxError | None = None
        try:
            return retrying(self._attempt, call)
        except SendmuxError as exc:
            later = self._retry_later(exc)
            if later is None:
                raise
        raise later  # outside the except: the message says it all

    def send(
        self, message: EmailMessage | Mapping[str, Any], *, idempotency_key: str | None = None
    ) -> SendResult:
        """POST /emails/send: queue one message."""
        call = self._send_call(message, idempotency_key)
        reply = self._request(call)
        return self._model(call, reply, SendResult, request_id=reply.request_id)

    def send_batch(
        self,
        messages: Iterable[EmailMessage | Mapping[str, Any]],
        *,
        idempotency_key: str | None = None,
        per_message_keys: bool = False,
    ) -> BatchResult:
        """POST /emails/send/batch: 1 to 100 messages; the result reports each by index."""
        call = self._batch_call(messages, idempotency_key, per_message_keys)
        reply = self._request(call)
        return self._model(call, reply, BatchResult, request_id=reply.request_id)

    def send_batch_body(
        self,
        body: bytes,
        *,
        idempotency_key: str | None = None,
        pacer: Pacer | None = None,
        stats: ClientStats | None = None,
    ) -> BatchResult:
        """POST /emails/send/batch with a body that is already validated and encoded.

        For bodies from :meth:`PlannedBatch.to_json` or
        :func:`~sendmux_dispatch.models.batch_body`: only the size is checked
        here, the messages are not validated again. ``pacer`` paces this call
        instead of the client's pacer; ``stats``, if given, counts this call's
        attempts, retries and 429s as well as the client's :attr:`stats` do.
        """
        call = self._batch_body_call(body, idempotency_key, pacer, stats)
        reply = self._request(call)
        return self._model(call, reply, BatchResult, request_id=reply.request_id)

    def me(self) -> Me:
        """GET /me on the Sending API: the key's team, label and permissions."""
        call = _Call("GET", "sending", "/me")
        return self._model(call, self._request(call), Me)

    def iter_logs(
        self,
        *,
        status: str | None = None,
        from_date: _DateLike | None = None,
        to_date: _DateLike | None = None,
        search: str | None = None,
        provider_id: str | None = None,
        limit: int | None = None,
    ) -> Iterator[DeliveryLog]:
        """Delivery logs, newest first, fetched lazily one page (``limit``) at a time."""
        params = self._logs_params(status, from_date, to_date, search, provider_id, limit)
        return self._iter_logs(params)

    def logs_page(
        self,
        *,
        status: str | None = None,
        from_date: _DateLike | None = None,
        to_date: _DateLike | None = None,
        search: str | None = None,
        provider_id: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> LogsPage:
        """One page of delivery logs (one request), from ``cursor`` (None: the newest)."""
        call = self._page_call(
            status=status,
            from_date=from_date,
            to_date=to_date,
            search=search,
            provider_id=provider_id,
            limit=limit,
            cursor=cursor,
        )
        return self._page(call, self._request(call))

    def _iter_logs(self, params: dict[str, str]) -> Iterator[DeliveryLog]:
        cursor: str | None = None
        while True:
            page = dict(params, cursor=cursor) if cursor else params
            call = _Call("GET", "management", "/emails/logs", params=page)
            found = self._page(call, self._request(call))
            yield from found.logs
            cursor = found.next_cursor
            if cursor is None:
                return

    def get_log(self, log_id: str) -> DeliveryLog:
        """GET /emails/logs/{id}; an unchanged log (304) comes from the ETag cache."""
        call = self._log_call(log_id)
        return self._log_from_reply(call, log_id, self._request(call))

    def metrics(
        self,
        *,
        window: str | None = None,
        from_date: _DateLike | None = None,
        to_date: _DateLike | None = None,
        granularity: str | None = None,
        provider_id: str | None = None,
    ) -> Metrics:
        """GET /emails/metrics: totals, comparison and time series."""
        call = self._metrics_call(window, from_date, to_date, granularity, provider_id)
        return self._model(call, self._request(call), Metrics)

    def balance(self) -> Balance:
        """GET /billing/balance."""
        call = _Call("GET", "management", "/billing/balance")
        return self._model(call, self._request(call), Balance)


class AsyncSendmuxClient(_BaseClient):
    """The asyncio twin of :class:`SendmuxClient`: same arguments, awaitable methods.

    Event loops: a connection pool belongs to the loop that opened its
    connections. Used from another loop (a second ``asyncio.run``, an Airflow
    trigger, a Celery task that makes its own loop), the client notices before
    sending and starts a fresh pool for the new loop. With a ``transport=`` of
    your own it cannot build a fresh one, so it refuses instead, with a
    :class:`~sendmux_dispatch.errors.SendmuxError` (code ``event_loop_changed``)
    raised before any byte is sent. Use it from one loop at a time.
    """

    _http: httpx.AsyncClient

    def __init__(
        self,
        api_key: str,
        *,
        sending_url: str = DEFAULT_SENDING_URL,
        management_url: str = DEFAULT_MANAGEMENT_URL,
        management_api_key: str | None = None,
        timeout: float | httpx.Timeout = 30.0,
        retry: RetryPolicy | None = None,
        pacer: Pacer | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        user_agent_extra: str | None = None,
    ) -> None:
        super().__init__(
            api_key,
            sending_url=sending_url,
            management_url=management_url,
            management_api_key=management_api_key,
            timeout=timeout,
            retry=retry,
            pacer=pacer,
            user_agent_extra=user_agent_extra,
        )
        self._http = httpx.AsyncClient(timeout=self._timeout, transport=transport)
        self._own_transport = transport is None
        #: The loop the pool's connections belong to (set on first use).
        self._loop: asyncio.AbstractEventLoop | None = None

    def _pool_for_this_loop(self) -> None:
        """Make sure the pool belongs to the running loop; before any byte is sent."""
        loop = asyncio.get_running_loop()
        if self._loop is None or self._loop is loop:
            self._loop = loop
            return
        if not self._own_transport:
            raise SendmuxError(
                "this AsyncSendmuxClient was first used in another event loop, and its "
                "transport= was given by the caller, so the client cannot open a fresh "
                "connection pool for this loop; nothing was sent. Create the client (and its "
                "transport) inside the loop that uses it.",
                code="event_loop_changed",
                retryable=False,
            )
        # The old pool's connections are bound to the old loop (usually closed):
        # dropped, not closed, since closing them needs that loop.
        logger.debug("event loop changed: opening a fresh connection pool")
        self._http = httpx.AsyncClient(timeout=self._timeout)
        self._loop = loop

    async def aclose(self) -> None:
        """Close the connection pool."""
        if self._loop is not None and self._loop is not asyncio.get_running_loop():
            # Connections of another loop cannot be closed from this one.
            self._http = httpx.AsyncClient(timeout=self._timeout)
            self._loop = None
        await self._http.aclose()

    async def __aenter__(self) -> AsyncSendmuxClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def _attempt(self, call: _Call) -> _Reply:
        self._pool_for_this_loop()
        pacer = self._paced(call)
        if pacer is not None:
            await pacer.aacquire()
        request = self._build_request(call)
        for stats in self._counters(call):
            stats._add_request()
        failure: TransportError | None = None
        try:
            response = await self._http.send(request)
        except httpx.RequestError as exc:
            failure = self._transport_failure(call, exc)
        if failure is not None:
            raise failure  # outside the except: no __context__ pointing at httpx
        feedback = self._pacer_feedback(call, response)
        if feedback is not None:
            if feedback.state is not None:
                await feedback.pacer.aobserve(feedback.state)
            if feedback.pause is not None:
                await feedback.pacer.apause(feedback.pause)
        return self._handle_response(call, response)

    async def _request(self, call: _Call) -> _Reply:
        retrying = self.retry.async_retrying(before_sleep=self._on_retry(call))
        later: SendmuxError | None = None
        try:
            reply: _Reply = await retrying(self._attempt, call)
            return reply
        except SendmuxError as exc:
            later = self._retry_later(exc)
            if later is None:
                raise
        raise later  # outside the except: the message says it all

    async def send(
        self, message: EmailMessage | Mapping[str, Any], *, idempotency_key: str | None = None
    ) -> SendResult:
        """POST /emails/send: queue one message."""
        call = self._send_call(message, idempotency_key)
        reply = await self._request(call)
        return self._model(call, reply, SendResult, request_id=reply.request_id)

    async def send_batch(
        self,
        messages: Iterable[EmailMessage | Mapping[str, Any]],
        *,
        idempotency_key: str | None = None,
        per_message_keys: bool = False,
    ) -> BatchResult:
        """POST /emails/send/batch: 1 to 100 messages; the result reports each by index."""
        call = self._batch_call(messages, idempotency_key, per_message_keys)
        reply = await self._request(call)
        return self._model(call, reply, BatchResult, request_id=reply.request_id)

    async def send_batch_body(
        self,
        body: bytes,
        *,
        idempotency_key: str | None = None,
        pacer: Pacer | None = None,
        stats: ClientStats | None = None,
    ) -> BatchResult:
        """POST /emails/send/batch with a body that is already validated and encoded.

        For bodies from :meth:`PlannedBatch.to_json` or
        :func:`~sendmux_dispatch.models.batch_body`: only the size is checked
        here, the messages are not validated again. ``pacer`` paces this call
        instead of the client's pacer; ``stats``, if given, counts this call's
        attempts, retries and 429s as well as the client's :attr:`stats` do.
        """
        call = self._batch_body_call(body, idempotency_key, pacer, stats)
        reply = await self._request(call)
        return self._model(call, reply, BatchResult, request_id=reply.request_id)

    async def me(self) -> Me:
        """GET /me on the Sending API: the key's team, label and permissions."""
        call = _Call("GET", "sending", "/me")
        return self._model(call, await self._request(call), Me)

    def iter_logs(
        self,
        *,
        status: str | None = None,
        from_date: _DateLike | None = None,
        to_date: _DateLike | None = None,
        search: str | None = None,
        provider_id: str | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[DeliveryLog]:
        """Delivery logs, newest first, fetched lazily one page (``limit``) at a time."""
        params = self._logs_params(status, from_date, to_date, search, provider_id, limit)
        return self._iter_logs(params)

    async def logs_page(
        self,
        *,
        status: str | None = None,
        from_date: _DateLike | None = None,
        to_date: _DateLike | None = None,
        search: str | None = None,
        provider_id: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> LogsPage:
        """One page of delivery logs (one request), from ``cursor`` (None: the newest)."""
        call = self._page_call(
            status=status,
            from_date=from_date,
            to_date=to_date,
            search=search,
            provider_id=provider_id,
            limit=limit,
            cursor=cursor,
        )
        return self._page(call, await self._request(call))

    async def _iter_logs(self, params: dict[str, str]) -> AsyncIterator[DeliveryLog]:
        cursor: str | None = None
        while True:
            page = dict(params, cursor=cursor) if cursor else params
            call = _Call("GET", "management", "/emails/logs", params=page)
            found = self._page(call, await self._request(call))
            for log in found.logs:
                yield log
            cursor = found.next_cursor
            if cursor is None:
                return

    async def get_log(self, log_id: str) -> DeliveryLog:
        """GET /emails/logs/{id}; an unchanged log (304) comes from the ETag cache."""
        call = self._log_call(log_id)
        return self._log_from_reply(call, log_id, await self._request(call))

    async def metrics(
        self,
        *,
        window: str | None = None,
        from_date: _DateLike | None = None,
        to_date: _DateLike | None = None,
        granularity: str | None = None,
        provider_id: str | None = None,
    ) -> Metrics:
        """GET /emails/metrics: totals, comparison and time series."""
        call = self._metrics_call(window, from_date, to_date, granularity, provider_id)
        return self._model(call, await self._request(call), Metrics)

    async def balance(self) -> Balance:
        """GET /billing/balance."""
        call = _Call("GET", "management", "/billing/balance")
        return self._model(call, await self._request(call), Balance)
