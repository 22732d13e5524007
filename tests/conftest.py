"""Test settings: a private job store and data folder; one real Prefect server per session."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

# Before any Relay module reads its settings (Dask workers inherit these too).
_STATE = Path(tempfile.mkdtemp(prefix="relay-tests-"))
os.environ["RELAY_DATABASE_URL"] = f"sqlite:///{_STATE / 'relay.db'}"
os.environ["RELAY_DATA_DIR"] = str(_STATE / "data")
os.environ["RELAY_DASK_WORKERS"] = "2"
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["DASK_LOGGING__DISTRIBUTED"] = "warning"

import pytest  # noqa: E402

# Helper modules that test modules load as plugins (their fixtures): rewrite their asserts.
pytest.register_assert_rewrite("tests.bot_stack", "tests.api_app")

from relay_settings import reload_settings  # noqa: E402
from tests.pg import create_database, drop_database  # noqa: E402

reload_settings()


@pytest.fixture(scope="session")
def prefect_server():
    """A real Prefect server (temporary database) for the whole session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield


@pytest.fixture
def relay_env(monkeypatch):
    """Change RELAY_* settings for one test: ``relay_env(CHUNK_TARGET_SECONDS=30)``."""

    def apply(**values: object):
        for key, value in values.items():
            monkeypatch.setenv(f"RELAY_{key}", str(value))
        return reload_settings()

    yield apply
    monkeypatch.undo()
    reload_settings()


@pytest.fixture(scope="session")
def state_dir() -> Path:
    return _STATE


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def database_url(request, tmp_path_factory):
    """The job store on SQLite and on the real PostgreSQL (a database made for the module)."""
    previous = os.environ["RELAY_DATABASE_URL"]
    name = None
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'relay.db'}"
    else:
        name, url = create_database()
    os.environ["RELAY_DATABASE_URL"] = url
    reload_settings()
    yield url
    os.environ["RELAY_DATABASE_URL"] = previous
    reload_settings()
    if name:
        from store.db import engine_for

        engine_for(url).dispose()
        drop_database(name)
