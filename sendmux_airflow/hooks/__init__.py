"""Hooks of the Sendmux provider."""

from sendmux_airflow.hooks.sendmux import SendmuxConnectionError, SendmuxHook, SendmuxSettings

__all__ = ["SendmuxConnectionError", "SendmuxHook", "SendmuxSettings"]
