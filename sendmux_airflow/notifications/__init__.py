"""Notifiers of the Sendmux provider (task and DAG callbacks, deadline alerts)."""

from sendmux_airflow.notifications.sendmux import SendmuxNotifier

__all__ = ["SendmuxNotifier"]
