"""Build, validate and serialise 100-message batch bodies: ours against the official SDK and json.

Three contenders get the same personalised-looking messages, in the wire
shape (distinct recipients and names, a ~40-character subject, ~300
characters of HTML, ~150 of text, one custom header; a second input adds
three cc addresses) and turn every 100 of them into the JSON body of
POST /emails/send/batch:

- sdk:   ``BatchSendRequest.from_dict({"messages": batch}).to_json()``, the
         official generated client (``sendmux-sending``);
- floor: ``json.dumps({"messages": batch})``, no validation at all;
- ours:  ``wire_messages(batch)`` (one validation call for the batch), then
         ``batch_body(...)``: what ``SendmuxClient.send_batch`` does, with
         every documented rule checked (the same field types as
         ``EmailMessage``);
- models: ``EmailMessage.model_validate(d)`` for each message, then
         ``BatchRequest(messages=...).to_json()``: the model API, shown for
         comparison (no target).

The figure is messages per second from the median of the repeats (the best
run is shown beside it); repeats are interleaved so that load from elsewhere
hits the contenders alike. Targets: ours at least 4x the SDK and at least
half the floor. Run from the repository root::

    python benchmarks/bench_serialize.py            # print the table
    python benchmarks/bench_serialize.py --write    # also update docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

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
from sendmux_sending.models.batch_send_request import (  # type: ignore[import-untyped]
    BatchSendRequest,
)

from sendmux_dispatch.models import (
    BatchRequest,
    EmailMessage,
    api_limits,
    batch_body,
    wire_messages,
)

SECTION = "serialize"
BATCH = api_limits.MAX_BATCH_MESSAGES
SDK_TARGET = 4.0
FLOOR_TARGET = 0.5


def make_message(index: int, *, cc: int = 0) -> dict[str, Any]:
    """One personalised message in the wire shape; every recipient and name is distinct."""
    first = ("Ann", "Bruno", "Chiara", "Dmitri", "Esi", "Farid", "Grace")[index % 7]
    message: dict[str, Any] = {
        "from": {"email": "news@shop.example.com", "name": "Example Shop"},
        "to": {"email": f"{first.lower()}.{index}@mail{index % 97}.example.org", "name": first},
        "subject": f"{first}, your spring picks are here #{index:07d}",
        "html_body": (
            f"<html><body><p>Hello {first},</p><p>We picked these for you this week: "
            "linen shirts, canvas shoes and a straw hat.</p><p>"
            f'<a href="https://shop.example.com/picks/{index}">See your picks</a></p>'
            "<p>Happy spring,<br>The Example Shop team</p></body></html>"
        ),
        "text_body": (
            f"Hello {first}, we picked these for you this week: linen shirts, canvas shoes "
            f"and a straw hat. See https://shop.example.com/picks/{index}"
        ),
        "custom_headers": {"X-Campaign": f"spring-{index % 12:02d}"},
    }
    if cc:
        message["cc"] = [
            {"email": f"cc{n}.{index}@team.example.net", "name": f"Colleague {n}"}
            for n in range(cc)
        ]
    return message


def batches_of(messages: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    return [messages[start : start + BATCH] for start in range(0, len(messages), BATCH)]


def sdk_body(batch: list[dict[str, Any]]) -> str:
    request = BatchSendRequest.from_dict({"messages": batch})
    assert request is not None
    body: str = request.to_json()
    return body


def floor_body(batch: list[dict[str, Any]]) -> str:
    return json.dumps({"messages": batch})


def our_body(batch: list[dict[str, Any]]) -> bytes:
    # As send_batch does: a bad message is reported by its index, the
    # others' errors are collected too.
    return batch_body(wire_messages(batch))


def model_body(batch: list[dict[str, Any]]) -> bytes:
    return BatchRequest(messages=[EmailMessage.model_validate(data) for data in batch]).to_json()


CONTENDERS: dict[str, Callable[[list[dict[str, Any]]], str | bytes]] = {
    "sdk": sdk_body,
    "floor": floor_body,
    "ours": our_body,
    "models": model_body,
}
LABELS = {
    "sdk": "official SDK (`sendmux_sending`): `BatchSendRequest.from_dict().to_json()`",
    "floor": "floor: `json.dumps` of plain dicts, no validation",
    "ours": "ours: `wire_messages` + `batch_body` (what `send_batch` does), full validation",
    "models": "our models: `EmailMessage.model_validate` + `BatchRequest.to_json()` (no target)",
}


def check_same_output(batches: list[list[dict[str, Any]]]) -> None:
    """All three must produce the same body, or the comparison means nothing."""
    bodies = [json.loads(build(batches[0])) for build in CONTENDERS.values()]
    if any(body != bodies[0] for body in bodies):
        raise SystemExit("the contenders do not produce the same JSON body; fix that first")


def run_variant(messages: list[dict[str, Any]], repeats: int) -> dict[str, Timing]:
    batches = batches_of(messages)
    check_same_output(batches)
    # The input is built once and kept: move it out of the collector's way,
    # or every collection during the runs would walk it again.
    gc.collect()
    gc.freeze()
    try:

        def runner(build: Callable[[list[dict[str, Any]]], str | bytes]) -> Callable[[], None]:
            def run() -> None:
                for batch in batches:
                    build(batch)

            return run

        return compare(
            {name: runner(build) for name, build in CONTENDERS.items()},
            items=len(messages),
            repeats=repeats,
        )
    finally:
        gc.unfreeze()


def variant_table(timings: dict[str, Timing]) -> str:
    versus = {"vs SDK": timings["sdk"].median_rate, "vs floor": timings["floor"].median_rate}
    return rates_table(timings, LABELS, versus)


def verdict(timings: dict[str, Timing]) -> tuple[str, bool]:
    ours = timings["ours"].median_rate
    vs_sdk = ours / timings["sdk"].median_rate
    vs_floor = ours / timings["floor"].median_rate
    ok = vs_sdk >= SDK_TARGET and vs_floor >= FLOOR_TARGET
    text = (
        f"ours/sdk = **{vs_sdk:.2f}x** (target >= {SDK_TARGET:g}x), "
        f"ours/floor = **{vs_floor:.2f}x** (target >= {FLOOR_TARGET:g}x): "
        f"{'met' if ok else 'NOT met'}"
    )
    return text, ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--messages", type=int, default=20_000, help="messages per run")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per contender")
    parser.add_argument(
        "--write", action="store_true", help="update this benchmark's section of docs/benchmarks.md"
    )
    args = parser.parse_args(argv)
    if args.messages < BATCH or args.repeats < 1:
        parser.error(f"need at least {BATCH} messages and 1 repeat")

    facts = environment(["pydantic", "pydantic-core", "sendmux-sending"])
    parts = [
        "## Serialisation: 100-message batch bodies",
        "",
        "Build + validate + serialise the body of POST /emails/send/batch from wire-shape "
        "dicts, in batches of 100. Figures are messages per second from the median of "
        f"{args.repeats} interleaved runs of {args.messages:,} messages each (after one "
        "warm-up run), timed with `time.perf_counter`; the best run is shown beside it.",
        "",
        "```",
        command_line(),
        "```",
        "",
        environment_markdown(facts),
    ]
    all_met = True
    for title, cc in (("no cc", 0), ("3 cc addresses", 3)):
        messages = [make_message(index, cc=cc) for index in range(args.messages)]
        timings = run_variant(messages, args.repeats)
        text, ok = verdict(timings)
        all_met = all_met and ok
        parts += ["", f"### {title}", "", variant_table(timings), "", text]
    markdown = "\n".join(parts)
    print(markdown)
    if args.write:
        print(f"\nwrote {write_section(SECTION, markdown)}")
    return 0 if all_met else 1


if __name__ == "__main__":
    raise SystemExit(main())
