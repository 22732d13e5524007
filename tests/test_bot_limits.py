"""Per-user cooldowns, daily limits, key quotas and key rests: atomic under concurrency on
SQLite and on the real PostgreSQL; plus the rate-limit shape and the routes file."""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import yaml

from blocks.keys import HOLD_SECONDS, ApiKeyPool, rate_limit_shape
from bot_config import BotConfig, get_bot_config
from relay_settings import PROJECT_ROOT
from store import usage
from store.sealed import seal, unseal

NOON = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def _admit_many(count: int, users, now: datetime = NOON, **limits) -> list[usage.Admission]:
    limits = {"cooldown_seconds": 0, "per_user_daily": 1000, "global_daily": 1000, **limits}
    with ThreadPoolExecutor(8) as pool:
        return list(
            pool.map(lambda i: usage.admit(users(i), "chat", now=now, **limits), range(count))
        )


@pytest.mark.usefixtures("database_url")
class TestAtomicLimits:
    def test_daily_limit_admits_exactly_the_limit_under_concurrency(self):
        results = _admit_many(20, lambda _: "u-daily", per_user_daily=5)
        assert sum(r.admitted for r in results) == 5
        refused = [r for r in results if not r.admitted]
        assert {r.reason for r in refused} == {"user_daily_limit"}
        assert all(r.retry_at == datetime(2026, 11, 24, tzinfo=UTC) for r in refused)
        assert usage.used_today("user:chat:u-daily", now=NOON) == 5

    def test_cooldown_admits_one_of_a_burst_and_says_when(self):
        results = _admit_many(10, lambda _: "u-cool", cooldown_seconds=60)
        assert sum(r.admitted for r in results) == 1
        refused = [r for r in results if not r.admitted]
        assert all(r.reason == "cooldown" for r in refused)
        assert all(r.retry_at == NOON + timedelta(seconds=60) for r in refused)
        later = usage.admit(
            "u-cool",
            "chat",
            cooldown_seconds=60,
            per_user_daily=100,
            global_daily=100,
            now=NOON + timedelta(seconds=61),
        )
        assert later.admitted

    def test_global_daily_limit_across_users(self):
        day = NOON + timedelta(days=10)  # a day the other tests did not count on
        results = _admit_many(30, lambda i: f"u-global-{i}", now=day, global_daily=7)
        assert sum(r.admitted for r in results) == 7
        assert {r.reason for r in results if not r.admitted} == {"global_daily_limit"}

    def test_a_refusal_leaves_every_counter_as_it_was(self):
        kwargs = {"cooldown_seconds": 30, "per_user_daily": 10, "global_daily": 1}
        assert usage.admit("u-first", "image", now=NOON, **kwargs).admitted
        refused = usage.admit("u-second", "image", now=NOON, **kwargs)
        assert refused.reason == "global_daily_limit"
        assert usage.used_today("user:image:u-second", now=NOON) == 0
        # Nor did the refused request start u-second's cooldown: with room again it passes.
        assert usage.admit("u-second", "image", now=NOON, **{**kwargs, "global_daily": 2}).admitted

    def test_daily_counts_reset_on_the_next_utc_day(self):
        kwargs = {"cooldown_seconds": 0, "per_user_daily": 1, "global_daily": 100}
        assert usage.admit("u-reset", "video", now=NOON, **kwargs).admitted
        assert not usage.admit("u-reset", "video", now=NOON, **kwargs).admitted
        tomorrow = NOON + timedelta(days=1)
        assert usage.admit("u-reset", "video", now=tomorrow, **kwargs).admitted

    def test_key_daily_quota_is_spent_exactly_once_per_call(self):
        with ThreadPoolExecutor(8) as pool:
            spent = list(
                pool.map(lambda _: usage.spend_key_day("openai", "day-key", 7, NOON), range(20))
            )
        assert sum(spent) == 7
        assert usage.spend_key_day("openai", "day-key", 7, NOON + timedelta(days=1))

    def test_a_key_rest_keeps_the_later_end(self):
        now = datetime.now(UTC)
        usage.cool_key("stability", "k", now + timedelta(seconds=300), "unauthorized: revoked")
        usage.cool_key("stability", "k", now + timedelta(seconds=10), "rate_limited: 429")
        until, reason = usage.key_rests("stability")["k"]
        assert until > now + timedelta(seconds=290) and reason.startswith("unauthorized")
        assert usage.clear_key("stability", "k") and "k" not in usage.key_rests("stability")


