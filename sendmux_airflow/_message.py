"""One email as Airflow gives it, sent to each address by the core.

The send operator, the notifier and the ``[email]`` backend all take
EmailOperator's fields (a sender, a subject, bodies, cc/bcc, headers, file
paths), already rendered by Airflow. They share this module: the fields
become one core template (attachments read here, so a missing file fails
before anything is sent), and :func:`send_each` / :func:`asend_each` send it
once per ``to`` address under a job key, then apply the failure rule.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from sendmux_airflow._common import ProgressLog, address_list, check_report
from sendmux_airflow._ledger import ledger_ahead
from sendmux_airflow._rendered import literal_recipients, literal_template
from sendmux_airflow.hooks.sendmux import SendmuxHook
from sendmux_dispatch.dispatch import adispatch, dispatch
from sendmux_dispatch.ledger import Ledger
from sendmux_dispatch.models import Attachment
from sendmux_dispatch.report import DispatchReport

__all__ = ["XCOM_FAILURES", "asend_each", "build_template", "recipients_of", "send_each"]

#: Failures kept (with address and reason) in a report; the rest are counted.
XCOM_FAILURES = 20

Addresses = str | Iterable[str] | None


def recipients_of(to: Addresses, fail: type[Exception]) -> list[str]:
    """``to`` as a list (a string splits at "," or ";"); empty raises ``fail``."""
    recipients = address_list(to)
    if not recipients:
        raise fail("to is empty: give at least one address")
    return recipients


def build_template(
    *,
    sender: str | None,
    no_sender: str,
    subject: str,
    html_body: str | None = None,
    text_body: str | None = None,
    reply_to: str | None = None,
    return_path: str | None = None,
    cc: Addresses = None,
    bcc: Addresses = None,
    custom_headers: Mapping[str, str] | None = None,
    files: Addresses = None,
    delivery_group: str | None = None,
    fail: type[Exception] = ValueError,
) -> dict[str, Any]:
    """The core template of these fields; bad input raises ``fail`` naming the field.

    ``no_sender`` is the message when ``sender`` is empty: where to set one
    differs between a task, a notifier and Airflow's ``[email]`` section.
    """
    if not sender:
        raise fail(no_sender)
    paths = [files] if isinstance(files, str) else list(files or [])
    attachments = []
    for index, path in enumerate(paths):
        try:
            attachments.append(Attachment.from_path(path))
        except (OSError, ValueError) as exc:
            raise fail(f"files[{index}]: cannot attach {path!r}: {exc}") from None
    fields = {
        "from": sender,
        "subject": subject,
        "html_body": html_body,
        "text_body": text_body,
        "reply_to": reply_to,
        "return_path": return_path,
        "cc": address_list(cc),
        "bcc": address_list(bcc),
        "custom_headers": dict(custom_headers or {}),
        "attachments": attachments,
        "delivery_group": delivery_group,
    }
    return {name: value for name, value in fields.items() if value not in (None, [], {})}


def send_each(
    hook: SendmuxHook,
    template: dict[str, Any],
    recipients: list[str],
    *,
    job_key: str,
    log: Any,
    max_failure_ratio: float = 0.0,
    results_path: Path | None = None,
    ledger: Ledger | None = None,
) -> DispatchReport:
    """Send ``template`` to each address; raise (``check_report``) when too few were sent.

    ``results_path``: where dispatch writes one line per recipient (its
    ``results_path``), for a caller that needs the message ids. ``ledger``:
    the send ledger (``ledger_for``), so a retry whose list changed mails
    nobody twice; the caller closes it.
    """
    template, literal = literal_template(template)
    try:
        report = dispatch(
            hook.get_client(),
            template,
            literal_recipients(recipients, literal),
            job_key=job_key,
            on_progress=ProgressLog(log),
            max_failures=XCOM_FAILURES,
            results_path=results_path,
            ledger=ledger,
            ledger_ahead=ledger_ahead(ledger),
        )
    finally:
        hook.close()
    log.info("Sendmux: %s", report.summary_line())
    check_report(report, max_failure_ratio)
    return report


async def asend_each(
    hook: SendmuxHook,
    template: dict[str, Any],
    recipients: list[str],
    *,
    job_key: str,
    log: Any,
    max_failure_ratio: float = 0.0,
) -> DispatchReport:
    """The asyncio twin of :func:`send_each` (a triggerer's event loop, deadline alerts)."""
    template, literal = literal_template(template)
    await hook.aget_settings()  # the connection read without blocking the loop
    async with hook.get_async_client() as client:
        report = await adispatch(
            client,
            template,
            literal_recipients(recipients, literal),
            job_key=job_key,
            on_progress=ProgressLog(log),
            max_failures=XCOM_FAILURES,
        )
    log.info("Sendmux: %s", report.summary_line())
    check_report(report, max_failure_ratio)
    return report
