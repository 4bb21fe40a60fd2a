"""Send a whole job: plan batches, send them with bounded concurrency, report honestly.

The rules that make a job exactly-once within Sendmux's 24 h idempotency window:

- every batch goes out under its planned, stable ``Idempotency-Key``; the
  client's own retries (429, 5xx, dropped connections, timeouts) reuse it, so
  a batch the server already accepted is answered from its store, not sent again;
- after a partial failure only the failed items whose error is retryable are
  sent again, as a smaller batch under a new key derived from the old one
  (``PlannedBatch.subset``), so a re-run of the job replays that resend too;
- ``idempotency_conflict`` on a replay means this key already carried an
  accepted request for this work (the body differs, e.g. the template was
  edited): recorded as "already accepted" and never sent again;
- errors that would fail every batch (401, 403, 402, a Retry-After beyond the
  retry policy) stop the job, and so do an unreadable line in the recipient
  source (:class:`~sendmux_dispatch.errors.InputError`), Ctrl-C in the
  blocking driver, and ``max_consecutive_failures`` batches in a row failing
  the same way (the circuit breaker); batches in flight are settled, what was
  not attempted is counted as ``not_sent``, so a fixed re-run completes it.

The per-batch logic is written once, as a generator that yields what it needs
done (send this batch, sleep this long); the blocking and the asyncio drivers
only carry those steps out.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from threading import Lock
from typing import Any, Generic, TypedDict, TypeVar

from pydantic import BaseModel
from typing_extensions import Unpack

from sendmux_dispatch.batching import Duplicate, LedgerStage, PlannedBatch, Skipped, plan_batches
from sendmux_dispatch.client import AsyncSendmuxClient, ClientStats, SendmuxClient
from sendmux_dispatch.errors import (
    APIError,
    AuthenticationError,
    IdempotencyConflictError,
    InputError,
    InsufficientCreditsError,
    LedgerUnavailableError,
    PermissionDeniedError,
    SendmuxError,
    TransportError,
    ValidationError,
)
from sendmux_dispatch.ledger import Intent, Ledger
from sendmux_dispatch.models import Balance, BatchItem, BatchResult, Me
from sendmux_dispatch.personalize import Personalizer
from sendmux_dispatch.ratelimit import Pacer, RateLimitState
from sendmux_dispatch.recipients import RecipientFailure
from sendmux_dispatch.report import (
    DEFAULT_MAX_FAILURES,
    DispatchReport,
    Failure,
    Progress,
    ProgressCallback,
    ResultWriter,
    StopCause,
)
from sendmux_dispatch.retry import LONG_WAIT_SECONDS, RetryPolicy

__all__ = [
    "DEFAULT_MAX_CONSECUTIVE_FAILURES",
    "PACER_UNAVAILABLE_AFTER",
    "AsyncDispatcher",
    "DispatchOptions",
    "Dispatcher",
    "adispatch",
    "dispatch",
]

#: Errors that would fail every batch of the job: stop instead of burning through the list.
_JOB_STOPPERS = (AuthenticationError, PermissionDeniedError, InsufficientCreditsError)

Template = Personalizer | Mapping[str, Any] | BaseModel


#: Default of ``max_consecutive_failures``: batches in a row failing the same way.
DEFAULT_MAX_CONSECUTIVE_FAILURES = 5

logger = logging.getLogger(__name__)


class _StopJob(Exception):
    """Why the job stops; ``error`` is what the batches not sent are recorded with."""

    def __init__(self, error: SendmuxError, cause: StopCause, reason: str | None = None) -> None:
        super().__init__(str(error))
        self.error = error
        self.cause = cause
        self.reason = reason or f"{type(error).__name__}: {error.message}"


def _input_stop(error: InputError) -> _StopJob:
    where = ", ".join(
        part
        for part in (error.path, f"line {error.line}" if error.line is not None else None)
        if part
    )
    reason = f"InputError: {error.message}"
    if where and (error.line is None or f"line {error.line}" not in error.message):
        reason += f" ({where})"
    return _StopJob(error, "input", reason + "; nothing from that line on was sent")


def _interrupted_stop() -> _StopJob:
    error = SendmuxError("the job was interrupted before this batch was sent", code="interrupted")
    return _StopJob(
        error,
        "interrupted",
        "KeyboardInterrupt: stopped taking new batches; the batches in flight were settled",
    )


class _Source:
    """The recipient iterable, ended cleanly (not torn) by an InputError or a Ctrl-C.

    The planner then yields what it holds as a last batch, which the driver
    counts ``not_sent`` (so every row read is accounted for); not sending it
    matters: a re-run of the fixed file plans that batch with more rows under
    the same key, and a sent partial batch would turn them into "already
    accepted" without ever sending them.
    """

    def __init__(self, recipients: Iterable[object]) -> None:
        self._recipients = recipients
        self.stop: _StopJob | None = None

    def __iter__(self) -> Iterator[object]:
        if self.stop is not None:
            # The ledger could not be read before the list: read nothing.
            return
        iterator = iter(self._recipients)
        while True:
            try:
                item = next(iterator)
            except StopIteration:
                return
            except InputError as exc:
                self.stop = _input_stop(exc)
                return
            except KeyboardInterrupt:
                self.stop = _interrupted_stop()
                return
            yield item


def _outage_signature(error: SendmuxError) -> tuple[str, int | None, str | None] | None:
    """What makes two failed batches "fail the same way"; ``None``: not an outage sign."""
    status = error.status or 0
    if isinstance(error, TransportError) or (
        isinstance(error, APIError) and (status >= 500 or status == 429)
    ):
        return (type(error).__name__, error.status, error.code)
    return None


@dataclass(frozen=True, slots=True)
class _Send:
    batch: PlannedBatch


@dataclass(frozen=True, slots=True)
class _Sleep:
    seconds: float


@dataclass(frozen=True, slots=True)
class _Call:
    """A blocking ledger call: the sync driver makes it in its worker thread, the
    async one through ``asyncio.to_thread``; a SendmuxError is sent back, not raised."""

    function: Callable[[], object]


_Step = _Send | _Sleep | _Call
_Steps = Generator[_Step, object, None]


#: Seconds a batch keeps retrying a pacer whose shared store (Redis) fails, before
#: the job stops with ``stop_cause == "outage"`` (the ledger waits as long).
PACER_UNAVAILABLE_AFTER = 30.0


class _PacerUnavailable(SendmuxError):
    # Not retryable for the client: it would call the pacer again and wait as
    # long again per attempt. Dispatch stops the job on it instead.
    default_retryable = False


def _pacer_store_failed(error: Exception) -> bool:
    # A pacer only waits; what can fail in it is its store: redis-py's errors,
    # limits' storage errors, a socket. Anything else is a bug and propagates.
    root = type(error).__module__.split(".", 1)[0]
    return root in ("redis", "limits") or isinstance(error, OSError)


class _GuardedPacer:
    """A pacer whose store failures are retried for a bounded time, then stop the job.

    Without it a Redis blip under a ``RedisPacer`` escaped as a redis-py
    exception and ended the job with no report. A failure of ``acquire``
    happens before the request, so the batch was not sent: it is counted
    ``not_sent`` and the job stops with ``stop_cause == "outage"``.
    """

    def __init__(self, inner: Pacer) -> None:
        self.inner = inner

    def _give_up(self, error: Exception, started: float, logged: bool) -> tuple[float, bool]:
        waited = time.monotonic() - started
        if isinstance(error, SendmuxError) or not _pacer_store_failed(error):
            raise error
        if waited >= PACER_UNAVAILABLE_AFTER:
            raise _PacerUnavailable(
                f"the pacer's store failed for {waited:.1f} s "
                f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}); "
                "this batch was not sent. Bring the store back and re-run the same job key",
                code="pacer_unavailable",
            ) from error
        if not logged and waited >= 1.0:
            logger.warning(
                "pacer: its store failed (%s); retrying for up to %.0f s",
                type(error).__name__,
                PACER_UNAVAILABLE_AFTER,
            )
            logged = True
        return waited, logged

    def acquire(self) -> None:
        started, delay, logged = time.monotonic(), 0.05, False
        while True:
            try:
                self.inner.acquire()
                return
            except Exception as exc:
                waited, logged = self._give_up(exc, started, logged)
            pause = random.uniform(0, delay)  # noqa: S311 - jitter, not secrets
            time.sleep(max(0.0, min(pause, PACER_UNAVAILABLE_AFTER - waited)))
            delay = min(delay * 2, 2.0)

    async def acquire_async(self) -> None:
        started, delay, logged = time.monotonic(), 0.05, False
        while True:
            try:
                await self.inner.acquire_async()
                return
            except Exception as exc:
                waited, logged = self._give_up(exc, started, logged)
            pause = random.uniform(0, delay)  # noqa: S311 - jitter, not secrets
            await asyncio.sleep(max(0.0, min(pause, PACER_UNAVAILABLE_AFTER - waited)))
            delay = min(delay * 2, 2.0)

    def observe(self, state: RateLimitState) -> None:
        try:
            self.inner.observe(state)
        except Exception as exc:
            # Advisory (it only tightens the pace): the next acquire meets the outage.
            if isinstance(exc, SendmuxError) or not _pacer_store_failed(exc):
                raise
            logger.debug("pacer: could not record the server's rate-limit state", exc_info=True)

    def pause(self, seconds: float) -> None:
        pause = getattr(self.inner, "pause", None)
        if pause is not None:
            pause(seconds)


def _guarded(pacer: Pacer | None) -> Pacer | None:
    return None if pacer is None else _GuardedPacer(pacer)


def _ledger_stop(error: SendmuxError) -> _StopJob:
    return _StopJob(error, "ledger")


_ALREADY = SendmuxError("already accepted for this job (send ledger)", code="already_accepted")
_CLAIMED = SendmuxError(
    "recorded as being sent by another run of this job (send ledger); that run, or the "
    "next re-run, settles it",
    code="claimed_by_another_run",
)


def _pending(ledger: Ledger | None, job_key: str, source: _Source) -> _Held:
    """What the ledger holds for the job as the run begins (read before the list)."""
    if ledger is None:
        return _Held()
    try:
        return _Held(ledger.pending(job_key), ledger.stats(job_key) is None)
    except LedgerUnavailableError as exc:
        source.stop = _ledger_stop(exc)
        return _Held()


async def _apending(ledger: Ledger | None, job_key: str, source: _Source) -> _Held:
    return await asyncio.to_thread(_pending, ledger, job_key, source)


@dataclass(frozen=True, slots=True)
class _Held:
    intents: Sequence[Intent] = ()
    fresh: bool = False


def _ledger_stage(
    ledger: Ledger | None, job_key: str, source: _Source, held: _Held
) -> LedgerStage | None:
    """Planning's view of the ledger; an outage there stops the job like a bad line."""
    if ledger is None:
        return None

    def accepted_among(digests: Sequence[int]) -> set[int]:
        try:
            return ledger.accepted_among(job_key, digests)
        except LedgerUnavailableError as exc:
            source.stop = source.stop or _ledger_stop(exc)
            raise

    return LedgerStage(accepted_among, held.intents, fresh=held.fresh)


