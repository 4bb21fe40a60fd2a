"""What a user of dispatch() and sendmux-send sees: report, progress, results file, exit codes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from sendmux_dispatch import (
    InsufficientCreditsError,
    PermissionDeniedError,
    Progress,
    SendmuxClient,
    dispatch,
)
from sendmux_dispatch.pacing import RateLimitState
from sendmux_sandbox import SEND_ONLY_API_KEY

TEMPLATE = {
    "from": {"email": "news@example.com", "name": "News"},
    "subject": "Hello {{ name }}",
    "html_body": "<p>Hi {{ name }}</p>",
}


def people(n: int, prefix: str = "p") -> list[dict[str, str]]:
    return [{"email": f"{prefix}{i}@example.com", "name": f"Person {i}"} for i in range(n)]


def outcome_sum(report: Any) -> int:
    return (
        report.queued
        + report.failed
        + report.invalid
        + report.duplicates_dropped
        + report.already_accepted
        + report.not_sent
    )


def test_every_recipient_has_exactly_one_outcome(client: SendmuxClient, sandbox: Any) -> None:
    recipients: list[object] = [*people(230), "broken@@", "P3@EXAMPLE.COM"]
    report = dispatch(client, TEMPLATE, recipients, job_key="outcomes")
    assert (report.total, report.queued, report.invalid, report.duplicates_dropped) == (
        232,
        230,
        1,
        1,
    )
    assert outcome_sum(report) == report.total
    assert report.batches == 3
    assert sandbox.stats()["accepted_messages"] == 230
    assert report.failures[0].position == 230
    assert report.failures[0].code == "invalid_email"
    assert not report.ok


def test_progress_reports_every_batch_and_grows(client: SendmuxClient) -> None:
    seen: list[Progress] = []
    dispatch(client, TEMPLATE, people(450), job_key="progress", on_progress=seen.append)
    assert len(seen) == 5
    assert [p.batches_done for p in seen] == [1, 2, 3, 4, 5]
    assert seen[-1].messages_done == 450
    assert seen[-1].queued == 450
    assert all(p.rate > 0 for p in seen)


def test_results_file_has_one_line_per_recipient(client: SendmuxClient, tmp_path: Path) -> None:
    out = tmp_path / "results.jsonl"
    dispatch(client, TEMPLATE, [*people(120), "no-at-sign"], job_key="results", results_path=out)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 121
    by_status: dict[str, int] = {}
    for line in lines:
        by_status[line["status"]] = by_status.get(line["status"], 0) + 1
    assert by_status == {"queued": 120, "invalid": 1}
    assert all(
        line["message_id"].startswith("eml_") for line in lines if line["status"] == "queued"
    )


def test_failures_are_capped_but_counted(client: SendmuxClient) -> None:
    bad = [f"bad{i}@@" for i in range(30)]
    report = dispatch(client, TEMPLATE, bad, job_key="capped", max_failures=10)
    assert report.invalid == 30
    assert len(report.failures) == 10
    assert report.failures_omitted == 20
    assert len(json.dumps(report.as_dict())) < 10_000


def test_rerun_with_an_edited_template_sends_nothing_new(
    client: SendmuxClient, sandbox: Any
) -> None:
    dispatch(client, TEMPLATE, people(150), job_key="edited")
    edited = {**TEMPLATE, "subject": "Hello again {{ name }}"}
    report = dispatch(client, edited, people(150), job_key="edited")
    assert report.already_accepted == 150
    assert report.queued == 0
    assert sandbox.stats()["accepted_messages"] == 150
    assert sandbox.stats()["duplicate_deliveries"] == 0


def test_preflight_refuses_a_key_without_email_send(sandbox: Any) -> None:
    from sendmux_sandbox import SandboxConfig, SandboxServer

    config = SandboxConfig(keys={"smx_root_readonly_0000000000000": frozenset({"logs.read"})})
    with (
        SandboxServer(config) as server,
        SendmuxClient(
            "smx_root_readonly_0000000000000",
            sending_url=server.sending_url,
            management_url=server.management_url,
        ) as readonly,
    ):
        # /me itself needs email.send on the Sending API, so the refusal comes from there.
        with pytest.raises(PermissionDeniedError):
            dispatch(readonly, TEMPLATE, people(5), job_key="preflight", preflight=True)
        assert server.stats()["accepted_messages"] == 0


def test_preflight_passes_with_a_funded_full_key(client: SendmuxClient, sandbox: Any) -> None:
    try:
        report = dispatch(client, TEMPLATE, people(3), job_key="funded", preflight=True)
    except InsufficientCreditsError:  # pragma: no cover - the sandbox's balance is positive
        pytest.fail("the sandbox reports a positive balance")
    assert report.queued == 3


# --- sendmux-send ------------------------------------------------------------------


def run_cli(
    tmp_path: Path, sandbox: Any, api_key: str, *extra: str
) -> subprocess.CompletedProcess[str]:
    template = tmp_path / "msg.json"
    template.write_text(json.dumps(TEMPLATE))
    recipients = tmp_path / "list.csv"
    rows = ["email,name", *(f"c{i}@example.com,C {i}" for i in range(140)), "nope,Nope"]
    recipients.write_text("\n".join(rows) + "\n")
    env = {**os.environ, "SENDMUX_API_KEY": api_key}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "sendmux_dispatch.cli",
            "--template",
            str(template),
            "--recipients",
            str(recipients),
            "--job-key",
            "cli-job",
            "--sending-url",
            sandbox.sending_url,
            "--management-url",
            sandbox.management_url,
            *extra,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def cli_deliveries(sandbox: Any) -> int:
    # Counted by recipient, not from the global counter: the session's sandbox
    # may still be finishing a slow request of an earlier test.
    return sum(
        1 for message in sandbox.messages() if re.fullmatch(r"c\d+@example\.com", message["to"])
    )


def test_cli_sends_reports_and_exits_3_when_a_recipient_failed(
    tmp_path: Path, sandbox: Any
) -> None:
    result = run_cli(tmp_path, sandbox, sandbox.api_key, "--results", str(tmp_path / "r.jsonl"))
    assert result.returncode == 3, result.stderr
    assert "141 recipients, 140 queued, 0 failed, 1 invalid" in result.stdout
    assert "#140 nope: invalid_email" in result.stdout
    assert re.search(r"\] 100\.0% 141 recipients in [\d.]+ s$", result.stderr.rstrip())
    assert cli_deliveries(sandbox) == 140
    assert sandbox.api_key not in result.stdout + result.stderr


def test_cli_stops_on_a_bad_key_without_showing_it(tmp_path: Path, sandbox: Any) -> None:
    secret = "smx_mbx_not_a_real_key_123456789"
    result = run_cli(tmp_path, sandbox, secret)
    assert result.returncode == 4
    assert "stopped early: AuthenticationError" in result.stdout
    assert "140 not sent" in result.stdout
    assert secret not in result.stdout + result.stderr
    assert cli_deliveries(sandbox) == 0


def test_cli_without_a_key_is_a_usage_error(tmp_path: Path, sandbox: Any) -> None:
    result = run_cli(tmp_path, sandbox, "", "--api-key-env", "NO_SUCH_VARIABLE_SET")
    assert result.returncode == 2
    assert "no API key" in result.stderr
    assert sandbox.stats()["requests"] == 0


def test_send_only_key_can_send_but_not_read_logs(sandbox: Any) -> None:
    with SendmuxClient(
        SEND_ONLY_API_KEY, sending_url=sandbox.sending_url, management_url=sandbox.management_url
    ) as send_only:
        report = dispatch(send_only, TEMPLATE, people(2), job_key="send-only", preflight=True)
        assert report.queued == 2
        with pytest.raises(PermissionDeniedError):
            next(iter(send_only.iter_logs()))


class CountingPacer:
    """Counts the requests it let through; never makes anyone wait."""

    def __init__(self) -> None:
        self.acquired = 0
        self._lock = threading.Lock()

    def acquire(self) -> None:
        with self._lock:
            self.acquired += 1

    async def aacquire(self) -> None:
        self.acquire()

    def observe(self, state: RateLimitState) -> None:
        pass

    async def aobserve(self, state: RateLimitState) -> None:
        pass

    def pause(self, seconds: float) -> None:
        pass

    async def apause(self, seconds: float) -> None:
        pass


def test_concurrent_jobs_on_one_client_each_use_their_own_pacer(client: SendmuxClient) -> None:
    pacers = [CountingPacer(), CountingPacer()]
    sizes = [250, 730]  # 3 and 8 batches

    def run(index: int) -> Any:
        return dispatch(
            client,
            TEMPLATE,
            people(sizes[index], prefix=f"job{index}-"),
            job_key=f"own-pacer-{index}",
            pacer=pacers[index],
            concurrency=2,
        )

    with ThreadPoolExecutor(2) as pool:
        reports = list(pool.map(run, range(2)))
    assert [report.queued for report in reports] == sizes
    assert [pacer.acquired for pacer in pacers] == [3, 8]
    assert client.pacer is None  # never swapped in, so never left behind


def test_concurrent_jobs_on_one_client_count_only_their_own_requests(
    client: SendmuxClient,
) -> None:
    # Job A pauses after its first batch until job B has run from start to
    # end, so B's requests fall inside A's run on the shared client.
    b_finished = threading.Event()

    def pause_once(progress: Progress) -> None:
        if progress.batches_done == 1:
            assert b_finished.wait(30), "job B did not finish"

    before = client.stats.requests
    with ThreadPoolExecutor(1) as pool:
        job_a = pool.submit(
            dispatch,
            client,
            TEMPLATE,
            people(250, prefix="a"),
            job_key="own-count-a",
            on_progress=pause_once,
            concurrency=1,
        )
        report_b = dispatch(client, TEMPLATE, people(730, prefix="b"), job_key="own-count-b")
        b_finished.set()
        report_a = job_a.result(timeout=60)
    assert (report_a.batches, report_a.requests, report_a.retries) == (3, 3, 0)
    assert (report_b.batches, report_b.requests, report_b.retries) == (8, 8, 0)
    assert client.stats.requests - before == 11  # the client's own counters still see both