@pytest.mark.parametrize("rpm", [1, 2, 6, 9, 10, 59, 60, 61, 150, 500, 3000, 10000])
def test_rate_limit_shape_never_lets_a_minute_exceed_the_quota(rpm):
    limit, decay = rate_limit_shape(rpm)
    assert 1 <= limit <= max(1, rpm)
    # The most a sliding minute can see: the full bucket plus what refills in 60 s and the
    # hold during which a taken slot may still be spent. Slots are whole.
    assert math.floor(limit + decay * (60 + HOLD_SECONDS)) <= rpm
    assert decay > 0


def test_key_pool_needs_one_secret_per_key_and_hides_them():
    keys = [{"name": "a", "requests_per_minute": 10}, {"name": "b", "requests_per_minute": 10}]
    with pytest.raises(ValueError, match="exactly one secret"):
        ApiKeyPool(provider="openai", base_url="http://x", keys=keys, secrets={"a": "sk-1"})
    with pytest.raises(ValueError, match="unique"):
        ApiKeyPool(provider="openai", base_url="http://x", keys=keys[:1] * 2, secrets={"a": "sk-1"})
    pool = ApiKeyPool(
        provider="openai", base_url="http://x", keys=keys, secrets={"a": "sk-1", "b": "sk-2"}
    )
    assert pool.secret("b") == "sk-2" and "sk-2" not in repr(pool)


def test_sealed_urls_open_only_with_the_same_key(relay_env):
    relay_env(SECRET_KEY="one")
    sealed = seal("https://discord.com/api/webhooks/1/token-abc")
    assert "token-abc" not in sealed
    assert unseal(sealed) == "https://discord.com/api/webhooks/1/token-abc"
    relay_env(SECRET_KEY="two")
    with pytest.raises(ValueError, match="RELAY_SECRET_KEY"):
        unseal(sealed)


def test_the_committed_routes_route_by_kind_and_channel():
    config = get_bot_config()
    assert config.route("chat", "chat-lounge") == ("chat-channels", "bot-chat")
    assert config.route("image", "#Art-Wall") == ("media-channels", "bot-media")
    assert config.route("chat", "video-lab") == ("fallback-chat", "bot-chat")
    assert config.route("video", "random") == ("fallback-video", "bot-media")


def test_a_routes_file_missing_a_kind_is_refused_with_the_reason():
    raw = yaml.safe_load((PROJECT_ROOT / "bot.yaml").read_text())
    del raw["limits"]["video"]
    with pytest.raises(ValueError, match="limits has no entry for video"):
        BotConfig.model_validate(raw)
    raw = yaml.safe_load((PROJECT_ROOT / "bot.yaml").read_text())
    raw["routes"][0]["pool"] = "asr-cpu"
    with pytest.raises(ValueError, match="pool"):
        BotConfig.model_validate(raw)


