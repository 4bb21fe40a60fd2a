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

The per-batch logic (``_batch_steps``) and the job loop (``_Job.steps``: the
pre-flight checks, taking plan items, settling finished batches, stopping, the
report) are each written once, as generators that yield what they need done
(send this batch, sleep this long, start a batch, wait for one to end); the
blocking and the asyncio drivers only carry those steps out, with a thread
pool or with tasks.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ALL_COMPLETED, FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from threading import Lock
from typing import Any, Generic, Literal, TypedDict, TypeVar, cast

from pydantic import BaseModel
from typing_extensions import Unpack

from sendmux_dispatch.batching import (
    Duplicate,
    LedgerStage,
    Lookup,
    PlannedBatch,
    Skipped,
    plan_batches,
)
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
from sendmux_dispatch.ledger import Intent, Ledger, LedgerWriter
from sendmux_dispatch.models import Balance, BatchItem, BatchResult, Me
from sendmux_dispatch.pacing import Pacer, RateLimitState
from sendmux_dispatch.personalize import Personalizer
from sendmux_dispatch.recipients import RecipientFailure
from sendmux_dispatch.report import (
    DEFAULT_MAX_FAILURES,
    DispatchReport,
    Failure,
    Outcome,
    Progress,
    ProgressCallback,
    ResultWriter,
    StopCause,
)
from sendmux_dispatch.retry import LONG_WAIT_SECONDS, RetryPolicy

__all__ = [
    "DEFAULT_LEDGER_AHEAD",
    "DEFAULT_MAX_CONSECUTIVE_FAILURES",
    "PACER_UNAVAILABLE_AFTER",
    "AsyncDispatcher",
    "DispatchKwargs",
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

#: Default of ``ledger_ahead``: batches recorded pending ahead of the sends. A
#: write round takes 10 to 30 ms behind a busy planner (benchmarks.md, "Send
#: ledger"), in which it plans 4 to 12 batches: 32 keeps it from waiting.
DEFAULT_LEDGER_AHEAD = 32

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


@dataclass(frozen=True, slots=True)
class _Wait:
    """Wait for a ledger writer's future: the reply is its result, or its SendmuxError."""

    future: Future[set[int]] | Future[None]


_Step = _Send | _Sleep | _Call | _Wait
_Steps = Generator[_Step, object, None]


#: Seconds a batch keeps retrying a pacer whose shared store (Redis) fails, before
#: the job stops with ``stop_cause == "outage"`` (the ledger waits as long).
PACER_UNAVAILABLE_AFTER = 30.0


class _PacerUnavailable(SendmuxError):
    # Not retryable for the client: it would call the pacer again and wait as
    # long again per attempt. Dispatch stops the job on it instead.
    default_retryable = False

    #: An earlier attempt of the same request had gone out (the pacer failed
    #: before the client's retry): the server may have accepted it.
    after_attempt = False


def _pacer_store_failed(error: Exception) -> bool:
    # A pacer only waits; what can fail in it is its store: redis-py's errors,
    # limits' storage errors, a socket. Anything else is a bug and propagates.
    root = type(error).__module__.split(".", 1)[0]
    return root in ("redis", "limits") or isinstance(error, OSError)


class _GuardedPacer:
    """A pacer whose store failures are retried for a bounded time, then stop the job.

    Without it a Redis blip under a ``RedisPacer`` escaped as a redis-py
    exception and ended the job with no report. A failure of ``acquire``
    happens before a request: before the first one, the batch was not sent
    (``not_sent``); before a client's retry, an earlier attempt went out and
    may have been accepted (``failed``, the outcome unknown: the re-run replays
    the key and the server settles it). Either way the job stops with
    ``stop_cause == "outage"``. One guard per send: it counts that send's attempts.
    """

    def __init__(self, inner: Pacer) -> None:
        self.inner = inner
        self.attempts = 0

    def _give_up(self, error: Exception, started: float, logged: bool) -> tuple[float, bool]:
        waited = time.monotonic() - started
        if isinstance(error, SendmuxError) or not _pacer_store_failed(error):
            raise error
        if waited >= PACER_UNAVAILABLE_AFTER:
            what = (
                "an earlier attempt of this batch went out and may have been accepted"
                if self.attempts
                else "this batch was not sent"
            )
            unavailable = _PacerUnavailable(
                f"the pacer's store failed for {waited:.1f} s "
                f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}); "
                f"{what}. Bring the store back and re-run the same job key",
                code="pacer_unavailable",
            )
            unavailable.after_attempt = self.attempts > 0
            raise unavailable from error
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
                self.attempts += 1
                return
            except Exception as exc:
                waited, logged = self._give_up(exc, started, logged)
            pause = random.uniform(0, delay)  # noqa: S311 - jitter, not secrets
            time.sleep(max(0.0, min(pause, PACER_UNAVAILABLE_AFTER - waited)))
            delay = min(delay * 2, 2.0)

    async def aacquire(self) -> None:
        started, delay, logged = time.monotonic(), 0.05, False
        while True:
            try:
                await self.inner.aacquire()
                self.attempts += 1
                return
            except Exception as exc:
                waited, logged = self._give_up(exc, started, logged)
            pause = random.uniform(0, delay)  # noqa: S311 - jitter, not secrets
            await asyncio.sleep(max(0.0, min(pause, PACER_UNAVAILABLE_AFTER - waited)))
            delay = min(delay * 2, 2.0)

    @staticmethod
    def _advisory(error: Exception) -> None:
        # observe/pause only tighten the pace: a store outage there is logged,
        # and the next acquire meets it (and stops the job if it lasts).
        if isinstance(error, SendmuxError) or not _pacer_store_failed(error):
            raise error
        logger.debug("pacer: could not record the server's rate-limit state", exc_info=True)

    def observe(self, state: RateLimitState) -> None:
        try:
            self.inner.observe(state)
        except Exception as exc:
            self._advisory(exc)

    async def aobserve(self, state: RateLimitState) -> None:
        try:
            await self.inner.aobserve(state)
        except Exception as exc:
            self._advisory(exc)

    def pause(self, seconds: float) -> None:
        try:
            self.inner.pause(seconds)
        except Exception as exc:
            self._advisory(exc)

    async def apause(self, seconds: float) -> None:
        try:
            await self.inner.apause(seconds)
        except Exception as exc:
            self._advisory(exc)


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


