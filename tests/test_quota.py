"""The key quota without a Prefect server: each key's bookkeeping (pure), and ``KeyPool``
over Prefect's limits played by a fake (slots, 423s, leases) on the real store (SQLite)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from uuid import UUID

import pytest
from prefect.settings import PREFECT_API_URL, temporary_settings

from blocks.keys import ApiKey, ApiKeyPool
from store import usage
from tasks.key_state import KeyState, Rest, RestBook, next_slot_at
from tasks.prefect_limits import Grant, MissingLimitError, PrefectLimits
from tasks.providers.errors import UpstreamError
from tasks.quota import KeyPool, QuotaExhaustedError, QuotaMisconfiguredError, Spent

WALL = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def _key(name: str = "k", rpm: int = 600, **limits: int) -> ApiKey:
    return ApiKey(name=name, requests_per_minute=rpm, **limits)


# -- one key's state ---------------------------------------------------------------------


def test_held_slots_are_spent_first_and_dropped_once_their_hold_ends():
    state = KeyState(_key())
    state.hold(2, expiry=10.0)
    assert state.held(9.0) == 2
    assert state.spend_held(9.0) and state.held(9.0) == 1
    assert state.held(10.0) == 0  # not spent within the hold: never used late
    assert not state.spend_held(10.0)


def test_a_key_prefect_refused_is_usable_only_with_slots_it_still_holds():
    state = KeyState(_key())
    state.block(now=100.0, seconds=2.0)
    assert not state.usable(101.0, WALL)
    state.hold(1, expiry=105.0)
    assert state.usable(101.0, WALL)
    assert state.spend_held(101.0) and not state.usable(101.0, WALL)
    assert state.usable(102.0, WALL)  # Prefect's Retry-After has passed


def test_a_spent_key_is_unusable_until_its_midnight_even_with_slots_held():
    state = KeyState(_key())
    state.hold(3, expiry=1e9)
    state.spend_day_until(WALL + timedelta(hours=12))
    assert not state.usable(0.0, WALL)
    assert state.usable(0.0, WALL + timedelta(hours=12))


def test_headroom_prefers_slots_held_then_the_least_used_share_of_the_last_minute():
    busy, idle, holding = KeyState(_key("a", 60)), KeyState(_key("b", 600)), KeyState(_key())
    for at in range(6):
        busy.count_call(float(at))  # 6 of 60 a minute
        idle.count_call(float(at))  # 6 of 600
    holding.hold(1, expiry=100.0)
    order = sorted([busy, idle, holding], key=lambda s: s.headroom(10.0))
    assert order == [holding, idle, busy]
    assert busy.headroom(65.5) == (0, 0.0)  # calls older than a minute no longer count


def test_next_slot_is_the_soonest_moment_ahead_or_a_second_from_now():
    blocked, spent = KeyState(_key("a")), KeyState(_key("b"))
    blocked.block(now=50.0, seconds=3.0)
    spent.spend_day_until(WALL + timedelta(hours=1))
    rests = [Rest(WALL + timedelta(seconds=10), "rate_limited"), Rest(WALL, "ended")]
    assert next_slot_at([blocked, spent], rests, 50.0, WALL) == WALL + timedelta(seconds=3)
    assert next_slot_at([spent], rests, 50.0, WALL) == WALL + timedelta(seconds=10)
    assert next_slot_at([KeyState(_key())], [], 50.0, WALL) == WALL + timedelta(seconds=1)


class StoreReads:
    """What a RestBook reads from the store, and how often it did."""

    def __init__(self) -> None:
        self.rests: dict[str, Rest] = {}
        self.count = 0
        self.during: Callable[[], None] = lambda: None

    def __call__(self) -> dict[str, Rest]:
        self.count += 1
        self.during()
        return dict(self.rests)


def test_rests_are_read_at_most_once_a_second_unless_fresh():
    store = StoreReads()
    book = RestBook(store, cache_seconds=1.0)
    store.rests["a"] = Rest(WALL + timedelta(minutes=1), "unauthorized: revoked")
    assert set(book.current(10.0, WALL)) == {"a"} and store.count == 1
    store.rests["b"] = store.rests.pop("a")
    assert set(book.current(10.5, WALL)) == {"a"} and store.count == 1  # cached
    assert set(book.current(10.5, WALL, fresh=True)) == {"b"} and store.count == 2
    assert set(book.current(11.6, WALL)) == {"b"} and store.count == 3
    assert book.current(11.6, WALL + timedelta(minutes=1)) == {}  # the rest has ended


def test_a_rest_recorded_here_during_a_read_outlives_that_read():
    store = StoreReads()
    book = RestBook(store, cache_seconds=1.0)
    until = WALL + timedelta(seconds=30)
    store.during = lambda: book.record("a", Rest(until, "rate_limited: 429"), 20.0)
    assert set(book.current(20.0, WALL)) == {"a"}  # the store did not have it yet
    store.during = lambda: None
    assert set(book.current(21.5, WALL)) == {"a"}  # still within two reads of recording it
    assert book.current(22.6, WALL) == {}  # the store is the truth after that


# -- KeyPool over a fake Prefect ---------------------------------------------------------


class FakeLimits(PrefectLimits):
    """Prefect's global limits in memory: free slots per limit name, leases handed out.
    A limit not listed does not exist."""

    def __init__(self, free: dict[str, int]) -> None:
        super().__init__()
        self.free = free
        self.rate_asks: list[tuple[str, int]] = []
        self.leases: dict[UUID, str] = {}  # held: lease -> limit name
        self.released: list[UUID] = []
        self.lease_seconds: list[float] = []
        self.on_rate_ask: Callable[[str], None] | None = None

    def take_rate_slots(self, name: str, slots: int) -> Grant:
        self.rate_asks.append((name, slots))
        if self.on_rate_ask:
            self.on_rate_ask(name)
        if name not in self.free:
            raise MissingLimitError(name)
        if self.free[name] < slots:
            return Grant(granted=False, retry_after=30.0)
        self.free[name] -= slots
        return Grant(granted=True)

    def take_lease(self, name: str, seconds: float) -> Grant:
        self.lease_seconds.append(seconds)
        if name not in self.free:
            raise MissingLimitError(name)
        if self.free[name] < 1:
            return Grant(granted=False, retry_after=0.2)
        self.free[name] -= 1
        lease = uuid.uuid4()
        self.leases[lease] = name
        return Grant(granted=True, lease_id=lease)

    def release(self, lease_id: UUID) -> None:
        self.free[self.leases.pop(lease_id)] += 1
        self.released.append(lease_id)


@pytest.fixture
def names() -> Iterator[Callable[[str], str]]:
    """Key names of this test only: the store's rests and daily counts outlive a test."""
    prefix = f"q{uuid.uuid4().hex[:8]}"
    made: list[str] = []

    def name(suffix: str) -> str:
        made.append(f"{prefix}-{suffix}")
        return made[-1]

    yield name
    for key in made:
        usage.clear_key("openai", key)


