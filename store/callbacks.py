"""Completion callbacks in the job store: one row per job (or bot request) given a
``callback_url``, from intake to the receiver's 2xx.

A callback waits while its job runs. The write that ends the job makes it due in the same
transaction (``ended``), so a crash between the two cannot lose it. Delivering it is a unit
of work under a lease (store/leases.py): the process posting it holds it; after a failed
attempt nobody does, and the lease's expiry says when the next attempt is due. Recording a
result is fenced by the lease, and a delivered callback is never due again.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import urlsplit

from sqlalchemy import ColumnElement, Delete, Update, bindparam, delete, select, update
from sqlalchemy.engine import Connection

from store import leases
from store.db import get_engine, reader
from store.leases import Lease, LeasedRows, db_now, process_owner
from store.models import (
    Callback,
    CallbackKind,
    CallbackStatus,
    CallbackSubject,
    TranscriptionJob,
    table_of,
    utcnow,
)
from store.sealed import seal, unseal

_CALLBACK = table_of(Callback)
CALLBACK_LEASES = LeasedRows.on(
    _CALLBACK, _CALLBACK.c.status.in_([CallbackStatus.PENDING, CallbackStatus.RETRYING])
)


@dataclass(frozen=True)
class Claimed:
    """A due callback taken for delivery, and the lease it is held under."""

    callback: Callback
    lease: Lease


def event_name(subject: CallbackSubject, status: str) -> str:
    """The event a job's end is announced as: ``transcription.completed``, ..."""
    return f"{subject}.{status}"


def shown_url(url: str) -> str:
    """What may be shown of a callback URL: scheme, host, port and path (no credentials, no
    query, no fragment: where tokens travel)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"[:512]


def shown_follow_up(url: str) -> str:
    """What may be shown of an interaction's follow-up URL: its last part is the token."""
    return shown_url(url).rstrip("/").rpartition("/")[0] + "/***"


def insert(
    connection: Connection,
    subject: CallbackSubject,
    subject_id: str,
    url: str,
    ended_as: str | None = None,
    kind: CallbackKind = CallbackKind.WEBHOOK,
) -> None:
    """Record a job's callback in the caller's transaction (with the job's own row):
    waiting, or due at once when the job is born ended (``ended_as``: a refused request).
    A ``DISCORD`` one is the follow-up of the interaction the job came from."""
    shown = shown_follow_up(url) if kind == CallbackKind.DISCORD else shown_url(url)
    row = Callback(
        subject=subject, subject_id=subject_id, kind=kind, url_sealed=seal(url), url_shown=shown
    )
    if ended_as is not None:
        row.status, row.event = CallbackStatus.PENDING, event_name(subject, ended_as)
        row.ended_at = db_now(connection)
    connection.execute(_CALLBACK.insert().values(**row.model_dump()))


def ended(subject: CallbackSubject, subject_id: str, status: str) -> Update:
    """The statement that makes a waiting callback due: run it in the transaction that
    writes the job's final status."""
    return (
        update(_CALLBACK)
        .where(
            _CALLBACK.c.subject == subject,
            _CALLBACK.c.subject_id == subject_id,
            _CALLBACK.c.status == CallbackStatus.WAITING,
        )
        .values(status=CallbackStatus.PENDING, event=event_name(subject, status), ended_at=utcnow())
    )


def removed(subject: CallbackSubject, subject_id: str) -> Delete:
    """The statement that forgets a job's callback (the job is deleted, or was never
    accepted: its client was answered with an error)."""
    return delete(_CALLBACK).where(
        _CALLBACK.c.subject == subject, _CALLBACK.c.subject_id == subject_id
    )


def forget(subject: CallbackSubject, subject_id: str) -> None:
    """Forget a job's callback: its client was told the job was not accepted."""
    with get_engine().begin() as connection:
        connection.execute(removed(subject, subject_id))


def get(subject: CallbackSubject, subject_id: str) -> Callback | None:
    """The job's callback, or None when none was asked for."""
    found = of(subject, [subject_id])
    return found.get(subject_id)


