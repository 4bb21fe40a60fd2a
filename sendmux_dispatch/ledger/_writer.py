"""The ledger writer: one thread per job that stores its batch events in group-commit rounds."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import Future

from sendmux_dispatch.ledger._base import Finish, Intent, Ledger, record

__all__ = ["LedgerWriter"]

#: Events stored per round at most: bounds one transaction's size and one
#: script's run time on a shared Redis.
MAX_ROUND = 256


class LedgerWriter:
    """Stores one job's ``begin`` and ``finish`` calls, many per write (group commit).

    Every call only queues the event (``begin`` returns a future of its
    answer, ``finish`` one when asked to ``wait``); the writer's thread
    takes everything queued since its last write and stores it with one
    :func:`~sendmux_dispatch.ledger.record` call (one SQLite transaction,
    one Redis round trip), the finishes first, then the begins, then resolves
    the futures. So the number of writes, and of the GIL hand-offs each
    statement or socket call costs behind a busy planning thread, is per
    round rather than per batch, and a backlog makes rounds bigger rather
    than slower (docs/ledger.md, "Group commit").

    What a caller must wait for is the write-ahead rule's business: a batch
    is sent only once its ``begin`` future says it was recorded, and a resend
    only once the ``finish`` that records it as the successor is done. A
    plain ``finish`` need not be waited for: killed before it is stored, its
    intent stays pending and the re-run replays it under its key. ``flush``
    before the report.

    A round that fails (the ledger's own bounded retries exhausted) fails
    its futures, and every later call at once, with the same error
    (:attr:`error`): the store was unreachable for that long, and the job
    stops rather than send what it could not record.
    """

    def __init__(self, ledger: Ledger, job_key: str) -> None:
        self.ledger = ledger
        self.job_key = job_key
        #: What ended the writer's rounds, if anything: every later call fails with it.
        self.error: BaseException | None = None
        self._cond = threading.Condition()
        self._finishes: list[tuple[Finish, Future[None] | None]] = []
        self._begins: list[tuple[Intent, Future[set[int]]]] = []
        self._writing = False
        self._closed = False
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"LedgerWriter({self.ledger!r}, job_key={self.job_key!r})"

    # ------------------------------------------------------------ calls

    def begin(self, intent: Intent) -> Future[set[int]]:
        """Queue ``ledger.begin``; the future holds its answer (an empty set: recorded)."""
        future: Future[set[int]] = Future()
        with self._cond:
            if self._accepting(future):
                self._begins.append((intent, future))
        return future

    def finish(
        self,
        key: str,
        accepted: Sequence[int],
        successor: Intent | None = None,
        *,
        wait: bool = False,
    ) -> Future[None] | None:
        """Queue ``ledger.finish``; with ``wait``, a future done once it is stored.

        Without, nothing to wait for (most answers: no future to make and
        resolve per batch); a failure shows in :attr:`error` and :meth:`flush`.
        """
        future: Future[None] | None = Future() if wait else None
        with self._cond:
            if self._accepting(future):
                self._finishes.append((Finish(key, accepted, successor), future))
        return future

    def release(self, key: str, begun: Future[set[int]]) -> None:
        """Once ``begun`` (the begin of ``key``) is done, free its members if it was recorded.

        For a batch begun ahead and then never sent (the job stopped first):
        finished with nothing accepted, so it is not left pending.
        """

        def free(done: Future[set[int]]) -> None:
            if not done.cancelled() and done.exception() is None and not done.result():
                self.finish(key, ())

        begun.add_done_callback(free)

    def flush(self) -> None:
        """Wait until every call queued so far is stored; raise :attr:`error` if any."""
        with self._cond:
            while self._finishes or self._begins or self._writing:
                self._cond.wait()
            if self.error is not None:
                raise self.error

    def close(self, *, wait: bool = True) -> None:
        """Store what is queued (``wait``: before returning), then end the thread."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            thread = self._thread
        if wait and thread is not None:
            thread.join()

    # ------------------------------------------------------------ the thread

    def _accepting(self, future: Future[set[int]] | Future[None] | None) -> bool:
        # Called holding the condition.
        if self.error is not None:
            if future is not None:
                future.set_exception(self.error)
            return False
        if self._closed:
            raise RuntimeError("this LedgerWriter is closed")
        if self._thread is None:
            # Started on first use: a job that never writes has no thread.
            self._thread = threading.Thread(
                target=self._run, name=f"sendmux-ledger-{self.job_key[:32]}", daemon=True
            )
            self._thread.start()
        self._cond.notify()
        return True

    def _run(self) -> None:
        while True:
            with self._cond:
                while not (self._finishes or self._begins or self._closed):
                    self._cond.wait()
                if not (self._finishes or self._begins):
                    return  # closed, and everything stored
                finishes, self._finishes = self._finishes[:MAX_ROUND], self._finishes[MAX_ROUND:]
                begins, self._begins = self._begins[:MAX_ROUND], self._begins[MAX_ROUND:]
                self._writing = True
            self._write(finishes, begins)
            with self._cond:
                self._writing = False
                self._cond.notify_all()

    def _write(
        self,
        finishes: list[tuple[Finish, Future[None] | None]],
        begins: list[tuple[Intent, Future[set[int]]]],
    ) -> None:
        try:
            answers = record(
                self.ledger,
                self.job_key,
                [finish for finish, _ in finishes],
                [intent for intent, _ in begins],
            )
        except BaseException as exc:
            # Whatever it was (an outage past the ledger's retries, a bug), every
            # caller of this round learns it from its future.
            with self._cond:
                self.error = self.error or exc
                # Queued after this round: fail them now, as later calls will be.
                late_finishes, self._finishes = self._finishes, []
                late_begins, self._begins = self._begins, []
            for _, done in (*finishes, *late_finishes):
                if done is not None:
                    done.set_exception(exc)
            for _, begun in (*begins, *late_begins):
                begun.set_exception(exc)
            return
        for _, done in finishes:
            if done is not None:
                done.set_result(None)
        for (_, begun), answer in zip(begins, answers, strict=True):
            begun.set_result(answer)
