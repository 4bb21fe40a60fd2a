"""Batching: recipients → personalised messages → batches, each with a stable key.

:func:`plan_batches` is a lazy pipeline. It pulls one recipient at a time from
its source, renders and validates that recipient's message, and cuts the
stream into :class:`PlannedBatch` es of at most ``max_messages`` messages
*and* at most ``max_bytes`` bytes of serialised request body. Only the batch
being filled is in memory (plus the deduplication table, 8 bytes per slot),
so a million-recipient generator is planned in flat memory.

Failures never stop a job: a recipient whose message cannot be built (bad
address, line break in the name, undefined template variable, message over
the byte budget) becomes a :class:`~sendmux_dispatch.recipients.RecipientFailure`
in the stream; a repeated address (compared case-insensitively) becomes a
:class:`Duplicate` record and is not sent twice.

Keys come from :mod:`sendmux_dispatch.keys` (how they are made and why),
byte sizes and the body's wrapping from the wire format
(:mod:`sendmux_dispatch.models._wire`), deduplication's table from
:mod:`sendmux_dispatch._digests`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel

from sendmux_dispatch._digests import DigestSet
from sendmux_dispatch.errors import LedgerUnavailableError
from sendmux_dispatch.keys import (
    _check_job_key,
    _digest,
    batch_idempotency_key,
    message_idempotency_key,
)
from sendmux_dispatch.models import (
    BATCH_ENVELOPE_BYTES,
    WireMessage,
    api_limits,
    batch_body,
    encode_message,
    join_batch_body,
    message_size_bound,
)
from sendmux_dispatch.personalize import Personalizer
from sendmux_dispatch.recipients import (
    Recipient,
    RecipientFailure,
    iter_recipients,
)

if TYPE_CHECKING:
    # Only annotations need it; the ledger package imports the planner's neighbours.
    from sendmux_dispatch.ledger._base import Intent

__all__ = [
    "BatchPlan",
    "Duplicate",
    "LedgerStage",
    "Lookup",
    "PlanItem",
    "PlanStats",
    "PlannedBatch",
    "Skipped",
    "plan_batches",
]

# ---------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class Duplicate:
    """A recipient dropped because its address (case-insensitively) was already planned.

    Not a failure: the person still gets the one email planned for them.
    """

    position: int
    email: str


@dataclass(frozen=True, slots=True)
class Skipped:
    """A recipient the send ledger settles without sending it in a new batch.

    ``status`` is ``"already_accepted"`` (the ledger records the server
    accepted this job's message for them), ``"failed"`` (code
    ``unconfirmed_pending``: recorded as sent more than 23 h ago with no
    answer, past the server's 24 h memory of the key, so not replayed
    blindly) or ``"not_sent"`` (code ``replay_over_budget``: a replayed batch
    that no longer fits the request budget; a re-run sends them).
    """

    position: int
    email: str
    status: Literal["already_accepted", "failed", "not_sent"]
    code: str | None = None
    message: str | None = None


@dataclass(frozen=True, slots=True, eq=False)
class PlannedBatch:
    """One request's worth of messages, with the key that makes sending it idempotent.

    ``messages[i]`` is for ``recipients[i]``; ``positions[i]`` is that
    recipient's index in the source. ``size_bound`` is an upper bound of the
    request body in bytes. ``attempt`` is 0 for a planned batch and n for the
    n-th resend of part of it (:meth:`subset`). ``encoded[i]``, when the
    planner kept it, is ``messages[i]`` exactly as it appears in the body:
    measuring a message serialises it, so the body reuses those bytes.
    ``intent`` is set on a *replay*: a batch the send ledger recorded as
    pending, rebuilt from this run's list and sent under its recorded key.
    """

    index: int
    messages: list[WireMessage]
    recipients: list[Recipient]
    idempotency_key: str
    size_bound: int
    per_message_keys: bool = False
    attempt: int = 0
    encoded: list[bytes | None] | None = None
    intent: Intent | None = None
    _digests: tuple[int, ...] | None = field(default=None, init=False, repr=False)

    @property
    def digests(self) -> tuple[int, ...]:
        """The recipients' ledger digests (:meth:`DigestSet.digest`), in batch order."""
        if self._digests is None:
            # Computed once: begin and finish both need them.
            digests = tuple(DigestSet.digest(recipient.identity) for recipient in self.recipients)
            object.__setattr__(self, "_digests", digests)
            return digests
        return self._digests

    @property
    def positions(self) -> list[int]:
        """The recipients' positions in the source, in batch order."""
        return [recipient.position for recipient in self.recipients]

    @property
    def identities(self) -> list[str]:
        """The recipients' normalised addresses, in batch order."""
        return [recipient.identity for recipient in self.recipients]

    def __len__(self) -> int:
        return len(self.messages)

    def to_json(self) -> bytes:
        """The request body, with per-message keys when the plan asked for them."""
        if self.encoded is None:
            return batch_body(self.messages, include_idempotency_keys=self.per_message_keys)
        # A message kept unencoded (one with attachments) is encoded now.
        parts = [
            part
            if part is not None
            else encode_message(message, include_idempotency_key=self.per_message_keys)
            for part, message in zip(self.encoded, self.messages, strict=True)
        ]
        return join_batch_body(parts)

    def rebuilt(self, indexes: Iterable[int], job_key: str) -> PlannedBatch:
        """The items at ``indexes`` as a new planned batch, under their own content key.

        For a batch that the ledger says holds recipients already taken: the
        rest form a new batch (:func:`batch_idempotency_key` of their
        identities), attempt 0, as if planned that way.
        """
        chosen = sorted(set(indexes))
        if not chosen:
            raise ValueError("a rebuilt batch needs at least one index")
        recipients = [self.recipients[i] for i in chosen]
        messages = [self.messages[i] for i in chosen]
        encoded = None if self.encoded is None else [self.encoded[i] for i in chosen]
        return PlannedBatch(
            index=self.index,
            messages=messages,
            recipients=recipients,
            idempotency_key=batch_idempotency_key(
                job_key, [recipient.identity for recipient in recipients]
            ),
            size_bound=BATCH_ENVELOPE_BYTES
            + sum(message_size_bound(message) + 1 for message in messages),
            per_message_keys=self.per_message_keys,
            encoded=encoded,
        )

    def subset(self, indexes: Iterable[int], attempt: int) -> PlannedBatch:
        """The items at ``indexes`` (positions in this batch) as a batch of their own.

        For re-sending only the failed-and-retryable items of a partially
        failed batch. The key is new (this is a different request body) but
        stable: derived from this batch's key, ``attempt`` and the chosen
        recipients, so re-running the same resend replays it. Indexes are
        sorted and de-duplicated; the batch ``index`` is kept.
        """
        chosen = sorted(set(indexes))
        if not chosen:
            raise ValueError("a subset needs at least one index")
        if chosen[0] < 0 or chosen[-1] >= len(self.messages):
            raise IndexError(f"subset indexes must be in 0..{len(self.messages) - 1}")
        if attempt < 1:
            raise ValueError("attempt counts resends from 1")
        recipients = [self.recipients[i] for i in chosen]
        messages = [self.messages[i] for i in chosen]
        encoded = None if self.encoded is None else [self.encoded[i] for i in chosen]
        parts = [self.idempotency_key, str(attempt)]
        # Indexes in the batch, not positions in the source: the batch key
        # depends on its members, not on where they stood, and so must this
        # (a re-run whose earlier rows shifted replays both).
        for index, recipient in zip(chosen, recipients, strict=True):
            parts.append(str(index))
            parts.append(recipient.identity)
        digest = _digest(b"sendmux-resend", parts)
        # The parent key is already key-safe; truncating it keeps nested
        # resends short, and the digest covers it in full.
        parent = self.idempotency_key[:80].rstrip("-")
        return PlannedBatch(
            index=self.index,
            messages=messages,
            recipients=recipients,
            idempotency_key=f"{parent}-r{attempt}-{digest}",
            size_bound=BATCH_ENVELOPE_BYTES
            + sum(message_size_bound(message) + 1 for message in messages),
            per_message_keys=self.per_message_keys,
            attempt=attempt,
            encoded=encoded,
        )


