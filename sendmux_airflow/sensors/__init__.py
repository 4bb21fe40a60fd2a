"""Sensors of the Sendmux provider."""

from sendmux_airflow.sensors.delivery import SendmuxDeliverySensor

__all__ = ["SendmuxDeliverySensor"]
