"""Response models: what Sendmux answers.

Unknown fields are ignored so that a server adding fields never breaks a
running pipeline; the fields we read are the spec's.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "TERMINAL_STATUSES",
    "AutoTopup",
    "Balance",
    "BatchItem",
    "BatchResult",
    "BatchSummary",
    "Credential",
    "DeliveryLog",
    "DeliveryLogRecipient",
    "DeliveryStatus",
    "ErrorDetail",
    "ErrorIssue",
    "Mailbox",
    "Me",
    "Metrics",
    "MetricsComparison",
    "MetricsCounts",
    "MetricsPoint",
    "SendResult",
    "Team",
]

DeliveryStatus = Literal["pending", "sent", "failed", "rejected"]
TERMINAL_STATUSES: frozenset[str] = frozenset({"sent", "failed", "rejected"})


class _ResponseModel(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class ErrorIssue(_ResponseModel):
    field: str
    code: str
    message: str


class ErrorDetail(_ResponseModel):
    """The ``error`` object of an envelope, or of one failed batch item."""

    code: str
    message: str
    param: str | None = None
    doc_url: str | None = None
    retryable: bool = False
    errors: list[ErrorIssue] = Field(default_factory=list)


class SendResult(_ResponseModel):
    """POST /emails/send: the message was queued."""

    message_id: str
    status: str
    request_id: str | None = None


class BatchItem(_ResponseModel):
    """One message of a batch, by its position in the request."""

    index: int
    message_id: str | None = None
    status: Literal["queued", "failed"]
    error: ErrorDetail | None = None

    @property
    def ok(self) -> bool:
        return self.status == "queued"

    @property
    def retryable(self) -> bool:
        return self.error is not None and self.error.retryable


class BatchSummary(_ResponseModel):
    total: int
    queued: int
    failed: int


class BatchResult(_ResponseModel):
    """POST /emails/send/batch: per-message results (partial success) and a summary."""

    results: list[BatchItem]
    summary: BatchSummary
    request_id: str | None = None

    @property
    def queued(self) -> list[BatchItem]:
        return [item for item in self.results if item.status == "queued"]

    @property
    def failed(self) -> list[BatchItem]:
        return [item for item in self.results if item.status == "failed"]


class DeliveryLogRecipient(_ResponseModel):
    email: str
    type: Literal["to", "cc", "bcc"] | None = None
    status: Literal["accepted", "rejected"]
    reason: str | None = None


class DeliveryLog(_ResponseModel):
    """One delivery log (``dlog_…``) from the Management API."""

    id: str
    status: DeliveryStatus
    status_reason: str | None = None
    message_id: str | None = None
    to_email: str | None = None
    from_email: str | None = None
    sent_from_email: str | None = None
    subject: str | None = None
    provider_id: str | None = None
    provider_name: str | None = None
    delivery_group: list[str] | None = None
    attempts: float = 0
    sent_at: datetime | None = None
    size_bytes: float | None = None
    created_at: datetime
    recipient_count: int | None = None
    accepted_recipient_count: int | None = None
    rejected_recipient_count: int | None = None
    #: Only on the single-log endpoint.
    recipients: list[DeliveryLogRecipient] | None = None

    @property
    def is_terminal(self) -> bool:
        """True once the status can no longer change (sent, failed or rejected)."""
        return self.status in TERMINAL_STATUSES


class Team(_ResponseModel):
    id: str
    name: str


class Credential(_ResponseModel):
    id: str
    type: str
    name: str | None = None


class Mailbox(_ResponseModel):
    id: str
    email: str


class Me(_ResponseModel):
    """GET /me: the key's team, label and permissions."""

    team: Team
    credential: Credential
    label: str
    permissions: list[str]
    mailboxes: list[Mailbox] = Field(default_factory=list)

    def has_permission(self, permission: str) -> bool:
        """True when the key holds ``permission``, directly or by a wildcard (``logs.*``)."""
        if permission in self.permissions or "root:full" in self.permissions:
            return True
        namespace = permission.split(".", 1)[0]
        return f"{namespace}.*" in self.permissions or (
            permission.endswith(".read") and "root:readonly" in self.permissions
        )


class MetricsCounts(_ResponseModel):
    total: float
    sent: float
    failed: float
    rejected: float
    pending: float


class MetricsComparison(MetricsCounts):
    change_pct: MetricsCounts


class MetricsPoint(MetricsCounts):
    timestamp: datetime


class Metrics(_ResponseModel):
    """GET /emails/metrics: totals, change against the previous window, time series."""

    summary: MetricsCounts
    comparison: MetricsComparison
    timeseries: list[MetricsPoint]


class AutoTopup(_ResponseModel):
    enabled: bool
    threshold: Decimal | None = None
    amount: Decimal | None = None
    monthly_limit: Decimal | None = None
    monthly_used: Decimal | None = None


class Balance(_ResponseModel):
    """GET /billing/balance. Money is ``Decimal``, parsed from the API's strings."""

    balance: Decimal
    balance_purchased: Decimal | None = None
    balance_consumed: Decimal | None = None
    currency: str
    auto_topup: AutoTopup | None = None
