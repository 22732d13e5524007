"""Idempotency-Key on the two POSTs: a retry gets the first answer and creates nothing."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from relay_settings import RelaySettings
from store import bot as bot_store
from store import idempotency, jobs, status
from store.idempotency import KeyState
from tests.audio import DATA

pytestmark = pytest.mark.usefixtures("prefect_server")
TOKEN = "idem-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class Recording:
    """A pool's dispatcher that counts the runs it was asked to create."""

    def __init__(self) -> None:
        self.runs: list[dict[str, object]] = []

    async def adispatch(self, client, **parameters: object) -> str:  # noqa: ARG002
        self.runs.append(parameters)
        return str(uuid.uuid4())


@pytest.fixture(scope="module")
def settings(database_url, tmp_path_factory) -> RelaySettings:
    data = tmp_path_factory.mktemp("idempotency")
    return RelaySettings(
        database_url=database_url,
        data_dir=str(data),
        api_token=TOKEN,
        transcribe_via="task-worker",
    )


@pytest.fixture
def app(settings):
    pools = {"asr-cpu": Recording(), "bot-chat": Recording()}
    with TestClient(create_app(settings, pools)) as client:
        yield client, pools


def _upload(client, path: Path, key: str | None):
    headers = {**AUTH, **({"Idempotency-Key": key} if key else {})}
    with path.open("rb") as handle:
        return client.post(
            "/api/transcriptions", headers=headers, files={"file": (path.name, handle)}
        )


def _uploads(settings: RelaySettings) -> set[str]:
    folder = Path(settings.data_dir) / "uploads"
    return {p.name for p in folder.iterdir()} if folder.exists() else set()


def test_the_same_upload_twice_with_one_key_makes_one_job(app, settings):
    client, pools = app
    key = uuid.uuid4().hex
    before = _uploads(settings)
    first = _upload(client, DATA / "weather.mp3", key)
    assert first.status_code == 202, first.text
    again = _upload(client, DATA / "weather.mp3", key)
    assert again.status_code == 202 and again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    job_id = first.json()["job_id"]
    assert [run["job_id"] for run in pools["asr-cpu"].runs] == [job_id]
    assert _uploads(settings) - before == {job_id}  # the retry's copy was removed
    assert jobs.get_job(job_id) is not None

    other = _upload(client, DATA / "library.m4a", key)
    assert other.status_code == 422 and other.json()["error"] == "idempotency_key_reused"
    assert _uploads(settings) - before == {job_id}
    assert len(pools["asr-cpu"].runs) == 1


def test_without_a_key_each_upload_is_a_job(app):
    client, pools = app
    ids = {_upload(client, DATA / "weather.mp3", None).json()["job_id"] for _ in range(2)}
    assert len(ids) == 2 and len(pools["asr-cpu"].runs) == 2


def test_a_refused_request_frees_its_key(app, tmp_path):
    client, pools = app
    key = uuid.uuid4().hex
    text = tmp_path / "notes.mp3"
    text.write_text("not audio at all\n" * 50)
    assert _upload(client, text, key).status_code == 415
    retried = _upload(client, DATA / "weather.mp3", key)  # fixed by the client, same key
    assert retried.status_code == 202 and "idempotent-replayed" not in retried.headers
    assert len(pools["asr-cpu"].runs) == 1


def _ask(client, key: str, user: str, prompt: str = "hello"):
    body = {"kind": "chat", "prompt": prompt, "user_id": user, "channel": "general"}
    return client.post("/api/bot/requests", headers={**AUTH, "Idempotency-Key": key}, json=body)


def test_a_retried_bot_request_is_queued_and_counted_once(app):
    client, pools = app
    user, key = f"u{uuid.uuid4().hex[:12]}", uuid.uuid4().hex
    first = _ask(client, key, user)
    assert first.status_code == 202, first.text
    again = _ask(client, key, user)
    assert again.status_code == 202 and again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    assert [run["request_id"] for run in pools["bot-chat"].runs] == [first.json()["request_id"]]
    assert bot_store.get_request(first.json()["request_id"]) is not None
    # Not counted twice: the same user's next request meets the cooldown of one request.
    refused = _ask(client, uuid.uuid4().hex, user, "again")
    assert refused.status_code == 429 and refused.json()["error"] == "cooldown"
    replayed = _ask(client, refused_key := uuid.uuid4().hex, user, "later")
    assert replayed.status_code == 429
    same = _ask(client, refused_key, user, "later")
    assert same.status_code == 429 and same.json() == replayed.json()
    assert same.headers["idempotent-replayed"] == "true" and same.headers["retry-after"]


def test_a_key_in_use_is_409_and_a_dead_holders_key_is_taken_over(settings):
    del settings  # the module's database is the process's
    key = uuid.uuid4().hex
    assert idempotency.begin("op", key, "a").state == KeyState.NEW
    assert idempotency.begin("op", key, "a").state == KeyState.IN_PROGRESS
    assert idempotency.begin("op", key, "b").state == KeyState.MISMATCH
    assert idempotency.begin("op", key, "a", stale_seconds=0).state == KeyState.NEW
    idempotency.record("op", key, 202, '{"ok": true}')
    answered = idempotency.begin("op", key, "a")
    assert (answered.state, answered.status_code, answered.body) == (
        KeyState.ANSWERED,
        202,
        '{"ok": true}',
    )
    assert idempotency.begin("other-op", key, "a").state == KeyState.NEW  # keys per operation
    assert idempotency.begin("op", key, "a", keep_seconds=0).state == KeyState.NEW  # forgotten
    assert status.list_jobs(None, 1, None) is not None
