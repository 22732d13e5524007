"""Spending provider API keys: each call takes a slot of its key's Prefect rate limit (and
concurrency limit), counts against the key's daily quota, and moves to another key when one
is refused. The only retry layer between Relay and a provider.

A process takes rate-limit slots from Prefect for several calls at once when several wait,
and spends each within ``HOLD_SECONDS`` or drops it; the limits' shape
(``blocks.keys.rate_limit_shape``) accounts for that hold, so no key ever exceeds its
requests per minute however many processes share it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TypeVar
from uuid import UUID

from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.exceptions import PrefectHTTPStatusError

from blocks.keys import (
    HOLD_SECONDS,
    ApiKey,
    ApiKeyPool,
    concurrency_limit_name,
    rate_limit_name,
    rate_limit_shape,
)
from blocks.prefect_sync import load_block
from store import usage
from tasks.providers.errors import UpstreamError

log = logging.getLogger("relay.quota")
T = TypeVar("T")

# How long a key rests after each kind of refusal when the provider names no time.
REST_SECONDS = {"rate_limited": 10.0, "unavailable": 5.0, "unauthorized": 3600.0}
MAX_REST_SECONDS = {"rate_limited": 600.0, "unavailable": 300.0, "unauthorized": 86400.0}
RESTS_CACHE_SECONDS = 1.0
SLOTS_PER_TAKE = 4  # slots taken from Prefect at once (fewer round trips under load)


class QuotaExhaustedError(Exception):
    """Every key of a pool was busy, resting or spent until the request's deadline."""

    def __init__(self, provider: str, next_slot_at: datetime, detail: str = "") -> None:
        self.provider, self.next_slot_at = provider, next_slot_at
        when = next_slot_at.strftime("%H:%M:%S UTC")
        super().__init__(f"{provider} quota exhausted, next slot at {when}{detail}")


class QuotaMisconfiguredError(RuntimeError):
    """A key's Prefect limit is missing: the bootstrap has not run for this pool."""


@dataclass(frozen=True)
class Spent:
    """What a successful call cost: which key answered and how many calls it took."""

    key_name: str
    calls: int


