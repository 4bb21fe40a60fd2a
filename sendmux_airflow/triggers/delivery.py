"""SendmuxDeliveryTrigger: waits in the triggerer until a send's messages are delivered."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from sendmux_airflow._delivery import (
    DEFAULT_REQUESTS_PER_MINUTE,
    DeliveryTracker,
    Policy,
    acheck_delivery,
    requests_per_check,
)
from sendmux_airflow._delivery_window import (
    DEFAULT_SLACK,
    SendWindow,
    WindowTracker,
    acheck_window,
)
from sendmux_airflow.hooks.sendmux import SendmuxHook
from sendmux_dispatch.errors import SendmuxError

__all__ = ["SendmuxDeliveryTrigger"]


class SendmuxDeliveryTrigger(BaseTrigger):
    """Poll the delivery logs of ``message_ids`` with the async client until they settle.

    With ``send_window`` (a bulk send's window as JSON, ``SendWindow.to_json``)
    the logs of the window are counted by status instead (``message_ids`` empty).

    Keyword arguments are primitives only (what the triggerer stores). The
    deadline is absolute (Unix time), so a trigger restarted on another
    triggerer keeps the sensor's timeout instead of starting it again. One
    event, plain JSON: ``{"status": "done" | "timeout" | "error", "summary":
    {...counts...}, "message": str}``.
    """

    def __init__(
        self,
        *,
        message_ids: Sequence[str] = (),
        send_window: dict[str, Any] | None = None,
        window_slack: float = DEFAULT_SLACK,
        sendmux_conn_id: str = SendmuxHook.default_conn_name,
        poll_interval: float = 60.0,
        policy: Policy = "fail",
        deadline: float | None = None,
        max_requests_per_minute: int = DEFAULT_REQUESTS_PER_MINUTE,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # Airflow's BaseTrigger
        self.message_ids = list(message_ids)
        self.send_window = None if send_window is None else dict(send_window)
        self.window_slack = float(window_slack)
        self.sendmux_conn_id = sendmux_conn_id
        self.poll_interval = float(poll_interval)
        self.policy: Policy = policy
        self.deadline = deadline
        self.max_requests_per_minute = int(max_requests_per_minute)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "message_ids": list(self.message_ids),
                "send_window": self.send_window,
                "window_slack": self.window_slack,
                "sendmux_conn_id": self.sendmux_conn_id,
                "poll_interval": self.poll_interval,
                "policy": self.policy,
                "deadline": self.deadline,
                "max_requests_per_minute": self.max_requests_per_minute,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        budget = requests_per_check(self.max_requests_per_minute, self.poll_interval)
        hook = SendmuxHook(self.sendmux_conn_id)
        tracker: DeliveryTracker | WindowTracker = DeliveryTracker(self.message_ids, self.policy)
        summary = tracker.summary()
        try:
            if self.send_window is not None:
                window = SendWindow.parse(self.send_window)
                tracker = WindowTracker(window, self.policy, self.window_slack)
                summary = tracker.summary()
            # The connection lookup may hit a secrets backend: keep it off the loop.
            client = await asyncio.to_thread(hook.get_async_client)
            async with client:
                while True:
                    if isinstance(tracker, WindowTracker):
                        summary = await acheck_window(client, tracker, budget)
                    else:
                        summary = await acheck_delivery(client, tracker, budget)
                    if summary["done"]:
                        yield _event("done", summary, "")
                        return
                    if self.deadline is not None and time.time() >= self.deadline:
                        pending = f"{summary['pending']} of {summary['total']} messages"
                        yield _event("timeout", summary, f"{pending} still pending at the deadline")
                        return
                    self.log.info(
                        "Sendmux: %d sent, %d failed, %d rejected, %d pending",
                        *(summary[k] for k in ("sent", "failed", "rejected", "pending")),
                    )
                    await asyncio.sleep(self.poll_interval)
        except (SendmuxError, ValueError) as exc:
            # The core's errors never hold the key; the event carries only their text.
            message = f"{type(exc).__name__}: {exc}"
            yield _event("error", summary, message)


def _event(status: str, summary: dict[str, Any], message: str) -> TriggerEvent:
    """The trigger's one event: plain JSON (the summary is built of str, int and bool)."""
    payload = {"status": status, "summary": summary, "message": message}
    return TriggerEvent(payload)  # type: ignore[no-untyped-call]  # untyped in Airflow
