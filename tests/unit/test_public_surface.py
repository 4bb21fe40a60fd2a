"""The names a user imports from ``sendmux_dispatch``: pinned, documented, and nothing else."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

import sendmux_dispatch

ROOT = Path(__file__).resolve().parents[2]

# Changing this list is changing the public API: add the name to the docs too.
PUBLIC = {
    "__version__",
    # clients and what they send and return
    "SendmuxClient",
    "AsyncSendmuxClient",
    "EmailMessage",
    "Address",
    "Attachment",
    "SendResult",
    "BatchResult",
    "DeliveryLog",
    # errors a caller catches
    "SendmuxError",
    "InvalidMessageError",
    "InputError",
    "TransportError",
    "APIError",
    "AuthenticationError",
    "PermissionDeniedError",
    "InsufficientCreditsError",
    "RateLimitError",
    "ServerError",
    "ServiceUnavailableError",
    "LedgerUnavailableError",
    # sending a list
    "dispatch",
    "adispatch",
    "DispatchOptions",
    "DispatchReport",
    "Outcome",
    "StopCause",
    "Failure",
    "Progress",
    "Recipient",
    "RecipientFailure",
    "iter_recipients",
    "read_csv",
    "read_jsonl",
    # staying under the limit, remembering what was sent, retrying
    "RetryPolicy",
    "Pacer",
    "InProcessPacer",
    "RedisPacer",
    "key_fingerprint",
    "Ledger",
    "SqliteLedger",
    "RedisLedger",
}

# Internals the integrations use: still importable, from their own modules.
INTERNAL = {
    "sendmux_dispatch.batching": ["plan_batches", "PlannedBatch"],
    "sendmux_dispatch.keys": ["job_key_for", "batch_idempotency_key"],
    "sendmux_dispatch.dispatch": ["Dispatcher", "AsyncDispatcher", "DispatchKwargs"],
    "sendmux_dispatch.models": ["wire_message", "wire_messages", "batch_body", "Me"],
    "sendmux_dispatch.errors": ["ValidationError", "FieldIssue", "scrub_secrets"],
    "sendmux_dispatch.client": ["DEFAULT_SENDING_URL", "ClientStats"],
    "sendmux_dispatch.recipients": ["ReadStats"],
    "sendmux_dispatch.report": ["ResultWriter"],
    "sendmux_dispatch.personalize": ["Personalizer"],
}


def test_all_is_the_pinned_public_surface() -> None:
    assert set(sendmux_dispatch.__all__) == PUBLIC
    assert len(sendmux_dispatch.__all__) == len(PUBLIC)  # no name listed twice


def test_every_public_name_is_importable() -> None:
    for name in PUBLIC:
        assert getattr(sendmux_dispatch, name) is not None, name


def test_the_package_exports_nothing_it_does_not_list() -> None:
    exported = {
        name
        for name, value in vars(sendmux_dispatch).items()
        if not name.startswith("_") and not isinstance(value, type(sendmux_dispatch))
    }
    assert exported <= PUBLIC, sorted(exported - PUBLIC)


def test_every_public_name_is_in_the_docs() -> None:
    text = "\n".join(
        path.read_text(encoding="utf-8")
        for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    )
    missing = [
        name
        for name in sorted(PUBLIC - {"__version__"})
        if not re.search(rf"(?<![\w.]){re.escape(name)}(?!\w)", text)
    ]
    assert not missing, f"not named in README.md or docs/*.md: {missing}"


@pytest.mark.parametrize("module", sorted(INTERNAL))
def test_internals_stay_importable_from_their_modules(module: str) -> None:
    loaded = importlib.import_module(module)
    for name in INTERNAL[module]:
        assert hasattr(loaded, name), f"{module}.{name}"
        assert name not in sendmux_dispatch.__all__
