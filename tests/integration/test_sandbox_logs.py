"""Delivery lifecycle, address rules, logs with filters and cursors, ETags, metrics."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import httpx
import pytest

from sendmux_sandbox import DEFAULT_API_KEY, SandboxConfig, SandboxServer

HTTP = httpx.Client(timeout=30, headers={"Authorization": f"Bearer {DEFAULT_API_KEY}"})
DELAY = 0.3


@pytest.fixture(scope="module")
def server():
    with SandboxServer(SandboxConfig(delivery_delay=DELAY)) as sandbox:
        yield sandbox


@pytest.fixture
def sandbox(server):
    server.reset()
    return server


def send(sandbox, to: str, subject: str = "Hello", **extra) -> str:
    body = {
        "from": {"email": "app@example.com"},
        "to": {"email": to},
        "subject": subject,
        "html_body": "<p>Hi</p>",
        **extra,
    }
    r = HTTP.post(sandbox.sending_url + "/emails/send", json=body)
    assert r.status_code == 200, r.text
    return r.json()["data"]["message_id"]


def logs(sandbox, **params) -> httpx.Response:
    return HTTP.get(sandbox.management_url + "/emails/logs", params=params)


def log_for(sandbox, message_id: str) -> dict:
    [item] = logs(sandbox, search=message_id).json()["data"]
    assert item["message_id"] == message_id
    return item


def test_messages_are_pending_then_reach_the_status_their_address_asks_for(sandbox):
    ids = {
        "sent": send(sandbox, "ann@example.com"),
        "failed": send(sandbox, "bob+fail@example.com"),
        "rejected": send(sandbox, "cat+reject@example.com"),
    }
    for message_id in ids.values():
        item = log_for(sandbox, message_id)
        assert item["status"] == "pending"
        assert item["sent_at"] is None
        assert item["id"].startswith("dlog_")
    time.sleep(DELAY + 0.05)
    for status, message_id in ids.items():
        item = log_for(sandbox, message_id)
        assert item["status"] == status
        assert (item["status_reason"] is None) == (status == "sent")
        assert (item["sent_at"] is not None) == (status == "sent")
    assert sandbox.stats()["by_status"] == {"pending": 0, "sent": 1, "failed": 1, "rejected": 1}


def test_logs_page_newest_first_with_a_cursor(sandbox):
    sent = [send(sandbox, f"user{i}@example.com") for i in range(7)]
    seen: list[str] = []
    pages = []
    cursor = None
    while True:
        params = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        body = logs(sandbox, **params).json()
        pages.append(len(body["data"]))
        seen.extend(item["message_id"] for item in body["data"])
        if not body["pagination"]["has_more"]:
            assert "next_cursor" not in body["pagination"]
            break
        cursor = body["pagination"]["next_cursor"]
        assert cursor == body["data"][-1]["id"]
    assert pages == [3, 3, 1]
    assert seen == list(reversed(sent))


def test_logs_default_to_25_per_page(sandbox):
    HTTP.post(
        sandbox.sending_url + "/emails/send/batch",
        json={
            "messages": [
                {
                    "from": {"email": "a@example.com"},
                    "to": {"email": f"u{i}@example.com"},
                    "subject": "s",
                    "html_body": "h",
                }
                for i in range(30)
            ]
        },
    )
    body = logs(sandbox).json()
    assert len(body["data"]) == 25
    assert body["pagination"]["has_more"] is True


def test_logs_filter_by_status_search_dates_and_provider(sandbox):
    ok = send(sandbox, "ann@example.com", subject="Quarterly report")
    bad = send(sandbox, "bob+fail@example.com", subject="Invoice")
    time.sleep(DELAY + 0.05)
    assert [i["message_id"] for i in logs(sandbox, status="failed").json()["data"]] == [bad]
    assert [i["message_id"] for i in logs(sandbox, status="sent").json()["data"]] == [ok]
    assert logs(sandbox, status="pending").json()["data"] == []
    assert [i["message_id"] for i in logs(sandbox, search="QUARTERLY").json()["data"]] == [ok]
    assert [i["message_id"] for i in logs(sandbox, search="bob+fail").json()["data"]] == [bad]
    assert len(logs(sandbox, search="app@example.com").json()["data"]) == 2
    today = datetime.now(timezone.utc).date()
    assert (
        len(logs(sandbox, from_date=today.isoformat(), to_date=today.isoformat()).json()["data"])
        == 2
    )
    assert logs(sandbox, from_date=(today + timedelta(days=1)).isoformat()).json()["data"] == []
    assert logs(sandbox, to_date="2020-01-01T00:00:00Z").json()["data"] == []
    provider = logs(sandbox).json()["data"][0]["provider_id"]
    assert len(logs(sandbox, provider_id=provider).json()["data"]) == 2
    assert logs(sandbox, provider_id="prov_other").json()["data"] == []


@pytest.mark.parametrize(
    ("param", "value"),
    [
        ("status", "delivered"),
        ("limit", "0"),
        ("limit", "101"),
        ("from_date", "yesterday"),
        ("cursor", "dlog_nope"),
    ],
)
def test_bad_log_queries_are_400(sandbox, param, value):
    r = logs(sandbox, **{param: value})
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "invalid_parameter"
    assert r.json()["error"]["param"] == param


def test_one_log_has_recipients_and_a_weak_etag_that_changes_with_status(sandbox):
    message_id = send(
        sandbox,
        "ann@example.com",
        cc=[{"email": "cc@example.com"}],
        bcc=[{"email": "bcc@example.com"}],
    )
    log_id = log_for(sandbox, message_id)["id"]
    url = sandbox.management_url + "/emails/logs/" + log_id
    pending = HTTP.get(url)
    assert pending.json()["data"]["recipients"] is None
    etag = pending.headers["etag"]
    assert etag.startswith('W/"')
    unchanged = HTTP.get(url, headers={"If-None-Match": etag})
    assert unchanged.status_code == 304
    assert unchanged.content == b""
    assert unchanged.headers["etag"] == etag
    time.sleep(DELAY + 0.05)
    changed = HTTP.get(url, headers={"If-None-Match": etag})
    assert changed.status_code == 200
    assert changed.headers["etag"] != etag
    data = changed.json()["data"]
    assert data["status"] == "sent"
    assert data["recipient_count"] == 3
    assert [(r["email"], r["type"], r["status"]) for r in data["recipients"]] == [
        ("ann@example.com", "to", "accepted"),
        ("cc@example.com", "cc", "accepted"),
        ("bcc@example.com", "bcc", "accepted"),
    ]
    assert HTTP.get(url, headers={"If-None-Match": changed.headers["etag"]}).status_code == 304


def test_an_unknown_log_is_404(sandbox):
    r = HTTP.get(sandbox.management_url + "/emails/logs/dlog_doesnotexist")
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "not_found"


def test_metrics_count_the_logs_by_status(sandbox):
    send(sandbox, "ann@example.com")
    send(sandbox, "bob@example.com")
    send(sandbox, "cat+reject@example.com")
    send(sandbox, "dan+fail@example.com")
    time.sleep(DELAY + 0.05)
    send(sandbox, "eve@example.com")
    data = HTTP.get(sandbox.management_url + "/emails/metrics").json()["data"]
    assert data["summary"] == {"total": 5, "sent": 2, "failed": 1, "rejected": 1, "pending": 1}
    assert data["comparison"]["total"] == 0
    assert data["comparison"]["change_pct"]["total"] == 100.0
    assert sum(point["total"] for point in data["timeseries"]) == 5
    hourly = HTTP.get(
        sandbox.management_url + "/emails/metrics", params={"granularity": "hourly"}
    ).json()["data"]
    assert len(hourly["timeseries"]) in (24, 25)
    weekly = HTTP.get(sandbox.management_url + "/emails/metrics", params={"window": "7d"}).json()[
        "data"
    ]
    assert len(weekly["timeseries"]) in (7, 8)
    assert weekly["summary"]["total"] == 5
    bad = HTTP.get(sandbox.management_url + "/emails/metrics", params={"window": "1y"})
    assert bad.status_code == 400
