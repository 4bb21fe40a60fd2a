"""Batch planning: lazy, ≤ 100 messages and ≤ the byte budget, stable keys, failures kept apart."""

from __future__ import annotations

import itertools
import json
import re
import tracemalloc
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sendmux_dispatch import Attachment, InvalidMessageError, Recipient, RecipientFailure
from sendmux_dispatch._digests import DigestSet
from sendmux_dispatch.batching import Duplicate, PlannedBatch, plan_batches
from sendmux_dispatch.keys import batch_idempotency_key, job_key_for, message_idempotency_key
from sendmux_dispatch.models import api_limits, batch_body, message_size_bound, wire_message
from sendmux_dispatch.personalize import Personalizer

KEY = re.compile(api_limits.IDEMPOTENCY_KEY_PATTERN)

TEMPLATE: dict[str, Any] = {
    "from": {"email": "news@example.com", "name": "Shop"},
    "subject": "Hello {{ name }}",
    "html_body": "<p>Hi {{ name }}, code {{ code }}</p>",
    "text_body": "Hi {{ name }}, code {{ code }}",
}


def people(count: int, start: int = 0) -> Iterator[dict[str, Any]]:
    for i in range(start, start + count):
        yield {"email": f"user{i}@example.com", "name": f"User {i}", "code": i}


def split(items: Any) -> tuple[list[PlannedBatch], list[RecipientFailure], list[Duplicate]]:
    batches, failures, duplicates = [], [], []
    for item in items:
        if isinstance(item, PlannedBatch):
            batches.append(item)
        elif isinstance(item, RecipientFailure):
            failures.append(item)
        else:
            duplicates.append(item)
    return batches, failures, duplicates


def test_recipients_are_cut_into_batches_of_at_most_100() -> None:
    plan = plan_batches(TEMPLATE, people(250), job_key="job-1")
    batches, failures, duplicates = split(plan)
    assert [len(b) for b in batches] == [100, 100, 50]
    assert [b.index for b in batches] == [0, 1, 2]
    assert failures == []
    assert duplicates == []
    assert [p for b in batches for p in b.positions] == list(range(250))
    first = batches[0]
    assert first.messages[0]["subject"] == "Hello User 0"
    assert [m["to"]["email"] for m in first.messages] == [r.email for r in first.recipients]
    assert first.identities[0] == "user0@example.com"
    assert all(KEY.fullmatch(b.idempotency_key) for b in batches)
    assert len({b.idempotency_key for b in batches}) == 3
    assert plan.stats.recipients == 250
    assert plan.stats.messages == 250
    assert plan.stats.batches == 3


def test_max_messages_is_honoured_and_checked() -> None:
    batches, _, _ = split(plan_batches(TEMPLATE, people(25), job_key="j", max_messages=10))
    assert [len(b) for b in batches] == [10, 10, 5]
    for bad in (0, 101):
        with pytest.raises(ValueError, match="max_messages"):
            plan_batches(TEMPLATE, [], job_key="j", max_messages=bad)
    with pytest.raises(ValueError, match="max_bytes"):
        plan_batches(TEMPLATE, [], job_key="j", max_bytes=api_limits.MAX_REQUEST_BYTES + 1)
    with pytest.raises(ValueError, match="job_key"):
        plan_batches(TEMPLATE, [], job_key="")


def test_the_first_batch_of_an_endless_source_reads_only_its_recipients() -> None:
    read = 0

    def endless() -> Iterator[str]:
        nonlocal read
        for i in itertools.count():
            read += 1
            yield f"user{i}@example.com"

    plan = plan_batches(
        {**TEMPLATE, "text_body": "Hi", "html_body": "<p>Hi</p>"}, endless(), job_key="j"
    )
    first = next(plan)
    assert isinstance(first, PlannedBatch)
    assert len(first) == 100
    assert read == 100


