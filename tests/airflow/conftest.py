"""Real Airflow for the tests in this folder: a temporary AIRFLOW_HOME, SQLite metadata.

Airflow reads its configuration when ``airflow`` is first imported, so the
environment is set at import of ``airflow_home`` (pytest imports this file
while collecting, before any test module of this folder imports Airflow). Nothing
outside the repository is used: no existing AIRFLOW_HOME, no airflow.cfg.
Tests elsewhere never import Airflow, so they do not pay for it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from airflow_home import AIRFLOW_HOME, DAGS_FOLDER, connection_json, run_airflow


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """The metadata database, migrated once per session (``airflow db migrate``)."""
    done = run_airflow("db", "migrate")
    assert done.returncode == 0, f"airflow db migrate failed:\n{done.stdout}\n{done.stderr}"
    return AIRFLOW_HOME / "airflow.db"


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
