"""Every live worker, from the three places that know them: the heartbeat table (task and
batch workers, store/workers.py), Prefect's API (the pools' Prefect workers) and the Dask
scheduler (its workers). ``GET /api/workers`` and ``python -m cli workers`` show this.

Each source is read within RELAY_HEALTH_TIMEOUT_SECONDS; one that cannot be reached is
reported in ``sources`` and its workers are missing from the list, never an error of the
whole census. A worker is ``stale`` once silent for 3 of its heartbeats, by each source's
own clock and interval: the store's for heartbeat rows, the Prefect server's last heartbeat
time and the worker's interval (or the server already calling it offline), the scheduler's
last-seen time and heartbeat interval for Dask workers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Iterable
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy.engine import Engine

from relay_pools import load_pools, task_pools
from relay_settings import RelaySettings
from store import workers
from store.workers import STALE_HEARTBEATS, WorkerKind
from tasks.health_checks import dask_identity, reason


class SourceStatus(StrEnum):
    OK = "ok"
    ERROR = "error"
    SKIPPED = "skipped"  # not configured here


class Source(BaseModel):
    """Whether a source of the census answered."""

    status: SourceStatus
    detail: str | None = Field(default=None, description="why it failed or was skipped")


class Sources(BaseModel):
    """Each source of the census and whether it answered."""

    store: Source = Field(description="the heartbeat table: task and batch workers")
    prefect: Source = Field(description="Prefect's API: the pools' Prefect workers")
    dask: Source = Field(description="the Dask scheduler: its workers")


class WorkerView(BaseModel):
    """One worker, whatever kind. Fields a source does not know are null."""

    kind: WorkerKind
    name: str = Field(description="host:pid, Prefect's worker name, or the Dask worker's address")
    pool: str | None = Field(description="the work pool it serves (null: Dask workers)")
    host: str | None
    pid: int | None
    started_at: datetime | None
    last_heartbeat_at: datetime | None
    seconds_since_heartbeat: float | None
    heartbeat_seconds: float | None = Field(description="the interval it beats at")
    in_flight: int | None = Field(description="units of work it runs now (null: not known)")
    stale: bool = Field(description="silent for 3 heartbeats")


class Census(BaseModel):
    """Every worker the sources know, stale ones included, and how each source fared."""

    workers: list[WorkerView]
    sources: Sources


log = logging.getLogger("relay.health")
Found = tuple[list[WorkerView], Source]
# What a Prefect worker that does not say otherwise beats at (Prefect's own default).
PREFECT_HEARTBEAT_SECONDS = 30.0
OK = Source(status=SourceStatus.OK)


async def take_census(settings: RelaySettings, engine: Engine | None = None) -> Census:
    """Read the three sources at once, each within the settings' health timeout.
    ``engine``: the store to read (default: the configured one)."""
    timeout = settings.health.timeout_seconds
    (stored, stored_ok), (prefect, prefect_ok), (dask, dask_ok) = await asyncio.gather(
        _bounded("store", _from_store(engine), timeout),
        _bounded("prefect", _from_prefect(), timeout),
        _bounded("dask", _from_dask(settings.dask.address), timeout),
    )
    found = sorted(
        [*stored, *prefect, *dask],
        key=lambda w: (w.kind, w.pool or "", w.host or "", w.name),
    )
    return Census(workers=found, sources=Sources(store=stored_ok, prefect=prefect_ok, dask=dask_ok))


def listening_task_workers(rows: Iterable[workers.Worker]) -> dict[str, int]:
    """Task workers beating now (not stale), per task-served pool; 0 for a pool with none."""
    counts = dict.fromkeys(task_pools(), 0)
    for row in rows:
        if row.kind is WorkerKind.TASK_WORKER and not row.stale:
            counts[row.pool] = counts.get(row.pool, 0) + 1
    return counts


async def _bounded(name: str, read: Awaitable[Found], timeout: float) -> Found:
    try:
        return await asyncio.wait_for(read, timeout)
    except Exception as err:
        log.warning("worker census: %s did not answer: %r", name, err)
        return [], Source(status=SourceStatus.ERROR, detail=reason(err, timeout))


async def _from_store(engine: Engine | None) -> Found:
    rows = await asyncio.to_thread(workers.list_workers, engine)
    return [
        WorkerView(
            kind=row.kind,
            name=f"{row.host}:{row.pid}",
            pool=row.pool,
            host=row.host,
            pid=row.pid,
            started_at=row.started_at,
            last_heartbeat_at=row.last_seen_at,
            seconds_since_heartbeat=round(row.seconds_since_seen, 3),
            heartbeat_seconds=row.heartbeat_seconds,
            in_flight=row.in_flight,
            stale=row.stale,
        )
        for row in rows
    ], OK


async def _from_prefect() -> Found:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import WorkerStatus
    from prefect.exceptions import ObjectNotFound, PrefectHTTPStatusError
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        return [], Source(status=SourceStatus.SKIPPED, detail="PREFECT_API_URL is not set")
    found: list[WorkerView] = []
    async with get_client() as client:

        async def read(pool: str) -> None:
            try:
                listed = await client.read_workers_for_work_pool(pool)
            except ObjectNotFound:  # the pool is not created (yet): no workers
                return
            except PrefectHTTPStatusError as err:  # what this call raises for a missing pool
                if err.response.status_code == 404:
                    return
                raise
            now = datetime.now(UTC)
            for worker in listed:
                seen = worker.last_heartbeat_time
                age = _age(now, seen)
                interval = worker.heartbeat_interval_seconds or PREFECT_HEARTBEAT_SECONDS
                silent = age is None or age > STALE_HEARTBEATS * interval
                found.append(
                    WorkerView(
                        kind=WorkerKind.PROCESS_WORKER,
                        name=worker.name,
                        pool=pool,
                        host=None,
                        pid=None,
                        started_at=worker.created,
                        last_heartbeat_at=seen,
                        seconds_since_heartbeat=age,
                        heartbeat_seconds=interval,
                        in_flight=None,
                        # Offline is the server's word for the same rule, but its foreman
                        # service says it late (every 15 s) or, where it is off, never.
                        stale=silent or worker.status != WorkerStatus.ONLINE,
                    )
                )

        await asyncio.gather(*(read(pool) for pool in load_pools()))
    return found, OK


async def _from_dask(address: str) -> Found:
    from distributed.scheduler import heartbeat_interval

    if not address:
        return [], Source(status=SourceStatus.SKIPPED, detail="RELAY_DASK_ADDRESS is not set")
    identity = await dask_identity(address)
    listed: dict[str, dict[str, Any]] = identity.get("workers", {})
    # What the scheduler asks of its workers; their last_seen is the scheduler's clock.
    interval = heartbeat_interval(len(listed))
    now = time.time()
    found = []
    for address_of_worker, info in listed.items():
        counts = (info.get("metrics") or {}).get("task_counts") or {}
        silent = max(0.0, now - float(info.get("last_seen") or now))
        found.append(
            WorkerView(
                kind=WorkerKind.DASK_WORKER,
                name=address_of_worker,
                pool=None,
                host=info.get("host"),
                pid=None,
                started_at=None,
                last_heartbeat_at=datetime.fromtimestamp(now - silent, UTC),
                seconds_since_heartbeat=round(silent, 3),
                heartbeat_seconds=interval,
                in_flight=int(counts.get("executing", 0)) + int(counts.get("long-running", 0)),
                stale=silent > STALE_HEARTBEATS * interval,
            )
        )
    return found, OK


def _age(now: datetime, then: datetime | None) -> float | None:
    return None if then is None else round(max(0.0, (now - then).total_seconds()), 3)
