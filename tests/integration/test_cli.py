"""sendmux-send as a person meets it: bad files refused before sending, exit codes, no tracebacks.

Each test runs the CLI as a subprocess against the sandbox and counts its own
deliveries by recipient (the session's sandbox is shared).
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from sendmux_dispatch import cli
from sendmux_dispatch.report import DispatchReport

TEMPLATE = {
    "from": {"email": "news@example.com", "name": "News"},
    "subject": "Hello {{ name }}",
    "html_body": "<p>Hi {{ name }}</p>",
}


def rows(n: int, prefix: str = "t") -> str:
    return "".join(f"{prefix}{i}@example.com,T {i}\n" for i in range(n))


def cli_env(api_key: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "SENDMUX_API_KEY"}
    # Subprocesses import this worktree's package, as the tests do.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), *sys.path) if p)
    if api_key is not None:
        env["SENDMUX_API_KEY"] = api_key
    return env


def command(tmp_path: Path, sandbox: Any, recipients: Path, *extra: str) -> list[str]:
    template = tmp_path / "msg.json"
    template.write_text(json.dumps(TEMPLATE))
    return [
        sys.executable,
        "-m",
        "sendmux_dispatch.cli",
        "--template",
        str(template),
        "--recipients",
        str(recipients),
        "--job-key",
        "cli-test",
        "--sending-url",
        sandbox.sending_url,
        "--management-url",
        sandbox.management_url,
        *extra,
    ]


def run(
    tmp_path: Path,
    sandbox: Any,
    recipients: Path,
    *extra: str,
    api_key: str | None = "sandbox",
) -> subprocess.CompletedProcess[str]:
    key = sandbox.api_key if api_key == "sandbox" else api_key
    return subprocess.run(
        command(tmp_path, sandbox, recipients, *extra),
        capture_output=True,
        text=True,
        env=cli_env(key),
        timeout=120,
        check=False,
    )


def write(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def deliveries(sandbox: Any, prefix: str = "t") -> int:
    pattern = re.compile(rf"{prefix}\d+@example\.com")
    return sum(1 for m in sandbox.messages() if pattern.fullmatch(m["to"]))


def no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stderr, result.stderr
    assert "Traceback" not in result.stdout


# --- the file is checked whole before anything is sent -------------------------


def test_an_unterminated_quote_refuses_the_file_before_sending(
    tmp_path: Path, sandbox: Any
) -> None:
    # Before: "11 recipients, 10 queued, 1 invalid", 989 rows counted nowhere, exit 1.
    lines = rows(1000).splitlines()
    lines[10] = 't10@example.com,"T 10'
    path = write(tmp_path / "list.csv", "email,name\n" + "\n".join(lines) + "\n")
    result = run(tmp_path, sandbox, path)
    assert result.returncode == 2
    assert "unterminated quote from line 12" in result.stderr
    no_traceback(result)
    assert sandbox.stats()["requests"] == 0


def test_a_short_row_refuses_the_file_and_names_the_line(tmp_path: Path, sandbox: Any) -> None:
    # Before: sent with the text "None" in place of the missing cell.
    text = "email,name,plan\n" + "".join(f"t{i}@example.com,T,pro\n" for i in range(5))
    path = write(tmp_path / "list.csv", text + "t9@example.com,T\n")
    result = run(tmp_path, sandbox, path)
    assert result.returncode == 2
    assert "line 7: 2 cells where the header has 3" in result.stderr
    assert "nothing was sent" in result.stderr
    assert sandbox.stats()["requests"] == 0


def test_a_header_without_the_email_column_is_one_error(tmp_path: Path, sandbox: Any) -> None:
    # Before: one failure line per row.
    path = write(tmp_path / "list.csv", "Email,Name\n" + rows(300))
    result = run(tmp_path, sandbox, path)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "found: 'Email', 'Name'" in result.stderr
    assert "--email-column 'Email'" in result.stderr
    assert sandbox.stats()["requests"] == 0

    fixed = run(tmp_path, sandbox, path, "--email-column", "Email", "--name-column", "Name")
    assert fixed.returncode == 0, fixed.stderr
    assert deliveries(sandbox) == 300


def test_a_semicolon_export_is_sniffed_and_said(tmp_path: Path, sandbox: Any) -> None:
    path = write(tmp_path / "list.csv", "email;name\n" + rows(3).replace(",", ";"))
    result = run(tmp_path, sandbox, path)
    assert result.returncode == 0, result.stderr
    assert "semicolon-separated (sniffed; --delimiter to choose)" in result.stderr
    assert "4 lines = 1 header, 3 records" in result.stderr
    assert deliveries(sandbox) == 3


def test_a_tab_delimiter_can_be_typed_as_backslash_t(tmp_path: Path, sandbox: Any) -> None:
    path = write(tmp_path / "list.csv", "email\tname\n" + rows(2).replace(",", "\t"))
    assert run(tmp_path, sandbox, path, "--delimiter", "\\t").returncode == 0
    assert deliveries(sandbox) == 2
    refused = run(tmp_path, sandbox, path, "--delimiter", ";;")
    assert refused.returncode == 2
    assert "--delimiter must be one character" in refused.stderr
    no_traceback(refused)


def test_a_bad_byte_names_its_line_before_sending(tmp_path: Path, sandbox: Any) -> None:
    # Before: "position 4514" after 300 messages were accepted, and no summary.
    data = ("email,name\n" + rows(600)).encode().replace(b"T 498\n", b"T 498\xe9\n")
    path = write(tmp_path / "list.csv", data)
    result = run(tmp_path, sandbox, path)
    assert result.returncode == 2
    assert "line 500: byte b'\\xe9'" in result.stderr
    assert "--encoding" in result.stderr
    no_traceback(result)
    assert sandbox.stats()["requests"] == 0
    fixed = run(tmp_path, sandbox, path, "--encoding", "latin-1")
    assert fixed.returncode == 0, fixed.stderr
    assert deliveries(sandbox) == 600


@pytest.mark.parametrize(
    ("name", "text", "said"),
    [
        ("list.csv", "", "is empty"),
        ("list.jsonl", "\n", "is empty"),
        ("list.csv", "email,name\n", "has no recipients"),
    ],
)
def test_an_empty_file_is_said_and_exits_2(
    tmp_path: Path, sandbox: Any, name: str, text: str, said: str
) -> None:
    # Before: exit 0 with "0 recipients".
    result = run(tmp_path, sandbox, write(tmp_path / name, text))
    assert result.returncode == 2
    assert said in result.stderr
    assert sandbox.stats()["requests"] == 0


# --- results files ----------------------------------------------------------


def test_results_equal_to_the_recipients_file_is_refused(tmp_path: Path, sandbox: Any) -> None:
    # Before: the list was opened for writing first, and erased.
    text = "email,name\n" + rows(5)
    path = write(tmp_path / "list.csv", text)
    link = tmp_path / "link.csv"
    link.symlink_to(path)
    hard = tmp_path / "hard.csv"
    hard.hardlink_to(path)
    for results in (path, link, hard):
        result = run(tmp_path, sandbox, path, "--results", str(results))
        assert result.returncode == 2
        assert "is the recipients file" in result.stderr
    assert path.read_text() == text
    assert sandbox.stats()["requests"] == 0


def test_an_existing_results_file_needs_overwrite(tmp_path: Path, sandbox: Any) -> None:
    path = write(tmp_path / "list.csv", "email,name\n" + rows(5))
    results = write(tmp_path / "results.jsonl", "earlier run\n")
    refused = run(tmp_path, sandbox, path, "--results", str(results))
    assert refused.returncode == 2
    assert "--overwrite" in refused.stderr
    assert results.read_text() == "earlier run\n"
    assert sandbox.stats()["requests"] == 0

    done = run(tmp_path, sandbox, path, "--results", str(results), "--overwrite")
    assert done.returncode == 0, done.stderr
    assert [json.loads(line)["status"] for line in results.read_text().splitlines()] == [
        "queued"
    ] * 5


def test_results_file_after_kill_9_holds_what_the_server_accepted(
    tmp_path: Path, sandbox: Any
) -> None:
    # Before: flushed only at close (6,778 lines for 7,000 accepted, a cut last line).
    sandbox.set_faults(latency=0.4)
    path = write(tmp_path / "list.csv", "email,name\n" + rows(3000))
    results = tmp_path / "results.jsonl"
    proc = subprocess.Popen(
        command(tmp_path, sandbox, path, "--results", str(results), "--concurrency", "1"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=cli_env(sandbox.api_key),
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if results.exists() and results.read_bytes().count(b"\n") >= 300:
                break
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    time.sleep(0.8)  # the request in flight at the kill lands (the server does not know)
    sandbox.set_faults()
    text = results.read_text()
    assert text.endswith("\n")
    lines = [json.loads(line) for line in text.splitlines()]
    accepted = {m["to"]: m["id"] for m in sandbox.messages() if m["to"].startswith("t")}
    assert all(line["status"] == "queued" for line in lines)
    assert all(accepted.get(line["email"]) == line["message_id"] for line in lines)
    # Only the batch whose answer never arrived (concurrency 1) is missing from the file.
    assert len(accepted) - len(lines) in (0, 100)
    assert len(lines) >= 300


# --- keys, a person's mistakes, exit codes ---------------------------------------


def test_a_key_given_as_the_variable_name_is_never_echoed(tmp_path: Path, sandbox: Any) -> None:
    path = write(tmp_path / "list.csv", "email,name\n" + rows(2))
    key = "smx_mbx_0123456789abcdefghijkl"
    result = run(tmp_path, sandbox, path, "--api-key-env", key, api_key=None)
    assert result.returncode == 2
    assert "looks like an API key" in result.stderr
    assert key not in result.stdout + result.stderr
    assert "0123456789" not in result.stderr
    assert sandbox.stats()["requests"] == 0


@pytest.mark.parametrize(
    ("extra", "said"),
    [
        (("--api-key-file", "/no/such/key"), "cannot read --api-key-file"),
        (("--results", "/no/such/folder/r.jsonl"), "does not exist"),
        (("--template", "/no/such/template.json"), "cannot read --template"),
    ],
)
def test_a_persons_mistake_is_one_line_and_exit_2(
    tmp_path: Path, sandbox: Any, extra: tuple[str, str], said: str
) -> None:
    path = write(tmp_path / "list.csv", "email,name\n" + rows(2))
    result = run(tmp_path, sandbox, path, *extra)
    assert result.returncode == 2
    assert said in result.stderr
    no_traceback(result)
    assert sandbox.stats()["requests"] == 0


def test_a_wrong_key_prints_one_line_not_one_per_recipient(tmp_path: Path, sandbox: Any) -> None:
    path = write(tmp_path / "list.csv", "email,name\n" + rows(250))
    result = run(tmp_path, sandbox, path, api_key="smx_mbx_zz9qx00000000000000000")
    assert result.returncode == 4
    # Before: 100 identical lines. The report keeps 100 failures and counts the rest.
    failure_lines = [line for line in result.stdout.splitlines() if line.startswith("  ")]
    assert [line for line in failure_lines if "not valid" in line] == [failure_lines[0]]
    assert re.match(r"  100 recipients \(#\d+ t\d+@example\.com, \.\.\.\)", failure_lines[0])
    assert failure_lines[1:] == ["  ... and 150 more failures (see --results)"]
    assert "zz9qx" not in result.stdout + result.stderr
    assert "to resume" in result.stderr
    assert deliveries(sandbox) == 0


def test_invalid_recipients_exit_3_and_a_clean_run_exits_0(tmp_path: Path, sandbox: Any) -> None:
    path = write(tmp_path / "list.csv", "email,name\n" + rows(3) + "nope,Nope\n")
    result = run(tmp_path, sandbox, path)
    assert result.returncode == 3, result.stderr
    assert "1 invalid" in result.stdout
    clean = write(tmp_path / "clean.csv", "email,name\n" + rows(3))
    assert run(tmp_path, sandbox, clean).returncode == 0


def test_a_closed_pipe_exits_quietly(tmp_path: Path, sandbox: Any) -> None:
    path = write(tmp_path / "list.csv", "email,name\n" + rows(5) + "nope,Nope\n")
    proc = subprocess.Popen(
        command(tmp_path, sandbox, path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=cli_env(sandbox.api_key),
    )
    assert proc.stdout is not None
    assert proc.stderr is not None
    proc.stdout.close()  # like `| head` that has already gone
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 3
    assert "Traceback" not in stderr, stderr
    assert "BrokenPipe" not in stderr


def test_retry_waits_are_shown_on_their_own_line(tmp_path: Path, sandbox: Any) -> None:
    sandbox.set_faults(error_503=0.6, retry_after=0, seed=3)
    path = write(tmp_path / "list.csv", "email,name\n" + rows(400))
    result = run(tmp_path, sandbox, path)
    sandbox.set_faults()
    assert result.returncode == 0, result.stderr
    waits = re.findall(
        r"(?:^|\n|\r *\r)sendmux-send: waiting [^\r\n]* before retrying [^\r\n]*\n", result.stderr
    )
    assert waits, result.stderr
    assert deliveries(sandbox) == 400


def test_every_flag_has_help_and_help_lists_the_exit_codes() -> None:
    parser = cli._parser()
    for action in parser._actions:
        assert action.help, action.option_strings
    text = parser.format_help()
    for code in ("0 ", "1 ", "2 ", "3 ", "4 ", "130"):
        assert f"\n  {code}" in text


@pytest.mark.parametrize(
    ("report", "code"),
    [
        (DispatchReport("k", total=2, queued=2), 0),
        (DispatchReport("k", total=2, queued=1, failed=1), 3),
        (DispatchReport("k", total=2, queued=1, invalid=1), 3),
        (DispatchReport("k", not_sent=2, stopped_reason="x", stop_cause="auth"), 4),
        (DispatchReport("k", not_sent=2, stopped_reason="x", stop_cause="outage"), 4),
        (DispatchReport("k", stopped_reason="line 9", stop_cause="input"), 2),
        (DispatchReport("k", stopped_reason="Ctrl-C", stop_cause="interrupted"), 130),
    ],
)
def test_exit_codes_follow_the_report(report: DispatchReport, code: int) -> None:
    assert cli._exit_code(report) == code


def test_log_lines_go_above_the_progress_line() -> None:
    import logging

    stream = io.StringIO()
    progress = cli._ProgressLine(10, stream)
    handler = cli._LogLines(progress, stream)
    progress(_progress(3))
    handler.emit(logging.makeLogRecord({"msg": "waiting 30 s (429)", "levelno": 20}))
    lines = stream.getvalue().split("\n")
    assert lines[0].endswith("\rsendmux-send: waiting 30 s (429)")
    assert lines[1].startswith("[#########")  # the progress line, drawn again


def _progress(done: int) -> Any:
    from sendmux_dispatch.report import Progress

    return Progress(batches_done=1, messages_done=done, queued=done, failed=0, elapsed=1.0)


def test_ctrl_c_prints_the_summary_and_the_resume_command(tmp_path: Path, sandbox: Any) -> None:
    sandbox.set_faults(latency=0.4)
    path = write(tmp_path / "list.csv", "email,name\n" + rows(2000))
    results = tmp_path / "results.jsonl"
    proc = subprocess.Popen(
        command(tmp_path, sandbox, path, "--results", str(results), "--concurrency", "2"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(sandbox.api_key),
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if results.exists() and results.read_bytes().count(b"\n") >= 200:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    sandbox.set_faults()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert re.search(r"\d+ recipients, \d+ queued", stdout)
    assert "--job-key cli-test" in stderr
    assert "to resume" in stderr
    # The batches in flight were waited for: the file holds every accepted message.
    queued = [
        line
        for line in map(json.loads, results.read_text().splitlines())
        if line["status"] == "queued"
    ]
    accepted = [m for m in sandbox.messages() if m["to"].startswith("t")]
    assert len(queued) == len(accepted) < 2000
