"""What the bulk operator does around its dispatch: checks before it, the XComs after it."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk.exceptions import AirflowFailException
from jinja2 import TemplateError, meta
from jinja2.sandbox import SandboxedEnvironment

from sendmux_airflow._common import ProgressLog
from sendmux_dispatch.models import parse_address
from sendmux_dispatch.report import DispatchReport, Progress

if TYPE_CHECKING:
    from airflow.sdk import Context

__all__ = ["EverySeconds", "check_airflow_names", "message_ids", "send_window", "window_start"]

#: The fields of a core template rendered per recipient (``custom_headers`` values too).
_TEXT_FIELDS = ("subject", "html_body", "text_body")


def check_airflow_names(template: Mapping[str, Any], context: Context, defined: set[str]) -> None:
    """Fail on ``{{ ds }}`` in the per-recipient template: Airflow's names are not in it.

    Only names Airflow's context has and the recipients do not: a CSV column
    called ``ds`` is the recipient's. Cheap (the templates are parsed once),
    and it turns what would be one ``undefined variable`` failure per
    recipient into one error before any request.
    """
    sources = [template.get(name) for name in _TEXT_FIELDS]
    sources += list((template.get("custom_headers") or {}).values())
    env = SandboxedEnvironment()
    found: set[str] = set()
    for source in filter(None, sources):
        with contextlib.suppress(TemplateError):  # the core names syntax errors itself
            found |= meta.find_undeclared_variables(env.parse(source))
    airflow_names = sorted(found & set(context) - defined - {"email", "name", "recipient"})
    if airflow_names:
        pairs = ", ".join(f"{name!r}: '{{{{ {name} }}}}'" for name in airflow_names)
        raise AirflowFailException(
            f"the per-recipient template uses Airflow's {', '.join(airflow_names)}, which "
            f"Airflow does not render there; pass them in variables={{{pairs}}}"
        )


def window_start(context: Context) -> dt.datetime:
    """Just before the send; from the run's start on a retry, which may replay try 1's messages."""
    now = dt.datetime.now(dt.timezone.utc)
    run_start = getattr(context.get("dag_run"), "start_date", None)
    if context["ti"].try_number > 1 and isinstance(run_start, dt.datetime):
        return min(now, run_start.astimezone(dt.timezone.utc))
    return now


def send_window(
    started: dt.datetime, report: DispatchReport, template: Mapping[str, Any]
) -> dict[str, Any]:
    """The ``send_window`` XCom: what the delivery sensor counts statuses over."""
    return {
        "from_date": started.isoformat(),
        "to_date": dt.datetime.now(dt.timezone.utc).isoformat(),
        "messages": report.queued,
        "delivery_group": template.get("delivery_group"),
        "from_email": parse_address(template["from"])["email"].lower(),
    }


def message_ids(results: Path, limit: int) -> list[str] | None:
    """The ``eml_`` ids in dispatch's results file, or ``None`` past ``limit`` of them."""
    if not results.exists():
        return []
    ids: list[str] = []
    with results.open(encoding="utf-8") as lines:
        for line in filter(str.strip, lines):
            message_id = json.loads(line).get("message_id")
            if message_id:
                if len(ids) == limit:
                    return None
                ids.append(message_id)
    return ids


class EverySeconds:
    """Progress passed on at most every ``seconds``: a 100,000 list logs a line per 10 s."""

    def __init__(self, inner: ProgressLog, seconds: float) -> None:
        self._inner, self._seconds, self._last = inner, seconds, float("-inf")

    def __call__(self, progress: Progress) -> None:
        if progress.elapsed - self._last >= self._seconds:
            self._last = progress.elapsed
            self._inner(progress)
