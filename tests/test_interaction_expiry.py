"""Interaction tokens live 15 minutes: a late answer goes to the route's fallback block
(mentioning the user) or fails saying where it is kept, the "thinking…" message is edited
once before the token dies, and a failure known later is told only to the user. The bot
workers' delivery and maintenance functions, called directly against the fake Discord on
127.0.0.1, with the store on SQLite and PostgreSQL and a real Prefect server (the blocks)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient
from sqlalchemy import text

from api.app import create_app
from blocks.discord import DiscordDestination, redact_webhook_url
from flows.bot import maintain
from flows.pool_tasks import dispatchers
from relay_settings import PROJECT_ROOT, RelaySettings
from store import bot as bot_store
from store import followups
from store.db import get_engine
from store.models import BotRequest, BotRequestStatus, DeliveryStatus, FollowUp
from tasks.bot_delivery import deliver, seal_destination
from tasks.expiry_notice import send_notice
from tests.discord_signing import APPLICATION_ID
from tests.environ import environment
from tests.fake_discord import FakeDiscord, WebhookRequest, nothing_logged_holds

pytestmark = pytest.mark.usefixtures("prefect_server")
FALLBACK_TOKEN = "fallback-block-token-do-not-leak"
NOTICE_SECONDS = 2.0  # RELAY_DISCORD_EXPIRY_NOTICE_SECONDS here: the notice is due at once


@pytest.fixture(scope="module")
def discord(database_url) -> Iterator[FakeDiscord]:  # noqa: ARG001 (one per store)
    with FakeDiscord(retry_after=0.1) as fake:
        yield fake


@pytest.fixture(scope="module")
def expiry_env(database_url, discord, tmp_path_factory) -> Iterator[RelaySettings]:
    """Settings of the module: the fake Discord allowed, and a bot config whose chat route
    has a fallback block, whose `quiet-*` channels have none, and whose videos fall back
    to their kind's block."""
    folder = tmp_path_factory.mktemp("expiry")
    config = yaml.safe_load((PROJECT_ROOT / "bot.yaml").read_text())
    config["routes"][0].update(fallback_block="late-answers", fallback_channel="#bot-answers")
    config["routes"].insert(
        0, {"name": "quiet", "kinds": ["chat"], "channels": ["quiet-*"], "pool": "bot-chat"}
    )
    config["fallback_blocks"] = {"video": {"block": "late-answers"}}
    (folder / "bot.yaml").write_text(yaml.safe_dump(config))
    values = {
        "RELAY_DATABASE_URL": database_url,
        "RELAY_DATA_DIR": str(folder / "data"),
        "RELAY_BOT_CONFIG": str(folder / "bot.yaml"),
        "RELAY_SECRET_KEY": "expiry-sealing-key",
        "RELAY_WEBHOOK_ALLOWED_HOSTS": discord.host,
        "RELAY_DISCORD_EXPIRY_NOTICE_SECONDS": str(NOTICE_SECONDS),
        "RELAY_BOT_DELIVERY_RETRY_SECONDS": "0.2",
    }
    with environment(values) as settings:
        DiscordDestination(webhook_url=discord.url_for("77", FALLBACK_TOKEN)).save(
            "late-answers", overwrite=True
        )
        yield settings


def _interaction(
    discord: FakeDiscord,
    token: str,
    *,
    age: float = 0.0,
    status: BotRequestStatus = BotRequestStatus.COMPLETED,
    channel: str = "chat-general",
    route: str = "chat-channels",
    kind: str = "chat",
    user: str = "5001",
    notice_seconds: float = NOTICE_SECONDS,
    **fields: Any,
) -> BotRequest:
    """A request taken in from an interaction ``age`` seconds old, as the intake records it
    (finished and held for delivery by this process, unless ``status`` says otherwise)."""
    created = datetime.now(UTC) - timedelta(seconds=age)
    url = f"{discord.api_url}/webhooks/{APPLICATION_ID}/{token}"
    finished = status not in (BotRequestStatus.QUEUED, BotRequestStatus.RUNNING)
    return bot_store.create_request(
        kind=kind,
        prompt=f"a question of {user}",
        user_id=user,
        channel=channel,
        route=route,
        pool="bot-chat",
        destination_sealed=seal_destination(url),
        destination_shown=redact_webhook_url(url),
        interaction_at=created,
        followup=FollowUp.LIVE,
        notice_due_at=followups.notice_due_at(created, notice_seconds),
        status=status,
        finished_at=datetime.now(UTC) if finished else None,
        deliver=finished,
        **fields,
    )


