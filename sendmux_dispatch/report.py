"""What a dispatch did, small enough for an Airflow XCom or a Celery result at any job size.

Every recipient read from the source ends in exactly one outcome::

    total == queued + failed + invalid + duplicates_dropped + already_accepted + not_sent

- ``queued``: Sendmux holds the message as queued (a replay of an accepted
  batch under the same Idempotency-Key returns the original answer, so a re-run
  counts the same messages as queued again without sending them twice);
- ``failed``: the server refused the message, or retries ran out;
- ``invalid``: refused on our side before any request (bad address, a line
  break in a name, an undefined template variable, too large);
- ``duplicates_dropped``: the same address appeared earlier in the list;
- ``already_accepted``: the server said the batch's key was already used for
  this work (``idempotency_conflict`` on a replay): sent before, not again;
- ``not_sent``: never attempted because the job stopped early (``stop_cause``).

:class:`Outcome` names these; its values are the ``status`` of a line in the
results file (``duplicate`` there, ``duplicates_dropped`` in the report).

Failures are kept with recipient, code and message up to a cap; beyond it they
are only counted. Full per-recipient results can be streamed to a file instead.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import IO, Any, Literal

__all__ = [
    "DispatchReport",
    "Failure",
    "Outcome",
    "Progress",
    "ProgressCallback",
    "ResultWriter",
    "StopCause",
]

#: Why a job stopped before the end of its list (``DispatchReport.stop_cause``):
#: ``auth`` 401/403, ``credits`` 402, ``rate_limited`` a Retry-After beyond the
#: policy, ``outage`` consecutive batches failing the same way (the circuit
#: breaker), ``input`` the recipient source could not be read on, ``interrupted``
#: Ctrl-C or a caller's stop, ``ledger`` the ledger could not be reached.
StopCause = Literal["auth", "credits", "rate_limited", "outage", "input", "interrupted", "ledger"]


class Outcome(str, Enum):
    """How one recipient ended: the ``status`` of its line in the results file.

    A ``str`` (``Outcome.QUEUED == "queued"``, JSON writes the value), so results
    files read the same as before the enum existed.
    """

    QUEUED = "queued"
    FAILED = "failed"
    INVALID = "invalid"
    DUPLICATE = "duplicate"
    ALREADY_ACCEPTED = "already_accepted"
    NOT_SENT = "not_sent"

    def __str__(self) -> str:
        # As StrEnum (3.11+) does: f-strings and str() give the value, not "Outcome.QUEUED".
        return self.value

    @property
    def counter(self) -> str:
        """The :class:`DispatchReport` field that counts this outcome."""
        return "duplicates_dropped" if self is Outcome.DUPLICATE else self.value


#: Failures kept in a report by default; the rest are counted.
DEFAULT_MAX_FAILURES = 100


@dataclass(frozen=True, slots=True)
class Failure:
    """One recipient that was not queued, and why."""

    position: int | None
    email: str | None
    code: str
    message: str


@dataclass(frozen=True, slots=True)
class Progress:
    """Passed to the progress callback after every batch."""

    batches_done: int
    messages_done: int
    queued: int
    failed: int
    elapsed: float

    @property
    def rate(self) -> float:
        """Messages handled per second so far."""
        return self.messages_done / self.elapsed if self.elapsed > 0 else 0.0


ProgressCallback = Callable[[Progress], None]


@dataclass
class DispatchReport:
    """Totals by outcome, failures (capped), request counts and elapsed time."""

    job_key: str
    total: int = 0
    queued: int = 0
    failed: int = 0
    invalid: int = 0
    duplicates_dropped: int = 0
    already_accepted: int = 0
    not_sent: int = 0
    batches: int = 0
    requests: int = 0
    retries: int = 0
    rate_limited: int = 0
    elapsed: float = 0.0
    stopped_reason: str | None = None
    stop_cause: StopCause | None = None
    failures: list[Failure] = field(default_factory=list)
    failures_omitted: int = 0
    max_failures: int = DEFAULT_MAX_FAILURES

    @property
    def ok(self) -> bool:
        """True when every recipient was queued or deliberately skipped (duplicates, replays)."""
        return not (self.failed or self.invalid or self.not_sent or self.stopped_reason)

    def count(self, outcome: Outcome) -> int:
        """How many recipients ended with ``outcome``."""
        return int(getattr(self, outcome.counter))

    def add_failure(self, failure: Failure) -> None:
        if len(self.failures) < self.max_failures:
            self.failures.append(failure)
        else:
            self.failures_omitted += 1

    def summary_line(self) -> str:
        parts = [
            f"{self.total} recipients",
            f"{self.queued} queued",
            f"{self.failed} failed",
            f"{self.invalid} invalid",
            f"{self.duplicates_dropped} duplicates dropped",
        ]
        if self.already_accepted:
            parts.append(f"{self.already_accepted} already accepted")
        if self.not_sent:
            parts.append(f"{self.not_sent} not sent")
        line = (
            ", ".join(parts) + f" in {self.batches} batches, {self.requests} requests "
            f"({self.retries} retries, {self.rate_limited} rate-limited), {self.elapsed:.1f}s"
        )
        if self.stopped_reason:
            line += f"; stopped early: {self.stopped_reason}"
        return line

    def as_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (for XCom, Celery results, logs)."""
        data = asdict(self)
        data["ok"] = self.ok
        del data["max_failures"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DispatchReport:
        values = {k: v for k, v in data.items() if k != "ok"}
        values["failures"] = [Failure(**f) for f in values.get("failures", [])]
        return cls(**values)

    def merge(self, other: DispatchReport) -> None:
        """Add another report's counts to this one (a Celery job sums its batch reports)."""
        for name in (
            "total",
            *(outcome.counter for outcome in Outcome),
            "batches",
            "requests",
            "retries",
            "rate_limited",
        ):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for failure in other.failures:
            self.add_failure(failure)
        self.failures_omitted += other.failures_omitted
        self.stopped_reason = self.stopped_reason or other.stopped_reason


class ResultWriter:
    """Streams one JSON line per recipient outcome to a file (thread-safe).

    Each line reaches the operating system as it is written (line-buffered),
    so a process killed mid-job (``kill -9``) leaves a file of whole lines
    holding every answer it had received, not the last buffer's worth.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._file: IO[str] = self.path.open("w", encoding="utf-8", buffering=1)

    def write(
        self,
        *,
        position: int | None,
        email: str | None,
        status: str,
        message_id: str | None = None,
        code: str | None = None,
        message: str | None = None,
    ) -> None:
        line = json.dumps(
            {
                "position": position,
                "email": email,
                "status": status,
                "message_id": message_id,
                "code": code,
                "message": message,
            }
        )
        with self._lock:
            self._file.write(line + "\n")

    def close(self) -> None:
        with self._lock:
            self._file.close()
