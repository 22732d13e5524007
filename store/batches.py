"""Video batches: opening, following and closing one, and its progress overall and per worker."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, case, func, insert, select, update
from sqlalchemy.engine import Connection
from sqlmodel import col

from store.db import get_engine, session_scope
from store.leases import db_now
from store.models import (
    AttemptOutcome,
    BatchStatus,
    Video,
    VideoAttempt,
    VideoBatch,
    VideoStatus,
    as_utc,
    utcnow,
)
from store.videos import VIDEO_LEASES


def start_batch(workers: int, note: str | None = None) -> VideoBatch:
    """Create a batch over every video waiting now (and any whose worker died holding it)."""
    batch = VideoBatch(workers_requested=workers, note=note)
    with get_engine().begin() as connection:
        now = db_now(connection)
        connection.execute(insert(VideoBatch).values(**batch.model_dump()))
        adopted = connection.execute(
            update(Video).where(VIDEO_LEASES.free(now)).values(batch_id=batch.id)
        ).rowcount
        connection.execute(
            update(VideoBatch).where(col(VideoBatch.id) == batch.id).values(videos_total=adopted)
        )
    batch.videos_total = adopted
    return batch


def set_batch_flow_run(batch_id: str, flow_run_id: str) -> None:
    """Remember which Prefect flow run drives the batch."""
    with get_engine().begin() as connection:
        connection.execute(
            update(VideoBatch).where(col(VideoBatch.id) == batch_id).values(flow_run_id=flow_run_id)
        )


def remaining(batch_id: str) -> int:
    """Videos of the batch not finished yet (waiting or held)."""
    with get_engine().connect() as connection:
        return connection.execute(
            select(func.count())
            .select_from(Video)
            .where(
                col(Video.batch_id) == batch_id,
                col(Video.status).in_([VideoStatus.PENDING, VideoStatus.CLAIMED]),
            )
        ).scalar_one()


def batch_is_running(batch_id: str) -> bool:
    """Whether workers should keep claiming for the batch (not finished or cancelled)."""
    with get_engine().connect() as connection:
        status = connection.execute(
            select(col(VideoBatch.status)).where(col(VideoBatch.id) == batch_id)
        ).scalar_one_or_none()
    return status == BatchStatus.RUNNING


def finish_batch(batch_id: str, status: BatchStatus) -> bool:
    """Close a running batch; True when this call closed it."""
    with get_engine().begin() as connection:
        return bool(
            connection.execute(
                update(VideoBatch)
                .where(
                    col(VideoBatch.id) == batch_id,
                    col(VideoBatch.status) == BatchStatus.RUNNING,
                )
                .values(status=status, finished_at=db_now(connection))
            ).rowcount
        )


def get_batch(batch_id: str) -> VideoBatch | None:
    """One batch row, or None."""
    with session_scope() as session:
        return session.get(VideoBatch, batch_id)


def newest_batch_id() -> str | None:
    """The most recently started batch, if any."""
    with get_engine().connect() as connection:
        return connection.execute(
            select(col(VideoBatch.id)).order_by(col(VideoBatch.created_at).desc()).limit(1)
        ).scalar_one_or_none()


@dataclass
class WorkerProgress:
    """One worker's share of a batch."""

    worker: str
    done: int = 0
    failed: int = 0
    retried: int = 0
    lost: int = 0
    in_flight: int = 0
    first_started_at: datetime | None = None
    last_finished_at: datetime | None = None
    rate_per_minute: float = 0.0


