"""Apache Airflow provider for Sendmux: hook, operators, sensor, trigger and notifier on the core.

Only ``sendmux_dispatch`` speaks HTTP; this package turns a ``sendmux``
connection into its clients (:class:`SendmuxHook`) and Airflow tasks into its
jobs; ``sendmux_airflow.email_backend.send_email`` is Airflow's ``[email]
email_backend``. The names below are imported on first use, so Airflow's providers
manager can read ``sendmux_airflow.get_provider_info`` without importing
Airflow's task SDK (or this package's hooks) at discovery time.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from sendmux_dispatch._version import __version__

if TYPE_CHECKING:
    from sendmux_airflow._ledger import TaskStateStoreLedger, ledger_for
    from sendmux_airflow.hooks.sendmux import (
        SendmuxConnectionError,
        SendmuxHook,
        SendmuxSettings,
    )
    from sendmux_airflow.notifications.sendmux import SendmuxNotifier
    from sendmux_airflow.operators.bulk_send import SendmuxBulkSendOperator
    from sendmux_airflow.operators.send_email import SendmuxSendEmailOperator
    from sendmux_airflow.sensors.delivery import SendmuxDeliverySensor
    from sendmux_airflow.triggers.delivery import SendmuxDeliveryTrigger

__all__ = [
    "SendmuxBulkSendOperator",
    "SendmuxConnectionError",
    "SendmuxDeliverySensor",
    "SendmuxDeliveryTrigger",
    "SendmuxHook",
    "SendmuxNotifier",
    "SendmuxSendEmailOperator",
    "SendmuxSettings",
    "TaskStateStoreLedger",
    "__version__",
    "ledger_for",
]

_LAZY = {
    "SendmuxConnectionError": "sendmux_airflow.hooks.sendmux",
    "SendmuxHook": "sendmux_airflow.hooks.sendmux",
    "SendmuxSettings": "sendmux_airflow.hooks.sendmux",
    "SendmuxSendEmailOperator": "sendmux_airflow.operators.send_email",
    "SendmuxBulkSendOperator": "sendmux_airflow.operators.bulk_send",
    "SendmuxNotifier": "sendmux_airflow.notifications.sendmux",
    "SendmuxDeliverySensor": "sendmux_airflow.sensors.delivery",
    "SendmuxDeliveryTrigger": "sendmux_airflow.triggers.delivery",
    "TaskStateStoreLedger": "sendmux_airflow._ledger",
    "ledger_for": "sendmux_airflow._ledger",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
