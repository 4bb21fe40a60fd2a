"""The admin API (stats, messages, faults, reset) and each injected fault."""

from __future__ import annotations

import time

import httpx
import pytest

from sendmux_sandbox import DEFAULT_API_KEY, FaultConfig, SandboxConfig, SandboxServer

HTTP = httpx.Client(timeout=30)
AUTH = {"Authorization": f"Bearer {DEFAULT_API_KEY}"}


def message(to: str = "ann@example.com", subject: str = "Hello") -> dict:
    return {
        "from": {"email": "app@example.com"},
        "to": {"email": to},
        "subject": subject,
        "html_body": "<p>Hi</p>",
    }


def send(sandbox, body=None, key=None, timeout=30.0, path="/emails/send") -> httpx.Response:
    headers = {**AUTH, **({"Idempotency-Key": key} if key else {})}
    return HTTP.post(
        sandbox.sending_url + path, json=body or message(), headers=headers, timeout=timeout
    )


def test_stats_count_recipients_and_duplicate_deliveries(sendmux_sandbox):
    send(sendmux_sandbox, message("Ann@Example.com"))
    send(sendmux_sandbox, message("ann@example.com"))
    send(sendmux_sandbox, message("ann@example.com", subject="Other"))
    send(sendmux_sandbox, message("bob@example.com"))
    stats = sendmux_sandbox.stats()
    assert stats["requests"] == 4
    assert stats["accepted_messages"] == 4
    assert stats["unique_recipients"] == 2
    assert stats["duplicate_deliveries"] == 1
    assert stats["rate_limited"] == 0
    assert stats["faults_injected"] == 0
    assert sum(stats["by_status"].values()) == 4


def test_messages_lists_what_a_recipient_received(sendmux_sandbox):
    first = send(sendmux_sandbox, message("ann@example.com"), key="k-1").json()["data"][
        "message_id"
    ]
    send(sendmux_sandbox, message("bob@example.com"))
    [stored] = sendmux_sandbox.messages(to="ANN@example.com")
    assert stored["id"] == first
    assert stored["to"] == "ann@example.com"
    assert stored["subject"] == "Hello"
    assert stored["idempotency_key"] == "k-1"
    assert stored["status"] in ("pending", "sent")
    assert stored["created_at"].endswith("Z")
    assert len(sendmux_sandbox.messages()) == 2
    assert sendmux_sandbox.messages(to="nobody@example.com") == []


def test_messages_show_the_rarer_fields_only_when_sent(sendmux_sandbox):
    full = {
        **message("ann@example.com"),
        "cc": [{"email": "cc@example.com"}],
        "bcc": [{"email": "bcc@example.com"}],
        "reply_to": {"email": "help@example.com"},
        "return_path": "bounces@example.com",
        "delivery_group": "dgrp_spring",
        "attachments": [{"filename": "sales.csv", "content": "YSxi"}],
    }
    assert send(sendmux_sandbox, full).status_code == 200
    send(sendmux_sandbox, message("bob@example.com"))
    [stored] = sendmux_sandbox.messages(to="ann@example.com")
    assert stored["cc"] == ["cc@example.com"]
    assert stored["bcc"] == ["bcc@example.com"]
    assert stored["reply_to"] == "help@example.com"
    assert stored["return_path"] == "bounces@example.com"
    assert stored["delivery_group"] == ["dgrp_spring"]
    assert stored["attachments"] == ["sales.csv"]
    [plain] = sendmux_sandbox.messages(to="bob@example.com")
    assert not {"cc", "bcc", "reply_to", "return_path", "attachments"} & set(plain)


def test_reset_forgets_messages_keys_counters_and_windows():
    with SandboxServer(SandboxConfig(rate_limit=1, rate_window=60.0)) as sandbox:
        first = send(sandbox, key="k").json()["data"]["message_id"]
        assert send(sandbox).status_code == 429
        sandbox.reset()
        assert sandbox.stats()["accepted_messages"] == 0
        assert sandbox.stats()["requests"] == 0
        again = send(sandbox, key="k")
        assert again.status_code == 200
        assert again.json()["data"]["message_id"] != first
        assert len(sandbox.messages()) == 1


def test_set_faults_replaces_the_active_config_and_rejects_nonsense(sendmux_sandbox):
    active = sendmux_sandbox.set_faults(error_503=0.5, seed=3)
    assert active == FaultConfig(error_503=0.5, seed=3)
    assert sendmux_sandbox.set_faults(latency=0.1) == FaultConfig(latency=0.1)
    for bad in ({"error_503": 2}, {"unknown": 1}, {"error_503": 0.7, "error_500": 0.7}):
        with pytest.raises(httpx.HTTPStatusError) as info:
            sendmux_sandbox.set_faults(**bad)
        assert info.value.response.status_code == 400
    assert (
        HTTP.get(sendmux_sandbox.base_url + "/_sandbox/faults").json()["faults"]["latency"] == 0.1
    )


