"""Prefect's global rate and concurrency limits, as the key quota asks them for slots.

One long-lived client per process, opened on first use and closed by ``close()`` (the
worker's shutdown, or the interpreter's exit): a client per call would rebuild its HTTP
connection and SSL context every time, which the bot's p95 cannot pay.
"""

from __future__ import annotations

import atexit
import threading
from contextlib import ExitStack
from dataclasses import dataclass
from uuid import UUID

from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.exceptions import PrefectHTTPStatusError

LOCKED = 423  # what Prefect answers when a limit has no slot free


class MissingLimitError(RuntimeError):
    """Prefect has no global limit of that name."""


@dataclass(frozen=True)
class Grant:
    """Prefect's answer to a request for slots: granted (with the lease to release, for a
    concurrency limit), or not, with the ``Retry-After`` it named, if any."""

    granted: bool
    retry_after: float | None = None
    lease_id: UUID | None = None


class PrefectLimits:
    """Slots of Prefect's global limits, through one client shared by every thread (httpx's
    client is thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: tuple[SyncPrefectClient, ExitStack] | None = None

    def take_rate_slots(self, name: str, slots: int) -> Grant:
        """``slots`` slots of the rate limit ``name`` at once, or none."""
        try:
            response = self._client().increment_concurrency_slots(
                names=[name], slots=slots, mode="rate_limit"
            )
        except PrefectHTTPStatusError as err:
            return _refused(err)
        if not response.json():
            raise MissingLimitError(name)
        return Grant(granted=True)

    def take_lease(self, name: str, seconds: float) -> Grant:
        """One slot of the concurrency limit ``name`` under a lease of ``seconds``."""
        client = self._client()
        try:
            response = client.increment_concurrency_slots_with_lease(
                names=[name], slots=1, mode="concurrency", lease_duration=seconds
            )
        except PrefectHTTPStatusError as err:
            return _refused(err)
        body = response.json()
        lease_id = UUID(body["lease_id"]) if body.get("lease_id") else None
        if not body.get("limits"):  # Prefect grants a lease on a limit that does not exist
            if lease_id:
                client.release_concurrency_slots_with_lease(lease_id)
            raise MissingLimitError(name)
        return Grant(granted=True, lease_id=lease_id)

    def release(self, lease_id: UUID) -> None:
        """Give a concurrency slot back (an unreleased one frees itself when its lease ends)."""
        self._client().release_concurrency_slots_with_lease(lease_id)

    def close(self) -> None:
        """Close the client; a later call opens a new one."""
        with self._lock:
            opened, self._open = self._open, None
        if opened:
            opened[1].close()

    def _client(self) -> SyncPrefectClient:
        opened = self._open
        if opened is None:
            with self._lock:
                if self._open is None:
                    stack = ExitStack()
                    self._open = stack.enter_context(get_client(sync_client=True)), stack
                opened = self._open
        return opened[0]


def _refused(err: PrefectHTTPStatusError) -> Grant:
    if err.response.status_code != LOCKED:
        raise err
    return Grant(granted=False, retry_after=_seconds(err.response.headers.get("Retry-After")))


def _seconds(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


limits = PrefectLimits()  # the process's: closed when it exits, or earlier by ``close()``
atexit.register(limits.close)
