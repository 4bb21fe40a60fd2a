"""SendmuxBulkSendOperator: one personalised template to a whole list, streamed, in one task."""

from __future__ import annotations

import contextlib
import itertools
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator, ObjectStoragePath
from airflow.sdk.exceptions import AirflowFailException
from jinja2 import TemplateNotFound

from sendmux_airflow._bulk_run import (
    EverySeconds,
    check_airflow_names,
    message_ids,
    send_window,
    window_start,
)
from sendmux_airflow._bulk_source import Item, file_recipients, list_recipients, with_shared
from sendmux_airflow._common import ProgressLog, check_report
from sendmux_airflow._ledger import ledger_ahead, ledger_for
from sendmux_airflow._message import XCOM_FAILURES, build_template
from sendmux_airflow.hooks.sendmux import SendmuxHook
from sendmux_dispatch.dispatch import dispatch
from sendmux_dispatch.errors import InvalidMessageError
from sendmux_dispatch.keys import job_key_for
from sendmux_dispatch.personalize import Personalizer

if TYPE_CHECKING:
    from airflow.sdk import Context

__all__ = ["MAX_XCOM_MESSAGE_IDS", "SendmuxBulkSendOperator"]

#: The ``message_ids`` XCom is pushed for sends of at most this many messages.
MAX_XCOM_MESSAGE_IDS = 1000


