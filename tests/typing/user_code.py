"""Code as a user writes it, from the docs: type-checked, never run.

``make typecheck`` runs ``mypy --strict`` (without the pydantic plugin, as a
user's project has it) and basedpyright over this file: every documented
constructor must type-check with plain ``str`` addresses. The file is not a
test module (no ``test_`` prefix), so pytest does not collect it.
"""

from __future__ import annotations

from pathlib import Path

from sendmux_dispatch import (
    Address,
    AsyncSendmuxClient,
    Attachment,
    DispatchReport,
    EmailMessage,
    RetryPolicy,
    SendmuxClient,
    dispatch,
)


def build_messages(report_pdf: Path) -> list[EmailMessage]:
    plain = EmailMessage(
        from_="a@example.com",
        to="b@example.com",
        subject="Hello",
        text_body="Hi there",
    )
    named = EmailMessage(
        from_=Address(email="news@example.com", name="News"),
        to="Ann Lee <ann@example.com>",
        subject="Your report",
        html_body="<p>Attached.</p>",
        reply_to="Help <help@example.com>",
        return_path="bounces@example.com",
        cc=["bo@example.com", Address(email="cy@example.com")],
        bcc=[{"email": "audit@example.com"}],
        custom_headers={"X-Campaign": "autumn"},
        attachments=[
            Attachment.from_path(report_pdf),
            Attachment.from_bytes(b"a,b\n1,2\n", "data.csv"),
            Attachment.from_bytes(b"{}", "data.json", type="application/json"),
            Attachment.uploaded("att_0123456789abcdefghijklmn"),
        ],
        delivery_group="dgrp_main",
        idempotency_key="order-1234",
    )
    from_wire = EmailMessage.model_validate(
        {"from": "a@example.com", "to": "b@example.com", "subject": "s", "text_body": "t"}
    )
    sender: Address = named.from_
    recipient: str = named.to.email
    name: str | None = named.to.name
    print(sender, recipient, name)
    return [plain, named, from_wire]


def send(api_key: str, messages: list[EmailMessage]) -> DispatchReport:
    retry = RetryPolicy(max_attempts=3, initial_delay=1.0, max_retry_after=60.0)
    with SendmuxClient(api_key, timeout=10.0, retry=retry) as client:
        result = client.send(messages[0], idempotency_key="welcome-ann")
        message_id: str = result.message_id
        batch = client.send_batch(messages, idempotency_key="batch-1")
        queued: int = batch.summary.queued
        print(message_id, queued)
        template = {
            "from": "News <news@example.com>",
            "subject": "Hi {{ name }}",
            "text_body": "Your code: {{ code }}",
        }
        recipients = [{"email": "ann@example.com", "name": "Ann", "code": "X1"}]
        return dispatch(client, template, recipients, job_key="welcome-2026", concurrency=2)


async def send_async(api_key: str, message: EmailMessage) -> str:
    async with AsyncSendmuxClient(api_key, retry=RetryPolicy.none()) as client:
        result = await client.send(message)
        return result.message_id
