"""Validation as the vendor spec states it, with every problem accumulated in errors[]."""

from __future__ import annotations

import base64
import copy

import httpx
import pytest

from sendmux_sandbox import DEFAULT_API_KEY

HTTP = httpx.Client(timeout=30)
AUTH = {"Authorization": f"Bearer {DEFAULT_API_KEY}"}
VALID = {
    "from": {"email": "app@example.com", "name": "App"},
    "to": {"email": "ann@example.com", "name": "Ann"},
    "subject": "Hello",
    "html_body": "<p>Hello</p>",
}
CONTENT = base64.b64encode(b"report,1\n").decode()


def addresses(n: int, prefix: str) -> list[dict[str, str]]:
    return [{"email": f"{prefix}{i}@example.com"} for i in range(n)]


def send(sandbox, message) -> httpx.Response:
    return HTTP.post(sandbox.sending_url + "/emails/send", json=message, headers=AUTH)


def issues(response: httpx.Response) -> set[tuple[str, str]]:
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "validation_error"
    assert error["retryable"] is False
    assert error["param"] == error["errors"][0]["field"]
    return {(item["field"], item["code"]) for item in error["errors"]}


def test_all_problems_are_reported_at_once(sendmux_sandbox):
    message = {
        "from": {"email": "app@example.com", "name": "Bad\nName"},
        "to": {"email": "not-an-address"},
        "subject": "Line\r\nbreak",
        "cc": addresses(50, "cc"),
        "nickname": "x",
    }
    found = issues(send(sendmux_sandbox, message))
    assert found == {
        ("html_body", "invalid_type"),
        ("from.name", "invalid_string"),
        ("to.email", "invalid_string"),
        ("subject", "invalid_string"),
        ("cc", "too_big"),
        ("nickname", "unrecognized_keys"),
    }
    assert sendmux_sandbox.stats()["accepted_messages"] == 0


@pytest.mark.parametrize(
    ("change", "field", "code"),
    [
        ({"from": None}, "from", "invalid_type"),
        ({"to": None}, "to", "invalid_type"),
        ({"subject": None}, "subject", "invalid_type"),
        ({"to": "ann@example.com"}, "to", "invalid_type"),
        ({"to": {"name": "Ann"}}, "to.email", "invalid_type"),
        ({"to": {"email": "a" * 243 + "@example.com"}}, "to.email", "too_big"),
        ({"to": {"email": "ann@localhost"}}, "to.email", "invalid_string"),
        ({"to": {"email": "ann@example.com", "extra": 1}}, "to.extra", "unrecognized_keys"),
        ({"from": {"email": "app@example.com", "name": "n" * 101}}, "from.name", "too_big"),
        ({"subject": ""}, "subject", "too_small"),
        ({"subject": "s" * 999}, "subject", "too_big"),
        ({"html_body": ""}, "html_body", "too_small"),
        ({"text_body": 5}, "text_body", "invalid_type"),
        ({"reply_to": {"email": "nope"}}, "reply_to.email", "invalid_string"),
        ({"return_path": "nope"}, "return_path", "invalid_string"),
        ({"cc": addresses(50, "c")}, "cc", "too_big"),
        ({"bcc": addresses(50, "b")}, "bcc", "too_big"),
        ({"cc": addresses(25, "c"), "bcc": addresses(25, "b")}, "bcc", "too_big"),
        ({"cc": [{"email": "bad"}]}, "cc.0.email", "invalid_string"),
        ({"custom_headers": {"X-Big": "v" * 501}}, "custom_headers.X-Big", "too_big"),
        (
            {"custom_headers": {"X-Inject": "a\r\nBcc: x@example.com"}},
            "custom_headers.X-Inject",
            "invalid_string",
        ),
        ({"custom_headers": {"Subject": "x"}}, "custom_headers.Subject", "invalid_string"),
        (
            {"attachments": [{"filename": "a.csv", "content": CONTENT}] * 11},
            "attachments",
            "too_big",
        ),
        ({"attachments": [{"filename": "a.csv"}]}, "attachments.0.content", "invalid_type"),
        (
            {"attachments": [{"filename": "a.csv", "content": ""}]},
            "attachments.0.content",
            "too_small",
        ),
        (
            {"attachments": [{"filename": "a.csv", "content": "not base64!"}]},
            "attachments.0.content",
            "invalid_string",
        ),
        (
            {"attachments": [{"filename": "f" * 256, "content": CONTENT}]},
            "attachments.0.filename",
            "too_big",
        ),
        (
            {"attachments": [{"filename": "a.csv", "content": CONTENT, "encoding": "hex"}]},
            "attachments.0.encoding",
            "invalid_enum_value",
        ),
        (
            {"attachments": [{"attachment_id": "att_123"}]},
            "attachments.0.attachment_id",
            "invalid_string",
        ),
        ({"delivery_group": "group-1"}, "delivery_group", "invalid_string"),
        ({"delivery_group": []}, "delivery_group", "too_small"),
        ({"idempotency_key": "has spaces"}, "idempotency_key", "invalid_string"),
        ({"idempotency_key": "k" * 256}, "idempotency_key", "invalid_string"),
    ],
)
def test_each_rule_names_the_field_and_the_problem(sendmux_sandbox, change, field, code):
    message = copy.deepcopy(VALID)
    for key, value in change.items():
        if value is None:
            del message[key]
        else:
            message[key] = value
    assert issues(send(sendmux_sandbox, message)) == {(field, code)}


