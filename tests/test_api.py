"""The REST API through httpx: real app, real Prefect server and serve process, real database."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from uuid import uuid4

import pytest
from fastapi.testclient import TestClient
from prefect.client.orchestration import PrefectClient, get_client
from prefect.exceptions import ObjectNotFound
from prefect.settings import PREFECT_API_URL

from api.app import create_app
from flows.pool_tasks import dispatchers
from store import jobs, status
from store.models import JobStatus
from tasks.wer import word_error_rate
from tests.api_app import AUTH, SAMPLE, upload
from tests.audio import DATA, ROOT

pytestmark = pytest.mark.usefixtures("prefect_server")
pytest_plugins = ["tests.api_app"]  # the app and its settings, as fixtures


@pytest.fixture(scope="module")
def serve_process(settings, tmp_path_factory):
    """`python -m cli serve` against the test server: it runs what the API submits."""
    env = {
        **os.environ,
        "PREFECT_API_URL": PREFECT_API_URL.value(),
        "RELAY_DATABASE_URL": settings.database_url,
        "RELAY_DATA_DIR": settings.data_dir,
        "PREFECT_RUNNER_POLL_FREQUENCY": "1",
    }
    log = tmp_path_factory.mktemp("serve") / "serve.log"  # kept by pytest for post-mortems
    process = subprocess.Popen(
        [sys.executable, "-m", "cli", "serve"],
        cwd=ROOT,
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 60
    with get_client(sync_client=True) as prefect:
        while True:
            try:
                prefect.read_deployment_by_name(settings.transcribe.deployment)
                break
            except ObjectNotFound:
                assert process.poll() is None, "the serve process exited"
                assert time.monotonic() < deadline, "the deployment was never served"
                time.sleep(0.5)
    yield process
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def wait_for(client: TestClient, job_id: str, limit: float = 180.0) -> dict:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        body = client.get(f"/api/transcriptions/{job_id}", headers=AUTH).json()
        if body["status"] in ("completed", "failed", "cancelled"):
            return body
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} did not finish: {body}")


@pytest.mark.usefixtures("serve_process")
def test_upload_is_transcribed_end_to_end(client, settings):
    response = upload(client, SAMPLE, language="en")
    assert response.status_code == 202, response.text
    accepted = response.json()
    assert accepted["status"] == "queued" and accepted["flow_run_id"]
    assert accepted["estimated_seconds"] > 0 and accepted["duration_seconds"] == pytest.approx(
        24.5, abs=0.5
    )

    body = wait_for(client, accepted["job_id"])
    assert body["status"] == "completed", body
    assert body["progress_percent"] == 100.0
    assert body["chunks"]["done"] == body["chunks"]["total"] >= 1
    assert body["flow_run_id"] == accepted["flow_run_id"]
    assert body["flow_run_url"].endswith(f"/runs/flow-run/{accepted['flow_run_id']}")
    assert body["eta_seconds"] is None and body["language"] == "en"

    job = accepted["job_id"]
    txt = client.get(f"/api/transcriptions/{job}/transcript?format=txt", headers=AUTH)
    assert txt.status_code == 200 and txt.headers["content-type"].startswith("text/plain")
    assert word_error_rate((ROOT / "samples" / "meeting.txt").read_text(), txt.text) <= 0.15
    assert client.get(
        f"/api/transcriptions/{job}/transcript?format=vtt", headers=AUTH
    ).text.startswith("WEBVTT")
    assert (
        " --> " in client.get(f"/api/transcriptions/{job}/transcript?format=srt", headers=AUTH).text
    )
    data = client.get(f"/api/transcriptions/{job}/transcript?format=json", headers=AUTH).json()
    assert data["segments"] and data["language"] == "en"

    # The next submission's estimate comes from what was just measured.
    speed = status.throughput()
    assert speed.measured_jobs >= 1 and speed.realtime_factor != status.DEFAULT_REALTIME_FACTOR
    again = upload(client, DATA / "library.m4a").json()
    assert again["estimated_seconds"] == pytest.approx(
        speed.seconds_for(again["duration_seconds"]), abs=0.2
    )
    assert wait_for(client, again["job_id"])["status"] == "completed"

    deleted = client.delete(f"/api/transcriptions/{job}", headers=AUTH)
    assert deleted.json() == {"job_id": job, "status": "deleted"}
    assert client.get(f"/api/transcriptions/{job}", headers=AUTH).status_code == 404
    assert not (Path(settings.data_dir) / "jobs" / job).exists()
    assert not (Path(settings.data_dir) / "uploads" / job).exists()


@pytest.mark.usefixtures("serve_process")
def test_submit_by_path_inside_the_inbox(client, settings):
    inbox = Path(settings.data_dir) / "inbox"
    target = inbox / "weather.mp3"
    target.write_bytes((DATA / "weather.mp3").read_bytes())
    response = client.post("/api/transcriptions", headers=AUTH, json={"path": str(target)})
    assert response.status_code == 202, response.text
    assert wait_for(client, response.json()["job_id"])["status"] == "completed"


def test_cancel_a_queued_job_keeps_it(client):
    job = jobs.create_job("/nowhere.wav", "nowhere.wav", work_pool="asr-cpu", duration=5.0)
    response = client.post(f"/api/transcriptions/{job.id}/cancel", headers=AUTH)
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    assert jobs.get_job(job.id).status == JobStatus.CANCELLED
    again = client.post(f"/api/transcriptions/{job.id}/cancel", headers=AUTH)
    assert again.status_code == 200 and again.json()["status"] == "cancelled"


def test_cancelling_a_finished_job_is_409(client):
    job = jobs.create_job("/nowhere.wav", "nowhere.wav", work_pool="asr-cpu", duration=5.0)
    jobs.fail_job(job.id, "broken")
    response = client.post(f"/api/transcriptions/{job.id}/cancel", headers=AUTH)
    assert response.status_code == 409 and response.json()["error"] == "already_finished"
    assert jobs.get_job(job.id).status == JobStatus.FAILED


def test_deleting_a_queued_job_cancels_and_removes_it(client):
    job = jobs.create_job("/nowhere.wav", "nowhere.wav", work_pool="asr-cpu", duration=5.0)
    response = client.delete(f"/api/transcriptions/{job.id}", headers=AUTH)
    assert response.json() == {"job_id": job.id, "status": "deleted"}
    assert jobs.get_job(job.id) is None
    assert client.get(f"/api/transcriptions/{job.id}", headers=AUTH).status_code == 404


def test_transcript_of_an_unfinished_job_is_409(client):
    job = jobs.create_job("/nowhere.wav", "nowhere.wav", duration=60.0)
    response = client.get(f"/api/transcriptions/{job.id}/transcript", headers=AUTH)
    assert response.status_code == 409
    assert response.json()["error"] == "not_finished" and "queued" in response.json()["message"]
    status = client.get(f"/api/transcriptions/{job.id}", headers=AUTH).json()
    assert status["progress_percent"] == 0.0 and status["eta_seconds"] > 0


@pytest.mark.usefixtures("serve_process")  # the accepted upload is handed to it
def test_path_traversal_is_refused_or_neutralised(client, settings):
    outside = client.post(
        "/api/transcriptions",
        headers=AUTH,
        json={"path": f"{settings.data_dir}/inbox/../../../etc/passwd"},
    )
    assert outside.status_code == 403 and outside.json()["error"] == "path_not_allowed"
    relative = client.post("/api/transcriptions", headers=AUTH, json={"path": "../secret.wav"})
    assert relative.status_code == 422 and relative.json()["error"] == "invalid_request"
    assert "path" in relative.json()["message"]

    accepted = upload(client, SAMPLE, name="../../../../tmp/evil.ogg")
    assert accepted.status_code == 202
    job = jobs.get_job(accepted.json()["job_id"])
    stored = Path(job.source_path)
    assert stored.parent == Path(settings.data_dir) / "uploads" / job.id
    assert stored.name == "evil.ogg" and not Path("/tmp/evil.ogg").exists()


def test_listing_is_paginated_and_filtered(client):
    for i in range(5):
        jobs.create_job(f"/x/{i}.wav", f"{i}.wav")
    first = client.get("/api/transcriptions?limit=2", headers=AUTH).json()
    assert len(first["items"]) == 2 and first["next_cursor"]
    second = client.get(
        f"/api/transcriptions?limit=2&cursor={first['next_cursor']}", headers=AUTH
    ).json()
    assert not {i["job_id"] for i in first["items"]} & {i["job_id"] for i in second["items"]}
    queued = client.get("/api/transcriptions?status=queued&limit=200", headers=AUTH).json()
    assert queued["items"] and all(i["status"] == "queued" for i in queued["items"])
    bad = client.get("/api/transcriptions?cursor=garbage", headers=AUTH)
    assert bad.status_code == 422 and bad.json()["error"] == "invalid_request"
    assert "cursor" in bad.json()["message"]
    assert client.get("/api/transcriptions?status=bogus", headers=AUTH).status_code == 422


def test_health_and_queue(client):
    health = client.get("/api/health")
    assert health.status_code == 200
    assert health.json() == {"status": "ok", "database": "ok", "prefect": "ok"}
    queue = client.get("/api/queue", headers=AUTH).json()
    assert queue["queued"] >= 1 and queue["queued"] == sum(
        p["queued"] for p in queue["pools"].values()
    )


def test_openapi_document_lists_every_endpoint(client):
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]
    assert set(paths) >= {
        "/api/transcriptions",
        "/api/transcriptions/{job_id}",
        "/api/transcriptions/{job_id}/transcript",
        "/api/health",
        "/api/queue",
    }
    assert {"get", "post"} <= set(paths["/api/transcriptions"])
    assert {"get", "delete"} <= set(paths["/api/transcriptions/{job_id}"])
    assert "413" in paths["/api/transcriptions"]["post"]["responses"]


class RecordingDispatcher:
    """A pool's dispatcher that keeps the Prefect client each run was created on."""

    def __init__(self) -> None:
        self.clients: list[PrefectClient] = []
        self.jobs: list[object] = []

    async def adispatch(self, client: PrefectClient, **parameters: object) -> str:
        self.clients.append(client)
        self.jobs.append(parameters["job_id"])
        return str(uuid4())


