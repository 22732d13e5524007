"""Interaction expiry with the real task workers (tests/bot_stack.py: worker processes, fake
providers and Discord, PostgreSQL, a real Prefect server): a slash command whose follow-up
token Discord refuses by the time the answer is ready is answered in the route's fallback
channel, and the workers' maintenance loops edit a slow request's "thinking…" message once
before its token dies."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from api.app import create_app
from blocks.discord import DiscordDestination, redact_webhook_url
from flows.pool_tasks import dispatchers
from store import bot as bot_store
from store import followups
from store.db import get_engine
from store.models import BotRequest, BotRequestStatus, FollowUp, table_of
from tasks.bot_delivery import seal_destination
from tests.bot_stack import _config, _wait_finished, write_config
from tests.discord_signing import APPLICATION_ID, DiscordSigner, command, signed_post
from tests.environ import environment
from tests.fake_discord import FakeDiscord

pytest_plugins = ["tests.bot_stack"]
pytestmark = pytest.mark.usefixtures("prefect_server")
FALLBACK_TOKEN = "stack-fallback-token-do-not-leak"


@pytest.fixture(scope="module")
def late_config(bot_env, fakes) -> Iterator[None]:
    """The stack's chat route with a fallback block, in every process's bot config."""
    DiscordDestination(webhook_url=fakes["discord"].url_for("78", FALLBACK_TOKEN)).save(
        "stack-late-answers", overwrite=True
    )
    config = _config()
    config["routes"][0].update(fallback_block="stack-late-answers", fallback_channel="#bot-answers")
    write_config(bot_env["config"], config)
    yield
    write_config(bot_env["config"], _config())


@pytest.fixture(scope="module")
def signer() -> DiscordSigner:
    return DiscordSigner()


@pytest.fixture(scope="module")
def app(late_config, fakes, signer) -> Iterator[TestClient]:  # noqa: ARG001 (its config)
    """The API with the Discord application's key; follow-ups go to the fake Discord."""
    values = {
        "RELAY_DISCORD_PUBLIC_KEY": signer.public_key,
        "RELAY_DISCORD_APPLICATION_ID": APPLICATION_ID,
        "RELAY_DISCORD_API_URL": fakes["discord"].api_url,
    }
    with environment(values) as settings, TestClient(create_app(settings, dispatchers())) as api:
        yield api


def _tokens_in_logs(bot_env, *tokens: str) -> list[str]:
    return [t for log in bot_env["logs"] for t in tokens if t in log.read_text()]


def test_a_slash_command_answered_after_its_token_died_is_posted_in_the_fallback(
    app, signer, fakes, bot_env
):
    discord: FakeDiscord = fakes["discord"]
    token = "stack-itok-late-do-not-leak"
    discord.script_for(token, "401")  # Discord: Invalid Webhook Token (it expired)
    body = command("chat", {"prompt": "late one"}, user="9301", token=token)
    response = signed_post(app, signer, body)
    assert response.json() == {"type": 5}, response.text
    with get_engine().connect() as connection:
        table = table_of(BotRequest)
        request_id = connection.execute(
            table.select().with_only_columns(table.c.id).where(table.c.user_id == "9301")
        ).scalar_one()
    view = _wait_finished(app, request_id)
    assert (view["status"], view["delivery_status"], view["followup"]) == (
        "completed",
        "delivered",
        "expired",
    )
    assert [r.method for r in discord.requests_to(token)] == ["POST"]  # refused, not retried
    late = [
        r.payload["content"]
        for r in discord.requests_to(FALLBACK_TOKEN, "POST")
        if r.payload.get("content", "").startswith("<@9301>")
    ]
    assert late == [
        "<@9301>\nYour /chat in #chat-general took longer than the 15 minutes Discord lets "
        "Relay answer there:\n\nEcho: late one"
    ]
    assert token not in str(view) and _tokens_in_logs(bot_env, token, FALLBACK_TOKEN) == []


@pytest.mark.usefixtures("late_config")
def test_the_workers_edit_a_slow_requests_thinking_message_once(fakes, bot_env, api):
    """A request running on a slow worker 13 minutes after its interaction: one of the
    workers' maintenance loops edits the "thinking…" message, once; when the slow worker dies,
    the request is answered again, and the answer follows as a new message."""
    discord: FakeDiscord = fakes["discord"]
    token = "stack-itok-notice-do-not-leak"
    url = f"{discord.api_url}/webhooks/{APPLICATION_ID}/{token}"
    created = datetime.now(UTC) - timedelta(seconds=790)  # the notice is due (780 s)
    request = bot_store.create_request(
        kind="chat",
        prompt="slow one",
        user_id="9302",
        channel="chat-general",
        route="chat-channels",
        pool="bot-chat",
        destination_sealed=seal_destination(url),
        destination_shown=redact_webhook_url(url),
        interaction_at=created,
        followup=FollowUp.LIVE,
        notice_due_at=followups.notice_due_at(created, 780),
        status=BotRequestStatus.RUNNING,
        worker="slow-host:1",
        lease_owner="slow-host:1",
        lease_token="slow-worker",
        lease_expires_at=datetime.now(UTC) + timedelta(minutes=10),
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        stored = bot_store.get_request(request.id)
        if stored is not None and stored.followup == FollowUp.NOTICED:
            break
        time.sleep(0.2)
    else:
        raise AssertionError("no worker sent the expiry notice")
    (edit,) = discord.requests_to(token)
    assert (edit.method, edit.message) == ("PATCH", "@original")
    assert "it will be posted in #bot-answers, mentioning you." in edit.payload["content"]
    with get_engine().begin() as connection:  # the slow worker dies: its lease runs out
        table = table_of(BotRequest)
        connection.execute(
            update(table)
            .where(table.c.id == request.id)
            .values(lease_expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    view = _wait_finished(api, request.id)
    assert view["status"] == "completed" and view["delivery_status"] == "delivered"
    assert [(r.method, r.message) for r in discord.requests_to(token)] == [
        ("PATCH", "@original"),
        ("POST", None),
    ]
    assert discord.requests_to(token, "POST")[0].payload["content"] == "<@9302>\nEcho: slow one"
    assert _tokens_in_logs(bot_env, token) == []
