"""The video catalogue: import, lease-based claims, fenced completion, the processing log.

Claims follow the usual queue-in-a-table pattern (store/leases.py): on PostgreSQL one
``UPDATE ... WHERE id IN (SELECT ... FOR UPDATE SKIP LOCKED)``, so any number of workers on
any number of hosts take disjoint videos without waiting on each other; SQLite runs the same
single statement under its write lock.

Every write that finishes a video is fenced by the lease: it only lands while the writer
still holds the video's lease, so a worker that lost its lease (stalled, or presumed dead
and reclaimed by another) cannot mark the video a second time.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection
from sqlmodel import col

from store import leases
from store.db import get_engine, rows_matched, session_scope
from store.leases import Lease, LeasedRows, db_now
from store.models import (
    AttemptOutcome,
    Video,
    VideoAttempt,
    VideoStatus,
    table_of,
    utcnow,
)

_VIDEO = table_of(Video)
_ATTEMPT = table_of(VideoAttempt)
VIDEO_LEASES = LeasedRows.on(
    _VIDEO, _VIDEO.c.status.in_([VideoStatus.PENDING, VideoStatus.CLAIMED])
)


@dataclass(frozen=True)
class ClaimedVideo:
    """What a worker needs to process a video it holds the lease of."""

    id: int
    source: str
    name: str
    attempts: int
    duration: float | None
    lease: Lease


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
                insert(_VIDEO)
                .on_conflict_do_nothing(index_elements=["source_key"])
                .returning(_VIDEO.c.id)
            )
            added += len(connection.execute(statement, rows[start : start + 500]).all())
    return added, len(rows) - added


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
        taken = leases.claim(
            connection,
            VIDEO_LEASES,
            _VIDEO.c.batch_id == batch_id,
            worker,
            lease_seconds,
            limit=limit,
            # Longest first: long videos start early, short ones fill the gaps at the end.
            order_by=(col(Video.duration_seconds).desc().nulls_last(), col(Video.id)),
            values={"status": VideoStatus.CLAIMED, "attempts": col(Video.attempts) + 1},
            returning=(
                col(Video.source),
                col(Video.name),
                col(Video.attempts),
                col(Video.duration_seconds),
            ),
        )
        ids = [row.id for row in taken.rows]
        # A reclaimed video's previous attempt ends here: its worker let the lease run out.
        _close_attempts(connection, ids, AttemptOutcome.LOST, "lease ran out; reclaimed", now)
        for video_id in ids:
            connection.execute(
                _ATTEMPT.insert().values(
                    video_id=video_id,
                    batch_id=batch_id,
                    worker=worker,
                    outcome=AttemptOutcome.RUNNING,
                    started_at=now,
                )
            )
    claimed = [
        ClaimedVideo(row.id, row.source, row.name, row.attempts, row.duration_seconds, taken.lease)
        for row in taken.rows
    ]
    return sorted(claimed, key=lambda video: (-(video.duration or 0.0), video.id))


def _give_up_on_exhausted(
    connection: Connection, batch_id: str, now: datetime, max_attempts: int
) -> None:
    exhausted = and_(
        col(Video.batch_id) == batch_id,
        VIDEO_LEASES.expired(now),
        col(Video.attempts) >= max_attempts,
    )
    lost = (
        connection.execute(
            update(Video)
            .where(exhausted)
            .values(
                status=VideoStatus.FAILED,
                error=f"gave up after {max_attempts} attempts: the worker processing it stopped "
                "answering each time",
                finished_at=now,
                **VIDEO_LEASES.values(None),
            )
            .returning(_VIDEO.c.id)
        )
        .scalars()
        .all()
    )
    reason = "the worker stopped renewing its lease"
    _close_attempts(connection, lost, AttemptOutcome.LOST, reason, now)


def renew(held: Mapping[int, Lease], lease_seconds: float) -> set[int]:
    """Extend the worker's leases; returns the ids it still holds (a lost one is gone)."""
    with get_engine().begin() as connection:
        return set(leases.renew(connection, VIDEO_LEASES, held, lease_seconds))