@dataclass(slots=True)
class Lookup:
    """A question for the send ledger that the plan hands to its caller.

    Yielded instead of calling the ledger when the :class:`LedgerStage` has no
    ``accepted_among``: the caller asks the ledger the way its driver runs
    blocking work (dispatch's asyncio driver in a thread, so an unreachable
    ledger's bounded retry never blocks the event loop), sets ``accepted`` to
    the answer and takes the next item. Left unanswered (``None``, the ledger
    could not be reached), the plan ends there and the rows read but not
    batched are the caller's to count, as when the callable raises.
    """

    digests: list[int]
    accepted: set[int] | None = None


PlanItem = PlannedBatch | RecipientFailure | Duplicate | Skipped | Lookup


@dataclass(slots=True)
class PlanStats:
    """Running totals of a plan, complete once it is exhausted."""

    recipients: int = 0
    messages: int = 0
    batches: int = 0
    failures: int = 0
    duplicates_dropped: int = 0
    already_accepted: int = 0


# ---------------------------------------------------------------- planning


#: Recipients looked up in the ledger per query while planning.
LEDGER_CHUNK = 100
#: A pending intent older than this is not replayed: the server keeps a key's
#: answer for 24 h, and an hour of margin covers clocks and a slow re-run.
STALE_PENDING_SECONDS = 23 * 3600.0


