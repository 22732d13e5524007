"""Fixtures shared by the REST API's test modules: the app on the real store."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from flows.pool_tasks import dispatchers
from relay_settings import RelaySettings
from tests.audio import ROOT

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SAMPLE = ROOT / "samples" / "meeting.ogg"


@pytest.fixture(scope="module")
def settings(database_url, tmp_path_factory) -> RelaySettings:
    data = tmp_path_factory.mktemp("api-data")
    (data / "inbox").mkdir()
    return RelaySettings(database_url=database_url, data_dir=str(data), api_token=TOKEN)


@pytest.fixture(scope="module")
def client(settings):
    with TestClient(create_app(settings, dispatchers())) as test_client:
        yield test_client


def upload(client: TestClient, path: Path, name: str | None = None, **fields: str):
    with path.open("rb") as handle:
        return client.post(
            "/api/transcriptions",
            headers=AUTH,
            data=fields,
            files={"file": (name or path.name, handle, "application/octet-stream")},
        )
