"""SendmuxSendEmailOperator: EmailOperator's fields, one message per address, sent by the core."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException

from sendmux_airflow._rendered import literal_recipients, literal_template
from sendmux_airflow.hooks.sendmux import SendmuxHook
from sendmux_airflow.operators._common import ProgressLog, address_list, check_report
from sendmux_dispatch.dispatch import dispatch
from sendmux_dispatch.keys import job_key_for
from sendmux_dispatch.models import Attachment

if TYPE_CHECKING:
    from airflow.sdk import Context

__all__ = ["SendmuxSendEmailOperator"]

#: Failures kept (with address and reason) in the XCom summary; the rest are counted.
XCOM_FAILURES = 20


class SendmuxSendEmailOperator(BaseOperator):
    """Send one email to each ``to`` address through Sendmux, in idempotent batches.

    ``cc`` and ``bcc`` go on every message (so they get one copy per ``to``
    address); ``from_email`` defaults to the connection's ``from_email``;
    ``html_body`` may be a ``.html`` template file; ``files`` are paths to
    attach. Returns the :class:`~sendmux_dispatch.DispatchReport` as a dict
    (counts, at most 20 failures). The job key is the task instance's
    (dag_id, task_id, run_id, map_index), never the try number, so a retry
    replays what try 1 sent instead of mailing anyone twice. The task fails
    when nothing was sent, or when the share of recipients not sent (failed,
    invalid, not attempted) is above ``max_failure_ratio`` (default 0: any).

    >>> SendmuxSendEmailOperator(                              # doctest: +SKIP
    ...     task_id="report", to=["ceo@example.com", "cfo@example.com"],
    ...     subject="Sales {{ ds }}", html_body="report.html", files=["/tmp/sales.csv"])
    """

    template_fields: Sequence[str] = (
        *("to", "cc", "bcc", "from_email", "reply_to", "subject", "html_body", "text_body"),
        *("custom_headers", "files", "delivery_group"),
    )
    template_ext: Sequence[str] = (".html",)
    template_fields_renderers = {"html_body": "html", "custom_headers": "json"}  # noqa: RUF012
    ui_color = "#e6f1f2"

    def __init__(
        self,
        *,
        to: str | Sequence[str],
        subject: str,
        html_body: str | None = None,
        text_body: str | None = None,
        cc: str | Sequence[str] | None = None,
        bcc: str | Sequence[str] | None = None,
        from_email: str | None = None,
        reply_to: str | None = None,
        custom_headers: Mapping[str, str] | None = None,
        files: str | Sequence[str] | None = None,
        delivery_group: str | None = None,
        max_failure_ratio: float = 0.0,
        sendmux_conn_id: str = SendmuxHook.default_conn_name,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not 0.0 <= max_failure_ratio <= 1.0:
            raise ValueError(f"max_failure_ratio must be between 0 and 1, got {max_failure_ratio}")
        self.to, self.cc, self.bcc = to, cc, bcc
        self.from_email, self.reply_to = from_email, reply_to
        self.subject, self.html_body, self.text_body = subject, html_body, text_body
        self.custom_headers, self.files = custom_headers, files
        self.delivery_group = delivery_group
        self.max_failure_ratio = max_failure_ratio
        self.sendmux_conn_id = sendmux_conn_id

    def _template(self, hook: SendmuxHook) -> dict[str, Any]:
        sender = self.from_email or hook.settings.from_email
        if not sender:
            raise AirflowFailException(
                f"no sender: set from_email on the task or the 'from_email' extra of "
                f"connection {self.sendmux_conn_id!r}"
            )
        paths = [self.files] if isinstance(self.files, str) else list(self.files or [])
        attachments = []
        for index, path in enumerate(paths):
            try:
                attachments.append(Attachment.from_path(path))
            except (OSError, ValueError) as exc:
                raise AirflowFailException(
                    f"files[{index}]: cannot attach {path!r}: {exc}"
                ) from None
        fields = {
            "from": sender,
            "subject": self.subject,
            "html_body": self.html_body,
            "text_body": self.text_body,
            "reply_to": self.reply_to,
            "cc": address_list(self.cc),
            "bcc": address_list(self.bcc),
            "custom_headers": dict(self.custom_headers or {}),
            "attachments": attachments,
            "delivery_group": self.delivery_group,
        }
        return {name: value for name, value in fields.items() if value not in (None, [], {})}

    def execute(self, context: Context) -> dict[str, Any]:
        recipients = address_list(self.to)
        if not recipients:
            raise AirflowFailException("to is empty: give at least one address")
        ti = context["ti"]
        job_key = job_key_for(ti.dag_id, ti.task_id, ti.run_id, ti.map_index)
        hook = SendmuxHook(self.sendmux_conn_id)
        template, literal = literal_template(self._template(hook))
        if self.cc or self.bcc:
            self.log.info("cc/bcc are added to each of the %d messages", len(recipients))
        # The per-recipient results go to a private temporary file, read back for the
        # message ids alone (the delivery sensor's input) and deleted with the directory.
        with tempfile.TemporaryDirectory(prefix="sendmux-") as tmp:
            results = Path(tmp) / "results.jsonl"
            try:
                report = dispatch(
                    hook.get_client(),
                    template,
                    literal_recipients(recipients, literal),
                    job_key=job_key,
                    on_progress=ProgressLog(self.log),
                    max_failures=XCOM_FAILURES,
                    results_path=results,
                )
            finally:
                hook.close()
            message_ids = _message_ids(results)
        self.log.info("Sendmux: %s", report.summary_line())
        # A separate key, so the return value stays DispatchReport.as_dict().
        ti.xcom_push(key="message_ids", value=message_ids)
        check_report(report, self.max_failure_ratio)
        return report.as_dict()


def _message_ids(results: Path) -> list[str]:
    """The ``eml_`` ids of the messages queued, from the dispatch's results file."""
    if not results.exists():
        return []
    with results.open(encoding="utf-8") as lines:
        return [
            row["message_id"]
            for row in map(json.loads, filter(str.strip, lines))
            if row.get("message_id")
        ]
