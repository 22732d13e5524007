"""``/status JOB`` and ``/stats`` through the signed interactions endpoint: a job's status as
the REST API shows it, the statistics embed from a store filled here (bot requests, a key's
use and quota, a worker's heartbeat), refused to members who may not manage the server and
outside a server. Real Ed25519 keys, a real Prefect server, the store on SQLite and
PostgreSQL."""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.interaction_status import status_text
from api.reads import read, within
from api.transcriptions import view
from blocks.keys import ApiKeyPool
from flows.pool_tasks import dispatchers
from relay_commands import ADMINISTRATOR, MANAGE_GUILD
from store import bot, job_chunks, jobs, usage, workers
from store.models import BotRequestStatus, new_id
from store.workers import WorkerKind
from tests.discord_signing import APPLICATION_ID, DiscordSigner, command, signed_post
from tests.environ import environment

pytestmark = pytest.mark.usefixtures("prefect_server")
GUILD = "700000000000000001"
KEY = "adminstats"  # a provider key name no other module uses
SEND_MESSAGES, MANAGE_MESSAGES = 1 << 11, 1 << 13
EPHEMERAL = 64


@pytest.fixture(scope="module")
def signer() -> DiscordSigner:
    return DiscordSigner()


@pytest.fixture(scope="module")
def discord_env(database_url, signer, tmp_path_factory) -> Iterator[dict[str, str]]:
    folder = tmp_path_factory.mktemp("interactions-admin")
    values = {
        "RELAY_DATABASE_URL": database_url,
        "RELAY_DATA_DIR": str(folder / "data"),
        "RELAY_SECRET_KEY": "interactions-admin-sealing-key",
        "RELAY_DISCORD_PUBLIC_KEY": signer.public_key,
        "RELAY_DISCORD_APPLICATION_ID": APPLICATION_ID,
        "RELAY_DISCORD_API_URL": "http://127.0.0.1:9/api/v10",
        "RELAY_DISCORD_GUILDS": GUILD,
    }
    with environment(values):
        yield values


def _client(**changes: str) -> TestClient:
    with environment(changes) as settings:
        return TestClient(create_app(settings, dispatchers()))


@pytest.fixture(scope="module")
def api(discord_env) -> Iterator[TestClient]:  # noqa: ARG001 (its settings)
    with _client() as client:
        yield client


def _post(api: TestClient, signer: DiscordSigner, body: dict) -> dict:
    response = signed_post(api, signer, body)
    assert response.status_code == 200, response.text
    return response.json()


def _private(answer: dict) -> dict:
    """The data of an answer shown now (type 4), only to the user, pinging nobody."""
    assert answer["type"] == 4 and answer["data"]["flags"] == EPHEMERAL, answer
    assert answer["data"]["allowed_mentions"] == {"parse": []}
    return answer["data"]


# /stats


@pytest.fixture(scope="module")
def filled(discord_env) -> None:  # noqa: ARG001 (its store)
    """Figures for the statistics: 4 bot requests of 3 users, 3 calls on a key with a daily
    quota of 100 (saved as a key pool block in Prefect), a task worker beating."""
    for user, kind, status in [
        ("5001", "chat", BotRequestStatus.COMPLETED),
        ("5002", "chat", BotRequestStatus.COMPLETED),
        ("5003", "chat", BotRequestStatus.FAILED),
        ("5001", "image", BotRequestStatus.REFUSED),
    ]:
        bot.create_request(
            kind=kind,
            prompt="p",
            user_id=user,
            channel="c",
            route="r",
            pool="bot-chat",
            status=status,
        )
    keys = [{"name": KEY, "requests_per_minute": 60, "requests_per_day": 100}]
    pool = ApiKeyPool(
        provider="openai", base_url="http://127.0.0.1:9", keys=keys, secrets={KEY: "sk-admin"}
    )
    pool.save("relay-keys-adminstats", overwrite=True)
    for _ in range(3):
        assert usage.spend_key_day("openai", KEY, 100)
    workers.beat(workers.identity(WorkerKind.TASK_WORKER, "bot-chat", 30.0))