class _Tally:
    """The report under construction; safe to update from worker threads."""

    def __init__(
        self, job_key: str, max_failures: int, results_path: str | Path | None, started: float
    ) -> None:
        self.report = DispatchReport(job_key=job_key, max_failures=max_failures)
        self.writer = ResultWriter(results_path) if results_path is not None else None
        self.started = started
        self.lock = Lock()
        self.messages_done = 0
        # This job's own requests, retries and 429s: the client's counters
        # also hold every other job that shares the client.
        self.calls = ClientStats()
        self._streak: tuple[tuple[str, int | None, str | None] | None, int] = (None, 0)

    def failure_streak(self, error: SendmuxError | None) -> int:
        """Record how a batch ended (``None``: the server answered it); the current streak.

        The streak counts batches in a row, in the order they end, that failed
        with the same error class, status and code after the client's retries.
        """
        signature = None if error is None else _outage_signature(error)
        with self.lock:
            if signature is None:
                self._streak = (None, 0)
            elif self._streak[0] == signature:
                self._streak = (signature, self._streak[1] + 1)
            else:
                self._streak = (signature, 1)
            return self._streak[1]

    def _fail(
        self, position: int | None, email: str | None, code: str, message: str, status: str
    ) -> None:
        self.report.add_failure(Failure(position, email, code, message))
        if self.writer is not None:
            self.writer.write(
                position=position, email=email, status=status, code=code, message=message
            )

    def plan_item(self, item: RecipientFailure | Duplicate | Skipped) -> None:
        with self.lock:
            if isinstance(item, RecipientFailure):
                self.report.invalid += 1
                self._fail(item.position, item.email, item.code, item.reason, "invalid")
            elif isinstance(item, Skipped):
                self._skipped(item)
            else:
                self.report.duplicates_dropped += 1
                if self.writer is not None:
                    self.writer.write(position=item.position, email=item.email, status="duplicate")

    def _skipped(self, item: Skipped) -> None:
        if item.status == "already_accepted":
            self.report.already_accepted += 1
            if self.writer is not None:
                self.writer.write(position=item.position, email=item.email, status=item.status)
            return
        if item.status == "failed":
            self.report.failed += 1
        else:
            self.report.not_sent += 1
        self._fail(
            item.position, item.email, item.code or item.status, item.message or "", item.status
        )

    def items(self, batch: PlannedBatch, result: BatchResult, *, final: bool) -> list[int]:
        """Record a batch answer; return the indexes worth sending again."""
        resend: list[int] = []
        by_index: dict[int, BatchItem] = {item.index: item for item in result.results}
        with self.lock:
            for index, recipient in enumerate(batch.recipients):
                item = by_index.get(index)
                if item is not None and item.ok:
                    self.report.queued += 1
                    if self.writer is not None:
                        self.writer.write(
                            position=recipient.position,
                            email=recipient.email,
                            status="queued",
                            message_id=item.message_id,
                        )
                    continue
                if item is not None and item.retryable and not final:
                    resend.append(index)
                    continue
                self.report.failed += 1
                if item is None:
                    code, message = "missing_result", "the batch response had no result for it"
                else:
                    code = item.error.code if item.error else "failed"
                    message = item.error.message if item.error else "failed"
                self._fail(recipient.position, recipient.email, code, message, "failed")
            self.messages_done += len(batch) - len(resend)
        return resend

    def whole_batch(self, batch: PlannedBatch, outcome: str, error: SendmuxError) -> None:
        """Every item of ``batch`` ends the same way (already_accepted, failed, not_sent)."""
        issues = _issues_by_index(error) if isinstance(error, ValidationError) else {}
        with self.lock:
            if outcome == "already_accepted":
                self.report.already_accepted += len(batch)
            elif outcome == "not_sent":
                self.report.not_sent += len(batch)
            else:
                self.report.failed += len(batch)
            for index, recipient in enumerate(batch.recipients):
                if outcome == "already_accepted":
                    if self.writer is not None:
                        self.writer.write(
                            position=recipient.position, email=recipient.email, status=outcome
                        )
                    continue
                code = error.code or type(error).__name__
                message = issues.get(index, error.message)
                self._fail(recipient.position, recipient.email, code, message, outcome)
            self.messages_done += len(batch)

    def progress(self, batches_done: int) -> Progress:
        with self.lock:
            return Progress(
                batches_done=batches_done,
                messages_done=self.messages_done,
                queued=self.report.queued,
                failed=self.report.failed,
                elapsed=time.monotonic() - self.started,
            )


