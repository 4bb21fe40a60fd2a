"""Pacers: keep one Sendmux API key under its request ceiling.

The Sending API allows 1,800 requests per 60 s per key and answers 429 past
it. A pacer hands out one slot per HTTP attempt; when none is free the caller
sleeps (``acquire``) or awaits (``aacquire``) until one frees up.

* :mod:`~sendmux_dispatch.pacing._protocol`: :class:`Pacer`, what the clients
  call, and :class:`RateLimitState`, what they learn from each response.
* :mod:`~sendmux_dispatch.pacing._algorithm`: the moving window, headroom,
  waiting and resynchronising, shared by both backends (the why is there).
* :mod:`~sendmux_dispatch.pacing._memory`: :class:`InProcessPacer`, counted
  in memory, shared by every thread and coroutine of one process.
* :mod:`~sendmux_dispatch.pacing._redis`: :class:`RedisPacer`, counted in
  Redis, shared by every process and worker that uses the same ``key_id``
  (Celery workers, Airflow tasks on several hosts), and :func:`key_fingerprint`.
"""

from sendmux_dispatch.pacing._memory import InProcessPacer
from sendmux_dispatch.pacing._protocol import Pacer, RateLimitState
from sendmux_dispatch.pacing._redis import RedisPacer, key_fingerprint

__all__ = ["InProcessPacer", "Pacer", "RateLimitState", "RedisPacer", "key_fingerprint"]
