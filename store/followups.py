"""The follow-up of a bot request that came from a Discord interaction. Discord keeps an
interaction's token 15 minutes: before it dies, one worker edits the "thinking…" message to
say where a late answer will go (the expiry notice); once it is dead, the answer goes to the
route's fallback block (tasks/bot_delivery.py).

The notice is a unit of work under a lease (store/leases.py), as the delivery is: its
expiry is also when the notice is due (held by nobody then), and only its holder records how
it went. It is due only while nothing of the answer has been posted and no delivery is under
way; a delivery that finds a notice under way waits for it (``notice_under_way``). Both
matter: the first follow-up after a deferred response replaces the "thinking…" message, and
a notice landing after it would overwrite the answer.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, or_, select, true

from relay_settings import get_settings
from store import leases
from store.bot import UNDELIVERED
from store.db import get_engine, reader
from store.leases import Lease, LeasedRows, db_now, process_owner
from store.models import BotRequest, FollowUp, as_utc, table_of

TOKEN_SECONDS = 900.0  # Discord: "Interaction tokens are valid for 15 minutes"
_REQUEST = table_of(BotRequest)
NOTICE_LEASES = LeasedRows(
    table=_REQUEST,
    key=_REQUEST.c.id,
    owner=None,
    expires_at=_REQUEST.c.notice_due_at,
    token=_REQUEST.c.notice_token,
    unfinished=(_REQUEST.c.followup == FollowUp.LIVE)
    & _REQUEST.c.delivery_status.in_(UNDELIVERED)
    & (_REQUEST.c.delivery_messages_sent == 0),
)


def notice_due_at(interaction_at: datetime, notice_seconds: float) -> datetime:
    """When an interaction's expiry notice is due: ``notice_seconds``
    (``RELAY_DISCORD_EXPIRY_NOTICE_SECONDS``) after Discord created it."""
    return interaction_at + timedelta(seconds=notice_seconds)


def _delivery_idle(now: datetime) -> ColumnElement[bool]:
    """No process is posting the answer: never leased, between retries, or its lease ran out."""
    return or_(_REQUEST.c.delivery_token.is_(None), _REQUEST.c.next_delivery_at < now)


def notices_due(pool: str | None = None, limit: int = 50) -> list[str]:
    """Interaction requests of ``pool`` whose expiry notice is due: old enough, their answer
    not posted yet, and no notice or delivery under way."""
    with reader().connect() as connection:
        now = db_now(connection)
        rows = connection.execute(
            select(_REQUEST.c.id)
            .where(
                NOTICE_LEASES.free(now),
                _REQUEST.c.notice_due_at.is_not(None),
                _delivery_idle(now),
                _REQUEST.c.pool == pool if pool else true(),
            )
            .order_by(_REQUEST.c.notice_due_at)
            .limit(limit)
        ).all()
    return [row[0] for row in rows]


def claim_notice(request_id: str) -> Lease | None:
    """Take the request's due notice for this process (None: not due, or taken). Of any
    number of workers at once, one gets it; only its holder records how it went."""
    seconds = get_settings().discord.expiry_notice_lease_seconds
    with get_engine().begin() as connection:
        now = db_now(connection)
        where = (
            (_REQUEST.c.id == request_id)
            & _REQUEST.c.notice_due_at.is_not(None)
            & _delivery_idle(now)
        )
        taken = leases.claim(connection, NOTICE_LEASES, where, process_owner(), seconds)
    return taken.lease if taken.rows else None


def finish_notice(request_id: str, lease: Lease, followup: FollowUp) -> bool:
    """Record how the notice went (``NOTICED``, ``NOTICE_FAILED``, or ``EXPIRED``: the token
    was dead already). False when ``lease`` is no longer the notice's, or the answer was
    posted meanwhile: nothing is written then."""
    with get_engine().begin() as connection:
        written = leases.finish(
            connection, NOTICE_LEASES, {request_id: lease}, {"followup": followup}
        )
    return bool(written)


def retry_notice(request_id: str, lease: Lease, retry_in: float) -> bool:
    """Give the notice up for now (Discord busy or unreachable): due again in ``retry_in``."""
    with get_engine().begin() as connection:
        due = db_now(connection) + timedelta(seconds=retry_in)
        written = leases.finish(
            connection, NOTICE_LEASES, {request_id: lease}, {"notice_due_at": due}
        )
    return bool(written)


def notice_under_way(request_id: str) -> bool:
    """Whether a worker holds the request's notice now (a delivery then waits for it)."""
    with reader().connect() as connection:
        now = db_now(connection)
        held = connection.execute(
            select(_REQUEST.c.id).where(
                _REQUEST.c.id == request_id,
                NOTICE_LEASES.unfinished,
                _REQUEST.c.notice_token.is_not(None),
                _REQUEST.c.notice_due_at >= now,
            )
        ).first()
    return held is not None


def token_age(request: BotRequest) -> float | None:
    """Seconds since Discord created the request's interaction, by the store's clock (None:
    not an interaction)."""
    if request.interaction_at is None:
        return None
    with reader().connect() as connection:
        now = db_now(connection)
    return (now - as_utc(request.interaction_at)).total_seconds()


def token_dead_by_age(request: BotRequest) -> bool:
    """Whether the interaction's token has outlived Discord's 15 minutes."""
    age = token_age(request)
    return age is not None and age >= TOKEN_SECONDS