def _pool(keys: list[ApiKey], limits: FakeLimits) -> KeyPool:
    block = ApiKeyPool(
        provider="openai",
        base_url="http://127.0.0.1:1/v1",
        timeout_seconds=5,
        keys=keys,
        secrets={key.name: f"sk-{key.name}" for key in keys},
    )
    return KeyPool(block, limits)


def _rpm(name: str) -> str:
    return f"key.openai.{name}.rpm"


def _soon(seconds: float = 2.0) -> float:
    return time.monotonic() + seconds


def test_a_key_rested_elsewhere_while_prefect_was_asked_is_never_called(names):
    a, b = names("a"), names("b")
    limits = FakeLimits({_rpm(a): 100, _rpm(b): 100})
    pool = _pool([_key(a), _key(b)], limits)

    def revoked_meanwhile(name: str) -> None:
        if name == _rpm(a):  # another worker's call with key a was just refused
            usage.cool_key("openai", a, datetime.now(UTC) + timedelta(hours=1), "unauthorized")

    limits.on_rate_ask = revoked_meanwhile
    called: list[str] = []

    def answer_with(secret: str) -> str:
        called.append(secret)
        return secret

    for _ in range(3):
        answer, spent = pool.call(answer_with, _soon())
        assert answer == f"sk-{b}" and spent == Spent(b, 1)
    assert called == [f"sk-{b}"] * 3
    assert usage.used_today(f"key:openai:{a}") == 0  # no daily unit spent on the rested key


def test_slots_taken_at_once_are_spent_before_prefect_is_asked_again(names):
    a = names("a")
    limits = FakeLimits({_rpm(a): 100})
    pool = _pool([_key(a, rpm=600)], limits)
    for _ in range(5):
        pool.call(lambda secret: secret, _soon())
    assert limits.rate_asks == [(_rpm(a), 4), (_rpm(a), 4)]  # 4 slots a take, 5 calls


def test_a_key_prefect_has_no_slot_for_is_set_aside_and_the_other_answers(names):
    a, b = names("a"), names("b")
    limits = FakeLimits({_rpm(a): 0, _rpm(b): 100})
    pool = _pool([_key(a), _key(b)], limits)
    assert pool.call(lambda secret: secret, _soon())[1] == Spent(b, 1)
    asked = len(limits.rate_asks)
    for _ in range(4):
        assert pool.call(lambda secret: secret, _soon())[1].key_name == b
    assert _rpm(a) not in [name for name, _ in limits.rate_asks[asked:]]  # within its 423


