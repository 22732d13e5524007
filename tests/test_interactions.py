"""``POST /api/discord/interactions``: Discord's signatures, PING, the gates, and bot
commands taken in as requests (deferred, refused at once, answered once). Real Ed25519 keys
made per module, a real Prefect server, the real store on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import yaml
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlmodel import col

from api.app import create_app
from flows.pool_tasks import dispatchers
from relay_settings import PROJECT_ROOT
from store.db import get_engine
from store.models import BotRequest, as_utc
from tests.discord_signing import APPLICATION_ID, DiscordSigner, command, encoded, signed_post
from tests.environ import environment

pytestmark = pytest.mark.usefixtures("prefect_server")
GUILD = "700000000000000001"


@pytest.fixture(scope="module")
def signer() -> DiscordSigner:
    return DiscordSigner()


@pytest.fixture(scope="module")
def discord_env(database_url, signer, tmp_path_factory) -> Iterator[dict[str, str]]:
    """The module's settings: the app's public key, a Discord API on 127.0.0.1 (nothing is
    posted to it here: refusals are answered inline), a bot config with an image cooldown."""
    folder = tmp_path_factory.mktemp("interactions")
    config = yaml.safe_load((PROJECT_ROOT / "bot.yaml").read_text())
    config["limits"]["chat"] = {
        "cooldown_seconds": 0,
        "per_user_daily": 1000,
        "global_daily": 10**6,
    }
    config["limits"]["image"] = {
        "cooldown_seconds": 600,
        "per_user_daily": 100,
        "global_daily": 1000,
    }
    (folder / "bot.yaml").write_text(yaml.safe_dump(config))
    values = {
        "RELAY_DATABASE_URL": database_url,
        "RELAY_DATA_DIR": str(folder / "data"),
        "RELAY_BOT_CONFIG": str(folder / "bot.yaml"),
        "RELAY_SECRET_KEY": "interactions-sealing-key",
        "RELAY_DISCORD_PUBLIC_KEY": signer.public_key,
        "RELAY_DISCORD_APPLICATION_ID": APPLICATION_ID,
        "RELAY_DISCORD_API_URL": "http://127.0.0.1:9/api/v10",
        "RELAY_DISCORD_GUILDS": f"{GUILD},700000000000000002",
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


def _requests_of(user: str) -> list[BotRequest]:
    with get_engine().connect() as connection:
        rows = connection.execute(select(BotRequest).where(col(BotRequest.user_id) == user)).all()
    return [BotRequest.model_validate(row._mapping) for row in rows]


def test_a_signed_ping_is_answered_pong(api, signer):
    ping = {"id": "1", "application_id": APPLICATION_ID, "type": 1, "token": "t", "version": 1}
    response = signed_post(api, signer, ping)
    assert response.status_code == 200 and response.json() == {"type": 1}


@pytest.mark.parametrize("case", ["unsigned", "other key", "altered body", "replayed", "future"])
def test_an_interaction_that_discord_did_not_sign_now_is_401(api, signer, case):
    ping = {"id": "1", "application_id": APPLICATION_ID, "type": 1, "token": "t", "version": 1}
    raw = encoded(ping)
    headers = signer.headers(raw)
    if case == "unsigned":
        headers = {"Content-Type": "application/json"}
    elif case == "other key":
        headers = DiscordSigner().headers(raw)
    elif case == "altered body":
        raw = raw.replace(b'"type":1', b'"type":2')
    elif case == "replayed":
        headers = signer.headers(raw, timestamp=time.time() - 301)
    elif case == "future":
        headers = signer.headers(raw, timestamp=time.time() + 301)
    response = api.post("/api/discord/interactions", content=raw, headers=headers)
    assert response.status_code == 401, response.text
    assert response.json()["error"] == "bad_signature"
    expected = {
        "unsigned": "the X-Signature-Ed25519 and X-Signature-Timestamp headers are required",
        "other key": "the signature does not match the body",
        "altered body": "the signature does not match the body",
        "replayed": "the signature's timestamp is more than 5 minutes away: a replay",
        "future": "the signature's timestamp is more than 5 minutes away: a replay",
    }
    assert response.json()["message"] == expected[case]


@pytest.mark.usefixtures("discord_env")
def test_without_its_key_or_id_interactions_are_503_and_no_bearer_is_asked(signer):
    for unset in ("RELAY_DISCORD_PUBLIC_KEY", "RELAY_DISCORD_APPLICATION_ID"):
        with _client(**{unset: ""}, RELAY_API_TOKEN="a-token") as client:
            response = signed_post(client, signer, command("chat", {"prompt": "hi"}))
        assert response.status_code == 503, response.text
        assert response.json()["message"].startswith(f"{unset} not set")
    with _client(RELAY_API_TOKEN="a-token") as client:  # signed, no bearer token: accepted
        assert signed_post(
            client, signer, command("chat", {"prompt": "hi"}, user="4100")
        ).json() == {"type": 5}


def test_chat_is_deferred_and_recorded_with_its_follow_up_url_sealed(api, signer):
    body = command("chat", {"prompt": "what is relay?"}, user="4002", channel="chat-general")
    started = time.monotonic()
    response = signed_post(api, signer, body)
    assert response.status_code == 200 and response.json() == {"type": 5}, response.text
    assert time.monotonic() - started < 3  # Discord's deadline for the first answer
    (stored,) = _requests_of("4002")
    assert (stored.kind, stored.prompt, stored.route, stored.pool) == (
        "chat",
        "what is relay?",
        "chat-channels",
        "bot-chat",
    )
    assert stored.guild == GUILD and stored.status == "queued"
    assert stored.destination_shown == f"http://127.0.0.1:9/api/webhooks/{APPLICATION_ID}/***"
    assert stored.destination_sealed and body["token"] not in stored.model_dump_json()
    # When Discord created the interaction (its id says): its token lives 15 minutes.
    created = datetime.fromtimestamp(((int(body["id"]) >> 22) + 1420070400000) / 1000, UTC)
    assert as_utc(stored.interaction_at) == created and stored.followup == "live"
    assert abs((created - datetime.now(UTC)).total_seconds()) < 5
    assert as_utc(stored.notice_due_at) == created + timedelta(seconds=780)


def test_the_same_interaction_twice_is_answered_once(api, signer):
    body = command("image", {"prompt": "a red fox"}, user="4003", channel="art-gallery")
    first = signed_post(api, signer, body)
    again = signed_post(
        api, signer, body, timestamp=time.time() + 1
    )  # Discord's retry, signed anew
    assert first.json() == again.json() == {"type": 5}
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert len(_requests_of("4003")) == 1


def test_a_request_over_its_cooldown_is_refused_at_once_only_to_the_user(api, signer):
    first = signed_post(api, signer, command("image", {"prompt": "a cat"}, user="4004"))
    assert first.json() == {"type": 5}
    refused = signed_post(api, signer, command("image", {"prompt": "a dog"}, user="4004")).json()
    assert refused["type"] == 4 and refused["data"]["flags"] == 64
    assert refused["data"]["allowed_mentions"] == {"parse": []}
    content = refused["data"]["content"]
    assert re.fullmatch(
        r"You can send another image request in \d+ s\. Try again <t:\d+:R>\.", content
    )
    stamp = int(re.search(r"<t:(\d+):R>", content)[1])
    assert 590 <= stamp - time.time() <= 601
    kept = {r.prompt: r for r in _requests_of("4004")}
    assert kept["a dog"].status == "refused" and kept["a dog"].delivery_status == "delivered"
    # Answered at once: no follow-up, so no expiry notice is ever due for it.
    assert kept["a dog"].followup is None and kept["a dog"].notice_due_at is None


@pytest.mark.parametrize(
    ("where", "answer"),
    [
        ({"guild": "700000000000000009"}, "Relay is not enabled in this server."),
        ({"guild": None}, "Relay does not answer in direct messages: use a server's channel."),
    ],
)
def test_guilds_outside_the_allow_list_and_direct_messages_are_refused(api, signer, where, answer):
    response = signed_post(
        api, signer, command("chat", {"prompt": "hi"}, user="4005", **where)
    ).json()
    assert response["type"] == 4 and response["data"] == {
        "content": answer,
        "flags": 64,
        "allowed_mentions": {"parse": []},
    }
    assert _requests_of("4005") == []


@pytest.mark.usefixtures("discord_env")
def test_direct_messages_are_answered_when_allowed(signer):
    with _client(RELAY_DISCORD_ALLOW_DMS="true") as client:
        response = signed_post(
            client, signer, command("chat", {"prompt": "hi"}, user="4006", guild=None)
        )
    assert response.json() == {"type": 5}
    (stored,) = _requests_of("4006")
    assert stored.guild is None and stored.channel == "dm"


@pytest.mark.parametrize(
    ("name", "options", "needle"),
    [
        ("dance", {}, "Relay has no /dance command."),
        ("chat", {"prompt": "   "}, "the prompt is empty"),
        ("chat", {"prompt": "x" * 5000}, "the limit is"),
    ],
)
def test_a_command_relay_cannot_take_is_explained_to_the_user(api, signer, name, options, needle):
    response = signed_post(api, signer, command(name, options, user="4007")).json()
    assert response["type"] == 4 and response["data"]["flags"] == 64
    assert needle in response["data"]["content"]
    assert _requests_of("4007") == []


def test_a_body_that_is_not_an_interaction_is_422(api, signer):
    raw = b'{"type": 2}'
    response = api.post("/api/discord/interactions", content=raw, headers=signer.headers(raw))
    assert response.status_code == 422 and response.json()["error"] == "invalid_interaction"


def test_the_openapi_document_describes_the_endpoint(api):
    operation = api.get("/openapi.json").json()["paths"]["/api/discord/interactions"]["post"]
    assert operation["operationId"] == "discordInteraction" and operation["security"] == [{}]
    assert {"200", "401", "409", "422", "503"} <= set(operation["responses"])
    body = operation["requestBody"]["content"]["application/json"]["schema"]
    assert {"id", "application_id", "type"} <= set(body["required"])


class _StalledPrefect:
    """A pool's dispatcher whose Prefect never answers (a server stalled under load)."""

    async def adispatch(self, client, **parameters) -> str:  # noqa: ARG002 - its signature
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


