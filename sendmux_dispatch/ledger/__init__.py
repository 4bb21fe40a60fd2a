"""The send ledger: which recipients of a job the server accepted, and what is in flight.

A re-run of a job key skips the recipients recorded as accepted, and replays
every batch recorded as pending (sent, or about to be, with no answer
recorded) under the key it was recorded with, so nobody is mailed twice even
when the list or the template changed between runs. The design and where
its guarantee ends: docs/ledger.md.

- :class:`Ledger`: the protocol dispatch calls (blocking; the async driver
  calls it through ``asyncio.to_thread``).
- :class:`GroupCommitLedger`: a ledger that stores many batch events in one
  write (:func:`record`); dispatch's ledger writer uses it when it can.
- :class:`LedgerWriter`: one thread per job that stores its events in those
  rounds (group commit), so the ledger stays off the planner's path.
- :class:`SqliteLedger`: one file, WAL mode, the processes of one machine.
- :class:`RedisLedger`: many workers on many machines (the ``redis`` extra).

Only 64-bit digests of normalised addresses are stored
(:func:`recipient_digest`), never an address.
"""

from sendmux_dispatch.errors import LedgerUnavailableError
from sendmux_dispatch.ledger._base import (
    DEFAULT_UNAVAILABLE_AFTER,
    Finish,
    GroupCommitLedger,
    Intent,
    JobStats,
    Ledger,
    recipient_digest,
    record,
)
from sendmux_dispatch.ledger._redis import RedisLedger
from sendmux_dispatch.ledger._sqlite import SqliteLedger
from sendmux_dispatch.ledger._writer import LedgerWriter

__all__ = [
    "DEFAULT_UNAVAILABLE_AFTER",
    "Finish",
    "GroupCommitLedger",
    "Intent",
    "JobStats",
    "Ledger",
    "LedgerUnavailableError",
    "LedgerWriter",
    "RedisLedger",
    "SqliteLedger",
    "recipient_digest",
    "record",
]