def test_a_key_whose_daily_quota_is_spent_is_skipped(names):
    a, b = names("a"), names("b")
    limits = FakeLimits({_rpm(a): 100, _rpm(b): 100})
    pool = _pool([_key(a, requests_per_day=2), _key(b)], limits)
    used = [pool.call(lambda secret: secret, _soon())[1].key_name for _ in range(5)]
    assert used.count(a) == 2 and used.count(b) == 3
    assert usage.used_today(f"key:openai:{a}") == 2


def test_a_refused_call_rests_its_key_in_the_store_and_another_key_answers(names):
    a, b = names("a"), names("b")
    pool = _pool([_key(a), _key(b)], FakeLimits({_rpm(a): 100, _rpm(b): 100}))

    def answer(secret: str) -> str:
        if secret == f"sk-{a}":
            raise UpstreamError("slow down", kind="rate_limited", retry_after=30)
        return "fine"

    results = [pool.call(answer, _soon()) for _ in range(3)]
    assert results[0][1] == Spent(b, 2)  # equal headroom: a is tried first, by name
    assert all(result == "fine" for result, _ in results)
    until, reason = usage.key_rests("openai")[a]
    assert reason == "rate_limited: slow down"
    assert timedelta(seconds=25) < until - datetime.now(UTC) <= timedelta(seconds=30)
    assert [spent.calls for _, spent in results[1:]] == [1, 1]  # a rests: never tried again


def test_a_refused_request_is_not_retried_on_another_key(names):
    a, b = names("a"), names("b")
    pool = _pool([_key(a), _key(b)], FakeLimits({_rpm(a): 100, _rpm(b): 100}))
    tried: list[str] = []

    def refuse(secret: str) -> str:
        tried.append(secret)
        raise UpstreamError("not allowed", kind="refused")

    with pytest.raises(UpstreamError):
        pool.call(refuse, _soon())
    assert len(tried) == 1 and usage.key_rests("openai").keys().isdisjoint({a, b})


def test_the_concurrency_lease_is_released_after_the_call_even_when_it_fails(names):
    a = names("a")
    concurrent = f"key.openai.{a}.concurrent"
    limits = FakeLimits({_rpm(a): 100, concurrent: 1})
    pool = _pool([_key(a, max_concurrent=1)], limits)
    assert pool.call(lambda secret: secret, _soon())[1] == Spent(a, 1)

    def refuse(_: str) -> str:
        raise UpstreamError("not allowed", kind="refused")

    with pytest.raises(UpstreamError):
        pool.call(refuse, _soon())
    assert len(limits.released) == 2 and not limits.leases
    # The lease outlives the deadline by the call's own timeouts (3 x 5 s) and a minute.
    assert all(seconds >= 60 + 15 + 60 for seconds in limits.lease_seconds)


def test_a_busy_key_until_the_deadline_is_exhausted_with_when_to_come_back(names):
    a = names("a")
    limits = FakeLimits({_rpm(a): 0})
    pool = _pool([_key(a)], limits)
    before = datetime.now(UTC)
    with pytest.raises(QuotaExhaustedError) as caught:
        pool.call(lambda secret: secret, _soon(0.3))
    # Prefect said "retry after 30 s"; a key is set aside for at most 5 s of it.
    assert before < caught.value.next_slot_at <= datetime.now(UTC) + timedelta(seconds=5)
    assert "openai quota exhausted, next slot at" in str(caught.value)


@pytest.mark.parametrize("missing", ["rpm", "concurrent"])
def test_a_key_without_its_prefect_limit_is_a_misconfiguration(names, missing):
    a = names("a")
    free = {_rpm(a): 100, f"key.openai.{a}.concurrent": 1}
    del free[f"key.openai.{a}.{missing}"]
    limits = FakeLimits(free)
    with pytest.raises(QuotaMisconfiguredError, match="make bootstrap"):
        _pool([_key(a, max_concurrent=1)], limits).call(lambda secret: secret, _soon())
    assert not limits.leases  # a lease taken before the rate limit failed is given back


# -- the process's Prefect client --------------------------------------------------------


def test_the_prefect_client_is_opened_once_shared_and_closed():
    with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:1/api"}):
        limits = PrefectLimits()
        client = limits._client()
        assert limits._client() is client  # one client for every call
        limits.close()
        assert client._closed and client._client.is_closed
        reopened = limits._client()  # a call after close opens a new one
        assert reopened is not client
        limits.close()
        limits.close()  # closing twice is harmless
        assert reopened._client.is_closed
