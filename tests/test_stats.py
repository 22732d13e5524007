"""Admin statistics: the store's figures (SQLite and PostgreSQL, seeded rows, exact
figures), the summary and its Discord embed, and the relay-stats flow posting to a fake
Discord over real HTTP (and still returning its figures when Discord refuses them)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest
from sqlalchemy import insert

from store import stats
from store.batches import BatchProgress
from store.db import get_engine
from store.models import (
    BotRequest,
    TranscriptionJob,
    UsageCounter,
    Video,
    VideoBatch,
    new_id,
    table_of,
)
from store.stats import KeyUse, RequestCount, StoreFigures, percentile
from store.workers import WorkerKind
from tasks.discord_limits import FIELD_VALUE_LIMIT
from tasks.stats import (
    COLOUR_OK,
    COLOUR_WARN,
    WorkerStatus,
    stats_embed,
    stats_fields,
    summarize,
)
from tests.fake_discord import FakeDiscord, allowed_fake_discord

SINCE = datetime(2021, 3, 4, 10, 0, tzinfo=UTC)
UNTIL = SINCE + timedelta(hours=1)
DAY = date(2021, 3, 4)


def _bot(kind: str, status: str, user: str, at: datetime, **fields: object) -> dict:
    row = {
        "id": new_id(),
        "kind": kind,
        "prompt": "p",
        "user_id": user,
        "channel": "c",
        "route": "r",
        "pool": "bot-chat",
        "status": status,
        "created_at": at,
        "upstream_calls": 0,
        "delivery_status": "pending",
        "delivery_attempts": 0,
        "delivery_messages_sent": 0,
        "delivered_at": None,
        "upstream_seconds": None,
    }
    return row | fields


def _job(status: str, at: datetime, duration: float, **fields: object) -> dict:
    row = {
        "id": new_id(),
        "source_name": "a.mp3",
        "source_path": "/a.mp3",
        "status": status,
        "duration_seconds": duration,
        "created_at": at,
        "chunks_total": 0,
        "chunks_done": 0,
        "chunks_failed": 0,
        "audio_seconds_done": 0.0,
        "finished_at": None,
    }
    return row | fields


def _seed() -> None:
    minute = timedelta(minutes=1)
    bot = [
        # 20 chat answers delivered in the window; Relay added i * 0.1 s to each.
        _bot(
            "chat",
            "completed",
            f"u{i % 3}",
            SINCE + i * minute,
            delivered_at=SINCE + i * minute + timedelta(seconds=1.0 + i * 0.1),
            upstream_seconds=1.0,
        )
        for i in range(1, 21)
    ]
    bot += [
        _bot("chat", "completed", "u0", SINCE + minute),  # answered, not delivered yet
        _bot("chat", "failed", "u3", SINCE + 2 * minute),
        _bot("image", "refused", "u4", SINCE + 3 * minute),
        _bot("video", "running", "u1", SINCE + 59 * minute),
        _bot("chat", "completed", "u8", SINCE - minute),  # before the window
        _bot("chat", "completed", "u9", UNTIL),  # after it
    ]
    jobs = [
        _job("completed", SINCE, 1800, finished_at=SINCE + 40 * minute),
        _job("completed", SINCE + minute, 900, finished_at=SINCE + 50 * minute),
        _job("completed", SINCE - 90 * minute, 600, finished_at=SINCE - minute),  # earlier
        _job("failed", SINCE + 5 * minute, 60),
        _job("queued", SINCE + 6 * minute, 3600),
        _job("running", SINCE - 10 * minute, 1800, audio_seconds_done=600.0),
    ]
    usage = [
        {"scope": "key:openai:primary", "day": DAY, "used": 120},
        {"scope": "key:openai:secondary", "day": DAY, "used": 5},
        {"scope": "key:minimax:primary", "day": DAY, "used": 9990},
        {"scope": "key:openai:primary", "day": DAY - timedelta(days=1), "used": 50},
        {"scope": "user:chat:u1", "day": DAY, "used": 3},
        {"scope": "global:chat", "day": DAY, "used": 23},
    ]
    batch = {"id": "b" * 32, "status": "running", "workers_requested": 2, "videos_total": 6}
    videos = [
        {
            "source_key": new_id(),
            "source": f"/v{i}",
            "name": f"v{i}",
            "status": status,
            "attempts": 1,
            "batch_id": "b" * 32,
            "imported_at": SINCE,
        }
        for i, status in enumerate(["done"] * 3 + ["failed"] + ["pending"] * 2)
    ]
    with get_engine().begin() as connection:
        connection.execute(insert(table_of(BotRequest)), bot)
        connection.execute(insert(table_of(TranscriptionJob)), jobs)
        connection.execute(insert(table_of(UsageCounter)), usage)
        connection.execute(insert(table_of(VideoBatch)), [batch | {"created_at": SINCE}])
        connection.execute(insert(table_of(Video)), videos)


@pytest.mark.usefixtures("database_url")
def test_store_figures_are_exact_on_both_databases():
    _seed()
    figures = stats.collect(SINCE, UNTIL)

    assert figures.requests == (
        RequestCount("chat", "completed", 21),
        RequestCount("chat", "failed", 1),
        RequestCount("image", "refused", 1),
        RequestCount("transcription", "completed", 2),
        RequestCount("transcription", "failed", 1),
        RequestCount("transcription", "queued", 1),
        RequestCount("video", "running", 1),
    )
    assert figures.active_users == 5  # u0 u1 u2 u3 u4
    assert figures.latency_samples == 20
    assert figures.latency_p95_seconds == pytest.approx(1.9)  # the 19th of 0.1 .. 2.0
    assert figures.keys == (
        KeyUse("minimax", "primary", 9990),
        KeyUse("openai", "primary", 120),
        KeyUse("openai", "secondary", 5),
    )
    assert figures.transcription_hours_done == 0.75  # 1800 s + 900 s finished in it
    assert figures.transcription_hours_queued == pytest.approx(4800 / 3600, abs=1e-3)
    assert figures.batch is not None
    batch = figures.batch
    assert (batch.batch_id, batch.done, batch.failed, batch.videos_total, batch.percent) == (
        "b" * 32,
        3,
        1,
        6,
        66.7,
    )


def test_percentile_is_the_nearest_rank():
    assert percentile([], 0.95) is None
    assert percentile([3.0], 0.95) == 3.0
    assert percentile([float(v) for v in range(1, 21)], 0.95) == 19.0
    assert percentile([float(v) for v in range(100, 0, -1)], 0.95) == 95.0


def _figures(**changes: object) -> StoreFigures:
    values: dict = {
        "since": SINCE,
        "until": UNTIL,
        "requests": (RequestCount("chat", "completed", 12), RequestCount("chat", "failed", 1)),
        "active_users": 4,
        "latency_p95_seconds": 0.4321,
        "latency_samples": 12,
        "keys": (KeyUse("openai", "primary", 9500), KeyUse("stability", "primary", 3)),
        "transcription_hours_done": 2.5,
        "transcription_hours_queued": 0.25,
        "batch": BatchProgress(
            "c" * 32, "running", 100, 40, 2, 50, 8, 42.0, 3.0, 1200.0, 2, None, SINCE, None
        ),
    }
    return StoreFigures(**(values | changes))


UP = WorkerStatus(WorkerKind.PROCESS_WORKER, "asr-cpu", "w1", True)
STALE = WorkerStatus(WorkerKind.PROCESS_WORKER, "asr-cpu", "w2", False)


def test_the_summary_lists_every_key_with_its_quota_and_the_embed_says_it_all():
    quotas = {("openai", "primary"): 10000, ("openai", "secondary"): 10000}
    summary = summarize(_figures(), quotas, [UP])
    assert [(k.provider, k.key, k.used, k.daily_quota) for k in summary.keys] == [
        ("openai", "primary", 9500, 10000),
        ("openai", "secondary", 0, 10000),  # a key with a quota and no use yet
        ("stability", "primary", 3, None),
    ]
    assert dict(stats_fields(summary)) == {
        "Requests (last 1 h)": "chat: 12 completed, 1 failed",
        "Active users": "4",
        "Bot added latency p95": "0.43 s (12 answers)",
        "Quota used today (UTC)": "openai/primary: 9,500 of 10,000 (95.0 %) (low)\n"
        "openai/secondary: 0 of 10,000 (0.0 %)\nstability/primary: 3",
        "Transcription": "2.50 h done, 0.25 h queued",
        "Video batch": "cccccccc running: 40 done, 2 failed of 100 (42.0 %)",
        "Workers": "process-worker asr-cpu: 1 up",
    }
    embed = stats_embed(summary)
    assert embed["title"] == "Relay statistics, last 1 h"
    assert embed["color"] == COLOUR_WARN  # a key under 10 % of its quota
    assert embed["fields"][0]["name"] == "Requests (last 1 h)"


def test_the_embed_is_calm_when_all_is_well_and_says_when_there_is_nothing():
    quiet = _figures(requests=(), latency_p95_seconds=None, latency_samples=0, keys=(), batch=None)
    summary = summarize(quiet, {}, [UP, STALE])
    fields = dict(stats_fields(summary))
    assert fields["Requests (last 1 h)"] == "none"
    assert fields["Bot added latency p95"] == "no answer delivered"
    assert (fields["Video batch"], fields["Quota used today (UTC)"]) == (
        "no batch yet",
        "no key used",
    )
    assert fields["Workers"] == "process-worker asr-cpu: 1 up, 1 stale"
    assert stats_embed(summary)["color"] == COLOUR_WARN  # a stale worker
    assert stats_embed(summarize(quiet, {}, [UP]))["color"] == COLOUR_OK


def test_a_field_never_exceeds_discords_limit():
    many = tuple(KeyUse("openai", f"key-{i:03d}", i) for i in range(200))
    embed = stats_embed(summarize(_figures(keys=many), {}, []))
    assert all(len(field["value"]) <= FIELD_VALUE_LIMIT for field in embed["fields"])


@pytest.fixture
def admin(relay_env):
    """A fake Discord saved as the admin destination (the name set for this test)."""
    from blocks.discord import DiscordDestination

    with allowed_fake_discord(relay_env, retry_after=0.2) as fake:
        relay_env(WEBHOOK_ALLOWED_HOSTS=fake.host, DISCORD_ADMIN_BLOCK="test-admin-stats")
        DiscordDestination(webhook_url=fake.url_for(token="admin-token")).save(
            "test-admin-stats", overwrite=True
        )
        yield fake


@pytest.mark.usefixtures("prefect_server")
def test_the_flow_posts_the_embed_to_the_admin_destination(admin: FakeDiscord):
    from flows.stats import relay_stats

    summary = relay_stats(hours=2)

    [request] = admin.requests
    assert request.token == "admin-token"
    [embed] = request.payload["embeds"]
    assert embed["title"] == "Relay statistics, last 2 h"
    assert [f["name"] for f in embed["fields"]] == [name for name, _ in stats_fields(summary)]
    assert request.payload.get("allowed_mentions") == {"parse": []}


@pytest.mark.usefixtures("prefect_server")
def test_discord_refusing_the_post_does_not_fail_the_run_or_lose_its_figures(admin: FakeDiscord):
    from prefect.artifacts import Artifact

    from blocks.prefect_sync import settled
    from flows.stats import relay_stats

    admin.script("404")
    state = relay_stats(hours=1, return_state=True)

    assert state.is_completed(), state.message
    summary = state.result()
    assert summary.since < summary.until and len(admin.requests) == 1
    artifact = settled(Artifact.get("relay-stats"))
    assert artifact is not None and "Active users" in str(artifact.data)


def test_the_bootstrap_saves_each_webhook_as_its_destination():
    from deployments.bootstrap import destination_variables
    from relay_settings import RelaySettings

    default = RelaySettings().discord
    assert destination_variables(default) == {
        "RELAY_DISCORD_WEBHOOK_URL": "relay-discord",
        "RELAY_DISCORD_ADMIN_WEBHOOK_URL": "relay-discord-admin",
        "RELAY_DISCORD_ALERTS_WEBHOOK_URL": "",  # alerts share the main destination
    }
    assert default.alerts_destination() == "relay-discord"
    own = RelaySettings(discord_alerts_block="on-call").discord
    assert own.alerts_destination() == "on-call"
    assert destination_variables(own)["RELAY_DISCORD_ALERTS_WEBHOOK_URL"] == "on-call"