@dataclass(frozen=True, slots=True)
class _Held:
    intents: Sequence[Intent] = ()
    fresh: bool = False


def _ledger_stage(ledger: Ledger | None, held: _Held) -> LedgerStage | None:
    """Planning's view of the ledger: its lookups come back to the job loop as
    :class:`Lookup` items, carried out like any other blocking call (the
    asyncio driver's in a thread, never on the event loop)."""
    if ledger is None:
        return None
    return LedgerStage(None, held.intents, fresh=held.fresh)


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
        self, position: int | None, email: str | None, code: str, message: str, status: Outcome
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
                self._fail(item.position, item.email, item.code, item.reason, Outcome.INVALID)
            elif isinstance(item, Skipped):
                self._skipped(item)
            else:
                self.report.duplicates_dropped += 1
                if self.writer is not None:
                    self.writer.write(
                        position=item.position, email=item.email, status=Outcome.DUPLICATE
                    )

    def _skipped(self, item: Skipped) -> None:
        outcome = Outcome(item.status)
        if outcome is Outcome.ALREADY_ACCEPTED:
            self.report.already_accepted += 1
            if self.writer is not None:
                self.writer.write(position=item.position, email=item.email, status=outcome)
            return
        if outcome is Outcome.FAILED:
            self.report.failed += 1
        else:
            self.report.not_sent += 1
        self._fail(item.position, item.email, item.code or item.status, item.message or "", outcome)

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
                            status=Outcome.QUEUED,
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
                self._fail(recipient.position, recipient.email, code, message, Outcome.FAILED)
            self.messages_done += len(batch) - len(resend)
        return resend

    def whole_batch(self, batch: PlannedBatch, outcome: Outcome, error: SendmuxError) -> None:
        """Every item of ``batch`` ends the same way (already_accepted, failed, not_sent)."""
        issues = _issues_by_index(error) if isinstance(error, ValidationError) else {}
        with self.lock:
            if outcome is Outcome.ALREADY_ACCEPTED:
                self.report.already_accepted += len(batch)
            elif outcome is Outcome.NOT_SENT:
                self.report.not_sent += len(batch)
            else:
                self.report.failed += len(batch)
            for index, recipient in enumerate(batch.recipients):
                if outcome is Outcome.ALREADY_ACCEPTED:
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
    batch: PlannedBatch, tally: _Tally, writer: LedgerWriter, begun: Future[set[int]] | None
) -> Generator[_Step, object, PlannedBatch | None]:
    """Record ``batch`` as pending before it is sent; drop members already taken.

    ``begun``: its ``begin``, queued by the job loop when it took the batch
    from the plan. Returns the batch to send (rebuilt under a new content
    key when members were dropped), or None when nothing is left to send.
    """
    job_key = tally.report.job_key
    current = batch
    while True:
        digests = current.digests
        if begun is None:
            begun = writer.begin(Intent(current.idempotency_key, digests))
        reply = yield _Wait(begun)
        begun = None
        if isinstance(reply, SendmuxError):
            # Never sent what could not be recorded.
            tally.whole_batch(current, Outcome.NOT_SENT, reply)
            raise _ledger_stop(reply)
        assert isinstance(reply, set)
        if not reply:
            return current
        taken: set[int] = reply
        found = yield _Call(partial(writer.ledger.accepted_among, job_key, sorted(taken)))
        if isinstance(found, SendmuxError):
            tally.whole_batch(current, Outcome.NOT_SENT, found)
            raise _ledger_stop(found)
        assert isinstance(found, set)
        accepted = [i for i, digest in enumerate(digests) if digest in found]
        claimed = [i for i, digest in enumerate(digests) if digest in taken and digest not in found]
        keep = [i for i, digest in enumerate(digests) if digest not in taken]
        if accepted:
            tally.whole_batch(
                current.rebuilt(accepted, job_key), Outcome.ALREADY_ACCEPTED, _ALREADY
            )
        if claimed:
            tally.whole_batch(current.rebuilt(claimed, job_key), Outcome.NOT_SENT, _CLAIMED)
        if not keep:
            return None
        current = current.rebuilt(keep, job_key)


