"""``/transcribe`` from Discord end to end: signed interactions (real Ed25519) carrying an
attachment on the fake Discord's CDN, the API served by uvicorn (so its deferred answer
leaves before the download), a real ``python -m cli worker --pool asr-cpu`` with the real
model, the session Prefect server, the store on the real PostgreSQL; every answer is read
where Discord would get it (the fake's follow-ups and edits of ``@original``)."""

from __future__ import annotations

import contextvars
import itertools
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import uvicorn
import yaml

from api.app import create_app
from api.interaction_transcribe import _language
from flows.pool_tasks import dispatchers
from relay_settings import PROJECT_ROOT, RelaySettings, english_only
from store import callbacks, usage
from store.models import Callback, CallbackKind, CallbackStatus, JobStatus, TranscriptionJob
from tasks.discord_attachments import refused_host
from tasks.interaction_reply import FULL_TEXT_ATTACHED, INLINE_CHARS, follow_up_message
from tasks.wer import word_error_rate
from tests.audio import speech_mp3
from tests.discord_signing import APPLICATION_ID, DiscordSigner, command, encoded
from tests.environ import environment
from tests.fake_cdn import FakeCdn
from tests.fake_discord import FakeDiscord, WebhookRequest
from tests.pg import create_database, drop_database
from tests.worker_process import asr_cpu_worker

pytestmark = pytest.mark.usefixtures("prefect_server")
SAMPLE = PROJECT_ROOT / "samples" / "meeting.ogg"
REFERENCE = (PROJECT_ROOT / "samples" / "meeting.txt").read_text()
LIMIT_BYTES = 2_000_000
T = TypeVar("T")


@pytest.fixture(scope="module")
def signer() -> DiscordSigner:
    return DiscordSigner()


@pytest.fixture(scope="module")
def discord() -> Iterator[FakeDiscord]:
    with FakeDiscord() as fake:
        yield fake


@pytest.fixture(scope="module")
def cdn(discord) -> FakeCdn:
    return FakeCdn(discord)


@pytest.fixture(scope="module")
def settings(prefect_server, signer, discord, tmp_path_factory) -> Iterator[RelaySettings]:  # noqa: ARG001
    """The module's settings, in the environment (the worker inherits them): the fake's
    host allowed for attachments and follow-ups, 60 s of audio and 2 MB at most, progress
    edits every half second, a ten-minute /transcribe cooldown."""
    name, url = create_database()
    folder = tmp_path_factory.mktemp("transcribe")
    config = yaml.safe_load((PROJECT_ROOT / "bot.yaml").read_text())
    config["limits"]["transcribe"] = {
        "cooldown_seconds": 600,
        "per_user_daily": 50,
        "global_daily": 1000,
    }
    (folder / "bot.yaml").write_text(yaml.safe_dump(config))
    values = {
        "RELAY_DATABASE_URL": url,
        "RELAY_DATA_DIR": str(folder / "data"),
        "RELAY_BOT_CONFIG": str(folder / "bot.yaml"),
        "RELAY_SECRET_KEY": "transcribe-sealing-key",
        "RELAY_DISCORD_PUBLIC_KEY": signer.public_key,
        "RELAY_DISCORD_APPLICATION_ID": APPLICATION_ID,
        "RELAY_DISCORD_API_URL": discord.api_url,
        "RELAY_DISCORD_ATTACHMENT_HOSTS": f"cdn.discordapp.com,media.discordapp.net,{discord.host}",
        "RELAY_DISCORD_PROGRESS_SECONDS": "0.5",
        "RELAY_TRANSCRIBE_VIA": "task-worker",
        "RELAY_MAX_AUDIO_SECONDS": "60",
        "RELAY_MAX_UPLOAD_BYTES": str(LIMIT_BYTES),
    }
    with environment(values) as relay:
        yield relay
        from store.db import engine_for

        engine_for(url).dispose()
    drop_database(name)


@pytest.fixture(scope="module")
def worker(settings, tmp_path_factory) -> Iterator[Path]:  # noqa: ARG001 (its environment)
    """``python -m cli worker --pool asr-cpu`` with its own warm LocalCluster (one worker);
    its log file."""
    log = tmp_path_factory.mktemp("transcribe-worker") / "worker.log"
    with asr_cpu_worker(log, 2):
        yield log


