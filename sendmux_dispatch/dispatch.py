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
- errors that would fail every batch (401, 403, 402) stop the job; what was
  not attempted is counted as ``not_sent``, so a fixed re-run completes it.

The per-batch logic is written once, as a generator that yields what it needs
done (send this batch, sleep this long); the blocking and the asyncio drivers
only carry those steps out.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Generator, Iterable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from threading import Lock
from typing import Any, Generic, TypedDict, TypeVar

from pydantic import BaseModel
from typing_extensions import Unpack

from sendmux_dispatch.batching import Duplicate, PlannedBatch, plan_batches
from sendmux_dispatch.client import AsyncSendmuxClient, ClientStats, SendmuxClient
from sendmux_dispatch.errors import (
    AuthenticationError,
    IdempotencyConflictError,
    InsufficientCreditsError,
    PermissionDeniedError,
    SendmuxError,
    ValidationError,
)
from sendmux_dispatch.models import Balance, BatchItem, BatchResult, Me
from sendmux_dispatch.personalize import Personalizer
from sendmux_dispatch.ratelimit import Pacer
from sendmux_dispatch.recipients import RecipientFailure
from sendmux_dispatch.report import (
    DEFAULT_MAX_FAILURES,
    DispatchReport,
    Failure,
    Progress,
    ProgressCallback,
    ResultWriter,
)

__all__ = ["AsyncDispatcher", "DispatchOptions", "Dispatcher", "adispatch", "dispatch"]

#: Errors that would fail every batch of the job: stop instead of burning through the list.
_JOB_STOPPERS = (AuthenticationError, PermissionDeniedError, InsufficientCreditsError)

Template = Personalizer | Mapping[str, Any] | BaseModel


class _StopJob(Exception):
    def __init__(self, error: SendmuxError) -> None:
        super().__init__(str(error))
        self.error = error


@dataclass(frozen=True, slots=True)
class _Send:
    batch: PlannedBatch


@dataclass(frozen=True, slots=True)
class _Sleep:
    seconds: float


_Step = _Send | _Sleep
_Steps = Generator[_Step, "BatchResult | SendmuxError | None", None]


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

    def _fail(
        self, position: int | None, email: str | None, code: str, message: str, status: str
    ) -> None:
        self.report.add_failure(Failure(position, email, code, message))
        if self.writer is not None:
            self.writer.write(
                position=position, email=email, status=status, code=code, message=message
            )

    def plan_item(self, item: RecipientFailure | Duplicate) -> None:
        with self.lock:
            if isinstance(item, RecipientFailure):
                self.report.invalid += 1
                self._fail(item.position, item.email, item.code, item.reason, "invalid")
            else:
                self.report.duplicates_dropped += 1
                if self.writer is not None:
                    self.writer.write(position=item.position, email=item.email, status="duplicate")

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


def _batch_steps(batch: PlannedBatch, tally: _Tally, max_resends: int, delay: Any) -> _Steps:
    """The life of one planned batch, as the steps a driver must carry out."""
    current = batch
    attempt = 0
    while True:
        outcome = yield _Send(current)
        if isinstance(outcome, IdempotencyConflictError) and not outcome.retryable:
            # The key already carried an accepted request for this work.
            tally.whole_batch(current, "already_accepted", outcome)
            return
        if isinstance(outcome, _JOB_STOPPERS):
            tally.whole_batch(current, "not_sent", outcome)
            raise _StopJob(outcome)
        if isinstance(outcome, SendmuxError):
            tally.whole_batch(current, "failed", outcome)
            return
        assert isinstance(outcome, BatchResult)
        resend = tally.items(current, outcome, final=attempt >= max_resends)
        if not resend:
            return
        attempt += 1
        yield _Sleep(delay(attempt))
        current = current.subset(resend, attempt)