@pytest.mark.usefixtures("discord_env")
def test_a_slow_prefect_still_gets_discord_its_answer_within_3_s(signer):
    with environment({}) as settings:
        stalled = {**dispatchers(), "bot-chat": _StalledPrefect()}
        with TestClient(create_app(settings, stalled)) as client:  # type: ignore[arg-type]
            started = time.monotonic()
            response = signed_post(client, signer, command("chat", {"prompt": "hi"}, user="4008"))
            took = time.monotonic() - started
    assert response.json() == {"type": 5} and took < 3, took
    (stored,) = _requests_of("4008")
    # Queued under its dispatch lease: a worker's maintenance pass dispatches it again.
    assert stored.status == "queued" and stored.lease_expires_at is not None


def test_a_body_too_large_for_an_interaction_is_413_before_its_signature_is_read(api, signer):
    raw = b'{"pad": "' + b"x" * (130 * 1024) + b'"}'
    response = api.post("/api/discord/interactions", content=raw, headers=signer.headers(raw))
    assert response.status_code == 413 and response.json()["error"] == "too_large"
    unsigned = api.post("/api/discord/interactions", content=raw, headers={})
    assert unsigned.status_code == 401  # no signature headers: refused before the body


@pytest.mark.usefixtures("discord_env")
def test_a_real_length_interaction_token_to_discord_itself_is_taken(signer):
    """Discord's interaction tokens run to 200+ characters; the follow-up URL on discord.com
    must pass the webhook URL rules (nothing is posted here: the request stays queued)."""
    token = "aW50ZXJhY3Rpb246" + "A1b2C3d4_-" * 21  # 226 characters
    with _client(RELAY_DISCORD_API_URL="https://discord.com/api/v10") as client:
        body = command("chat", {"prompt": "hi"}, user="4009", token=token)
        assert signed_post(client, signer, body).json() == {"type": 5}
    (stored,) = _requests_of("4009")
    assert stored.destination_shown == f"https://discord.com/api/webhooks/{APPLICATION_ID}/***"
    assert token not in stored.model_dump_json()
