"""What every ledger backend shares: the protocol, the intent record, the bounded retry."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Protocol, TypeVar, runtime_checkable

from sendmux_dispatch._digests import DigestSet
from sendmux_dispatch.errors import LedgerUnavailableError

__all__ = [
    "DEFAULT_UNAVAILABLE_AFTER",
    "Finish",
    "GroupCommitLedger",
    "Intent",
    "JobStats",
    "Ledger",
    "recipient_digest",
    "record",
]

logger = logging.getLogger("sendmux_dispatch.ledger")

#: Seconds a backend keeps retrying an unreachable store before it gives up.
DEFAULT_UNAVAILABLE_AFTER = 30.0

_DIGEST_LIMIT = 1 << 64
_T = TypeVar("_T")


def recipient_digest(identity: str) -> int:
    """The ledger's digest of a normalised address (``Recipient.identity``).

    The very digest deduplication uses (:meth:`DigestSet.digest`, 64-bit
    blake2b), so the planner hashes each recipient once for both, and two
    addresses that collide are treated alike by both (odds about n² / 2⁶⁵).
    """
    return DigestSet.digest(identity)


def _check_digests(digests: Sequence[int]) -> None:
    # min and max first (C speed, on every begin and finish); the loop only
    # to name the culprit.
    try:
        if not digests or (min(digests) > 0 and max(digests) < _DIGEST_LIMIT):
            return
    except TypeError:
        pass
    for digest in digests:
        if not isinstance(digest, int) or not 0 < digest < _DIGEST_LIMIT:
            raise ValueError(f"a ledger digest is a 64-bit integer above 0, got {digest!r}")


def _check_job_key(job_key: str) -> None:
    if not isinstance(job_key, str) or not job_key:
        raise ValueError("job_key must be a non-empty string that identifies the work")


def seconds(value: float | timedelta) -> float:
    """``older_than`` as seconds (a number or a timedelta), refusing negatives."""
    result = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if result < 0:
        raise ValueError("older_than must be 0 or more")
    return result


@dataclass(frozen=True, slots=True)
class Intent:
    """A batch recorded as pending *before* it is sent (the write-ahead record).

    ``key`` is the Idempotency-Key it goes out under, ``digests`` its
    members' digests in batch order (:func:`recipient_digest`), ``attempt``
    0 for a planned batch and n for the n-th resend of part of one.
    ``created`` is set by the ledger (epoch seconds) when it records it.

    A re-run rebuilds the batch from the members it finds in its list, in
    this order, and sends it under this key: see docs/ledger.md.
    """

    key: str
    digests: tuple[int, ...]
    attempt: int = 0
    created: float = field(default=0.0, compare=False)

    def __post_init__(self) -> None:
        if not self.key or len(self.key) > 255:
            raise ValueError("an intent's key is the batch's Idempotency-Key: 1 to 255 characters")
        if not self.digests:
            raise ValueError("an intent needs at least one member")
        if len(set(self.digests)) != len(self.digests):
            raise ValueError("an intent's members must be distinct")
        _check_digests(self.digests)
        if self.attempt < 0:
            raise ValueError("attempt must be 0 or more")

    def to_json(self) -> dict[str, object]:
        """A JSON-ready dict: digests as one hex string (16 characters each).

        About 1.7 KB for 100 members, so a store with small values (Airflow's
        task state store, 64 KB each) holds one intent per value.
        """
        return {
            "key": self.key,
            "digests": "".join(f"{digest:016x}" for digest in self.digests),
            "attempt": self.attempt,
            "created": self.created,
        }

    @classmethod
    def from_json(cls, data: dict[str, object]) -> Intent:
        text = str(data["digests"])
        if len(text) % 16:
            raise ValueError("an intent's digests are 16 hex characters each")
        digests = tuple(int(text[i : i + 16], 16) for i in range(0, len(text), 16))
        attempt = data.get("attempt", 0)
        created = data.get("created", 0.0)
        return cls(
            key=str(data["key"]),
            digests=digests,
            attempt=int(attempt) if isinstance(attempt, int | str) else 0,
            created=float(created) if isinstance(created, int | float | str) else 0.0,
        )


@dataclass(frozen=True, slots=True)
class JobStats:
    """What a ledger holds for one job key (``sendmux-send status`` prints it).

    ``accepted`` counts recipients the server accepted; ``pending`` the
    batches recorded as about to be sent whose answer was never recorded
    (each replays on the next run), holding ``pending_members`` recipients;
    ``oldest_pending`` is the oldest such record's time (epoch seconds):
    past 24 h the server's idempotency store may have forgotten its key.
    ``created`` / ``updated`` are the first and last write (epoch seconds);
    ``prune`` goes by ``updated``.
    """

    job_key: str
    accepted: int
    pending: int
    pending_members: int
    created: float
    updated: float
    oldest_pending: float | None


@runtime_checkable
class Ledger(Protocol):
    """The send ledger, as dispatch calls it. Every method is blocking and thread-safe.

    Digests are :func:`recipient_digest` values (64-bit ints); nothing else
    about a recipient is stored. A method that cannot reach its store retries
    for a bounded time, then raises
    :class:`~sendmux_dispatch.errors.LedgerUnavailableError`; it never
    reports success for a write it did not make.
    """

    def accepted_among(self, job_key: str, digests: Sequence[int]) -> set[int]:
        """Which of ``digests`` the server accepted for ``job_key`` (one query per call)."""
        ...

    def pending(self, job_key: str) -> list[Intent]:
        """The job's pending intents, oldest first (a handful: what was in flight)."""
        ...

    def begin(self, job_key: str, intent: Intent) -> set[int]:
        """Record ``intent`` as pending, atomically, unless a member is taken.

        Returns the members already accepted or pending under another key
        (then nothing is recorded); an empty set means the intent is recorded
        and the batch may be sent. Beginning the same key again with the same
        members is a no-op that returns an empty set.
        """
        ...

    def finish(
        self,
        job_key: str,
        key: str,
        accepted: Sequence[int],
        successor: Intent | None = None,
    ) -> None:
        """Record the answer to intent ``key``, atomically.

        ``accepted`` are added to the job's accepted set; the intent is
        cleared and its other members released (free to be planned again).
        ``successor`` (the resend of its failed-and-retryable members) is
        recorded pending in the same step, and only if ``key`` was still
        pending: a second worker finishing the same replay adds nothing stale.
        """
        ...

    def stats(self, job_key: str) -> JobStats | None:
        """What the ledger holds for ``job_key``, or None when it holds nothing."""
        ...

    def jobs(self) -> list[JobStats]:
        """Every job the ledger holds, most recently updated first."""
        ...

    def prune(self, older_than: float | timedelta, *, job_key: str | None = None) -> int:
        """Forget whole jobs last updated more than ``older_than`` ago; return how many.

        ``job_key`` limits it to that job (``older_than=0`` forgets it now).
        A job is forgotten whole, never in part: a half-remembered job would
        mail its forgotten half again on a re-run.
        """
        ...

    def close(self) -> None:
        """Release connections; the ledger must not be used afterwards."""
        ...


