"""Provider metadata: the entry point, `airflow providers list`, the connection form."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from airflow_home import REPO_ROOT, airflow_env, run_airflow

ENTRY_POINT = "sendmux_airflow.get_provider_info:get_provider_info"


def _provider_metadata(tmp_path: Path) -> tuple[metadata.Distribution, str]:
    """This checkout's distribution metadata, and the directory to put on the path for it.

    A fresh ``pip install -e`` writes the entry point into the installed
    metadata; an editable install made before it existed is stale, so then
    the metadata is rebuilt from pyproject.toml with setuptools' egg_info,
    which is what an install would write.
    """
    installed = metadata.distribution("sendmux-workflows")
    if any(ep.group == "apache_airflow_provider" for ep in installed.entry_points):
        return installed, ""
    subprocess.run(
        [
            sys.executable,
            "-c",
            "from setuptools import setup; setup()",
            "egg_info",
            "--egg-base",
            str(tmp_path),
        ],
        cwd=REPO_ROOT,
        check=True,
        capture_output=True,
    )
    info = tmp_path / "sendmux_workflows.egg-info"
    return metadata.PathDistribution(info), str(tmp_path)


def test_provider_is_registered_and_listed_by_airflow(tmp_path: Path) -> None:
    dist, extra_path = _provider_metadata(tmp_path)
    (entry_point,) = [ep for ep in dist.entry_points if ep.group == "apache_airflow_provider"]
    assert entry_point.value == ENTRY_POINT
    info = entry_point.load()()
    assert info["package-name"] == dist.metadata["Name"] == "sendmux-workflows"

    env = airflow_env()
    if extra_path:
        env["PYTHONPATH"] = extra_path + ":" + env["PYTHONPATH"]
    done = run_airflow("providers", "list", "--output", "json", env=env)
    assert done.returncode == 0, done.stderr
    listed = {row["package_name"]: row for row in json.loads(done.stdout)}
    assert "sendmux-workflows" in listed, sorted(listed)
    assert listed["sendmux-workflows"]["version"] == dist.version

    # The connection form the UI draws, as Airflow's providers manager builds it.
    done = run_airflow("providers", "widgets", "--output", "json", env=env)
    assert done.returncode == 0, done.stderr
    widgets = {
        row["connection_parameter_name"]: row
        for row in json.loads(done.stdout)
        if row["package_name"] == "sendmux-workflows"
    }
    assert set(widgets) == {
        f"extra__sendmux__{name}" for name in info["connection-types"][0]["conn-fields"]
    }
    assert widgets["extra__sendmux__timeout"]["field_type"] == ["number", "null"]


def test_connection_type_declares_its_form_fields() -> None:
    from jsonschema import validate

    from sendmux_airflow.get_provider_info import get_provider_info

    info = get_provider_info()
    # Airflow's own schemas: the runtime one, and the stricter provider.yaml one for the form.
    airflow_dir = Path(__import__("airflow").__file__).parent
    runtime_schema = json.loads((airflow_dir / "provider_info.schema.json").read_text())
    validate(info, runtime_schema)
    yaml_schema = json.loads((airflow_dir / "provider.yaml.schema.json").read_text())
    validate(info["connection-types"], yaml_schema["properties"]["connection-types"])

    # The notifier is declared by class path, and that path imports.
    (notifier,) = info["notifications"]
    module, _, name = notifier.rpartition(".")
    from sendmux_airflow import SendmuxNotifier

    assert getattr(__import__(module, fromlist=[name]), name) is SendmuxNotifier

    (conn_type,) = info["connection-types"]
    assert conn_type["connection-type"] == "sendmux"
    assert conn_type["hook-class-name"] == "sendmux_airflow.hooks.sendmux.SendmuxHook"
    fields = conn_type["conn-fields"]
    assert set(fields) >= {"management_url", "management_api_key", "from_email", "timeout"}
    assert "pacer_url" in fields
    assert "ledger_url" in fields
    assert fields["management_api_key"]["schema"]["format"] == "password"
    behaviour = conn_type["ui-field-behaviour"]
    assert behaviour["relabeling"] == {"host": "Sending API URL", "password": "API key"}
    assert behaviour["placeholders"]["host"] == "https://smtp.sendmux.ai/api/v1"


def test_only_the_core_speaks_http() -> None:
    import ast

    package = REPO_ROOT / "sendmux_airflow"
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            assert not any(n.split(".")[0] in {"httpx", "requests"} for n in names), path


def test_provider_discovery_does_not_import_airflow_or_the_hook() -> None:
    # The providers manager imports get_provider_info in every Airflow process.
    code = (
        "import sys, sendmux_airflow.get_provider_info as m; m.get_provider_info(); "
        "assert not [n for n in sys.modules if n.startswith(('airflow', 'sendmux_airflow.hooks'))]"
    )
    subprocess.run([sys.executable, "-c", code], env=airflow_env(), check=True)
