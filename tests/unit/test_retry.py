"""RetryPolicy: which errors are retried, how long to wait, and when to stop."""

from __future__ import annotations

import contextlib
import doctest
from typing import Any

import pytest
import tenacity

import sendmux_dispatch.retry
from sendmux_dispatch.errors import (
    AuthenticationError,
    BadRequestError,
    FieldIssue,
    IdempotencyConflictError,
    InsufficientCreditsError,
    InvalidMessageError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    SendmuxTimeoutError,
    ServerError,
    ServiceUnavailableError,
    TransportError,
    ValidationError,
    error_from_response,
)
from sendmux_dispatch.retry import RetryPolicy

POLICY = RetryPolicy(jitter=0.0)


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (ServerError("boom", status=500), True),
        (ServerError("html page", status=502), True),
        (ServiceUnavailableError("busy", status=503), True),
        (RateLimitError("slow down", status=429), True),
        (TransportError("dropped"), True),
        (SendmuxTimeoutError("timed out"), True),
        (IdempotencyConflictError("in flight", status=409, retryable=True), True),
        (IdempotencyConflictError("other body", status=409), False),
        (ServerError("server says no", status=500, retryable=False), False),
        (InvalidMessageError([FieldIssue("to", "invalid", "bad")]), False),
        (BadRequestError("bad", status=400), False),
        (NotFoundError("gone", status=404), False),
        # Never, whatever the body claims: the same request fails the same way.
        (AuthenticationError("who", status=401, retryable=True), False),
        (InsufficientCreditsError("pay", status=402, retryable=True), False),
        (PermissionDeniedError("no", status=403, retryable=True), False),
        (ValidationError("invalid", status=422, retryable=True), False),
        (ValueError("not ours"), False),
        (KeyboardInterrupt(), False),
    ],
)
def test_should_retry(error: BaseException, expected: bool) -> None:
    assert POLICY.should_retry(error) is expected


@pytest.mark.parametrize(
    ("attempt", "expected"), [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (7, 30.0), (100, 30.0)]
)
def test_backoff_doubles_up_to_max_delay(attempt: int, expected: float) -> None:
    assert POLICY.next_delay(attempt) == expected


def test_huge_attempt_numbers_do_not_overflow() -> None:
    assert RetryPolicy(jitter=0.0, multiplier=10.0).next_delay(10_000) == 30.0


@pytest.mark.parametrize(
    ("retry_after", "expected"), [(2.0, 2.0), (0.0, 0.0), (119.0, 119.0), (500.0, 120.0)]
)
def test_retry_after_wins_capped_by_max_retry_after(retry_after: float, expected: float) -> None:
    error = RateLimitError("slow down", status=429, retry_after=retry_after)
    assert RetryPolicy().next_delay(5, error) == expected


def test_retry_after_from_a_parsed_response() -> None:
    error = error_from_response(503, b"", retry_after=7.0)
    assert RetryPolicy().next_delay(1, error) == 7.0


def test_jitter_takes_off_at_most_its_fraction() -> None:
    policy = RetryPolicy(initial_delay=10.0, jitter=0.5, max_delay=100.0)
    delays = [policy.next_delay(1) for _ in range(500)]
    assert all(5.0 <= delay <= 10.0 for delay in delays)
    assert len(set(delays)) > 1


@pytest.mark.parametrize(
    "options",
    [
        {"max_attempts": 0},
        {"initial_delay": -1.0},
        {"max_delay": float("inf")},
        {"multiplier": 0.5},
        {"jitter": 1.5},
        {"deadline": 0.0},
        {"deadline": 24 * 3600.0},
        {"deadline": 30 * 3600.0},
    ],
)
def test_invalid_settings_are_refused(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=next(iter(options))):
        RetryPolicy(**options)


def test_deadline_just_under_the_idempotency_window_is_allowed() -> None:
    assert RetryPolicy(deadline=23 * 3600.0).deadline == 23 * 3600.0


def test_none_makes_one_attempt() -> None:
    assert RetryPolicy.none().max_attempts == 1


def test_arguments_are_keyword_only() -> None:
    with pytest.raises(TypeError):
        RetryPolicy(3)  # type: ignore[misc]


