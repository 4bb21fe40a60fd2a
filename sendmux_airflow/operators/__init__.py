"""Operators of the Sendmux provider."""

from sendmux_airflow.operators.send_email import SendmuxSendEmailOperator

__all__ = ["SendmuxSendEmailOperator"]
