"""Triggers of the Sendmux provider (run by Airflow's triggerer)."""

from sendmux_airflow.triggers.delivery import SendmuxDeliveryTrigger

__all__ = ["SendmuxDeliveryTrigger"]