def _run(policy: RetryPolicy, errors: list[BaseException]) -> tuple[int, list[float]]:
    calls = 0
    slept: list[float] = []

    def attempt() -> str:
        nonlocal calls
        calls += 1
        if errors:
            raise errors.pop(0)
        return "ok"

    with contextlib.suppress(Exception):
        policy.retrying(before_sleep=lambda delay, error: slept.append(delay))(attempt)
    return calls, slept


def test_tenacity_stops_after_max_attempts_and_reraises_our_error() -> None:
    policy = RetryPolicy(max_attempts=3, jitter=0.0, sleep=lambda _: None)
    error = ServerError("boom", status=500)
    with pytest.raises(ServerError) as caught:
        policy.retrying()(lambda: (_ for _ in ()).throw(error))
    assert caught.value is error  # not tenacity.RetryError
    calls, slept = _run(policy, [ServerError("x", status=500)] * 5)
    assert calls == 3
    assert slept == [0.5, 1.0]


def test_tenacity_stops_before_a_wait_that_would_pass_the_deadline() -> None:
    policy = RetryPolicy(deadline=5.0, sleep=lambda _: None)
    calls, slept = _run(policy, [ServiceUnavailableError("busy", status=503, retry_after=10.0)])
    assert calls == 1
    assert slept == []


def test_non_retryable_errors_are_not_retried() -> None:
    policy = RetryPolicy(sleep=lambda _: None)
    calls, _ = _run(policy, [AuthenticationError("who", status=401), ServerError("x")])
    assert calls == 1


def test_success_after_retries_returns_the_value() -> None:
    policy = RetryPolicy(jitter=0.0, sleep=lambda _: None)
    errors: list[BaseException] = [TransportError("dropped"), TransportError("dropped")]

    def attempt() -> str:
        if errors:
            raise errors.pop(0)
        return "ok"

    assert policy.retrying()(attempt) == "ok"


async def test_async_retrying_uses_async_sleep() -> None:
    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)

    policy = RetryPolicy(jitter=0.0, async_sleep=fake_sleep)
    errors: list[BaseException] = [RateLimitError("slow", status=429, retry_after=3.0)]

    async def attempt() -> str:
        if errors:
            raise errors.pop(0)
        return "ok"

    retrying = policy.async_retrying()
    assert isinstance(retrying, tenacity.AsyncRetrying)
    assert await retrying(attempt) == "ok"
    assert slept == [3.0]


def test_the_docstring_example_runs() -> None:
    result = doctest.testmod(sendmux_dispatch.retry)
    assert result.attempted >= 1
    assert result.failed == 0


def test_before_sleep_is_told_the_delay_and_the_error() -> None:
    seen: list[tuple[float, BaseException | None]] = []
    error = RateLimitError("slow", status=429, retry_after=1.5)
    errors: list[BaseException] = [error]

    def attempt() -> str:
        if errors:
            raise errors.pop(0)
        return "ok"

    policy = RetryPolicy(sleep=lambda _: None)
    assert policy.retrying(before_sleep=lambda d, e: seen.append((d, e)))(attempt) == "ok"
    assert seen == [(1.5, error)]


@pytest.mark.parametrize("retry_after", [-5.0, float("nan"), float("inf")])
def test_a_negative_or_unusable_retry_after_counts_as_absent(retry_after: float) -> None:
    error = ServiceUnavailableError("busy", status=503, retry_after=retry_after)
    assert POLICY.next_delay(3, error) == POLICY.next_delay(3)
    assert POLICY.should_retry(error)
    assert not POLICY.waits_too_long(error)


def test_a_retry_after_beyond_the_policy_is_not_retried_and_says_when() -> None:
    error = RateLimitError("Slow down.", status=429, code="rate_limit_exceeded", retry_after=3600)
    assert POLICY.waits_too_long(error)
    assert not POLICY.should_retry(error)
    assert not POLICY.waits_too_long(RateLimitError("x", status=429, retry_after=120.0))
    later = POLICY.too_long_error(error, now=1_800_000_000.0)
    assert type(later) is RateLimitError
    assert (later.status, later.code, later.retry_after) == (429, "rate_limit_exceeded", 3600)
    assert "retry in 3600 s (at 2027-01-15T09:00:00Z)" in later.message
    assert "max_retry_after of 120 s" in later.message
