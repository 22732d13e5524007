"""Central counters for the bot: per-user cooldowns, daily limits and API key state.

Every check is one atomic statement (``INSERT … ON CONFLICT DO UPDATE … WHERE … RETURNING``),
so API processes and workers on several hosts never admit more than a limit allows, on
PostgreSQL as on SQLite.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from sqlalchemy import select
from sqlalchemy.engine import Connection

from store.db import dialect_insert, get_engine, reader
from store.models import ApiKeyState, UsageCounter, UserCooldown, as_utc, table_of

_USAGE = table_of(UsageCounter)
_COOLDOWN = table_of(UserCooldown)
_KEY_STATE = table_of(ApiKeyState)


@dataclass(frozen=True)
class Admission:
    """Whether a request may go ahead; when not, why and from when it may."""

    admitted: bool
    reason: str | None = None  # "cooldown" | "user_daily_limit" | "global_daily_limit"
    message: str | None = None
    retry_at: datetime | None = None


def next_midnight(now: datetime) -> datetime:
    """The start of the next UTC day: when daily counters reset."""
    return datetime.combine(now.astimezone(UTC).date() + timedelta(days=1), time(), tzinfo=UTC)


def _spend(connection: Connection, scope: str, day: date, limit: int) -> bool:
    """Add one to ``scope``'s count for ``day`` unless it already reached ``limit``."""
    if limit <= 0:
        return False
    table = _USAGE
    insert = dialect_insert(connection, table).values(scope=scope, day=day, used=1)
    statement = insert.on_conflict_do_update(
        index_elements=["scope", "day"],
        set_={"used": table.c.used + 1},
        where=table.c.used < limit,
    ).returning(table.c.used)
    return connection.execute(statement).first() is not None


def _start_cooldown(
    connection: Connection, user_id: str, kind: str, now: datetime, seconds: float
) -> datetime | None:
    """Record ``now`` as the user's latest request; returns when the cooldown ends if the
    previous one was too recent (and records nothing)."""
    table = _COOLDOWN
    insert = dialect_insert(connection, table).values(user_id=user_id, kind=kind, last_at=now)
    statement = insert.on_conflict_do_update(
        index_elements=["user_id", "kind"],
        set_={"last_at": now},
        where=table.c.last_at <= now - timedelta(seconds=seconds),
    ).returning(table.c.last_at)
    if connection.execute(statement).first() is not None:
        return None
    last: datetime = connection.execute(
        select(table.c.last_at).where(table.c.user_id == user_id, table.c.kind == kind)
    ).scalar_one()
    return as_utc(last) + timedelta(seconds=seconds)


def admit(
    user_id: str,
    kind: str,
    *,
    cooldown_seconds: float,
    per_user_daily: int,
    global_daily: int,
    now: datetime | None = None,
) -> Admission:
    """Count a request against the user's cooldown and daily limit and the kind's global
    daily limit, all or nothing: a refused request leaves every counter as it was."""
    now = now or datetime.now(UTC)
    day = now.astimezone(UTC).date()
    with get_engine().connect() as connection, connection.begin() as transaction:
        if cooldown_seconds > 0:
            until = _start_cooldown(connection, user_id, kind, now, cooldown_seconds)
            if until is not None:
                transaction.rollback()
                wait = max((until - now).total_seconds(), 0.0)
                return Admission(
                    False,
                    "cooldown",
                    f"you can send another {kind} request in {wait:.0f} s",
                    until,
                )
        if not _spend(connection, f"user:{kind}:{user_id}", day, per_user_daily):
            transaction.rollback()
            return Admission(
                False,
                "user_daily_limit",
                f"you reached today's limit of {per_user_daily} {kind} requests",
                next_midnight(now),
            )
        if not _spend(connection, f"global:{kind}", day, global_daily):
            transaction.rollback()
            return Admission(
                False,
                "global_daily_limit",
                f"the bot reached today's limit of {global_daily} {kind} requests",
                next_midnight(now),
            )
    return Admission(True)


KEY_SCOPE = "key:"  # usage counters of provider keys: key:<provider>:<key name>


def key_scope(provider: str, key: str) -> str:
    """The usage counter a key's daily calls are counted under."""
    return f"{KEY_SCOPE}{provider}:{key}"


def key_of_scope(scope: str) -> tuple[str, str]:
    """``(provider, key name)`` of a key's usage counter scope."""
    provider, _, key = scope.removeprefix(KEY_SCOPE).partition(":")
    return provider, key


def spend_key_day(provider: str, key: str, limit: int, now: datetime | None = None) -> bool:
    """Count one call against a key's daily quota; False when today's quota is spent."""
    day = (now or datetime.now(UTC)).astimezone(UTC).date()
    with get_engine().begin() as connection:
        return _spend(connection, key_scope(provider, key), day, limit)


def used_today(scope: str, now: datetime | None = None) -> int:
    """How many ``scope`` spent today (``user:chat:<id>``, ``global:image``, ``key:openai:a``)."""
    day = (now or datetime.now(UTC)).astimezone(UTC).date()
    table = _USAGE
    with reader().connect() as connection:
        value = connection.execute(
            select(table.c.used).where(table.c.scope == scope, table.c.day == day)
        ).scalar()
    return int(value or 0)


def cool_key(provider: str, key: str, until: datetime, reason: str) -> None:
    """Rest a key until ``until`` (a later rest already recorded wins)."""
    table = _KEY_STATE
    now = datetime.now(UTC)
    with get_engine().begin() as connection:
        statement = dialect_insert(connection, table).values(
            provider=provider, key_name=key, cooled_until=until, reason=reason[:500], updated_at=now
        )
        statement = statement.on_conflict_do_update(
            index_elements=["provider", "key_name"],
            set_={"cooled_until": until, "reason": reason[:500], "updated_at": now},
            where=table.c.cooled_until < until,
        )
        connection.execute(statement)


def key_rests(provider: str, now: datetime | None = None) -> dict[str, tuple[datetime, str]]:
    """Keys of ``provider`` resting now: name -> (until, reason)."""
    now = now or datetime.now(UTC)
    table = _KEY_STATE
    with reader().connect() as connection:
        rows = connection.execute(
            select(table.c.key_name, table.c.cooled_until, table.c.reason).where(
                table.c.provider == provider, table.c.cooled_until > now
            )
        ).all()
    return {name: (as_utc(until), reason or "") for name, until, reason in rows}


def clear_key(provider: str, key: str) -> bool:
    """End a key's rest (an operator fixed it); True if it was resting."""
    table = _KEY_STATE
    with get_engine().begin() as connection:
        result = connection.execute(
            table.delete().where(table.c.provider == provider, table.c.key_name == key)
        )
    return result.rowcount > 0