@pytest.fixture(scope="module")
def api(settings) -> Iterator[str]:
    """The app under uvicorn on 127.0.0.1 (its background work runs after the answer is
    sent, as in production); its base URL."""
    app = create_app(settings, dispatchers())
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    # The thread sees the session's Prefect server settings (a context variable).
    thread = threading.Thread(target=contextvars.copy_context().run, args=(server.run,))
    thread.start()
    wait_for(lambda: server.started, 60, "uvicorn never started")
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=30)


def wait_for(found: Callable[[], T], limit: float, what: str) -> T:
    """``found()`` once it is truthy, polled until ``limit`` seconds have passed."""
    deadline = time.monotonic() + limit
    while not (value := found()):
        assert time.monotonic() < deadline, what
        time.sleep(0.1)
    return value


def post(api: str, signer: DiscordSigner, body: dict[str, Any]) -> httpx.Response:
    raw = encoded(body)
    return httpx.post(
        f"{api}/api/discord/interactions", content=raw, headers=signer.headers(raw), timeout=30
    )


def received(discord: FakeDiscord, token: str, method: str) -> list[WebhookRequest]:
    """What Relay sent the interaction's webhook: follow-ups (POST) or edits (PATCH)."""
    return [r for r in list(discord.requests) if r.token == token and r.method == method]


def _delivered(job_id: str) -> tuple[TranscriptionJob, Callback] | None:
    """The job and its Discord follow-up once the store says it was delivered."""
    pair = callbacks.job_and_callback(job_id)
    if pair is None or pair[1] is None or pair[1].status != CallbackStatus.DELIVERED:
        return None
    return pair[0], pair[1]


def _ephemeral(response: httpx.Response) -> str:
    answer = response.json()
    assert response.status_code == 200 and answer["type"] == 4, answer
    assert answer["data"]["flags"] == 64 and answer["data"]["allowed_mentions"] == {"parse": []}
    return str(answer["data"]["content"])


def test_a_file_is_transcribed_and_comes_back_as_text_and_files(api, signer, cdn, discord, worker):
    # The CDN answers after 3.5 s: Relay's deferred answer must not wait for it.
    attachment = cdn.attach(SAMPLE.read_bytes(), "meeting.ogg", delay=3.5)
    body = command("transcribe", {"language": "en"}, attachments={"file": attachment}, user="5001")
    token = body["token"]
    started = time.monotonic()
    response = post(api, signer, body)
    assert response.json() == {"type": 5}, response.text
    assert time.monotonic() - started < 3.0  # Discord's deadline for the first answer

    (follow_up,) = wait_for(lambda: received(discord, token, "POST"), 300, "no follow-up")
    assert attachment["id"] in cdn.downloads
    content = follow_up.payload["content"]
    assert content.startswith("📝 Transcript of `meeting.ogg` (0:24")
    assert word_error_rate(REFERENCE, content.split("\n", 1)[1]) <= 0.15
    assert follow_up.payload["allowed_mentions"] == {"parse": []}
    assert set(follow_up.files) == {"meeting.txt", "meeting.srt"}
    assert word_error_rate(REFERENCE, follow_up.files["meeting.txt"].decode()) <= 0.15
    assert re.match(
        r"1\n00:00:\d\d,\d{3} --> 00:00:\d\d,\d{3}\n", follow_up.files["meeting.srt"].decode()
    )

    edits = received(discord, token, "PATCH")
    assert {edit.message for edit in edits} == {"@original"}
    said = [edit.payload["content"] for edit in edits]
    assert said[-1].startswith("✅ Transcribed `meeting.ogg` (0:24")  # before the follow-up
    progress = [e for e in edits if e.payload["content"].startswith("⏳ Transcribing")]
    assert progress, said
    assert all(
        re.fullmatch(
            r"⏳ Transcribing `meeting\.ogg` \(0:24\.\d\): \d+ %\. Job `\w+`\.",
            e.payload["content"],
        )
        for e in progress
    )
    gaps = [b.received_at - a.received_at for a, b in itertools.pairwise(progress)]
    assert all(gap >= 0.45 for gap in gaps), gaps  # at most every RELAY_DISCORD_PROGRESS_SECONDS

    job_id = re.search(r"Job `(\w+)`", said[-1])[1]
    job, callback = wait_for(lambda: _delivered(job_id), 30, "the follow-up is not delivered")
    assert job.status == JobStatus.COMPLETED and job.language == "en"
    assert callback.kind == CallbackKind.DISCORD
    assert callback.url_shown == f"http://{discord.host}/api/v10/webhooks/{APPLICATION_ID}/***"
    assert token not in repr(job) + repr(callback)
    assert token not in worker.read_text()  # nor in the worker's log


