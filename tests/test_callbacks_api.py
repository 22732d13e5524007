"""Completion callbacks through the REST API: the intake check, the job's GET, the OpenAPI
``callbacks``; work is handed to recording dispatchers and ended here as a worker would."""

from __future__ import annotations

import time
from uuid import uuid4

import pytest
from fastapi.testclient import TestClient
from standardwebhooks.webhooks import Webhook

from api.app import create_app
from store import bot as requests
from store import jobs
from store.models import BotRequestStatus, CallbackSubject
from tasks.callbacks import deliver_due, deliver_now
from tests.audio import ROOT
from tests.callback_receiver import receiver
from tests.test_callbacks import SECRET

TOKEN = "callback-api-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SAMPLE = ROOT / "samples" / "meeting.ogg"


class RecordingDispatcher:
    """A pool's dispatcher that records what it was given instead of creating a task run."""

    def __init__(self) -> None:
        self.runs: list[dict[str, object]] = []

    async def adispatch(self, client: object, **parameters: object) -> str:  # noqa: ARG002
        self.runs.append(parameters)
        return str(uuid4())


@pytest.fixture
def api(database_url, tmp_path, relay_env):
    """The app with callbacks on (to 127.0.0.1 only when a test allows private addresses),
    handing work to recording dispatchers; its settings are the process's too (the
    sender reads them)."""

    def start(**extra: str):
        values = {
            "DATABASE_URL": database_url,
            "DATA_DIR": str(tmp_path),
            "API_TOKEN": TOKEN,
            "TRANSCRIBE_VIA": "task-worker",
            "CALLBACK_SIGNING_KEY": SECRET,
            "CALLBACK_INLINE_ATTEMPTS": "1",
            "CALLBACK_BACKOFF_SECONDS": "0.05",
        }
        settings = relay_env(**{**values, **extra})
        pools = {pool: RecordingDispatcher() for pool in ("asr-cpu", "bot-chat", "bot-media")}
        app = create_app(settings, pools)
        client = TestClient(app)
        client.__enter__()
        app.state.prefect_client = object()  # the dispatchers need none
        opened.append(client)
        return client, pools

    opened: list[TestClient] = []
    yield start
    for client in opened:
        client.__exit__(None, None, None)


def upload(client: TestClient, **fields: str):
    with SAMPLE.open("rb") as handle:
        files = {"file": ("meeting.ogg", handle, "audio/ogg")}
        return client.post("/api/transcriptions", headers=AUTH, data=fields, files=files)


def ask_bot(client: TestClient, **fields: str):
    body = {"kind": "chat", "prompt": "hello", "user_id": uuid4().hex[:12], "channel": "chat-x"}
    return client.post("/api/bot/requests", headers=AUTH, json={**body, **fields})


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "169.254.169.254", "[::1]"])
def test_a_private_callback_url_is_refused_at_intake(api, host):
    client, pools = api()
    url = f"http://{host}:9/hook"
    for response in (upload(client, callback_url=url), ask_bot(client, callback_url=url)):
        assert response.status_code == 422, response.text
        body = response.json()
        assert body["error"] == "callback_not_allowed" and body["reason"] == "private_address"
        assert "RELAY_CALLBACK_ALLOW_PRIVATE" in body["message"]
    assert all(not pool.runs for pool in pools.values())


def test_without_a_signing_key_a_callback_url_is_refused(api):
    client, _ = api(CALLBACK_SIGNING_KEY="", CALLBACK_ALLOW_PRIVATE="true")
    response = upload(client, callback_url="http://127.0.0.1:9/hook")
    assert response.status_code == 422
    assert response.json()["reason"] == "no_signing_key"
    assert upload(client).status_code == 202  # no callback asked: accepted as before


