"""Bot requests in the job store: intake, the one worker that answers, and delivery."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import or_, true, update
from sqlmodel import select

from store.db import get_engine, reader, session_scope
from store.models import BotRequest, BotRequestStatus, DeliveryStatus

FINISHED = (BotRequestStatus.COMPLETED, BotRequestStatus.FAILED, BotRequestStatus.REFUSED)
UNDELIVERED = (DeliveryStatus.PENDING, DeliveryStatus.RETRYING)
# Whoever delivers an answer has it to itself this long: longer than any one delivery (a
# message may take 130 s of timeouts and Retry-After waits, and an answer has a few).
DELIVERY_LEASE_SECONDS = 600.0


@dataclass(frozen=True)
class StoredFile:
    """A file of an answer, kept under the request's folder."""

    name: str
    size: int
    mime_type: str


def create_request(**fields: object) -> BotRequest:
    """Record a new request (``queued``, or ``refused`` with its reason)."""
    request = BotRequest(**fields)
    with session_scope() as session:
        session.add(request)
    return request


def get_request(request_id: str) -> BotRequest | None:
    """The request, or None."""
    with reader().connect() as connection:
        row = connection.execute(select(BotRequest).where(BotRequest.id == request_id)).first()
    return BotRequest.model_validate(row._mapping) if row else None


def claim_request(request_id: str, worker: str) -> BotRequest | None:
    """Move a queued request to running for ``worker``; None when another worker has it
    or it is finished (each request is answered exactly once)."""
    table = BotRequest.__table__
    with get_engine().begin() as connection:
        result = connection.execute(
            update(table)
            .where(table.c.id == request_id, table.c.status == BotRequestStatus.QUEUED)
            .values(status=BotRequestStatus.RUNNING, worker=worker, started_at=datetime.now(UTC))
        )
    return get_request(request_id) if result.rowcount == 1 else None


def finish_request(
    request_id: str,
    *,
    status: BotRequestStatus,
    claimed_by: str | None,
    answer_text: str | None = None,
    files: list[StoredFile] | None = None,
    error: str | None = None,
    retry_at: datetime | None = None,
    **usage: object,
) -> datetime | None:
    """Record the outcome if ``claimed_by`` still holds the request (None: the API, for a
    request no worker holds). Returns the delivery lease the caller now holds, or None when
    the request was taken from it (stranded and answered by another worker)."""
    lease = delivery_lease_end()
    table = BotRequest.__table__
    holder = (
        (table.c.status == BotRequestStatus.RUNNING) & (table.c.worker == claimed_by)
        if claimed_by
        else table.c.status.in_([BotRequestStatus.QUEUED, BotRequestStatus.RUNNING])
    )
    with get_engine().begin() as connection:
        result = connection.execute(
            update(table)
            .where(table.c.id == request_id, holder)
            .values(
                status=status,
                answer_text=answer_text,
                answer_files=json.dumps([f.__dict__ for f in files]) if files else None,
                error=error,
                retry_at=retry_at,
                finished_at=datetime.now(UTC),
                next_delivery_at=lease,
                **usage,
            )
        )
    return lease if result.rowcount == 1 else None


def delivery_lease_end() -> datetime:
    """Until when the process that finished a request delivers it alone."""
    return datetime.now(UTC) + timedelta(seconds=DELIVERY_LEASE_SECONDS)


def claim_delivery(request_id: str) -> datetime | None:
    """Take a due delivery for this process; returns the lease (None: not due, or taken).
    The lease is the row's ``next_delivery_at``: only its holder can record the outcome."""
    now, lease = datetime.now(UTC), delivery_lease_end()
    table = BotRequest.__table__
    with get_engine().begin() as connection:
        result = connection.execute(
            update(table)
            .where(table.c.id == request_id, _delivery_due(table, now))
            .values(next_delivery_at=lease)
        )
    return lease if result.rowcount == 1 else None


def answer_files(request: BotRequest) -> list[StoredFile]:
    """The files recorded with the answer."""
    return [StoredFile(**item) for item in json.loads(request.answer_files or "[]")]