def _warnings(discord: FakeDiscord, token: str) -> list[WebhookRequest]:
    """The edits of the interaction's message that say why a file was not taken."""
    edits = received(discord, token, "PATCH")
    return [e for e in edits if e.payload.get("content", "").startswith("⚠️")]


def test_a_file_over_the_duration_limit_is_refused_with_why_then_the_cooldown_holds(
    api, signer, cdn, discord, settings, tmp_path
):
    lecture = speech_mp3(tmp_path / "lecture.mp3", 75, tmp_path)
    attachment = cdn.attach(lecture.read_bytes(), "lecture.mp3", content_type="audio/mpeg")
    body = command("transcribe", attachments={"file": attachment}, user="5002")
    assert post(api, signer, body).json() == {"type": 5}
    (edit,) = wait_for(lambda: _warnings(discord, body["token"]), 60, "no answer")
    first, *_ = received(discord, body["token"], "PATCH")  # downloaded: said before the check
    assert first.payload["content"].startswith("⏳ `lecture.mp3` received: checking it")
    assert re.fullmatch(
        r"⚠️ Relay cannot transcribe `lecture\.mp3`: audio is (at least )?1:\d\d(\.\d)? long "
        r"\(\d+\.\d s\), over the limit of 1:00 \(60 s\)\.",
        edit.payload["content"],
    ), edit.payload["content"]
    assert received(discord, body["token"], "POST") == []
    # A refused file is not kept.
    assert list(Path(settings.data_dir).glob("uploads/*/lecture.mp3")) == []

    again = command("transcribe", attachments={"file": cdn.attach(b"x", "short.ogg")}, user="5002")
    assert re.fullmatch(
        r"You can send another transcribe request in \d+ s\. Try again <t:\d+:R>\.",
        _ephemeral(post(api, signer, again)),
    )


@pytest.mark.parametrize(
    ("user", "url", "host"),
    [
        ("5101", "https://files.example.net/attachments/1/2/a.ogg", "files.example.net"),
        (
            "5102",
            "https://cdn.discordapp.com.example.net/a/a.ogg",
            "cdn.discordapp.com.example.net",
        ),
        ("5103", "http://cdn.discordapp.com/attachments/1/2/a.ogg", "cdn.discordapp.com"),
        ("5104", "http://127.0.0.1:9/attachments/1/2/a.ogg", "127.0.0.1:9"),
    ],
)
def test_an_attachment_on_another_host_is_refused_at_once_naming_it(
    api, signer, cdn, user, url, host
):
    attachment = {**cdn.attach(SAMPLE.read_bytes(), "a.ogg"), "url": url}
    answer = _ephemeral(
        post(api, signer, command("transcribe", attachments={"file": attachment}, user=user))
    )
    assert answer.startswith(f"Relay does not download files from {host}: ")
    assert attachment["id"] not in cdn.downloads
    assert usage.used_today(f"user:transcribe:{user}") == 0  # refused before it counted


@pytest.mark.parametrize(
    ("language", "needle"),
    [
        ("fr", "Relay's speech model (tiny.en) transcribes English only, so it cannot take fr"),
        ("French", "`French` is not a language code"),
    ],
)
def test_a_language_the_model_cannot_do_is_refused_at_once(api, signer, cdn, language, needle):
    attachment = cdn.attach(SAMPLE.read_bytes(), "meeting.ogg")
    body = command(
        "transcribe", {"language": language}, attachments={"file": attachment}, user="5004"
    )
    assert needle in _ephemeral(post(api, signer, body))
    assert attachment["id"] not in cdn.downloads


