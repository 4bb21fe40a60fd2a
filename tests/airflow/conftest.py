"""Real Airflow for the tests in this folder: a temporary AIRFLOW_HOME, SQLite metadata.

Airflow reads its configuration when ``airflow`` is first imported, so the
environment is set here, at import (pytest imports this file while
collecting, before any test module of this folder imports Airflow). Nothing
outside the repository is used: no existing AIRFLOW_HOME, no airflow.cfg.
Tests elsewhere never import Airflow, so they do not pay for it.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="sendmux-airflow-home-"))
DAGS_FOLDER = Path(__file__).resolve().parent / "dags"

_ENV = {
    "AIRFLOW_HOME": str(AIRFLOW_HOME),
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{AIRFLOW_HOME / 'airflow.db'}",
    "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_FOLDER),
    "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
    "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
}
os.environ.update(_ENV)
atexit.register(shutil.rmtree, AIRFLOW_HOME, ignore_errors=True)


def airflow_env(**extra: str) -> dict[str, str]:
    """The environment for an ``airflow`` subprocess: ours, and this checkout first on the path."""
    env = dict(os.environ, **_ENV, **extra)
    paths = [str(REPO_ROOT), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return env


def run_airflow(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "airflow", *args],
        env=env or airflow_env(),
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """The metadata database, migrated once per session (``airflow db migrate``)."""
    done = run_airflow("db", "migrate")
    assert done.returncode == 0, f"airflow db migrate failed:\n{done.stdout}\n{done.stderr}"
    return AIRFLOW_HOME / "airflow.db"


def connection_json(sandbox: Any, *, api_key: str | None = None, **extra: Any) -> str:
    """``AIRFLOW_CONN_SENDMUX_DEFAULT`` in JSON form (the URI form would split the URL)."""
    return json.dumps(
        {
            "conn_type": "sendmux",
            "host": sandbox.sending_url,
            "password": sandbox.api_key if api_key is None else api_key,
            "extra": {"management_url": sandbox.management_url, "timeout": 5, **extra},
        }
    )


@pytest.fixture
def sendmux_connection(sandbox: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """``sendmux_default`` pointing at the sandbox; call it again to change the extras."""

    def set_connection(*, api_key: str | None = None, **extra: Any) -> str:
        value = connection_json(sandbox, api_key=api_key, **extra)
        monkeypatch.setenv("AIRFLOW_CONN_SENDMUX_DEFAULT", value)
        return value

    set_connection()
    return set_connection


@pytest.fixture
def test_dags(airflow_db: Path, sandbox: Any, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The DAGs of ``dags/sendmux_test_dags.py`` by id, imported as the dags folder has them."""
    import importlib.util

    monkeypatch.setenv("SENDMUX_TEST_SANDBOX_URL", sandbox.base_url)
    path = DAGS_FOLDER / "sendmux_test_dags.py"
    spec = importlib.util.spec_from_file_location("sendmux_test_dags", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    from airflow.sdk import DAG

    return {dag.dag_id: dag for dag in vars(module).values() if isinstance(dag, DAG)}
