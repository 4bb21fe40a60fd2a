"""Every request body the client sends validates against the vendor's OpenAPI spec.

Bodies are captured at the transport level (a wrapper around httpx's real
transport, see ``RecordingTransport`` in conftest) on their way to the
sandbox, so this checks what goes on the wire, not what a helper returns.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
from specs import load_spec, schema_validator

from sendmux_dispatch import Attachment, EmailMessage, SendmuxError

SEND = "#/components/schemas/EmailSendRequest"
BATCH = "#/components/schemas/BatchSendRequest"


def _errors(pointer: str, body: bytes) -> list[str]:
    validator = schema_validator("sending", pointer)
    return [
        f"{'/'.join(map(str, error.absolute_path))}: {error.message}"
        for error in validator.iter_errors(json.loads(body))
    ]


MINIMAL_TEXT_ONLY: dict[str, Any] = {
    "from": "sender@example.com",
    "to": "ann@example.com",
    "subject": "Text only",
    "text_body": "Line one\nLine <two> & three",
}

EVERYTHING: dict[str, Any] = {
    "from": {"email": "reports@example.com", "name": "Reports"},
    "to": "Ann Lee <ann@example.com>",
    "subject": "Nightly report",
    "html_body": "<p>Attached.</p>",
    "text_body": "Attached.",
    "reply_to": "help@example.com",
    "return_path": "bounces@example.com",
    "cc": ["cc1@example.com", {"email": "cc2@example.com", "name": "Two"}],
    "bcc": ["audit@example.com"],
    "custom_headers": {"X-Campaign": "nightly", "X-Run-Id": "2026-01-01"},
    "attachments": [
        Attachment.from_bytes(b"a,b\n1,2\n", "report.csv"),
        Attachment.from_bytes(b"%PDF-1.4", "summary.pdf", type="application/pdf"),
    ],
}


def test_the_spec_is_the_vendors() -> None:
    spec = load_spec("openapi-sending.json")
    assert spec["openapi"].startswith("3.1")
    assert "/emails/send/batch" in spec["paths"]
    assert load_spec("app")["paths"]["/emails/logs"]


@pytest.mark.parametrize(
    "message", [MINIMAL_TEXT_ONLY, EVERYTHING], ids=["text-only", "everything"]
)
def test_send_bodies_match_the_spec(client: Any, recorder: Any, message: dict[str, Any]) -> None:
    client.send(message)
    [request] = recorder.posts
    assert request.url.path.endswith("/emails/send")
    assert _errors(SEND, request.content) == []


def test_text_only_message_gets_a_derived_html_body_on_the_wire(client: Any, recorder: Any) -> None:
    client.send(MINIMAL_TEXT_ONLY)
    body = json.loads(recorder.posts[0].content)
    assert body["html_body"].startswith("<pre")
    assert "&lt;two&gt; &amp; three" in body["html_body"]


def test_uploaded_attachment_reference_matches_the_spec(client: Any, recorder: Any) -> None:
    message = dict(MINIMAL_TEXT_ONLY, attachments=[Attachment.uploaded("att_" + "a" * 24)])
    # The sandbox may not know the upload; the body is what is checked here.
    with contextlib.suppress(SendmuxError):
        client.send(message)
    assert _errors(SEND, recorder.posts[0].content) == []


def test_delivery_group_matches_the_spec(client: Any, recorder: Any) -> None:
    for group in ("dgrp_marketing", ["dgrp_a", "dgrp_b"]):
        with contextlib.suppress(SendmuxError):
            client.send(dict(MINIMAL_TEXT_ONLY, delivery_group=group))
    assert len(recorder.posts) == 2
    for request in recorder.posts:
        assert _errors(SEND, request.content) == []


def test_batch_bodies_match_the_spec(client: Any, recorder: Any) -> None:
    messages = [
        MINIMAL_TEXT_ONLY,
        EVERYTHING,
        EmailMessage.model_validate(dict(MINIMAL_TEXT_ONLY, to="bob@example.com")),
        dict(MINIMAL_TEXT_ONLY, to="carol@example.com", idempotency_key="per-message-1"),
    ]
    result = client.send_batch(messages)
    assert result.summary.queued == 4
    [request] = recorder.posts
    assert request.url.path.endswith("/emails/send/batch")
    assert "idempotency_key" not in request.content.decode()
    assert _errors(BATCH, request.content) == []


def test_per_message_keys_deliberately_depart_from_the_spec(client: Any, recorder: Any) -> None:
    # The product docs describe a per-message idempotency_key in a batch; the
    # spec's schema has none (additionalProperties: false). per_message_keys
    # is off by default and, when a user turns it on, the body breaks the spec.
    messages = [
        dict(MINIMAL_TEXT_ONLY, to=f"k{i}@example.com", idempotency_key=f"key-{i}")
        for i in range(2)
    ]
    client.send_batch(messages, per_message_keys=True)
    body = recorder.posts[0].content
    assert json.loads(body)["messages"][0]["idempotency_key"] == "key-0"
    errors = _errors(BATCH, body)
    assert errors
    assert all("idempotency_key" in error for error in errors)


def test_the_idempotency_key_header_fits_the_spec(client: Any, recorder: Any) -> None:
    spec = load_spec("sending")
    [header] = [
        p
        for p in spec["paths"]["/emails/send"]["post"]["parameters"]
        if p["name"] == "Idempotency-Key"
    ]
    client.send(MINIMAL_TEXT_ONLY)
    key = recorder.posts[0].headers["idempotency-key"]
    assert 1 <= len(key) <= header["schema"]["maxLength"]