def _delivered(request: BotRequest) -> BotRequest:
    """Deliver the request as the worker that finished it does; its state afterwards."""
    lease = bot_store.delivery_lease(request)
    assert lease is not None
    deliver(request.id, lease)
    return _stored(request.id)


def _stored(request_id: str) -> BotRequest:
    stored = bot_store.get_request(request_id)
    assert stored is not None
    return stored


def _fallback_posts(discord: FakeDiscord, user: str) -> list[WebhookRequest]:
    return [
        r
        for r in discord.requests_to(FALLBACK_TOKEN, "POST")
        if r.payload.get("content", "").startswith(f"<@{user}>")
    ]


def _nothing_stored_holds(secret: str) -> None:
    with get_engine().connect() as connection:
        dump = " ".join(str(row) for row in connection.execute(text("SELECT * FROM bot_request")))
    assert secret not in dump


@pytest.mark.usefixtures("expiry_env")
@pytest.mark.parametrize("refusal", ["401", "404"])
def test_an_answer_after_the_token_died_goes_to_the_fallback_once(discord, caplog, refusal):
    token, user = f"itok-late-{refusal}-do-not-leak", f"50{refusal}"
    discord.script_for(token, refusal)
    request = _interaction(discord, token, user=user, answer_text="the late answer")
    with nothing_logged_holds(caplog, token):
        stored = _delivered(request)
    assert stored.delivery_status == DeliveryStatus.DELIVERED
    assert stored.followup == FollowUp.EXPIRED
    assert len(discord.requests_to(token)) == 1  # the refused follow-up, never retried
    (posted,) = _fallback_posts(discord, user)
    content = posted.payload["content"]
    assert content.startswith(f"<@{user}>\nYour /chat in #chat-general took longer than the 15")
    assert content.endswith("\n\nthe late answer")
    assert posted.payload["allowed_mentions"] == {"parse": [], "users": [user]}
    # A second pass finds it delivered: the fallback never gets it twice.
    assert bot_store.claim_delivery(request.id) is None
    assert maintain("bot-chat").delivered == ()
    assert len(_fallback_posts(discord, user)) == 1
    _nothing_stored_holds(token)


@pytest.mark.usefixtures("expiry_env")
def test_a_token_older_than_15_minutes_is_not_tried_and_a_kind_may_fall_back(discord):
    token = "itok-old-do-not-leak"
    request = _interaction(
        discord, token, age=16 * 60, kind="video", route="fallback-video", user="5101"
    )
    stored = _delivered(request)
    assert stored.delivery_status == DeliveryStatus.DELIVERED
    assert discord.requests_to(token) == []
    assert len(_fallback_posts(discord, "5101")) == 1


def test_without_a_fallback_the_delivery_fails_saying_why_and_the_answer_stays_readable(
    discord, caplog, expiry_env
):
    token = "itok-nofallback-do-not-leak"
    discord.script_for(token, "404")
    request = _interaction(
        discord, token, channel="quiet-room", route="quiet", user="5201", answer_text="kept"
    )
    with nothing_logged_holds(caplog, token):
        stored = _delivered(request)
    assert stored.delivery_status == DeliveryStatus.FAILED
    assert stored.delivery_error == (
        "not posted: the interaction's token is dead (Discord answered HTTP 404: Unknown "
        "Webhook) and route 'quiet' names no fallback_block (bot.yaml); the answer is kept "
        f"at GET /api/bot/requests/{request.id}"
    )
    assert _fallback_posts(discord, "5201") == []
    with TestClient(create_app(expiry_env, dispatchers())) as api:
        view = api.get(f"/api/bot/requests/{request.id}").json()
    assert (view["answer_text"], view["delivery_status"], view["followup"]) == (
        "kept",
        "failed",
        "expired",
    )
    assert view["interaction_at"].endswith("Z") or view["interaction_at"].endswith("+00:00")
    assert token not in str(view)


