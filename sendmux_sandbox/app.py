"""create_app(config): the Starlette app serving both APIs and the admin API on one port."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route

from sendmux_sandbox import management, sending
from sendmux_sandbox.admin import admin_routes
from sendmux_sandbox.api import Sandbox, endpoint, etag_of, if_none_match
from sendmux_sandbox.config import (
    ANALYTICS_READ,
    BILLING_READ,
    EMAIL_SEND,
    LOGS_READ,
    SandboxConfig,
)
from sendmux_sandbox.envelope import ApiError, error_body, json_bytes, json_response, new_request_id
from sendmux_sandbox.faults import quiet_dropped_connections
from sendmux_sandbox.openapi import openapi_document

__all__ = ["ADMIN_PREFIX", "MANAGEMENT_PREFIX", "SENDING_PREFIX", "create_app"]

SENDING_PREFIX = "/sending/api/v1"
MANAGEMENT_PREFIX = "/management/api/v1"
ADMIN_PREFIX = "/_sandbox"


async def _openapi(request: Request) -> Response:
    server_url = str(request.base_url).rstrip("/") + SENDING_PREFIX
    body = json_bytes(openapi_document(server_url))
    etag = etag_of(body.decode())
    headers = {"ETag": etag, "Cache-Control": "public, max-age=3600"}
    if if_none_match(request, etag):
        return Response(status_code=304, headers=headers)
    return json_response(body, 200, headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    # Unknown paths and wrong methods still answer in the API's envelope.
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    if status == 404:
        error = ApiError("not_found", f"No route for {request.method} {request.url.path}.")
    elif status == 405:
        error = ApiError(
            "invalid_parameter", f"Method {request.method} is not allowed here.", status=405
        )
    else:
        error = ApiError("internal_error", "Unexpected sandbox error.", status=status)
    request_id = new_request_id()
    return json_response(
        error_body(error.detail(), request_id),
        error.status,
        {"X-Request-Id": request_id, "Cache-Control": "no-store"},
    )


def create_app(config: SandboxConfig | None = None) -> Starlette:
    """A Sendmux-compatible ASGI app; its :class:`Sandbox` is at ``app.state.sandbox``."""
    sandbox = Sandbox.from_config(config or SandboxConfig())
    sending_routes = [
        Route(
            "/emails/send",
            endpoint(sandbox, "sending", EMAIL_SEND, sending.send_email),
            methods=["POST"],
        ),
        Route(
            "/emails/send/batch",
            endpoint(sandbox, "sending", EMAIL_SEND, sending.send_batch),
            methods=["POST"],
        ),
        Route("/me", endpoint(sandbox, "sending", EMAIL_SEND, sending.sending_me), methods=["GET"]),
        Route("/openapi.json", _openapi, methods=["GET"]),
    ]
    management_routes = [
        Route(
            "/emails/logs",
            endpoint(sandbox, "management", LOGS_READ, management.list_email_logs),
            methods=["GET"],
        ),
        Route(
            "/emails/logs/{public_id}",
            endpoint(sandbox, "management", LOGS_READ, management.get_log),
            methods=["GET"],
        ),
        Route(
            "/emails/metrics",
            endpoint(sandbox, "management", ANALYTICS_READ, management.get_metrics),
            methods=["GET"],
        ),
        Route(
            "/billing/balance",
            endpoint(sandbox, "management", BILLING_READ, management.balance),
            methods=["GET"],
        ),
        Route(
            "/me",
            endpoint(sandbox, "management", None, management.management_me),
            methods=["GET"],
        ),
    ]
    admin = [
        Route(path, handler, methods=methods)
        for path, (handler, methods) in admin_routes(sandbox).items()
    ]
    app = Starlette(
        routes=[
            Mount(SENDING_PREFIX, routes=sending_routes),
            Mount(MANAGEMENT_PREFIX, routes=management_routes),
            Mount(ADMIN_PREFIX, routes=admin),
        ],
        exception_handlers={HTTPException: _http_error},
    )
    app.state.sandbox = sandbox
    quiet_dropped_connections()
    return app