def _issues_by_index(error: ValidationError) -> dict[int, str]:
    # A 422 for a whole batch lists issues as "messages.<index>.<field>".
    found: dict[int, list[str]] = {}
    for issue in error.errors:
        parts = issue.field.split(".", 2)
        if len(parts) >= 2 and parts[0] == "messages" and parts[1].isdigit():
            rest = parts[2] if len(parts) > 2 else "message"
            found.setdefault(int(parts[1]), []).append(f"{rest}: {issue.message}")
    return {index: "; ".join(messages) for index, messages in found.items()}


def _begin(
    batch: PlannedBatch, tally: _Tally, ledger: Ledger
) -> Generator[_Step, object, PlannedBatch | None]:
    """Record ``batch`` as pending before it is sent; drop members already taken.

    Returns the batch to send (rebuilt under a new content key when members
    were dropped), or None when nothing is left to send.
    """
    job_key = tally.report.job_key
    current = batch
    while True:
        digests = current.digests
        reply = yield _Call(
            partial(ledger.begin, job_key, Intent(current.idempotency_key, digests))
        )
        if isinstance(reply, SendmuxError):
            # Never sent what could not be recorded.
            tally.whole_batch(current, "not_sent", reply)
            raise _ledger_stop(reply)
        assert isinstance(reply, set)
        if not reply:
            return current
        taken: set[int] = reply
        found = yield _Call(partial(ledger.accepted_among, job_key, sorted(taken)))
        if isinstance(found, SendmuxError):
            tally.whole_batch(current, "not_sent", found)
            raise _ledger_stop(found)
        assert isinstance(found, set)
        accepted = [i for i, digest in enumerate(digests) if digest in found]
        claimed = [i for i, digest in enumerate(digests) if digest in taken and digest not in found]
        keep = [i for i, digest in enumerate(digests) if digest not in taken]
        if accepted:
            tally.whole_batch(current.rebuilt(accepted, job_key), "already_accepted", _ALREADY)
        if claimed:
            tally.whole_batch(current.rebuilt(claimed, job_key), "not_sent", _CLAIMED)
        if not keep:
            return None
        current = current.rebuilt(keep, job_key)


