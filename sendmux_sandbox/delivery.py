"""The delivery lifecycle, as the Management API shows it: logs, ETags, metrics.

A message is ``pending`` for ``delivery_delay`` seconds after it was accepted,
then ``sent``, ``failed`` or ``rejected`` by the address rules; the status is
computed from timestamps when asked, so no background work is needed.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from sendmux_sandbox.state import FAILED, OUTCOME_NAMES, REJECTED, SandboxState

__all__ = [
    "PROVIDER_ID",
    "PROVIDER_NAME",
    "STATUSES",
    "LogQuery",
    "isoformat",
    "list_logs",
    "log_etag",
    "log_item",
    "metrics",
    "parse_date",
]

PROVIDER_ID = "prov_sandbox0000000000000000"
PROVIDER_NAME = "Sendmux Sandbox SMTP"
STATUSES = ("pending", "sent", "failed", "rejected")
_REASONS = {
    FAILED: "550 5.1.1 Mailbox unavailable (sandbox address rule: +fail)",
    REJECTED: "554 5.7.1 Recipient rejected by provider (sandbox address rule: +reject)",
}
_DATE_ONLY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_DAY = 86400.0


def isoformat(ts: float) -> str:
    """RFC 3339 in UTC with milliseconds: ``2026-03-19T10:30:00.123Z``."""
    moment = datetime.fromtimestamp(ts, timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def parse_date(value: str, *, end: bool) -> float:
    """An ISO 8601 date or date-time as Unix time; a date-only ``end`` covers that whole day."""
    text = value.strip()
    if _DATE_ONLY.match(text):
        day = datetime.fromisoformat(text).replace(tzinfo=timezone.utc)
        return (day + timedelta(days=1) if end else day).timestamp()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def _status(state: SandboxState, seq: int, now: float, delay: float) -> str:
    if state.created_at(seq) + delay > now:
        return "pending"
    return OUTCOME_NAMES[state.outcome(seq)]


def log_item(
    state: SandboxState, seq: int, now: float, delay: float, *, detail: bool = False
) -> dict[str, Any]:
    """A ``DeliveryLogItem`` (or, with ``detail``, a ``DeliveryLogDetail``)."""
    msg = state.message(seq)
    pending = msg.created + delay > now
    status = "pending" if pending else OUTCOME_NAMES[msg.outcome]
    copies = msg.extra.copies if msg.extra else ()
    count = 1 + len(copies)
    # A failed send never reached a provider's RCPT stage, so like a pending
    # one it has no recipient snapshot (the spec's null counts).
    snapshot = not pending and msg.outcome != FAILED
    rejected = msg.outcome == REJECTED
    item: dict[str, Any] = {
        "id": msg.log_id,
        "provider_id": PROVIDER_ID,
        "provider_name": PROVIDER_NAME,
        "delivery_group": list(msg.extra.delivery_group)
        if msg.extra and msg.extra.delivery_group
        else None,
        "message_id": msg.message_id,
        "from_email": msg.from_email,
        "sent_from_email": None,
        "to_email": msg.to_email,
        "subject": msg.subject,
        "status": status,
        "status_reason": None if pending else _REASONS.get(msg.outcome),
        "attempts": 0 if pending else 1,
        "sent_at": isoformat(msg.created + delay) if status == "sent" else None,
        "size_bytes": msg.size,
        "created_at": isoformat(msg.created),
        "recipient_count": count,
        "accepted_recipient_count": (0 if rejected else count) if snapshot else None,
        "rejected_recipient_count": (count if rejected else 0) if snapshot else None,
    }
    if detail:
        if snapshot:
            reason = _REASONS[REJECTED] if rejected else None
            item["recipients"] = [
                {
                    "email": email,
                    "type": kind,
                    "status": "rejected" if rejected else "accepted",
                    "reason": reason,
                }
                for email, kind in ((msg.to_email, "to"), *copies)
            ]
        else:
            item["recipients"] = None
    return item


def log_etag(state: SandboxState, seq: int, now: float, delay: float) -> str:
    """A weak ETag that changes when the log's status does."""
    status = _status(state, seq, now, delay)
    digest = hashlib.blake2b(f"{state.log_id(seq)}:{status}".encode(), digest_size=8).hexdigest()
    return f'W/"{digest}"'


