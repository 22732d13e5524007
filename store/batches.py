"""Batch progress as the API and the artifacts show it: overall and per worker."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

from sqlalchemy import case, func, select

from store.db import get_engine
from store.models import Video, VideoAttempt, VideoBatch, VideoStatus, utcnow


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

    def as_dict(self) -> dict:
        return asdict(self)


def batch_progress(batch_id: str) -> BatchProgress | None:
    """The batch's progress from the catalogue and the processing log; None if unknown."""
    with get_engine().connect() as connection:
        batch = (
            connection.execute(select(VideoBatch).where(VideoBatch.id == batch_id))
            .mappings()
            .one_or_none()
        )
        if batch is None:
            return None
        counts = dict(
            connection.execute(
                select(Video.status, func.count())
                .where(Video.batch_id == batch_id)
                .group_by(Video.status)
            ).all()
        )
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
        created_at=_aware(batch["created_at"]),
        finished_at=_aware(batch["finished_at"]) if batch["finished_at"] else None,
        workers=workers,
    )


def _eta(left: int, rate_per_minute: float) -> float | None:
    """Seconds until the rest is done at the current rate; None before any rate is known."""
    if not left:
        return 0.0
    return round(60.0 * left / rate_per_minute, 1) if rate_per_minute > 0 else None


def _workers(connection, batch_id: str) -> list[WorkerProgress]:
    def count(outcome: str):
        return func.sum(case((VideoAttempt.outcome == outcome, 1), else_=0))

    rows = connection.execute(
        select(
            VideoAttempt.worker,
            count("done"),
            count("failed"),
            count("retry"),
            count("lost"),
            count("running"),
            func.min(VideoAttempt.started_at),
            func.max(VideoAttempt.finished_at),
        )
        .where(VideoAttempt.batch_id == batch_id)
        .group_by(VideoAttempt.worker)
        .order_by(VideoAttempt.worker)
    ).all()
    workers = []
    for worker, done, failed, retried, lost, running, first, last in rows:
        progress = WorkerProgress(
            worker,
            done or 0,
            failed or 0,
            retried or 0,
            lost or 0,
            running or 0,
            _aware(first) if first else None,
            _aware(last) if last else None,
        )
        if first and last and last > first:
            minutes = (progress.last_finished_at - progress.first_started_at).total_seconds() / 60
            progress.rate_per_minute = round((progress.done + progress.failed) / minutes, 2)
        workers.append(progress)
    return workers


def _rate(workers: list[WorkerProgress], started: datetime, until: datetime) -> float:
    """Videos finished per minute since the batch started (all workers together)."""
    finished = sum(w.done + w.failed for w in workers)
    minutes = (_aware(until) - _aware(started)).total_seconds() / 60.0
    return finished / minutes if minutes > 0 else 0.0


def _aware(moment: datetime) -> datetime:
    """SQLite hands datetimes back without their zone; they were stored in UTC."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