def _record(
    ledger: Ledger, job_key: str, key: str, accepted: Sequence[int], successor: Intent | None = None
) -> Generator[_Step, object, SendmuxError | None]:
    """``finish`` the intent ``key``; the error if the ledger could not record it."""
    reply = yield _Call(partial(ledger.finish, job_key, key, accepted, successor))
    return reply if isinstance(reply, SendmuxError) else None


def _batch_steps(
    batch: PlannedBatch, tally: _Tally, options: _Options, policy: RetryPolicy
) -> _Steps:
    """The life of one planned batch, as the steps a driver must carry out.

    With a ledger: ``begin`` before the first request (a replay batch is
    already recorded), ``finish`` after every definitive answer, the resend
    recorded as the successor in the same write (docs/ledger.md).
    """
    ledger = options.ledger
    job_key = tally.report.job_key
    current: PlannedBatch | None = batch
    # What the ledger holds under the current key: a replay's full member
    # list, including members absent from this run's list.
    recorded: tuple[int, ...] = ()
    if ledger is not None:
        if batch.intent is not None:
            recorded = batch.intent.digests
        else:
            current = yield from _begin(batch, tally, ledger)
            if current is None:
                return
            recorded = current.digests
    assert current is not None
    attempt = current.attempt
    while True:
        outcome = yield _Send(current)
        if isinstance(outcome, _PacerUnavailable):
            # Never left: the pacer failed before the request (a begun intent
            # stays pending and is simply sent on the re-run).
            tally.whole_batch(current, "not_sent", outcome)
            raise _StopJob(outcome, "outage", f"{type(outcome).__name__}: {outcome.message}")
        if isinstance(outcome, IdempotencyConflictError) and not outcome.retryable:
            # The key already carried an accepted request for this work.
            tally.failure_streak(None)
            tally.whole_batch(current, "already_accepted", outcome)
            if ledger is not None:
                error = yield from _record(ledger, job_key, current.idempotency_key, recorded)
                if error is not None:
                    raise _ledger_stop(error)
            return
        if isinstance(outcome, _JOB_STOPPERS):
            tally.whole_batch(current, "not_sent", outcome)
            if ledger is not None:
                # Refused whole: nothing accepted, the members are free again.
                # A failed write only leaves it pending (a replay is harmless).
                yield from _record(ledger, job_key, current.idempotency_key, ())
            raise _StopJob(
                outcome, "credits" if isinstance(outcome, InsufficientCreditsError) else "auth"
            )
        if isinstance(outcome, SendmuxError) and policy.waits_too_long(outcome):
            # The client raised at once (message says when to retry): the
            # other batches would meet the same wait, so the job stops.
            tally.whole_batch(current, "not_sent", outcome)
            raise _StopJob(outcome, "rate_limited")
        if isinstance(outcome, SendmuxError):
            tally.whole_batch(current, "failed", outcome)
            if ledger is not None and not outcome.retryable:
                # A definitive refusal of the whole request (400, 413, 422):
                # nothing was accepted. A retryable one may have been, so its
                # intent stays pending and the re-run replays it.
                error = yield from _record(ledger, job_key, current.idempotency_key, ())
                if error is not None:
                    raise _ledger_stop(error)
            streak = tally.failure_streak(outcome)
            limit = options.max_consecutive_failures
            if limit and streak >= limit:
                raise _StopJob(
                    outcome,
                    "outage",
                    f"{type(outcome).__name__}: {outcome.message} ({streak} batches in a row "
                    "failed this way after their retries; the circuit breaker stopped the job, "
                    "see max_consecutive_failures)",
                )
            return
        assert isinstance(outcome, BatchResult)
        tally.failure_streak(None)
        resend = tally.items(current, outcome, final=attempt >= options.max_resends)
        following = current.subset(resend, attempt + 1) if resend else None
        if ledger is not None:
            digests = current.digests
            ok = sorted({item.index for item in outcome.results if item.ok})
            accepted = [digests[i] for i in ok if 0 <= i < len(digests)]
            successor = (
                None
                if following is None
                else Intent(following.idempotency_key, following.digests, attempt + 1)
            )
            error = yield from _record(
                ledger, job_key, current.idempotency_key, accepted, successor
            )
            if error is not None:
                if following is not None:
                    tally.whole_batch(following, "not_sent", error)
                raise _ledger_stop(error)
            if successor is not None:
                recorded = successor.digests
        if following is None:
            return
        attempt += 1
        delay = policy.next_delay(attempt)
        if delay >= LONG_WAIT_SECONDS:
            logger.info(
                "waiting %.1f s before resending %d refused messages of batch %s (resend %d)",
                delay,
                len(resend),
                current.idempotency_key,
                attempt,
            )
        yield _Sleep(delay)
        current = following