def complete(
    video_id: int,
    lease: Lease,
    result_path: str,
    language: str | None,
    duration: float,
    seconds: float,
) -> bool:
    """Mark the video done, only if ``lease`` is still the video's; False otherwise."""
    with get_engine().begin() as connection:
        now = db_now(connection)
        done = leases.finish(
            connection,
            VIDEO_LEASES,
            {video_id: lease},
            {
                "status": VideoStatus.DONE,
                "result_path": result_path,
                "language": language,
                "duration_seconds": duration,
                "error": None,
                "finished_at": now,
            },
        )
        _close_attempts(
            connection,
            [video_id],
            AttemptOutcome.DONE if done else AttemptOutcome.LOST,
            None if done else "lease lost before the result was recorded; result discarded",
            now,
            worker=lease.owner,
            seconds=seconds,
        )
        return bool(done)


def fail(
    video_id: int, lease: Lease, reason: str, permanent: bool, max_attempts: int, seconds: float
) -> VideoStatus | None:
    """Record a failed attempt: failed for good when ``permanent`` or out of attempts, else
    back to pending for another try. None when ``lease`` was no longer the video's."""
    held = {video_id: lease}
    with get_engine().begin() as connection:
        now = db_now(connection)
        attempts = connection.execute(
            select(col(Video.attempts)).where(VIDEO_LEASES.held(held))
        ).scalar_one_or_none()
        if attempts is None:
            lost = AttemptOutcome.LOST
            _close_attempts(connection, [video_id], lost, reason, now, lease.owner, seconds)
            return None
        final = permanent or attempts >= max_attempts
        status = VideoStatus.FAILED if final else VideoStatus.PENDING
        if final and not permanent:
            reason = f"gave up after {attempts} attempts; last error: {reason}"
        values = {"status": status, "error": reason, "finished_at": now if final else None}
        leases.finish(connection, VIDEO_LEASES, held, values)
        outcome = AttemptOutcome.FAILED if final else AttemptOutcome.RETRY
        _close_attempts(connection, [video_id], outcome, reason, now, lease.owner, seconds)
        return status


def release(held: Mapping[int, Lease]) -> int:
    """Hand unstarted or interrupted videos back (shutdown, cancellation); attempt not spent."""
    if not held:
        return 0
    with get_engine().begin() as connection:
        now = db_now(connection)
        fewer = (
            func.greatest(col(Video.attempts) - 1, 0)
            if connection.dialect.name == "postgresql"
            else func.max(col(Video.attempts) - 1, 0)
        )
        released = leases.finish(
            connection,
            VIDEO_LEASES,
            held,
            {"status": VideoStatus.PENDING, "attempts": fewer},
        )
        for owner in {lease.owner for lease in held.values()}:
            mine = [video_id for video_id in released if held[video_id].owner == owner]
            reason = "handed back unfinished"
            _close_attempts(connection, mine, AttemptOutcome.RELEASED, reason, now, owner)
        return len(released)


def _close_attempts(
    connection: Connection,
    video_ids: Iterable[int],
    outcome: AttemptOutcome,
    error: str | None,
    now: datetime,
    worker: str | None = None,
    seconds: float | None = None,
) -> None:
    ids = list(video_ids)
    if not ids:
        return
    open_attempts = and_(
        col(VideoAttempt.video_id).in_(ids), col(VideoAttempt.outcome) == AttemptOutcome.RUNNING
    )
    if worker is not None:
        open_attempts = and_(open_attempts, col(VideoAttempt.worker) == worker)
    connection.execute(
        update(VideoAttempt)
        .where(open_attempts)
        .values(outcome=outcome, error=error, finished_at=now, seconds=seconds)
    )


def force(video_ids: Iterable[int]) -> int:
    """Make finished (or failed) videos pending again so the next batch processes them."""
    ids = list(video_ids)
    with session_scope() as session:
        return rows_matched(
            session.execute(
                update(Video)
                .where(col(Video.id).in_(ids), col(Video.status) != VideoStatus.CLAIMED)
                .values(
                    status=VideoStatus.PENDING,
                    attempts=0,
                    error=None,
                    batch_id=None,
                    finished_at=None,
                )
            )
        )


def get_video(video_id: int) -> Video | None:
    """One catalogue entry, or None."""
    with session_scope() as session:
        return session.get(Video, video_id)