def _record(
    writer: LedgerWriter, key: str, accepted: Sequence[int], successor: Intent | None = None
) -> Generator[_Step, object, SendmuxError | None]:
    """``finish`` the intent ``key``; the error if the ledger could not record it.

    A resend (``successor``) waits until stored: it may not leave before its
    intent is durable. A plain answer is only queued: killed before the
    writer stores it, its intent stays pending and the re-run replays it
    under its key; a failure shows in the writer's ``error``, which the job
    loop checks before each batch, so the job stops as it did when the batch
    waited.
    """
    done = writer.finish(key, accepted, successor, wait=successor is not None)
    if done is not None:
        reply = yield _Wait(done)
        if isinstance(reply, SendmuxError):
            return reply
    error = writer.error
    if error is not None and not isinstance(error, SendmuxError):
        raise error  # a bug, not an outage: as loud as before
    return error


def _batch_steps(
    submit: _Submit, tally: _Tally, options: DispatchOptions, policy: RetryPolicy
) -> _Steps:
    """The life of one planned batch, as the steps a driver must carry out.

    With a ledger: ``begin`` before the first request (a replay batch is
    already recorded), ``finish`` after every definitive answer, the resend
    recorded as the successor in the same write (docs/ledger.md).
    """
    batch, ledger = submit.batch, submit.writer
    current: PlannedBatch | None = batch
    # What the ledger holds under the current key: a replay's full member
    # list, including members absent from this run's list.
    recorded: tuple[int, ...] = ()
    if ledger is not None:
        if batch.intent is not None:
            recorded = batch.intent.digests
        else:
            current = yield from _begin(batch, tally, ledger, submit.begun)
            if current is None:
                return
            recorded = current.digests
    assert current is not None
    attempt = current.attempt
    while True:
        outcome = yield _Send(current)
        if isinstance(outcome, _PacerUnavailable):
            # Before the first attempt the batch never left; before a retry it
            # may have been accepted, so it is no "not sent". A begun intent stays
            # pending either way and the re-run replays it under its key.
            tally.whole_batch(
                current, Outcome.FAILED if outcome.after_attempt else Outcome.NOT_SENT, outcome
            )
            raise _StopJob(outcome, "outage", f"{type(outcome).__name__}: {outcome.message}")
        if isinstance(outcome, IdempotencyConflictError) and not outcome.retryable:
            # The key already carried an accepted request for this work.
            tally.failure_streak(None)
            tally.whole_batch(current, Outcome.ALREADY_ACCEPTED, outcome)
            if ledger is not None:
                error = yield from _record(ledger, current.idempotency_key, recorded)
                if error is not None:
                    raise _ledger_stop(error)
            return
        if isinstance(outcome, _JOB_STOPPERS):
            tally.whole_batch(current, Outcome.NOT_SENT, outcome)
            if ledger is not None:
                # Refused whole: nothing accepted, the members are free again.
                # A failed write only leaves it pending (a replay is harmless).
                yield from _record(ledger, current.idempotency_key, ())
            raise _StopJob(
                outcome, "credits" if isinstance(outcome, InsufficientCreditsError) else "auth"
            )
        if isinstance(outcome, SendmuxError) and policy.waits_too_long(outcome):
            # The client raised at once (message says when to retry): the
            # other batches would meet the same wait, so the job stops.
            tally.whole_batch(current, Outcome.NOT_SENT, outcome)
            raise _StopJob(outcome, "rate_limited")
        if isinstance(outcome, SendmuxError):
            tally.whole_batch(current, Outcome.FAILED, outcome)
            if ledger is not None and not outcome.retryable:
                # A definitive refusal of the whole request (400, 413, 422):
                # nothing was accepted. A retryable one may have been, so its
                # intent stays pending and the re-run replays it.
                error = yield from _record(ledger, current.idempotency_key, ())
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
            error = yield from _record(ledger, current.idempotency_key, accepted, successor)
            if error is not None:
                if following is not None:
                    tally.whole_batch(following, Outcome.NOT_SENT, error)
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


