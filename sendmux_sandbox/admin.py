"""The admin API under ``/_sandbox/`` (no auth): stats, messages, faults, reset.

Admin answers are plain JSON, not the Sendmux envelope: they belong to the
sandbox, not to the API it imitates.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from sendmux_sandbox.api import Sandbox
from sendmux_sandbox.config import FaultConfig
from sendmux_sandbox.delivery import isoformat
from sendmux_sandbox.state import OUTCOME_NAMES, Extra

__all__ = ["admin_routes"]

_DEFAULT_MESSAGES = 1000
#: How long a reset waits for send requests that are still storing their messages.
_DRAIN_SECONDS = 60.0
Endpoint = Callable[[Request], Awaitable[Response]]


def stats(sandbox: Sandbox) -> dict[str, Any]:
    state = sandbox.state
    with state.lock:
        faults = dict(state.faults)
        return {
            "requests": state.requests,
            "requests_by_api": dict(state.requests_by_api),
            "accepted_messages": len(state),
            "unique_recipients": state.unique_recipients,
            "duplicate_deliveries": state.duplicate_deliveries,
            "rate_limited": state.rate_limited,
            "faults_injected": sum(faults.values()),
            "faults_by_kind": faults,
            "idempotent_replays": state.replays,
            "idempotency_conflicts": state.idempotency_conflicts,
            "invalid_messages": state.invalid_messages,
            "by_status": state.counts(time.time(), sandbox.config.delivery_delay),
        }


def messages(sandbox: Sandbox, to: str | None, limit: int) -> list[dict[str, Any]]:
    state = sandbox.state
    now = time.time()
    delay = sandbox.config.delivery_delay
    with state.lock:
        total = len(state)
        seqs = state.seqs_to(to) if to else list(range(max(0, total - limit), total))
        found = []
        for seq in seqs:
            msg = state.message(seq)
            pending = msg.created + delay > now
            found.append(
                {
                    "id": msg.message_id,
                    "log_id": msg.log_id,
                    "to": msg.to_email,
                    "from": msg.from_email,
                    "subject": msg.subject,
                    "created_at": isoformat(msg.created),
                    "idempotency_key": msg.idempotency_key,
                    "status": "pending" if pending else OUTCOME_NAMES[msg.outcome],
                    **_extras(msg.extra),
                }
            )
    return found


def _extras(extra: Extra | None) -> dict[str, Any]:
    """The rarer fields, each only when the message had it (a test asks for what it sent)."""
    if extra is None:
        return {}
    found: dict[str, Any] = {}
    for kind in ("cc", "bcc"):
        if copies := [email for email, which in extra.copies if which == kind]:
            found[kind] = copies
    if extra.delivery_group:
        found["delivery_group"] = list(extra.delivery_group)
    if extra.reply_to:
        found["reply_to"] = extra.reply_to
    if extra.return_path:
        found["return_path"] = extra.return_path
    if extra.attachments:
        found["attachments"] = list(extra.attachments)
    return found


def _bad_request(message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=400)


def admin_routes(sandbox: Sandbox) -> dict[str, tuple[Endpoint, list[str]]]:
    """Path -> (endpoint, methods) for the admin API."""

    async def get_stats(request: Request) -> JSONResponse:
        return JSONResponse(stats(sandbox))

    async def get_messages(request: Request) -> JSONResponse:
        raw_limit = request.query_params.get("limit", str(_DEFAULT_MESSAGES))
        if not raw_limit.isdigit():
            return _bad_request("limit must be a non-negative integer")
        found = messages(sandbox, request.query_params.get("to"), int(raw_limit))
        return JSONResponse({"count": len(found), "messages": found})

    async def faults(request: Request) -> JSONResponse:
        if request.method == "POST":
            raw = await request.body()
            try:
                data = json.loads(raw) if raw.strip() else {}
                if not isinstance(data, dict):
                    raise ValueError("the body must be a JSON object of FaultConfig fields")
                sandbox.dice.configure(FaultConfig.from_dict(data))
            except ValueError as exc:
                return _bad_request(str(exc))
        return JSONResponse({"faults": sandbox.dice.config.to_dict()})

    async def reset(request: Request) -> JSONResponse:
        # Let requests that are still storing messages (a fault's latency, a
        # slow client) finish first, or they would land in the fresh state.
        # Those sleeping *after* acceptance change nothing and are not waited for.
        deadline = time.monotonic() + _DRAIN_SECONDS
        # Polled, not an asyncio.Event: SandboxState is guarded by a thread
        # lock and knows nothing of event loops.
        while sandbox.state.accepting_requests and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.005)
        drained = not sandbox.state.accepting_requests
        sandbox.reset()
        return JSONResponse(
            {"reset": True, "drained": drained, "faults": sandbox.dice.config.to_dict()}
        )

    return {
        "/stats": (get_stats, ["GET"]),
        "/messages": (get_messages, ["GET"]),
        "/faults": (faults, ["GET", "POST"]),
        "/reset": (reset, ["POST"]),
    }
