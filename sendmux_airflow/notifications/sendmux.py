"""SendmuxNotifier: task and DAG callbacks (and deadline alerts) that mail through Sendmux."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseNotifier

from sendmux_airflow._message import asend_each, build_template, recipients_of, send_each
from sendmux_airflow.hooks.sendmux import SendmuxHook
from sendmux_dispatch.keys import job_key_for

if TYPE_CHECKING:
    from airflow.sdk import Context

__all__ = ["SendmuxNotifier", "alert_job_key"]

# "is defined" throughout: Airflow renders with StrictUndefined, and a DAG-level
# callback's context has no ti, a deadline alert's maybe no run.
DEFAULT_SUBJECT = (
    "Airflow alert: {{ dag.dag_id if dag is defined and dag else 'DAG' }}"
    "{% if ti is defined and ti %}.{{ ti.task_id }}, try {{ ti.try_number }}{% endif %}"
)
DEFAULT_TEXT = (
    "Run {{ run_id if run_id is defined else 'unknown' }}"
    "{% if exception is defined and exception %}: {{ exception }}{% endif %}"
)


def alert_job_key(context: Mapping[str, Any], event: str) -> str | None:
    """The key of one alert: (dag_id, run_id, task_id, try_number, event), or ``None``.

    Unlike a send task's key, the try number belongs in it: the failure of
    try 1 and the failure of try 2 are two alerts, while the same callback
    fired twice for one try is one. ``None`` when the context names no run
    (a deadline alert's context can be empty).
    """
    ti = context.get("ti")
    dag_run = context.get("dag_run")
    dag = context.get("dag")
    dag_id = getattr(ti, "dag_id", None) or getattr(dag_run, "dag_id", None)
    dag_id = dag_id or getattr(dag, "dag_id", None)
    run_id = context.get("run_id") or getattr(ti, "run_id", None)
    run_id = run_id or getattr(dag_run, "run_id", None)
    if not dag_id or not run_id:
        return None
    task = "-" if ti is None else f"{ti.task_id}/{getattr(ti, 'map_index', -1)}"
    tried = "-" if ti is None else str(getattr(ti, "try_number", "-"))
    return job_key_for("alert", dag_id, run_id, task, tried, event)


class SendmuxNotifier(BaseNotifier):
    """Mail an alert through Sendmux from ``on_failure_callback``, ``on_success_callback``
    (task or DAG level) or a deadline alert, once per event.

    ``to``, ``cc``, ``bcc``, ``from_email``, ``subject``, ``html_body`` (also a
    ``.html`` template file), ``text_body``, ``custom_headers`` and ``files``
    are templated with the callback's context. The alert is sent under the
    key of (dag_id, run_id, task_id, try_number, ``event``), so a callback
    fired twice for one try mails once. ``event`` defaults to ``"failure"``
    when the context holds an exception, else ``"success"``; set it for
    anything else (``"retry"``, ``"deadline"``). A failure to send raises.

    >>> task = BashOperator(task_id="load", bash_command="exit 1",   # doctest: +SKIP
    ...     on_failure_callback=SendmuxNotifier(to="oncall@example.com",
    ...         subject="{{ ti.task_id }} failed in {{ dag.dag_id }}"))
    """

    template_fields: Sequence[str] = (
        *("to", "cc", "bcc", "from_email", "subject", "html_body", "text_body"),
        *("custom_headers", "files"),
    )
    template_ext: Sequence[str] = (".html",)

    def __init__(
        self,
        *,
        to: str | Sequence[str],
        subject: str = DEFAULT_SUBJECT,
        html_body: str | None = None,
        text_body: str | None = DEFAULT_TEXT,
        cc: str | Sequence[str] | None = None,
        bcc: str | Sequence[str] | None = None,
        from_email: str | None = None,
        custom_headers: Mapping[str, str] | None = None,
        files: str | Sequence[str] | None = None,
        event: str | None = None,
        sendmux_conn_id: str = SendmuxHook.default_conn_name,
    ) -> None:
        super().__init__()
        self.to, self.cc, self.bcc, self.from_email = to, cc, bcc, from_email
        self.subject, self.html_body, self.text_body = subject, html_body, text_body
        self.custom_headers, self.files = custom_headers, files
        self.event = event
        self.sendmux_conn_id = sendmux_conn_id

    def _job(self, context: Context, hook: SendmuxHook) -> tuple[dict[str, Any], list[str], str]:
        recipients = recipients_of(self.to, ValueError)
        template = build_template(
            sender=self.from_email or hook.settings.from_email,
            no_sender=f"no sender: set from_email on the SendmuxNotifier or the 'from_email' "
            f"extra of connection {self.sendmux_conn_id!r}",
            subject=self.subject,
            html_body=self.html_body,
            text_body=self.text_body,
            cc=self.cc,
            bcc=self.bcc,
            custom_headers=self.custom_headers,
            files=self.files,
        )
        event = self.event or ("failure" if context.get("exception") else "success")
        job_key = alert_job_key(context, event)
        if job_key is None:
            # Nothing names the run, so nothing can tell a repeat from a new alert.
            self.log.warning(
                "Sendmux: the context names no DAG run; this alert is not deduplicated"
            )
            job_key = job_key_for("alert", uuid.uuid4().hex, event)
        return template, recipients, job_key

    def notify(self, context: Context) -> None:
        hook = SendmuxHook(self.sendmux_conn_id)
        template, recipients, job_key = self._job(context, hook)
        send_each(hook, template, recipients, job_key=job_key, log=self.log)

    async def async_notify(self, context: Context) -> None:
        hook = SendmuxHook(self.sendmux_conn_id)
        await hook.aget_settings()
        template, recipients, job_key = self._job(context, hook)
        await asend_each(hook, template, recipients, job_key=job_key, log=self.log)
