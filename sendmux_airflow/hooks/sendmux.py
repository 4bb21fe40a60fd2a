"""SendmuxHook: a ``sendmux`` connection turned into the core's clients.

The connection is read once into :class:`SendmuxSettings` (password = API key,
host = Sending API URL, extras for the rest); the hook makes and caches the
client, so operators stay thin and never see the key. No HTTP happens here:
the clients in ``sendmux_dispatch`` do all of it.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from airflow.sdk import BaseHook
from airflow.sdk.log import mask_secret

from sendmux_dispatch.client import (
    DEFAULT_MANAGEMENT_URL,
    DEFAULT_SENDING_URL,
    AsyncSendmuxClient,
    SendmuxClient,
)
from sendmux_dispatch.errors import SendmuxError
from sendmux_dispatch.models.api_limits import RATE_WINDOW_SECONDS, SENDING_REQUESTS_PER_WINDOW
from sendmux_dispatch.pacing import InProcessPacer, Pacer, RedisPacer, key_fingerprint
from sendmux_dispatch.retry import RetryPolicy

if TYPE_CHECKING:
    from airflow.sdk import Connection

__all__ = ["SendmuxConnectionError", "SendmuxHook", "SendmuxSettings"]

_DEFAULT_TIMEOUT = 30.0
_DEFAULT_ATTEMPTS = 6
_API_PATH = "api/v1"


class SendmuxConnectionError(ValueError):
    """The ``sendmux`` connection is incomplete or malformed (names the field to fix)."""


@dataclass(frozen=True)
class SendmuxSettings:
    """A ``sendmux`` connection, read and checked once. ``repr`` never shows the keys."""

    conn_id: str
    api_key: str = field(repr=False)
    sending_url: str = DEFAULT_SENDING_URL
    management_url: str = DEFAULT_MANAGEMENT_URL
    management_api_key: str | None = field(default=None, repr=False)
    from_email: str | None = None
    timeout: float = _DEFAULT_TIMEOUT
    max_attempts: int = _DEFAULT_ATTEMPTS
    pacer_url: str | None = field(default=None, repr=False)
    #: The key's request ceiling: the Sending API's 1,800 per 60 s unless the
    #: account has another (or a test scales the sandbox's down).
    rate_limit: int = SENDING_REQUESTS_PER_WINDOW
    rate_window: float = RATE_WINDOW_SECONDS
    ledger_url: str | None = field(default=None, repr=False)

    @classmethod
    def from_connection(cls, conn: Connection) -> SendmuxSettings:
        """Read ``conn``; a missing key or a bad extra raises :class:`SendmuxConnectionError`."""
        where = f"connection {conn.conn_id!r}"
        if not conn.password:
            raise SendmuxConnectionError(f"{where} has no API key: put it in the Password field")
        extra = conn.extra_dejson
        pacer_url = _text(extra, "pacer_url", where)
        rate_window = _number(extra, "rate_window", where, RATE_WINDOW_SECONDS)
        if pacer_url is not None and not rate_window.is_integer():
            # The Redis pacer's moving window counts whole seconds.
            raise SendmuxConnectionError(
                f"{where}: extra 'rate_window' must be a whole number of seconds with "
                f"pacer_url, got {extra.get('rate_window')!r}"
            )
        return cls(
            conn_id=conn.conn_id,
            api_key=conn.password,
            sending_url=_sending_url(conn),
            management_url=_text(extra, "management_url", where) or DEFAULT_MANAGEMENT_URL,
            management_api_key=_text(extra, "management_api_key", where),
            from_email=_text(extra, "from_email", where),
            timeout=_number(extra, "timeout", where, _DEFAULT_TIMEOUT),
            max_attempts=int(_number(extra, "max_attempts", where, _DEFAULT_ATTEMPTS, whole=True)),
            pacer_url=pacer_url,
            rate_limit=int(
                _number(extra, "rate_limit", where, SENDING_REQUESTS_PER_WINDOW, whole=True)
            ),
            rate_window=rate_window,
            ledger_url=_ledger_url(extra, where),
        )


def _sending_url(conn: Connection) -> str:
    host = (conn.host or "").strip().rstrip("/")
    if not host:
        return DEFAULT_SENDING_URL
    if "://" in host:
        # The JSON or UI form: the full base URL as written.
        return host
    # The URI form (sendmux://:key@smtp.sendmux.ai/api%2Fv1) splits the URL into host,
    # port and schema; put them back together, https unless given otherwise.
    port = f":{conn.port}" if conn.port else ""
    path = (conn.schema or _API_PATH).strip("/")
    return f"https://{host}{port}/{path}"


def _text(extra: dict[str, Any], name: str, where: str) -> str | None:
    value = extra.get(name)
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str):
        raise SendmuxConnectionError(f"{where}: extra {name!r} must be a string")
    return value.strip()


def _ledger_url(extra: dict[str, Any], where: str) -> str | None:
    # Checked here so a bad value fails when the connection is read, before any request.
    value = _text(extra, "ledger_url", where)
    if value is None:
        return None
    scheme = urlsplit(value).scheme.lower()
    if scheme in ("redis", "rediss") or (not scheme and Path(value).expanduser().is_absolute()):
        return value
    raise SendmuxConnectionError(
        f"{where}: extra 'ledger_url' must be a redis:// or rediss:// URL, or an absolute "
        "path to a SQLite file on the worker's local disk (e.g. /var/lib/sendmux/ledger.db)"
    )


def _number(
    extra: dict[str, Any], name: str, where: str, default: float, *, whole: bool = False
) -> float:
    value = extra.get(name)
    if value is None or value == "":
        return default
    kind = "a whole number" if whole else "a number"
    try:
        if isinstance(value, bool):
            raise TypeError
        number = float(value)
    except (TypeError, ValueError):
        raise SendmuxConnectionError(
            f"{where}: extra {name!r} must be {kind} greater than 0, got {value!r}"
        ) from None
    if not math.isfinite(number) or number <= 0 or (whole and not number.is_integer()):
        raise SendmuxConnectionError(
            f"{where}: extra {name!r} must be {kind} greater than 0, got {value!r}"
        )
    return number


def _masked(settings: SendmuxSettings) -> SendmuxSettings:
    # Registered before anything can log them: the task log then shows ***.
    for secret in (settings.api_key, settings.management_api_key):
        if secret:
            mask_secret(secret)
    for url in (settings.pacer_url, settings.ledger_url):
        if url and (password := urlsplit(url).password):
            mask_secret(password)
    return settings


class SendmuxHook(BaseHook):
    """Clients for a ``sendmux`` connection (``sendmux_default`` unless told otherwise).

    >>> hook = SendmuxHook()                                  # doctest: +SKIP
    >>> report = dispatch(hook.get_client(), template, recipients, job_key="...")

    :param sendmux_conn_id: the connection holding the API key (Password), the
        Sending API URL (Host) and the extras ``management_url``,
        ``management_api_key``, ``from_email``, ``timeout``, ``max_attempts``,
        ``pacer_url`` and ``ledger_url`` (the send ledger's store: see
        ``sendmux_airflow._ledger.ledger_for``).
    """

    conn_name_attr = "sendmux_conn_id"
    default_conn_name = "sendmux_default"
    conn_type = "sendmux"
    hook_name = "Sendmux"

    def __init__(self, sendmux_conn_id: str = default_conn_name) -> None:
        super().__init__()
        self.sendmux_conn_id = sendmux_conn_id
        self._settings: SendmuxSettings | None = None
        self._client: SendmuxClient | None = None
        self._pacer: Pacer | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(sendmux_conn_id={self.sendmux_conn_id!r})"

    @property
    def settings(self) -> SendmuxSettings:
        """The connection, read on first use; its secrets registered with Airflow's masker."""
        if self._settings is None:
            self._settings = _masked(
                SendmuxSettings.from_connection(self.get_connection(self.sendmux_conn_id))
            )
        return self._settings

    async def aget_settings(self) -> SendmuxSettings:
        """:attr:`settings` read with Airflow's async connection API (in a triggerer's loop)."""
        if self._settings is None:
            conn = await self.aget_connection(self.sendmux_conn_id)
            self._settings = _masked(SendmuxSettings.from_connection(conn))
        return self._settings

    def get_conn(self) -> SendmuxClient:
        """Airflow's generic name for :meth:`get_client`."""
        return self.get_client()

    def _client_options(self) -> dict[str, Any]:
        s = self.settings
        return {
            "sending_url": s.sending_url,
            "management_url": s.management_url,
            "management_api_key": s.management_api_key,
            "timeout": s.timeout,
            "retry": RetryPolicy(max_attempts=s.max_attempts),
            "pacer": self.get_pacer(),
            "user_agent_extra": "sendmux-airflow",
        }

    def get_pacer(self) -> Pacer:
        """This hook's pacer (one per hook, set on every client it makes).

        With ``pacer_url``, a :class:`RedisPacer`: every task and worker on
        this API key counts against one moving window in Redis (keyed by a
        fingerprint of the key, never the key). Without it, an
        :class:`InProcessPacer`: this task stays under the ceiling by itself
        (parallel tasks on one key each count only their own requests).
        Both at the connection's ``rate_limit`` per ``rate_window`` seconds.
        """
        s = self.settings
        with self._lock:
            if self._pacer is None:
                if s.pacer_url is not None:
                    self._pacer = RedisPacer(
                        s.pacer_url,
                        key_id=key_fingerprint(s.api_key),
                        limit=s.rate_limit,
                        window=s.rate_window,
                    )
                else:
                    self._pacer = InProcessPacer(limit=s.rate_limit, window=s.rate_window)
            return self._pacer

    def get_client(self) -> SendmuxClient:
        """The blocking client, made once per hook and shared (it is thread-safe)."""
        with self._lock:
            client = self._client
        if client is None:
            options = self._client_options()
            with self._lock:
                if self._client is None:
                    self._client = SendmuxClient(self.settings.api_key, **options)
                client = self._client
        return client

    def get_async_client(self) -> AsyncSendmuxClient:
        """A new asyncio client; the caller owns it (``async with hook.get_async_client()``)."""
        return AsyncSendmuxClient(self.settings.api_key, **self._client_options())

    def close(self) -> None:
        """Close the cached client's connection pool (a later ``get_client`` opens a new one)."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    def test_connection(self) -> tuple[bool, str]:
        """GET /me with the key: ``(True, label and permissions)`` or ``(False, why)``."""
        try:
            settings = self.settings
            me = self.get_client().me()
        except (SendmuxConnectionError, SendmuxError, ValueError) as exc:
            # The core's errors never hold the key; ours name the field to fix.
            return False, f"{type(exc).__name__}: {exc}"
        finally:
            self.close()
        permissions = ", ".join(sorted(me.permissions)) or "none"
        about = (
            f"key {me.label!r} of team {me.team.name!r} at {settings.sending_url}; "
            f"permissions: {permissions}"
        )
        if not me.has_permission("email.send"):
            return False, f"Connected, but the key cannot send email (no email.send): {about}"
        return True, f"Connected: {about}"
