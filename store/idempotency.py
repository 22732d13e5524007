"""Idempotency keys: the first request with a key runs, a retry gets its recorded answer.

A key is held by the request that inserted its row; a holder that died (a crash before it
recorded an answer) is replaced once its row is older than ``stale_seconds``. Rows are kept
``keep_seconds`` and then forgotten, as a client's retries are over by then.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum

from sqlalchemy import delete, select, update
from sqlalchemy.engine import Connection

from store.db import get_engine, insert_ignoring_conflicts
from store.leases import db_now
from store.models import IdempotentRequest, table_of

_TABLE = table_of(IdempotentRequest)


class KeyState(StrEnum):
    """Where a request with a key stands."""

    NEW = "new"  # this request holds the key: run it, then record or release
    ANSWERED = "answered"  # the answer is recorded: send it again
    IN_PROGRESS = "in_progress"  # another request with the key is running now
    MISMATCH = "mismatch"  # the key was used for a different request


@dataclass(frozen=True)
class KeyCheck:
    """What ``begin`` found; ``status_code`` and ``body`` are set when ANSWERED."""

    state: KeyState
    status_code: int | None = None
    body: str | None = None
    retry_after: str | None = None


def begin(
    operation: str,
    key: str,
    fingerprint: str,
    *,
    stale_seconds: float = 600.0,
    keep_seconds: float = 86_400.0,
) -> KeyCheck:
    """Take ``key`` for this request, or say why not."""
    with get_engine().begin() as connection:
        now = db_now(connection)
        connection.execute(
            delete(_TABLE).where(_TABLE.c.started_at < now - timedelta(seconds=keep_seconds))
        )
        row = {"operation": operation, "key": key, "fingerprint": fingerprint, "started_at": now}
        if insert_ignoring_conflicts(connection, _TABLE, row):
            return KeyCheck(KeyState.NEW)
        return _existing(connection, row, now - timedelta(seconds=stale_seconds))


def _existing(connection: Connection, row: dict[str, object], stale_before: object) -> KeyCheck:
    where = (_TABLE.c.operation == row["operation"], _TABLE.c.key == row["key"])
    found = connection.execute(select(_TABLE).where(*where)).one()
    if found.fingerprint != row["fingerprint"]:
        return KeyCheck(KeyState.MISMATCH)
    if found.status_code is not None:
        return KeyCheck(
            KeyState.ANSWERED, found.status_code, found.response_body, found.retry_after
        )
    # The holder may have died: take the key over once its row is stale (one taker wins).
    taken = connection.execute(
        update(_TABLE)
        .where(*where, _TABLE.c.status_code.is_(None), _TABLE.c.started_at < stale_before)
        .values(started_at=row["started_at"])
    )
    return KeyCheck(KeyState.NEW if taken.rowcount == 1 else KeyState.IN_PROGRESS)


def record(
    operation: str, key: str, status_code: int, body: str, retry_after: str | None = None
) -> None:
    """Keep the answer the request got, for its retries."""
    with get_engine().begin() as connection:
        connection.execute(
            update(_TABLE)
            .where(_TABLE.c.operation == operation, _TABLE.c.key == key)
            .values(status_code=status_code, response_body=body, retry_after=retry_after)
        )


def release(operation: str, key: str) -> None:
    """Forget a key whose request created nothing (it failed): a retry runs afresh."""
    with get_engine().begin() as connection:
        connection.execute(
            delete(_TABLE).where(
                _TABLE.c.operation == operation,
                _TABLE.c.key == key,
                _TABLE.c.status_code.is_(None),
            )
        )
