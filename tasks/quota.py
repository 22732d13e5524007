"""Spending provider API keys: each call takes a slot of its key's Prefect rate limit (and
concurrency limit), counts against the key's daily quota, and moves to another key when one
is refused. The only retry layer between Relay and a provider.

A process takes rate-limit slots from Prefect for several calls at once when several wait,
and spends each within ``HOLD_SECONDS`` or drops it; the limits' shape
(``blocks.keys.rate_limit_shape``) accounts for that hold, so no key ever exceeds its
requests per minute however many processes share it.

What the process knows of each key lives in ``tasks.key_state``; the Prefect client it asks
for slots, in ``tasks.prefect_limits``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import TypeVar
from uuid import UUID

from blocks.keys import (
    HOLD_SECONDS,
    ApiKey,
    ApiKeyPool,
    concurrency_limit_name,
    rate_limit_name,
    rate_limit_shape,
)
from store import usage
from tasks import metrics
from tasks.key_state import KeyState, Rest, RestBook, next_slot_at
from tasks.prefect_limits import Grant, MissingLimitError, PrefectLimits, limits
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


class Take(StrEnum):
    """What asking for one of a key's rate slots came to."""

    TAKEN = "taken"
    BUSY = "busy"  # Prefect has no slot for the key right now
    RESTING = "resting"  # another process rested the key while Prefect was asked
    SPENT = "spent"  # the key's daily quota is used up


class KeyPool:
    """The keys of one ``ApiKeyPool`` block, as this process spends them."""

    def __init__(self, block: ApiKeyPool, prefect: PrefectLimits | None = None) -> None:
        self.block = block
        self.provider = block.provider
        self._prefect = prefect or limits
        self._lock = threading.Lock()  # guards every KeyState
        self._states = {key.name: KeyState(key) for key in block.keys}
        self._rests = RestBook(self._stored_rests, RESTS_CACHE_SECONDS)

    def call(self, fn: Callable[[str], T], deadline: float) -> tuple[T, Spent]:
        """``fn(secret)`` with the key that has the most headroom; on a 429, 5xx or refused
        key, rest that key and try another, until ``deadline`` (``time.monotonic()``)."""
        calls = 0
        while True:
            key, lease_id = self._acquire(deadline)
            calls += 1
            metrics.provider_called(self.provider, key.name)
            try:
                return fn(self.block.secret(key.name)), Spent(key.name, calls)
            except UpstreamError as err:
                if err.kind == "rate_limited":
                    metrics.provider_throttled(self.provider, key.name)
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
        self._rests.record(key_name, Rest(until, reason), time.monotonic())
        usage.cool_key(self.provider, key_name, until, reason)
        return until

    # -- picking a key -------------------------------------------------------------------

    def _acquire(self, deadline: float) -> tuple[ApiKey, UUID | None]:
        """A key with a rate slot taken (and a concurrency lease, for keys that cap calls in
        flight: taken first, so a slot is never held while waiting for one)."""
        while True:
            for key in self._candidates():
                lease = self._take_concurrency(key, deadline)
                if not lease.granted:
                    continue
                try:
                    taken = self._take_slot(key)
                except BaseException:
                    self._release(key, lease.lease_id)
                    raise
                if taken is Take.TAKEN:
                    return key, lease.lease_id
                self._release(key, lease.lease_id)
            now = time.monotonic()
            if now >= deadline:
                raise QuotaExhaustedError(self.provider, self._next_slot_at())
            time.sleep(min(0.1, deadline - now))

    def _candidates(self) -> list[ApiKey]:
        """Usable keys (not resting, not spent, not refused by Prefect), most headroom
        first (``KeyState.headroom``)."""
        rests = self._current_rests()
        now, wall = time.monotonic(), datetime.now(UTC)
        with self._lock:
            usable = sorted(
                (state.headroom(now), name)
                for name, state in self._states.items()
                if name not in rests and state.usable(now, wall)
            )
        return [self._states[name].key for _, name in usable]

    def _take_slot(self, key: ApiKey) -> Take:
        state = self._states[key.name]
        now = time.monotonic()
        with self._lock:
            held = state.spend_held(now)
        if held:
            return self._count_day(state, now)
        want = min(rate_limit_shape(key.requests_per_minute)[0], SLOTS_PER_TAKE)
        name = rate_limit_name(self.provider, key.name)
        asked = time.monotonic()  # the hold counts from before Prefect granted the slots
        try:
            grant = self._prefect.take_rate_slots(name, want)
        except MissingLimitError:
            raise QuotaMisconfiguredError(
                f"Prefect has no rate limit {name!r}: run `make bootstrap` for this key pool"
            ) from None
        if not grant.granted:
            with self._lock:
                state.block(time.monotonic(), _clamp(grant.retry_after, 1.0, high=5.0))
            return Take.BUSY
        with self._lock:
            state.hold(want - 1, asked + HOLD_SECONDS)
        # Taking slots was a call to Prefect: another worker may have rested the key meanwhile
        # (a revoked key was called again 4 s after its refusal). Read the store, not the cache.
        if key.name in self._current_rests(fresh=True):
            return Take.RESTING
        return self._count_day(state, time.monotonic())

    def _count_day(self, state: KeyState, now: float) -> Take:
        """Spend one of the key's daily calls; SPENT (and skip the key) when none is left."""
        key = state.key
        if key.requests_per_day and not usage.spend_key_day(
            self.provider, key.name, key.requests_per_day
        ):
            with self._lock:
                state.spend_day_until(usage.next_midnight(datetime.now(UTC)))
            log.warning("%s key %s spent its daily quota", self.provider, key.name)
            return Take.SPENT
        with self._lock:
            state.count_call(now)
        return Take.TAKEN

    def _current_rests(self, fresh: bool = False) -> dict[str, Rest]:
        return self._rests.current(time.monotonic(), datetime.now(UTC), fresh=fresh)

    def _stored_rests(self) -> dict[str, Rest]:
        # The store is the truth: every process's rest() writes it.
        stored = usage.key_rests(self.provider)
        return {name: Rest(until, reason) for name, (until, reason) in stored.items()}

    def _next_slot_at(self) -> datetime:
        rests = self._current_rests()
        now, wall = time.monotonic(), datetime.now(UTC)
        with self._lock:
            return next_slot_at(self._states.values(), rests.values(), now, wall)

    # -- concurrency ---------------------------------------------------------------------

    def _take_concurrency(self, key: ApiKey, deadline: float) -> Grant:
        """A lease on one of the key's concurrency slots (granted without one when the key
        has no cap); not granted when every slot is taken (the key is busy for a moment)."""
        if not key.max_concurrent:
            return Grant(granted=True)
        name = concurrency_limit_name(self.provider, key.name)
        # Past the deadline a call may still run its own timeouts (a video: poll, retrieve,
        # download); the lease must outlive it, or others slip in.
        seconds = max(60.0, deadline - time.monotonic()) + 3 * self.block.timeout_seconds + 60.0
        try:
            grant = self._prefect.take_lease(name, seconds)
        except MissingLimitError:
            raise QuotaMisconfiguredError(
                f"Prefect has no concurrency limit {name!r}: run `make bootstrap` for this pool"
            ) from None
        if not grant.granted:
            with self._lock:
                self._states[key.name].block(
                    time.monotonic(), _clamp(grant.retry_after, 0.5, high=1.0)
                )
        return grant

    def _release(self, key: ApiKey, lease_id: UUID | None) -> None:
        if lease_id is None:
            return
        try:
            self._prefect.release(lease_id)
        except Exception as exc:  # the lease expires by itself
            log.warning(
                "%s key %s: concurrency slot not released: %s", self.provider, key.name, exc
            )


