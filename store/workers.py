"""Worker heartbeats: which long-lived worker processes are alive, and how busy they are.

Each task worker (``python -m cli worker --pool P``) and each batch worker beats from a
background thread (``heartbeating``): an upsert of its own row, stamped with the database's
clock (hosts' clocks drift; the database's is the one they share, as for leases), with the
work it has in flight. A clean exit retires the row. A killed worker just stops beating: once
it has been silent for ``STALE_HEARTBEATS`` of its own heartbeats it is listed as stale, and
after ``RELAY_WORKERS_FORGET_SECONDS`` its row is pruned by the workers still beating.

Readers (``GET /api/workers``, ``GET /api/health/ready``, the metrics gauge
``relay_worker_last_seen_seconds{kind,pool,host}``) all call ``list_workers()``.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.engine import Engine, Row

from relay_settings import get_settings
from store.db import dialect_insert, get_engine, reader
from store.leases import db_now
from store.models import WorkerHeartbeat, as_utc, new_id, table_of

log = logging.getLogger("relay.workers")
TABLE = table_of(WorkerHeartbeat)
# A worker silent for this many of its own heartbeats is stale: one late beat is noise
# (a busy host, a slow store), three in a row is a worker that is gone or stuck.
STALE_HEARTBEATS = 3
# How often a beating worker also prunes long-silent rows: every this many beats.
PRUNE_EVERY_BEATS = 360


class WorkerKind(StrEnum):
    """What sort of worker a row or a listing describes."""

    TASK_WORKER = "task-worker"  # python -m cli worker --pool P: a pool's background tasks
    BATCH_WORKER = "batch-worker"  # a reprocess-worker flow run draining a video batch
    PROCESS_WORKER = "process-worker"  # prefect worker start: known from Prefect's API
    DASK_WORKER = "dask-worker"  # a Dask worker: known from the scheduler


@dataclass(frozen=True)
class Identity:
    """Who is beating: one worker process in one role (its row's key is ``id``)."""

    id: str
    kind: WorkerKind
    pool: str
    host: str
    pid: int
    heartbeat_seconds: float


@dataclass(frozen=True)
class Worker:
    """One worker as the heartbeat table knows it. Times are the database's (aware, UTC);
    ``seconds_since_seen`` is measured on the database's clock too, so it is right whatever
    the reader's own clock says."""

    id: str
    kind: WorkerKind
    pool: str
    host: str
    pid: int
    started_at: datetime
    last_seen_at: datetime
    seconds_since_seen: float
    heartbeat_seconds: float
    in_flight: int
    stale: bool  # silent for STALE_HEARTBEATS of its heartbeats


def identity(kind: WorkerKind, pool: str, heartbeat_seconds: float) -> Identity:
    """This process as a worker of ``kind`` serving ``pool``, with a new id."""
    return Identity(
        id=new_id(),
        kind=kind,
        pool=pool,
        host=socket.gethostname()[:255],
        pid=os.getpid(),
        heartbeat_seconds=heartbeat_seconds,
    )


def beat(me: Identity, in_flight: int = 0) -> None:
    """Say ``me`` is alive now (the database's now), with ``in_flight`` units of work: the
    first beat registers the worker, later ones update it (one upsert)."""
    with get_engine().begin() as connection:
        now = db_now(connection)
        row = {
            "id": me.id,
            "kind": str(me.kind),
            "pool": me.pool,
            "host": me.host,
            "pid": me.pid,
            "heartbeat_seconds": me.heartbeat_seconds,
            "in_flight": in_flight,
            "started_at": now,
            "last_seen_at": now,
        }
        changed = {"last_seen_at": now, "in_flight": in_flight}
        statement = dialect_insert(connection, TABLE).values(**row)
        connection.execute(statement.on_conflict_do_update(index_elements=["id"], set_=changed))


def retire(me: Identity) -> bool:
    """Remove ``me`` from the list (a clean exit); whether its row was there."""
    with get_engine().begin() as connection:
        gone = connection.execute(delete(TABLE).where(TABLE.c.id == me.id).returning(TABLE.c.id))
        return gone.first() is not None


def prune(silent_seconds: float) -> int:
    """Delete the rows of workers silent for more than ``silent_seconds``; how many."""
    with get_engine().begin() as connection:
        cutoff = db_now(connection) - timedelta(seconds=silent_seconds)
        gone = connection.execute(
            delete(TABLE).where(TABLE.c.last_seen_at < cutoff).returning(TABLE.c.id)
        )
        return len(gone.all())


def list_workers(engine: Engine | None = None) -> list[Worker]:
    """Every worker in the heartbeat table, stale ones included (each says whether it is),
    ordered by kind, pool, host and start. Several rows may share a kind, pool and host
    (two task workers on one machine); ``id`` tells them apart. ``engine``: the store to
    read (default: the configured one)."""
    with (engine or reader()).connect() as connection:
        now = db_now(connection)
        rows = connection.execute(
            select(TABLE).order_by(TABLE.c.kind, TABLE.c.pool, TABLE.c.host, TABLE.c.started_at)
        ).all()
    return [_worker(row, now) for row in rows]


def _worker(row: Row[Any], now: datetime) -> Worker:
    last_seen = as_utc(row.last_seen_at)
    silent = max(0.0, (now - last_seen).total_seconds())
    return Worker(
        id=row.id,
        kind=WorkerKind(row.kind),
        pool=row.pool,
        host=row.host,
        pid=row.pid,
        started_at=as_utc(row.started_at),
        last_seen_at=last_seen,
        seconds_since_seen=silent,
        heartbeat_seconds=row.heartbeat_seconds,
        in_flight=row.in_flight,
        stale=silent > STALE_HEARTBEATS * row.heartbeat_seconds,
    )


@contextmanager
def heartbeating(
    kind: WorkerKind,
    pool: str,
    in_flight: Callable[[], int] = lambda: 0,
    every: float | None = None,
) -> Iterator[Identity]:
    """Beat as a worker of ``kind`` serving ``pool`` from a background thread while the block
    runs (every ``every`` s; default RELAY_WORKERS_HEARTBEAT_SECONDS), reporting
    ``in_flight()``; retire on the way out. A failed beat (the store briefly unreachable) is
    logged and tried again next round: it never stops the worker."""
    settings = get_settings().workers
    me = identity(kind, pool, every or settings.heartbeat_seconds)
    stop = threading.Event()

    def run() -> None:
        beats = 0
        while True:
            try:
                beat(me, in_flight())
                if beats % PRUNE_EVERY_BEATS == 0:
                    prune(settings.forget_seconds)
            except Exception:
                log.warning("heartbeat of %s %s failed", kind, pool, exc_info=True)
            beats += 1
            if stop.wait(me.heartbeat_seconds):
                return

    thread = threading.Thread(target=run, name=f"heartbeat:{kind}:{pool}", daemon=True)
    thread.start()
    try:
        yield me
    finally:
        stop.set()
        # A beat landing after the retirement would bring the row back: wait for it.
        thread.join(timeout=10)
        try:
            retire(me)
        except Exception:
            log.warning("could not retire %s %s; it will show as stale", kind, pool)