def record_delivery(
    request_id: str,
    *,
    delivered: bool,
    messages_sent: int,
    attempts: int,
    error: str | None,
    give_up: bool,
    lease: datetime,
    retry_in: float = 30.0,
) -> DeliveryStatus | None:
    """Store how a delivery went: delivered, to be retried after ``retry_in``, or failed.
    None (nothing stored) when ``lease`` is no longer the delivery's: another process has
    taken it over, and its record wins."""
    now = datetime.now(UTC)
    if delivered:
        status, next_at = DeliveryStatus.DELIVERED, None
    elif give_up:
        status, next_at = DeliveryStatus.FAILED, None
    else:
        status, next_at = DeliveryStatus.RETRYING, now + timedelta(seconds=retry_in)
    table = BotRequest.__table__
    with get_engine().begin() as connection:
        result = connection.execute(
            update(table)
            .where(
                table.c.id == request_id,
                table.c.next_delivery_at == lease,
                table.c.delivery_status.in_(UNDELIVERED),
            )
            .values(
                delivery_status=status,
                delivery_attempts=table.c.delivery_attempts + attempts,
                delivery_messages_sent=messages_sent,
                delivery_error=error,
                next_delivery_at=next_at,
                delivered_at=now if delivered else None,
            )
        )
    return status if result.rowcount == 1 else None


def deliveries_due(
    pool: str | None = None, now: datetime | None = None, limit: int = 50
) -> list[str]:
    """Finished requests whose answer Discord has not taken yet and whose retry is due."""
    now = now or datetime.now(UTC)
    table = BotRequest.__table__
    with reader().connect() as connection:
        rows = connection.execute(
            select(table.c.id)
            .where(
                _delivery_due(table, now),
                table.c.status.in_(FINISHED),
                table.c.pool == pool if pool else true(),
            )
            .order_by(table.c.next_delivery_at)
            .limit(limit)
        ).all()
    return [row[0] for row in rows]


def stranded(
    older_than: float,
    pool: str | None = None,
    kind: str | None = None,
    now: datetime | None = None,
    limit: int = 50,
) -> list[str]:
    """Requests still queued ``older_than`` seconds after they came in, or running that
    long after they started: their task run was lost with a worker."""
    now = now or datetime.now(UTC)
    cutoff = now - timedelta(seconds=older_than)
    table = BotRequest.__table__
    with reader().connect() as connection:
        rows = connection.execute(
            select(table.c.id)
            .where(
                _stranded(table, cutoff),
                table.c.pool == pool if pool else true(),
                table.c.kind == kind if kind else true(),
            )
            .limit(limit)
        ).all()
    return [row[0] for row in rows]


def take_stranded(request_id: str, older_than: float) -> bool:
    """Put a stranded request back in the queue, marked dispatched now, if it still is
    stranded; True for the one process that did it (it dispatches the request again)."""
    now = datetime.now(UTC)
    cutoff = now - timedelta(seconds=older_than)
    table = BotRequest.__table__
    with get_engine().begin() as connection:
        result = connection.execute(
            update(table)
            .where(table.c.id == request_id, _stranded(table, cutoff))
            .values(status=BotRequestStatus.QUEUED, worker=None, started_at=None, dispatched_at=now)
        )
    return result.rowcount == 1


def _delivery_due(table, now: datetime):
    """Not delivered yet, and no process holds the delivery (or its retry time has come)."""
    return table.c.delivery_status.in_(UNDELIVERED) & or_(
        table.c.next_delivery_at.is_(None), table.c.next_delivery_at <= now
    )


def _stranded(table, cutoff: datetime):
    return or_(
        (table.c.status == BotRequestStatus.QUEUED)
        & (table.c.created_at < cutoff)
        & or_(table.c.dispatched_at.is_(None), table.c.dispatched_at < cutoff),
        (table.c.status == BotRequestStatus.RUNNING) & (table.c.started_at < cutoff),
    )
