"""Bot requests end to end on the real PostgreSQL and a real Prefect server: the API takes
requests, task worker processes (one per pool, two for chat) answer them through fake
OpenAI / Stability / MiniMax servers that enforce per-key limits themselves, and the answers
arrive at a fake Discord."""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from api.app import create_app
from flows.pool_tasks import dispatchers
from store.db import get_engine
from tests.bot_stack import (
    REST_KEYS,
    WEBHOOK_TOKEN,
    _ask,
    _messages_for,
    _messages_for_prefix,
    _save_pool,
    _wait_finished,
)

# The stack's fixtures (fakes, bot_env, api, use_config) live beside its helpers.
pytest_plugins = ["tests.bot_stack"]

pytestmark = pytest.mark.usefixtures("prefect_server")


def test_chat_request_is_answered_in_discord_by_one_worker(api, fakes):
    discord, openai = fakes["discord"], fakes["openai"]
    started = time.monotonic()
    response = _ask(api, discord, prompt="what is relay?", user="2001")
    assert response.status_code == 202, response.text
    accepted = response.json()
    assert (accepted["route"], accepted["pool"], accepted["status"]) == (
        "chat-channels",
        "bot-chat",
        "queued",
    )
    view = _wait_finished(api, accepted["request_id"])
    elapsed = time.monotonic() - started
    assert view["status"] == "completed" and view["delivery_status"] == "delivered"
    assert view["answer_text"] == "Echo: what is relay?"
    assert view["key_name"] in ("chat-a", "chat-b") and view["upstream_calls"] == 1
    assert view["destination"].endswith("/***") and WEBHOOK_TOKEN not in str(view)
    messages = _messages_for(discord, "2001")
    assert messages == ["<@2001> Echo: what is relay?"] or messages[0].startswith("<@2001>")
    assert len(openai.requests_for(path="/v1/chat/completions")) >= 1
    assert sum(r.prompt == "what is relay?" for r in openai.requests) == 1  # answered once
    assert elapsed < 30


def test_long_answer_is_split_at_discords_limit(api, fakes):
    discord = fakes["discord"]
    view = _wait_finished(
        api, _ask(api, discord, prompt="long:4500 go", user="2002").json()["request_id"]
    )
    assert view["status"] == "completed" and len(view["answer_text"]) == 4500
    parts = [
        r.payload["content"]
        for r in discord.requests
        if r.payload.get("content", "").startswith("<@2002>") or False
    ]
    posted = [
        r.payload["content"]
        for r in discord.requests
        if "2002" in str(r.payload.get("allowed_mentions", {}))
    ]
    assert len(posted) == 3 and all(len(p) <= 2000 for p in posted)
    assert parts and posted[0].startswith("<@2002>")


def test_routing_by_kind_and_channel_with_fallbacks(api, fakes):
    discord = fakes["discord"]
    cases = [
        ("chat", "chat-random", "chat-channels", "bot-chat"),
        ("image", "art-gallery", "media-channels", "bot-media"),
        ("video", "video-lab", "media-channels", "bot-media"),
        ("image", "general", "fallback-image", "bot-media"),
        ("chat", "art-gallery", "fallback-chat", "bot-chat"),
    ]
    ids = []
    for index, (kind, channel, route, pool) in enumerate(cases):
        response = _ask(
            api, discord, kind=kind, prompt=f"route {index}", user=f"30{index}", channel=channel
        )
        assert response.status_code == 202, response.text
        assert (response.json()["route"], response.json()["pool"]) == (route, pool)
        ids.append(response.json()["request_id"])
    views = [_wait_finished(api, request_id) for request_id in ids]
    assert all(v["status"] == "completed" for v in views), views
    image = views[1]
    assert image["provider"] == "stability" and image["answer_files"][0]["mime_type"] == "image/png"
    video = views[2]
    assert video["provider"] == "minimax" and video["answer_files"][0]["mime_type"] == "video/mp4"
    attached = {name: data for r in discord.requests for name, data in r.files.items()}
    stored = Path(os.environ["RELAY_DATA_DIR"]) / "bot" / image["request_id"]
    name = image["answer_files"][0]["name"]
    assert attached[name] == (stored / name).read_bytes()
    assert (stored / name).read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize(
    ("body", "code", "needle"),
    [
        ({"kind": "poem"}, "invalid_request", "kind"),
        ({"prompt": "   "}, "invalid_request", "prompt is empty"),
        ({"prompt": "x" * 501}, "prompt_too_long", "limit is 500"),
        (
            {"webhook_url": f"https://evil.example/api/webhooks/1/{WEBHOOK_TOKEN}"},
            "invalid_request",
            "evil.example",
        ),
        ({"user_id": "not a user"}, "invalid_request", "user_id"),
    ],
)
def test_bad_requests_are_refused_with_the_reason(api, fakes, body, code, needle):
    base = {
        "kind": "chat",
        "prompt": "hi",
        "user_id": "4001",
        "channel": "chat-x",
        "webhook_url": fakes["discord"].url_for("42", WEBHOOK_TOKEN),
    }
    response = api.post("/api/bot/requests", json={**base, **body})
    assert response.status_code == 422
    assert response.json()["error"] == code and needle in response.json()["message"]
    assert WEBHOOK_TOKEN not in response.text