def of(subject: CallbackSubject, subject_ids: Iterable[str]) -> dict[str, Callback]:
    """The callbacks of several jobs at once (a page of the job list), by job id."""
    ids = list(subject_ids)
    if not ids:
        return {}
    query = select(_CALLBACK).where(_CALLBACK.c.subject == subject, _CALLBACK.c.subject_id.in_(ids))
    with reader().connect() as connection:
        rows = connection.execute(query).mappings().all()
    return {row["subject_id"]: Callback(**row) for row in rows}


_JOB = table_of(TranscriptionJob)
_CALLED = [column.label(f"callback_{column.name}") for column in _CALLBACK.c]
_JOB_AND_CALLBACK = (
    select(_JOB, *_CALLED)
    .outerjoin(
        _CALLBACK,
        (_CALLBACK.c.subject == CallbackSubject.TRANSCRIPTION)
        & (_CALLBACK.c.subject_id == _JOB.c.id),
    )
    .where(_JOB.c.id == bindparam("job_id"))
)


def job_and_callback(job_id: str) -> tuple[TranscriptionJob, Callback | None] | None:
    """A transcription job and its callback in one round trip (the status read is the API's
    hot path); None when there is no such job."""
    with reader().connect() as connection:
        row = connection.execute(_JOB_AND_CALLBACK, {"job_id": job_id}).mappings().first()
    if row is None:
        return None
    job = TranscriptionJob(**{column.name: row[column] for column in _JOB.c})
    called = {column.name: row[f"callback_{column.name}"] for column in _CALLBACK.c}
    return job, Callback(**called) if called["id"] is not None else None


def url_of(callback: Callback) -> str:
    """The URL to post to, unsealed."""
    return unseal(callback.url_sealed)


def due(limit: int = 50) -> list[str]:
    """Callbacks whose job has ended and whose next attempt is due (or whose holder died)."""
    with reader().connect() as connection:
        now = db_now(connection)
        query = (
            select(_CALLBACK.c.id)
            .where(CALLBACK_LEASES.free(now))
            .order_by(_CALLBACK.c.lease_expires_at)
            .limit(limit)
        )
        return list(connection.execute(query).scalars())


def claim(callback_id: str, seconds: float) -> Claimed | None:
    """Take a due callback for ``seconds``; None when it is not due, or another process
    has it."""
    return _claim(_CALLBACK.c.id == callback_id, seconds)


def claim_for(subject: CallbackSubject, subject_id: str, seconds: float) -> Claimed | None:
    """Take the job's callback if it is due (the process that ended the job, at once)."""
    mine = (_CALLBACK.c.subject == subject) & (_CALLBACK.c.subject_id == subject_id)
    return _claim(mine, seconds)


def _claim(where: ColumnElement[bool], seconds: float) -> Claimed | None:
    with get_engine().begin() as connection:
        taken = leases.claim(connection, CALLBACK_LEASES, where, process_owner(), seconds)
        if not taken.rows:
            return None
        row = connection.execute(select(_CALLBACK).where(_CALLBACK.c.id == taken.rows[0][0]))
        callback = Callback(**row.mappings().one())
    return Claimed(callback, taken.lease)


def record(
    callback_id: str,
    lease: Lease,
    *,
    status: CallbackStatus,
    attempts: int,
    error: str | None,
    retry_in: float = 0.0,
) -> CallbackStatus | None:
    """Store how the attempts went: ``delivered``, ``failed``, or ``retrying`` (due again in
    ``retry_in`` s). None (nothing stored) when the lease was lost meanwhile: the process
    that took the callback over records it."""
    with get_engine().begin() as connection:
        now = db_now(connection)
        outcome: dict[str, object] = {
            "status": status,
            "attempts": _CALLBACK.c.attempts + attempts,
            "last_error": error[:2000] if error else None,
        }
        if status == CallbackStatus.DELIVERED:
            outcome["delivered_at"] = now
        if status == CallbackStatus.RETRYING:  # held by nobody, and due again then
            outcome["lease_expires_at"] = now + timedelta(seconds=retry_in)
        written = leases.finish(connection, CALLBACK_LEASES, {callback_id: lease}, outcome)
    return status if written else None