class DispatchOptions(TypedDict, total=False):
    """How a job is sent; every key is optional (defaults in brackets).

    ``concurrency`` batches in flight [4]; ``pacer`` keeps the key under its
    ceiling [the client's own]; ``on_progress`` is called after every batch;
    ``max_failures`` kept in the report, the rest counted [100];
    ``results_path`` gets one JSON line per recipient; ``max_resends`` of the
    failed-and-retryable items of a batch [3]; ``preflight`` checks the key's
    permission and the balance first [False]; ``dedupe`` drops repeated
    addresses [True]; ``per_message_keys`` also sends per-message keys [False];
    ``max_consecutive_failures`` batches in a row failing the same way (5xx,
    connection errors, 429s, after the client's retries) stop the job with
    ``stop_cause == "outage"`` [5; 0 disables the breaker]; ``ledger`` a
    :class:`~sendmux_dispatch.ledger.Ledger` that makes re-runs exactly once
    even when the list changed (docs/ledger.md) [None].
    """

    concurrency: int
    pacer: Pacer | None
    on_progress: ProgressCallback | None
    max_failures: int
    results_path: str | Path | None
    max_resends: int
    preflight: bool
    dedupe: bool
    per_message_keys: bool
    max_consecutive_failures: int
    ledger: Ledger | None