def test_unknown_request_is_404_and_token_is_required(api, relay_env):
    assert api.get("/api/bot/requests/nope").status_code == 404
    settings = relay_env(API_TOKEN="s3cret")
    with TestClient(create_app(settings, dispatchers())) as client:
        assert client.post("/api/bot/requests", json={}).status_code == 401
        assert client.get("/api/bot/requests/nope").status_code == 401


def test_burst_at_twice_the_quota_never_exceeds_a_key(api, fakes, use_config):
    """Two keys of 6 requests a minute, 24 requests at once: the fake never sees a key over
    its limit; every request ends answered or refused with when to retry; none is lost."""
    openai, discord = fakes["openai"], fakes["discord"]
    _save_pool(
        "openai-burst",
        "openai",
        openai.base_url,
        [
            {"name": "burst-1", "secret": "sk-burst-1", "requests_per_minute": 6},
            {"name": "burst-2", "secret": "sk-burst-2", "requests_per_minute": 6},
        ],
    )
    use_config(chat_pool="openai-burst", chat_deadline=6.0)
    with ThreadPoolExecutor(8) as pool:
        responses = list(
            pool.map(lambda i: _ask(api, discord, prompt=f"burst {i}", user=f"5{i:03d}"), range(24))
        )
    assert all(r.status_code == 202 for r in responses), [r.text for r in responses]
    views = [_wait_finished(api, r.json()["request_id"], limit=90) for r in responses]
    completed = [v for v in views if v["status"] == "completed"]
    failed = [v for v in views if v["status"] == "failed"]
    assert len(completed) + len(failed) == 24
    assert completed, "no request got through"
    assert all("quota exhausted, next slot at" in v["error"] for v in failed), failed
    assert all(v["delivery_status"] == "delivered" for v in views)
    for key in ("sk-burst-1", "sk-burst-2"):
        assert openai.max_in_window(key) <= 6
        assert openai.rejected(key) == 0  # Relay never even tried past the quota
    refusals = [m for m in _messages_for_prefix(discord, "<@5") if "quota exhausted" in m]
    assert len(refusals) == len(failed)


def test_a_key_answering_429_or_401_rests_and_the_others_carry_the_load(api, fakes, use_config):
    openai = fakes["openai"]
    _save_pool(
        "openai-rest",
        "openai",
        openai.base_url,
        [{"name": k[8:], "secret": k, "requests_per_minute": 600} for k in REST_KEYS],
    )
    openai.fail("sk-rest-429", 429)
    openai.revoke("sk-rest-401")
    use_config(chat_pool="openai-rest")
    try:
        ids = [
            _ask(api, fakes["discord"], prompt=f"rest {i}", user=f"60{i}").json()["request_id"]
            for i in range(8)
        ]
        views = [_wait_finished(api, request_id) for request_id in ids]
    finally:
        openai.reset_script()
    assert all(v["status"] == "completed" for v in views), views
    assert {v["key_name"] for v in views} == {"ok"}
    # A revoked key is tried once per worker process at most, then rests for an hour; the
    # 429 key rests for the second its Retry-After says, so it is tried about once a second.
    revoked = sorted(r.received_at for r in openai.requests_for(key="sk-rest-401"))
    # Only calls under way when it was refused, and the other worker's until it next reads
    # the rests from the store (every second): never again after that.
    assert revoked[-1] - revoked[0] < 2.5
    tried = sorted(r.received_at for r in openai.requests_for(key="sk-rest-429"))
    assert len(tried) <= 2 + (tried[-1] - tried[0]) / 0.9
    with get_engine().connect() as connection:
        rests: dict[str, str] = dict(
            connection.execute(
                text("SELECT key_name, reason FROM api_key_state WHERE provider = 'openai'")
            ).all()
        )
    assert rests["429"].startswith("rate_limited") and rests["401"].startswith("unauthorized")
    assert "sk-rest" not in " ".join(rests.values())


