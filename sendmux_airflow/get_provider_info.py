"""What Airflow's providers manager reads about this provider (no Airflow import here).

Loaded through the ``apache_airflow_provider`` entry point in pyproject.toml.
The connection form is declared here (``conn-fields``, ``ui-field-behaviour``)
rather than by the hook's ``get_connection_form_widgets``, which Airflow 3.2
deprecated: the UI then needs neither the hook nor wtforms imported.
"""

from __future__ import annotations

from typing import Any

from sendmux_dispatch.client import DEFAULT_MANAGEMENT_URL, DEFAULT_SENDING_URL

__all__ = ["get_provider_info"]

_INTEGRATION = "Sendmux"


def _nullable(kind: str, label: str, description: str, **schema: Any) -> dict[str, Any]:
    schema = {"type": [kind, "null"], **schema}
    return {"label": label, "description": description, "schema": schema}


def get_provider_info() -> dict[str, Any]:
    """The provider's metadata, in the shape of Airflow's ``provider_info.schema.json``."""
    return {
        # Airflow refuses a provider whose package-name differs from the distribution's.
        "package-name": "sendmux-workflows",
        "name": "Sendmux",
        "description": "Send email through the `Sendmux <https://sendmux.ai>`__ API: "
        "idempotent batches, retries, pacing.",
        "integrations": [
            {
                "integration-name": _INTEGRATION,
                "external-doc-url": "https://sendmux.ai",
                "tags": ["service"],
            }
        ],
        "hooks": [
            {
                "integration-name": _INTEGRATION,
                "python-modules": ["sendmux_airflow.hooks.sendmux"],
            }
        ],
        "operators": [
            {
                "integration-name": _INTEGRATION,
                "python-modules": [
                    "sendmux_airflow.operators.send_email",
                    "sendmux_airflow.operators.bulk_send",
                ],
            }
        ],
        "notifications": ["sendmux_airflow.notifications.sendmux.SendmuxNotifier"],
        "sensors": [
            {
                "integration-name": _INTEGRATION,
                "python-modules": ["sendmux_airflow.sensors.delivery"],
            }
        ],
        "triggers": [
            {
                "integration-name": _INTEGRATION,
                "python-modules": ["sendmux_airflow.triggers.delivery"],
            }
        ],
        "connection-types": [
            {
                "connection-type": "sendmux",
                "hook-class-name": "sendmux_airflow.hooks.sendmux.SendmuxHook",
                "hook-name": "Sendmux",
                "conn-fields": {
                    "management_url": _nullable(
                        "string",
                        "Management API URL",
                        "Base URL of the Management API (logs, metrics, balance).",
                        format="url",
                        default=DEFAULT_MANAGEMENT_URL,
                    ),
                    "management_api_key": _nullable(
                        "string",
                        "Management API key",
                        "A separate key for the Management API; empty: the API key.",
                        format="password",
                    ),
                    "from_email": _nullable(
                        "string",
                        "Default sender",
                        "The From address when a task gives none, e.g. 'Reports <r@example.com>'.",
                    ),
                    "timeout": _nullable(
                        "number",
                        "Timeout (seconds)",
                        "Per HTTP request.",
                        default=30,
                        minimum=1,
                    ),
                    "max_attempts": _nullable(
                        "integer",
                        "Attempts per request",
                        "Tries of one request on a retryable error, the first included "
                        "(1: no retries inside the task; Airflow's retries still apply).",
                        default=6,
                        minimum=1,
                    ),
                    "pacer_url": _nullable(
                        "string",
                        "Pacer Redis URL",
                        "redis://host:6379/0: every task on this API key shares one request "
                        "budget (1,800 a minute), across workers. Empty: each task paces alone.",
                    ),
                    "rate_limit": _nullable(
                        "integer",
                        "Requests per window",
                        "The key's request ceiling (the Sending API's: 1,800). Change it only "
                        "for a key with another limit, or a test sandbox scaled down.",
                        default=1800,
                        minimum=1,
                    ),
                    "rate_window": _nullable(
                        "number",
                        "Rate window (seconds)",
                        "The ceiling's window (the Sending API's: 60; whole seconds with a "
                        "pacer URL).",
                        default=60,
                    ),
                    "ledger_url": _nullable(
                        "string",
                        "Send ledger URL",
                        "redis://host:6379/0 or an absolute SQLite path on the worker: records "
                        "who was mailed, so a retry with an edited list mails nobody twice. "
                        "Empty: Airflow 3.3+'s task state store, else batch keys alone.",
                    ),
                },
                "ui-field-behaviour": {
                    "hidden-fields": ["schema", "port", "login", "extra"],
                    "relabeling": {"host": "Sending API URL", "password": "API key"},
                    "placeholders": {"host": DEFAULT_SENDING_URL, "password": "smx_..."},
                },
            }
        ],
    }
