"""The pytest plugin's fixtures and the sendmux-sandbox command."""

from __future__ import annotations

import subprocess
import sys
import time

import httpx

from sendmux_sandbox.cli import _parser, build_config

pytest_plugins = ["pytester"]


def test_the_fixture_is_a_running_clean_sandbox(sendmux_sandbox):
    assert sendmux_sandbox.stats()["accepted_messages"] == 0
    r = httpx.get(
        sendmux_sandbox.sending_url + "/me",
        headers={"Authorization": f"Bearer {sendmux_sandbox.api_key}"},
    )
    assert r.status_code == 200
    assert sendmux_sandbox.management_url.startswith("http://127.0.0.1:")


def test_the_fixture_resets_between_tests_and_takes_a_config(pytester):
    pytester.makeconftest(
        """
        import pytest
        from sendmux_sandbox import SandboxConfig

        @pytest.fixture(scope="session")
        def sendmux_sandbox_config():
            return SandboxConfig(send_status=201)
        """
    )
    pytester.makepyfile(
        """
        import httpx

        MESSAGE = {"from": {"email": "a@example.com"}, "to": {"email": "b@example.com"},
                   "subject": "s", "html_body": "h"}

        def test_first(sendmux_sandbox):
            r = httpx.post(sendmux_sandbox.sending_url + "/emails/send", json=MESSAGE,
                           headers={"Authorization": "Bearer " + sendmux_sandbox.api_key})
            assert r.status_code == 201
            sendmux_sandbox.set_faults(error_503=1.0)
            assert sendmux_sandbox.stats()["accepted_messages"] == 1

        def test_second(sendmux_sandbox, sendmux_sandbox_server):
            assert sendmux_sandbox is sendmux_sandbox_server
            assert sendmux_sandbox.stats()["accepted_messages"] == 0
            r = httpx.post(sendmux_sandbox.sending_url + "/emails/send", json=MESSAGE,
                           headers={"Authorization": "Bearer " + sendmux_sandbox.api_key})
            assert r.status_code == 201
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)


def test_the_plugin_module_imports_nothing_heavy():
    code = (
        "import sys, sendmux_sandbox.pytest_plugin, sendmux_sandbox;"
        "heavy = [m for m in ('starlette', 'uvicorn', 'httpx', 'pydantic') if m in sys.modules];"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_cli_flags_build_the_config():
    args = _parser().parse_args(
        [
            "--key",
            "smx_root_a",
            "--key",
            "smx_mbx_b=email.send",
            "--rate-limit",
            "30",
            "--rate-window",
            "1",
            "--error-503",
            "0.2",
            "--retry-after",
            "3",
            "--delivery-delay",
            "0",
            "--seed",
            "7",
        ]
    )
    config = build_config(args)
    assert config.keys["smx_mbx_b"] == frozenset({"email.send"})
    assert len(config.keys["smx_root_a"]) == 4
    assert (config.rate_limit, config.rate_window, config.delivery_delay) == (30, 1.0, 0.0)
    assert (config.faults.error_503, config.faults.retry_after, config.faults.seed) == (0.2, 3, 7)
    assert build_config(_parser().parse_args(["--rate-limit", "0"])).rate_limit is None


def test_cli_serves_in_the_foreground_and_prints_urls_and_key():
    process = subprocess.Popen(
        [sys.executable, "-m", "sendmux_sandbox.cli", "--port", "0", "--log-level", "warning"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        lines = [process.stdout.readline() for _ in range(4)]
        sending_url = lines[0].split()[-1]
        key = lines[3].split()[2]
        assert sending_url.startswith("http://127.0.0.1:")
        assert sending_url.endswith("/sending/api/v1")
        assert key == "smx_root_sandbox_0000000000000000"
        for _ in range(50):
            try:
                r = httpx.get(sending_url + "/me", headers={"Authorization": f"Bearer {key}"})
                break
            except httpx.ConnectError:
                time.sleep(0.1)
        assert r.status_code == 200
    finally:
        process.terminate()
        process.wait(timeout=10)
