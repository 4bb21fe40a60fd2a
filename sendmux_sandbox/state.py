"""The in-memory store: accepted messages, idempotency records and counters.

Messages are kept column-wise (one list or array per field, indexed by a
sequence number) so that a million of them fit in a few hundred MB: the ids
``eml_...`` and ``dlog_...`` are derived from the sequence number and a random
prefix drawn at start and at every reset, the final delivery outcome is one
byte, and only what the logs and the admin API show is stored.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import threading
import time
import zlib
from array import array
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from sendmux_sandbox.envelope import random_token

__all__ = [
    "FAILED",
    "REJECTED",
    "SENT",
    "Extra",
    "IdempotencyRecord",
    "SandboxState",
    "outcome_for",
]

SENT, FAILED, REJECTED = 0, 1, 2
OUTCOME_NAMES = ("sent", "failed", "rejected")
_ID_PREFIX_CHARS = 14
_ID_COUNTER_CHARS = 24 - _ID_PREFIX_CHARS
_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"
#: Cap on the cache that lets repeated from-addresses and subjects share one string.
_INTERN_LIMIT = 10_000
_COMPRESS_OVER = 2048


def outcome_for(to_email: str) -> int:
    """The address rules: ``user+fail@`` fails, ``user+reject@`` is rejected, others are sent."""
    local = to_email.rpartition("@")[0].lower()
    if local.endswith("+fail"):
        return FAILED
    if local.endswith("+reject"):
        return REJECTED
    return SENT


def _base36(value: int, width: int) -> str:
    chars = []
    while value:
        value, digit = divmod(value, 36)
        chars.append(_DIGITS[digit])
    return "".join(reversed(chars)).rjust(width, "0")


@dataclass(frozen=True, slots=True)
class Extra:
    """The rarely present parts of a message, kept only when present."""

    copies: tuple[tuple[str, str], ...]
    delivery_group: tuple[str, ...] | None
    reply_to: str | None = None
    return_path: str | None = None
    #: The attachments' file names, in order (their content is not kept).
    attachments: tuple[str, ...] = ()


def _address(value: Any) -> str | None:
    # reply_to is an Address object or a bare string in the spec; return_path a string.
    if isinstance(value, Mapping):
        value = value.get("email")
    return value if isinstance(value, str) and value else None


@dataclass(slots=True)
class IdempotencyRecord:
    fingerprint: bytes
    created: float
    request_id: str
    #: 0 while the first request is still being processed.
    status: int = 0
    body: bytes = b""
    compressed: bool = False

    @property
    def in_flight(self) -> bool:
        return self.status == 0

    def response_body(self) -> bytes:
        return zlib.decompress(self.body) if self.compressed else self.body


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """One accepted message as the admin API and the logs see it."""

    seq: int
    message_id: str
    log_id: str
    to_email: str
    from_email: str
    subject: str
    created: float
    size: int
    outcome: int
    idempotency_key: str | None
    extra: Extra | None


class SandboxState:
    """Everything a running sandbox remembers; guarded by one lock."""

    def __init__(self, idempotency_ttl: float) -> None:
        self.lock = threading.RLock()
        self.idempotency_ttl = idempotency_ttl
        #: Send requests between arrival and storing their messages (not reset).
        self.accepting_requests = 0
        self._clear()

    def _clear(self) -> None:
        self.id_prefix = random_token(_ID_PREFIX_CHARS)
        self._to: list[str] = []
        self._from: list[str] = []
        self._subject: list[str] = []
        self._created = array("d")
        self._size = array("q")
        self._outcome = bytearray()
        self._idem: list[str | None] = []
        self._extra: dict[int, Extra] = {}
        self._interned: dict[str, str] = {}
        self._recipients: set[str] = set()
        self._fingerprints: set[int] = set()
        self._outcome_counts = [0, 0, 0]
        self._records: dict[tuple[str, str], IdempotencyRecord] = {}
        self._message_keys: dict[tuple[str, str], tuple[int, int]] = {}
        self.requests = 0
        self.requests_by_api: Counter[str] = Counter()
        self.rate_limited = 0
        self.faults: Counter[str] = Counter()
        self.replays = 0
        self.idempotency_conflicts = 0
        self.invalid_messages = 0

    def reset(self) -> None:
        with self.lock:
            self._clear()

    @contextlib.contextmanager
    def accepting(self) -> Iterator[None]:
        """Count a send request as in progress until it has stored (or refused) its messages."""
        with self.lock:
            self.accepting_requests += 1
        try:
            yield
        finally:
            with self.lock:
                self.accepting_requests -= 1

    # ids

    def message_id(self, seq: int) -> str:
        return f"eml_{self.id_prefix}{_base36(seq, _ID_COUNTER_CHARS)}"

    def log_id(self, seq: int) -> str:
        return f"dlog_{self.id_prefix}{_base36(seq, _ID_COUNTER_CHARS)}"

    def seq_of(self, public_id: str) -> int | None:
        """The sequence number behind an ``eml_`` or ``dlog_`` id of this run, else ``None``."""
        _, sep, rest = public_id.partition("_")
        if not sep or len(rest) != 24 or not rest.startswith(self.id_prefix):
            return None
        try:
            seq = int(rest[_ID_PREFIX_CHARS:], 36)
        except ValueError:
            return None
        return seq if seq < len(self._to) else None

    # messages

    def _intern(self, value: str) -> str:
        cached = self._interned.get(value)
        if cached is not None:
            return cached
        if len(self._interned) < _INTERN_LIMIT:
            self._interned[value] = value
        return value

    def accept(self, msg: Mapping[str, Any], idempotency_key: str | None) -> int:
        """Store one valid message and return its sequence number."""
        to_email: str = msg["to"]["email"]
        from_email: str = msg["from"]["email"]
        subject: str = msg["subject"]
        html: str = msg["html_body"]
        text: str = msg.get("text_body", "")
        size = len(subject) + len(html) + len(text)
        for attachment in msg.get("attachments", ()):
            size += len(attachment.get("content", "")) * 3 // 4
        copies = tuple(
            (copy["email"], kind) for kind in ("cc", "bcc") for copy in msg.get(kind, ())
        )
        group = msg.get("delivery_group")
        groups = (group,) if isinstance(group, str) else tuple(group) if group else None
        reply_to = _address(msg.get("reply_to"))
        return_path = _address(msg.get("return_path"))
        attached = tuple(str(item.get("filename", "")) for item in msg.get("attachments", ()))
        lowered = to_email.lower()
        if lowered == to_email:
            lowered = to_email
        outcome = outcome_for(to_email)
        fingerprint = hash((lowered, from_email, subject, html, text))
        with self.lock:
            seq = len(self._to)
            previous = self._created[-1] if seq else 0.0
            self._created.append(max(time.time(), previous))
            self._to.append(to_email)
            self._from.append(self._intern(from_email))
            self._subject.append(self._intern(subject))
            self._size.append(size)
            self._outcome.append(outcome)
            self._idem.append(idempotency_key)
            if copies or groups or reply_to or return_path or attached:
                self._extra[seq] = Extra(copies, groups, reply_to, return_path, attached)
            self._recipients.add(lowered)
            self._fingerprints.add(fingerprint)
            self._outcome_counts[outcome] += 1
        return seq

    def __len__(self) -> int:
        return len(self._to)

    def message(self, seq: int) -> StoredMessage:
        return StoredMessage(
            seq=seq,
            message_id=self.message_id(seq),
            log_id=self.log_id(seq),
            to_email=self._to[seq],
            from_email=self._from[seq],
            subject=self._subject[seq],
            created=self._created[seq],
            size=self._size[seq],
            outcome=self._outcome[seq],
            idempotency_key=self._idem[seq],
            extra=self._extra.get(seq),
        )

    def created_at(self, seq: int) -> float:
        return self._created[seq]

    def outcome(self, seq: int) -> int:
        return self._outcome[seq]

    def seqs_between(self, start: float | None, end: float | None) -> range:
        """Sequence numbers created in ``[start, end)``; creation times never decrease."""
        lo = 0 if start is None else bisect.bisect_left(self._created, start)
        hi = len(self._to) if end is None else bisect.bisect_left(self._created, end)
        return range(lo, max(lo, hi))

    def first_pending(self, now: float, delay: float) -> int:
        """The first sequence number still pending at ``now``."""
        return bisect.bisect_right(self._created, now - delay)

    def search_text(self, seq: int) -> Iterator[str]:
        yield self._to[seq]
        yield self._from[seq]
        yield self._subject[seq]
        yield self.message_id(seq)

    def seqs_to(self, address: str) -> list[int]:
        wanted = address.lower()
        return [seq for seq, to in enumerate(self._to) if to.lower() == wanted]

    def counts(self, now: float, delay: float) -> dict[str, int]:
        """Messages by current delivery status."""
        with self.lock:
            pending_from = self.first_pending(now, delay)
            done = list(self._outcome_counts)
            for seq in range(pending_from, len(self._to)):
                done[self._outcome[seq]] -= 1
            return {
                "pending": len(self._to) - pending_from,
                **{name: done[i] for i, name in enumerate(OUTCOME_NAMES)},
            }

    @property
    def unique_recipients(self) -> int:
        return len(self._recipients)

    @property
    def duplicate_deliveries(self) -> int:
        # Sum over fingerprints of (count - 1) equals accepted minus distinct.
        return len(self._to) - len(self._fingerprints)

    # idempotency (the Idempotency-Key header)

    def begin_request(
        self, scope: tuple[str, str], fingerprint: bytes, request_id: str, now: float
    ) -> IdempotencyRecord | None:
        """Claim ``scope`` for a new request; return the existing record instead if there is one."""
        with self.lock:
            self._expire(now)
            record = self._records.get(scope)
            if record is not None:
                return record
            self._records[scope] = IdempotencyRecord(fingerprint, now, request_id)
            return None

    def finish_request(self, scope: tuple[str, str], status: int, body: bytes) -> None:
        with self.lock:
            record = self._records.get(scope)
            if record is None:
                return
            record.status = status
            if len(body) > _COMPRESS_OVER:
                record.body, record.compressed = zlib.compress(body, 1), True
            else:
                record.body = body

    def abandon_request(self, scope: tuple[str, str]) -> None:
        """Forget an unfinished claim so that a retry is processed afresh."""
        with self.lock:
            record = self._records.get(scope)
            if record is not None and record.in_flight:
                del self._records[scope]

    def _expire(self, now: float) -> None:
        # Records are inserted in time order and share one TTL, so the
        # expired ones are always at the front.
        records = self._records
        while records:
            scope = next(iter(records))
            if records[scope].created + self.idempotency_ttl > now:
                break
            del records[scope]

    # idempotency (the per-message idempotency_key)

    def message_key(self, scope: tuple[str, str], now: float) -> tuple[int, int] | None:
        """(sequence number, body hash) of the message accepted under a per-message key."""
        entry = self._message_keys.get(scope)
        if entry is None:
            return None
        if self._created[entry[0]] + self.idempotency_ttl <= now:
            del self._message_keys[scope]
            return None
        return entry

    def remember_message_key(self, scope: tuple[str, str], seq: int, body_hash: int) -> None:
        self._message_keys[scope] = (seq, body_hash)


def message_body_hash(msg: Mapping[str, Any]) -> int:
    """Hash of one message's content, independent of key order."""
    return hash(json.dumps(msg, sort_keys=True, separators=(",", ":"), ensure_ascii=False))
