"""The transcription flow announces itself on Discord, and a broken Discord never fails a job."""

from __future__ import annotations

import pytest

from blocks.discord import DiscordDestination
from flows.transcribe import TranscriptionOutcome, transcribe
from store import jobs
from store.models import JobStatus
from tasks.wer import word_error_rate
from tests.audio import DATA
from tests.fake_discord import FakeDiscord

pytestmark = pytest.mark.usefixtures("prefect_server")
TOKEN = "flow-secret-token"


@pytest.fixture
def discord(monkeypatch, relay_env):
    """A fake Discord saved as the destination block the flow reads."""
    with FakeDiscord(retry_after=0.2, hang_seconds=2.0) as fake:
        monkeypatch.setenv("RELAY_WEBHOOK_ALLOWED_HOSTS", fake.host)
        relay_env(DISCORD_BLOCK="flow-test-discord", PUBLIC_URL="https://relay.example")
        DiscordDestination(
            webhook_url=fake.url_for(token=TOKEN), events=["started", "completed", "failed"]
        ).save("flow-test-discord", overwrite=True)
        yield fake


def test_started_and_completed_are_posted_with_the_transcript(discord):
    state = transcribe(str(DATA / "weather.mp3"), return_state=True)

    assert state.is_completed(), state.message
    outcome = state.result()
    assert isinstance(outcome, TranscriptionOutcome)
    started, finished = discord.requests
    assert started.payload["embeds"][0]["title"] == "Transcription started: weather.mp3"
    embed = finished.payload["embeds"][0]
    assert embed["title"] == "Transcription completed: weather.mp3"
    assert embed["url"] == f"https://relay.example/api/transcriptions/{outcome.job_id}"
    fields = {f["name"]: f["value"] for f in embed["fields"]}
    assert fields["Language"] == "en" and float(fields["Real-time factor"]) > 0
    # The notice carries the job's transcript itself (short enough to be the message text).
    assert finished.payload["content"] == outcome.text
    # A transcript of the speech. Not tighter: on an AVX2-only CPU, one thread decodes this
    # 16-s window without its last sentence (0.27 here; 0.06 elsewhere): docs/benchmarks.md.
    assert word_error_rate((DATA / "weather.txt").read_text(), outcome.text) < 0.35
    assert jobs.get_job(outcome.job_id).notification_error is None


def test_bad_input_posts_the_failure_reason(discord, tmp_path):
    empty = tmp_path / "empty.wav"
    empty.touch()

    state = transcribe(str(empty), return_state=True)

    assert state.is_failed()
    [failed] = discord.requests
    embed = failed.payload["embeds"][0]
    assert embed["title"] == "Transcription failed: empty.wav"
    assert "empty" in embed["description"] and embed["description"] == state.message


def test_undeliverable_notification_is_recorded_and_the_job_completes(discord):
    discord.script(*["500"] * 20)

    state = transcribe(str(DATA / "weather.mp3"), return_state=True)

    assert state.is_completed(), state.message
    outcome = state.result()
    assert isinstance(outcome, TranscriptionOutcome)
    job = jobs.get_job(outcome.job_id)
    assert job.status == JobStatus.COMPLETED
    assert job.notification_error.startswith("completed: gave up after 4 attempts: HTTP 500")
    assert TOKEN not in job.notification_error
