"""What one process knows about the keys of a pool, and the rests all processes share.

Pure bookkeeping: no Prefect, no store, no clock of its own. Callers pass ``now``
(``time.monotonic()``) and ``wall`` (``datetime.now(UTC)``), and guard a ``KeyState`` with
their pool's lock; ``RestBook`` has a lock of its own because its reads are slow.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from blocks.keys import ApiKey

RECENT_SECONDS = 60.0  # the window a key's requests per minute are counted over


@dataclass(frozen=True)
class Rest:
    """A key resting after a refusal (429, 401, 5xx): unused by every process until then."""

    until: datetime
    reason: str


class KeyState:
    """One key as this process spends it: the rate slots it took from Prefect and has not
    spent yet, when Prefect last said no, whether the daily quota is used up, and the calls
    made in the last minute (to spread load across keys)."""

    __slots__ = ("_held", "_recent", "blocked_until", "key", "spent_until")

    def __init__(self, key: ApiKey) -> None:
        self.key = key
        self.blocked_until = 0.0  # monotonic: Prefect answered 423 for this key until then
        self.spent_until: datetime | None = None  # the daily quota is used up until then
        self._held: deque[float] = deque()  # monotonic expiry of each slot taken, not spent
        self._recent: deque[float] = deque()  # monotonic time of each call, last minute

    def held(self, now: float) -> int:
        """Slots taken from Prefect that may still be spent."""
        while self._held and self._held[0] <= now:
            self._held.popleft()  # not spent within the hold: dropped, never used late
        return len(self._held)

    def spend_held(self, now: float) -> bool:
        """Spend one slot already taken; False when none is left."""
        if not self.held(now):
            return False
        self._held.popleft()
        return True

    def hold(self, count: int, expiry: float) -> None:
        """Keep ``count`` slots taken from Prefect, to spend before ``expiry``."""
        self._held.extend([expiry] * count)

    def block(self, now: float, seconds: float) -> None:
        """Prefect has no slot for this key for ``seconds``."""
        self.blocked_until = now + seconds

    def spend_day_until(self, when: datetime) -> None:
        """The key's daily quota is used up until ``when`` (the next UTC midnight)."""
        self.spent_until = when

    def count_call(self, now: float) -> None:
        self._recent.append(now)

    def usable(self, now: float, wall: datetime) -> bool:
        """Not spent for the day, and either holding a slot or not refused by Prefect."""
        if self.spent_until is not None and self.spent_until > wall:
            return False
        return self.held(now) > 0 or self.blocked_until <= now

    def headroom(self, now: float) -> tuple[int, float]:
        """Sort key, best first: most slots already held, then the smallest share of its
        requests per minute this process used in the last minute."""
        while self._recent and self._recent[0] < now - RECENT_SECONDS:
            self._recent.popleft()
        return -self.held(now), len(self._recent) / self.key.requests_per_minute


class RestBook:
    """The rests of one provider's keys. The store is the truth (every process writes its
    rests there); it is read at most every ``cache_seconds``, or at once when ``fresh``."""

    def __init__(self, read: Callable[[], Mapping[str, Rest]], cache_seconds: float = 1.0) -> None:
        self._read = read
        self._cache_seconds = cache_seconds
        self._lock = threading.Lock()
        self._rests: dict[str, Rest] = {}
        self._read_at = float("-inf")
        self._recorded_at: dict[str, float] = {}  # when this process rested each key

    def record(self, key_name: str, rest: Rest, now: float) -> None:
        """A rest this process decided (it writes it to the store itself)."""
        with self._lock:
            self._rests[key_name] = rest
            self._recorded_at[key_name] = now

    def current(self, now: float, wall: datetime, fresh: bool = False) -> dict[str, Rest]:
        """Keys resting at ``wall``: name -> rest."""
        if fresh or now - self._read_at > self._cache_seconds:
            stored = self._read()
            with self._lock:
                # A rest this process recorded while the read was under way may not be in it.
                kept_since = now - 2 * self._cache_seconds
                recent = {
                    name: rest
                    for name, rest in self._rests.items()
                    if self._recorded_at.get(name, float("-inf")) > kept_since
                }
                self._rests, self._read_at = {**recent, **stored}, now
        with self._lock:
            return {name: rest for name, rest in self._rests.items() if rest.until > wall}


def next_slot_at(
    states: Iterable[KeyState], rests: Iterable[Rest], now: float, wall: datetime
) -> datetime:
    """The soonest moment a key may be free again (a second from now when none says)."""
    times: list[datetime] = []
    for state in states:
        times.append(wall + timedelta(seconds=max(state.blocked_until - now, 0.0)))
        if state.spent_until is not None:
            times.append(state.spent_until)
    times += [rest.until for rest in rests]
    later = [t for t in times if t > wall]
    return min(later) if later else wall + timedelta(seconds=1)
