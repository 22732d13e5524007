"""Bad media is refused at intake: its status and a message naming the problem; the upload is
not kept and no job exists. The app is the real one, the files real media made here."""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from pathlib import Path
from uuid import uuid4

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from relay_settings import RelaySettings
from tests.audio import speech_mp3, video_without_sound

pytestmark = pytest.mark.usefixtures("prefect_server")
TOKEN = "intake-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class RecordingPool:
    """The pool's dispatcher: records what it is handed, runs nothing."""

    def __init__(self) -> None:
        self.jobs: list[object] = []

    async def adispatch(self, _client: object, **parameters: object) -> str:
        self.jobs.append(parameters["job_id"])
        return str(uuid4())


@pytest.fixture(scope="module")
def settings(tmp_path_factory) -> RelaySettings:
    data = tmp_path_factory.mktemp("intake-data")
    (data / "inbox").mkdir()
    return RelaySettings(data_dir=str(data), api_token=TOKEN, transcribe_via="task-worker")


@pytest.fixture(scope="module")
def pool() -> RecordingPool:
    return RecordingPool()


@pytest.fixture(scope="module")
def client(settings, pool):
    with TestClient(create_app(settings, {"asr-cpu": pool})) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def meeting(tmp_path_factory) -> Path:
    """Three minutes of speech as a real 64 kbit/s MP3 whose Xing frame states its length."""
    folder = tmp_path_factory.mktemp("meeting")
    return speech_mp3(folder / "meeting.mp3", 180, folder)


def _cut(mp3: bytes, _: Path) -> bytes:
    return mp3[: len(mp3) // 4]


def _garbage_after_its_start(mp3: bytes, _: Path) -> bytes:
    return mp3[: len(mp3) // 4] + random.Random(1).randbytes(len(mp3) - len(mp3) // 4)


def _damaged_middle(mp3: bytes, _: Path) -> bytes:
    data = bytearray(mp3)
    data[len(data) // 3 : len(data) // 2] = random.Random(2).randbytes(
        len(data) // 2 - len(data) // 3
    )
    return bytes(data)


def _video_only(_: bytes, folder: Path) -> bytes:
    return video_without_sound(folder / "film.mp4", seconds=2).read_bytes()


def _text(_: bytes, __: Path) -> bytes:
    return b"Minutes of the quarterly review: sales grew in every region.\n" * 40


def _unknown_container(_: bytes, __: Path) -> bytes:
    return b"RLYPACK\x00\x01" + random.Random(3).randbytes(30_000)


def _nothing(_: bytes, __: Path) -> bytes:
    return b""


REFUSALS: list[tuple[str, Callable[[bytes, Path], bytes], int, str, str]] = [
    (
        "meeting.mp3",
        _cut,
        422,
        "truncated",
        r"^meeting\.mp3: the audio stops decoding at 0:44 of a declared 3:00 — the file is "
        r"truncated or corrupt$",
    ),
    (
        "meeting.mp3",
        _garbage_after_its_start,
        422,
        "truncated",
        r"^meeting\.mp3: the audio stops decoding at 0:44 of a declared 3:00 \(.+\) — the file "
        r"is truncated or corrupt$",
    ),
    (
        "meeting.mp3",
        _damaged_middle,
        422,
        "undecodable",
        r"^meeting\.mp3: the audio decodes to 2:\d\d of a declared 3:00; \d+ packets from "
        r"(0:5\d|1:00) on are damaged \(.+\) — the file is corrupt$",
    ),
    ("film.mp4", _video_only, 422, "no_audio", r"^film\.mp4: the file has no audio stream$"),
    ("notes.mp3", _text, 415, "not_media", r"^notes\.mp3: not a readable audio or video file"),
    ("archive.rly", _unknown_container, 415, "not_media", r"^archive\.rly: not a readable audio"),
    ("empty.mp3", _nothing, 422, "empty", r"^empty\.mp3: file is empty \(0 bytes\)$"),
]


def _upload(client: TestClient, name: str, content: bytes):
    files = {"file": (name, content, "application/octet-stream")}
    return client.post("/api/transcriptions", headers=AUTH, files=files)


def _job_ids(client: TestClient) -> set[str]:
    listing = client.get("/api/transcriptions?limit=200", headers=AUTH).json()
    return {job["job_id"] for job in listing["items"]}


def _stored(settings: RelaySettings) -> set[Path]:
    uploads = Path(settings.data_dir) / "uploads"
    return set(uploads.rglob("*")) if uploads.exists() else set()


@pytest.mark.parametrize(
    ("name", "make", "status", "code", "message"),
    REFUSALS,
    ids=["cut", "garbage-after-start", "damaged-middle", "no-audio", "text", "unknown", "empty"],
)
def test_bad_media_is_refused_at_intake_and_nothing_is_kept(
    client, settings, pool, meeting, tmp_path, name, make, status, code, message
):
    jobs_before, stored_before, handed = _job_ids(client), _stored(settings), len(pool.jobs)
    response = _upload(client, name, make(meeting.read_bytes(), tmp_path))
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == code
    assert re.search(message, body["message"]), body["message"]
    assert _stored(settings) == stored_before  # the upload's folder is gone
    assert _job_ids(client) == jobs_before and len(pool.jobs) == handed  # no job, no run


def test_a_path_submission_gets_the_same_check(client, settings, pool, meeting):
    inbox = Path(settings.data_dir) / "inbox"
    path = inbox / "cut-short.mp3"
    path.write_bytes(_cut(meeting.read_bytes(), inbox))
    jobs_before, handed = _job_ids(client), len(pool.jobs)
    response = client.post("/api/transcriptions", headers=AUTH, json={"path": str(path)})
    assert response.status_code == 422
    assert response.json()["error"] == "truncated"
    assert "cut-short.mp3: the audio stops decoding at 0:44" in response.json()["message"]
    assert _job_ids(client) == jobs_before and len(pool.jobs) == handed
    assert path.exists()  # the caller's own file is left alone


def test_whole_media_is_still_accepted(client, settings, pool, meeting):
    response = _upload(client, "meeting.mp3", meeting.read_bytes())
    assert response.status_code == 202, response.text
    accepted = response.json()
    assert accepted["duration_seconds"] == pytest.approx(180, abs=0.1)
    assert pool.jobs[-1] == accepted["job_id"] and accepted["job_id"] in _job_ids(client)
    stored = Path(settings.data_dir) / "uploads" / accepted["job_id"] / "meeting.mp3"
    assert stored.read_bytes() == meeting.read_bytes()
    cancelled = client.delete(f"/api/transcriptions/{accepted['job_id']}", headers=AUTH)
    assert cancelled.status_code == 200  # no other test sees it queued


def test_the_operation_documents_each_refusal(client):
    responses = client.get("/openapi.json").json()["paths"]["/api/transcriptions"]["post"][
        "responses"
    ]
    assert {"202", "413", "415", "422"} <= set(responses)
    assert "not_media" in responses["415"]["description"]
    for code in ("empty", "no_audio", "truncated", "undecodable"):
        assert code in responses["422"]["description"]
