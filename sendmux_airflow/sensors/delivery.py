"""SendmuxDeliverySensor: wait until an upstream send's messages are delivered."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseSensorOperator, PokeReturnValue
from airflow.sdk.configuration import conf
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSensorTimeout

from sendmux_airflow._delivery import (
    DEFAULT_REQUESTS_PER_MINUTE,
    POLICIES,
    DeliveryTracker,
    Policy,
    check_delivery,
    message_id_list,
    requests_per_check,
)
from sendmux_airflow._delivery_window import (
    DEFAULT_SLACK,
    SendWindow,
    WindowTracker,
    check_window,
)
from sendmux_airflow.hooks.sendmux import SendmuxHook
from sendmux_airflow.triggers.delivery import SendmuxDeliveryTrigger

if TYPE_CHECKING:
    from airflow.sdk import Context

__all__ = ["SendmuxDeliverySensor"]

#: The task state store's key for a rescheduled sensor's progress (JSON, under 64 KB
#: for about 500 messages; [state_store] max_value_storage_bytes). A window's count
#: has its own key: its state is a different shape (and a few hundred bytes).
_STATE_KEY = "sendmux_delivery"
_WINDOW_STATE_KEY = "sendmux_delivery_window"


def _state_key(tracker: DeliveryTracker | WindowTracker) -> str:
    return _WINDOW_STATE_KEY if isinstance(tracker, WindowTracker) else _STATE_KEY


class SendmuxDeliverySensor(BaseSensorOperator):
    """Succeed when every message of a send is ``sent``, ``failed`` or ``rejected``.

    ``message_ids`` (templated) are the send's ``eml_`` ids, usually
    ``send.output["message_ids"]`` (what ``SendmuxSendEmailOperator`` pushes):
    one lookup per message. For a bulk send pass ``send_window`` instead
    (``bulk.output["send_window"]``): the logs of the send's time window are
    counted by status, 100 a request (``window_slack`` seconds of clock
    difference allowed each side).
    ``policy`` decides what a failed or rejected message does: ``"fail"``
    fails the task (as soon as one is seen), ``"warn"`` logs a warning,
    ``"ignore"`` only counts it. Returns the per-status counts (XCom). Works
    in ``mode="poke"``, ``mode="reschedule"`` and with ``deferrable=True``
    (default: ``[operators] default_deferrable``). Each check makes at most
    ``max_requests_per_minute * poke_interval / 60`` Management API requests.

    >>> send = SendmuxSendEmailOperator(task_id="send", ...)   # doctest: +SKIP
    >>> SendmuxDeliverySensor(task_id="delivered", message_ids=send.output["message_ids"])
    """

    template_fields: Sequence[str] = ("message_ids", "send_window")
    ui_color = "#e6f1f2"

    def __init__(
        self,
        *,
        message_ids: Any = None,
        send_window: Any = None,
        window_slack: float = DEFAULT_SLACK,
        policy: Policy = "fail",
        sendmux_conn_id: str = SendmuxHook.default_conn_name,
        max_requests_per_minute: int = DEFAULT_REQUESTS_PER_MINUTE,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("poke_interval", 30.0)
        super().__init__(**kwargs)
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {', '.join(POLICIES)}, got {policy!r}")
        if isinstance(max_requests_per_minute, bool) or not 1 <= max_requests_per_minute <= 600:
            raise ValueError(
                "max_requests_per_minute must be 1 to 600 (the Management API's limit), "
                f"got {max_requests_per_minute!r}"
            )
        if (message_ids is None) == (send_window is None):
            raise ValueError(
                "give message_ids (a send's ids) or send_window (a bulk send's window), "
                "exactly one of them"
            )
        self.message_ids = message_ids
        self.send_window = send_window
        self.window_slack = float(window_slack)
        self.policy: Policy = policy
        self.sendmux_conn_id = sendmux_conn_id
        self.max_requests_per_minute = max_requests_per_minute
        self.deferrable = deferrable
        self._tracker: DeliveryTracker | WindowTracker | None = None
        self._hook: SendmuxHook | None = None

    def _ids(self) -> list[str]:
        try:
            ids = message_id_list(self.message_ids)
        except ValueError as exc:
            raise AirflowFailException(str(exc)) from None
        if not ids:
            raise AirflowFailException("message_ids is empty: nothing to wait for")
        return ids

    def _window(self) -> SendWindow | None:
        if self.send_window is None:
            return None
        try:
            return SendWindow.parse(self.send_window)
        except ValueError as exc:
            raise AirflowFailException(str(exc)) from None

    def _new_tracker(self) -> DeliveryTracker | WindowTracker:
        window = self._window()
        if window is not None:
            return WindowTracker(window, self.policy, self.window_slack)
        return DeliveryTracker(self._ids(), self.policy)

    def _budget(self) -> int:
        return requests_per_check(self.max_requests_per_minute, float(self.poke_interval))

    def poke(self, context: Context) -> PokeReturnValue:
        # Kept across pokes in one process (mode="poke"). A rescheduled poke is a new
        # process: on Airflow 3.3+ the tracker's state rides in the task state store,
        # so each poke goes on where the last one stopped instead of asking again.
        store = context.get("task_state_store") if self.reschedule else None
        tracker = self._tracker
        if tracker is None:
            self._tracker = tracker = self._new_tracker()
            saved = store.get(_state_key(tracker)) if store is not None else None
            if isinstance(saved, dict):
                tracker.restore(saved)
        # One hook (and client) for every poke of this run: its ETag cache is what
        # turns a poll of an unchanged log into a 304. execute() closes it.
        if self._hook is None:
            self._hook = SendmuxHook(self.sendmux_conn_id)
        client = self._hook.get_client()
        if isinstance(tracker, WindowTracker):
            summary = check_window(client, tracker, self._budget())
        else:
            summary = check_delivery(client, tracker, self._budget())
        if store is not None and not summary["done"]:
            store.set(_state_key(tracker), tracker.to_state())
        self._log_counts(summary)
        if not summary["done"]:
            return PokeReturnValue(is_done=False)
        return PokeReturnValue(is_done=True, xcom_value=self._verdict(summary))

    def execute(self, context: Context) -> Any:
        if not self.deferrable:
            try:
                return super().execute(context)
            finally:
                if self._hook is not None:
                    self._hook.close()
        window = self._window()
        ids = [] if window is not None else self._ids()
        timeout = float(self.timeout) if self.timeout is not None else None
        self.defer(
            trigger=SendmuxDeliveryTrigger(
                message_ids=ids,
                send_window=None if window is None else window.to_json(),
                window_slack=self.window_slack,
                sendmux_conn_id=self.sendmux_conn_id,
                poll_interval=float(self.poke_interval),
                policy=self.policy,
                deadline=None if timeout is None else time.time() + timeout,
                max_requests_per_minute=self.max_requests_per_minute,
            ),
            method_name="execute_complete",
            timeout=None if timeout is None else dt.timedelta(seconds=timeout),
        )

    def execute_complete(self, context: Context, event: dict[str, Any]) -> dict[str, Any]:
        summary = event.get("summary") or {}
        if event.get("status") == "timeout":
            raise AirflowSensorTimeout(
                f"Sendmux delivery not settled in time: {event.get('message')}"
            )
        if event.get("status") != "done":
            raise AirflowException(f"Sendmux delivery check failed: {event.get('message')}")
        self._log_counts(summary)
        return self._verdict(summary)

    def _log_counts(self, summary: dict[str, Any]) -> None:
        self.log.info(
            "Sendmux delivery: %d of %d sent, %d failed, %d rejected, %d pending (%d requests)",
            *(summary[k] for k in ("sent", "total", "failed", "rejected", "pending", "requests")),
        )

    def _verdict(self, summary: dict[str, Any]) -> dict[str, Any]:
        bad = summary["failed"] + summary["rejected"]
        if bad and self.policy != "ignore":
            reasons = sorted({str(f["reason"]) for f in summary["failures"]})
            why = (
                f"{summary['failed']} failed and {summary['rejected']} rejected of "
                f"{summary['total']} messages; reasons: {'; '.join(reasons) or 'none given'}"
            )
            if self.policy == "fail":
                # Another try cannot undo a bounce: fail without retries.
                raise AirflowFailException(f"Sendmux delivery: {why}")
            self.log.warning("Sendmux delivery: %s", why)
        return summary