def test_a_source_that_breaks_later_does_not_stop_the_first_batches() -> None:
    def breaks_after_150() -> Iterator[dict[str, Any]]:
        yield from people(150)
        raise RuntimeError("source broke")

    plan = plan_batches(TEMPLATE, breaks_after_150(), job_key="j")
    assert isinstance(next(plan), PlannedBatch)
    with pytest.raises(RuntimeError, match="source broke"):
        next(plan)


def test_template_syntax_error_is_raised_before_any_recipient_is_read() -> None:
    def untouchable() -> Iterator[str]:
        raise AssertionError("recipients were read")
        yield ""  # pragma: no cover

    with pytest.raises(InvalidMessageError) as caught:
        plan_batches({**TEMPLATE, "subject": "{{ oops"}, untouchable(), job_key="j")
    assert caught.value.errors[0].field == "subject"


# ---------------------------------------------------------------- bytes


def test_batches_are_cut_by_bytes_too() -> None:
    blob = Attachment.from_bytes(b"x" * 30_000, "blob.bin")
    template = {**TEMPLATE, "attachments": [blob]}
    plan = plan_batches(template, people(20), job_key="j", max_bytes=100_000)
    batches, failures, _ = split(plan)
    assert failures == []
    assert [len(b) for b in batches] == [2] * 10
    for batch in batches:
        assert len(batch.to_json()) <= batch.size_bound <= 100_000


text = st.text(alphabet=st.characters(codec="utf-8"), min_size=0, max_size=60)


one_line = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="\r\n"),
    max_size=60,
)


@st.composite
def recipients_with_attachments(draw: st.DrawFn) -> list[dict[str, Any]]:
    count = draw(st.integers(1, 40))
    out = []
    for i in range(count):
        sizes = draw(st.lists(st.integers(0, 20_000), max_size=3))
        attachments = [
            Attachment.from_bytes(b"\0" * size, f"{draw(one_line)}-{j}.bin")
            for j, size in enumerate(sizes)
            if size
        ]
        out.append(
            {
                "email": f"user{i}@example.com",
                "name": draw(one_line),
                "body": draw(text),
                "attachments": attachments,
            }
        )
    return out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rows=recipients_with_attachments(),
    max_bytes=st.integers(2_000, 90_000),
    max_messages=st.integers(1, 100),
    per_message_keys=st.booleans(),
)
def test_no_batch_body_ever_exceeds_the_byte_budget(
    rows: list[dict[str, Any]], max_bytes: int, max_messages: int, per_message_keys: bool
) -> None:
    template = {
        "from": "news@example.com",
        "subject": "Hi {{ name }}",
        "html_body": '<p>"{{ name }}"</p>{{ body }}',
        "text_body": '{{ body }}\n\t"quoted" \\ {{ name }}',
        "cc": ["cc.person.with.a.long.address@example.com"] * 5,
        "custom_headers": {"X-Tag": 'a "quoted" value'},
    }
    plan = plan_batches(
        template,
        rows,
        job_key=f"job {max_bytes}",
        max_bytes=max_bytes,
        max_messages=max_messages,
        per_message_keys=per_message_keys,
    )
    batches, failures, duplicates = split(plan)
    assert duplicates == []
    for batch in batches:
        assert 1 <= len(batch) <= max_messages
        body = batch.to_json()
        assert body == batch_body(batch.messages, include_idempotency_keys=per_message_keys)
        assert len(body) <= batch.size_bound <= max_bytes
        with_keys = batch_body(batch.messages, include_idempotency_keys=True)
        assert len(with_keys) <= batch.size_bound
    for failure in failures:
        assert failure.code == "too_large"
    planned = sorted(p for b in batches for p in b.positions)
    assert sorted(planned + [f.position for f in failures]) == list(range(len(rows)))


