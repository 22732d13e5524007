"""The video catalogue: import, lease-based claims, fenced completion, the processing log.

Claims follow the usual queue-in-a-table pattern. On PostgreSQL a claim is one
``UPDATE ... WHERE id IN (SELECT ... FOR UPDATE SKIP LOCKED)``, so any number of workers on
any number of hosts take disjoint videos without waiting on each other. SQLite has one
writer at a time: the same single statement (without ``SKIP LOCKED``) runs under the
database's write lock, which makes it atomic there too.

Every write that finishes a video is fenced by the lease: it only lands while the writer
still holds the video's lease, so a worker that lost its lease (stalled, or presumed dead
and reclaimed by another) cannot mark the video a second time.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection

from store.db import get_engine, session_scope
from store.models import (
    Video,
    VideoAttempt,
    VideoStatus,
    utcnow,
)


@dataclass(frozen=True)
class ClaimedVideo:
    """What a worker needs to process a video it holds the lease of."""

    id: int
    source: str
    name: str
    attempts: int
    duration: float | None


def source_key(source: str) -> str:
    """The catalogue's identity of a source: re-importing the same source adds nothing."""
    return hashlib.sha256(source.encode("utf-8")).hexdigest()


def import_videos(entries: Iterable[tuple[str, str, float | None]]) -> tuple[int, int]:
    """Add ``(source, name, duration)`` entries; returns (added, already there)."""
    rows = [
        {
            "source_key": source_key(source),
            "source": source,
            "name": name[:512],
            "duration_seconds": duration,
            "status": VideoStatus.PENDING.value,
            "attempts": 0,
            "imported_at": utcnow(),
        }
        for source, name, duration in entries
    ]
    if not rows:
        return 0, 0
    engine = get_engine()
    insert = pg_insert if engine.dialect.name == "postgresql" else sqlite_insert
    added = 0
    with engine.begin() as connection:
        for start in range(0, len(rows), 500):
            statement = (
                insert(Video.__table__)
                .on_conflict_do_nothing(index_elements=["source_key"])
                .returning(Video.__table__.c.id)
            )
            added += len(connection.execute(statement, rows[start : start + 500]).all())
    return added, len(rows) - added


def db_now(connection: Connection) -> datetime:
    """The database's clock on PostgreSQL (hosts' clocks may disagree), else this host's."""
    if connection.dialect.name == "postgresql":
        return connection.execute(select(func.clock_timestamp())).scalar_one()
    return utcnow()


def _claimable(batch_id: str, now: datetime):
    """Videos of the batch nobody holds: waiting, or held under a lease that ran out."""
    return and_(
        Video.batch_id == batch_id,
        or_(
            Video.status == VideoStatus.PENDING,
            and_(Video.status == VideoStatus.CLAIMED, Video.lease_expires_at < now),
        ),
    )


def claim(
    batch_id: str, worker: str, limit: int, lease_seconds: float, max_attempts: int
) -> list[ClaimedVideo]:
    """Take up to ``limit`` videos of the batch under a lease of ``lease_seconds``.

    A video whose lease ran out with its attempts used up is failed here instead (its
    worker died on it every time), so a poison video cannot take workers down forever.
    """
    with get_engine().begin() as connection:
        now = db_now(connection)
        _give_up_on_exhausted(connection, batch_id, now, max_attempts)
        candidates = (
            select(Video.id)
            .where(_claimable(batch_id, now))
            # Longest first: long videos start early, short ones fill the gaps at the end.
            .order_by(Video.duration_seconds.desc().nulls_last(), Video.id)
            .limit(limit)
        )
        if connection.dialect.name == "postgresql":
            # Materialised: a plain IN (subquery ... LIMIT n) may be run more than once by
            # PostgreSQL, and with SKIP LOCKED each run can pick other rows (> n claimed).
            picked = (
                candidates.with_for_update(skip_locked=True)
                .cte("picked")
                .prefix_with("MATERIALIZED")
            )
            candidates = select(picked.c.id)
        rows = connection.execute(
            update(Video)
            .where(Video.id.in_(candidates.scalar_subquery()), _claimable(batch_id, now))
            .values(
                status=VideoStatus.CLAIMED,
                lease_owner=worker,
                lease_expires_at=now + timedelta(seconds=lease_seconds),
                attempts=Video.attempts + 1,
            )
            .returning(Video.id, Video.source, Video.name, Video.attempts, Video.duration_seconds)
        ).all()
        # A reclaimed video's previous attempt ends here: its worker let the lease run out.
        _close_attempts(
            connection, [row.id for row in rows], "lost", "lease ran out; reclaimed", now
        )
        for row in rows:
            connection.execute(
                VideoAttempt.__table__.insert().values(
                    video_id=row.id,
                    batch_id=batch_id,
                    worker=worker,
                    outcome="running",
                    started_at=now,
                )
            )
    claimed = [ClaimedVideo(*row) for row in rows]
    return sorted(claimed, key=lambda video: (-(video.duration or 0.0), video.id))