@dataclass(frozen=True, slots=True)
class LogQuery:
    limit: int = 25
    before_seq: int | None = None
    status: str | None = None
    start: float | None = None
    end: float | None = None
    search: str | None = None
    provider_id: str | None = None


def _candidates(state: SandboxState, query: LogQuery) -> Iterable[int]:
    if query.search:
        # The usual search is a send's eml_ id (the only link from a send to
        # its log), so look that up directly instead of scanning.
        exact = state.seq_of(query.search.strip())
        if exact is not None and query.search.strip().startswith("eml_"):
            return (exact,)
    seqs = state.seqs_between(query.start, query.end)
    if query.before_seq is not None:
        seqs = range(seqs.start, min(seqs.stop, query.before_seq))
    return reversed(seqs)


def list_logs(
    state: SandboxState, query: LogQuery, now: float, delay: float
) -> tuple[list[dict[str, Any]], bool]:
    """Logs newest first, filtered; the second value says whether more follow."""
    if query.provider_id is not None and query.provider_id != PROVIDER_ID:
        return [], False
    needle = query.search.strip().lower() if query.search else None
    found: list[int] = []
    with state.lock:
        for seq in _candidates(state, query):
            if query.before_seq is not None and seq >= query.before_seq:
                continue
            created = state.created_at(seq)
            if (query.start is not None and created < query.start) or (
                query.end is not None and created >= query.end
            ):
                continue
            if query.status is not None and _status(state, seq, now, delay) != query.status:
                continue
            if needle is not None and not any(
                needle in text.lower() for text in state.search_text(seq)
            ):
                continue
            found.append(seq)
            if len(found) > query.limit:
                break
        items = [log_item(state, seq, now, delay) for seq in found[: query.limit]]
    return items, len(found) > query.limit


def _counts(state: SandboxState, seqs: range, now: float, delay: float) -> dict[str, int]:
    counts = dict.fromkeys(STATUSES, 0)
    pending_from = state.first_pending(now, delay)
    for seq in seqs:
        if seq >= pending_from:
            counts["pending"] += 1
        else:
            counts[OUTCOME_NAMES[state.outcome(seq)]] += 1
    return {"total": len(seqs), **counts}


def _change(current: int, previous: int) -> float:
    if previous == 0:
        return 100.0 if current else 0.0
    return round((current - previous) * 100.0 / previous, 2)


def metrics(
    state: SandboxState,
    now: float,
    delay: float,
    *,
    start: float,
    end: float,
    hourly: bool,
    provider_id: str | None = None,
) -> dict[str, Any]:
    """``EmailMetrics`` for ``[start, end)`` and the period of equal length before it."""
    step = 3600.0 if hourly else _DAY
    first_bucket = start - start % step
    buckets = max(1, int((end - first_bucket + step - 1e-9) // step))
    series = [dict.fromkeys(("total", *STATUSES), 0) for _ in range(buckets)]
    empty = provider_id is not None and provider_id != PROVIDER_ID
    with state.lock:
        current_seqs = range(0) if empty else state.seqs_between(start, end)
        previous_seqs = range(0) if empty else state.seqs_between(start - (end - start), start)
        summary = _counts(state, current_seqs, now, delay)
        previous = _counts(state, previous_seqs, now, delay)
        pending_from = state.first_pending(now, delay)
        for seq in current_seqs:
            bucket = series[min(buckets - 1, int((state.created_at(seq) - first_bucket) // step))]
            bucket["total"] += 1
            status = "pending" if seq >= pending_from else OUTCOME_NAMES[state.outcome(seq)]
            bucket[status] += 1
    return {
        "summary": summary,
        "comparison": {
            **previous,
            "change_pct": {key: _change(summary[key], previous[key]) for key in summary},
        },
        "timeseries": [
            {"timestamp": isoformat(first_bucket + i * step).replace(".000Z", "Z"), **counts}
            for i, counts in enumerate(series)
        ],
    }