@pytest.mark.parametrize(
    ("fault", "status", "code", "retry_after"),
    [
        ("error_503", 503, "service_unavailable", "4"),
        ("error_500", 500, "internal_error", None),
        ("error_429", 429, "rate_limit_exceeded", "4"),
    ],
)
@pytest.mark.parametrize("path", ["/emails/send", "/emails/send/batch"])
def test_error_faults_answer_before_anything_is_accepted(
    sendmux_sandbox, fault, status, code, retry_after, path
):
    sendmux_sandbox.set_faults(**{fault: 1.0}, retry_after=4)
    body = {"messages": [message()]} if path.endswith("batch") else message()
    r = send(sendmux_sandbox, body, key="k", path=path)
    assert r.status_code == status
    assert r.json()["error"]["code"] == code
    assert r.json()["error"]["retryable"] is True
    assert r.headers.get("retry-after") == retry_after
    stats = sendmux_sandbox.stats()
    assert stats["accepted_messages"] == 0
    assert stats["faults_injected"] == 1
    assert stats["faults_by_kind"] == {fault: 1}
    sendmux_sandbox.set_faults()
    assert send(sendmux_sandbox, body, key="k", path=path).status_code == 200


def test_latency_delays_each_send(sendmux_sandbox):
    sendmux_sandbox.set_faults(latency=0.3)
    started = time.perf_counter()
    assert send(sendmux_sandbox).status_code == 200
    assert time.perf_counter() - started >= 0.3


def test_reset_waits_for_a_send_that_is_still_on_its_way_in(sendmux_sandbox):
    # The client gives up during the fault's latency; the server stores the
    # message afterwards. A reset must not let it land in the fresh state.
    sendmux_sandbox.set_faults(latency=0.8)
    with pytest.raises(httpx.ReadTimeout):
        send(sendmux_sandbox, timeout=0.2)
    started = time.perf_counter()
    sendmux_sandbox.reset()
    assert time.perf_counter() - started >= 0.4  # it waited for the request to finish
    time.sleep(0.3)
    assert sendmux_sandbox.stats()["accepted_messages"] == 0


def test_reset_does_not_wait_for_a_response_that_is_slow_after_acceptance(sendmux_sandbox):
    sendmux_sandbox.set_faults(slow_after_accept=1.0, slow_seconds=5.0)
    with pytest.raises(httpx.ReadTimeout):
        send(sendmux_sandbox, timeout=0.3)
    started = time.perf_counter()
    sendmux_sandbox.reset()
    assert time.perf_counter() - started < 2.0  # nothing left to store, nothing to wait for
    assert sendmux_sandbox.stats()["accepted_messages"] == 0


def test_a_dropped_connection_after_acceptance_is_healed_by_the_idempotency_key(sendmux_sandbox):
    sendmux_sandbox.set_faults(drop_after_accept=1.0)
    with pytest.raises(httpx.TransportError):
        send(sendmux_sandbox, key="drop-1")
    assert sendmux_sandbox.stats()["accepted_messages"] == 1
    sendmux_sandbox.set_faults()
    retry = send(sendmux_sandbox, key="drop-1")
    assert retry.status_code == 200
    [stored] = sendmux_sandbox.messages(to="ann@example.com")
    assert retry.json()["data"]["message_id"] == stored["id"]
    stats = sendmux_sandbox.stats()
    assert stats["accepted_messages"] == 1
    assert stats["faults_by_kind"] == {"drop_after_accept": 1}


def test_a_slow_response_after_acceptance_times_the_client_out(sendmux_sandbox):
    sendmux_sandbox.set_faults(slow_after_accept=1.0, slow_seconds=1.5)
    with pytest.raises(httpx.ReadTimeout):
        send(
            sendmux_sandbox,
            {"messages": [message()]},
            key="slow-1",
            timeout=0.3,
            path="/emails/send/batch",
        )
    assert sendmux_sandbox.stats()["accepted_messages"] == 1
    sendmux_sandbox.set_faults()
    retry = send(
        sendmux_sandbox, {"messages": [message()]}, key="slow-1", path="/emails/send/batch"
    )
    assert retry.json()["data"]["summary"]["queued"] == 1
    assert sendmux_sandbox.stats()["accepted_messages"] == 1


def test_a_seed_makes_the_faults_reproducible(sendmux_sandbox):
    def run() -> list[int]:
        sendmux_sandbox.set_faults(error_503=0.5, seed=42)
        return [send(sendmux_sandbox).status_code for _ in range(12)]

    first, second = run(), run()
    assert first == second
    assert set(first) == {200, 503}


def test_reset_restores_the_faults_the_server_started_with():
    with SandboxServer(SandboxConfig(faults=FaultConfig(error_500=1.0))) as sandbox:
        assert send(sandbox).status_code == 500
        sandbox.set_faults()
        assert send(sandbox).status_code == 200
        sandbox.reset()
        assert send(sandbox).status_code == 500
