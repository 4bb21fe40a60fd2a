"""Where a bulk send stands: delivery statuses counted over the send's time window.

Looking up each message (``_delivery.DeliveryTracker``) costs a request per
message: fine for a report to a few hundred people, about three hours at 600
a minute for a send to 100,000. A bulk send instead hands the sensor its
*window* (when sending started and ended, how many messages were queued,
their sender and delivery group), and :class:`WindowTracker` counts the
delivery logs in that window by status, 100 a request:

1. a *census* pages through every log of the window once and counts it by
   status (a census that finds fewer logs than messages is repeated on the
   next check: logs can trail the send);
2. after that, each check pages only through the logs still ``pending`` and
   the ``failed`` and ``rejected`` ones, so a check gets cheaper as the send
   settles; ``sent`` is the census's total minus those.

A log belongs to the send when it lies in the window (widened by
``slack`` seconds each side), has the send's sender (the logs API's
``search`` narrows the pages to it; the address is checked exactly here)
and, when the send had one, its delivery group. Another send from the same
sender in the same window cannot be told apart: its logs are counted too and
the summary's ``other_logs`` says how many more logs than messages were found.
Everything a tracker reports or saves is plain JSON.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from sendmux_airflow._delivery import BAD_STATUSES, MAX_LISTED_FAILURES, Policy, rendered_value
from sendmux_dispatch.client import AsyncSendmuxClient, LogsPage, SendmuxClient
from sendmux_dispatch.models import DeliveryLog

__all__ = [
    "DEFAULT_SLACK",
    "SendWindow",
    "WindowTracker",
    "acheck_window",
    "check_window",
]

#: Seconds the window is widened each side: the worker's clock against the API's.
DEFAULT_SLACK = 5.0
#: Logs per request: the logs API's largest page.
_PAGE = 100
#: What each sweep after the census pages through, in this order.
_OPEN_SWEEPS = ("pending", *BAD_STATUSES)


def _instant(name: str, value: object) -> dt.datetime:
    if isinstance(value, dt.datetime):
        moment = value
    elif isinstance(value, str):
        try:
            moment = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(
                f"send_window.{name}: {value!r} is not an ISO 8601 time "
                "(e.g. 2026-12-03T09:00:00+00:00)"
            ) from None
    else:
        raise ValueError(f"send_window.{name} must be an ISO 8601 time, got {value!r}")
    # A naive time is taken as UTC, which is what the bulk operator writes.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=dt.timezone.utc)


@dataclass(frozen=True, slots=True)
class SendWindow:
    """A bulk send as the delivery sensor sees it (the ``send_window`` XCom)."""

    from_date: dt.datetime
    to_date: dt.datetime
    messages: int
    from_email: str | None = None
    delivery_group: str | None = None

    @classmethod
    def parse(cls, value: Any) -> SendWindow:
        """From the XCom's dict, or the string a template renders it to (JSON or Python)."""
        if isinstance(value, str):
            text = value.strip()
            try:
                value = rendered_value(text)
            except ValueError:
                raise ValueError(
                    f"send_window: cannot read {text[:60]!r} as the bulk send's window "
                    "(pass bulk.output['send_window'])"
                ) from None
        if not isinstance(value, Mapping):
            raise ValueError(
                "send_window must be the bulk send's window, a dict with from_date, to_date "
                f"and messages (bulk.output['send_window']), got {type(value).__name__}"
            )
        missing = [name for name in ("from_date", "to_date", "messages") if name not in value]
        if missing:
            raise ValueError(f"send_window lacks {', '.join(missing)}")
        messages = value["messages"]
        if isinstance(messages, bool) or not isinstance(messages, int) or messages < 0:
            raise ValueError(f"send_window.messages must be a count (0 or more), got {messages!r}")
        start = _instant("from_date", value["from_date"])
        end = _instant("to_date", value["to_date"])
        if end < start:
            raise ValueError("send_window.to_date is before send_window.from_date")
        sender, group = value.get("from_email"), value.get("delivery_group")
        return cls(
            start,
            end,
            messages,
            str(sender).strip().lower() if sender else None,
            str(group) if group else None,
        )

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["from_date"] = self.from_date.isoformat()
        data["to_date"] = self.to_date.isoformat()
        return data