@dataclass(frozen=True, kw_only=True)
class DispatchOptions:
    """How a job is sent: the keyword arguments of :func:`dispatch` and :class:`Dispatcher`.

    * ``concurrency``: batches in flight at most (at least 1).
    * ``pacer``: keeps the key under its request ceiling; ``None``: the client's own.
    * ``on_progress``: called with a :class:`~sendmux_dispatch.report.Progress`
      after every batch.
    * ``max_failures``: failures kept in the report with recipient and reason;
      the rest are only counted.
    * ``results_path``: a file that gets one JSON line per recipient.
    * ``max_resends``: how often the failed-and-retryable items of a batch are
      sent again (0 or more).
    * ``preflight``: check the key's ``email.send`` permission and the balance
      before anything is sent.
    * ``dedupe``: drop repeated addresses (reported as duplicates).
    * ``per_message_keys``: also send a key per message.
    * ``max_consecutive_failures``: batches in a row failing the same way (5xx,
      connection errors, 429s, after the client's retries) stop the job with
      ``stop_cause == "outage"``; 0 disables the breaker.
    * ``ledger``: a :class:`~sendmux_dispatch.ledger.Ledger` that makes re-runs
      exactly once even when the list changed (docs/ledger.md); needs ``dedupe``.
    * ``ledger_ahead``: with a ledger, batches planned and recorded pending
      ahead of the sends at most (0 or more), so recording them never holds the
      planner up; each is a pending intent a killed run leaves for its re-run
      to replay. Lower it for a store whose values are small (the Airflow task
      state store keeps every pending intent in one value).
    """

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
    ledger_ahead: int = DEFAULT_LEDGER_AHEAD

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if self.max_resends < 0:
            raise ValueError("max_resends must be 0 or more")
        if self.max_consecutive_failures < 0:
            raise ValueError("max_consecutive_failures must be 0 (no breaker) or more")
        if self.ledger_ahead < 0:
            raise ValueError("ledger_ahead must be 0 or more batches")
        if self.ledger is not None and not self.dedupe:
            raise ValueError("a ledger records each address once: dedupe must stay on with it")


