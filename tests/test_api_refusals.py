"""The REST API refuses what it cannot take, with the documented status and nothing kept:
tokens, unknown ids, over-long or oversize uploads, not media, bad JSON."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from flows.pool_tasks import dispatchers
from tests.api_app import AUTH, SAMPLE, upload
from tests.audio import video_without_sound

pytestmark = pytest.mark.usefixtures("prefect_server")
pytest_plugins = ["tests.api_app"]  # the app and its settings, as fixtures


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({}, "missing bearer token"),
        ({"Authorization": "Bearer nope"}, "wrong bearer token"),
        ({"Authorization": "Basic abc"}, "missing bearer token"),
    ],
)
def test_token_is_required(client, headers, message):
    response = client.get("/api/transcriptions", headers=headers)
    assert response.status_code == 401
    assert response.json()["error"] == "unauthorized"
    assert response.json()["message"].startswith(message)
    assert response.headers["www-authenticate"] == "Bearer"


def test_unknown_job_is_404(client):
    for path in ("/api/transcriptions/abc", "/api/transcriptions/abc/transcript"):
        response = client.get(path, headers=AUTH)
        assert response.status_code == 404
        assert response.json() == {"error": "not_found", "message": "no transcription job abc"}


def test_over_long_audio_is_413_with_duration_and_limit(settings):
    short_limit = settings.model_copy(update={"max_audio_seconds": 10.0})
    uploads = Path(settings.data_dir) / "uploads"
    before = set(uploads.iterdir()) if uploads.exists() else set()
    with TestClient(create_app(short_limit, dispatchers())) as small:
        response = upload(small, SAMPLE)
    assert response.status_code == 413
    body = response.json()
    assert body["error"] == "too_long"
    assert body["duration_seconds"] == pytest.approx(24.5, abs=0.5) and body["max_seconds"] == 10.0
    assert (set(uploads.iterdir()) if uploads.exists() else set()) == before  # nothing kept


def test_oversize_upload_is_refused_before_it_is_stored(settings):
    tiny_cap = settings.model_copy(update={"max_upload_bytes": 10_000})
    with TestClient(create_app(tiny_cap, dispatchers())) as small:
        response = upload(small, SAMPLE)
    assert response.status_code == 413
    assert response.json()["error"] == "upload_too_large" and response.json()["max_bytes"] == 10_000


def test_not_media_is_415_and_empty_is_422(client, tmp_path):
    text = tmp_path / "notes.wav"
    text.write_text("meeting notes, not sound\n" * 30)
    response = upload(client, text)
    assert response.status_code == 415
    assert response.json()["error"] == "not_media" and "notes.wav" in response.json()["message"]
    empty = tmp_path / "empty.mp3"
    empty.touch()
    response = upload(client, empty)
    assert response.status_code == 422 and response.json()["error"] == "empty"


def test_video_without_sound_is_422(client, tmp_path):
    """Media, so not 415, but nothing to transcribe (tests/test_intake.py has every refusal)."""
    path = video_without_sound(tmp_path / "mute.mp4")
    response = upload(client, path)
    assert response.status_code == 422 and response.json()["error"] == "no_audio"


def test_malformed_and_invalid_json(client):
    bad = client.post(
        "/api/transcriptions",
        headers={**AUTH, "content-type": "application/json"},
        content=b"{not json",
    )
    assert bad.status_code == 400 and bad.json()["error"] == "malformed_json"
    missing = client.post("/api/transcriptions", headers=AUTH, json={"language": "en"})
    assert missing.status_code == 422 and "path" in missing.json()["message"]
    options = client.post("/api/transcriptions", headers=AUTH, json={"path": "/x", "beam_size": 99})
    assert options.status_code == 422 and "beam_size" in options.json()["message"]
    other = client.post(
        "/api/transcriptions", headers={**AUTH, "content-type": "text/plain"}, content=b"hello"
    )
    assert other.status_code == 415