@dataclass(kw_only=True)
class _Options:
    concurrency: int = 4
    pacer: Pacer | None = None
    on_progress: ProgressCallback | None = None
    max_failures: int = DEFAULT_MAX_FAILURES
    results_path: str | Path | None = None
    max_resends: int = 3
    preflight: bool = False
    dedupe: bool = True
    per_message_keys: bool = False
    max_consecutive_failures: int = DEFAULT_MAX_CONSECUTIVE_FAILURES
    ledger: Ledger | None = None

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if self.max_resends < 0:
            raise ValueError("max_resends must be 0 or more")
        if self.max_consecutive_failures < 0:
            raise ValueError("max_consecutive_failures must be 0 (no breaker) or more")
        if self.ledger is not None and not self.dedupe:
            raise ValueError("a ledger records each address once: dedupe must stay on with it")


_C = TypeVar("_C", SendmuxClient, AsyncSendmuxClient)


class _DispatcherBase(Generic[_C]):
    def __init__(self, client: _C, **options: Unpack[DispatchOptions]) -> None:
        self.client: _C = client
        self.options = _Options(**options)


class Dispatcher(_DispatcherBase[SendmuxClient]):
    """Sends jobs through one :class:`SendmuxClient` with a thread pool.

    ``concurrency`` batches are in flight at most; the recipient source is read
    only as fast as batches are sent, so memory stays flat for any list size.
    A ``pacer`` (or the client's own) keeps the key under its request ceiling.

    Ctrl-C (a ``KeyboardInterrupt`` in the calling thread) stops taking new
    batches, waits for those in flight and returns the report with
    ``stop_cause == "interrupted"``; a second one while waiting propagates and
    abandons them (their threads finish their current request in the background).
    """

    def run(
        self, template: Template, recipients: Iterable[object], *, job_key: str
    ) -> DispatchReport:
        options, client = self.options, self.client
        source = _Source(recipients)
        intents = _pending(options.ledger, job_key, source)
        plan = plan_batches(
            template,
            source,
            job_key=job_key,
            dedupe=options.dedupe,
            per_message_keys=options.per_message_keys,
            ledger=_ledger_stage(options.ledger, job_key, source, intents),
        )
        if options.preflight:
            _preflight_checks(client.me(), _readable_balance(client))
        tally = _Tally(job_key, options.max_failures, options.results_path, time.monotonic())
        batches_done = 0
        stop: _StopJob | None = None
        pool = ThreadPoolExecutor(options.concurrency, thread_name_prefix="sendmux")
        in_flight: set[Future[None]] = set()

        def settle(done: set[Future[None]]) -> None:
            nonlocal batches_done, stop
            for future in done:
                error = future.exception()
                if isinstance(error, _StopJob):
                    stop = stop or error
                elif error is not None:
                    raise error
                batches_done += 1
                if options.on_progress is not None:
                    options.on_progress(tally.progress(batches_done))

        held: PlannedBatch | None = None
        try:
            try:
                for item in plan:
                    if not isinstance(item, PlannedBatch):
                        tally.plan_item(item)
                        continue
                    held = item
                    if len(in_flight) >= options.concurrency:
                        done, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
                        settle(done)
                    # Checked after the wait: the batch that freed the slot may have hit 401.
                    stop = stop or source.stop
                    if stop is not None:
                        tally.whole_batch(item, "not_sent", stop.error)
                    else:
                        in_flight.add(pool.submit(self._drive, item, tally))
                    held = None
            except KeyboardInterrupt:
                stop = stop or _interrupted_stop()
                if held is not None:
                    tally.whole_batch(held, "not_sent", stop.error)
                if in_flight:
                    logger.warning(
                        "interrupted: waiting for %d batches in flight (interrupt again to "
                        "abandon them)",
                        len(in_flight),
                    )
            stop = stop or source.stop
            # A second KeyboardInterrupt here propagates: the caller abandons them.
            settle(wait(in_flight).done)
        except KeyboardInterrupt:
            # The second one: abandon the batches in flight, do not wait for them.
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        else:
            pool.shutdown(wait=True)
        finally:
            if tally.writer is not None:
                tally.writer.close()
        return _finish(tally, plan.stats.recipients, plan.stats.batches, stop)

    def _drive(self, batch: PlannedBatch, tally: _Tally) -> None:
        steps = _batch_steps(batch, tally, self.options, self.client.retry)
        step = next(steps)
        while True:
            reply: object = None
            if isinstance(step, _Sleep):
                # The client's policy waits, so a test's no-op sleep covers resends too.
                self.client.retry.sleep(step.seconds)
            elif isinstance(step, _Call):
                try:
                    reply = step.function()
                except SendmuxError as exc:
                    reply = exc
            else:
                try:
                    reply = self.client.send_batch_body(
                        step.batch.to_json(),
                        idempotency_key=step.batch.idempotency_key,
                        pacer=_guarded(self.options.pacer or self.client.pacer),
                        stats=tally.calls,
                    )
                except SendmuxError as exc:
                    reply = exc
            try:
                step = steps.send(reply)
            except StopIteration:
                return


