"""DispatchOptions (one list of options) and Outcome (one set of outcomes)."""

from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path
from typing import Any

import pytest

from sendmux_dispatch import DispatchOptions, DispatchReport, Outcome, dispatch
from sendmux_dispatch.dispatch import Dispatcher, DispatchKwargs

TEMPLATE = {"from": "news@example.com", "subject": "Hi {{ name }}", "text_body": "Hello"}


def test_the_keyword_form_lists_the_same_options_with_the_same_types() -> None:
    # DispatchKwargs only exists so mypy checks dispatch(**options); it must
    # never drift from the dataclass that holds the defaults and the docs.
    fields = typing.get_type_hints(DispatchOptions)
    keywords = typing.get_type_hints(DispatchKwargs)
    assert keywords == {
        field.name: fields[field.name] for field in dataclasses.fields(DispatchOptions)
    }


def test_every_option_has_a_default_and_is_documented_once() -> None:
    options = DispatchOptions()
    assert (options.concurrency, options.max_resends, options.max_consecutive_failures) == (4, 3, 5)
    doc = DispatchOptions.__doc__ or ""
    for field in dataclasses.fields(DispatchOptions):
        assert f"``{field.name}``" in doc


def test_options_are_keyword_only_and_frozen() -> None:
    with pytest.raises(TypeError):
        DispatchOptions(8)  # type: ignore[misc]
    options = DispatchOptions(concurrency=8)
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.concurrency = 2  # type: ignore[misc]


@pytest.mark.parametrize(
    ("option", "value"),
    [("concurrency", 0), ("max_resends", -1), ("max_consecutive_failures", -1)],
)
def test_a_bad_option_is_refused_by_name_before_any_request(
    client: Any, recorder: Any, tmp_path: Path, option: str, value: int
) -> None:
    results = tmp_path / "results.jsonl"
    with pytest.raises(ValueError, match=option):
        dispatch(
            client,
            TEMPLATE,
            [{"email": "a@example.com"}],
            job_key="bad-option",
            results_path=results,
            **{option: value},
        )
    assert recorder.requests == []
    assert not results.exists()


def test_a_dispatcher_keeps_the_options_it_was_given(client: Any) -> None:
    assert Dispatcher(client, concurrency=2).options == DispatchOptions(concurrency=2)


def test_outcomes_are_the_results_file_statuses_and_the_report_counters() -> None:
    assert [outcome.value for outcome in Outcome] == [
        "queued",
        "failed",
        "invalid",
        "duplicate",
        "already_accepted",
        "not_sent",
    ]
    # Old results files hold these strings: an Outcome still reads and writes as one.
    assert json.dumps({"status": Outcome.DUPLICATE}) == '{"status": "duplicate"}'
    assert f"{Outcome.NOT_SENT}" == "not_sent"
    assert Outcome("already_accepted") is Outcome.ALREADY_ACCEPTED
    counters = {field.name for field in dataclasses.fields(DispatchReport)}
    assert {outcome.counter for outcome in Outcome} <= counters


def test_a_report_counts_each_outcome_and_merges_them_all() -> None:
    counts = {outcome: index + 1 for index, outcome in enumerate(Outcome)}
    report = DispatchReport(job_key="j", **{o.counter: n for o, n in counts.items()})
    assert report.count(Outcome.DUPLICATE) == report.duplicates_dropped == counts[Outcome.DUPLICATE]
    report.merge(DispatchReport(job_key="j", **{o.counter: n for o, n in counts.items()}))
    assert {outcome: report.count(outcome) for outcome in Outcome} == {
        outcome: 2 * n for outcome, n in counts.items()
    }