def test_the_apps_prefect_client_is_shared_and_closed_when_the_app_shuts_down(settings):
    via_task_worker = settings.model_copy(update={"transcribe_via": "task-worker"})
    pool = RecordingDispatcher()
    with TestClient(create_app(via_task_worker, {"asr-cpu": pool})) as api:
        accepted = [upload(api, SAMPLE).json()["job_id"] for _ in range(2)]
        for job in accepted:  # cancelled, so no other test sees them queued
            assert api.delete(f"/api/transcriptions/{job}", headers=AUTH).status_code == 200
        assert pool.jobs == accepted
        first, second = pool.clients
        assert first is second  # one long-lived client for every request
        assert not first._client.is_closed
    assert first._client.is_closed  # closed by the app's shutdown, not left to the GC


def test_missing_deployment_is_503_and_the_job_is_not_left_queued(settings):
    no_pool = settings.transcribe.model_copy(update={"deployment": "transcribe/no-such-pool"})
    elsewhere = settings.model_copy(update={"transcribe": no_pool})
    with TestClient(create_app(elsewhere, dispatchers())) as other:
        response = upload(other, SAMPLE)
        assert response.status_code == 503
        body = response.json()
        assert body["error"] == "deployment_missing"
        assert "transcribe/no-such-pool" in body["message"]
        failed = other.get("/api/transcriptions?status=failed&limit=200", headers=AUTH).json()
    assert any("no-such-pool" in (job["error"] or "") for job in failed["items"])