class WindowTracker:
    """The census and the sweeps of one send's window; which page comes next; the summary."""

    def __init__(
        self, window: SendWindow, policy: Policy = "fail", slack: float = DEFAULT_SLACK
    ) -> None:
        self.window = window
        self.policy = policy
        self.slack = float(slack)
        self.requests = 0
        #: Logs the last complete census found, by status (None: no census yet).
        self._census: dict[str, int] | None = None
        #: The sweep under way: what it pages through (None: the census), its cursor,
        #: what it counted so far.
        self._sweep: str | None = None
        self._cursor: str | None = None
        self._counting: dict[str, int] = {}
        self._open: dict[str, int] = {}  # the last complete sweep of each open status
        self._failures: list[dict[str, Any]] = []
        self._seen_failures: set[str] = set()
        self._swept = False  # a sweep completed in this check: wait for the next one

    # -- what to ask ---------------------------------------------------------

    def new_check(self) -> None:
        """Start a check: at most one sweep completes per check (statuses need time)."""
        self._swept = False

    def next_request(self) -> dict[str, Any] | None:
        """The keyword arguments of the next ``logs_page`` call, or None for this check."""
        if self.done or self._swept or self.window.messages == 0:
            return None
        pad = dt.timedelta(seconds=self.slack)
        request: dict[str, Any] = {
            "from_date": self.window.from_date - pad,
            "to_date": self.window.to_date + pad,
            "limit": _PAGE,
        }
        if self.window.from_email:
            request["search"] = self.window.from_email
        if self._sweep is not None:
            request["status"] = self._sweep
        if self._cursor is not None:
            request["cursor"] = self._cursor
        return request

    def _ours(self, log: DeliveryLog) -> bool:
        window = self.window
        if window.from_email and (log.from_email or "").lower() != window.from_email:
            return False
        return not window.delivery_group or window.delivery_group in (log.delivery_group or [])

    def take(self, page: LogsPage) -> None:
        """A page's answer: count its logs; at the end of a sweep, settle what it found."""
        self.requests += 1
        for log in page.logs:
            if not self._ours(log):
                continue
            self._counting[log.status] = self._counting.get(log.status, 0) + 1
            if log.status in BAD_STATUSES:
                self._note_failure(log)
        self._cursor = page.next_cursor
        if self._cursor is None:
            self._end_sweep()

    def _note_failure(self, log: DeliveryLog) -> None:
        key = log.message_id or log.id
        if key in self._seen_failures or len(self._failures) >= MAX_LISTED_FAILURES:
            return
        self._seen_failures.add(key)
        self._failures.append(
            {"message_id": log.message_id, "status": log.status, "reason": log.status_reason}
        )

    def _end_sweep(self) -> None:
        self._swept = True
        counted, self._counting = self._counting, {}
        if self._sweep is None:
            if sum(counted.values()) >= self.window.messages:
                self._census = counted
                self._open = {status: counted.get(status, 0) for status in _OPEN_SWEEPS}
                self._sweep = "pending"
            # Fewer logs than messages: some have yet to appear, so count again next time.
            return
        self._open[self._sweep] = counted.get(self._sweep, 0)
        following = _OPEN_SWEEPS.index(self._sweep) + 1
        self._sweep = _OPEN_SWEEPS[following % len(_OPEN_SWEEPS)]
        # The three sweeps of the open statuses make one round: only pending ends a check.
        self._swept = self._sweep == "pending"

    # -- what is known -------------------------------------------------------

    def _counts(self) -> tuple[dict[str, int], int]:
        messages = self.window.messages
        if self._census is None:
            return {"sent": 0, "failed": 0, "rejected": 0, "pending": messages}, 0
        found = sum(self._census.values())
        pending, failed, rejected = (self._open[s] for s in _OPEN_SWEEPS)
        sent = max(0, found - pending - failed - rejected)
        counts = {"sent": sent, "failed": failed, "rejected": rejected, "pending": pending}
        return counts, found - messages

    @property
    def done(self) -> bool:
        """Every log of the window terminal; with policy ``fail``, once one failed or bounced."""
        if self.window.messages == 0:
            return True
        if self._census is None:
            return False
        counts, _ = self._counts()
        if self.policy == "fail" and counts["failed"] + counts["rejected"]:
            return True
        return counts["pending"] == 0 and self._sweep == "pending" and self._cursor is None

    def summary(self) -> dict[str, Any]:
        """Counts per status over the window, ``done``, requests and at most 20 failures."""
        counts, other = self._counts()
        return {
            "total": self.window.messages,
            **counts,
            "done": self.done,
            "requests": self.requests,
            "failures": list(self._failures),
            "mode": "window",
            "other_logs": max(0, other),
        }

    def to_state(self) -> dict[str, Any]:
        """What a later poke needs (JSON, a few hundred bytes plus the listed failures)."""
        return {
            "requests": self.requests,
            "census": self._census,
            "sweep": self._sweep,
            "cursor": self._cursor,
            "counting": self._counting,
            "open": self._open,
            "failures": self._failures,
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        """Take back :meth:`to_state` of an earlier poke."""
        self.requests = int(state.get("requests", 0))
        census = state.get("census")
        self._census = {str(k): int(v) for k, v in census.items()} if census else None
        sweep = state.get("sweep")
        self._sweep = str(sweep) if sweep in _OPEN_SWEEPS else None
        cursor = state.get("cursor")
        self._cursor = str(cursor) if cursor else None
        self._counting = {str(k): int(v) for k, v in dict(state.get("counting") or {}).items()}
        self._open = {str(k): int(v) for k, v in dict(state.get("open") or {}).items()}
        self._failures = [dict(f) for f in state.get("failures") or []][:MAX_LISTED_FAILURES]
        self._seen_failures = {str(f.get("message_id")) for f in self._failures}


def check_window(client: SendmuxClient, tracker: WindowTracker, budget: int) -> dict[str, Any]:
    """One check with the blocking client (at most ``budget`` requests); the summary."""
    tracker.new_check()
    for _ in range(budget):
        request = tracker.next_request()
        if request is None:
            break
        tracker.take(client.logs_page(**request))
    return tracker.summary()


async def acheck_window(
    client: AsyncSendmuxClient, tracker: WindowTracker, budget: int
) -> dict[str, Any]:
    """One check with the asyncio client (at most ``budget`` requests); the summary."""
    tracker.new_check()
    for _ in range(budget):
        request = tracker.next_request()
        if request is None:
            break
        tracker.take(await client.logs_page(**request))
    return tracker.summary()