class SendmuxBulkSendOperator(BaseOperator):
    """Send one personalised message to every recipient of a list or a file, in one task.

    ``subject``, ``html_body`` (or a ``.html`` file beside the DAG), ``text_body``
    and ``custom_headers`` are the per-recipient Jinja2 template: Airflow does
    not render them; the core does, once per recipient, with that recipient's
    variables (CSV columns, JSON keys), ``email``, ``name``, and the task's
    ``variables`` (templated by Airflow: the way in for ``{{ ds }}``).
    Recipients come from ``recipients`` (a list of addresses or mappings, an
    XCom) or ``recipients_file`` (CSV or JSONL, a local path or any
    ``ObjectStoragePath`` URL, read one line at a time). Returns the
    :class:`~sendmux_dispatch.DispatchReport` as a dict; pushes ``send_window``
    (for :class:`~sendmux_airflow.SendmuxDeliverySensor`) and, for sends of at
    most 1,000 messages, ``message_ids``.

    >>> SendmuxBulkSendOperator(                                     # doctest: +SKIP
    ...     task_id="newsletter", recipients_file="s3://lists/{{ ds }}.csv",
    ...     storage_conn_id="aws_default", subject="Hi {{ name }}", html_body="news.html",
    ...     variables={"issue": "{{ ds }}"})
    """

    template_fields: Sequence[str] = (
        *("recipients", "recipients_file", "file_format", "email_column", "name_column"),
        *("encoding", "variables", "from_email", "reply_to", "delivery_group"),
    )
    template_fields_renderers = {"variables": "json", "recipients": "json"}  # noqa: RUF012
    ui_color = "#d7ecee"

    def __init__(
        self,
        *,
        subject: str,
        html_body: str | None = None,
        text_body: str | None = None,
        recipients: Any = None,
        recipients_file: str | ObjectStoragePath | None = None,
        file_format: str | None = None,
        email_column: str = "email",
        name_column: str = "name",
        encoding: str = "utf-8",
        storage_conn_id: str | None = None,
        variables: Mapping[str, Any] | None = None,
        from_email: str | None = None,
        reply_to: str | None = None,
        custom_headers: Mapping[str, str] | None = None,
        delivery_group: str | None = None,
        max_failure_ratio: float = 0.0,
        concurrency: int = 8,
        sendmux_conn_id: str = SendmuxHook.default_conn_name,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if recipients is None and recipients_file is None:
            raise ValueError(
                "no recipients: give recipients= (a list, an XCom) or recipients_file="
            )
        if recipients is not None and recipients_file is not None:
            raise ValueError("give recipients= or recipients_file=, not both")
        if not 0.0 <= max_failure_ratio <= 1.0:
            raise ValueError(f"max_failure_ratio must be between 0 and 1, got {max_failure_ratio}")
        self.subject, self.html_body, self.text_body = subject, html_body, text_body
        self.recipients, self.recipients_file = recipients, recipients_file
        self.file_format = file_format
        self.email_column, self.name_column = email_column, name_column
        self.encoding, self.storage_conn_id = encoding, storage_conn_id
        self.variables, self.custom_headers = variables, custom_headers
        self.from_email, self.reply_to, self.delivery_group = from_email, reply_to, delivery_group
        self.max_failure_ratio, self.concurrency = max_failure_ratio, concurrency
        self.sendmux_conn_id = sendmux_conn_id

    def execute(self, context: Context) -> dict[str, Any]:
        ti = context["ti"]
        job_key = job_key_for(ti.dag_id, ti.task_id, ti.run_id, ti.map_index)
        hook = SendmuxHook(self.sendmux_conn_id)
        sender = self.from_email or hook.settings.from_email
        template = build_template(
            sender=sender,
            no_sender=f"no sender: set from_email on the task or the 'from_email' extra of "
            f"connection {self.sendmux_conn_id!r}",
            subject=self.subject,
            html_body=self._html_source(),
            text_body=self.text_body,
            reply_to=self.reply_to,
            custom_headers=self.custom_headers,
            delivery_group=self.delivery_group,
            fail=AirflowFailException,
        )
        try:
            Personalizer(template)  # compiled and checked once here: a bad one fails, no retry
        except InvalidMessageError as exc:
            raise AirflowFailException(str(exc)) from None
        shared = dict(self.variables or {})
        with self._recipients() as items, tempfile.TemporaryDirectory(prefix="sendmux-") as tmp:
            first = next(items)  # primed already: this cannot fail
            check_airflow_names(template, context, {*shared, *getattr(first, "variables", {})})
            # The results file (disk, not memory) is only for the message_ids XCom.
            sized = len(self.recipients) if isinstance(self.recipients, list) else None
            results = None if (sized or 0) > MAX_XCOM_MESSAGE_IDS else Path(tmp) / "results.jsonl"
            started = window_start(context)
            # The ledger (the connection's ledger_url, else the task state store on
            # 3.3+) makes a retry whose list was edited skip whoever was mailed.
            ledger = ledger_for(context, hook)
            try:
                report = dispatch(
                    hook.get_client(),
                    template,
                    with_shared(itertools.chain([first], items), shared),
                    job_key=job_key,
                    on_progress=EverySeconds(ProgressLog(self.log), 10.0),
                    max_failures=XCOM_FAILURES,
                    results_path=results,
                    concurrency=self.concurrency,
                    ledger=ledger,
                    ledger_ahead=ledger_ahead(ledger),
                )
            finally:
                hook.close()
                if ledger is not None:
                    ledger.close()
            window = send_window(started, report, template)
            ids = message_ids(results, MAX_XCOM_MESSAGE_IDS) if results else None
        if ids is not None:
            ti.xcom_push(key="message_ids", value=ids)
        ti.xcom_push(key="send_window", value=window)
        self.log.info("Sendmux: %s", report.summary_line())
        if report.stop_cause == "input":  # the file is wrong from some line on: a retry is too
            raise AirflowFailException(f"recipients_file: {report.stopped_reason}")
        check_report(report, self.max_failure_ratio)
        return report.as_dict()

    def _recipients(self) -> contextlib.AbstractContextManager[Iterator[Item]]:
        columns = {"email_column": self.email_column, "name_column": self.name_column}
        if self.recipients_file is None:
            return contextlib.nullcontext(list_recipients(self.recipients, **columns))
        self.log.info("Sendmux: reading recipients from %s", self.recipients_file)
        return file_recipients(
            self.recipients_file,
            file_format=self.file_format,
            encoding=self.encoding,
            conn_id=self.storage_conn_id,
            **columns,
        )

    def _html_source(self) -> str | None:
        """``html_body``, or the text of the ``.html`` file it names, not rendered by Airflow."""
        if not (isinstance(self.html_body, str) and self.html_body.endswith(".html")):
            return self.html_body
        env = self.get_template_env()
        try:
            return env.loader.get_source(env, self.html_body)[0] if env.loader else self.html_body
        except TemplateNotFound:
            raise AirflowFailException(
                f"html_body: no template file {self.html_body!r} in the DAG's folder or its "
                f"template_searchpath; fix the name, or pass the HTML itself"
            ) from None
