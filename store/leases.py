"""Leases: the life of every unit of work in the store (a transcription job, a bot request
and its delivery, a video).

A unit of work is a row. A process **claims** it under a lease (owner, expiry, token),
**renews** the lease while it works, and **finishes** the row only while the lease's token
is still the row's: every finishing write is fenced by it, so a holder that stalled past its
lease and lost the row cannot record a second outcome. Once a lease has expired, **exactly
one** other process takes the row over: one conditional UPDATE, which the database lets one
caller win. Expiry is judged by the database's clock, never a worker's: hosts' clocks drift,
and the database's is the one every host shares.

Each workload says where its lease lives with ``LeasedRows`` (its table's columns, and which
of its rows are unfinished), and adds its own columns and outcomes around these calls. The
calls take the caller's connection, so a workload's own writes land in the same transaction.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import Column, ColumnElement, Table, and_, false, func, or_, select, update
from sqlalchemy.engine import Connection, Row

from store.models import as_utc, new_id

log = logging.getLogger("relay.leases")


class LeaseOutcome(StrEnum):
    """What became of work a process set out to do and did not finish itself."""

    LOST = "lost"  # its lease ran out and another process took the work over
    SUPERSEDED = "superseded"  # dispatched again since: only the newer dispatch may run it
    MISSING = "missing"  # the row is gone (deleted meanwhile)


@dataclass(frozen=True)
class Lease:
    """A process's hold on a unit of work: who holds it, until when (the database's time;
    None: until it is claimed), and the token that fences the holder's writes."""

    owner: str | None
    expires_at: datetime | None
    token: str


@dataclass(frozen=True)
class LeasedRows:
    """Where a workload keeps its lease: the table, its key and lease columns, and which of
    its rows are unfinished (only those hold leases). ``owner`` may be None: nobody needs
    to know who holds it."""

    table: Table
    key: Column[Any]
    owner: Column[str | None] | None
    expires_at: Column[datetime | None]
    token: Column[str | None]
    unfinished: ColumnElement[bool]

    @classmethod
    def on(cls, table: Table, unfinished: ColumnElement[bool]) -> LeasedRows:
        """A table with the usual columns: ``id``, ``lease_owner``, ``lease_expires_at`` and
        ``lease_token`` (what every workload's table has)."""
        columns = table.c
        return cls(
            table=table,
            key=columns.id,
            owner=columns.lease_owner,
            expires_at=columns.lease_expires_at,
            token=columns.lease_token,
            unfinished=unfinished,
        )

    def free(self, now: datetime) -> ColumnElement[bool]:
        """Unfinished and held by nobody: never leased, or its lease has expired."""
        return and_(self.unfinished, or_(self.expires_at.is_(None), self.expires_at < now))

    def expired(self, now: datetime) -> ColumnElement[bool]:
        """Unfinished, and the lease it was given has run out (never leased is not expired)."""
        return and_(self.unfinished, self.expires_at < now)

    def held(self, held: Mapping[Any, Lease]) -> ColumnElement[bool]:
        """Unfinished, and still under these leases (the fence of every holder's write)."""
        # A lease without a token fences nothing (token IS NULL would match unleased rows).
        held = {key: lease for key, lease in held.items() if lease.token}
        if not held:
            return false()
        fence = or_(
            *(and_(self.key == key, self.token == lease.token) for key, lease in held.items())
        )
        return and_(self.unfinished, fence)

    def lease_of(self, row: object) -> Lease | None:
        """The lease a loaded row (model or result row) is under, or None."""
        token = getattr(row, self.token.key)
        if token is None:
            return None
        owner = getattr(row, self.owner.key) if self.owner is not None else None
        return Lease(owner, as_utc(getattr(row, self.expires_at.key)), token)

    def values(self, lease: Lease | None) -> dict[str, object]:
        """The lease columns' values for a row under ``lease`` (None: under no lease)."""
        values: dict[str, object] = {
            self.expires_at.key: lease.expires_at if lease else None,
            self.token.key: lease.token if lease else None,
        }
        if self.owner is not None:
            values[self.owner.key] = lease.owner if lease else None
        return values


