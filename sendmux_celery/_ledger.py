"""The send ledger on Redis (``app.conf.sendmux_ledger_url``) as the bulk flow uses it.

The producer records each batch's intent (``begin``) before publishing it and
skips recipients the ledger holds as accepted; the batch task records the
answer (``finish``). So a re-run of a job whose list changed (another order,
rows added) mails nobody twice, which batch keys alone cannot promise.
See docs/celery.md and docs/ledger.md.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from sendmux_celery._results import BatchSummary
from sendmux_celery._settings import SettingsError
from sendmux_dispatch.ledger import RedisLedger

__all__ = ["finish_batch", "ledger_for", "ledger_url"]

_lock = threading.Lock()
_ledgers: dict[tuple[int, str], RedisLedger] = {}


def ledger_url(conf: Mapping[str, Any]) -> str | None:
    """``app.conf.sendmux_ledger_url``, or None when the ledger is off."""
    url = conf.get("sendmux_ledger_url")
    if url is None or url == "":
        return None
    if not isinstance(url, str):
        raise SettingsError("app.conf.sendmux_ledger_url must be a Redis URL string")
    return url


def ledger_for(url: str) -> RedisLedger:
    """This process's ledger on ``url`` (one per pid: a forked pool makes its own)."""
    key = (os.getpid(), url)
    with _lock:
        ledger = _ledgers.get(key)
        if ledger is None:
            ledger = _ledgers[key] = RedisLedger(url)
        return ledger


def finish_batch(
    ledger: RedisLedger,
    job_key: str,
    digests: Sequence[int],
    summary: BatchSummary,
    recorded: Sequence[int] | None = None,
) -> None:
    """Record a batch task's verdict in the ledger (or leave its intent pending).

    A whole batch that failed with a retryable error after its retries may
    have been accepted (a lost answer): its intent stays pending and a re-run
    of the job replays it under the same key. Every other verdict is final:
    the accepted members are recorded, the rest released for a re-run.
    ``recorded`` is a replayed intent's full member list: when the server
    answers that its key was used already, all of them were accepted, also
    those this run's list no longer holds.
    """
    error = summary["error"]
    counts = summary["counts"]
    whole_failed = summary["status"] == "failed" and not counts["already_accepted"]
    if whole_failed and error is not None and error["retryable"]:
        return
    if len(digests) != summary["total"]:
        return  # not the batch the producer recorded: leave it for the re-run to settle
    if counts["already_accepted"] and recorded:
        accepted = list(recorded)
    elif counts["already_accepted"]:
        refused = {failure["index"] for failure in summary["failures"]}
        accepted = [d for i, d in enumerate(digests) if i not in refused]
    else:
        accepted = [d for d, mid in zip(digests, summary["message_ids"], strict=True) if mid]
    ledger.finish(job_key, summary["idempotency_key"], accepted)
