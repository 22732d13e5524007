"""Bot requests in the job store: intake, the one worker that answers, and delivery.

Two units of work live on a request's row, each under its own lease (store/leases.py):
answering it (queued: the dispatched task run's time to start; running: its worker's,
renewed while it asks the provider) and delivering the answer (the process that posts it;
once a delivery attempt fails, the expiry is also when the next one is due).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Required, TypedDict, Unpack

from sqlalchemy import case, true
from sqlmodel import select

from relay_settings import get_settings
from store import callbacks, leases
from store.db import get_engine, reader
from store.leases import Lease, LeasedRows, db_now, process_owner
from store.models import (
    BotRequest,
    BotRequestStatus,
    CallbackSubject,
    DeliveryStatus,
    FollowUp,
    table_of,
    utcnow,
)

FINISHED = (BotRequestStatus.COMPLETED, BotRequestStatus.FAILED, BotRequestStatus.REFUSED)
UNDELIVERED = (DeliveryStatus.PENDING, DeliveryStatus.RETRYING)
SUBJECT = CallbackSubject.BOT_REQUEST
_REQUEST = table_of(BotRequest)
REQUEST_LEASES = LeasedRows.on(
    _REQUEST, _REQUEST.c.status.in_([BotRequestStatus.QUEUED, BotRequestStatus.RUNNING])
)
DELIVERY_LEASES = LeasedRows(
    table=_REQUEST,
    key=_REQUEST.c.id,
    owner=None,
    expires_at=_REQUEST.c.next_delivery_at,
    token=_REQUEST.c.delivery_token,
    unfinished=_REQUEST.c.status.in_(FINISHED) & _REQUEST.c.delivery_status.in_(UNDELIVERED),
)


class RequestIntake(TypedDict, total=False):
    """What a request asks and where its answer goes: the columns the API fills in."""

    kind: Required[str]
    prompt: Required[str]
    user_id: Required[str]
    channel: Required[str]
    guild: str | None
    route: Required[str]
    pool: Required[str]
    destination_block: str | None
    destination_sealed: str | None
    destination_shown: str | None
    interaction_at: datetime | None
    followup: FollowUp | None
    notice_due_at: datetime | None


class RequestFields(RequestIntake, total=False):
    """The columns a new request may be recorded with (``BotRequest``'s, less its id): its
    intake, and any state it starts in (refused at intake, or a test's stranded request)."""

    status: BotRequestStatus
    provider: str | None
    model: str | None
    key_name: str | None
    upstream_calls: int
    upstream_seconds: float | None
    answer_text: str | None
    answer_files: str | None
    error: str | None
    retry_at: datetime | None
    worker: str | None
    lease_owner: str | None
    lease_expires_at: datetime | None
    lease_token: str | None
    created_at: datetime
    dispatched_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    delivery_status: DeliveryStatus
    delivery_attempts: int
    delivery_messages_sent: int
    delivery_error: str | None
    next_delivery_at: datetime | None
    delivery_token: str | None
    delivered_at: datetime | None
    notice_token: str | None


class AnswerDetails(TypedDict, total=False):
    """What a finished request records besides its outcome: who answered it and at what
    cost, or how its delivery ends when the outcome needs no posting."""

    provider: str | None
    model: str | None
    key_name: str | None
    upstream_calls: int
    upstream_seconds: float | None
    delivery_status: DeliveryStatus
    delivery_error: str | None


@dataclass(frozen=True)
class StoredFile:
    """A file of an answer, kept under the request's folder."""

    name: str
    size: int
    mime_type: str


def create_request(
    *,
    dispatch_seconds: float | None = None,
    deliver: bool = False,
    callback_url: str | None = None,
    **fields: Unpack[RequestFields],
) -> BotRequest:
    """Record a new request (``queued``, or ``refused`` with its reason). A queued one is
    under this process's lease for ``dispatch_seconds`` (its task run's time to start, after
    which another process dispatches it again); with ``deliver``, this process holds its
    delivery (a refusal it posts itself). With ``callback_url``, its callback is recorded
    with it (due at once for a request born finished)."""
    with get_engine().begin() as connection:
        request = BotRequest(**fields)
        if dispatch_seconds is not None:
            lease = leases.grant(connection, process_owner(), dispatch_seconds)
            request.sqlmodel_update(REQUEST_LEASES.values(lease))
        if deliver:
            seconds = get_settings().bot.delivery_lease_seconds
            request.sqlmodel_update(DELIVERY_LEASES.values(leases.grant(connection, None, seconds)))
        connection.execute(_REQUEST.insert().values(**request.model_dump()))
        if callback_url:
            ended = request.status if request.status in FINISHED else None
            callbacks.insert(connection, SUBJECT, request.id, callback_url, ended_as=ended)
    return request


def request_lease(request: BotRequest) -> Lease | None:
    """The lease the request is answered under (queued: its dispatcher's), or None."""
    return REQUEST_LEASES.lease_of(request)


def delivery_lease(request: BotRequest) -> Lease | None:
    """The lease of the request's delivery, or None when no process holds it."""
    return DELIVERY_LEASES.lease_of(request)


def get_request(request_id: str) -> BotRequest | None:
    """The request, or None."""
    with reader().connect() as connection:
        row = connection.execute(select(BotRequest).where(BotRequest.id == request_id)).first()
    return BotRequest.model_validate(row._mapping) if row else None


def claim_request(request_id: str, worker: str) -> tuple[BotRequest, Lease] | None:
    """Move a queued request to running under ``worker``'s lease (whichever run of it starts
    first); None when another worker has it or it is finished (each request is answered
    exactly once). The worker renews the lease while it works (``renew_request``)."""
    seconds = get_settings().bot.request_lease_seconds
    started = {"status": BotRequestStatus.RUNNING, "worker": worker, "started_at": utcnow()}
    with get_engine().begin() as connection:
        queued = (_REQUEST.c.id == request_id) & (_REQUEST.c.status == BotRequestStatus.QUEUED)
        lease = leases.hand_over(connection, REQUEST_LEASES, queued, worker, seconds, started)
    request = get_request(request_id) if lease else None
    return (request, lease) if request and lease else None


def renew_request(request_id: str, lease: Lease) -> bool:
    """The worker answering the request lives on; False once the request was taken from it."""
    seconds = get_settings().bot.request_lease_seconds
    with get_engine().begin() as connection:
        return request_id in leases.renew(connection, REQUEST_LEASES, {request_id: lease}, seconds)


def finish_request(
    request_id: str,
    *,
    status: BotRequestStatus,
    lease: Lease | None,
    answer_text: str | None = None,
    files: list[StoredFile] | None = None,
    error: str | None = None,
    retry_at: datetime | None = None,
    **details: Unpack[AnswerDetails],
) -> Lease | None:
    """Record the outcome if ``lease`` is still the request's. Returns the delivery lease
    the caller now holds, or None when the request was taken from it (stranded and answered
    by another worker)."""
    if lease is None:
        return None
    outcome: dict[str, object] = {
        "status": status,
        "answer_text": answer_text,
        "answer_files": json.dumps([f.__dict__ for f in files]) if files else None,
        "error": error,
        "retry_at": retry_at,
        "finished_at": utcnow(),
        **details,
    }
    with get_engine().begin() as connection:
        delivery = leases.grant(connection, None, get_settings().bot.delivery_lease_seconds)
        outcome |= DELIVERY_LEASES.values(delivery)
        written = leases.finish(connection, REQUEST_LEASES, {request_id: lease}, outcome)
        if written:  # its callback is due with the outcome, never without it
            connection.execute(callbacks.ended(SUBJECT, request_id, status))
    return delivery if written else None


def claim_delivery(request_id: str) -> Lease | None:
    """Take a due delivery for this process; returns its lease (None: not due, or taken).
    Only the lease's holder can record the outcome."""
    seconds = get_settings().bot.delivery_lease_seconds
    with get_engine().begin() as connection:
        taken = leases.claim(
            connection, DELIVERY_LEASES, _REQUEST.c.id == request_id, process_owner(), seconds
        )
    return taken.lease if taken.rows else None


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
    lease: Lease,
    retry_in: float = 30.0,
    followup: FollowUp | None = None,
) -> DeliveryStatus | None:
    """Store how a delivery went: delivered, to be retried after ``retry_in``, or failed
    (and, with ``followup``, what it learnt of the interaction's token). None (nothing
    stored) when ``lease`` is no longer the delivery's: another process has taken it over,
    and its record wins."""
    if delivered:
        status = DeliveryStatus.DELIVERED
    else:
        status = DeliveryStatus.FAILED if give_up else DeliveryStatus.RETRYING
    with get_engine().begin() as connection:
        now = db_now(connection)
        outcome = {
            "delivery_status": status,
            "delivery_attempts": _REQUEST.c.delivery_attempts + attempts,
            "delivery_messages_sent": messages_sent,
            "delivery_error": error,
            "delivered_at": now if delivered else None,
        }
        if followup is not None:
            outcome["followup"] = followup
        elif status != DeliveryStatus.RETRYING:  # a live follow-up needs no notice now
            live = _REQUEST.c.followup == FollowUp.LIVE
            outcome["followup"] = case((live, FollowUp.CLOSED.value), else_=_REQUEST.c.followup)
        if status == DeliveryStatus.RETRYING:  # held by nobody, and due again then
            outcome["next_delivery_at"] = now + timedelta(seconds=retry_in)
        written = leases.finish(connection, DELIVERY_LEASES, {request_id: lease}, outcome)
    return status if written else None


def deliveries_due(pool: str | None = None, limit: int = 50) -> list[str]:
    """Finished requests whose answer Discord has not taken yet and whose retry is due."""
    with reader().connect() as connection:
        now = db_now(connection)
        rows = connection.execute(
            select(_REQUEST.c.id)
            .where(DELIVERY_LEASES.free(now), _REQUEST.c.pool == pool if pool else true())
            .order_by(_REQUEST.c.next_delivery_at)
            .limit(limit)
        ).all()
    return [row[0] for row in rows]


def expired(pool: str | None = None, kind: str | None = None, limit: int = 50) -> list[str]:
    """Requests whose lease ran out: queued, their task run never started (lost with a
    worker or a server); running, their worker stopped renewing (it died)."""
    where = (_REQUEST.c.pool == pool if pool else true()) & (
        _REQUEST.c.kind == kind if kind else true()
    )
    with reader().connect() as connection:
        return leases.expired(connection, REQUEST_LEASES, where, limit)


def take_over(request_id: str, dispatch_seconds: float) -> Lease | None:
    """Put a request whose lease ran out back in the queue, under this process's lease for
    ``dispatch_seconds``; the one process that gets it dispatches it again."""
    requeued = {
        "status": BotRequestStatus.QUEUED,
        "worker": None,
        "started_at": None,
        "dispatched_at": utcnow(),
    }
    with get_engine().begin() as connection:
        return leases.take_over(
            connection, REQUEST_LEASES, request_id, process_owner(), dispatch_seconds, requeued
        )
