"""The request pipeline both APIs share: auth, permissions, rate limits, envelope headers."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from starlette.requests import Request
from starlette.responses import Response

from sendmux_sandbox.config import SandboxConfig
from sendmux_sandbox.envelope import (
    ApiError,
    error_body,
    json_bytes,
    json_response,
    new_request_id,
    success_body,
)
from sendmux_sandbox.faults import FaultDice
from sendmux_sandbox.ratelimit import FixedWindowLimiter
from sendmux_sandbox.state import SandboxState

__all__ = [
    "Call",
    "Handler",
    "Sandbox",
    "connection",
    "endpoint",
    "etag_of",
    "if_none_match",
    "not_modified",
]

logger = logging.getLogger("sendmux_sandbox")

ApiName = Literal["sending", "management"]


@dataclass
class Sandbox:
    """One running sandbox: its configuration and everything it remembers."""

    config: SandboxConfig
    state: SandboxState
    dice: FaultDice
    limiters: dict[str, FixedWindowLimiter | None]

    @classmethod
    def from_config(cls, config: SandboxConfig) -> Sandbox:
        def limiter(limit: int | None, window: float) -> FixedWindowLimiter | None:
            return None if limit is None else FixedWindowLimiter(limit, window)

        return cls(
            config=config,
            state=SandboxState(config.idempotency_ttl),
            dice=FaultDice(config.faults),
            limiters={
                "sending": limiter(config.rate_limit, config.rate_window),
                "management": limiter(config.management_rate_limit, config.management_rate_window),
            },
        )

    def reset(self) -> None:
        """Forget messages, idempotency records, counters, rate windows; restore start faults."""
        self.state.reset()
        for limiter in self.limiters.values():
            if limiter is not None:
                limiter.reset()
        self.dice.configure(self.config.faults)


@dataclass
class Call:
    """One authenticated API request."""

    request: Request
    request_id: str
    api_key: str
    permissions: frozenset[str]
    #: Headers every response to this request carries.
    headers: dict[str, str] = field(default_factory=dict)

    def ok(
        self,
        data: Any,
        *,
        status: int = 200,
        pagination: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Response:
        return json_response(
            success_body(data, self.request_id, pagination),
            status,
            {**self.headers, **(headers or {})},
        )


Handler = Callable[[Sandbox, Call], Awaitable[Response]]


def _bearer_key(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def endpoint(
    sandbox: Sandbox, api: ApiName, permission: str | None, handler: Handler
) -> Callable[[Request], Awaitable[Response]]:
    """Wrap ``handler`` with auth, the permission check, rate limiting and error rendering."""
    limiter = sandbox.limiters[api]
    keys = sandbox.config.keys
    state = sandbox.state

    async def run(request: Request) -> Response:
        request_id = new_request_id()
        headers = {"X-Request-Id": request_id, "Cache-Control": "no-store"}
        with state.lock:
            state.requests += 1
            state.requests_by_api[api] += 1
        try:
            key = _bearer_key(request)
            if key is None:
                raise ApiError(
                    "authentication_required",
                    "Missing API key: send it as 'Authorization: Bearer smx_...'.",
                )
            permissions = keys.get(key)
            if permissions is None:
                raise ApiError("authentication_required", "The API key is not valid.")
            if limiter is not None:
                decision = limiter.hit(key)
                headers.update(decision.headers())
                if not decision.allowed:
                    with state.lock:
                        state.rate_limited += 1
                    raise ApiError(
                        "rate_limit_exceeded",
                        f"Rate limit of {decision.limit} requests per"
                        f" {limiter.window:g} s exceeded for this API key.",
                        headers={"Retry-After": str(decision.retry_after)},
                    )
            if permission is not None and permission not in permissions:
                raise ApiError(
                    "insufficient_permissions",
                    f"This API key lacks the '{permission}' permission.",
                )
            return await handler(sandbox, Call(request, request_id, key, permissions, headers))
        except ApiError as exc:
            return json_response(
                error_body(exc.detail(), request_id), exc.status, {**headers, **exc.headers}
            )
        except Exception:
            logger.exception("sandbox handler failed")
            error = ApiError("internal_error", "Unexpected sandbox error.")
            return json_response(error_body(error.detail(), request_id), error.status, headers)

    return run


def connection(call: Call) -> dict[str, Any]:
    """The ``Connection`` object both ``/me`` endpoints return."""
    key = call.api_key
    if key.startswith("smx_root_"):
        label = "Sandbox root key"
    elif key.startswith("smx_mbx_"):
        label = "Sandbox send-only key"
    else:
        label = "Sandbox key"
    credential_id = "key_" + hashlib.blake2b(key.encode(), digest_size=12).hexdigest()
    return {
        "team": {"id": "team_sandbox0000000000000000", "name": "Sendmux Sandbox"},
        "credential": {"id": credential_id, "type": "api_key", "name": label},
        "label": label,
        "permissions": sorted(call.permissions),
        "mailboxes": [],
    }


def if_none_match(request: Request, etag: str) -> bool:
    """Whether the request's ``If-None-Match`` names ``etag`` (weak comparison)."""
    header = request.headers.get("if-none-match")
    if not header:
        return False
    bare = etag.removeprefix("W/")
    return any(
        tag.strip() == "*" or tag.strip().removeprefix("W/") == bare for tag in header.split(",")
    )


def not_modified(call: Call, etag: str) -> Response:
    return Response(status_code=304, headers={**call.headers, "ETag": etag})


def etag_of(data: Any) -> str:
    return 'W/"' + hashlib.blake2b(json_bytes(data), digest_size=8).hexdigest() + '"'
