"""Slash commands end to end: Discord (a fake on 127.0.0.1) POSTs a signed interaction to two
API replicas, real task workers answer it through a fake OpenAI, and the answer arrives as
follow-ups on the interaction's webhook, once."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlmodel import col

from api.app import create_app
from flows.pool_tasks import dispatchers
from store.db import get_engine
from store.models import BotRequest
from tests.discord_signing import APPLICATION_ID, DiscordSigner, command, signed_post
from tests.environ import environment

# The stack's fixtures (fakes, bot_env) live beside its helpers.
pytest_plugins = ["tests.bot_stack"]

pytestmark = pytest.mark.usefixtures("prefect_server")


@pytest.fixture(scope="module")
def signer() -> DiscordSigner:
    return DiscordSigner()


@pytest.fixture(scope="module")
def replicas(bot_env, fakes, signer) -> Iterator[tuple[TestClient, TestClient]]:  # noqa: ARG001
    """Two API processes' apps on the one store and Prefect server, as behind a balancer."""
    values = {
        "RELAY_DISCORD_PUBLIC_KEY": signer.public_key,
        "RELAY_DISCORD_APPLICATION_ID": APPLICATION_ID,
        "RELAY_DISCORD_API_URL": fakes["discord"].api_url,
    }
    with (
        environment(values) as settings,
        TestClient(create_app(settings, dispatchers())) as one,
        TestClient(create_app(settings, dispatchers())) as other,
    ):
        yield one, other


def _follow_ups(discord, token: str) -> list:
    return [r for r in discord.requests if r.token == token and r.method == "POST"]


def _wait_delivered(user: str, limit: float = 60.0) -> BotRequest:
    """The user's one request, once Discord has taken its answer."""
    deadline = time.monotonic() + limit
    while True:
        with get_engine().connect() as connection:
            rows = connection.execute(
                select(BotRequest).where(col(BotRequest.user_id) == user)
            ).all()
        (stored,) = [BotRequest.model_validate(row._mapping) for row in rows]
        if stored.delivery_status in ("delivered", "failed"):
            return stored
        assert time.monotonic() < deadline, f"not delivered: {stored.status}"
        time.sleep(0.2)


def test_a_chat_command_sent_to_two_replicas_is_answered_once(replicas, fakes, signer, bot_env):
    discord, openai = fakes["discord"], fakes["openai"]
    body = command("chat", {"prompt": "what is relay, twice?"}, user="5001")
    one, other = replicas
    first, second = signed_post(one, signer, body), signed_post(other, signer, body)
    assert first.json() == second.json() == {"type": 5}
    assert second.headers.get("Idempotent-Replayed") == "true"
    stored = _wait_delivered("5001")
    seen = (stored.status, stored.answer_text, stored.error, stored.delivery_error)
    assert seen[:2] == ("completed", "Echo: what is relay, twice?"), seen
    assert stored.followup == "closed", stored.followup  # answered in time: no notice due
    posted = _follow_ups(discord, body["token"])
    assert len(posted) == 1, [p.payload for p in posted]  # one request, one answer, one post
    (answer,) = posted
    assert answer.webhook_id == APPLICATION_ID and answer.query.get("wait") in ("true", "True")
    assert answer.payload["content"].startswith("<@5001>")
    assert "Echo: what is relay, twice?" in answer.payload["content"]
    assert answer.payload["allowed_mentions"] == {"parse": [], "users": ["5001"]}
    asked = [r for r in openai.requests if r.prompt == "what is relay, twice?"]
    assert len(asked) == 1, asked
    # The interaction's token lets anyone post as the app: in no worker's log.
    leaked = [log.name for log in bot_env["logs"] if body["token"] in log.read_text()]
    assert leaked == [], leaked


def test_a_long_answer_comes_as_several_follow_ups_within_discords_limit(replicas, fakes, signer):
    discord = fakes["discord"]
    body = command("chat", {"prompt": "long:4500 go"}, user="5002")
    assert signed_post(replicas[0], signer, body).json() == {"type": 5}
    _wait_delivered("5002")
    parts = _follow_ups(discord, body["token"])
    assert len(parts) == 3, [p.payload for p in parts]  # posted once each, in order
    contents = [p.payload["content"] for p in parts]
    assert all(len(c) <= 2000 for c in contents) and contents[0].startswith("<@5002>")
    assert sum(len(c) for c in contents) >= 4500
