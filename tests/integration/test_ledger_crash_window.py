"""The server-facing half of the ledger's crash-window argument (docs/ledger.md), on the sandbox.

These tests play dispatch's part by hand (begin, send, "crash" before
finish, re-run) to check what the design rests on, at the level of single
requests (dispatch itself: test_dispatch_ledger.py): a pending batch
rebuilt from a changed list and sent under its recorded key is never
delivered twice, and is delivered when the first try never reached the
server.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sendmux_dispatch import SqliteLedger
from sendmux_dispatch.errors import IdempotencyConflictError
from sendmux_dispatch.ledger import Intent, recipient_digest
from sendmux_dispatch.recipients import normalize_email

JOB = "crash-window"


def message(email: str, subject: str) -> dict[str, Any]:
    return {
        "from": {"email": "news@example.com"},
        "to": {"email": email},
        "subject": subject,
        "html_body": f"<p>Hello {email}</p>",
    }


def digest(email: str) -> int:
    return recipient_digest(normalize_email(email))


def test_an_accepted_batch_rebuilt_from_an_edited_list_is_not_sent_again(
    client: Any, sandbox: Any, tmp_path: Path
) -> None:
    members = [f"m{i}@example.com" for i in range(5)]
    ledger = SqliteLedger(tmp_path / "ledger.db")
    intent = Intent("crash-window-batch-1", tuple(digest(email) for email in members))
    assert ledger.begin(JOB, intent) == set()
    result = client.send_batch(
        [message(email, "Hello") for email in members], idempotency_key=intent.key
    )
    assert all(item.ok for item in result.results)
    # Killed here: the server accepted, finish() never ran.
    ledger.close()

    ledger = SqliteLedger(tmp_path / "ledger.db")
    [pending] = ledger.pending(JOB)
    # The re-run's list: a row inserted at the top, m2 removed, the subject edited.
    new_list = ["new@example.com", *[email for email in members if email != "m2@example.com"]]
    by_digest = {digest(email): email for email in new_list}
    rebuilt = [by_digest[d] for d in pending.digests if d in by_digest]
    assert rebuilt == ["m0@example.com", "m1@example.com", "m3@example.com", "m4@example.com"]
    with pytest.raises(IdempotencyConflictError) as caught:
        client.send_batch(
            [message(email, "Hello again") for email in rebuilt], idempotency_key=pending.key
        )
    assert not caught.value.retryable  # "already accepted", not "try later"
    ledger.finish(JOB, pending.key, accepted=pending.digests)
    assert ledger.accepted_among(JOB, [digest(email) for email in new_list]) == set(
        pending.digests
    ) - {digest("m2@example.com")}

    stats = sandbox.stats()
    assert stats["accepted_messages"] == stats["unique_recipients"] == 5
    assert stats["duplicate_deliveries"] == 0
    for email in members:
        assert len(sandbox.messages(to=email)) == 1
    ledger.close()


def test_a_pending_batch_that_never_reached_the_server_is_sent_on_the_rerun(
    client: Any, sandbox: Any, tmp_path: Path
) -> None:
    members = [f"p{i}@example.com" for i in range(4)]
    with SqliteLedger(tmp_path / "ledger.db") as ledger:
        intent = Intent("crash-window-batch-2", tuple(digest(email) for email in members))
        assert ledger.begin(JOB, intent) == set()
        # Killed here, before the request left.

    with SqliteLedger(tmp_path / "ledger.db") as ledger:
        [pending] = ledger.pending(JOB)
        present = [email for email in members if email != "p1@example.com"]
        result = client.send_batch(
            [message(email, "Hello") for email in present], idempotency_key=pending.key
        )
        accepted = [digest(present[item.index]) for item in result.results if item.ok]
        ledger.finish(JOB, pending.key, accepted=accepted)
        assert ledger.pending(JOB) == []
        # The absent member was released, not recorded: a later run may send it.
        assert ledger.accepted_among(JOB, [digest("p1@example.com")]) == set()
        assert ledger.begin(JOB, Intent("later", (digest("p1@example.com"),))) == set()

    stats = sandbox.stats()
    assert stats["accepted_messages"] == stats["unique_recipients"] == 3
    assert sandbox.messages(to="p1@example.com") == []