@dataclass(frozen=True)
class Claim:
    """What a claim took: the lease (one token for every row taken at once) and the rows
    (the key first, then the columns asked for)."""

    lease: Lease
    rows: list[Row[*tuple[Any, ...]]]


def db_now(connection: Connection) -> datetime:
    """The database's clock (aware, UTC): what every lease is timed by."""
    if connection.dialect.name == "postgresql":
        now: datetime = connection.execute(select(func.clock_timestamp())).scalar_one()
        return now
    # SQLite's own clock, not Python's: the store's time comes from the store on both.
    stamp = connection.execute(select(func.strftime("%Y-%m-%d %H:%M:%f", "now"))).scalar_one()
    return datetime.fromisoformat(stamp).replace(tzinfo=UTC)


def grant(connection: Connection, owner: str | None, seconds: float | None) -> Lease:
    """A new lease for a row about to be written (``seconds`` None: no expiry until claimed);
    stored with ``LeasedRows.values``."""
    expires = db_now(connection) + timedelta(seconds=seconds) if seconds is not None else None
    return Lease(owner, expires, new_id())


def claim(
    connection: Connection,
    rows: LeasedRows,
    where: ColumnElement[bool],
    owner: str,
    seconds: float,
    *,
    limit: int = 1,
    order_by: Sequence[Any] = (),
    values: Mapping[str, object] | None = None,
    returning: Sequence[Any] = (),
) -> Claim:
    """Take up to ``limit`` free rows matching ``where`` (never leased, or expired) under a
    new lease of ``seconds``; ``values`` are the workload's own columns to set with it."""
    now = db_now(connection)
    condition = and_(where, rows.free(now))
    lease = Lease(owner, now + timedelta(seconds=seconds), new_id())
    return _take(connection, rows, condition, lease, limit, order_by, values, returning)


def hand_over(
    connection: Connection,
    rows: LeasedRows,
    where: ColumnElement[bool],
    owner: str,
    seconds: float,
    values: Mapping[str, object] | None = None,
) -> Lease | None:
    """Put the unfinished row matching ``where`` under a new lease for ``owner``, whoever
    held it: the work was handed to the caller (a dispatched run starting it). Of racing
    callers one gets it, provided ``where`` stops matching once it is taken (a status)."""
    now = db_now(connection)
    lease = Lease(owner, now + timedelta(seconds=seconds), new_id())
    taken = _take(connection, rows, and_(where, rows.unfinished), lease, 1, (), values, ())
    return lease if taken.rows else None


def take_over(
    connection: Connection,
    rows: LeasedRows,
    key: object,
    owner: str,
    seconds: float,
    values: Mapping[str, object] | None = None,
) -> Lease | None:
    """Take a row whose lease has expired under a new lease; of any number of callers at
    once, exactly one gets it (the others get None, as does a row whose lease is live)."""
    now = db_now(connection)
    condition = and_(rows.key == key, rows.expired(now))
    lease = Lease(owner, now + timedelta(seconds=seconds), new_id())
    taken = _take(connection, rows, condition, lease, 1, (), values, ())
    return taken.lease if taken.rows else None


def expired(
    connection: Connection,
    rows: LeasedRows,
    where: ColumnElement[bool],
    limit: int = 50,
    order_by: Sequence[Any] = (),
) -> list[Any]:
    """Keys of rows matching ``where`` whose lease has expired: their holder is presumed dead."""
    now = db_now(connection)
    query = select(rows.key).where(where, rows.expired(now)).order_by(*order_by).limit(limit)
    return list(connection.execute(query).scalars())


