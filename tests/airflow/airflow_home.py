"""The tests' Airflow environment, set when this module is first imported (by conftest.py).

Airflow reads its configuration when ``airflow`` is first imported, so this
must run before any test module of this folder imports it. Kept out of
conftest.py so test modules can import the helpers under a unique name
(``tests/conftest.py`` is a ``conftest`` module too).
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
    env = {**os.environ, **_ENV, **extra}  # extra wins, e.g. another dags folder
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
