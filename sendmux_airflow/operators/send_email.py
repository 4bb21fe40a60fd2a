"""SendmuxSendEmailOperator: EmailOperator's fields, one message per address, sent by the core."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException

from sendmux_airflow._ledger import ledger_for
from sendmux_airflow._message import XCOM_FAILURES, build_template, recipients_of, send_each
from sendmux_airflow.hooks.sendmux import SendmuxHook
from sendmux_dispatch.keys import job_key_for

if TYPE_CHECKING:
    from airflow.sdk import Context

__all__ = ["XCOM_FAILURES", "SendmuxSendEmailOperator"]


class SendmuxSendEmailOperator(BaseOperator):
    """Send one email to each ``to`` address through Sendmux, in idempotent batches.

    ``cc`` and ``bcc`` go on every message (so they get one copy per ``to``
    address); ``from_email`` defaults to the connection's ``from_email``;
    ``return_path`` is the bounce address (SesEmailOperator's);
    ``html_body`` may be a ``.html`` template file; ``files`` are paths to
    attach. Returns the :class:`~sendmux_dispatch.DispatchReport` as a dict
    (counts, at most 20 failures). The job key is the task instance's
    (dag_id, task_id, run_id, map_index), never the try number, so a retry
    replays what try 1 sent instead of mailing anyone twice, and the send
    ledger (:func:`~sendmux_airflow._ledger.ledger_for`: the task state store
    on Airflow 3.3+, or the connection's ``ledger_url``) skips whoever an
    earlier try mailed even when the list changed in between. The task fails
    when nothing was sent, or when the share of recipients not sent (failed,
    invalid, not attempted) is above ``max_failure_ratio`` (default 0: any).

    >>> SendmuxSendEmailOperator(                              # doctest: +SKIP
    ...     task_id="report", to=["ceo@example.com", "cfo@example.com"],
    ...     subject="Sales {{ ds }}", html_body="report.html", files=["/tmp/sales.csv"])
    """

    template_fields: Sequence[str] = (
        *("to", "cc", "bcc", "from_email", "reply_to", "return_path", "subject", "html_body"),
        *("text_body", "custom_headers", "files", "delivery_group"),
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
        return_path: str | None = None,
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
        self.from_email, self.reply_to, self.return_path = from_email, reply_to, return_path
        self.subject, self.html_body, self.text_body = subject, html_body, text_body
        self.custom_headers, self.files = custom_headers, files
        self.delivery_group = delivery_group
        self.max_failure_ratio = max_failure_ratio
        self.sendmux_conn_id = sendmux_conn_id

    def execute(self, context: Context) -> dict[str, Any]:
        recipients = recipients_of(self.to, AirflowFailException)
        ti = context["ti"]
        job_key = job_key_for(ti.dag_id, ti.task_id, ti.run_id, ti.map_index)
        hook = SendmuxHook(self.sendmux_conn_id)
        template = build_template(
            sender=self.from_email or hook.settings.from_email,
            no_sender=f"no sender: set from_email on the task or the 'from_email' extra of "
            f"connection {self.sendmux_conn_id!r}",
            subject=self.subject,
            html_body=self.html_body,
            text_body=self.text_body,
            reply_to=self.reply_to,
            return_path=self.return_path,
            cc=self.cc,
            bcc=self.bcc,
            custom_headers=self.custom_headers,
            files=self.files,
            delivery_group=self.delivery_group,
            fail=AirflowFailException,
        )
        if self.cc or self.bcc:
            self.log.info("cc/bcc are added to each of the %d messages", len(recipients))
        # The ledger (task state store on 3.3+, or the connection's ledger_url) makes a
        # retry whose list was edited skip whoever an earlier try already mailed.
        ledger = ledger_for(context, hook)
        # The per-recipient results go to a private temporary file, read back for the
        # message ids alone (the delivery sensor's input) and deleted with the directory.
        with tempfile.TemporaryDirectory(prefix="sendmux-") as tmp:
            results = Path(tmp) / "results.jsonl"
            try:
                report = send_each(
                    hook,
                    template,
                    recipients,
                    job_key=job_key,
                    log=self.log,
                    max_failure_ratio=self.max_failure_ratio,
                    results_path=results,
                    ledger=ledger,
                )
            finally:
                if ledger is not None:
                    ledger.close()
            message_ids = _message_ids(results)
        # A separate key, so the return value stays DispatchReport.as_dict().
        ti.xcom_push(key="message_ids", value=message_ids)
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