class AsyncDispatcher(_DispatcherBase[AsyncSendmuxClient]):
    """The asyncio twin of :class:`Dispatcher`, on an :class:`AsyncSendmuxClient`.

    Cancelling the task that runs a job (``asyncio.CancelledError``: a
    timeout, an Airflow trigger stopped, ``asyncio.run`` on Ctrl-C) cancels the
    batches in flight, waits until they have unwound and re-raises: no report,
    no request after the cancellation returns. A request cut off that way may
    still have been accepted; re-running the job with the same ``job_key``
    replays it instead of sending again.
    """

    async def run(
        self, template: Template, recipients: Iterable[object], *, job_key: str
    ) -> DispatchReport:
        options, client = self.options, self.client
        source = _Source(recipients)
        intents = await _apending(options.ledger, job_key, source)
        plan = plan_batches(
            template,
            source,
            job_key=job_key,
            dedupe=options.dedupe,
            per_message_keys=options.per_message_keys,
            ledger=_ledger_stage(options.ledger, job_key, source, intents),
        )
        if options.preflight:
            _preflight_checks(await client.me(), await _areadable_balance(client))
        tally = _Tally(job_key, options.max_failures, options.results_path, time.monotonic())
        batches_done = 0
        stop: _StopJob | None = None
        in_flight: set[asyncio.Task[None]] = set()

        def settle(done: set[asyncio.Task[None]]) -> None:
            nonlocal batches_done, stop
            for task in done:
                error = task.exception()
                if isinstance(error, _StopJob):
                    stop = stop or error
                elif error is not None:
                    raise error
                batches_done += 1
                if options.on_progress is not None:
                    options.on_progress(tally.progress(batches_done))

        try:
            for item in plan:
                if isinstance(item, PlannedBatch):
                    if len(in_flight) >= options.concurrency:
                        done, in_flight = await asyncio.wait(
                            in_flight, return_when=asyncio.FIRST_COMPLETED
                        )
                        settle(done)
                    # Checked after the wait: the batch that freed the slot may have hit 401.
                    stop = stop or source.stop
                    if stop is not None:
                        tally.whole_batch(item, "not_sent", stop.error)
                        continue
                    in_flight.add(asyncio.ensure_future(self._drive(item, tally)))
                else:
                    tally.plan_item(item)
            stop = stop or source.stop
            if in_flight:
                done, _ = await asyncio.wait(in_flight)
                settle(done)
        finally:
            pending = [task for task in in_flight if not task.done()]
            for task in pending:
                task.cancel()
            try:
                if pending:
                    # Unwound before we return or re-raise: no request outlives the job.
                    await asyncio.gather(*pending, return_exceptions=True)
            finally:
                if tally.writer is not None:
                    tally.writer.close()
        return _finish(tally, plan.stats.recipients, plan.stats.batches, stop)

    async def _drive(self, batch: PlannedBatch, tally: _Tally) -> None:
        steps = _batch_steps(batch, tally, self.options, self.client.retry)
        step = next(steps)
        while True:
            reply: object = None
            if isinstance(step, _Sleep):
                await self.client.retry.async_sleep(step.seconds)
            elif isinstance(step, _Call):
                try:
                    reply = await asyncio.to_thread(step.function)
                except SendmuxError as exc:
                    reply = exc
            else:
                try:
                    reply = await self.client.send_batch_body(
                        step.batch.to_json(),
                        idempotency_key=step.batch.idempotency_key,
                        pacer=_guarded(self.options.pacer or self.client.pacer),
                        stats=tally.calls,
                    )
                except SendmuxError as exc:
                    reply = exc
            try:
                step = steps.send(reply)
            except StopIteration:
                return


