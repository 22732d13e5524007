"""A completion callback end to end: the real API, a real Prefect server and serve process,
the bundled tiny.en transcribing real speech, and a receiver on 127.0.0.1 that checks the
signature and that the job had completed when the callback arrived."""

from __future__ import annotations

import os
import time

import pytest
from fastapi.testclient import TestClient
from standardwebhooks.webhooks import Webhook

from api.app import create_app
from flows.pool_tasks import dispatchers
from store import jobs
from tests.audio import DATA
from tests.callback_receiver import Received, receiver
from tests.environ import environment
from tests.test_api import serve_process  # noqa: F401 (the fixture, with this module's settings)
from tests.test_callbacks import SECRET

pytestmark = pytest.mark.usefixtures("prefect_server")
TOKEN = "callback-e2e-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def settings(tmp_path_factory):
    """A job store of its own, and callbacks on (to 127.0.0.1) in this process and in the
    serve process, which inherits the environment."""
    state = tmp_path_factory.mktemp("callbacks-e2e")
    values = {
        "RELAY_DATABASE_URL": f"sqlite:///{state / 'relay.db'}",
        "RELAY_DATA_DIR": str(state / "data"),
        "RELAY_API_TOKEN": TOKEN,
        "RELAY_CALLBACK_SIGNING_KEY": SECRET,
        "RELAY_CALLBACK_ALLOW_PRIVATE": "true",
    }
    with environment(values) as configured:
        yield configured


@pytest.mark.usefixtures("serve_process")
def test_the_callback_arrives_signed_once_the_job_has_completed(settings):
    assert os.environ["RELAY_CALLBACK_SIGNING_KEY"] == SECRET
    seen_status: list[str] = []

    def job_status_on_receipt(got: Received) -> None:
        job_id = Webhook(SECRET).verify(got.body, got.headers)["data"]["job_id"]
        seen_status.append(jobs.get_job(job_id).status)

    with TestClient(create_app(settings, dispatchers())) as client, receiver() as hook:
        hook.on_receipt = job_status_on_receipt
        with (DATA / "weather.mp3").open("rb") as handle:
            accepted = client.post(
                "/api/transcriptions",
                headers=AUTH,
                data={"callback_url": hook.url, "language": "en"},
                files={"file": ("weather.mp3", handle, "audio/mpeg")},
            )
        assert accepted.status_code == 202, accepted.text
        job_id = accepted.json()["job_id"]
        (got,) = hook.wait_for(1, timeout=240)
        event = Webhook(SECRET).verify(got.body, got.headers)
        assert event["type"] == "transcription.completed"
        assert event["data"]["job_id"] == job_id and event["data"]["language"] == "en"
        assert seen_status == ["completed"]  # the job's end was written before the POST
        deadline = time.monotonic() + 30
        while (shown := client.get(f"/api/transcriptions/{job_id}", headers=AUTH).json())[
            "callback"
        ]["status"] != "delivered":
            assert time.monotonic() < deadline, shown
            time.sleep(0.2)
        assert shown["status"] == "completed"
        assert shown["callback"]["webhook_id"] == got.headers["webhook-id"]
        transcript = client.get(f"/api/transcriptions/{job_id}/transcript", headers=AUTH).text
        assert "weather" in transcript.lower()
    assert len(hook.received) == 1