class KeyPool:
    """The keys of one ``ApiKeyPool`` block, as this process spends them."""

    def __init__(self, block: ApiKeyPool, client: SyncPrefectClient | None = None) -> None:
        self.block = block
        self.provider = block.provider
        self._keys = {key.name: key for key in block.keys}
        self._client = client
        self._lock = threading.Lock()
        self._slots: dict[str, deque[float]] = defaultdict(deque)  # expiry of slots held
        self._blocked: dict[str, float] = {}  # Prefect said no until (monotonic)
        self._spent_until: dict[str, datetime] = {}  # daily quota used up until
        self._recent: dict[str, deque[float]] = defaultdict(deque)  # our calls, last minute
        self._rests: dict[str, tuple[datetime, str]] = {}
        self._rests_read = 0.0
        self._rested_here: dict[str, float] = {}  # when this process rested a key

    def call(self, fn: Callable[[str], T], deadline: float) -> tuple[T, Spent]:
        """``fn(secret)`` with the key that has the most headroom; on a 429, 5xx or refused
        key, rest that key and try another, until ``deadline`` (``time.monotonic()``)."""
        calls = 0
        while True:
            key, lease_id = self._acquire(deadline)
            calls += 1
            try:
                return fn(self.block.secret(key.name)), Spent(key.name, calls)
            except UpstreamError as err:
                if err.kind == "refused":
                    raise
                self.rest(key.name, err)
                if time.monotonic() >= deadline:
                    raise
            finally:
                self._release(key, lease_id)

    def rest(self, key_name: str, err: UpstreamError) -> datetime:
        """Rest a key for as long as the provider asked (or a default for the kind)."""
        seconds = err.retry_after if err.retry_after is not None else REST_SECONDS[err.kind]
        seconds = min(max(seconds, 0.5), MAX_REST_SECONDS[err.kind])
        until = datetime.now(UTC) + timedelta(seconds=seconds)
        reason = f"{err.kind}: {err}"[:500]
        log.warning("%s key %s rests %.1f s (%s)", self.provider, key_name, seconds, reason)
        with self._lock:
            self._rests[key_name] = (until, reason)
            self._rested_here[key_name] = time.monotonic()
        usage.cool_key(self.provider, key_name, until, reason)
        return until

    # -- picking a key -------------------------------------------------------------------

    def _acquire(self, deadline: float) -> tuple[ApiKey, UUID | None]:
        """A key with a rate slot taken (and a concurrency lease, for keys that cap calls in
        flight: taken first, so a slot is never held while waiting for one)."""
        while True:
            for key in self._candidates():
                free, lease_id = self._take_concurrency(key, deadline)
                if not free:
                    continue
                try:
                    taken = self._take_slot(key)
                except BaseException:
                    self._release(key, lease_id)
                    raise
                if taken:
                    return key, lease_id
                self._release(key, lease_id)
            now = time.monotonic()
            if now >= deadline:
                raise QuotaExhaustedError(self.provider, self._next_slot_at())
            time.sleep(min(0.1, deadline - now))

    def _candidates(self) -> list[ApiKey]:
        """Usable keys, most headroom first: slots already held, then the smallest share
        of its per-minute quota this process used in the last minute."""
        rests = self._current_rests()
        now_wall, now = datetime.now(UTC), time.monotonic()
        usable = []
        with self._lock:
            for name, key in self._keys.items():
                if name in rests or self._spent_until.get(name, now_wall) > now_wall:
                    continue
                held = self._live_slots(name, now)
                if not held and self._blocked.get(name, 0.0) > now:
                    continue
                recent = self._recent[name]
                while recent and recent[0] < now - 60:
                    recent.popleft()
                usable.append((-held, len(recent) / key.requests_per_minute, name))
        return [self._keys[name] for *_, name in sorted(usable)]

    def _take_slot(self, key: ApiKey) -> bool:
        now = time.monotonic()
        with self._lock:
            held = self._live_slots(key.name, now)
            if held:
                self._slots[key.name].popleft()
        if held:
            return self._count_day(key, now)
        want = min(rate_limit_shape(key.requests_per_minute)[0], SLOTS_PER_TAKE)
        name = rate_limit_name(self.provider, key.name)
        asked = time.monotonic()  # the hold counts from before Prefect granted the slots
        try:
            response = self._prefect().increment_concurrency_slots(
                names=[name], slots=want, mode="rate_limit"
            )
        except PrefectHTTPStatusError as err:
            if err.response.status_code != 423:
                raise
            wait = _float(err.response.headers.get("Retry-After"), 1.0)
            with self._lock:
                self._blocked[key.name] = time.monotonic() + min(max(wait, 0.05), 5.0)
            return False
        if not response.json():
            raise QuotaMisconfiguredError(
                f"Prefect has no rate limit {name!r}: run `make bootstrap` for this key pool"
            )
        with self._lock:
            expiry = asked + HOLD_SECONDS
            self._slots[key.name].extend([expiry] * (want - 1))
        # Taking slots was a call to Prefect: another worker may have rested the key meanwhile
        # (a revoked key was called again 4 s after its refusal). Read the store, not the cache.
        if key.name in self._current_rests(fresh=True):
            return False
        return self._count_day(key, time.monotonic())

    def _count_day(self, key: ApiKey, now: float) -> bool:
        """Spend one of the key's daily calls; False (and skip the key) when none is left."""
        if key.requests_per_day and not usage.spend_key_day(
            self.provider, key.name, key.requests_per_day
        ):
            with self._lock:
                self._spent_until[key.name] = usage.next_midnight(datetime.now(UTC))
            log.warning("%s key %s spent its daily quota", self.provider, key.name)
            return False
        with self._lock:
            self._recent[key.name].append(now)
        return True

    def _live_slots(self, name: str, now: float) -> int:
        slots = self._slots[name]
        while slots and slots[0] <= now:
            slots.popleft()  # not spent within the hold: dropped, never used late
        return len(slots)

    def _current_rests(self, fresh: bool = False) -> dict[str, tuple[datetime, str]]:
        now = time.monotonic()
        if fresh or now - self._rests_read > RESTS_CACHE_SECONDS:
            stored = usage.key_rests(self.provider)  # the store is the truth (rest() writes it)
            with self._lock:
                # A rest this process recorded while the read was under way may not be in it.
                recent = {
                    k: v
                    for k, v in self._rests.items()
                    if self._rested_here.get(k, -1e9) > now - 2 * RESTS_CACHE_SECONDS
                }
                self._rests, self._rests_read = {**recent, **stored}, now
        with self._lock:
            wall = datetime.now(UTC)
            return {k: v for k, v in self._rests.items() if v[0] > wall}

    def _next_slot_at(self) -> datetime:
        rests = self._current_rests()
        wall, now = datetime.now(UTC), time.monotonic()
        with self._lock:
            blocked, spent = list(self._blocked.values()), list(self._spent_until.values())
        times = [wall + timedelta(seconds=max(until - now, 0)) for until in blocked]
        times += [until for until, _ in rests.values()]
        times += [until for until in spent if until > wall]
        later = [t for t in times if t > wall]
        return min(later) if later else wall + timedelta(seconds=1)

    # -- concurrency ---------------------------------------------------------------------

    def _take_concurrency(self, key: ApiKey, deadline: float) -> tuple[bool, UUID | None]:
        """Whether the key may take a call now, and the lease on the concurrency slot it took
        (None when the key has no cap). Not free when every slot is taken (the key then counts
        as busy for a moment)."""
        if not key.max_concurrent:
            return True, None
        name = concurrency_limit_name(self.provider, key.name)
        try:
            response = self._prefect().increment_concurrency_slots_with_lease(
                names=[name],
                slots=1,
                mode="concurrency",
                # Past the deadline a call may still run its own timeouts (a video: poll,
                # retrieve, download); the lease must outlive it, or others slip in.
                lease_duration=max(60.0, deadline - time.monotonic())
                + 3 * self.block.timeout_seconds
                + 60.0,
            )
        except PrefectHTTPStatusError as err:
            if err.response.status_code != 423:
                raise
            wait = _float(err.response.headers.get("Retry-After"), 0.5)
            with self._lock:
                self._blocked[key.name] = time.monotonic() + min(max(wait, 0.05), 1.0)
            return False, None
        body = response.json()
        lease_id = UUID(body["lease_id"]) if body.get("lease_id") else None
        if not body.get("limits"):  # Prefect grants a lease on a limit that does not exist
            if lease_id:
                self._prefect().release_concurrency_slots_with_lease(lease_id)
            raise QuotaMisconfiguredError(
                f"Prefect has no concurrency limit {name!r}: run `make bootstrap` for this pool"
            )
        return True, lease_id

    def _release(self, key: ApiKey, lease_id: UUID | None) -> None:
        if not lease_id:
            return
        try:
            self._prefect().release_concurrency_slots_with_lease(lease_id)
        except Exception as exc:  # the lease expires by itself
            log.warning(
                "%s key %s: concurrency slot not released: %s", self.provider, key.name, exc
            )

    def _prefect(self) -> SyncPrefectClient:
        if self._client is None:
            self._client = _shared_client()
        return self._client