@settings(max_examples=100, deadline=None)
@given(
    subject=st.text(
        alphabet=st.characters(codec="utf-8", exclude_characters="\r\n"),
        min_size=1,
        max_size=50,
    ),
    body=st.text(alphabet=st.characters(codec="utf-8"), min_size=1),
    filename=st.text(
        alphabet=st.characters(codec="utf-8", exclude_characters="\r\n"),
        min_size=1,
        max_size=40,
    ),
    ccs=st.integers(0, 30),
)
def test_message_size_bound_is_never_below_the_serialised_size(
    subject: str, body: str, filename: str, ccs: int
) -> None:
    message = wire_message(
        {
            "from": {"email": "a@example.com", "name": 'Ä "q" \\'},
            "to": "b@example.com",
            "subject": subject,
            "html_body": body,
            "text_body": body,
            "cc": [f"c{i}@example.com" for i in range(ccs)],
            "attachments": [Attachment.from_bytes(body.encode(), filename, "text/plain")],
            "idempotency_key": "k" * 255,
        }
    )
    exact = len(batch_body([message], include_idempotency_keys=True))
    assert exact <= message_size_bound(message) + len('{"messages":[]}')


# ---------------------------------------------------------------- failures


def test_bad_recipients_are_reported_by_position_and_the_rest_are_sent() -> None:
    huge = Attachment.from_bytes(b"\0" * 80_000, "huge.bin")
    rows: list[object] = [
        {"email": "ok0@example.com", "name": "A", "code": 1},
        {"email": "not an address", "code": 1},  # 1 malformed address
        {"email": "ok2@example.com", "name": "Ann\r\nBcc: x@example.com", "code": 1},  # 2
        {"email": "ok3@example.com", "name": "C"},  # 3 missing template variable
        {"email": "ok4@example.com", "code": 1, "attachments": [huge]},  # 4 oversized
        {"name": "no email"},  # 5 malformed row
        42,  # 6 not a recipient at all
        "ok7@example.com",  # 7 missing variable too (no code)
        {"email": "ok8@example.com", "code": 8},
    ]
    plan = plan_batches(TEMPLATE, rows, job_key="j", max_bytes=50_000)
    batches, failures, _ = split(plan)
    by_position = {f.position: f for f in failures}
    assert sorted(by_position) == [1, 2, 3, 4, 5, 6, 7]
    assert by_position[1].code == "invalid_email"
    assert by_position[1].email == "not an address"
    assert by_position[2].code == "line_break"
    assert by_position[3].code == "undefined_variable"
    assert by_position[3].reason == "html_body: undefined variable 'code'"
    assert by_position[4].code == "too_large"
    assert by_position[5].code == "missing_email"
    assert by_position[5].email is None
    assert by_position[6].code == "invalid_recipient"
    assert [p for b in batches for p in b.positions] == [0, 8]
    assert plan.stats.failures == 7
    assert plan.stats.messages == 2


def test_failures_from_a_csv_source_keep_their_positions(tmp_path: Any) -> None:
    from sendmux_dispatch import read_csv

    path = tmp_path / "r.csv"
    path.write_text("email,name,code\na@example.com,A,1\n,B,2\nc@example.com,C,3\n")
    batches, failures, _ = split(plan_batches(TEMPLATE, read_csv(path), job_key="j"))
    assert [f.position for f in failures] == [1]
    assert batches[0].positions == [0, 2]


# ---------------------------------------------------------------- duplicates


def test_duplicates_are_dropped_case_insensitively() -> None:
    rows = ["ann@example.com", "ANN@Example.com ", "bob@example.com", "Ann <ann@EXAMPLE.COM>"]
    template = {**TEMPLATE, "html_body": "<p>x</p>", "text_body": "x"}
    plan = plan_batches(template, rows, job_key="j")
    batches, failures, duplicates = split(plan)
    assert failures == []
    assert batches[0].positions == [0, 2]
    assert [(d.position, d.email) for d in duplicates] == [
        (1, "ANN@Example.com"),
        (3, "ann@EXAMPLE.COM"),
    ]
    assert plan.stats.duplicates_dropped == 2

    kept = plan_batches(template, rows, job_key="j", dedupe=False)
    batches, _, duplicates = split(kept)
    assert batches[0].positions == [0, 1, 2, 3]
    assert duplicates == []