def test_over_a_user_limit_is_refused_in_discord_with_when_to_retry(api, fakes, use_config):
    discord = fakes["discord"]
    use_config(cooldown_seconds=60)
    first = _ask(api, discord, prompt="one", user="7001")
    second = _ask(api, discord, prompt="two", user="7001")
    assert first.status_code == 202
    assert second.status_code == 429
    body = second.json()
    assert body["error"] == "cooldown" and 55 <= body["retry_after_seconds"] <= 60
    assert int(second.headers["Retry-After"]) >= 55
    view = _wait_finished(api, body["request_id"])
    assert view["status"] == "refused" and view["delivery_status"] == "delivered"
    posted = _messages_for(discord, "7001")
    assert any("you can send another chat request in" in m for m in posted)
    _wait_finished(api, first.json()["request_id"])


def test_undelivered_answer_is_retried_until_discord_takes_it(api, fakes):
    discord = fakes["discord"]
    discord.script(*["500"] * 6)  # the worker's first delivery (4 tries) and 2 more fail
    view = _wait_finished(
        api, _ask(api, discord, prompt="retry me", user="8001").json()["request_id"], limit=60
    )
    assert view["status"] == "completed" and view["delivery_status"] == "delivered"
    assert view["delivery_attempts"] >= 7
    assert len([m for m in _messages_for(discord, "8001")]) >= 1
    accepted = [r for r in discord.requests if r.behaviour == "ok" and "retry me" in str(r.payload)]
    assert len(accepted) == 1  # posted once, not once per try


def test_no_secret_reaches_the_store_or_the_logs(api, fakes, bot_env):
    _wait_finished(
        api, _ask(api, fakes["discord"], prompt="secret check", user="9001").json()["request_id"]
    )
    with get_engine().connect() as connection:
        dump = " ".join(
            str(row)
            for table in ("bot_request", "api_key_state", "usage_counter")
            for row in connection.execute(text(f"SELECT * FROM {table}")).all()
        )
    assert "bot_request" and WEBHOOK_TOKEN not in dump
    assert "sk-chat" not in dump and "sk-stab" not in dump
    for log in bot_env["logs"]:
        content = log.read_text()
        assert WEBHOOK_TOKEN not in content
        assert "sk-chat-a" not in content and "sk-mm" not in content


def test_a_request_stranded_by_a_dead_worker_is_answered_once(api, fakes):
    """A worker died holding a request (running, an hour old) and another request's task run
    was lost (queued, dispatched an hour ago): the maintenance pass answers both, once."""
    from datetime import UTC, datetime, timedelta

    from flows.bot import MaintenancePass, maintain
    from store import bot as requests
    from store.models import BotRequestStatus
    from tasks.bot_handling import seal_destination

    discord = fakes["discord"]
    hour_ago = datetime.now(UTC) - timedelta(hours=1)
    common: dict[str, Any] = {  # the two requests' own columns, the same for both
        "kind": "chat",
        "channel": "chat-general",
        "route": "chat-channels",
        "pool": "bot-chat",
        "destination_sealed": seal_destination(discord.url_for("42", WEBHOOK_TOKEN)),
        "created_at": hour_ago,
    }
    running = requests.create_request(
        prompt="stranded running",
        user_id="9101",
        status=BotRequestStatus.RUNNING,
        worker="dead-host:1",
        started_at=hour_ago,
        # Its worker's lease ran out an hour ago (it stopped renewing when it died).
        lease_owner="dead-host:1",
        lease_token="dead-worker",
        lease_expires_at=hour_ago,
        **common,
    )
    queued = requests.create_request(  # its task run's time to start ran out an hour ago
        prompt="stranded queued",
        user_id="9102",
        dispatched_at=hour_ago,
        lease_token="lost-run",
        lease_expires_at=hour_ago,
        **common,
    )
    first = maintain("bot-chat")  # the workers' own maintenance may take some first
    assert set(first.redispatched) <= {running.id, queued.id}
    for stored in (running, queued):
        view = _wait_finished(api, stored.id)
        assert view["status"] == "completed" and view["delivery_status"] == "delivered"
    # A second pass finds nothing left to do, and a late duplicate run could not answer
    # again: a finished request can no longer be claimed.
    assert maintain("bot-chat") == MaintenancePass()
    assert requests.claim_request(running.id, "late-duplicate") is None
    openai = fakes["openai"]
    assert sum(r.prompt == "stranded running" for r in openai.requests) == 1
    assert sum(r.prompt == "stranded queued" for r in openai.requests) == 1
    assert len(_messages_for(discord, "9101")) == 1 and len(_messages_for(discord, "9102")) == 1
