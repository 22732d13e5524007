"""Figures for the admin statistics, read from the job store: queries only, no formatting.

``collect(since, until)`` gives what the hourly ``relay-stats`` flow posts (and what a
Discord ``/stats`` command will show): requests by kind and outcome, active users, the
bot's added latency (p95), each key's use today, transcription hours done and queued, and
the newest video batch. About 120 ms with 100,000 bot requests and 100,000 jobs in
PostgreSQL (docs/ops-stats.md): cheap once an hour.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime

from sqlalchemy import case, func, select
from sqlalchemy.engine import Connection

from store.batches import BatchProgress, batch_progress, newest_batch_id
from store.db import reader
from store.models import (
    BotRequest,
    BotRequestStatus,
    JobStatus,
    TranscriptionJob,
    UsageCounter,
    as_utc,
    table_of,
)
from store.usage import KEY_SCOPE, key_of_scope

TRANSCRIPTION = "transcription"  # the kind of a transcription job among the bot's kinds
_BOT = table_of(BotRequest)
_JOB = table_of(TranscriptionJob)
_USAGE = table_of(UsageCounter)


@dataclass(frozen=True)
class RequestCount:
    """Requests of one kind (a bot kind, or ``transcription``) that ended one way."""

    kind: str
    outcome: str
    count: int


@dataclass(frozen=True)
class KeyUse:
    """Calls one provider key spent today (UTC); the key by its name, never its secret."""

    provider: str
    key: str
    used: int


@dataclass(frozen=True)
class StoreFigures:
    """What the store says about ``[since, until)``; keys are today's, the batch the newest."""

    since: datetime
    until: datetime
    requests: tuple[RequestCount, ...]
    active_users: int
    latency_p95_seconds: float | None  # the bot's added latency; None: nothing delivered
    latency_samples: int
    keys: tuple[KeyUse, ...]
    transcription_hours_done: float
    transcription_hours_queued: float
    batch: BatchProgress | None


def collect(since: datetime, until: datetime) -> StoreFigures:
    """Every figure for the window ``[since, until)`` (aware datetimes)."""
    with reader().connect() as connection:
        requests = requests_by_kind(connection, since, until)
        users = active_users(connection, since, until)
        latencies = added_latencies(connection, since, until)
        keys = keys_used(connection, until.astimezone(UTC).date())
        done, queued = transcription_hours(connection, since, until)
    newest = newest_batch_id()
    return StoreFigures(
        since=since,
        until=until,
        requests=requests,
        active_users=users,
        latency_p95_seconds=percentile(latencies, 0.95),
        latency_samples=len(latencies),
        keys=keys,
        transcription_hours_done=done,
        transcription_hours_queued=queued,
        batch=batch_progress(newest) if newest else None,
    )


def requests_by_kind(
    connection: Connection, since: datetime, until: datetime
) -> tuple[RequestCount, ...]:
    """Bot requests by kind and status, and transcription jobs by status, created in the
    window; sorted by kind, then outcome."""
    bot = connection.execute(
        select(_BOT.c.kind, _BOT.c.status, func.count())
        .where(_BOT.c.created_at >= since, _BOT.c.created_at < until)
        .group_by(_BOT.c.kind, _BOT.c.status)
    ).all()
    transcriptions = connection.execute(
        select(_JOB.c.status, func.count())
        .where(_JOB.c.created_at >= since, _JOB.c.created_at < until)
        .group_by(_JOB.c.status)
    ).all()
    counts = [RequestCount(kind, str(status), count) for kind, status, count in bot]
    counts += [RequestCount(TRANSCRIPTION, str(status), count) for status, count in transcriptions]
    return tuple(sorted(counts, key=lambda c: (c.kind, c.outcome)))


def active_users(connection: Connection, since: datetime, until: datetime) -> int:
    """Distinct Discord users who sent a bot request in the window."""
    query = select(func.count(func.distinct(_BOT.c.user_id))).where(
        _BOT.c.created_at >= since, _BOT.c.created_at < until
    )
    return int(connection.execute(query).scalar_one())


def added_latencies(connection: Connection, since: datetime, until: datetime) -> list[float]:
    """Relay's added latency of each bot request created in the window and delivered: from
    intake to the answer accepted by Discord, less the time spent waiting on providers."""
    rows = connection.execute(
        select(_BOT.c.created_at, _BOT.c.delivered_at, _BOT.c.upstream_seconds).where(
            _BOT.c.status == BotRequestStatus.COMPLETED,
            _BOT.c.created_at >= since,
            _BOT.c.created_at < until,
            _BOT.c.delivered_at.is_not(None),
        )
    ).all()
    return [
        max((as_utc(delivered) - as_utc(created)).total_seconds() - (upstream or 0.0), 0.0)
        for created, delivered, upstream in rows
    ]


def percentile(values: Sequence[float], fraction: float) -> float | None:
    """The nearest-rank percentile: the smallest value with ``fraction`` of them at or below
    it (p95 of 20 values is the 19th smallest). None when there are none."""
    if not values:
        return None
    rank = max(math.ceil(fraction * len(values)), 1)
    return sorted(values)[rank - 1]


def keys_used(connection: Connection, day: date) -> tuple[KeyUse, ...]:
    """Each provider key's calls counted on ``day`` (the daily quota's counter)."""
    rows = connection.execute(
        select(_USAGE.c.scope, _USAGE.c.used).where(
            _USAGE.c.day == day, _USAGE.c.scope.startswith(KEY_SCOPE)
        )
    ).all()
    found = []
    for scope, used in rows:
        provider, key = key_of_scope(scope)
        found.append(KeyUse(provider, key, int(used)))
    return tuple(sorted(found, key=lambda k: (k.provider, k.key)))


def transcription_hours(
    connection: Connection, since: datetime, until: datetime
) -> tuple[float, float]:
    """Hours of audio transcribed by jobs completed in the window, and hours still to do
    in queued and running jobs (what their chunks have not decoded yet)."""
    done = connection.execute(
        select(func.coalesce(func.sum(_JOB.c.duration_seconds), 0.0)).where(
            _JOB.c.status == JobStatus.COMPLETED,
            _JOB.c.finished_at >= since,
            _JOB.c.finished_at < until,
        )
    ).scalar_one()
    duration = func.coalesce(_JOB.c.duration_seconds, 0.0)
    left = case(
        (duration > _JOB.c.audio_seconds_done, duration - _JOB.c.audio_seconds_done), else_=0.0
    )
    queued = connection.execute(
        select(func.coalesce(func.sum(left), 0.0)).where(
            _JOB.c.status.in_([JobStatus.QUEUED, JobStatus.RUNNING])
        )
    ).scalar_one()
    return round(float(done) / 3600, 3), round(float(queued) / 3600, 3)