@dataclass
class LedgerStage:
    """What planning needs from the send ledger (dispatch builds it; docs/ledger.md).

    ``accepted_among(digests)`` answers which of them the ledger records as
    accepted for the job (one query per :data:`LEDGER_CHUNK` recipients; a
    :class:`~sendmux_dispatch.errors.LedgerUnavailableError` ends the plan
    there, and what was not yet batched is left for the caller to count).
    ``None``: the plan yields each question as a :class:`Lookup` for its
    caller to answer.
    ``intents`` are the job's pending intents: their members are held aside
    while the list is read and come out as replay batches under the recorded
    keys, never in a new batch.
    """

    accepted_among: Callable[[Sequence[int]], set[int]] | None
    intents: Sequence[Intent] = ()
    #: The ledger held nothing for the job when the run began: no lookups (only
    #: a run racing this one could have recorded anything, and ``begin``
    #: refuses taken members atomically anyway).
    fresh: bool = False
    now: float = field(default_factory=time.time)
    stale_after: float = STALE_PENDING_SECONDS


class _Replay:
    """One pending intent's rebuild buffer: its members' messages in intent order."""

    __slots__ = ("intent", "items", "resolved", "stale", "yielded")

    def __init__(self, intent: Intent, stale: bool) -> None:
        self.intent = intent
        self.stale = stale
        self.items: dict[int, tuple[Recipient, WireMessage, bytes | None, int]] = {}
        # Members found or refused (a set: a later copy of a refused row may still come).
        self.resolved: set[int] = set()
        self.yielded = False

    @property
    def complete(self) -> bool:
        return len(self.resolved) == len(self.intent.digests)


