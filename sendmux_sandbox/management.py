"""Management API handlers: logs, one log, metrics, balance, /me."""

from __future__ import annotations

import time

from starlette.responses import Response

from sendmux_sandbox.api import Call, Sandbox, connection, etag_of, if_none_match, not_modified
from sendmux_sandbox.delivery import (
    STATUSES,
    LogQuery,
    list_logs,
    log_etag,
    log_item,
    metrics,
    parse_date,
)
from sendmux_sandbox.envelope import ApiError

__all__ = ["balance", "get_log", "get_metrics", "list_email_logs", "management_me"]

_MAX_PAGE = 100
_MAX_BUCKETS = 24 * 400
_WINDOWS = {"24h": 86400.0, "7d": 7 * 86400.0, "30d": 30 * 86400.0}


def _query(call: Call, name: str) -> str | None:
    value = call.request.query_params.get(name)
    return value if value not in (None, "") else None


def _date(call: Call, name: str, *, end: bool) -> float | None:
    value = _query(call, name)
    if value is None:
        return None
    try:
        return parse_date(value, end=end)
    except ValueError:
        raise ApiError(
            "invalid_parameter",
            f"The '{name}' parameter must be a valid ISO 8601 date.",
            param=name,
        ) from None


def _choice(call: Call, name: str, choices: tuple[str, ...]) -> str | None:
    value = _query(call, name)
    if value is not None and value not in choices:
        raise ApiError(
            "invalid_parameter",
            f"The '{name}' parameter must be one of: {', '.join(choices)}.",
            param=name,
        )
    return value


async def list_email_logs(sandbox: Sandbox, call: Call) -> Response:
    raw_limit = _query(call, "limit") or "25"
    if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= _MAX_PAGE:
        raise ApiError(
            "invalid_parameter",
            f"The 'limit' parameter must be an integer from 1 to {_MAX_PAGE}.",
            param="limit",
        )
    before_seq = None
    cursor = _query(call, "cursor")
    if cursor is not None:
        before_seq = sandbox.state.seq_of(cursor) if cursor.startswith("dlog_") else None
        if before_seq is None:
            raise ApiError(
                "invalid_parameter", "The 'cursor' parameter is not valid.", param="cursor"
            )
    query = LogQuery(
        limit=int(raw_limit),
        before_seq=before_seq,
        status=_choice(call, "status", STATUSES),
        start=_date(call, "from_date", end=False),
        end=_date(call, "to_date", end=True),
        search=_query(call, "search"),
        provider_id=_query(call, "provider_id"),
    )
    items, has_more = list_logs(sandbox.state, query, time.time(), sandbox.config.delivery_delay)
    pagination: dict[str, object] = {"has_more": has_more}
    if has_more:
        pagination["next_cursor"] = items[-1]["id"]
    return call.ok(items, pagination=pagination)


async def get_log(sandbox: Sandbox, call: Call) -> Response:
    public_id = call.request.path_params["public_id"]
    state = sandbox.state
    delay = sandbox.config.delivery_delay
    now = time.time()
    with state.lock:
        seq = state.seq_of(public_id) if public_id.startswith("dlog_") else None
        if seq is None:
            raise ApiError("not_found", f"Delivery log '{public_id}' was not found.")
        etag = log_etag(state, seq, now, delay)
        if if_none_match(call.request, etag):
            return not_modified(call, etag)
        item = log_item(state, seq, now, delay, detail=True)
    return call.ok(item, headers={"ETag": etag})


async def get_metrics(sandbox: Sandbox, call: Call) -> Response:
    window = _choice(call, "window", tuple(_WINDOWS)) or "24h"
    granularity = _choice(call, "granularity", ("hourly", "daily")) or "daily"
    now = time.time()
    end = _date(call, "to_date", end=True) or now
    start = _date(call, "from_date", end=False)
    if start is None:
        start = end - _WINDOWS[window]
    if start >= end:
        raise ApiError(
            "invalid_parameter", "'from_date' must be before 'to_date'.", param="from_date"
        )
    step = 3600.0 if granularity == "hourly" else 86400.0
    if (end - start) / step > _MAX_BUCKETS:
        raise ApiError(
            "invalid_parameter",
            f"The date range is too long for {granularity} granularity.",
            param="granularity",
        )
    data = metrics(
        sandbox.state,
        now,
        sandbox.config.delivery_delay,
        start=start,
        end=end,
        hourly=granularity == "hourly",
        provider_id=_query(call, "provider_id"),
    )
    return call.ok(data)


async def balance(sandbox: Sandbox, call: Call) -> Response:
    return call.ok(
        {
            "balance": "45.230000",
            "balance_purchased": "100.000000",
            "balance_consumed": "54.770000",
            "currency": "USD",
            "auto_topup": {
                "enabled": False,
                "threshold": None,
                "amount": None,
                "monthly_limit": None,
                "monthly_used": "0.000000",
            },
        }
    )


async def management_me(sandbox: Sandbox, call: Call) -> Response:
    data = connection(call)
    etag = etag_of(data)
    if if_none_match(call.request, etag):
        return not_modified(call, etag)
    return call.ok(data, headers={"ETag": etag})
