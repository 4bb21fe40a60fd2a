"""Idempotency keys: what makes sending a batch twice harmless.

Every batch carries an ``Idempotency-Key`` so that sending it twice (a worker
retry, a re-run task, a crashed process started again) is answered by the
server's stored result instead of a second send. The key is::

    {slug(job_key)[:40]}-{blake2b-128(job_key, identities)}

where ``identities`` are the normalised (stripped, lower-cased) addresses of
the batch's recipients, in order, and every part is length-prefixed before
hashing so no two different inputs hash the same byte string. The readable
slug is only for people reading logs; uniqueness comes from the digest,
which covers the *whole* job key. Keys are 1 to 255 characters of
``[A-Za-z0-9_-]`` whatever the job key contains.

* The same job planned again (same job key, same recipients in the same
  order, same template) gives the same batches and the same keys, so a re-run
  replays instead of re-sending.
* Keys depend on a batch's content, not on where it falls in the job: a
  batch formed identically after rows were inserted or removed in front of it
  has the same key (the send ledger relies on it, docs/ledger.md). With
  ``dedupe=False`` the batch index is hashed in too, because two batches of
  one job could then hold the very same recipients.
* Different job keys, or different recipients in a batch, give different keys.
* The job key must identify the *work*, never the *attempt*. That is why
  :func:`job_key_for` is fed Airflow's ``dag_id, task_id, run_id, map_index``
  and never ``try_number``: with the try number in it, the retry of a task
  that died after the server accepted a batch would carry a new key, and every
  recipient of that batch would get the email twice. (Celery: the bulk job's
  id, not the task id of a retry.)
* The template is deliberately *not* part of the key: a re-run with an edited
  template must not send the batch again. The server then answers
  ``idempotency_conflict`` (same key, different body), which dispatch reports
  as "already accepted".

A partially failed batch is re-sent with only its failed-and-retryable items
(:meth:`~sendmux_dispatch.batching.PlannedBatch.subset`). That smaller
request needs its own key (the original key is bound to the original body),
derived from the original key, the attempt number and the subset's positions
and identities: still stable, so a crash during the resend replays it too.

The keys live here, apart from the planner, because the Celery pack and the
Airflow provider need them without planning anything.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable

from sendmux_dispatch.recipients import normalize_email

__all__ = ["batch_idempotency_key", "job_key_for", "message_idempotency_key"]

_NOT_KEY_CHARS = re.compile(r"[^A-Za-z0-9_-]+")
_SLUG_CHARS = 40


def _slug(text: str, limit: int = _SLUG_CHARS) -> str:
    slug = _NOT_KEY_CHARS.sub("-", text)[:limit].strip("-")
    return slug or "job"


def _digest(person: bytes, parts: Iterable[str]) -> str:
    # Length-prefixing makes the encoding injective: ("ab", "c") and
    # ("a", "bc") hash different byte strings. `person` separates the kinds
    # of key, so a batch key can never equal a message key.
    hasher = hashlib.blake2b(digest_size=16, person=person)
    for part in parts:
        data = part.encode("utf-8", "surrogatepass")
        hasher.update(len(data).to_bytes(8, "big"))
        hasher.update(data)
    return hasher.hexdigest()


def _check_job_key(job_key: str) -> None:
    if not isinstance(job_key, str) or not job_key:
        raise ValueError("job_key must be a non-empty string that identifies the work")


def batch_idempotency_key(
    job_key: str, recipient_identities: Iterable[str], *, index: int | None = None
) -> str:
    """The Idempotency-Key of the batch of job ``job_key`` holding these recipients.

    ``recipient_identities`` are the batch's normalised addresses, in order
    (:func:`~sendmux_dispatch.recipients.normalize_email`). The key depends on
    the batch's content, not on its place in the job; ``index`` (the batch's
    position) is hashed in only when given, which the planner does when
    deduplication is off. See the module docstring.
    """
    _check_job_key(job_key)
    if index is not None and index < 0:
        raise ValueError("index must be 0 or more")
    if index is None:
        digest = _digest(b"sendmux-batch", (job_key, *recipient_identities))
    else:
        # A kind of its own (person), so no index can pass for an identity.
        digest = _digest(b"sendmux-batch-ix", (job_key, str(index), *recipient_identities))
    return f"{_slug(job_key)}-{digest}"


def message_idempotency_key(job_key: str, position: int, email: str) -> str:
    """A per-message key: the job, the recipient's source position and address."""
    _check_job_key(job_key)
    digest = _digest(b"sendmux-message", (job_key, str(position), normalize_email(email)))
    return f"{_slug(job_key)}-m{position}-{digest}"


def job_key_for(*parts: object) -> str:
    """A job key from the parts that identify the work, e.g. Airflow's
    ``job_key_for(dag_id, task_id, run_id, map_index)``.

    Never pass an attempt counter (``try_number``): see the module docstring.
    Parts are joined with ``/`` after escaping ``%`` and ``/`` inside them, so
    different part lists never make the same key.
    """
    if not parts:
        raise ValueError("job_key_for needs at least one part")
    return "/".join(str(part).replace("%", "%25").replace("/", "%2F") for part in parts)
