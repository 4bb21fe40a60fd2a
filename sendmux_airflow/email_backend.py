"""Airflow's ``[email] email_backend`` through Sendmux.

::

    [email]
    email_backend = sendmux_airflow.email_backend.send_email
    email_conn_id = sendmux_default
    from_email = Airflow <airflow@example.com>

Airflow then sends its own alert emails (``email_on_failure``,
``email_on_retry``, ``airflow.utils.email.send_email``) with this function.
Unlike the SendGrid backend, which logs a failed send and carries on, this
one raises: an alert that was not sent is an error the caller must see.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from typing import Any

from sendmux_airflow._message import build_template, recipients_of, send_each
from sendmux_airflow.hooks.sendmux import SendmuxHook
from sendmux_dispatch.keys import job_key_for

__all__ = ["send_email"]

log = logging.getLogger(__name__)

# Airflow's default [email] email_conn_id, passed whenever the user set none:
# an SMTP connection, never a Sendmux one, so it stands for "not chosen".
_AIRFLOW_DEFAULT_CONN_ID = "smtp_default"


def send_email(
    to: str | Iterable[str],
    subject: str,
    html_content: str,
    files: list[str] | None = None,
    dryrun: bool = False,
    cc: str | Iterable[str] | None = None,
    bcc: str | Iterable[str] | None = None,
    mime_subtype: str = "mixed",
    mime_charset: str = "utf-8",
    conn_id: str | None = None,
    from_email: str | None = None,
    custom_headers: dict[str, Any] | None = None,
    **kwargs: Any,
) -> None:
    """Send one email to each ``to`` address through Sendmux; raise if any was not sent.

    ``to``, ``cc`` and ``bcc`` are lists or strings of addresses split at ","
    or ";". ``cc`` and ``bcc`` go on every message. The sender is
    ``from_email`` (Airflow passes ``[email] from_email``), else the
    connection's ``from_email`` extra. ``conn_id`` is the ``sendmux``
    connection (``[email] email_conn_id``; Airflow's default ``smtp_default``
    means ``sendmux_default``). ``dryrun`` checks the message and its files
    without sending. ``mime_subtype`` and ``mime_charset`` are accepted for
    Airflow's signature and ignored: Sendmux builds the MIME message (UTF-8).
    Bad input raises ``ValueError`` naming the field; a send that failed for
    any recipient raises ``AirflowException`` with counts and error codes.
    """
    del mime_subtype, mime_charset, kwargs  # Airflow's signature; nothing to do with them
    if not conn_id or conn_id == _AIRFLOW_DEFAULT_CONN_ID:
        conn_id = SendmuxHook.default_conn_name
    recipients = recipients_of(to, ValueError)
    hook = SendmuxHook(conn_id)
    template = build_template(
        sender=from_email or hook.settings.from_email,
        no_sender=f"no sender: set [email] from_email in Airflow's configuration or the "
        f"'from_email' extra of connection {conn_id!r}",
        subject=subject,
        html_body=html_content,
        cc=cc,
        bcc=bcc,
        custom_headers={str(name): str(value) for name, value in (custom_headers or {}).items()},
        files=files,
    )
    if dryrun:
        log.info("Sendmux: dryrun, %d messages checked and not sent", len(recipients))
        return
    # A call is one email, and nothing in Airflow's signature names the event
    # it reports, so each call is its own job: retries inside it replay under
    # its keys, a second call is a second email (as with SMTP).
    job_key = job_key_for("email_backend", uuid.uuid4().hex)
    send_each(hook, template, recipients, job_key=job_key, log=log)