class BatchPlan(Iterator[PlanItem]):
    """The lazy stream of a job's batches, failures and dropped duplicates.

    Iterate it to get, in the order they are found, :class:`PlannedBatch`
    (full batches as soon as they are full, the last one at the end),
    :class:`~sendmux_dispatch.recipients.RecipientFailure` and
    :class:`Duplicate` records. A failure is yielded when it is found, so it
    may come before the batch holding recipients that preceded it.
    :attr:`stats` keeps running totals. :meth:`batches` yields only the
    batches, for callers that take failures through a callback.

    With a ``ledger`` stage (:class:`LedgerStage`, dispatch's send ledger)
    recipients are read in chunks of :data:`LEDGER_CHUNK`: those the ledger
    records as accepted come out as :class:`Skipped`, members of a pending
    intent as a replay batch (``batch.intent`` set) under the recorded key.
    """

    def __init__(
        self,
        personalizer: Personalizer,
        recipients: Iterable[object],
        *,
        job_key: str,
        max_messages: int,
        max_bytes: int,
        dedupe: bool,
        per_message_keys: bool,
        ledger: LedgerStage | None = None,
    ) -> None:
        if ledger is not None and not dedupe:
            raise ValueError("a ledger records each address once: dedupe must stay on with it")
        self.personalizer = personalizer
        self.job_key = job_key
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.dedupe = dedupe
        self.per_message_keys = per_message_keys
        self.stats = PlanStats()
        self._seen = DigestSet() if dedupe else None
        self._index = 0
        self._ledger = ledger
        self._items = self._plan(iter_recipients(recipients))

    def __iter__(self) -> BatchPlan:
        return self

    def __next__(self) -> PlanItem:
        return next(self._items)

    def batches(
        self,
        on_failure: Callable[[RecipientFailure], object] | None = None,
        on_duplicate: Callable[[Duplicate], object] | None = None,
    ) -> Iterator[PlannedBatch]:
        """Only the batches; failures and duplicates go to the callbacks (and :attr:`stats`)."""
        for item in self:
            if isinstance(item, PlannedBatch):
                yield item
            elif isinstance(item, RecipientFailure):
                if on_failure is not None:
                    on_failure(item)
            elif isinstance(item, Duplicate) and on_duplicate is not None:
                on_duplicate(item)

    def _batch(
        self,
        recipients: list[Recipient],
        messages: list[WireMessage],
        encoded: list[bytes | None],
        size: int,
        digests: list[int] | None = None,
    ) -> PlannedBatch:
        index = self._index
        self._index += 1
        self.stats.batches += 1
        self.stats.messages += len(messages)
        identities = [recipient.identity for recipient in recipients]
        key = batch_idempotency_key(self.job_key, identities, index=None if self.dedupe else index)
        batch = PlannedBatch(
            index, messages, recipients, key, size, self.per_message_keys, encoded=encoded
        )
        if digests is not None:
            # The planner hashed every member for dedupe already: the ledger's
            # begin and finish reuse those digests instead of hashing again.
            object.__setattr__(batch, "_digests", tuple(digests))
        return batch

    def _prepare(self, item: Recipient) -> tuple[WireMessage, bytes | None, int] | RecipientFailure:
        """Render and measure one recipient's message (or say why it cannot be sent)."""
        per_message_keys = self.per_message_keys
        key = (
            message_idempotency_key(self.job_key, item.position, item.email)
            if per_message_keys
            else None
        )
        message = self.personalizer.personalize(item, idempotency_key=key)
        if isinstance(message, RecipientFailure):
            return message
        # Measured by encoding it, and the bytes kept for the body; a
        # message with attachments is only bounded, so that megabytes of
        # base64 are not held twice while the batch waits for its turn.
        part = (
            None
            if "attachments" in message
            else encode_message(message, include_idempotency_key=per_message_keys)
        )
        # +1: the comma that separates it from its neighbour.
        message_size = (message_size_bound(message) if part is None else len(part)) + 1
        if BATCH_ENVELOPE_BYTES + message_size > self.max_bytes:
            return RecipientFailure(
                item.position,
                item.email,
                "too_large",
                f"message: needs up to {message_size} bytes in a request body, over "
                f"the {self.max_bytes}-byte budget; shrink the bodies or upload "
                "attachments and refer to them by attachment_id",
            )
        return message, part, message_size

    def _plan(self, source: Iterator[Recipient | RecipientFailure]) -> Iterator[PlanItem]:
        if self._ledger is not None:
            return self._plan_with_ledger(source, self._ledger)
        return self._plan_plain(source)

    def _plan_plain(self, source: Iterator[Recipient | RecipientFailure]) -> Iterator[PlanItem]:
        stats, seen = self.stats, self._seen
        max_messages, max_bytes = self.max_messages, self.max_bytes
        recipients: list[Recipient] = []
        messages: list[WireMessage] = []
        encoded: list[bytes | None] = []
        size = BATCH_ENVELOPE_BYTES
        for item in source:
            stats.recipients += 1
            if isinstance(item, RecipientFailure):
                stats.failures += 1
                yield item
                continue
            digest = 0
            if seen is not None:
                digest = DigestSet.digest(item.identity)
                if digest in seen:
                    stats.duplicates_dropped += 1
                    yield Duplicate(item.position, item.email)
                    continue
            prepared = self._prepare(item)
            if isinstance(prepared, RecipientFailure):
                stats.failures += 1
                yield prepared
                continue
            message, part, message_size = prepared
            # Only a recipient that was actually planned blocks later copies:
            # if the first row with an address is broken, a later good one is sent.
            if seen is not None:
                seen.add(digest)
            if messages and size + message_size > max_bytes:
                yield self._batch(recipients, messages, encoded, size)
                recipients, messages, encoded, size = [], [], [], BATCH_ENVELOPE_BYTES
            recipients.append(item)
            messages.append(message)
            encoded.append(part)
            size += message_size
            if len(messages) == max_messages:
                # Handed out as soon as it is full, without reading the next
                # recipient: taking n batches reads only the recipients they need.
                yield self._batch(recipients, messages, encoded, size)
                recipients, messages, encoded, size = [], [], [], BATCH_ENVELOPE_BYTES
        if messages:
            yield self._batch(recipients, messages, encoded, size)

    def _replay_batches(self, replay: _Replay) -> Iterator[PlanItem]:
        """The replay batch of a rebuilt intent (members found, in intent order)."""
        replay.yielded = True
        recipients: list[Recipient] = []
        messages: list[WireMessage] = []
        encoded: list[bytes | None] = []
        size = BATCH_ENVELOPE_BYTES
        for member in sorted(replay.items):
            recipient, message, part, message_size = replay.items[member]
            if messages and size + message_size > self.max_bytes:
                # The template grew: the prefix that fits goes under the key;
                # the rest are left for a re-run (released when the key is
                # answered afresh, recorded accepted on a conflict).
                yield Skipped(
                    recipient.position,
                    recipient.email,
                    "not_sent",
                    "replay_over_budget",
                    "its pending batch, rebuilt, no longer fits one request; a re-run of "
                    "the job sends it",
                )
                continue
            recipients.append(recipient)
            messages.append(message)
            encoded.append(part)
            size += message_size
        replay.items.clear()
        if not messages:
            return
        intent = replay.intent
        self._index += 1
        self.stats.batches += 1
        self.stats.messages += len(messages)
        yield PlannedBatch(
            self._index - 1,
            messages,
            recipients,
            intent.key,
            size,
            self.per_message_keys,
            attempt=intent.attempt,
            encoded=encoded,
            intent=intent,
        )

    def _plan_with_ledger(
        self, source: Iterator[Recipient | RecipientFailure], ledger: LedgerStage
    ) -> Iterator[PlanItem]:
        stats = self.stats
        seen = self._seen
        assert seen is not None
        max_messages, max_bytes = self.max_messages, self.max_bytes
        slot: dict[int, tuple[_Replay, int]] = {}
        for intent in ledger.intents:
            replay = _Replay(intent, ledger.now - intent.created > ledger.stale_after)
            for member, digest in enumerate(intent.digests):
                slot.setdefault(digest, (replay, member))
        recipients: list[Recipient] = []
        messages: list[WireMessage] = []
        encoded: list[bytes | None] = []
        digests: list[int] = []
        size = BATCH_ENVELOPE_BYTES
        chunk: list[tuple[Recipient, int]] = []
        ended = False
        items = iter(source)
        while not ended:
            # Read a chunk, then ask the ledger about it in one query.
            for item in items:
                stats.recipients += 1
                if isinstance(item, RecipientFailure):
                    stats.failures += 1
                    yield item
                    continue
                chunk.append((item, DigestSet.digest(item.identity)))
                if len(chunk) == LEDGER_CHUNK:
                    break
            else:
                ended = True
            asked = [] if ledger.fresh else [d for _, d in chunk if d not in slot and d not in seen]
            accepted: set[int] = set()
            if asked and ledger.accepted_among is None:
                lookup = Lookup(asked)
                yield lookup
                if lookup.accepted is None:
                    return  # the caller stops the job, as below
                accepted = lookup.accepted
            elif asked:
                assert ledger.accepted_among is not None
                try:
                    accepted = ledger.accepted_among(asked)
                except LedgerUnavailableError:
                    # The caller stops the job; rows read but not batched are its not_sent.
                    return
            for item, digest in chunk:
                if digest in seen:
                    stats.duplicates_dropped += 1
                    yield Duplicate(item.position, item.email)
                    continue
                if digest in accepted:
                    seen.add(digest)
                    stats.already_accepted += 1
                    yield Skipped(item.position, item.email, "already_accepted")
                    continue
                hit = slot.get(digest)
                if hit is not None and hit[0].yielded:
                    # A later copy of a member whose row failed before its
                    # batch was replayed without it: never under a new key.
                    seen.add(digest)
                    yield Skipped(
                        item.position,
                        item.email,
                        "not_sent",
                        "replay_member_late",
                        "its pending batch was replayed without it (an earlier row with this "
                        "address could not be sent); a re-run of the job sends it",
                    )
                    continue
                if hit is not None and hit[0].stale:
                    seen.add(digest)
                    yield Skipped(
                        item.position,
                        item.email,
                        "failed",
                        "unconfirmed_pending",
                        "sent more than 23 h ago with no answer recorded: the outcome is "
                        "unknown and the server may have forgotten the key; check the "
                        "delivery logs (not sent again)",
                    )
                    continue
                prepared = self._prepare(item)
                if isinstance(prepared, RecipientFailure):
                    stats.failures += 1
                    yield prepared
                    if hit is not None:
                        hit[0].resolved.add(hit[1])
                        if hit[0].complete:
                            yield from self._replay_batches(hit[0])
                    continue
                message, part, message_size = prepared
                seen.add(digest)
                if hit is not None:
                    # A pending member only ever travels under its intent's key.
                    replay, member = hit
                    replay.items[member] = (item, message, part, message_size)
                    replay.resolved.add(member)
                    if replay.complete:
                        yield from self._replay_batches(replay)
                    continue
                if messages and size + message_size > max_bytes:
                    yield self._batch(recipients, messages, encoded, size, digests)
                    recipients, messages, encoded, size = [], [], [], BATCH_ENVELOPE_BYTES
                    digests = []
                recipients.append(item)
                messages.append(message)
                encoded.append(part)
                digests.append(digest)
                size += message_size
                if len(messages) == max_messages:
                    yield self._batch(recipients, messages, encoded, size, digests)
                    recipients, messages, encoded, size = [], [], [], BATCH_ENVELOPE_BYTES
                    digests = []
            chunk = []
        if messages:
            yield self._batch(recipients, messages, encoded, size, digests)
        # Intents some of whose members are not in this list: sent with those
        # found, still under the recorded key; one with none found stays pending.
        done: set[int] = set()
        for replay, _ in slot.values():
            if id(replay) not in done and not replay.yielded and replay.items:
                done.add(id(replay))
                yield from self._replay_batches(replay)


