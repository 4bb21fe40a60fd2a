"""The send ledger's planning stage (BatchPlan with a LedgerStage), without a server."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import pytest

from sendmux_dispatch import LedgerUnavailableError, RecipientFailure
from sendmux_dispatch.batching import (
    Duplicate,
    LedgerStage,
    Lookup,
    PlannedBatch,
    Skipped,
    batch_idempotency_key,
    plan_batches,
)
from sendmux_dispatch.ledger import Intent, recipient_digest

TEMPLATE = {
    "from": {"email": "a@example.com"},
    "subject": "Hi {{ name }}",
    "text_body": "{{ code }}",
}


def row(i: int, *, valid: bool = True) -> dict[str, Any]:
    return {"email": f"u{i}@example.com", "name": f"U{i}", **({"code": i} if valid else {})}


def d(i: int) -> int:
    return recipient_digest(f"u{i}@example.com")


class Lookups:
    def __init__(self, accepted: Sequence[int] = (), fail_at: int = 0) -> None:
        self.accepted = set(accepted)
        self.calls: list[int] = []
        self.fail_at = fail_at

    def __call__(self, digests: Sequence[int]) -> set[int]:
        self.calls.append(len(digests))
        if self.fail_at and len(self.calls) == self.fail_at:
            raise LedgerUnavailableError("down", backend="test")
        return self.accepted & set(digests)


def plan(rows: list[dict[str, Any]], stage: LedgerStage) -> list[Any]:
    return list(plan_batches(TEMPLATE, rows, job_key="job", ledger=stage))


def test_pending_members_come_out_under_their_key_in_recorded_order() -> None:
    intent = Intent("job-recorded-key", (d(7), d(3), d(5)), attempt=1, created=time.time())
    lookups = Lookups()
    # Rows inserted at the top and between: the replay batch is the same.
    rows = [row(100 + i) for i in range(150)] + [row(i) for i in range(10)]
    items = plan(rows, LedgerStage(lookups, [intent]))
    batches = [item for item in items if isinstance(item, PlannedBatch)]
    [replay] = [b for b in batches if b.intent is not None]
    assert replay.idempotency_key == "job-recorded-key"
    assert replay.attempt == 1
    assert [r.email for r in replay.recipients] == [
        "u7@example.com",
        "u3@example.com",
        "u5@example.com",
    ]
    others = [r.identity for b in batches if b.intent is None for r in b.recipients]
    assert len(others) == 157
    assert not {"u7@example.com", "u3@example.com", "u5@example.com"} & set(others)
    # New batches: content keys; one lookup per 100 rows read, pending ones not asked.
    for batch in batches:
        if batch.intent is None:
            assert batch.idempotency_key == batch_idempotency_key("job", batch.identities)
    assert lookups.calls == [100, 57]


def test_accepted_are_skipped_and_a_fresh_job_asks_nothing() -> None:
    lookups = Lookups({d(1), d(2)})
    items = plan([row(i) for i in range(5)], LedgerStage(lookups))
    skipped = [item for item in items if isinstance(item, Skipped)]
    assert [(s.email, s.status) for s in skipped] == [
        ("u1@example.com", "already_accepted"),
        ("u2@example.com", "already_accepted"),
    ]
    fresh = Lookups({d(1)})
    items = plan([row(i) for i in range(5)], LedgerStage(fresh, fresh=True))
    assert fresh.calls == []
    assert sum(len(i) for i in items if isinstance(i, PlannedBatch)) == 5


def test_a_stale_intent_is_reported_not_replayed() -> None:
    intent = Intent("old", (d(1), d(2)), created=time.time() - 24 * 3600)
    items = plan([row(i) for i in range(4)], LedgerStage(Lookups(), [intent]))
    skipped = [item for item in items if isinstance(item, Skipped)]
    assert {(s.email, s.status, s.code) for s in skipped} == {
        ("u1@example.com", "failed", "unconfirmed_pending"),
        ("u2@example.com", "failed", "unconfirmed_pending"),
    }
    assert all(b.intent is None for b in items if isinstance(b, PlannedBatch))


def test_a_later_copy_of_a_refused_pending_member_never_travels_under_a_new_key() -> None:
    intent = Intent("k", (d(1), d(2)), created=time.time())
    rows = [row(1, valid=False), row(2), row(3), row(1)]
    items = plan(rows, LedgerStage(Lookups(), [intent]))
    [replay] = [b for b in items if isinstance(b, PlannedBatch) and b.intent is not None]
    assert [r.email for r in replay.recipients] == ["u2@example.com"]
    late = [i for i in items if isinstance(i, Skipped)]
    assert [(s.email, s.code) for s in late] == [("u1@example.com", "replay_member_late")]
    new = [
        r.email
        for b in items
        if isinstance(b, PlannedBatch) and b.intent is None
        for r in b.recipients
    ]
    assert new == ["u3@example.com"]
    assert len([i for i in items if isinstance(i, RecipientFailure)]) == 1
    assert not [i for i in items if isinstance(i, Duplicate)]


def test_a_lookup_that_fails_ends_the_plan_and_sends_nothing_unasked() -> None:
    lookups = Lookups(fail_at=2)
    bp = plan_batches(
        TEMPLATE, [row(i) for i in range(450)], job_key="job", ledger=LedgerStage(lookups)
    )
    items = list(bp)
    planned = sum(len(b) for b in items if isinstance(b, PlannedBatch))
    assert planned == 100  # the first chunk only
    assert bp.stats.recipients == 200  # the second chunk was read, never batched


def test_a_ledger_needs_dedupe() -> None:
    with pytest.raises(ValueError, match="dedupe"):
        plan_batches(TEMPLATE, [row(1)], job_key="job", dedupe=False, ledger=LedgerStage(Lookups()))


def test_batches_carry_the_digests_the_planner_hashed_in_member_order() -> None:
    # begin and finish reuse these instead of hashing again: they must be
    # exactly each member's digest, batch by batch (a duplicate and a bad row at the end).
    rows = [row(i) for i in range(250)] + [row(3), row(i=999, valid=False)]
    items = plan(rows, LedgerStage(Lookups(), [], fresh=True))
    batches = [item for item in items if isinstance(item, PlannedBatch)]
    assert [len(batch) for batch in batches] == [100, 100, 50]
    for batch in batches:
        assert batch.digests == tuple(recipient_digest(r.identity) for r in batch.recipients)


def test_without_a_callable_the_plan_hands_each_lookup_to_its_caller() -> None:
    # How dispatch's drivers ask the ledger where they run blocking work.
    answered: list[int] = []
    batched: list[str] = []
    skipped: list[str] = []
    for item in plan_batches(
        TEMPLATE, [row(i) for i in range(150)], job_key="job", ledger=LedgerStage(None)
    ):
        if isinstance(item, Lookup):
            answered.append(len(item.digests))
            item.accepted = {d(3)} & set(item.digests)
        elif isinstance(item, PlannedBatch):
            batched += [r.email for r in item.recipients]
        elif isinstance(item, Skipped):
            skipped.append(item.email)
    assert answered == [100, 50]
    assert skipped == ["u3@example.com"]
    assert len(batched) == 149

    # Unanswered (the ledger could not be reached): the plan ends at that chunk.
    items = list(
        plan_batches(
            TEMPLATE, [row(i) for i in range(150)], job_key="job", ledger=LedgerStage(None)
        )
    )
    assert [type(item) for item in items] == [Lookup]