def test_a_crashed_flow_run_fails_its_job(client, serve_process):
    """The process running a flow is killed: the on_crashed hook marks the job failed."""
    import psutil

    accepted = upload(client, SAMPLE).json()
    deadline = time.monotonic() + 120
    while (
        client.get(f"/api/transcriptions/{accepted['job_id']}", headers=AUTH).json()["status"]
        != "running"
    ):
        assert time.monotonic() < deadline, "the job never started"
        time.sleep(0.1)
    # Other tests' runs may still be going: kill the process running this job's flow run.
    [run_process] = [
        child
        for child in psutil.Process(serve_process.pid).children()
        if child.environ().get("PREFECT__FLOW_RUN_ID") == accepted["flow_run_id"]
    ]
    run_process.kill()

    body = wait_for(client, accepted["job_id"], limit=90)
    assert body["status"] == "failed"
    assert body["error"].startswith("the flow run crashed")


def test_progress_counts_the_split_then_the_audio_transcribed():
    from api.transcriptions import PREPARED_PERCENT, view
    from store.models import TranscriptionJob

    job = TranscriptionJob(
        source_name="a.wav", source_path="/a.wav", status=JobStatus.RUNNING, duration_seconds=600
    )
    assert view(job).progress_percent == 0.0  # probed, not split yet
    job.chunks_total = 6
    assert view(job).progress_percent == PREPARED_PERCENT
    job.audio_seconds_done = 300.0
    assert view(job).progress_percent == round(PREPARED_PERCENT + (100 - PREPARED_PERCENT) / 2, 1)
    assert view(job).audio_seconds_done == 300.0
    job.audio_seconds_done = 600.0
    assert view(job).progress_percent == 99.9  # 100 only once the transcript is stored
    job.status = JobStatus.COMPLETED
    assert view(job).progress_percent == 100.0