def _clamp(seconds: float | None, default: float, high: float, low: float = 0.05) -> float:
    """How long Prefect's ``Retry-After`` keeps a key aside, within ``[low, high]``."""
    return min(max(default if seconds is None else seconds, low), high)


@dataclass(frozen=True)
class _Loaded:
    at: float  # monotonic
    pool: KeyPool


_pools: dict[str, _Loaded] = {}
_pools_lock = threading.Lock()
POOL_RELOAD_SECONDS = 60.0


def key_pool(block_name: str) -> KeyPool:
    """The process's ``KeyPool`` for a block, reloaded from Prefect once a minute."""
    with _pools_lock:
        cached = _pools.get(block_name)
        if cached and time.monotonic() - cached.at < POOL_RELOAD_SECONDS:
            return cached.pool
    block = _load_block(block_name)
    with _pools_lock:
        cached = _pools.get(block_name)
        if cached and cached.pool.block == block:
            _pools[block_name] = _Loaded(time.monotonic(), cached.pool)  # keep held slots
            return cached.pool
        pool = KeyPool(block)
        _pools[block_name] = _Loaded(time.monotonic(), pool)
        return pool


def loaded_provider(block_name: str) -> str | None:
    """The provider of a key pool this process has loaded (None: not loaded; never loads)."""
    with _pools_lock:
        cached = _pools.get(block_name)
    return cached.pool.provider if cached else None


def _load_block(name: str) -> ApiKeyPool:
    """The block, loaded synchronously even on a thread that runs an event loop."""
    # ``_sync`` is Prefect's ``async_dispatch`` switch, absent from ``load``'s signature.
    block = ApiKeyPool.load(name, _sync=True)  # type: ignore[call-arg]  # see the line above
    if not isinstance(block, ApiKeyPool):  # its declared type also allows a coroutine
        raise TypeError(f"ApiKeyPool.load returned {type(block).__name__}")
    return block