@pytest.mark.usefixtures("expiry_env")
def test_the_notice_is_sent_once_whichever_workers_run_the_loop(discord, caplog):
    """Four maintenance passes at once, as four task workers run them: one edits the
    "thinking…" message; later passes find nothing due."""
    token, bare = "itok-notice-do-not-leak", "itok-notice-bare-do-not-leak"
    running: dict[str, Any] = {
        "status": BotRequestStatus.RUNNING,
        "lease_owner": "slow-worker",
        "lease_token": "slow",
        "lease_expires_at": datetime.now(UTC) + timedelta(minutes=5),
    }
    request = _interaction(discord, token, age=NOTICE_SECONDS + 1, **running)
    quiet = _interaction(
        discord, bare, age=NOTICE_SECONDS + 1, channel="quiet-x", route="quiet", **running
    )
    _interaction(discord, "itok-young", notice_seconds=600, **running)  # not due
    gate, passes = threading.Barrier(4), []

    def worker() -> None:
        gate.wait()
        passes.append(maintain("bot-chat"))

    with nothing_logged_holds(caplog, token):
        threads = [threading.Thread(target=worker) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    noticed = [rid for done in passes for rid in done.noticed]
    assert sorted(noticed) == sorted([request.id, quiet.id])
    (edit,) = discord.requests_to(token)
    assert (edit.method, edit.message) == ("PATCH", "@original")
    content = edit.payload["content"]
    assert content.startswith("⏳ Relay is still working on your /chat.")
    assert "it will be posted in #bot-answers, mentioning you." in content
    assert edit.payload["allowed_mentions"] == {"parse": []}
    (bare_edit,) = discord.requests_to(bare)
    assert "An answer ready later will not be posted" in bare_edit.payload["content"]
    assert f"/api/bot/requests/{quiet.id}" in bare_edit.payload["content"]
    assert discord.requests_to("itok-young") == []
    assert _stored(request.id).followup == FollowUp.NOTICED
    assert maintain("bot-chat").noticed == ()
    assert len(discord.requests_to(token)) == 1
    _nothing_stored_holds(token)


@pytest.mark.usefixtures("expiry_env")
def test_a_delivery_waits_for_a_notice_under_way_and_posts_after_it(discord):
    """The first follow-up after a deferral replaces the "thinking…" message: a notice landing
    after it would overwrite the answer, so the answer waits for the notice."""
    token = "itok-race-do-not-leak"
    request = _interaction(
        discord,
        token,
        age=NOTICE_SECONDS + 1,
        status=BotRequestStatus.RUNNING,
        lease_token="w",
        lease_owner="w",
        lease_expires_at=datetime.now(UTC) + timedelta(minutes=5),
    )
    notice = followups.claim_notice(request.id)  # a worker starts on the notice
    assert notice is not None and followups.claim_notice(request.id) is None
    running = bot_store.request_lease(request)
    lease = bot_store.finish_request(
        request.id, status=BotRequestStatus.COMPLETED, lease=running, answer_text="answer"
    )
    assert lease is not None
    assert deliver(request.id, lease) == DeliveryStatus.RETRYING
    assert discord.requests_to(token) == []  # nothing posted while the notice is under way
    assert send_notice(request.id, notice) == FollowUp.NOTICED
    deadline = time.monotonic() + 10
    retry = None
    while retry is None and time.monotonic() < deadline:  # due again after 1 s
        time.sleep(0.1)
        retry = bot_store.claim_delivery(request.id)
    assert retry is not None and deliver(request.id, retry) == DeliveryStatus.DELIVERED
    assert [(r.method, r.message) for r in discord.requests_to(token)] == [
        ("PATCH", "@original"),
        ("POST", None),
    ]


@pytest.mark.usefixtures("expiry_env")
@pytest.mark.parametrize("deleted", ["ok", "404-message"])
def test_a_refusal_known_later_is_told_only_to_the_user(discord, caplog, deleted):
    token = f"itok-quota-{deleted}-do-not-leak"
    discord.script_for(token, deleted)
    request = _interaction(
        discord,
        token,
        status=BotRequestStatus.FAILED,
        error="openai quota exhausted, next slot at 12:00:00 UTC",
        retry_at=datetime.now(UTC) + timedelta(minutes=1),
        user="5301",
    )
    with nothing_logged_holds(caplog, token):
        stored = _delivered(request)
    assert stored.delivery_status == DeliveryStatus.DELIVERED
    delete, follow_up = discord.requests_to(token)
    assert (delete.method, delete.message) == ("DELETE", "@original")
    assert follow_up.method == "POST" and follow_up.payload["flags"] == 64
    assert follow_up.payload["content"].startswith("<@5301> ⚠️ openai quota exhausted")


@pytest.mark.usefixtures("expiry_env")
def test_a_refusal_after_the_token_died_goes_to_the_fallback(discord):
    token = "itok-quota-late-do-not-leak"
    discord.script_for(token, "404")  # the delete finds the token dead
    request = _interaction(
        discord, token, status=BotRequestStatus.FAILED, error="quota exhausted", user="5401"
    )
    assert _delivered(request).delivery_status == DeliveryStatus.DELIVERED
    (posted,) = _fallback_posts(discord, "5401")
    assert "flags" not in posted.payload
    assert posted.payload["content"] == (
        "<@5401> ⚠️ your /chat in #chat-general took longer than the 15 minutes Discord lets "
        "Relay answer there: quota exhausted"
    )