def plan_batches(
    template: Personalizer | Mapping[str, Any] | BaseModel,
    recipients: Iterable[object],
    *,
    job_key: str,
    max_messages: int = api_limits.MAX_BATCH_MESSAGES,
    max_bytes: int = api_limits.MAX_REQUEST_BYTES,
    dedupe: bool = True,
    per_message_keys: bool = False,
    ledger: LedgerStage | None = None,
) -> BatchPlan:
    """Plan a job lazily: see :class:`BatchPlan` for what iterating yields.

    ``template`` is a :class:`~sendmux_dispatch.personalize.Personalizer` or
    what one accepts (compiled and checked here, so a template syntax error
    raises :class:`~sendmux_dispatch.errors.InvalidMessageError` before any
    recipient is read). ``recipients`` is anything
    :func:`~sendmux_dispatch.recipients.iter_recipients` accepts, including
    :func:`~sendmux_dispatch.recipients.read_csv` output; it is consumed only
    as far as the batches taken need.

    ``job_key`` identifies the work (see :func:`job_key_for`); ``dedupe``
    drops repeated addresses; ``per_message_keys`` also sets each message's
    ``idempotency_key`` (:func:`message_idempotency_key`); ``ledger`` adds the
    send ledger's stage (:class:`LedgerStage`; dispatch builds it).
    """
    _check_job_key(job_key)
    if not 1 <= max_messages <= api_limits.MAX_BATCH_MESSAGES:
        raise ValueError(f"max_messages must be 1 to {api_limits.MAX_BATCH_MESSAGES}")
    if not BATCH_ENVELOPE_BYTES < max_bytes <= api_limits.MAX_REQUEST_BYTES:
        raise ValueError(
            f"max_bytes must be more than {BATCH_ENVELOPE_BYTES} and at most "
            f"{api_limits.MAX_REQUEST_BYTES}"
        )
    personalizer = template if isinstance(template, Personalizer) else Personalizer(template)
    return BatchPlan(
        personalizer,
        recipients,
        job_key=job_key,
        max_messages=max_messages,
        max_bytes=max_bytes,
        dedupe=dedupe,
        per_message_keys=per_message_keys,
        ledger=ledger,
    )
