"""Reliability of whole jobs against a real sandbox on loopback.

Every test counts what the sandbox actually accepted, per recipient: the
promise under test is "every valid recipient gets the email exactly once",
through injected faults, re-runs, a killed sender, bad input, fatal
authentication errors and a shared rate limit.

Sizes are scaled so the file runs in a few minutes; ``SENDMUX_RELIABILITY_N``
overrides the size of the fault run (default 20,000). The full-size runs
live in ``benchmarks/bench_soak.py``.

This file is also the child program of the multi-process tests
(``python test_dispatch_reliability.py send-job ...`` / ``paced-sender ...``).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack
from typing import Any

import pytest

from sendmux_dispatch import (
    AsyncSendmuxClient,
    DispatchReport,
    RetryPolicy,
    SendmuxClient,
    adispatch,
    dispatch,
)
from sendmux_dispatch.models import Attachment, WireMessage, wire_message
from sendmux_dispatch.personalize import Personalizer
from sendmux_dispatch.recipients import Recipient
from sendmux_sandbox.config import FaultConfig, SandboxConfig
from sendmux_sandbox.server import SandboxServer

N = int(os.environ.get("SENDMUX_RELIABILITY_N", "20000"))

TEMPLATE: dict[str, Any] = {
    "from": {"email": "news@shop.example.com", "name": "Example Shop"},
    "subject": "Hello {{ name }}, your spring picks",
    "text_body": "Hello {{ name }}, your code is {{ code }}.",
}

#: 20 % of requests misbehave: 14 % fail before acceptance, 6 % after it.
CLIENT_TIMEOUT = 0.4
FAULTS = FaultConfig(
    error_503=0.05,
    error_500=0.05,
    error_429=0.04,
    retry_after=1,
    drop_after_accept=0.03,
    slow_after_accept=0.03,
    slow_seconds=CLIENT_TIMEOUT + 0.2,
    seed=20260522,
)
FAULT_KINDS = ("error_503", "error_500", "error_429", "drop_after_accept", "slow_after_accept")


def _short_sleep(seconds: float) -> None:
    time.sleep(min(seconds, 0.05))


async def _short_async_sleep(seconds: float) -> None:
    await asyncio.sleep(min(seconds, 0.05))


def quick_retries() -> RetryPolicy:
    """Short waits but many attempts and a generous deadline.

    The sandbox's 1 s Retry-After is within the policy (a longer one would
    stop the job), and the sleeps cut every wait to 50 ms.
    """
    return RetryPolicy(
        max_attempts=15,
        initial_delay=0.01,
        max_delay=0.05,
        max_retry_after=1.0,
        deadline=120.0,
        sleep=_short_sleep,
        async_sleep=_short_async_sleep,
    )


def people(n: int, prefix: str = "person") -> Iterator[dict[str, str]]:
    """``n`` distinct recipients with the variables TEMPLATE uses."""
    for i in range(n):
        yield {"email": f"{prefix}.{i}@mail{i % 13}.example.org", "name": f"P{i}", "code": f"C{i}"}


def email_of(i: int, prefix: str = "person") -> str:
    return f"{prefix}.{i}@mail{i % 13}.example.org"


@pytest.fixture
def start_sandbox() -> Iterator[Callable[..., SandboxServer]]:
    """Start a dedicated sandbox with the given SandboxConfig fields; stopped after the test."""
    with ExitStack() as stack:

        def start(**config: Any) -> SandboxServer:
            config.setdefault("delivery_delay", 0.0)
            config.setdefault("rate_limit", None)
            return stack.enter_context(SandboxServer(SandboxConfig(**config)))

        yield start


def client_for(sandbox: SandboxServer, **overrides: Any) -> SendmuxClient:
    options: dict[str, Any] = {
        "sending_url": sandbox.sending_url,
        "management_url": sandbox.management_url,
        "timeout": CLIENT_TIMEOUT,
        "retry": quick_retries(),
    }
    options.update(overrides)
    return SendmuxClient(options.pop("api_key", sandbox.api_key), **options)


def assert_each_delivered_once(sandbox: SandboxServer, n: int, prefix: str = "person") -> None:
    stats = sandbox.stats()
    assert stats["accepted_messages"] == n
    assert stats["unique_recipients"] == n
    assert stats["duplicate_deliveries"] == 0
    for i in {0, n - 1, *random.Random(n).sample(range(n), min(n, 25))}:
        assert len(sandbox.messages(to=email_of(i, prefix))) == 1, email_of(i, prefix)


def assert_requests_counted(report: DispatchReport, sandbox: SandboxServer) -> None:
    """The report counts every request the server saw, and no attempt it did not make.

    The server counts a request when its handler starts. An attempt the
    client gave up on (its 0.4 s timeout, on a loaded machine) may reach the
    handler only after the job returned, or never if the server saw the
    connection close first: so wait for the count to settle, and allow the
    report more attempts than the server saw only as many as were retried
    (each of those ended in a transport error, and a transport error is
    retried).
    """
    seen = sandbox.stats()["requests"]
    deadline = time.monotonic() + 2.0
    while seen < report.requests and time.monotonic() < deadline:
        time.sleep(0.05)
        seen = sandbox.stats()["requests"]
    assert seen <= report.requests <= seen + report.retries, (report.requests, seen)
    assert report.retries == report.requests - report.batches


# --- 1. faults ----------------------------------------------------------------


@pytest.mark.slow
def test_every_recipient_gets_exactly_one_email_despite_injected_faults(
    start_sandbox: Callable[..., SandboxServer],
) -> None:
    sandbox = start_sandbox(faults=FAULTS)
    with client_for(sandbox) as client:
        report = dispatch(client, TEMPLATE, people(N), job_key="faults-sync", concurrency=8)

    assert report.ok, report.summary_line()
    assert (report.total, report.queued) == (N, N)
    assert_each_delivered_once(sandbox, N)
    stats = sandbox.stats()
    assert report.queued == stats["accepted_messages"]
    assert_requests_counted(report, sandbox)
    assert report.rate_limited == stats["faults_by_kind"].get("error_429", 0)
    for kind in FAULT_KINDS:
        assert stats["faults_by_kind"].get(kind, 0) > 0, f"{kind} never fired: {stats}"


@pytest.mark.slow
async def test_async_dispatch_delivers_exactly_once_despite_injected_faults(
    start_sandbox: Callable[..., SandboxServer],
) -> None:
    n = max(N // 4, 1000)
    sandbox = start_sandbox(faults=FAULTS)
    client = AsyncSendmuxClient(
        sandbox.api_key,
        sending_url=sandbox.sending_url,
        management_url=sandbox.management_url,
        timeout=CLIENT_TIMEOUT,
        retry=quick_retries(),
    )
    try:
        report = await adispatch(client, TEMPLATE, people(n), job_key="faults-async", concurrency=8)
    finally:
        await client.aclose()

    assert report.ok, report.summary_line()
    assert report.queued == n
    assert_each_delivered_once(sandbox, n)
    assert_requests_counted(report, sandbox)
    stats = sandbox.stats()
    for kind in FAULT_KINDS:
        assert stats["faults_by_kind"].get(kind, 0) > 0, f"{kind} never fired: {stats}"


# --- 2. re-running a finished job ----------------------------------------------


def test_rerunning_a_finished_job_sends_nothing_new(
    start_sandbox: Callable[..., SandboxServer],
) -> None:
    n = 2000
    sandbox = start_sandbox()
    with client_for(sandbox) as client:
        first = dispatch(client, TEMPLATE, people(n), job_key="rerun-job")
        after_first = sandbox.stats()
        again = dispatch(client, TEMPLATE, people(n), job_key="rerun-job")
    after_again = sandbox.stats()

    assert first.queued == n
    assert after_again["accepted_messages"] == after_first["accepted_messages"] == n
    assert after_again["idempotent_replays"] - after_first["idempotent_replays"] == again.batches
    # The replayed answers report the messages as queued: the same ones, not new ones.
    assert again.ok
    assert again.queued == n
    assert_each_delivered_once(sandbox, n)


def test_rerunning_a_finished_job_with_an_edited_template_sends_nothing_new(
    start_sandbox: Callable[..., SandboxServer],
) -> None:
    n = 1000
    sandbox = start_sandbox()
    edited = {**TEMPLATE, "subject": "Edited: hello {{ name }}"}
    with client_for(sandbox) as client:
        dispatch(client, TEMPLATE, people(n), job_key="edited-job")
        again = dispatch(client, edited, people(n), job_key="edited-job")

    assert again.already_accepted == n
    assert again.queued == again.failed == 0
    assert_each_delivered_once(sandbox, n)
    assert all(m["subject"].startswith("Hello") for m in sandbox.messages(limit=n))


# --- 3. re-running after the sender was killed ---------------------------------


def test_rerun_after_a_killed_sender_completes_the_job_without_duplicates(
    start_sandbox: Callable[..., SandboxServer],
) -> None:
    n = 4000
    sandbox = start_sandbox(faults=FaultConfig(latency=0.05))
    child = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "send-job",
            sandbox.sending_url,
            sandbox.api_key,
            "killed",
            str(n),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while sandbox.stats()["accepted_messages"] < n // 2:
            assert child.poll() is None, child.stderr.read().decode() if child.stderr else ""
            assert time.monotonic() < deadline, "the child sender made no progress"
            time.sleep(0.01)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    accepted_at_kill = sandbox.stats()["accepted_messages"]
    assert child.returncode == -signal.SIGKILL
    assert 0 < accepted_at_kill < n, "the sender was not interrupted half-way"

    sandbox.set_faults()
    with client_for(sandbox) as client:
        report = dispatch(client, TEMPLATE, people(n), job_key="killed", concurrency=4)

    assert report.ok, report.summary_line()
    assert report.queued == n
    assert_each_delivered_once(sandbox, n)
    assert sandbox.stats()["idempotent_replays"] >= accepted_at_kill // 100


# --- 4. bad input ---------------------------------------------------------------


def test_bad_recipients_are_reported_by_position_and_the_rest_sent_once(
    start_sandbox: Callable[..., SandboxServer],
) -> None:
    n = 5000
    rows: list[dict[str, Any]] = list(people(n))
    too_big = Attachment.from_bytes(b"\0" * (20 * 1024 * 1024), "huge.bin")
    bad: dict[int, tuple[dict[str, Any], str]] = {
        10: ({"email": "not-an-address", "code": "x"}, "invalid_email"),
        1000: ({"email": "ann@nodot", "code": "x"}, "invalid_email"),
        2000: (
            {"email": "eve@example.org", "name": "Eve\r\nBcc: x@evil.test", "code": "x"},
            "line_break",
        ),
        3000: ({"email": "nocode@example.org", "name": "No Code"}, "undefined_variable"),
        4000: ({"email": "big@example.org", "code": "x", "attachments": [too_big]}, "too_large"),
        4200: ({"name": "Nobody"}, "missing_email"),
    }
    for position, (row, _code) in bad.items():
        rows[position] = row
    rows[4500] = {**rows[0], "email": rows[0]["email"].upper()}  # a duplicate, dropped
    sandbox = start_sandbox()
    with client_for(sandbox, timeout=30.0) as client:
        report = dispatch(client, TEMPLATE, rows, job_key="bad-input", max_failures=50)

    reported = {f.position: f for f in report.failures}
    assert set(reported) == set(bad)
    for position, (row, code) in bad.items():
        assert reported[position].code == code, reported[position]
        assert reported[position].email == row.get("email")
        assert reported[position].message
    assert "text_body" in reported[3000].message
    assert "code" in reported[3000].message
    assert report.invalid == len(bad)
    assert report.duplicates_dropped == 1
    good = n - len(bad) - 1
    assert report.queued == good
    assert report.failed == 0
    stats = sandbox.stats()
    assert stats["accepted_messages"] == stats["unique_recipients"] == good
    assert stats["duplicate_deliveries"] == 0
    assert len(sandbox.messages(to=rows[0]["email"])) == 1
    for row, _code in bad.values():
        if "email" in row and "@" in row["email"]:
            assert sandbox.messages(to=row["email"]) == []


# --- 5. fatal key errors ------------------------------------------------------------


def test_unknown_api_key_stops_the_job_before_anything_is_delivered(
    start_sandbox: Callable[..., SandboxServer],
) -> None:
    n, concurrency = 3000, 2
    sandbox = start_sandbox()
    with client_for(sandbox, api_key="smx_unknown_key_000000000000") as client:
        report = dispatch(client, TEMPLATE, people(n), job_key="bad-key", concurrency=concurrency)

    assert report.not_sent == n
    assert report.queued == 0
    assert report.stopped_reason is not None
    assert "AuthenticationError" in report.stopped_reason
    stats = sandbox.stats()
    assert stats["accepted_messages"] == 0
    # Stopped: at most the batches already in flight met the 401.
    assert stats["requests"] <= concurrency


def test_key_without_send_permission_stops_the_job_before_anything_is_delivered(
    start_sandbox: Callable[..., SandboxServer],
) -> None:
    n, concurrency = 3000, 2
    read_only = "smx_readonly_sandbox_0000000000"
    sandbox = start_sandbox(keys={read_only: frozenset({"logs.read", "analytics.read"})})
    with client_for(sandbox, api_key=read_only) as client:
        report = dispatch(client, TEMPLATE, people(n), job_key="no-perm", concurrency=concurrency)

    assert report.not_sent == n
    assert report.queued == 0
    assert report.stopped_reason is not None
    assert "PermissionDeniedError" in report.stopped_reason
    assert report.failures
    assert report.failures[0].code == "insufficient_permissions"
    stats = sandbox.stats()
    assert stats["accepted_messages"] == 0
    assert stats["requests"] <= concurrency


# --- 6. a partially failed batch ---------------------------------------------------


class _CcFromVariables(Personalizer):
    """TEMPLATE plus a per-recipient cc list of ``cc_count`` addresses (not a template field)."""

    def render_wire(
        self, recipient: Recipient, *, idempotency_key: str | None = None
    ) -> WireMessage:
        message = super().render_wire(recipient, idempotency_key=idempotency_key)
        count = int(recipient.variables.get("cc_count", 0))
        if not count:
            return message
        cc = [f"cc{k}.{recipient.position}@team.example.net" for k in range(count)]
        return wire_message({**message, "cc": cc})


def test_messages_the_server_refuses_are_reported_per_recipient_while_the_rest_are_queued(
    start_sandbox: Callable[..., SandboxServer],
) -> None:
    n = 1000
    # The client allows the docs' 100 cc; the sandbox enforces the spec's 49.
    refused = {5, 150, 151, 777}
    rows = [{**row, "cc_count": 50 if i in refused else 0} for i, row in enumerate(people(n))]
    sandbox = start_sandbox()
    with client_for(sandbox, timeout=30.0) as client:
        report = dispatch(client, _CcFromVariables(TEMPLATE), rows, job_key="partial")

    assert report.queued == n - len(refused)
    assert report.failed == len(refused)
    assert {f.position for f in report.failures} == refused
    assert all(f.code == "validation_error" for f in report.failures)
    stats = sandbox.stats()
    assert stats["accepted_messages"] == n - len(refused)
    assert stats["requests"] == report.batches  # refusals are final: nothing re-sent
    assert all(sandbox.messages(to=email_of(i)) == [] for i in refused)
    assert len(sandbox.messages(to=email_of(4))) == 1


def test_items_refused_with_a_retryable_error_are_resent_alone_until_accepted(
    start_sandbox: Callable[..., SandboxServer],
) -> None:
    n = 2000
    sandbox = start_sandbox()
    sandbox.set_faults(item_error=0.25, seed=5)
    slept: list[float] = []
    retry = RetryPolicy(initial_delay=0.01, max_delay=0.05, sleep=slept.append)
    with client_for(sandbox, retry=retry) as client:
        report = dispatch(client, TEMPLATE, people(n), job_key="items", max_resends=8)

    stats = sandbox.stats()
    refused = stats["faults_by_kind"]["item_error"]
    assert refused > n * 0.25  # resends were refused too: several rounds ran
    # 0.25 ** 9: nobody should be refused nine times in a row; if someone is,
    # they must be reported as failed and not delivered.
    assert report.queued + report.failed == n
    assert report.queued == stats["accepted_messages"] == stats["unique_recipients"]
    assert stats["duplicate_deliveries"] == 0
    assert all(f.code == "service_unavailable" for f in report.failures)
    for failure in report.failures:
        assert failure.email is not None
        assert sandbox.messages(to=failure.email) == []
    assert report.failed <= 2
    # A resend is one request per partly refused batch and round, waited
    # for with the client's policy (here: recorded, not slept).
    assert report.requests == stats["requests"] > report.batches
    assert len(slept) == report.requests - report.batches


# --- 7. the shared limiter ------------------------------------------------------------

PACED_LIMIT, PACED_WINDOW, PACED_HEADROOM, PACED_SECONDS = 20, 1, 0.1, 4.0


@pytest.mark.redis
@pytest.mark.slow
def test_two_processes_sharing_a_redis_pacer_stay_under_the_rate_limit(
    start_sandbox: Callable[..., SandboxServer], redis_url: str
) -> None:
    sandbox = start_sandbox(rate_limit=PACED_LIMIT, rate_window=float(PACED_WINDOW))
    key_id = f"reliability-{uuid.uuid4().hex[:12]}"
    start_at = time.time() + 3.0  # both children import and connect first
    children = [
        subprocess.Popen(
            [
                sys.executable,
                __file__,
                "paced-sender",
                sandbox.sending_url,
                sandbox.api_key,
                redis_url,
                key_id,
                f"w{worker}",
                repr(start_at),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for worker in range(2)
    ]
    sent = []
    for child in children:
        out, err = child.communicate(timeout=60)
        assert child.returncode == 0, err.decode()
        sent.append(json.loads(out)["sent"])
    stats = sandbox.stats()

    assert stats["rate_limited"] == 0
    assert all(count > 0 for count in sent), sent  # both processes really sent
    assert stats["requests"] == sum(sent)
    ratio = stats["requests"] / PACED_SECONDS / (PACED_LIMIT / PACED_WINDOW)
    # Ceiling is 18 of 20 (10 % headroom): about 0.9 of the limit over the run.
    assert 0.75 <= ratio <= 1.0, f"combined rate was {ratio:.2f} of the limit ({sent})"


# --- the child programs ---------------------------------------------------------------


def _child_send_job(url: str, api_key: str, job_key: str, n: str) -> None:
    with SendmuxClient(api_key, sending_url=url, timeout=30.0, retry=quick_retries()) as client:
        report = dispatch(client, TEMPLATE, people(int(n)), job_key=job_key, concurrency=1)
    print(json.dumps(report.as_dict()))


def _child_paced_sender(
    url: str, api_key: str, redis_url: str, key_id: str, worker: str, start_at: str
) -> None:
    from sendmux_dispatch.pacing import RedisPacer

    pacer = RedisPacer(
        redis_url, key_id=key_id, limit=PACED_LIMIT, window=PACED_WINDOW, headroom=PACED_HEADROOM
    )
    client = SendmuxClient(api_key, sending_url=url, timeout=10.0, pacer=pacer)
    begin = float(start_at)
    end = begin + PACED_SECONDS
    counts = [0] * 4
    time.sleep(max(0.0, begin - time.time()))

    def run(thread: int) -> None:
        while True:
            if time.time() >= end:
                return
            message: Mapping[str, Any] = {
                "from": "news@shop.example.com",
                "to": f"{worker}.{thread}.{counts[thread]}@example.org",
                "subject": "paced",
                "text_body": "paced",
            }
            # acquire() inside send may wait past the end: check again after.
            client.send(message)
            counts[thread] += 1
            if time.time() >= end:
                return

    threads = [threading.Thread(target=run, args=(t,)) for t in range(len(counts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    client.close()
    pacer.close()
    print(json.dumps({"sent": sum(counts)}))


if __name__ == "__main__":
    command, *arguments = sys.argv[1:]
    if command == "send-job":
        _child_send_job(*arguments)
    elif command == "paced-sender":
        _child_paced_sender(*arguments)
    else:
        raise SystemExit(f"unknown command {command!r}")