@dataclass
class BatchProgress:
    """Where a batch stands: counts, rate, ETA and each worker's part."""

    batch_id: str
    status: str
    videos_total: int
    done: int
    failed: int
    pending: int
    in_flight: int
    percent: float
    rate_per_minute: float
    eta_seconds: float | None
    workers_requested: int
    flow_run_id: str | None
    created_at: datetime
    finished_at: datetime | None
    workers: list[WorkerProgress] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def batch_progress(batch_id: str) -> BatchProgress | None:
    """The batch's progress from the catalogue and the processing log; None if unknown."""
    with get_engine().connect() as connection:
        batch = (
            connection.execute(select(VideoBatch).where(col(VideoBatch.id) == batch_id))
            .mappings()
            .one_or_none()
        )
        if batch is None:
            return None
        counts: dict[str, int] = {
            status: count
            for status, count in connection.execute(
                select(col(Video.status), func.count())
                .where(col(Video.batch_id) == batch_id)
                .group_by(col(Video.status))
            ).all()
        }
        workers = _workers(connection, batch_id)
    now = utcnow()
    done, failed = counts.get(VideoStatus.DONE, 0), counts.get(VideoStatus.FAILED, 0)
    pending, in_flight = counts.get(VideoStatus.PENDING, 0), counts.get(VideoStatus.CLAIMED, 0)
    total = done + failed + pending + in_flight
    rate = _rate(workers, batch["created_at"], batch["finished_at"] or now)
    left = pending + in_flight
    return BatchProgress(
        batch_id=batch_id,
        status=batch["status"],
        videos_total=total,
        done=done,
        failed=failed,
        pending=pending,
        in_flight=in_flight,
        percent=round(100.0 * (done + failed) / total, 1) if total else 100.0,
        rate_per_minute=round(rate, 2),
        eta_seconds=_eta(left, rate),
        workers_requested=batch["workers_requested"],
        flow_run_id=batch["flow_run_id"],
        created_at=as_utc(batch["created_at"]),
        finished_at=as_utc(batch["finished_at"]) if batch["finished_at"] else None,
        workers=workers,
    )


def _eta(left: int, rate_per_minute: float) -> float | None:
    """Seconds until the rest is done at the current rate; None before any rate is known."""
    if not left:
        return 0.0
    return round(60.0 * left / rate_per_minute, 1) if rate_per_minute > 0 else None


def _workers(connection: Connection, batch_id: str) -> list[WorkerProgress]:
    def count(outcome: AttemptOutcome) -> ColumnElement[int]:
        return func.sum(case((col(VideoAttempt.outcome) == outcome, 1), else_=0))

    rows = connection.execute(
        select(
            col(VideoAttempt.worker),
            count(AttemptOutcome.DONE),
            count(AttemptOutcome.FAILED),
            count(AttemptOutcome.RETRY),
            count(AttemptOutcome.LOST),
            count(AttemptOutcome.RUNNING),
            func.min(col(VideoAttempt.started_at)),
            func.max(col(VideoAttempt.finished_at)),
        )
        .where(col(VideoAttempt.batch_id) == batch_id)
        .group_by(col(VideoAttempt.worker))
        .order_by(col(VideoAttempt.worker))
    ).all()
    workers = []
    for worker, done, failed, retried, lost, running, first, last in rows:
        # Every worker in the log started at least once; it may not have finished yet.
        started, finished = as_utc(first), as_utc(last) if last else None
        progress = WorkerProgress(
            worker,
            done or 0,
            failed or 0,
            retried or 0,
            lost or 0,
            running or 0,
            started,
            finished,
        )
        if finished and finished > started:
            minutes = (finished - started).total_seconds() / 60
            progress.rate_per_minute = round((progress.done + progress.failed) / minutes, 2)
        workers.append(progress)
    return workers


def _rate(workers: list[WorkerProgress], started: datetime, until: datetime) -> float:
    """Videos finished per minute since the batch started (all workers together)."""
    finished = sum(w.done + w.failed for w in workers)
    minutes = (as_utc(until) - as_utc(started)).total_seconds() / 60.0
    return finished / minutes if minutes > 0 else 0.0


def failed_videos(batch_id: str, limit: int) -> list[Video]:
    """The batch's failed videos (the first ``limit`` by id), with their reasons."""
    with session_scope() as session:
        return list(
            session.scalars(
                select(Video)
                .where(col(Video.batch_id) == batch_id, col(Video.status) == VideoStatus.FAILED)
                .order_by(col(Video.id))
                .limit(limit)
            )
        )
