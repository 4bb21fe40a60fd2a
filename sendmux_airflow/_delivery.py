"""Where a send's messages stand: the status check the sensor and the trigger share.

:class:`DeliveryTracker` holds what is known (each message id's log id and
last status) and decides which lookups to make within a request budget; the
two drivers, :func:`check_delivery` (blocking client, the sensor's poke) and
:func:`acheck_delivery` (asyncio client, the trigger), only carry them out.
A message is first found with the logs API's ``search`` (its ``eml_`` id is
the only link from a send to its log); a found log still pending is then
polled by id, where the client's ETag cache turns an unchanged log into a
304. Everything a tracker reports is plain JSON.
"""

from __future__ import annotations

import ast
import itertools
import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from sendmux_dispatch.client import AsyncSendmuxClient, SendmuxClient
from sendmux_dispatch.models import TERMINAL_STATUSES, DeliveryLog
from sendmux_dispatch.models.api_limits import MANAGEMENT_REQUESTS_PER_WINDOW

__all__ = [
    "BAD_STATUSES",
    "DEFAULT_REQUESTS_PER_MINUTE",
    "MAX_LISTED_FAILURES",
    "POLICIES",
    "DeliveryTracker",
    "Lookup",
    "Policy",
    "acheck_delivery",
    "check_delivery",
    "message_id_list",
    "rendered_value",
    "requests_per_check",
]

Policy = Literal["fail", "warn", "ignore"]
POLICIES: tuple[Policy, ...] = ("fail", "warn", "ignore")
#: Half the Management API's 600 a minute: the rest is left to other users of the key.
DEFAULT_REQUESTS_PER_MINUTE = MANAGEMENT_REQUESTS_PER_WINDOW // 2
#: Failed or rejected messages listed by id and reason in a summary; the rest are counted.
MAX_LISTED_FAILURES = 20
#: Logs read from one search page: a search by ``eml_`` id should match one.
_SEARCH_PAGE = 10
#: The terminal statuses a policy acts on.
BAD_STATUSES = ("failed", "rejected")


def rendered_value(text: str) -> Any:
    """What a template rendered an XCom to: JSON, else a Python literal; ValueError if neither."""
    try:
        return json.loads(text)
    except ValueError:
        try:
            return ast.literal_eval(text)
        except (ValueError, SyntaxError):
            raise ValueError(text) from None


