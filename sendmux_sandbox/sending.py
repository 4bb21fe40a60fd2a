"""Sending API handlers: POST /emails/send, POST /emails/send/batch, GET /me."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from sendmux_sandbox.api import Call, Sandbox, connection, etag_of, if_none_match, not_modified
from sendmux_sandbox.envelope import (
    ApiError,
    Issue,
    error_detail,
    json_bytes,
    json_response,
    success_body,
)
from sendmux_sandbox.faults import DroppedResponse, FaultPlan
from sendmux_sandbox.state import message_body_hash
from sendmux_sandbox.validation import validate_batch_shape, validate_message

__all__ = ["read_body", "send_batch", "send_email", "sending_me"]

_FAULT_ERRORS = {
    "error_503": ("service_unavailable", "The sending service is briefly unavailable (injected)."),
    "error_500": ("internal_error", "Unexpected server error (injected)."),
    "error_429": ("rate_limit_exceeded", "Rate limit exceeded (injected)."),
}
_MAX_HEADER_KEY_CHARS = 255


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, or 413 past ``limit`` bytes (the rest is drained, not kept)."""
    declared = request.headers.get("content-length", "")
    too_big = declared.isdigit() and int(declared) > limit
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            too_big = True
        if not too_big:
            chunks.append(chunk)
    if too_big:
        raise ApiError(
            "payload_too_large",
            f"The request body exceeds the {limit // (1024 * 1024)} MB limit.",
        )
    return b"".join(chunks)


def _validation_error(issues: list[Issue], message: str) -> ApiError:
    return ApiError("validation_error", message, param=issues[0][0], errors=issues)


def _idempotency_conflict(in_flight: bool, what: str) -> ApiError:
    if in_flight:
        return ApiError(
            "idempotency_conflict",
            f"A request with this {what} is still being processed; retry shortly.",
            retryable=True,
        )
    return ApiError(
        "idempotency_conflict",
        f"This {what} was already used with a different request body.",
    )


def _accept(sandbox: Sandbox, call: Call, msg: dict[str, Any], header_key: str | None) -> int:
    """Store one valid message, or find the one its per-message key names (lock held)."""
    state = sandbox.state
    key = msg.get("idempotency_key")
    if key is None:
        return state.accept(msg, header_key)
    scope = (call.api_key, key)
    body_hash = message_body_hash(msg)
    known = state.message_key(scope, time.time())
    if known is not None:
        if known[1] != body_hash:
            state.idempotency_conflicts += 1
            raise _idempotency_conflict(False, "idempotency_key")
        state.replays += 1
        return known[0]
    seq = state.accept(msg, key)
    state.remember_message_key(scope, seq, body_hash)
    return seq


def _send_one(sandbox: Sandbox, call: Call, payload: Any, header_key: str | None) -> Any:
    issues = validate_message(payload)
    state = sandbox.state
    with state.lock:
        if issues:
            state.invalid_messages += 1
            raise _validation_error(
                issues, f"The message failed validation ({len(issues)} issues)."
            )
        seq = _accept(sandbox, call, payload, header_key)
        return {"message_id": state.message_id(seq), "status": "queued"}


def _failed_item(index: int, error: dict[str, Any]) -> dict[str, Any]:
    return {"index": index, "message_id": None, "status": "failed", "error": error}


def _send_many(sandbox: Sandbox, call: Call, payload: Any, header_key: str | None) -> Any:
    messages, shape_issues = validate_batch_shape(payload)
    if shape_issues:
        raise _validation_error(shape_issues, "The batch request is malformed.")
    state = sandbox.state
    results: list[dict[str, Any]] = []
    all_issues: list[Issue] = []
    invalid = 0
    failing = sandbox.dice.failing_items(len(messages))
    with state.lock:
        for index, msg in enumerate(messages):
            issues = validate_message(msg)
            if issues:
                invalid += 1
                all_issues.extend((f"messages.{index}.{f}", c, m) for f, c, m in issues)
                error = error_detail(
                    "validation_error",
                    f"Message {index} failed validation ({len(issues)} issues).",
                    param=issues[0][0],
                    errors=issues,
                )
                results.append(_failed_item(index, error))
                continue
            if failing[index]:
                state.faults["item_error"] += 1
                error = error_detail(
                    "service_unavailable",
                    f"Message {index} could not be queued just now (injected); retry it.",
                    retryable=True,
                )
                results.append(_failed_item(index, error))
                continue
            try:
                seq = _accept(sandbox, call, msg, header_key)
            except ApiError as exc:
                results.append(_failed_item(index, exc.detail()))
                continue
            results.append(
                {"index": index, "message_id": state.message_id(seq), "status": "queued"}
            )
        state.invalid_messages += invalid
    if invalid == len(messages):
        raise _validation_error(all_issues, "Every message in the batch failed validation.")
    queued = sum(1 for r in results if r["status"] == "queued")
    return {
        "results": results,
        "summary": {"total": len(results), "queued": queued, "failed": len(results) - queued},
    }


