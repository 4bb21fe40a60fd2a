"""Operators of the Sendmux provider."""

from sendmux_airflow.operators.bulk_send import SendmuxBulkSendOperator
from sendmux_airflow.operators.send_email import SendmuxSendEmailOperator

__all__ = ["SendmuxBulkSendOperator", "SendmuxSendEmailOperator"]