def _give_up_on_exhausted(
    connection: Connection, batch_id: str, now: datetime, max_attempts: int
) -> None:
    expired = and_(
        Video.batch_id == batch_id,
        Video.status == VideoStatus.CLAIMED,
        Video.lease_expires_at < now,
        Video.attempts >= max_attempts,
    )
    lost = (
        connection.execute(
            update(Video)
            .where(expired)
            .values(
                status=VideoStatus.FAILED,
                error=f"gave up after {max_attempts} attempts: the worker processing it stopped "
                "answering each time",
                lease_owner=None,
                lease_expires_at=None,
                finished_at=now,
            )
            .returning(Video.id)
        )
        .scalars()
        .all()
    )
    _close_attempts(connection, lost, "lost", "the worker stopped renewing its lease", now)


def renew(worker: str, video_ids: Iterable[int], lease_seconds: float) -> set[int]:
    """Extend the worker's leases; returns the ids it still holds (a lost one is gone)."""
    ids = list(video_ids)
    if not ids:
        return set()
    with get_engine().begin() as connection:
        now = db_now(connection)
        held = connection.execute(
            update(Video)
            .where(_held_by(worker, ids))
            .values(lease_expires_at=now + timedelta(seconds=lease_seconds))
            .returning(Video.id)
        ).scalars()
        return set(held)


def _held_by(worker: str, ids: list[int]):
    return and_(Video.id.in_(ids), Video.status == VideoStatus.CLAIMED, Video.lease_owner == worker)


def complete(
    video_id: int,
    worker: str,
    result_path: str,
    language: str | None,
    duration: float,
    seconds: float,
) -> bool:
    """Mark the video done, only if ``worker`` still holds its lease; False otherwise."""
    with get_engine().begin() as connection:
        now = db_now(connection)
        done = connection.execute(
            update(Video)
            .where(_held_by(worker, [video_id]))
            .values(
                status=VideoStatus.DONE,
                result_path=result_path,
                language=language,
                duration_seconds=duration,
                error=None,
                lease_owner=None,
                lease_expires_at=None,
                finished_at=now,
            )
        ).rowcount
        _close_attempts(
            connection,
            [video_id],
            "done" if done else "lost",
            None if done else "lease lost before the result was recorded; result discarded",
            now,
            worker=worker,
            seconds=seconds,
        )
        return bool(done)


def fail(
    video_id: int, worker: str, reason: str, permanent: bool, max_attempts: int, seconds: float
) -> VideoStatus | None:
    """Record a failed attempt: failed for good when ``permanent`` or out of attempts, else
    back to pending for another try. None when the worker no longer held the lease."""
    with get_engine().begin() as connection:
        now = db_now(connection)
        attempts = connection.execute(
            select(Video.attempts).where(_held_by(worker, [video_id]))
        ).scalar_one_or_none()
        if attempts is None:
            _close_attempts(connection, [video_id], "lost", reason, now, worker, seconds)
            return None
        final = permanent or attempts >= max_attempts
        status = VideoStatus.FAILED if final else VideoStatus.PENDING
        if final and not permanent:
            reason = f"gave up after {attempts} attempts; last error: {reason}"
        connection.execute(
            update(Video)
            .where(_held_by(worker, [video_id]))
            .values(
                status=status,
                error=reason,
                lease_owner=None,
                lease_expires_at=None,
                finished_at=now if final else None,
            )
        )
        outcome = "failed" if final else "retry"
        _close_attempts(connection, [video_id], outcome, reason, now, worker, seconds)
        return status


def release(worker: str, video_ids: Iterable[int]) -> int:
    """Hand unstarted or interrupted videos back (shutdown, cancellation); attempt not spent."""
    ids = list(video_ids)
    if not ids:
        return 0
    with get_engine().begin() as connection:
        now = db_now(connection)
        released = (
            connection.execute(
                update(Video)
                .where(_held_by(worker, ids))
                .values(
                    status=VideoStatus.PENDING,
                    lease_owner=None,
                    lease_expires_at=None,
                    attempts=func.greatest(Video.attempts - 1, 0)
                    if connection.dialect.name == "postgresql"
                    else func.max(Video.attempts - 1, 0),
                )
                .returning(Video.id)
            )
            .scalars()
            .all()
        )
        _close_attempts(connection, released, "released", "handed back unfinished", now, worker)
        return len(released)


def _close_attempts(
    connection: Connection,
    video_ids: Iterable[int],
    outcome: str,
    error: str | None,
    now: datetime,
    worker: str | None = None,
    seconds: float | None = None,
) -> None:
    ids = list(video_ids)
    if not ids:
        return
    open_attempts = and_(VideoAttempt.video_id.in_(ids), VideoAttempt.outcome == "running")
    if worker is not None:
        open_attempts = and_(open_attempts, VideoAttempt.worker == worker)
    connection.execute(
        update(VideoAttempt)
        .where(open_attempts)
        .values(outcome=outcome, error=error, finished_at=now, seconds=seconds)
    )


def force(video_ids: Iterable[int]) -> int:
    """Make finished (or failed) videos pending again so the next batch processes them."""
    ids = list(video_ids)
    with session_scope() as session:
        return session.exec(  # type: ignore[call-overload]
            update(Video)
            .where(Video.id.in_(ids), Video.status != VideoStatus.CLAIMED)
            .values(
                status=VideoStatus.PENDING,
                attempts=0,
                error=None,
                batch_id=None,
                finished_at=None,
            )
        ).rowcount


def get_video(video_id: int) -> Video | None:
    """One catalogue entry, or None."""
    with session_scope() as session:
        return session.get(Video, video_id)