class DispatchOptions(TypedDict, total=False):
    """How a job is sent; every key is optional (defaults in brackets).

    ``concurrency`` batches in flight [4]; ``pacer`` keeps the key under its
    ceiling [the client's own]; ``on_progress`` is called after every batch;
    ``max_failures`` kept in the report, the rest counted [100];
    ``results_path`` gets one JSON line per recipient; ``max_resends`` of the
    failed-and-retryable items of a batch [3]; ``preflight`` checks the key's
    permission and the balance first [False]; ``dedupe`` drops repeated
    addresses [True]; ``per_message_keys`` also sends per-message keys [False].
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

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if self.max_resends < 0:
            raise ValueError("max_resends must be 0 or more")


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
    """

    def run(
        self, template: Template, recipients: Iterable[object], *, job_key: str
    ) -> DispatchReport:
        options, client = self.options, self.client
        plan = plan_batches(
            template,
            recipients,
            job_key=job_key,
            dedupe=options.dedupe,
            per_message_keys=options.per_message_keys,
        )
        if options.preflight:
            _preflight_checks(client.me(), _readable_balance(client))
        tally = _Tally(job_key, options.max_failures, options.results_path, time.monotonic())
        batches_done = 0
        stop: _StopJob | None = None
        try:
            with ThreadPoolExecutor(options.concurrency, thread_name_prefix="sendmux") as pool:
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

                for item in plan:
                    if isinstance(item, PlannedBatch):
                        if len(in_flight) >= options.concurrency:
                            done, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
                            settle(done)
                        # Checked after the wait: the batch that freed the slot may have hit 401.
                        if stop is not None:
                            tally.whole_batch(item, "not_sent", stop.error)
                            continue
                        in_flight.add(pool.submit(self._drive, item, tally))
                    else:
                        tally.plan_item(item)
                settle(wait(in_flight).done)
        finally:
            if tally.writer is not None:
                tally.writer.close()
        return _finish(tally, plan.stats.recipients, plan.stats.batches, stop)

    def _drive(self, batch: PlannedBatch, tally: _Tally) -> None:
        steps = _batch_steps(batch, tally, self.options.max_resends, self.client.retry.next_delay)
        step = next(steps)
        while True:
            reply: BatchResult | SendmuxError | None = None
            if isinstance(step, _Sleep):
                # The client's policy waits, so a test's no-op sleep covers resends too.
                self.client.retry.sleep(step.seconds)
            else:
                try:
                    reply = self.client.send_batch_body(
                        step.batch.to_json(),
                        idempotency_key=step.batch.idempotency_key,
                        pacer=self.options.pacer,
                        stats=tally.calls,
                    )
                except SendmuxError as exc:
                    reply = exc
            try:
                step = steps.send(reply)
            except StopIteration:
                return


class AsyncDispatcher(_DispatcherBase[AsyncSendmuxClient]):
    """The asyncio twin of :class:`Dispatcher`, on an :class:`AsyncSendmuxClient`."""

    async def run(
        self, template: Template, recipients: Iterable[object], *, job_key: str
    ) -> DispatchReport:
        options, client = self.options, self.client
        plan = plan_batches(
            template,
            recipients,
            job_key=job_key,
            dedupe=options.dedupe,
            per_message_keys=options.per_message_keys,
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
                    if stop is not None:
                        tally.whole_batch(item, "not_sent", stop.error)
                        continue
                    in_flight.add(asyncio.ensure_future(self._drive(item, tally)))
                else:
                    tally.plan_item(item)
            if in_flight:
                done, _ = await asyncio.wait(in_flight)
                settle(done)
        finally:
            for task in in_flight:
                task.cancel()
            if tally.writer is not None:
                tally.writer.close()
        return _finish(tally, plan.stats.recipients, plan.stats.batches, stop)

    async def _drive(self, batch: PlannedBatch, tally: _Tally) -> None:
        steps = _batch_steps(batch, tally, self.options.max_resends, self.client.retry.next_delay)
        step = next(steps)
        while True:
            reply: BatchResult | SendmuxError | None = None
            if isinstance(step, _Sleep):
                await self.client.retry.async_sleep(step.seconds)
            else:
                try:
                    reply = await self.client.send_batch_body(
                        step.batch.to_json(),
                        idempotency_key=step.batch.idempotency_key,
                        pacer=self.options.pacer,
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
        report.stopped_reason = f"{type(stop.error).__name__}: {stop.error.message}"
        report.stop_cause = (
            "credits" if isinstance(stop.error, InsufficientCreditsError) else "auth"
        )
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
    early only on 401, 403 and 402. ``options`` are :class:`DispatchOptions`.
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
