"""Idempotency-Key replay and conflicts, and per-message idempotency_key in batches."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from sendmux_sandbox import DEFAULT_API_KEY, SEND_ONLY_API_KEY, SandboxConfig, SandboxServer

HTTP = httpx.Client(timeout=30)
AUTH = {"Authorization": f"Bearer {DEFAULT_API_KEY}"}


def message(to: str = "ann@example.com", subject: str = "Hello", **extra) -> dict:
    return {
        "from": {"email": "app@example.com"},
        "to": {"email": to},
        "subject": subject,
        "html_body": "<p>Hi</p>",
        **extra,
    }


def post(sandbox, path, body, key=None, api_key=DEFAULT_API_KEY) -> httpx.Response:
    headers = {"Authorization": f"Bearer {api_key}"}
    if key is not None:
        headers["Idempotency-Key"] = key
    return HTTP.post(sandbox.sending_url + path, json=body, headers=headers)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/emails/send", message()),
        ("/emails/send/batch", {"messages": [message(), message("bob@example.com")]}),
    ],
)
def test_a_replay_returns_the_original_response_without_sending_again(sendmux_sandbox, path, body):
    first = post(sendmux_sandbox, path, body, key="run-001")
    second = post(sendmux_sandbox, path, body, key="run-001")
    assert first.status_code == second.status_code == 200
    assert second.content == first.content
    assert second.headers["idempotent-replayed"] == "true"
    assert second.headers["x-request-id"] == second.json()["meta"]["request_id"]
    stats = sendmux_sandbox.stats()
    assert stats["accepted_messages"] == len(body.get("messages", [body]))
    assert stats["idempotent_replays"] == 1
    assert stats["duplicate_deliveries"] == 0


def test_without_a_key_the_same_body_is_delivered_twice(sendmux_sandbox):
    post(sendmux_sandbox, "/emails/send", message())
    post(sendmux_sandbox, "/emails/send", message())
    stats = sendmux_sandbox.stats()
    assert stats["accepted_messages"] == 2
    assert stats["duplicate_deliveries"] == 1


def test_a_key_reused_with_another_body_is_a_409(sendmux_sandbox):
    post(sendmux_sandbox, "/emails/send", message(), key="run-002")
    r = post(sendmux_sandbox, "/emails/send", message(subject="Changed"), key="run-002")
    assert r.status_code == 409
    error = r.json()["error"]
    assert error["code"] == "idempotency_conflict"
    assert error["retryable"] is False
    other_path = post(
        sendmux_sandbox, "/emails/send/batch", {"messages": [message()]}, key="run-002"
    )
    assert other_path.status_code == 409
    assert sendmux_sandbox.stats()["accepted_messages"] == 1


def test_keys_are_scoped_per_api_key(sendmux_sandbox):
    a = post(sendmux_sandbox, "/emails/send", message(), key="shared")
    b = post(sendmux_sandbox, "/emails/send", message(), key="shared", api_key=SEND_ONLY_API_KEY)
    assert a.json()["data"]["message_id"] != b.json()["data"]["message_id"]
    assert sendmux_sandbox.stats()["accepted_messages"] == 2


def test_a_replay_while_the_first_request_is_in_flight_is_a_retryable_409(sendmux_sandbox):
    sendmux_sandbox.set_faults(latency=0.6)
    results: dict[str, httpx.Response] = {}
    first = threading.Thread(
        target=lambda: results.setdefault(
            "first", post(sendmux_sandbox, "/emails/send", message(), key="slow")
        )
    )
    first.start()
    time.sleep(0.25)
    second = post(sendmux_sandbox, "/emails/send", message(), key="slow")
    first.join()
    assert second.status_code == 409
    assert second.json()["error"]["code"] == "idempotency_conflict"
    assert second.json()["error"]["retryable"] is True
    assert results["first"].status_code == 200
    sendmux_sandbox.set_faults()
    third = post(sendmux_sandbox, "/emails/send", message(), key="slow")
    assert third.content == results["first"].content
    assert sendmux_sandbox.stats()["accepted_messages"] == 1


def test_records_expire_after_the_ttl():
    with SandboxServer(SandboxConfig(idempotency_ttl=0.3)) as sandbox:
        first = post(sandbox, "/emails/send", message(), key="short-lived")
        assert post(sandbox, "/emails/send", message(), key="short-lived").content == first.content
        time.sleep(0.4)
        later = post(sandbox, "/emails/send", message(), key="short-lived")
        assert later.json()["data"]["message_id"] != first.json()["data"]["message_id"]
        assert sandbox.stats()["accepted_messages"] == 2


def test_a_rejected_request_does_not_claim_its_key(sendmux_sandbox):
    invalid = post(sendmux_sandbox, "/emails/send", message(to="broken"), key="fix-me")
    assert invalid.status_code == 422
    fixed = post(sendmux_sandbox, "/emails/send", message(), key="fix-me")
    assert fixed.status_code == 200
    assert sendmux_sandbox.stats()["accepted_messages"] == 1


def test_per_message_keys_deliver_each_message_once_across_batches(sendmux_sandbox):
    one = message("ann@example.com", idempotency_key="msg-ann")
    two = message("bob@example.com", idempotency_key="msg-bob")
    three = message("cat@example.com", idempotency_key="msg-cat")
    first = post(sendmux_sandbox, "/emails/send/batch", {"messages": [one, two]}).json()["data"]
    again = post(sendmux_sandbox, "/emails/send/batch", {"messages": [two, three]}).json()["data"]
    assert again["summary"] == {"total": 2, "queued": 2, "failed": 0}
    assert again["results"][0]["message_id"] == first["results"][1]["message_id"]
    assert again["results"][1]["message_id"] not in {r["message_id"] for r in first["results"]}
    stats = sendmux_sandbox.stats()
    assert stats["accepted_messages"] == 3
    assert stats["duplicate_deliveries"] == 0
    assert [m["idempotency_key"] for m in sendmux_sandbox.messages(to="bob@example.com")] == [
        "msg-bob"
    ]


def test_a_per_message_key_with_another_body_fails_that_item(sendmux_sandbox):
    post(sendmux_sandbox, "/emails/send/batch", {"messages": [message(idempotency_key="msg-1")]})
    changed = message(subject="Other", idempotency_key="msg-1")
    data = post(
        sendmux_sandbox, "/emails/send/batch", {"messages": [changed, message("bob@example.com")]}
    ).json()["data"]
    assert data["summary"] == {"total": 2, "queued": 1, "failed": 1}
    failed = data["results"][0]
    assert failed["message_id"] is None
    assert failed["error"]["code"] == "idempotency_conflict"
    assert failed["error"]["retryable"] is False
    assert sendmux_sandbox.stats()["accepted_messages"] == 2


def test_the_same_per_message_key_twice_in_one_batch_delivers_once(sendmux_sandbox):
    same = message(idempotency_key="dup")
    data = post(sendmux_sandbox, "/emails/send/batch", {"messages": [same, same]}).json()["data"]
    assert data["results"][0]["message_id"] == data["results"][1]["message_id"]
    assert sendmux_sandbox.stats()["accepted_messages"] == 1


def test_a_per_message_key_on_a_single_send(sendmux_sandbox):
    first = post(sendmux_sandbox, "/emails/send", message(idempotency_key="single"))
    again = post(sendmux_sandbox, "/emails/send", message(idempotency_key="single"))
    assert again.json()["data"]["message_id"] == first.json()["data"]["message_id"]
    conflict = post(sendmux_sandbox, "/emails/send", message(subject="x", idempotency_key="single"))
    assert conflict.status_code == 409
    assert conflict.json()["error"]["code"] == "idempotency_conflict"
    assert sendmux_sandbox.stats()["accepted_messages"] == 1
