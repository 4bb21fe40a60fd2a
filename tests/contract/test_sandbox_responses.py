"""Every sandbox response body validates against the vendor spec's schema for it.

The schema is looked up the way a generated client would: by path, method
and status code in the spec's ``paths``. A status the spec does not list for
an operation fails the test, except 500 (the spec's send operations list no
500, yet every error has the same ``ErrorResponse`` shape; see the fallback).
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from specs import load_spec, schema_validator

from sendmux_sandbox import DEFAULT_API_KEY, SEND_ONLY_API_KEY, SandboxConfig, SandboxServer

DELAY = 0.2
ROOT = {"Authorization": f"Bearer {DEFAULT_API_KEY}"}
SEND_ONLY = {"Authorization": f"Bearer {SEND_ONLY_API_KEY}"}
#: The error schema of each spec, for statuses an operation does not list.
FALLBACK = {"sending": "#/components/schemas/ErrorResponse", "app": "#/components/schemas/ApiError"}


def message(to: str = "ann@example.com", **extra: Any) -> dict[str, Any]:
    return {
        "from": {"email": "app@example.com", "name": "App"},
        "to": {"email": to},
        "subject": "Hello",
        "html_body": "<p>Hi</p>",
        **extra,
    }


class Sandbox:
    def __init__(self, server: SandboxServer) -> None:
        self.server = server
        self.http = httpx.Client(timeout=30)

    def send(
        self, body: Any, headers: dict[str, str] = ROOT, batch: bool = False, **kw: Any
    ) -> httpx.Response:
        path = "/emails/send/batch" if batch else "/emails/send"
        return self.http.post(self.server.sending_url + path, json=body, headers=headers, **kw)

    def sending(self, path: str, headers: dict[str, str] = ROOT) -> httpx.Response:
        return self.http.get(self.server.sending_url + path, headers=headers)

    def management(
        self, path: str, headers: dict[str, str] = ROOT, **params: Any
    ) -> httpx.Response:
        return self.http.get(self.server.management_url + path, headers=headers, params=params)

    def log_id(self) -> str:
        message_id = self.send(message(cc=[{"email": "cc@example.com"}])).json()["data"][
            "message_id"
        ]
        return self.management("/emails/logs", search=message_id).json()["data"][0]["id"]


#: name -> (spec, path in the spec, method, expected status, request)
Scenario = tuple[str, str, str, int, Callable[[Sandbox], httpx.Response]]


def _delivered_log(s: Sandbox, to: str) -> httpx.Response:
    s.send(message(to, bcc=[{"email": "bcc@example.com"}], delivery_group="dgrp_main"))
    time.sleep(DELAY + 0.05)
    log_id = s.management("/emails/logs").json()["data"][0]["id"]
    return s.management(f"/emails/logs/{log_id}")


SCENARIOS: dict[str, Scenario] = {
    "send 200": ("sending", "/emails/send", "post", 200, lambda s: s.send(message())),
    "send 400 bad json": (
        "sending",
        "/emails/send",
        "post",
        400,
        lambda s: s.http.post(s.server.sending_url + "/emails/send", content=b"{", headers=ROOT),
    ),
    "send 401": ("sending", "/emails/send", "post", 401, lambda s: s.send(message(), headers={})),
    "send 403": (
        "sending",
        "/emails/send",
        "post",
        403,
        lambda s: s.http.post(
            s.server.sending_url + "/emails/send",
            json=message(),
            headers={"Authorization": "Bearer smx_root_reader"},
        ),
    ),
    "send 409 conflict": (
        "sending",
        "/emails/send",
        "post",
        409,
        lambda s: (
            s.send(message(), headers={**ROOT, "Idempotency-Key": "c"}),
            s.send(message(subject="x"), headers={**ROOT, "Idempotency-Key": "c"}),
        )[1],
    ),
    "send 413": (
        "sending",
        "/emails/send",
        "post",
        413,
        lambda s: s.send(message(html_body="x" * (25 * 1024 * 1024))),
    ),
    "send 422": (
        "sending",
        "/emails/send",
        "post",
        422,
        lambda s: s.send(
            {"to": {"email": "x"}, "subject": "a\nb", "cc": [{"email": "y"}] * 50, "z": 1}
        ),
    ),
    "send 503": (
        "sending",
        "/emails/send",
        "post",
        503,
        lambda s: _with_fault(s, "error_503", message()),
    ),
    "send 500": (
        "sending",
        "/emails/send",
        "post",
        500,
        lambda s: _with_fault(s, "error_500", message()),
    ),
    "send 429": (
        "sending",
        "/emails/send",
        "post",
        429,
        lambda s: _with_fault(s, "error_429", message()),
    ),
    "batch 200 partial": (
        "sending",
        "/emails/send/batch",
        "post",
        200,
        lambda s: s.send(
            {
                "messages": [
                    message(),
                    message("broken"),
                    message(
                        attachments=[
                            {"filename": "a.txt", "content": base64.b64encode(b"a").decode()}
                        ]
                    ),
                ]
            },
            batch=True,
        ),
    ),
    "batch 200 item conflict": (
        "sending",
        "/emails/send/batch",
        "post",
        200,
        lambda s: (
            s.send({"messages": [message(idempotency_key="m1")]}, batch=True),
            s.send(
                {"messages": [message(subject="x", idempotency_key="m1"), message()]}, batch=True
            ),
        )[1],
    ),
    "batch 422 all invalid": (
        "sending",
        "/emails/send/batch",
        "post",
        422,
        lambda s: s.send({"messages": [message("x"), {"nope": True}]}, batch=True),
    ),
    "batch 422 too many": (
        "sending",
        "/emails/send/batch",
        "post",
        422,
        lambda s: s.send({"messages": [message()] * 101}, batch=True),
    ),
    "sending me 200": ("sending", "/me", "get", 200, lambda s: s.sending("/me", SEND_ONLY)),
    "sending me 401": ("sending", "/me", "get", 401, lambda s: s.sending("/me", {})),
    "openapi 200": (
        "sending",
        "/openapi.json",
        "get",
        200,
        lambda s: s.sending("/openapi.json", {}),
    ),
    "logs 200 pending": (
        "app",
        "/emails/logs",
        "get",
        200,
        lambda s: (s.log_id(), s.management("/emails/logs"))[1],
    ),
    "logs 200 page": (
        "app",
        "/emails/logs",
        "get",
        200,
        lambda s: (
            s.send({"messages": [message()] * 3}, batch=True),
            s.management("/emails/logs", limit=2),
        )[1],
    ),
    "logs 401": ("app", "/emails/logs", "get", 401, lambda s: s.management("/emails/logs", {})),
    "logs 403": (
        "app",
        "/emails/logs",
        "get",
        403,
        lambda s: s.management("/emails/logs", SEND_ONLY),
    ),
    "log 200 pending": (
        "app",
        "/emails/logs/{public_id}",
        "get",
        200,
        lambda s: s.management(f"/emails/logs/{s.log_id()}"),
    ),
    "log 200 sent": (
        "app",
        "/emails/logs/{public_id}",
        "get",
        200,
        lambda s: _delivered_log(s, "ann@example.com"),
    ),
    "log 200 failed": (
        "app",
        "/emails/logs/{public_id}",
        "get",
        200,
        lambda s: _delivered_log(s, "bob+fail@example.com"),
    ),
    "log 200 rejected": (
        "app",
        "/emails/logs/{public_id}",
        "get",
        200,
        lambda s: _delivered_log(s, "cat+reject@example.com"),
    ),
    "log 404": (
        "app",
        "/emails/logs/{public_id}",
        "get",
        404,
        lambda s: s.management("/emails/logs/dlog_x"),
    ),
    "metrics 200 daily": (
        "app",
        "/emails/metrics",
        "get",
        200,
        lambda s: (s.log_id(), s.management("/emails/metrics"))[1],
    ),
    "metrics 200 hourly": (
        "app",
        "/emails/metrics",
        "get",
        200,
        lambda s: s.management("/emails/metrics", granularity="hourly", window="30d"),
    ),
    "metrics 403": (
        "app",
        "/emails/metrics",
        "get",
        403,
        lambda s: s.management("/emails/metrics", SEND_ONLY),
    ),
    "balance 200": (
        "app",
        "/billing/balance",
        "get",
        200,
        lambda s: s.management("/billing/balance"),
    ),
    "balance 403": (
        "app",
        "/billing/balance",
        "get",
        403,
        lambda s: s.management("/billing/balance", SEND_ONLY),
    ),
    "management me 200": ("app", "/me", "get", 200, lambda s: s.management("/me", SEND_ONLY)),
    "management me 401": ("app", "/me", "get", 401, lambda s: s.management("/me", {})),
}


def _with_fault(s: Sandbox, fault: str, body: Any) -> httpx.Response:
    s.server.set_faults(**{fault: 1.0})
    try:
        return s.send(body)
    finally:
        s.server.set_faults()


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    keys = {
        DEFAULT_API_KEY: frozenset({"email.send", "logs.read", "analytics.read", "billing.read"}),
        SEND_ONLY_API_KEY: frozenset({"email.send"}),
        "smx_root_reader": frozenset({"logs.read"}),
    }
    with SandboxServer(SandboxConfig(keys=keys, delivery_delay=DELAY)) as server:
        yield Sandbox(server)


def _schema_pointer(spec_name: str, path: str, method: str, status: int) -> str | None:
    responses = load_spec(spec_name)["paths"][path][method]["responses"]
    if str(status) not in responses:
        assert status == 500, f"the spec lists no {status} for {method.upper()} {path}"
        return FALLBACK[spec_name]
    content = responses[str(status)].get("content")
    if content is None:
        return None
    escaped = path.replace("~", "~0").replace("/", "~1")
    return f"#/paths/{escaped}/{method}/responses/{status}/content/application~1json/schema"


def _assert_valid(spec_name: str, path: str, method: str, response: httpx.Response) -> None:
    pointer = _schema_pointer(spec_name, path, method, response.status_code)
    if pointer is None:
        assert response.content == b""
        return
    validator = schema_validator(spec_name, pointer)
    problems = [
        f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
        for e in validator.iter_errors(response.json())
    ]
    assert problems == [], f"{method.upper()} {path} {response.status_code}: {problems}"


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_response_matches_the_spec(sandbox: Sandbox, name: str) -> None:
    sandbox.server.reset()
    spec_name, path, method, status, call = SCENARIOS[name]
    response = call(sandbox)
    assert response.status_code == status, response.text
    _assert_valid(spec_name, path, method, response)


@pytest.mark.parametrize(
    ("spec_name", "path", "url"),
    [
        ("sending", "/me", "sending_url"),
        ("app", "/me", "management_url"),
        ("app", "/emails/logs/{public_id}", "management_url"),
    ],
)
def test_not_modified_has_no_body(sandbox: Sandbox, spec_name: str, path: str, url: str) -> None:
    sandbox.server.reset()
    target = getattr(sandbox.server, url) + (path.replace("{public_id}", sandbox.log_id()))
    etag = sandbox.http.get(target, headers=ROOT).headers["etag"]
    response = sandbox.http.get(target, headers={**ROOT, "If-None-Match": etag})
    assert response.status_code == 304
    _assert_valid(spec_name, path, "get", response)


def test_rate_limited_responses_match_the_spec() -> None:
    config = SandboxConfig(
        rate_limit=1, management_rate_limit=1, rate_window=60.0, management_rate_window=60.0
    )
    with SandboxServer(config) as server:
        s = Sandbox(server)
        for spec_name, path, call in (
            ("sending", "/emails/send", lambda: s.send(message())),
            ("sending", "/me", lambda: s.sending("/me")),
            ("app", "/me", lambda: s.management("/me")),
        ):
            responses = [call(), call()]
            assert responses[-1].status_code == 429
            assert responses[-1].headers["retry-after"].isdigit()
            _assert_valid(
                spec_name, path, "post" if path == "/emails/send" else "get", responses[-1]
            )


def test_the_check_is_not_vacuous(sandbox: Sandbox) -> None:
    sandbox.server.reset()
    response = sandbox.send({"messages": [message(), message("broken")]}, batch=True)
    body = response.json()
    del body["data"]["results"][1]["error"]["retryable"]
    body["data"]["results"][0]["message_id"] = "msg_1"
    validator = schema_validator("sending", "#/components/schemas/BatchSendSuccessResponse")
    messages = " | ".join(error.message for error in validator.iter_errors(body))
    assert "'retryable' is a required property" in messages
    assert "'msg_1' does not match" in messages
