"""The shared core of sendmux-workflows: send email through Sendmux, one or millions.

What a user reaches for is here: the clients, the message model, the errors a
call can raise, ``dispatch`` and its report, the recipient readers, the pacers,
the ledger and the retry policy. Everything else (the batch planner, the wire
fast path, idempotency keys, response models such as ``Me`` or ``Metrics``)
stays importable from its own module, ``sendmux_dispatch.batching``,
``sendmux_dispatch.models``, ``sendmux_dispatch.errors`` and so on, for the
Airflow provider and the Celery pack; ``tests/unit/test_public_surface.py``
pins this list and checks that the docs name every entry.
"""

from sendmux_dispatch._version import __version__
from sendmux_dispatch.client import AsyncSendmuxClient, SendmuxClient
from sendmux_dispatch.dispatch import DispatchOptions, adispatch, dispatch
from sendmux_dispatch.errors import (
    APIError,
    AuthenticationError,
    InputError,
    InsufficientCreditsError,
    InvalidMessageError,
    LedgerUnavailableError,
    PermissionDeniedError,
    RateLimitError,
    SendmuxError,
    ServerError,
    ServiceUnavailableError,
    TransportError,
)
from sendmux_dispatch.ledger import Ledger, RedisLedger, SqliteLedger
from sendmux_dispatch.models import (
    Address,
    Attachment,
    BatchResult,
    DeliveryLog,
    EmailMessage,
    SendResult,
)
from sendmux_dispatch.pacing import InProcessPacer, Pacer, RedisPacer, key_fingerprint
from sendmux_dispatch.recipients import (
    Recipient,
    RecipientFailure,
    iter_recipients,
    read_csv,
    read_jsonl,
)
from sendmux_dispatch.report import DispatchReport, Failure, Outcome, Progress, StopCause
from sendmux_dispatch.retry import RetryPolicy

__all__ = [
    "APIError",
    "Address",
    "AsyncSendmuxClient",
    "Attachment",
    "AuthenticationError",
    "BatchResult",
    "DeliveryLog",
    "DispatchOptions",
    "DispatchReport",
    "EmailMessage",
    "Failure",
    "InProcessPacer",
    "InputError",
    "InsufficientCreditsError",
    "InvalidMessageError",
    "Ledger",
    "LedgerUnavailableError",
    "Outcome",
    "Pacer",
    "PermissionDeniedError",
    "Progress",
    "RateLimitError",
    "Recipient",
    "RecipientFailure",
    "RedisLedger",
    "RedisPacer",
    "RetryPolicy",
    "SendResult",
    "SendmuxClient",
    "SendmuxError",
    "ServerError",
    "ServiceUnavailableError",
    "SqliteLedger",
    "StopCause",
    "TransportError",
    "__version__",
    "adispatch",
    "dispatch",
    "iter_recipients",
    "key_fingerprint",
    "read_csv",
    "read_jsonl",
]