@dataclass(frozen=True, slots=True)
class Finish:
    """One :meth:`Ledger.finish` call, as :func:`record` takes several at once."""

    key: str
    accepted: Sequence[int]
    successor: Intent | None = None


@runtime_checkable
class GroupCommitLedger(Ledger, Protocol):
    """A ledger that can store many batch events in one write (both built-in backends do).

    Dispatch's ledger writer hands it, per write round, every answer and
    every new batch queued since the last round (docs/ledger.md, "Group
    commit"); a store without it gets the same calls one by one
    (:func:`record`).
    """

    def record(
        self, job_key: str, finishes: Sequence[Finish], begins: Sequence[Intent]
    ) -> list[set[int]]:
        """``finish`` each of ``finishes`` in order, then ``begin`` each of ``begins``.

        Returns ``begin``'s answer for each of ``begins`` (the members taken,
        an empty set when it was recorded), exactly as the calls one by one
        would, a begin seeing the finishes and the begins before it. Either
        every call is stored or the method raises; a raise may leave some of
        them stored, which is safe to repeat (``begin`` of a recorded intent
        and ``finish`` of a finished one change nothing).
        """
        ...


def record(
    ledger: Ledger, job_key: str, finishes: Sequence[Finish], begins: Sequence[Intent]
) -> list[set[int]]:
    """``ledger.record`` when it has one (:class:`GroupCommitLedger`), else the calls one by one."""
    if isinstance(ledger, GroupCommitLedger):
        return ledger.record(job_key, finishes, begins)
    for finish in finishes:
        ledger.finish(job_key, finish.key, finish.accepted, finish.successor)
    return [ledger.begin(job_key, intent) for intent in begins]


class Retrier:
    """Runs a store operation, retrying transient failures for at most ``deadline`` seconds.

    Backoff is exponential with full jitter (0.05 s doubling to 2 s), so
    several workers waiting on one Redis do not knock on it in step. Each
    wait longer than a second is logged once per failure streak.
    """

    def __init__(
        self,
        *,
        backend: str,
        location: str,
        deadline: float,
        transient: tuple[type[BaseException], ...],
        is_transient: Callable[[BaseException], bool] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if deadline < 0:
            raise ValueError("unavailable_after must be 0 or more seconds")
        self.backend = backend
        self.location = location
        self.deadline = deadline
        self.transient = transient
        self.is_transient = is_transient
        self.sleep = sleep

    def __call__(self, operation: Callable[[], _T], what: str) -> _T:
        started = time.monotonic()
        delay = 0.05
        logged = False
        while True:
            try:
                return operation()
            except self.transient as exc:
                if self.is_transient is not None and not self.is_transient(exc):
                    raise self._unavailable(what, exc, time.monotonic() - started) from exc
                waited = time.monotonic() - started
                if waited >= self.deadline:
                    raise self._unavailable(what, exc, waited) from exc
                if not logged and waited >= 1.0:
                    logger.warning(
                        "%s ledger at %s: %s failed (%s); retrying for up to %.0f s",
                        self.backend,
                        self.location,
                        what,
                        _describe(exc),
                        self.deadline,
                    )
                    logged = True
                pause = min(random.uniform(0, delay), self.deadline - waited)  # noqa: S311
                self.sleep(max(pause, 0.0))
                delay = min(delay * 2, 2.0)

    def _unavailable(self, what: str, exc: BaseException, waited: float) -> LedgerUnavailableError:
        return LedgerUnavailableError(
            f"the {self.backend} ledger at {self.location} could not {what} for {waited:.1f} s "
            f"({_describe(exc)}); nothing was sent unrecorded. Bring the store back and "
            "re-run the same job key: pending batches replay under their recorded keys",
            backend=self.backend,
            waited=waited,
        )


def _describe(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