def test_a_broken_first_copy_does_not_block_a_good_later_one() -> None:
    rows = [
        {"email": "ann@example.com", "name": "A\nB", "code": 1},
        {"email": "Ann@example.com", "code": 2},
    ]
    batches, failures, duplicates = split(plan_batches(TEMPLATE, rows, job_key="j"))
    assert [f.position for f in failures] == [0]
    assert batches[0].positions == [1]
    assert duplicates == []


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 2**64 - 1), max_size=3000))
def test_digest_set_behaves_like_a_set(values: list[int]) -> None:
    digests = DigestSet()
    reference: set[int] = set()
    for value in values:
        value = value or 1
        assert digests.add(value) == (value not in reference)
        reference.add(value)
    assert len(digests) == len(reference)
    assert all(value in digests for value in reference)
    assert 2**64 + 5 not in digests
    assert "text" not in digests


def test_digest_set_memory_per_million_is_bounded() -> None:
    values = [DigestSet.digest(f"user{i}@example.com") for i in range(100_000)]
    tracemalloc.start()
    try:
        digests = DigestSet()
        for value in values:
            digests.add(value)
        held, _ = tracemalloc.get_traced_memory()  # what the set keeps, measured
    finally:
        tracemalloc.stop()
    # ≤ 23 bytes per entry once grown: ≤ 23 MB per million.
    assert held / len(digests) <= 23, f"{held / len(digests):.1f} bytes per entry"
    assert digests.nbytes / len(digests) <= 23


# ---------------------------------------------------------------- keys


def test_keys_are_stable_across_runs_and_processes() -> None:
    # Literal values: the derivation is deterministic (no hash seed, no clock).
    assert (
        batch_idempotency_key("newsletter/2026-05", ["ann@example.com", "bob@example.com"])
        == "newsletter-2026-05-fe5169e48b6799bad4e224f2a7154cca"
    )
    assert (
        batch_idempotency_key("newsletter/2026-05", ["ann@example.com", "bob@example.com"], index=3)
        == "newsletter-2026-05-b64831bdb9f3b5cef1b6db7864ec0da8"
    )
    assert (
        message_idempotency_key("newsletter/2026-05", 7, "Ann@Example.com")
        == "newsletter-2026-05-m7-064cb06c0cda3b0f4e8107fd33c65230"
    )
    first = [b.idempotency_key for b in split(plan_batches(TEMPLATE, people(230), job_key="x"))[0]]
    again = [b.idempotency_key for b in split(plan_batches(TEMPLATE, people(230), job_key="x"))[0]]
    assert first == again


def test_different_work_gets_different_keys() -> None:
    base = batch_idempotency_key("job", ["a@example.com"])
    assert batch_idempotency_key("job2", ["a@example.com"]) != base
    assert batch_idempotency_key("job", ["b@example.com"]) != base
    assert batch_idempotency_key("job", ["a@example.com", "b@example.com"]) != base
    assert batch_idempotency_key("job", ["b@example.com", "a@example.com"]) != (
        batch_idempotency_key("job", ["a@example.com", "b@example.com"])
    )
    # With dedupe off the position is hashed in; an index never passes for an identity.
    assert batch_idempotency_key("job", ["a@example.com"], index=1) != base
    assert batch_idempotency_key("job", ["a@example.com"], index=0) != base
    assert batch_idempotency_key("job", ["a@example.com"], index=1) != batch_idempotency_key(
        "job", ["a@example.com"], index=2
    )
    assert batch_idempotency_key("job", ["1", "a@example.com"]) != batch_idempotency_key(
        "job", ["a@example.com"], index=1
    )
    # Slugs that look alike do not make keys alike: the digest covers the whole job key.
    assert batch_idempotency_key("job/a", []) != batch_idempotency_key("job a", [])
    # Length-prefixed parts: moving a boundary changes the key.
    assert batch_idempotency_key("j", ["ab", "c"]) != batch_idempotency_key("j", ["a", "bc"])