class DispatchKwargs(TypedDict, total=False):
    """:class:`DispatchOptions` as ``**options``, so mypy checks each keyword.

    Names and types only (a TypedDict cannot be derived from a dataclass
    statically); ``tests/unit/test_dispatch_options.py`` holds the two equal.
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
    ledger_ahead: int


# What the job loop (``_Job.steps``) needs done; each driver carries these out
# its own way (threads or asyncio tasks), as it does a batch's ``_Send``/``_Sleep``.


@dataclass(frozen=True, slots=True)
class _Fetch:
    """Read the key's ``me`` or the team's ``balance``: the reply is it or the error."""

    what: Literal["me", "balance"]


@dataclass(frozen=True, slots=True)
class _Submit:
    """Start driving ``batch`` (its ``_batch_steps``) without waiting; the reply is ``None``.

    With a ledger, ``writer`` is the job's :class:`LedgerWriter` and ``begun``
    the batch's ``begin`` (None for a replay, recorded already).
    """

    batch: PlannedBatch
    writer: LedgerWriter | None = None
    begun: Future[set[int]] | None = None


@dataclass(frozen=True, slots=True)
class _Await:
    """Wait for the first batch in flight to end (or all of them, ``every``).

    The reply lists, for each batch that ended, what it raised (``None``: nothing).
    """

    every: bool


_JobStep = _Fetch | _Submit | _Await | _Call
_JobReply = Me | Balance | SendmuxError | list[BaseException | None] | _Held | set[int] | None
_JobSteps = Generator[_JobStep, _JobReply, DispatchReport]


class _Job:
    """One run of a job: everything both drivers share, from planning to the report.

    A batch's life, and where each stage happens (the seams a ledger hooks into):
    *planned* (``steps`` takes it from the plan), *about to be sent* and
    *answered* (around ``yield _Send`` in ``_batch_steps``), *settled* (the
    ``_Tally`` calls in ``_batch_steps``, then ``_settle`` here when its driver
    reports it ended). Rows that stop short of a batch (invalid, duplicate) are
    settled by ``_Tally.plan_item`` as the plan yields them.
    """

    def __init__(
        self,
        options: DispatchOptions,
        template: Template,
        recipients: Iterable[object],
        *,
        job_key: str,
        interruptible: bool,
    ) -> None:
        self.options = options
        self.job_key = job_key
        # The blocking driver settles on the first Ctrl-C; in asyncio a
        # KeyboardInterrupt is not ours to absorb (cancellation is the stop).
        self.interruptible = interruptible
        self.template = template
        self.source = _Source(recipients)
        self.tally: _Tally | None = None
        self.stop: _StopJob | None = None
        self.in_flight = 0
        self.batches_done = 0
        self.writer: LedgerWriter | None = None

    def steps(self) -> _JobSteps:
        """The job loop, as the steps a driver must carry out; returns the report."""
        options = self.options
        if options.preflight:
            me = yield _Fetch("me")
            if isinstance(me, SendmuxError):
                raise me
            _preflight_checks(me, (yield _Fetch("balance")))
        # Opened after the pre-flight checks: a refused key leaves no results file.
        self.tally = tally = _Tally(
            self.job_key, options.max_failures, options.results_path, time.monotonic()
        )
        # Read before the list: a re-run holds the members of pending batches
        # aside and replays them under their recorded keys (docs/ledger.md).
        pending = _Held()
        if options.ledger is not None:
            reply = yield _Call(partial(_pending, options.ledger, self.job_key, self.source))
            assert isinstance(reply, _Held)
            pending = reply
        plan = plan_batches(
            self.template,
            self.source,
            job_key=self.job_key,
            dedupe=options.dedupe,
            per_message_keys=options.per_message_keys,
            ledger=_ledger_stage(options.ledger, pending),
        )
        writer = self.writer = (
            None if options.ledger is None else LedgerWriter(options.ledger, self.job_key)
        )
        # Batches taken from the plan, not yet handed to a driver. With a ledger
        # the plan runs up to ``ledger_ahead`` batches ahead of the sends, each
        # begun as it is taken: their begins share the writer's rounds while
        # the batches before them are sent, so a round's latency (a few GIL
        # hand-offs behind this busy thread) is hidden (docs/ledger.md, "Group commit").
        ready: deque[_Submit] = deque()
        ahead = options.ledger_ahead if writer is not None else 0
        try:
            for item in plan:
                if isinstance(item, Lookup):
                    assert options.ledger is not None
                    found = yield _Call(
                        partial(options.ledger.accepted_among, self.job_key, item.digests)
                    )
                    if isinstance(found, SendmuxError):
                        # Unanswered, the plan ends: an outage here stops the job like a
                        # bad line, and the rows read but not batched count as not_sent.
                        self.source.stop = self.source.stop or _ledger_stop(found)
                    else:
                        assert isinstance(found, set)
                        item.accepted = found
                    continue
                if not isinstance(item, PlannedBatch):
                    tally.plan_item(item)
                    continue
                ready.append(self._take(item))
                while ready and (self.in_flight < options.concurrency or len(ready) > ahead):
                    yield from self._hand_over(ready)
            while ready:
                yield from self._hand_over(ready)
        except KeyboardInterrupt:
            if not self.interruptible:
                raise
            self.stop = self.stop or _interrupted_stop()
            while ready:
                self._not_sent(ready.popleft())
            if self.in_flight:
                logger.warning(
                    "interrupted: waiting for %d batches in flight (interrupt again to "
                    "abandon them)",
                    self.in_flight,
                )
        self._check_stop()
        # A KeyboardInterrupt while waiting here propagates: the driver abandons them.
        self._settle((yield _Await(every=True)))
        if writer is not None:
            # Every answer stored before the report says so.
            flushed = yield _Call(writer.flush)
            if isinstance(flushed, SendmuxError):
                self.stop = self.stop or _ledger_stop(flushed)
        return _finish(tally, plan.stats.recipients, plan.stats.batches, self.stop)

    def _check_stop(self) -> None:
        self.stop = self.stop or self.source.stop
        error = None if self.writer is None else self.writer.error
        if error is not None and not isinstance(error, SendmuxError):
            raise error  # a bug in a ledger, not an outage: the job ends with it
        if self.stop is None and error is not None:
            self.stop = _ledger_stop(error)

    def _take(self, batch: PlannedBatch) -> _Submit:
        """``batch`` as it will be handed over: begun now unless it is a replay or the job stops."""
        writer = self.writer
        self._check_stop()
        if writer is None or batch.intent is not None or self.stop is not None:
            return _Submit(batch, writer)
        return _Submit(batch, writer, writer.begin(Intent(batch.idempotency_key, batch.digests)))

    def _hand_over(self, ready: deque[_Submit]) -> Generator[_JobStep, _JobReply, None]:
        """Hand the oldest ready batch to the driver, once a slot is free; not if the job stops."""
        submit = ready[0]
        if self.in_flight >= self.options.concurrency:
            self._settle((yield _Await(every=False)))
        # Checked after the wait: the batch that freed the slot may have hit 401.
        self._check_stop()
        ready.popleft()
        if self.stop is not None:
            self._not_sent(submit)
        else:
            yield submit
            self.in_flight += 1

    def _not_sent(self, submit: _Submit) -> None:
        assert self.tally is not None
        assert self.stop is not None
        self.tally.whole_batch(submit.batch, Outcome.NOT_SENT, self.stop.error)
        if submit.writer is not None and submit.begun is not None:
            # Begun ahead, never sent: not left pending for a re-run to replay.
            submit.writer.release(submit.batch.idempotency_key, submit.begun)

    def _settle(self, ended: _JobReply) -> None:
        assert isinstance(ended, list)
        assert self.tally is not None
        self.in_flight -= len(ended)
        for error in ended:
            if isinstance(error, _StopJob):
                self.stop = self.stop or error
            elif error is not None:
                raise error
            self.batches_done += 1
            if self.options.on_progress is not None:
                self.options.on_progress(self.tally.progress(self.batches_done))

    def close(self, *, abandon: bool = False) -> None:
        """Close the results file and end the ledger writer; drivers call it once
        no batch of theirs can write. ``abandon``: batches may still run (a second
        Ctrl-C), so the writer's thread is left to store what it holds."""
        if self.tally is not None and self.tally.writer is not None:
            self.tally.writer.close()
        if self.writer is not None:
            self.writer.close(wait=not abandon)