@pytest.mark.parametrize("permissions", [0, SEND_MESSAGES | MANAGE_MESSAGES])
def test_stats_is_refused_to_a_member_who_may_not_manage_the_server(api, signer, permissions):
    body = command("stats", user="5101", permissions=permissions)
    data = _private(_post(api, signer, body))
    assert data["content"] == (
        "/stats is for members who may manage this server "
        "(Manage Server or Administrator permission)."
    )
    assert "embeds" not in data


@pytest.mark.usefixtures("discord_env")
def test_stats_is_refused_outside_a_server_even_where_direct_messages_are_answered(signer):
    with _client(RELAY_DISCORD_ALLOW_DMS="true") as client:
        data = _private(_post(client, signer, command("stats", user="5102", guild=None)))
    assert data["content"] == "/stats is answered in a server only, to members who may manage it."
    assert "embeds" not in data


def test_stats_in_a_direct_message_is_refused_by_the_gate_when_dms_are_off(api, signer):
    data = _private(_post(api, signer, command("stats", user="5103", guild=None)))
    assert data["content"].startswith("Relay does not answer in direct messages")


@pytest.mark.usefixtures("filled")
@pytest.mark.parametrize(
    "permissions", [MANAGE_GUILD, ADMINISTRATOR, SEND_MESSAGES | MANAGE_GUILD | MANAGE_MESSAGES]
)
def test_stats_shows_the_store_figures_to_a_member_who_may_manage_the_server(
    api, signer, permissions
):
    started = time.monotonic()
    answer = _post(api, signer, command("stats", user="5104", permissions=permissions))
    assert time.monotonic() - started < 3  # Discord's deadline for the answer
    data = _private(answer)
    (embed,) = data["embeds"]
    assert embed["title"] == "Relay statistics, last 24 h"
    fields = {field["name"]: field["value"] for field in embed["fields"]}
    requests = fields["Requests (last 24 h)"].splitlines()
    assert "chat: 2 completed, 1 failed" in requests and "image: 1 refused" in requests
    assert fields["Active users"] == "3"
    assert "openai/adminstats: 3 of 100 (3.0 %)" in fields["Quota used today (UTC)"].splitlines()
    assert "task-worker bot-chat: 1 up" in fields["Workers"].splitlines()
    assert "sk-admin" not in str(answer)


@pytest.mark.usefixtures("filled", "discord_env")
def test_stats_names_a_source_that_did_not_answer_and_shows_the_rest(signer):
    with _client(RELAY_DASK_ADDRESS="tcp://127.0.0.1:9") as client:  # nothing listens there
        started = time.monotonic()
        answer = _post(client, signer, command("stats", user="5105", permissions=MANAGE_GUILD))
        assert time.monotonic() - started < 3
    (embed,) = _private(answer)["embeds"]
    fields = {field["name"]: field["value"] for field in embed["fields"]}
    assert "workers from dask: timed out after 1.5 s" in fields["Not read"].splitlines()
    assert fields["Active users"] == "3" and "task-worker bot-chat: 1 up" in fields["Workers"]


def test_a_read_past_its_time_is_given_up_on_at_once_and_its_thread_left_to_end():
    release = threading.Event()

    async def slow() -> float:
        started = time.monotonic()
        with pytest.raises(TimeoutError):  # a store read that takes 10 s
            await within(0.2, read(release.wait, 10))
        waited = time.monotonic() - started
        release.set()  # the thread ends; its result is dropped
        return waited

    try:
        assert asyncio.run(slow()) < 2
    finally:
        release.set()


# /status


def _running_job() -> str:
    """A job halfway through: split in two 30 s chunks, the first transcribed."""
    job_id = new_id()
    jobs.create_job("/media/talk.mp3", "talk.mp3", job_id, "asr-cpu", 60.0)
    assert jobs.start_job(job_id, None, 60.0, "/nowhere")
    job_chunks.add_chunks(job_id, [(0, 0.0, 30.0), (1, 30.0, 60.0)])
    job_chunks.finish_chunk(job_id, 0)
    return job_id


def test_status_of_a_running_job_shows_what_its_rest_status_shows(api, signer):
    job_id = _running_job()
    shown = api.get(f"/api/transcriptions/{job_id}").json()
    data = _private(_post(api, signer, command("status", {"job": job_id}, user="5201")))
    lines = data["content"].splitlines()
    assert shown["status"] == "running" and shown["progress_percent"] == 51.5
    assert lines[0] == "**talk.mp3**: running, 51.5 %"
    assert "Chunks: 1 of 2 done" in lines and "Audio: 30 of 60.0 s transcribed" in lines
    assert any(re.fullmatch(r"Done in about \d+ s\.", line) for line in lines), lines
    assert lines[-1] == f"Job `{job_id}`"