@pytest.mark.usefixtures("database_url")
class TestFencing:
    """A worker or delivery that lost its claim never overwrites the one that took over."""

    def _request(self, **fields):
        from store import bot

        return bot.create_request(
            kind="chat",
            prompt="p",
            user_id="1",
            channel="chat-x",
            route="r",
            pool="bot-chat",
            **fields,
        )

    def test_a_stranded_request_is_taken_once_and_its_old_worker_is_fenced_off(self):
        from store import bot
        from store.models import BotRequestStatus

        request = self._request(dispatch_seconds=60)
        assert request.id not in bot.expired()  # its dispatch lease is live
        claimed = bot.claim_request(request.id, "old")
        assert claimed is not None and bot.claim_request(request.id, "other") is None
        _, old = claimed
        _expire(request.id)  # the old worker stopped renewing: it died, or so it seems
        assert request.id in bot.expired(pool="bot-chat", kind="chat")
        with ThreadPoolExecutor(8) as pool:
            taken = list(pool.map(lambda _: bot.take_over(request.id, 60), range(8)))
        assert sum(lease is not None for lease in taken) == 1
        assert request.id not in bot.expired()
        assert not bot.renew_request(request.id, old)  # the old worker learns it lost it
        claimed = bot.claim_request(request.id, "new")
        assert claimed is not None
        late = bot.finish_request(
            request.id, status=BotRequestStatus.COMPLETED, lease=old, answer_text="stale"
        )
        assert late is None
        lease = bot.finish_request(
            request.id, status=BotRequestStatus.COMPLETED, lease=claimed[1], answer_text="fresh"
        )
        assert lease is not None and bot.get_request(request.id).answer_text == "fresh"

    def test_only_the_delivery_lease_holder_records_the_outcome(self):
        from store import bot
        from store.leases import Lease
        from store.models import BotRequestStatus, DeliveryStatus

        request = self._request(
            status=BotRequestStatus.COMPLETED,
            finished_at=datetime.now(UTC),
            next_delivery_at=datetime.now(UTC) - timedelta(seconds=1),
        )
        with ThreadPoolExecutor(8) as pool:
            leases = list(pool.map(lambda _: bot.claim_delivery(request.id), range(8)))
        held = [lease for lease in leases if lease is not None]
        assert len(held) == 1
        stale = Lease(None, datetime.now(UTC) + timedelta(minutes=5), "an-earlier-holder")
        outcome: dict[str, Any] = {
            "messages_sent": 1,
            "attempts": 1,
            "error": None,
            "give_up": False,
        }
        assert bot.record_delivery(request.id, delivered=True, lease=stale, **outcome) is None
        assert bot.get_request(request.id).delivery_status == DeliveryStatus.PENDING
        recorded = bot.record_delivery(request.id, delivered=True, lease=held[0], **outcome)
        assert recorded == DeliveryStatus.DELIVERED
        # Delivered is final: a late holder cannot turn it back into a retry.
        assert bot.record_delivery(request.id, delivered=False, lease=held[0], **outcome) is None

    def test_a_failed_delivery_is_due_again_after_its_retry_wait_and_not_before(self):
        from store import bot
        from store.models import BotRequestStatus, DeliveryStatus

        request = self._request(status=BotRequestStatus.COMPLETED, finished_at=datetime.now(UTC))
        lease = bot.claim_delivery(request.id)
        assert lease is not None and request.id not in bot.deliveries_due()
        outcome: dict[str, Any] = {
            "messages_sent": 0,
            "attempts": 1,
            "error": "503",
            "give_up": False,
        }
        status = bot.record_delivery(
            request.id, delivered=False, lease=lease, retry_in=60, **outcome
        )
        assert status == DeliveryStatus.RETRYING
        assert request.id not in bot.deliveries_due() and bot.claim_delivery(request.id) is None
        _expire(request.id, "next_delivery_at")  # the retry wait is over
        assert request.id in bot.deliveries_due() and bot.claim_delivery(request.id) is not None


def _expire(request_id: str, column: str = "lease_expires_at") -> None:
    """Move a request's lease (or retry time) a minute into the database's past."""
    from sqlalchemy import update

    from store.db import get_engine
    from store.leases import db_now
    from store.models import BotRequest, table_of

    with get_engine().begin() as connection:
        past = db_now(connection) - timedelta(minutes=1)
        table = table_of(BotRequest)
        connection.execute(update(table).where(table.c.id == request_id).values({column: past}))