async def _send(sandbox: Sandbox, call: Call, *, batch: bool) -> Response:
    # Counted until the messages are stored (or refused): a reset waits for
    # these, so a request that was still on its way in cannot land afterwards.
    with sandbox.state.accepting():
        accepted = await _receive(sandbox, call, batch=batch)
    if isinstance(accepted, Response):
        return accepted
    response_body, status, plan = accepted
    if plan.after_accept is not None:
        with sandbox.state.lock:
            sandbox.state.faults[plan.after_accept] += 1
        if plan.after_accept == "drop_after_accept":
            return DroppedResponse(
                response_body, status, call.headers, media_type="application/json"
            )
        await asyncio.sleep(sandbox.dice.config.slow_seconds)
    return json_response(response_body, status, call.headers)


async def _receive(
    sandbox: Sandbox, call: Call, *, batch: bool
) -> Response | tuple[bytes, int, FaultPlan]:
    """Store the messages; the response to send, or the body, status and fault plan."""
    request = call.request
    state = sandbox.state
    body = await read_body(request, sandbox.config.max_request_bytes)
    plan = sandbox.dice.roll()
    if plan.error is not None:
        with state.lock:
            state.faults[plan.error] += 1
        code, message = _FAULT_ERRORS[plan.error]
        retry = (
            {}
            if plan.error == "error_500"
            else {"Retry-After": str(sandbox.dice.config.retry_after)}
        )
        raise ApiError(code, message, headers=retry)
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError("invalid_parameter", f"The request body is not valid JSON: {exc}") from None

    header_key = request.headers.get("idempotency-key")
    scope: tuple[str, str] | None = None
    if header_key is not None:
        if not 0 < len(header_key) <= _MAX_HEADER_KEY_CHARS:
            raise ApiError(
                "invalid_parameter",
                f"Idempotency-Key must be 1 to {_MAX_HEADER_KEY_CHARS} characters.",
                param="Idempotency-Key",
            )
        scope = (call.api_key, header_key)
        fingerprint = hashlib.blake2b(
            request.url.path.encode() + b"\n" + body, digest_size=16
        ).digest()
        record = state.begin_request(scope, fingerprint, call.request_id, time.time())
        if record is not None:
            with state.lock:
                if record.fingerprint != fingerprint or record.in_flight:
                    state.idempotency_conflicts += 1
                    raise _idempotency_conflict(
                        record.fingerprint == fingerprint, "Idempotency-Key"
                    )
                state.replays += 1
            # The original response, byte for byte; its X-Request-Id must
            # match the meta.request_id inside it.
            return json_response(
                record.response_body(),
                record.status,
                {**call.headers, "X-Request-Id": record.request_id, "Idempotent-Replayed": "true"},
            )
    try:
        if plan.latency:
            await asyncio.sleep(plan.latency)
        if batch:
            data, status = _send_many(sandbox, call, payload, header_key), 200
        else:
            data, status = _send_one(sandbox, call, payload, header_key), sandbox.config.send_status
        response_body = json_bytes(success_body(data, call.request_id))
        if scope is not None:
            state.finish_request(scope, status, response_body)
    finally:
        if scope is not None:
            state.abandon_request(scope)
    return response_body, status, plan


async def send_email(sandbox: Sandbox, call: Call) -> Response:
    return await _send(sandbox, call, batch=False)


async def send_batch(sandbox: Sandbox, call: Call) -> Response:
    return await _send(sandbox, call, batch=True)


async def sending_me(sandbox: Sandbox, call: Call) -> Response:
    data = connection(call)
    etag = etag_of(data)
    if if_none_match(call.request, etag):
        return not_modified(call, etag)
    return call.ok(data, headers={"ETag": etag})