def test_keys_depend_on_content_not_position() -> None:
    # Rows inserted in front shift every later batch's position, not its content.
    plain = split(plan_batches(TEMPLATE, people(200), job_key="x", max_messages=50))[0]
    shifted_rows = [*people(50, start=1000), *people(200)]
    shifted = split(plan_batches(TEMPLATE, shifted_rows, job_key="x", max_messages=50))[0]
    assert [b.idempotency_key for b in shifted[1:]] == [b.idempotency_key for b in plain]
    assert [b.index for b in shifted[1:]] != [b.index for b in plain]


@settings(max_examples=300)
@given(
    job_key=st.text(min_size=1, max_size=1000),
    index=st.integers(0, 10**12),
    identities=st.lists(st.text(max_size=80), max_size=5),
)
def test_keys_always_fit_the_api_pattern(job_key: str, index: int, identities: list[str]) -> None:
    key = batch_idempotency_key(job_key, identities)
    assert KEY.fullmatch(key)
    key = batch_idempotency_key(job_key, identities, index=index)
    assert KEY.fullmatch(key)
    assert KEY.fullmatch(message_idempotency_key(job_key, index, "a@example.com"))


@settings(max_examples=100)
@given(st.text(min_size=1, max_size=50), st.text(min_size=1, max_size=50))
def test_different_job_keys_never_share_a_key(one: str, two: str) -> None:
    if one != two:
        assert batch_idempotency_key(one, ["a@x.io"]) != batch_idempotency_key(two, ["a@x.io"])


def test_job_key_for_is_unambiguous_and_readable() -> None:
    assert job_key_for("dag", "task", "manual__2026-01-01T00:00:00+00:00", -1) == (
        "dag/task/manual__2026-01-01T00:00:00+00:00/-1"
    )
    assert job_key_for("a/b", "c") != job_key_for("a", "b/c")
    assert job_key_for("a%2Fb") != job_key_for("a/b")
    with pytest.raises(ValueError, match="part"):
        job_key_for()


def test_per_message_keys_are_set_and_serialised() -> None:
    plan = plan_batches(TEMPLATE, people(3), job_key="job", per_message_keys=True)
    [batch] = split(plan)[0]
    keys = [m.get("idempotency_key") for m in batch.messages]
    assert keys == [message_idempotency_key("job", i, f"user{i}@example.com") for i in range(3)]
    body = json.loads(batch.to_json())
    assert [m["idempotency_key"] for m in body["messages"]] == keys
    plain = split(plan_batches(TEMPLATE, people(3), job_key="job"))[0][0]
    assert "idempotency_key" not in json.loads(plain.to_json())["messages"][0]


def test_subset_for_a_resend_has_a_new_stable_key() -> None:
    [batch] = split(plan_batches(TEMPLATE, people(10), job_key="job"))[0]
    resend = batch.subset([7, 2, 2], attempt=1)
    assert resend.positions == [2, 7]
    assert [m["to"]["email"] for m in resend.messages] == ["user2@example.com", "user7@example.com"]
    assert resend.index == batch.index
    assert resend.attempt == 1
    assert resend.idempotency_key != batch.idempotency_key
    assert KEY.fullmatch(resend.idempotency_key)
    assert batch.subset([2, 7], attempt=1).idempotency_key == resend.idempotency_key
    assert batch.subset([2, 7], attempt=2).idempotency_key != resend.idempotency_key
    assert batch.subset([2], attempt=1).idempotency_key != resend.idempotency_key
    assert len(resend.to_json()) <= resend.size_bound
    nested = resend.subset([0], attempt=2)
    assert KEY.fullmatch(nested.idempotency_key)
    assert len(nested.idempotency_key) <= 255
    for bad in ([], [10], [-1]):
        with pytest.raises((ValueError, IndexError)):
            batch.subset(bad, attempt=1)
    with pytest.raises(ValueError, match="attempt"):
        batch.subset([0], attempt=0)