def message_id_list(value: Any) -> list[str]:
    """Message ids from a list, a send's XCom, or a rendered string (JSON, Python list, commas)."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = rendered_value(text)
            except ValueError:
                raise ValueError(
                    f"message_ids: cannot read {text[:60]!r} as a list of message ids"
                ) from None
        else:
            value = text.split(",")
    if isinstance(value, dict) and "message_ids" in value:
        value = value["message_ids"]
    if not isinstance(value, Sequence) or isinstance(value, str):
        raise ValueError(
            f"message_ids must be a list of eml_ ids (e.g. send.output['message_ids']), "
            f"got {type(value).__name__}"
        )
    ids: dict[str, None] = {}
    for index, item in enumerate(value):
        if not isinstance(item, str):
            raise ValueError(f"message_ids[{index}] must be a string, got {type(item).__name__}")
        if item.strip():
            ids[item.strip()] = None
    return list(ids)


def requests_per_check(requests_per_minute: int, interval: float) -> int:
    """The lookups one check may make so that checks every ``interval`` s stay under the rate."""
    return max(1, math.floor(requests_per_minute * interval / 60.0))


@dataclass(frozen=True, slots=True)
class Lookup:
    """One request to make: a search for the message (``log_id is None``) or a poll of its log."""

    message_id: str
    log_id: str | None


class DeliveryTracker:
    """The status of each tracked message; which lookups come next; the summary."""

    def __init__(self, message_ids: Sequence[str], policy: Policy = "fail") -> None:
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {', '.join(POLICIES)}, got {policy!r}")
        self.policy = policy
        self._log_ids: dict[str, str | None] = dict.fromkeys(message_ids)
        self._status: dict[str, str] = dict.fromkeys(message_ids, "pending")
        self._reason: dict[str, str | None] = {}
        self._next = 0  # round-robin start, so a small budget still reaches every message
        self.requests = 0

    def _open(self) -> list[str]:
        return [m for m, status in self._status.items() if status not in TERMINAL_STATUSES]

    def lookups(self, budget: int) -> Iterator[Lookup]:
        """Up to ``budget`` lookups for the messages not yet terminal, fairly in turn."""
        waiting = self._open()
        if not waiting:
            return
        start = self._next % len(waiting)
        turn = waiting[start:] + waiting[:start]
        for count, message_id in enumerate(turn[:budget], start=1):
            self._next = start + count
            self.requests += 1
            yield Lookup(message_id, self._log_ids[message_id])

    def found(self, message_id: str, logs: Sequence[DeliveryLog]) -> None:
        """A search's answer; no log yet means the message is still on its way to one."""
        for log in logs:
            if log.message_id == message_id:
                self._log_ids[message_id] = log.id
                self.polled(message_id, log)
                return

    def polled(self, message_id: str, log: DeliveryLog) -> None:
        self._status[message_id] = log.status
        self._reason[message_id] = log.status_reason

    def to_state(self) -> dict[str, Any]:
        """What a later poke needs (JSON): the turn, found log ids, statuses and reasons."""
        return {
            "next": self._next,
            "requests": self.requests,
            "logs": {m: log for m, log in self._log_ids.items() if log is not None},
            "status": {m: s for m, s in self._status.items() if s != "pending"},
            "reason": {m: r for m, r in self._reason.items() if r},
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Take back :meth:`to_state` of an earlier poke (ids no longer tracked are dropped)."""
        self._next = int(state.get("next", 0))
        self.requests = int(state.get("requests", 0))
        for name, into in (("logs", self._log_ids), ("status", self._status)):
            for message_id, value in dict(state.get(name) or {}).items():
                if message_id in into:
                    into[message_id] = value
        self._reason.update(
            (m, r) for m, r in dict(state.get("reason") or {}).items() if m in self._status
        )

    @property
    def done(self) -> bool:
        """Every message terminal; with policy ``fail``, also once one failed or was rejected."""
        statuses = self._status.values()
        if self.policy == "fail" and any(s in BAD_STATUSES for s in statuses):
            return True
        return all(s in TERMINAL_STATUSES for s in statuses)

    def summary(self) -> dict[str, Any]:
        """Counts per status (pending includes messages not found yet), ``done`` and failures."""
        counts = dict.fromkeys(("sent", "failed", "rejected", "pending"), 0)
        failures: list[dict[str, Any]] = []
        for message_id, status in self._status.items():
            counts[status] += 1
            if status in BAD_STATUSES and len(failures) < MAX_LISTED_FAILURES:
                reason = self._reason.get(message_id)
                failures.append({"message_id": message_id, "status": status, "reason": reason})
        return {
            "total": len(self._status),
            **counts,
            "done": self.done,
            "requests": self.requests,
            "failures": failures,
        }


def check_delivery(client: SendmuxClient, tracker: DeliveryTracker, budget: int) -> dict[str, Any]:
    """One check with the blocking client (at most ``budget`` requests); the summary."""
    for lookup in list(tracker.lookups(budget)):
        if lookup.log_id is None:
            logs = client.iter_logs(search=lookup.message_id, limit=_SEARCH_PAGE)
            # islice stops at the page size, so the iterator never asks for a second page.
            tracker.found(lookup.message_id, list(itertools.islice(logs, _SEARCH_PAGE)))
        else:
            tracker.polled(lookup.message_id, client.get_log(lookup.log_id))
    return tracker.summary()


async def acheck_delivery(
    client: AsyncSendmuxClient, tracker: DeliveryTracker, budget: int
) -> dict[str, Any]:
    """One check with the asyncio client (at most ``budget`` requests); the summary."""
    for lookup in list(tracker.lookups(budget)):
        if lookup.log_id is None:
            logs: list[DeliveryLog] = []
            async for log in client.iter_logs(search=lookup.message_id, limit=_SEARCH_PAGE):
                logs.append(log)
                if len(logs) == _SEARCH_PAGE:
                    break
            tracker.found(lookup.message_id, logs)
        else:
            tracker.polled(lookup.message_id, await client.get_log(lookup.log_id))
    return tracker.summary()
