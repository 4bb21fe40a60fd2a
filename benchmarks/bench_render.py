"""Personalised rendering: the whole planning pipeline against one key's sending ceiling.

One Sendmux API key may make 1,800 requests per 60 s of at most 100 messages
each: 3,000 messages/s (computed below from ``sendmux_dispatch.models.api_limits``).
The client-side pipeline must never be what holds a job back, so the target
is at least ten times that, 30,000 messages/s, on one core.

Two contenders get the same lazily generated recipient rows (dicts with
``email``, ``name`` and four per-recipient variables: a code, a discount, a
URL and a list of picks; a fresh generator for every run, read one row at a
time as a job would) and a realistic marketing template in the wire shape:
Jinja2 in the subject, the HTML body (a greeting, a ``{% for %}`` loop over
the recipient's picks, the code and the link; ~450 characters once rendered)
and the text body (the same, with a ``join`` filter), ``from`` with a display
name and one ``X-Campaign`` header:

- pipeline: ``plan_batches(template, rows, job_key=...)`` consumed to the end,
            with ``PlannedBatch.to_json()`` called on every batch: rendering
            (sandboxed, autoescaped HTML), validation of every message,
            deduplication, the request-size bound, the idempotency key and
            the request body; everything a dispatch does before the HTTP call.
            This is the figure with a target;
- floor:    the same three templates rendered with the ordinary Jinja2 API,
            ``jinja2.Environment().from_string(source).render(**row)``: not
            sandboxed, no validation, no batching, nothing serialised. What
            rendering alone costs; the pipeline's ratio to it is context only.

Both contenders compile their templates inside every run (the pipeline builds
its ``Personalizer`` in ``plan_batches``, as a dispatch does once per job), so
both pay the same once-per-job costs, a few milliseconds per run.

The figure is messages per second from the median of the repeats (the best
run is shown beside it); repeats are interleaved so that load from elsewhere
hits both contenders alike. Run from the repository root::

    python benchmarks/bench_render.py                   # print the table
    python benchmarks/bench_render.py --messages 5000   # a quicker check
    python benchmarks/bench_render.py --write           # also update docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jinja2

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # the helpers sit beside this script
    Timing,
    command_line,
    compare,
    environment,
    environment_markdown,
    rates_table,
    write_section,
)

from sendmux_dispatch.batching import PlannedBatch, plan_batches
from sendmux_dispatch.models import api_limits

SECTION = "render"
JOB_KEY = "bench-render"
#: One key's sending ceiling in messages per second: 1,800 requests per 60 s x 100 messages.
KEY_CEILING = (
    api_limits.SENDING_REQUESTS_PER_WINDOW
    * api_limits.MAX_BATCH_MESSAGES
    / api_limits.RATE_WINDOW_SECONDS
)
TARGET = 10.0

SUBJECT = "{{ name }}, your spring picks are here ({{ discount }}% off inside)"
HTML_BODY = (
    "<html><body>"
    "<p>Hello {{ name }},</p>"
    "<p>We picked these for you this week:</p>"
    "<ul>{% for item in picks %}<li>{{ item }}</li>{% endfor %}</ul>"
    "<p>Use the code <strong>{{ code }}</strong> at checkout for {{ discount }}% off "
    "everything until Sunday.</p>"
    '<p><a href="{{ url }}">See your picks</a></p>'
    "<p>Happy spring,<br>The Example Shop team</p>"
    '<p style="font-size:small">You get this because you joined our list.</p>'
    "</body></html>"
)
# No trailing newline: the plain Environment drops one and the library keeps
# it, and the outputs are compared before timing.
TEXT_BODY = (
    "Hello {{ name }},\n\n"
    'We picked these for you this week: {{ picks | join(", ") }}.\n'
    "Use the code {{ code }} at checkout for {{ discount }}% off everything until Sunday.\n"
    "See your picks: {{ url }}\n\n"
    "Happy spring,\nThe Example Shop team"
)
TEMPLATE: dict[str, Any] = {
    "from": {"email": "news@shop.example.com", "name": "Example Shop"},
    "subject": SUBJECT,
    "html_body": HTML_BODY,
    "text_body": TEXT_BODY,
    "custom_headers": {"X-Campaign": "spring-2025"},
}
FIELDS = ("subject", "html_body", "text_body")

FIRST_NAMES = ("Ann", "Bruno", "Chiara", "Dmitri", "Esi", "Farid", "Grace")
CATALOGUE = (
    "linen shirts",
    "canvas shoes",
    "a straw hat",
    "cotton scarves",
    "sunglasses",
    "a beach towel",
    "espadrilles",
    "a picnic basket",
)


def rows(n: int) -> Iterator[dict[str, Any]]:
    """``n`` distinct recipient rows, made one at a time (as a CSV or database cursor reads)."""
    for index in range(n):
        first = FIRST_NAMES[index % len(FIRST_NAMES)]
        code = f"SPRING-{index:07d}"
        yield {
            "email": f"{first.lower()}.{index}@mail{index % 97}.example.org",
            "name": first,
            "code": code,
            "discount": 10 + 5 * (index % 4),
            "url": f"https://shop.example.com/picks/{index}?c={code}",
            "picks": [CATALOGUE[(index + k) % len(CATALOGUE)] for k in range(3)],
        }


def run_pipeline(n: int) -> int:
    """Plan the job to the end and build every request body; the number of messages planned."""
    messages = 0
    for item in plan_batches(TEMPLATE, rows(n), job_key=JOB_KEY):
        # Failures and duplicates would be cheaper than messages and flatter
        # the figure; check_outputs makes sure there are none.
        if isinstance(item, PlannedBatch):
            item.to_json()
            messages += len(item)
    return messages


def floor_templates() -> list[jinja2.Template]:
    # Jinja2's defaults: no sandbox, no autoescaping, the cheapest ordinary way to render.
    environment = jinja2.Environment()
    return [environment.from_string(TEMPLATE[field]) for field in FIELDS]


def run_floor(n: int) -> int:
    """Render the three templates for every row with the ordinary Jinja2 API."""
    templates = floor_templates()
    for row in rows(n):
        for template in templates:
            template.render(**row)
    return n


def check_outputs(n: int) -> None:
    """Both contenders must do the same work, or the comparison means nothing.

    The pipeline must plan every row (no failures, no duplicates, full
    batches) and render the same subject and bodies as the floor. The values
    hold nothing HTML-escaping would change, so autoescaping makes no difference.
    """
    plan = plan_batches(TEMPLATE, rows(n), job_key=JOB_KEY)
    batches = list(plan.batches())
    stats = plan.stats
    expected_batches = math.ceil(n / api_limits.MAX_BATCH_MESSAGES)
    if stats.messages != n or stats.failures or stats.duplicates_dropped:
        raise SystemExit(f"the pipeline did not plan every row: {stats}; fix that first")
    if stats.batches != expected_batches:
        raise SystemExit(f"expected {expected_batches} batches, got {stats.batches}")
    body = json.loads(batches[0].to_json())
    templates = floor_templates()
    messages = body["messages"]
    for message, row in zip(messages, rows(len(messages)), strict=True):
        floor = [template.render(**row) for template in templates]
        if [message[field] for field in FIELDS] != floor:
            raise SystemExit("the pipeline and the floor render differently; fix that first")


LABELS = {
    "pipeline": "pipeline: `plan_batches` + `PlannedBatch.to_json()` (render, validate, "
    "dedupe, size bound, key, body)",
    "floor": "floor: `jinja2.Environment().from_string(...).render(**row)` (no sandbox, "
    "no validation, no batching)",
}


def results_table(timings: dict[str, Timing]) -> str:
    versus = {"vs one key's ceiling": KEY_CEILING, "vs floor": timings["floor"].median_rate}
    return rates_table(timings, LABELS, versus)


def verdict(timings: dict[str, Timing]) -> tuple[str, bool]:
    pipeline = timings["pipeline"].median_rate
    vs_ceiling = pipeline / KEY_CEILING
    vs_floor = pipeline / timings["floor"].median_rate
    ok = vs_ceiling >= TARGET
    text = (
        f"pipeline / one key's ceiling ({KEY_CEILING:,.0f} messages/s) = **{vs_ceiling:.1f}x** "
        f"(target >= {TARGET:g}x, i.e. {TARGET * KEY_CEILING:,.0f} messages/s): "
        f"{'met' if ok else 'NOT met'}. pipeline / floor = {vs_floor:.2f}x (context, no target)."
    )
    return text, ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--messages", type=int, default=50_000, help="recipients per run")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per contender")
    parser.add_argument(
        "--write", action="store_true", help="update this benchmark's section of docs/benchmarks.md"
    )
    args = parser.parse_args(argv)
    if args.messages < 1 or args.repeats < 1:
        parser.error("need at least 1 message and 1 repeat")

    # Before any work, so the load average is the machine's, not ours.
    facts = environment(["jinja2", "markupsafe", "pydantic", "pydantic-core", "sendmux-workflows"])
    n: int = args.messages
    check_outputs(n)
    contenders: dict[str, Callable[[], object]] = {
        "pipeline": lambda: run_pipeline(n),
        "floor": lambda: run_floor(n),
    }
    timings = compare(contenders, items=n, repeats=args.repeats)
    text, ok = verdict(timings)

    parts = [
        "## Personalised rendering (the whole planning pipeline)",
        "",
        f"{n:,} recipients per run, read lazily from a generator of dict rows (a fresh one per "
        "run), through a marketing template with Jinja2 in the subject, the HTML body (~450 "
        "characters once rendered, a `{% for %}` loop over each recipient's picks) and the "
        "text body (a `join` filter), `from` with a display name and an `X-Campaign` header. "
        "The pipeline is everything a dispatch does before the HTTP call, on one core, with "
        "no network. Both contenders compile their templates inside each run (the pipeline "
        "builds its `Personalizer` in `plan_batches`, once per job as a dispatch does). "
        f"Figures are messages per second from the median of {args.repeats} interleaved runs "
        "(after one warm-up run each), timed with `time.perf_counter`; the best run is shown "
        "beside it. "
        f"One key's ceiling is {api_limits.SENDING_REQUESTS_PER_WINDOW:,} requests per "
        f"{api_limits.RATE_WINDOW_SECONDS:g} s x {api_limits.MAX_BATCH_MESSAGES} messages = "
        f"{KEY_CEILING:,.0f} messages/s.",
        "",
        "```",
        command_line(),
        "```",
        "",
        environment_markdown(facts),
        "",
        results_table(timings),
        "",
        text,
    ]
    markdown = "\n".join(parts)
    print(markdown)
    if args.write:
        print(f"\nwrote {write_section(SECTION, markdown)}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