def test_status_of_a_completed_job_starts_its_transcript_and_says_where_the_rest_is(
    api, signer, tmp_path: Path
):
    job_id = new_id()
    words = " ".join(f"word{i}" for i in range(400))  # over the start the answer shows
    (tmp_path / "transcript.txt").write_text(f"Hello from the meeting.\n{words}\n")
    jobs.create_job("/media/meeting.ogg", "meeting.ogg", job_id, "asr-cpu", 12.0)
    assert jobs.start_job(job_id, None, 12.0, str(tmp_path))
    job_chunks.add_chunks(job_id, [(0, 0.0, 12.0)])
    job_chunks.finish_chunk(job_id, 0)
    assert jobs.complete_job(job_id, "en", "tiny.en")
    data = _private(_post(api, signer, command("status", {"job": job_id}, user="5202")))
    content = data["content"]
    assert len(content) <= 2000
    lines = content.splitlines()
    assert lines[0] == "**meeting.ogg**: completed, 100 %"
    assert "Audio: 12 of 12.0 s transcribed (en)" in lines
    assert lines[lines.index("Transcript:") + 1] == "> Hello from the meeting."
    assert lines[lines.index("Transcript:") + 2].endswith("…") and "word399" not in content
    path = f"/api/transcriptions/{job_id}/transcript?format=txt"
    assert f"Whole transcript: `{path}` (or srt, vtt, json; the API's token is needed)." in lines
    assert api.get(path).text.startswith("Hello from the meeting.")  # the path it names works


@pytest.mark.usefixtures("discord_env")
def test_a_transcript_of_many_short_lines_keeps_the_answer_within_discords_limit():
    job_id = new_id()
    jobs.create_job("/media/q.ogg", "q.ogg", job_id, "asr-cpu", 3.0)
    job = jobs.get_job(job_id)
    shown = view(job).model_copy(update={"status": "completed", "error": "e" * 300})
    text = status_text(shown, "ok\n" * 600)  # quoted, each line costs 2 more characters
    assert len(text) <= 2000 and text.splitlines()[-1] == f"Job `{job_id}`"
    assert text.splitlines()[-2].startswith("Whole transcript: ")
    assert text.splitlines()[-3] == "> …" and "> ok" in text.splitlines()


def test_status_of_a_failed_job_says_why(api, signer):
    job_id = new_id()
    jobs.create_job("/media/x.wav", "x.wav", job_id, "asr-cpu", 5.0)
    assert jobs.fail_job(job_id, "no speech found")
    data = _private(_post(api, signer, command("status", {"job": job_id}, user="5203")))
    lines = data["content"].splitlines()
    assert lines[0] == "**x.wav**: failed, 0 %" and "Error: no speech found" in lines
    assert not any(line.startswith("Done in about") for line in lines)


@pytest.mark.parametrize(
    ("job", "answer"),
    [
        ("0" * 32, f"No transcription job `{'0' * 32}`."),
        (
            "`@everyone`",
            "No transcription job with that id: give the job id Relay answered your upload "
            "with (32 letters and digits).",
        ),
    ],
)
def test_status_of_an_unknown_job_is_told_only_to_the_user(api, signer, job, answer):
    data = _private(_post(api, signer, command("status", {"job": job}, user="5204")))
    assert data["content"] == answer


def test_the_openapi_document_describes_the_embeds_an_answer_may_carry(api):
    document = api.get("/openapi.json").json()
    operation = document["paths"]["/api/discord/interactions"]["post"]
    schema = operation["responses"]["200"]["content"]["application/json"]["schema"]
    response = document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    message = response["properties"]["data"]["anyOf"][0]["$ref"].rsplit("/", 1)[1]
    embeds = document["components"]["schemas"][message]["properties"]["embeds"]
    assert embeds["anyOf"][0] == {
        "type": "array",
        "items": {"type": "object", "additionalProperties": True},
        "maxItems": 10,
    }