def test_the_jobs_get_follows_its_callback_and_a_failing_one_never_fails_the_job(api):
    # A retry due in 1 s: long enough for the reads below to see it waiting.
    client, pools = api(CALLBACK_ALLOW_PRIVATE="true", CALLBACK_BACKOFF_SECONDS="1")
    with receiver() as hook:
        hook.script = [503]
        accepted = upload(client, callback_url=hook.url)
        assert accepted.status_code == 202, accepted.text
        job_id = accepted.json()["job_id"]
        shown = client.get(f"/api/transcriptions/{job_id}", headers=AUTH).json()
        assert shown["callback"]["status"] == "waiting"
        assert shown["callback"]["url"] == f"http://127.0.0.1:{hook.port}/hooks/relay"
        assert "receiver-secret" not in str(shown)

        (run,) = pools["asr-cpu"].runs  # the worker the job was handed to ends it
        assert jobs.complete_job(job_id, "en", "tiny.en", token=str(run["token"]))
        deliver_now(CallbackSubject.TRANSCRIPTION, job_id)
        shown = client.get(f"/api/transcriptions/{job_id}", headers=AUTH).json()
        assert shown["status"] == "completed"
        callback = shown["callback"]
        assert callback["status"] == "retrying" and callback["attempts"] == 1
        assert callback["last_error"] == "answered 503" and callback["next_attempt_at"]

        assert deliver_now(CallbackSubject.TRANSCRIPTION, job_id) is None  # not due yet
        deadline = time.monotonic() + 10
        while callback["status"] != "delivered":
            assert time.monotonic() < deadline, callback
            deliver_due()
            time.sleep(0.1)
            callback = client.get(f"/api/transcriptions/{job_id}", headers=AUTH).json()["callback"]
        first, second = hook.wait_for(2)
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == callback["webhook_id"]
    assert Webhook(SECRET).verify(second.body, second.headers)["data"]["job_id"] == job_id
    listed = client.get("/api/transcriptions?limit=200", headers=AUTH).json()["items"]
    assert next(j for j in listed if j["job_id"] == job_id)["callback"]["status"] == "delivered"


def test_cancelling_through_the_api_calls_back(api):
    client, _ = api(CALLBACK_ALLOW_PRIVATE="true")
    with receiver() as hook:
        job_id = upload(client, callback_url=hook.url).json()["job_id"]
        assert client.post(f"/api/transcriptions/{job_id}/cancel", headers=AUTH).status_code == 200
        (got,) = hook.wait_for(1)
    assert Webhook(SECRET).verify(got.body, got.headers)["type"] == "transcription.cancelled"


def test_a_bot_request_calls_back_when_its_worker_finishes_it(api):
    client, pools = api(CALLBACK_ALLOW_PRIVATE="true")
    with receiver() as hook:
        accepted = ask_bot(client, callback_url=hook.url)
        assert accepted.status_code == 202, accepted.text
        request_id = accepted.json()["request_id"]
        assert pools[accepted.json()["pool"]].runs == [{"request_id": request_id}]
        shown = client.get(f"/api/bot/requests/{request_id}", headers=AUTH).json()
        assert shown["callback"]["status"] == "waiting"

        request, lease = requests.claim_request(request_id, "test-worker")
        requests.finish_request(
            request.id, status=BotRequestStatus.COMPLETED, lease=lease, answer_text="hi there"
        )
        deliver_now(CallbackSubject.BOT_REQUEST, request_id)
        (got,) = hook.wait_for(1)
    event = Webhook(SECRET).verify(got.body, got.headers)
    assert event["type"] == "bot_request.completed"
    assert event["data"]["answer_text"] == "hi there"
    shown = client.get(f"/api/bot/requests/{request_id}", headers=AUTH).json()
    assert shown["callback"]["status"] == "delivered" and shown["callback"]["delivered_at"]


def test_the_openapi_document_describes_the_callback(api):
    client, _ = api()
    document = client.get("/openapi.json").json()
    for path in ("/api/transcriptions", "/api/bot/requests"):
        (callback,) = document["paths"][path]["post"]["callbacks"].values()
        sent = callback["{$request.body#/callback_url}"]["post"]
        headers = {p["name"] for p in sent["parameters"] if p["in"] == "header"}
        assert headers == {"webhook-id", "webhook-timestamp", "webhook-signature"}
        assert sent["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
            "/CallbackEvent"
        )
    url = document["components"]["schemas"]["BotRequestIn"]["properties"]["callback_url"]
    assert {"type": "string", "maxLength": 2048, "format": "uri"} in url["anyOf"]
    view = document["components"]["schemas"]["JobStatusView"]["properties"]["callback"]
    assert {"$ref": "#/components/schemas/CallbackView"} in view["anyOf"]
