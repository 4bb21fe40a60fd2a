"""Auth, the envelope, /me, the public OpenAPI document, balance, body limits."""

from __future__ import annotations

import re

import httpx
import pytest

from sendmux_sandbox import DEFAULT_API_KEY, SEND_ONLY_API_KEY, SandboxConfig, SandboxServer

HTTP = httpx.Client(timeout=30)
MESSAGE = {
    "from": {"email": "app@example.com", "name": "App"},
    "to": {"email": "ann@example.com"},
    "subject": "Hello",
    "html_body": "<p>Hello</p>",
}


def auth(key: str = DEFAULT_API_KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def assert_error(response: httpx.Response, status: int, code: str, retryable: bool) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["ok"] is False
    assert body["error"]["code"] == code
    assert body["error"]["retryable"] is retryable
    assert body["error"]["doc_url"].endswith("#" + code)
    assert response.headers["x-request-id"] == body["meta"]["request_id"]
    return body


def test_send_answers_in_the_envelope_with_a_matching_request_id(sendmux_sandbox):
    r = HTTP.post(sendmux_sandbox.sending_url + "/emails/send", json=MESSAGE, headers=auth())
    assert r.status_code == 200
    body = r.json()
    assert body["ok"] is True
    assert re.fullmatch(r"eml_[a-z0-9]{24}", body["data"]["message_id"])
    assert body["data"]["status"] == "queued"
    assert re.fullmatch(r"req_[a-z0-9]+", body["meta"]["request_id"])
    assert r.headers["x-request-id"] == body["meta"]["request_id"]
    assert r.headers["cache-control"] == "no-store"
    assert r.headers["content-type"] == "application/json"


def test_every_response_gets_its_own_request_id(sendmux_sandbox):
    ids = {
        HTTP.get(sendmux_sandbox.sending_url + "/me", headers=auth()).headers["x-request-id"]
        for _ in range(5)
    }
    assert len(ids) == 5


@pytest.mark.parametrize(
    ("api", "path"),
    [
        ("sending", "/emails/send"),
        ("sending", "/me"),
        ("management", "/emails/logs"),
        ("management", "/me"),
    ],
)
@pytest.mark.parametrize("header", [None, "Bearer smx_root_not_a_real_key", "Basic abc"])
def test_missing_or_unknown_keys_get_401(sendmux_sandbox, api, path, header):
    url = (
        sendmux_sandbox.sending_url if api == "sending" else sendmux_sandbox.management_url
    ) + path
    headers = {"Authorization": header} if header else {}
    method = "POST" if path == "/emails/send" else "GET"
    r = HTTP.request(method, url, json=MESSAGE if method == "POST" else None, headers=headers)
    assert_error(r, 401, "authentication_required", False)
    assert sendmux_sandbox.stats()["accepted_messages"] == 0


@pytest.mark.parametrize("path", ["/emails/logs", "/emails/metrics", "/billing/balance"])
def test_a_send_only_key_gets_403_on_management_reads(sendmux_sandbox, path):
    r = HTTP.get(sendmux_sandbox.management_url + path, headers=auth(SEND_ONLY_API_KEY))
    body = assert_error(r, 403, "insufficient_permissions", False)
    assert "permission" in body["error"]["message"]


def test_a_key_without_email_send_gets_403_on_send():
    config = SandboxConfig(keys={"smx_root_reader": frozenset({"logs.read"})})
    with SandboxServer(config) as sandbox:
        r = HTTP.post(
            sandbox.sending_url + "/emails/send", json=MESSAGE, headers=auth("smx_root_reader")
        )
        assert_error(r, 403, "insufficient_permissions", False)
        assert (
            HTTP.get(
                sandbox.management_url + "/emails/logs", headers=auth("smx_root_reader")
            ).status_code
            == 200
        )
        assert sandbox.stats()["accepted_messages"] == 0


@pytest.mark.parametrize(
    ("key", "permissions"),
    [
        (DEFAULT_API_KEY, ["analytics.read", "billing.read", "email.send", "logs.read"]),
        (SEND_ONLY_API_KEY, ["email.send"]),
    ],
)
def test_both_me_endpoints_describe_the_key(sendmux_sandbox, key, permissions):
    for url in (sendmux_sandbox.sending_url, sendmux_sandbox.management_url):
        r = HTTP.get(url + "/me", headers=auth(key))
        assert r.status_code == 200, r.text
        data = r.json()["data"]
        assert data["permissions"] == permissions
        assert data["credential"]["type"] == "api_key"
        assert data["team"]["name"]
        assert data["mailboxes"] == []
        assert r.headers["etag"].startswith('W/"')


def test_me_answers_304_to_its_own_etag(sendmux_sandbox):
    url = sendmux_sandbox.sending_url + "/me"
    etag = HTTP.get(url, headers=auth()).headers["etag"]
    r = HTTP.get(url, headers={**auth(), "If-None-Match": etag})
    assert r.status_code == 304
    assert r.content == b""
    other = HTTP.get(url, headers={**auth(SEND_ONLY_API_KEY), "If-None-Match": etag})
    assert other.status_code == 200


def test_openapi_document_is_public_and_cacheable(sendmux_sandbox):
    r = HTTP.get(sendmux_sandbox.sending_url + "/openapi.json")
    assert r.status_code == 200
    doc = r.json()
    assert doc["openapi"].startswith("3.1")
    assert {"/emails/send", "/emails/send/batch", "/me"} <= set(doc["paths"])
    assert doc["servers"][0]["url"] == sendmux_sandbox.sending_url
    assert r.headers["cache-control"] == "public, max-age=3600"
    again = HTTP.get(
        sendmux_sandbox.sending_url + "/openapi.json", headers={"If-None-Match": r.headers["etag"]}
    )
    assert again.status_code == 304


def test_balance_is_a_believable_usd_amount(sendmux_sandbox):
    r = HTTP.get(sendmux_sandbox.management_url + "/billing/balance", headers=auth())
    data = r.json()["data"]
    assert data["currency"] == "USD"
    for field in ("balance", "balance_purchased", "balance_consumed"):
        assert re.fullmatch(r"\d+\.\d{6}", data[field])
    assert float(data["balance_purchased"]) - float(data["balance_consumed"]) == pytest.approx(
        float(data["balance"])
    )


def test_send_status_can_follow_the_docs_201():
    with SandboxServer(SandboxConfig(send_status=201)) as sandbox:
        r = HTTP.post(sandbox.sending_url + "/emails/send", json=MESSAGE, headers=auth())
        assert r.status_code == 201
        assert r.json()["data"]["status"] == "queued"


def test_invalid_json_is_400_invalid_parameter(sendmux_sandbox):
    r = HTTP.post(
        sendmux_sandbox.sending_url + "/emails/send",
        content=b'{"from": ',
        headers={**auth(), "Content-Type": "application/json"},
    )
    assert_error(r, 400, "invalid_parameter", False)


def test_a_body_over_25_mb_is_413_and_nothing_is_sent(sendmux_sandbox):
    blob = "A" * (25 * 1024 * 1024)
    r = HTTP.post(
        sendmux_sandbox.sending_url + "/emails/send",
        json={**MESSAGE, "html_body": blob},
        headers=auth(),
        timeout=30,
    )
    assert_error(r, 413, "payload_too_large", False)
    assert sendmux_sandbox.stats()["accepted_messages"] == 0


def test_a_bad_idempotency_key_header_is_400(sendmux_sandbox):
    r = HTTP.post(
        sendmux_sandbox.sending_url + "/emails/send",
        json=MESSAGE,
        headers={**auth(), "Idempotency-Key": "k" * 256},
    )
    body = assert_error(r, 400, "invalid_parameter", False)
    assert body["error"]["param"] == "Idempotency-Key"


def test_unknown_paths_and_methods_answer_in_the_envelope(sendmux_sandbox):
    r = HTTP.get(sendmux_sandbox.sending_url + "/emails/nothing", headers=auth())
    assert_error(r, 404, "not_found", False)
    r = HTTP.get(sendmux_sandbox.sending_url + "/emails/send", headers=auth())
    assert r.status_code == 405
    assert r.json()["ok"] is False