_client_lock = threading.Lock()
_client: SyncPrefectClient | None = None


def _shared_client() -> SyncPrefectClient:
    """One Prefect client per process (httpx's client is thread-safe)."""
    global _client
    with _client_lock:
        if _client is None:
            client = get_client(sync_client=True)
            client.__enter__()
            _client = client
        return _client


_pools: dict[str, tuple[float, KeyPool]] = {}
_pools_lock = threading.Lock()
POOL_RELOAD_SECONDS = 60.0


def key_pool(block_name: str) -> KeyPool:
    """The process's ``KeyPool`` for a block, reloaded from Prefect once a minute."""
    with _pools_lock:
        cached = _pools.get(block_name)
        if cached and time.monotonic() - cached[0] < POOL_RELOAD_SECONDS:
            return cached[1]
    block = load_block(ApiKeyPool, block_name)
    with _pools_lock:
        cached = _pools.get(block_name)
        if cached and cached[1].block == block:
            _pools[block_name] = (time.monotonic(), cached[1])  # keep held slots and state
            return cached[1]
        pool = KeyPool(block)
        _pools[block_name] = (time.monotonic(), pool)
        return pool


def _float(value: str | None, default: float) -> float:
    try:
        return float(value) if value is not None else default
    except ValueError:
        return default