def _finish(
    tally: _Tally,
    recipients: int,
    batches: int,
    stop: _StopJob | None,
) -> DispatchReport:
    report = tally.report
    report.total = recipients
    report.batches = batches
    report.requests = tally.calls.requests
    report.retries = tally.calls.retries
    report.rate_limited = tally.calls.rate_limited
    report.elapsed = time.monotonic() - tally.started
    if stop is not None:
        report.stopped_reason = stop.reason
        report.stop_cause = stop.cause
        # Rows the planner had read but not yet batched when an interrupt tore
        # it: never attempted, and every row read must end in one outcome.
        accounted = (
            report.queued
            + report.failed
            + report.invalid
            + report.duplicates_dropped
            + report.already_accepted
            + report.not_sent
        )
        report.not_sent += max(0, recipients - accounted)
    return report


def _preflight_checks(me: Me, balance: Balance | None) -> None:
    if not me.has_permission("email.send"):
        raise PermissionDeniedError(
            f"the API key '{me.label}' lacks the email.send permission; nothing was sent",
            code="insufficient_permissions",
        )
    if balance is not None and balance.balance <= 0:
        raise InsufficientCreditsError(
            f"the team's balance is {balance.balance} {balance.currency}; nothing was sent",
            code="insufficient_credits",
        )


def _readable_balance(client: SendmuxClient) -> Balance | None:
    # Send-only keys cannot read billing; the check is skipped rather than failed.
    try:
        return client.balance()
    except (PermissionDeniedError, AuthenticationError):
        return None


async def _areadable_balance(client: AsyncSendmuxClient) -> Balance | None:
    try:
        return await client.balance()
    except (PermissionDeniedError, AuthenticationError):
        return None


def dispatch(
    client: SendmuxClient,
    template: Template,
    recipients: Iterable[object],
    *,
    job_key: str,
    **options: Unpack[DispatchOptions],
) -> DispatchReport:
    """Send ``template`` to every recipient, in idempotent batches; return the report.

    ``job_key`` names the work (the same key re-run replays instead of
    re-sending); ``recipients`` is any iterable :func:`plan_batches` accepts,
    read lazily. Invalid recipients are reported, never raised; the job stops
    early (``report.stop_cause``) on 401/403 and 402, a Retry-After beyond the
    retry policy, an :class:`~sendmux_dispatch.errors.InputError` from the
    source, Ctrl-C, and the circuit breaker. ``options`` are :class:`DispatchOptions`.
    """
    return Dispatcher(client, **options).run(template, recipients, job_key=job_key)


async def adispatch(
    client: AsyncSendmuxClient,
    template: Template,
    recipients: Iterable[object],
    *,
    job_key: str,
    **options: Unpack[DispatchOptions],
) -> DispatchReport:
    """The asyncio twin of :func:`dispatch`."""
    return await AsyncDispatcher(client, **options).run(template, recipients, job_key=job_key)