def test_a_message_using_every_option_within_the_limits_is_accepted(sendmux_sandbox):
    message = {
        **VALID,
        "text_body": "Hello",
        "reply_to": {"email": "help@example.com"},
        "return_path": "bounces@example.com",
        "cc": addresses(24, "c"),
        "bcc": addresses(25, "b"),
        "custom_headers": {"X-Campaign": "spring"},
        "attachments": [
            {
                "filename": "report.csv",
                "content": CONTENT,
                "type": "text/csv",
                "encoding": "base64",
            },
            {"attachment_id": "att_" + "a1" * 12},
        ],
        "delivery_group": ["dgrp_transactional"],
        "idempotency_key": "order-42_a",
        "subject": "s" * 998,
    }
    r = send(sendmux_sandbox, message)
    assert r.status_code == 200, r.text
    assert sendmux_sandbox.stats()["accepted_messages"] == 1


def test_a_batch_succeeds_partially_with_per_index_results(sendmux_sandbox):
    bad = {**VALID, "to": {"email": "broken"}}
    r = HTTP.post(
        sendmux_sandbox.sending_url + "/emails/send/batch",
        json={"messages": [VALID, bad, {**VALID, "to": {"email": "bob@example.com"}}]},
        headers=AUTH,
    )
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert data["summary"] == {"total": 3, "queued": 2, "failed": 1}
    assert [item["index"] for item in data["results"]] == [0, 1, 2]
    assert [item["status"] for item in data["results"]] == ["queued", "failed", "queued"]
    failed = data["results"][1]
    assert failed["message_id"] is None
    assert failed["error"]["code"] == "validation_error"
    assert failed["error"]["retryable"] is False
    assert failed["error"]["param"] == "to.email"
    assert failed["error"]["errors"][0]["field"] == "to.email"
    assert "error" not in data["results"][0]
    assert data["results"][0]["message_id"] != data["results"][2]["message_id"]
    assert sendmux_sandbox.stats()["accepted_messages"] == 2


def test_item_faults_refuse_single_messages_retryably_and_replay_the_same(sendmux_sandbox):
    sendmux_sandbox.set_faults(item_error=0.5, seed=11)
    batch = {"messages": [{**VALID, "to": {"email": f"p{i}@example.com"}} for i in range(40)]}
    headers = {**AUTH, "Idempotency-Key": "item-faults"}
    url = sendmux_sandbox.sending_url + "/emails/send/batch"
    r = HTTP.post(url, json=batch, headers=headers)
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    failed = [item for item in data["results"] if item["status"] == "failed"]
    assert 0 < len(failed) < 40
    assert {(i["error"]["code"], i["error"]["retryable"]) for i in failed} == {
        ("service_unavailable", True)
    }
    stats = sendmux_sandbox.stats()
    assert stats["accepted_messages"] == data["summary"]["queued"] == 40 - len(failed)
    assert stats["faults_by_kind"] == {"item_error": len(failed)}
    for item in failed:
        assert sendmux_sandbox.messages(to=f"p{item['index']}@example.com") == []
    # The stored answer is replayed, failures included, as the API does.
    again = HTTP.post(
        sendmux_sandbox.sending_url + "/emails/send/batch", json=batch, headers=headers
    )
    assert again.json()["data"] == data
    assert sendmux_sandbox.stats()["accepted_messages"] == 40 - len(failed)


def test_a_batch_where_every_message_is_invalid_is_422(sendmux_sandbox):
    r = HTTP.post(
        sendmux_sandbox.sending_url + "/emails/send/batch",
        json={"messages": [{**VALID, "subject": ""}, {**VALID, "to": {"email": "x"}}]},
        headers=AUTH,
    )
    assert issues(r) == {
        ("messages.0.subject", "too_small"),
        ("messages.1.to.email", "invalid_string"),
    }
    assert sendmux_sandbox.stats()["accepted_messages"] == 0


@pytest.mark.parametrize(
    ("body", "field", "code"),
    [
        ({"messages": [VALID] * 101}, "messages", "too_big"),
        ({"messages": []}, "messages", "too_small"),
        ({}, "messages", "invalid_type"),
        ({"messages": VALID}, "messages", "invalid_type"),
        ({"messages": [VALID], "dry_run": True}, "dry_run", "unrecognized_keys"),
    ],
)
def test_a_malformed_batch_is_422(sendmux_sandbox, body, field, code):
    r = HTTP.post(sendmux_sandbox.sending_url + "/emails/send/batch", json=body, headers=AUTH)
    assert (field, code) in issues(r)
    assert sendmux_sandbox.stats()["accepted_messages"] == 0


def test_a_full_batch_of_100_is_accepted(sendmux_sandbox):
    messages = [{**VALID, "to": {"email": f"user{i}@example.com"}} for i in range(100)]
    r = HTTP.post(
        sendmux_sandbox.sending_url + "/emails/send/batch",
        json={"messages": messages},
        headers=AUTH,
    )
    assert r.json()["data"]["summary"] == {"total": 100, "queued": 100, "failed": 0}
    assert len({item["message_id"] for item in r.json()["data"]["results"]}) == 100
    stats = sendmux_sandbox.stats()
    assert stats["accepted_messages"] == 100
    assert stats["unique_recipients"] == 100