def renew(
    connection: Connection,
    rows: LeasedRows,
    held: Mapping[Any, Lease],
    seconds: float,
    owner: str | None = None,
) -> dict[Any, Lease]:
    """Extend leases by ``seconds`` from now (and hand them to ``owner`` when given: the
    bearer of a dispatched token becomes the holder). Returns the leases still held; a key
    missing from it was lost, and its holder must stop writing to it."""
    if not held:
        return {}
    expires = db_now(connection) + timedelta(seconds=seconds)
    values: dict[str, object] = {rows.expires_at.key: expires}
    if owner is not None and rows.owner is not None:
        values[rows.owner.key] = owner
    kept = connection.execute(
        update(rows.table).where(rows.held(held)).values(**values).returning(rows.key)
    ).scalars()
    return {key: Lease(owner or held[key].owner, expires, held[key].token) for key in kept}


def finish(
    connection: Connection,
    rows: LeasedRows,
    held: Mapping[Any, Lease],
    values: Mapping[str, object],
    then: Lease | None = None,
) -> list[Any]:
    """Write the holder's outcome (``values``) to the rows still under these leases, and
    end the leases (or put the rows under ``then``). Returns the keys written: a lease lost
    meanwhile writes nothing, so a late holder never overwrites the new holder's record."""
    if not held:
        return []
    written = connection.execute(
        update(rows.table)
        .where(rows.held(held))
        .values(**{**rows.values(then), **values})
        .returning(rows.key)
    )
    return list(written.scalars())


def _take(
    connection: Connection,
    rows: LeasedRows,
    condition: ColumnElement[bool],
    lease: Lease,
    limit: int,
    order_by: Sequence[Any],
    values: Mapping[str, object] | None,
    returning: Sequence[Any],
) -> Claim:
    """Put up to ``limit`` rows meeting ``condition`` under ``lease``."""
    candidates = select(rows.key).where(condition).order_by(*order_by).limit(limit)
    if connection.dialect.name == "postgresql":
        # Materialised: a plain IN (subquery ... LIMIT n) may be run more than once by
        # PostgreSQL, and with SKIP LOCKED each run can pick other rows (> n taken).
        picked = (
            candidates.with_for_update(skip_locked=True).cte("picked").prefix_with("MATERIALIZED")
        )
        candidates = select(picked.c[rows.key.key])
    # The condition again in the UPDATE: of racing callers, the one whose write lands first
    # makes the row live, and the others' conditions no longer hold for it.
    taken = connection.execute(
        update(rows.table)
        .where(rows.key.in_(candidates.scalar_subquery()), condition)
        .values(**{**rows.values(lease), **(values or {})})
        .returning(rows.key, *returning)
    ).all()
    return Claim(lease, list(taken))


@contextmanager
def renewing(renew_once: Callable[[], bool], every: float, what: str) -> Iterator[threading.Event]:
    """Renew a lease from a background thread every ``every`` s while the block runs.
    ``renew_once`` returns False once the lease is lost; the event yielded is then set (and
    renewal stops), so the holder can stop before it writes. A failed renewal (the store
    briefly unreachable) is retried next round: the lease has slack for it."""
    stop, lost = threading.Event(), threading.Event()

    def run() -> None:
        while not stop.wait(every):
            try:
                if not renew_once() and not stop.is_set():  # not lost: finished meanwhile
                    log.warning("lost the lease of %s to another process", what)
                    lost.set()
                    return
            except Exception:
                log.warning("could not renew the lease of %s", what, exc_info=True)

    thread = threading.Thread(target=run, name=f"lease:{what}", daemon=True)
    thread.start()
    try:
        yield lost
    finally:
        stop.set()


def process_owner() -> str:
    """The name a long-lived process holds leases under: its host and process id."""
    return f"{socket.gethostname()}:{os.getpid()}"[:255]


def renewal_interval(seconds: float) -> float:
    """How often a holder renews a lease of ``seconds``: a third, so two renewals can fail
    before it runs out."""
    return seconds / 3