def test_a_file_over_the_size_limit_is_refused_as_declared_or_as_it_arrives(
    api, signer, cdn, discord, settings
):
    big = cdn.attach(b"x" * 10, "big.ogg", declared_size=LIMIT_BYTES + 1)
    answer = _ephemeral(
        post(api, signer, command("transcribe", attachments={"file": big}, user="5005"))
    )
    assert answer == (
        "Relay cannot transcribe `big.ogg`: the file is 2,000,001 bytes, over the limit of "
        "2,000,000 bytes (RELAY_MAX_UPLOAD_BYTES)."
    )
    assert big["id"] not in cdn.downloads

    # It says 1 kB and streams more, without a length: the download stops at the limit.
    liar = cdn.attach(
        os.urandom(LIMIT_BYTES + 300_000), "small.ogg", declared_size=1000, chunked=True
    )
    body = command("transcribe", attachments={"file": liar}, user="5006")
    assert post(api, signer, body).json() == {"type": 5}
    (edit,) = wait_for(lambda: _warnings(discord, body["token"]), 60, "no answer")
    assert edit.payload["content"] == (
        "⚠️ Relay cannot transcribe `small.ogg`: the file is over the limit of 2,000,000 bytes "
        "(RELAY_MAX_UPLOAD_BYTES)."
    )
    assert list(Path(settings.data_dir).glob("uploads/*/small.ogg")) == []


def test_english_only_models_and_the_languages_they_take():
    assert english_only("tiny.en") and english_only("/models/faster-whisper-small.en/")
    assert english_only("distil-large-v3") and not english_only("large-v3")
    assert _language("fr", "small") == ("fr", None)
    assert _language(" EN ", "tiny.en") == ("en", None)
    assert _language(None, "tiny.en") == (None, None)


def test_only_https_on_an_allowed_host_or_an_allowed_host_and_port_is_downloaded():
    allowed = ("cdn.discordapp.com", "127.0.0.1:8080")
    assert refused_host("https://cdn.discordapp.com/attachments/1/2/a.ogg?ex=1", allowed) is None
    assert refused_host("https://cdn.discordapp.com:443/a.ogg", allowed) is None
    assert refused_host("http://127.0.0.1:8080/a.ogg", allowed) is None
    assert (
        refused_host("https://cdn.discordapp.com:8443/a.ogg", allowed) == "cdn.discordapp.com:8443"
    )
    assert refused_host("ftp://cdn.discordapp.com/a.ogg", allowed) == "cdn.discordapp.com"
    assert refused_host("https://user@cdn.discordapp.com/a.ogg", allowed) == "cdn.discordapp.com"


def test_a_long_transcript_is_cut_inline_and_attached_whole(tmp_path):
    text = "".join(f"Sentence number {n} of a long meeting.\n" for n in range(200))
    (tmp_path / "transcript.txt").write_text(text)
    (tmp_path / "transcript.srt").write_text("1\n00:00:00,000 --> 00:00:02,000\nSentence\n")
    job = TranscriptionJob(
        id="a" * 32,
        source_name="all hands.ogg",
        source_path="/x",
        status=JobStatus.COMPLETED,
        duration_seconds=3725.0,
        language="en",
        output_dir=str(tmp_path),
    )
    message = follow_up_message(job)
    head, inline = message.content.split("\n", 1)
    assert head == "📝 Transcript of `all hands.ogg` (1:02:05, en):"
    assert inline.endswith(FULL_TEXT_ATTACHED) and len(inline) <= INLINE_CHARS + 30
    assert inline.startswith("Sentence number 0 of a long meeting. Sentence number 1")
    assert [(f.name, f.read()) for f in message.files] == [
        ("all_hands.txt", text.encode()),
        ("all_hands.srt", (tmp_path / "transcript.srt").read_bytes()),
    ]
    failed = job.model_copy(update={"status": JobStatus.FAILED, "error": "3 of 3 chunks failed"})
    assert follow_up_message(failed).content == (
        "⚠️ Relay could not transcribe `all hands.ogg`: 3 of 3 chunks failed"
    )
    assert follow_up_message(failed).files == ()