def _call(step: _Call) -> _JobReply:
    """Carry out a job-level ``_Call`` (the ledger's reads: before planning, and its lookups)."""
    try:
        return cast("_JobReply", step.function())
    except SendmuxError as exc:
        return exc


_C = TypeVar("_C", SendmuxClient, AsyncSendmuxClient)


class _DispatcherBase(Generic[_C]):
    """A client and the :class:`DispatchOptions` every job run through it uses."""

    def __init__(self, client: _C, **options: Unpack[DispatchKwargs]) -> None:
        self.client: _C = client
        self.options = DispatchOptions(**options)


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
        job = _Job(self.options, template, recipients, job_key=job_key, interruptible=True)
        pool = ThreadPoolExecutor(self.options.concurrency, thread_name_prefix="sendmux")
        in_flight: set[Future[None]] = set()

        def carry_out(step: _JobStep) -> _JobReply:
            nonlocal in_flight
            if isinstance(step, _Submit):
                assert job.tally is not None
                in_flight.add(pool.submit(self._drive, step, job.tally))
                return None
            if isinstance(step, _Await):
                done, in_flight = wait(
                    in_flight, return_when=ALL_COMPLETED if step.every else FIRST_COMPLETED
                )
                return [future.exception() for future in done]
            if isinstance(step, _Call):
                return _call(step)
            try:
                return self.client.me() if step.what == "me" else self.client.balance()
            except SendmuxError as exc:
                return exc

        def carry_out_all(steps: _JobSteps) -> DispatchReport:
            try:
                step = next(steps)
                while True:
                    try:
                        reply = carry_out(step)
                    except KeyboardInterrupt as exc:
                        # The job loop decides: the first one settles, a later one propagates.
                        step = steps.throw(exc)
                    else:
                        step = steps.send(reply)
            except StopIteration as end:
                report: DispatchReport = end.value
                return report

        try:
            report = carry_out_all(job.steps())
        except KeyboardInterrupt:
            # The second one: abandon the batches in flight, do not wait for them.
            pool.shutdown(wait=False, cancel_futures=True)
            job.close(abandon=True)
            raise
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            job.close()
            raise
        pool.shutdown(wait=True)
        job.close()
        return report

    def _drive(self, submit: _Submit, tally: _Tally) -> None:
        steps = _batch_steps(submit, tally, self.options, self.client.retry)
        step = next(steps)
        while True:
            reply: object = None
            if isinstance(step, _Sleep):
                # The client's policy waits, so a test's no-op sleep covers resends too.
                self.client.retry.sleep(step.seconds)
            elif isinstance(step, _Call | _Wait):
                try:
                    reply = step.function() if isinstance(step, _Call) else step.future.result()
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
        job = _Job(self.options, template, recipients, job_key=job_key, interruptible=False)
        in_flight: set[asyncio.Task[None]] = set()

        async def carry_out(step: _JobStep) -> _JobReply:
            nonlocal in_flight
            if isinstance(step, _Submit):
                assert job.tally is not None
                in_flight.add(asyncio.ensure_future(self._drive(step, job.tally)))
                return None
            if isinstance(step, _Await):
                if not in_flight:  # asyncio.wait refuses an empty set
                    return []
                done, in_flight = await asyncio.wait(
                    in_flight,
                    return_when=asyncio.ALL_COMPLETED if step.every else asyncio.FIRST_COMPLETED,
                )
                return [task.exception() for task in done]
            if isinstance(step, _Call):
                return await asyncio.to_thread(_call, step)
            try:
                return await (self.client.me() if step.what == "me" else self.client.balance())
            except SendmuxError as exc:
                return exc

        steps = job.steps()
        try:
            step = next(steps)
            while True:
                step = steps.send(await carry_out(step))
        except StopIteration as end:
            report: DispatchReport = end.value
        finally:
            pending = [task for task in in_flight if not task.done()]
            for task in pending:
                task.cancel()
            try:
                if pending:
                    # Unwound before we return or re-raise: no request outlives the job.
                    await asyncio.gather(*pending, return_exceptions=True)
            finally:
                job.close()
        return report

    async def _drive(self, submit: _Submit, tally: _Tally) -> None:
        steps = _batch_steps(submit, tally, self.options, self.client.retry)
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
            elif isinstance(step, _Wait):
                try:
                    # Resolved by the writer's thread; awaited, not waited for in a thread.
                    reply = await asyncio.wrap_future(cast("Future[object]", step.future))
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
        accounted = sum(report.count(outcome) for outcome in Outcome)
        report.not_sent += max(0, recipients - accounted)
    return report