def test_a_resend_key_does_not_depend_on_where_the_batch_stood_in_the_source() -> None:
    # A re-run whose list gained a broken row in front: the same members,
    # one position later each. The batch replays; so must its resends.
    [before] = split(plan_batches(TEMPLATE, people(10), job_key="job"))[0]
    [after] = split(plan_batches(TEMPLATE, ["broken@@", *people(10)], job_key="job"))[0]
    assert after.positions == [p + 1 for p in before.positions]
    assert after.idempotency_key == before.idempotency_key
    assert after.subset([2, 7], 1).idempotency_key == before.subset([2, 7], 1).idempotency_key


@pytest.mark.parametrize("per_message_keys", [False, True])
def test_the_body_reuses_the_measured_bytes_and_equals_batch_body(per_message_keys: bool) -> None:
    # Every third recipient brings an attachment: those messages are only
    # bounded while planned, and encoded when the body is built.
    note = Attachment.from_bytes(b"your receipt", "receipt.txt", "text/plain")
    rows = [
        {**row, "attachments": [note]} if i % 3 == 0 else row for i, row in enumerate(people(12))
    ]
    plan = plan_batches(TEMPLATE, rows, job_key="job", per_message_keys=per_message_keys)
    [batch] = split(plan)[0]
    assert batch.encoded is not None
    assert [part is None for part in batch.encoded] == [i % 3 == 0 for i in range(12)]
    expected = batch_body(batch.messages, include_idempotency_keys=per_message_keys)
    assert batch.to_json() == expected
    assert len(expected) <= batch.size_bound
    assert json.loads(expected)["messages"][0]["attachments"][0]["filename"] == "receipt.txt"
    resend = batch.subset([0, 4, 9], attempt=1)
    assert resend.to_json() == batch_body(
        resend.messages, include_idempotency_keys=per_message_keys
    )
    assert [m["to"]["email"] for m in json.loads(resend.to_json())["messages"]] == [
        "user0@example.com",
        "user4@example.com",
        "user9@example.com",
    ]


def test_batches_helper_passes_failures_and_duplicates_to_callbacks() -> None:
    failures: list[RecipientFailure] = []
    duplicates: list[Duplicate] = []
    rows = [*people(3), {"email": "x"}, {"email": "USER0@example.com", "code": 0}]
    plan = plan_batches(TEMPLATE, rows, job_key="j")
    batches = list(plan.batches(on_failure=failures.append, on_duplicate=duplicates.append))
    assert [len(b) for b in batches] == [3]
    assert [f.position for f in failures] == [3]
    assert [d.position for d in duplicates] == [4]
    assert plan.stats.failures == 1
    assert plan.stats.duplicates_dropped == 1


def test_a_personalizer_can_be_passed_in() -> None:
    personalizer = Personalizer(TEMPLATE)
    batches = split(plan_batches(personalizer, people(2), job_key="j"))[0]
    assert batches[0].messages[1]["subject"] == "Hello User 1"


def test_the_recipients_of_a_batch_are_the_messages_recipients() -> None:
    [batch] = split(
        plan_batches(TEMPLATE, [Recipient("a@example.com", "A", {"code": 1})], job_key="j")
    )[0]
    assert batch.recipients == [Recipient("a@example.com", "A", {"code": 1}, position=0)]


# ---------------------------------------------------------------- memory


@pytest.mark.slow
def test_planning_200k_recipients_from_a_generator_stays_in_flat_memory() -> None:
    template = {
        "from": "news@example.com",
        # One templated field: tracemalloc slows every allocation, and the
        # rendering cost is not what this test is about.
        "subject": "Hi {{ name }}",
        "html_body": "<p>Hello</p>" + "<p>lorem ipsum dolor</p>" * 20,
    }
    count = 200_000
    batches = 0
    tracemalloc.start()
    try:
        plan = plan_batches(template, people(count), job_key="memory")
        for item in plan:
            assert isinstance(item, PlannedBatch)
            batches += 1
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert batches == count // 100
    assert plan.stats.messages == count
    # The dedupe table for 200k addresses is 4 MB (8 bytes x 512k slots, 6 MB
    # while growing); a list of the messages would be hundreds of MB.
    assert peak < 12 * 1024 * 1024, f"peak {peak / 1e6:.1f} MB"