def _preflight_checks(me: _JobReply, balance: _JobReply) -> None:
    assert isinstance(me, Me)
    if isinstance(balance, (PermissionDeniedError, AuthenticationError)):
        # Send-only keys cannot read billing; the check is skipped rather than failed.
        balance = None
    elif isinstance(balance, SendmuxError):
        raise balance
    if not me.has_permission("email.send"):
        raise PermissionDeniedError(
            f"the API key '{me.label}' lacks the email.send permission; nothing was sent",
            code="insufficient_permissions",
        )
    if isinstance(balance, Balance) and balance.balance <= 0:
        raise InsufficientCreditsError(
            f"the team's balance is {balance.balance} {balance.currency}; nothing was sent",
            code="insufficient_credits",
        )


def dispatch(
    client: SendmuxClient,
    template: Template,
    recipients: Iterable[object],
    *,
    job_key: str,
    **options: Unpack[DispatchKwargs],
) -> DispatchReport:
    """Send ``template`` to every recipient, in idempotent batches; return the report.

    ``job_key`` names the work (the same key re-run replays instead of
    re-sending); ``recipients`` is any iterable :func:`plan_batches` accepts,
    read lazily. Invalid recipients are reported, never raised; the job stops
    early (``report.stop_cause``) on 401/403 and 402, a Retry-After beyond the
    retry policy, an :class:`~sendmux_dispatch.errors.InputError` from the
    source, Ctrl-C, and the circuit breaker. ``options`` are :class:`DispatchOptions`'
    fields.
    """
    return Dispatcher(client, **options).run(template, recipients, job_key=job_key)


async def adispatch(
    client: AsyncSendmuxClient,
    template: Template,
    recipients: Iterable[object],
    *,
    job_key: str,
    **options: Unpack[DispatchKwargs],
) -> DispatchReport:
    """The asyncio twin of :func:`dispatch`."""
    return await AsyncDispatcher(client, **options).run(template, recipients, job_key=job_key)
