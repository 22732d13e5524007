"""``python -m cli workers``: every live worker as a table (what ``GET /api/workers`` says)."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Annotated

import typer

from relay_settings import get_settings
from tasks.worker_census import Census, SourceStatus, WorkerView, take_census

COLUMNS = ("KIND", "POOL", "HOST", "NAME", "STARTED", "LAST HEARTBEAT", "IN FLIGHT", "STALE")


def workers(
    as_json: Annotated[bool, typer.Option("--json", help="the census as JSON")] = False,
) -> None:
    """Every live worker: task and batch workers (their heartbeats), the pools' Prefect
    workers and the Dask workers, with their last heartbeat and work in flight; one silent
    for 3 heartbeats is stale. A source that cannot be reached is named below the table."""
    census = asyncio.run(take_census(get_settings()))
    print(census.model_dump_json(indent=2) if as_json else render(census))


def render(census: Census) -> str:
    """The census as a plain-text table, then one line per source that did not answer."""
    rows = [COLUMNS, *(_row(worker) for worker in census.workers)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    if not census.workers:
        lines.append("(no workers)")
    for name, source in census.sources:
        if source.status is not SourceStatus.OK:
            lines.append(f"{name}: {source.status} ({source.detail})")
    return "\n".join(lines)


def _row(worker: WorkerView) -> tuple[str, ...]:
    ago = worker.seconds_since_heartbeat
    return (
        worker.kind,
        worker.pool or "-",
        worker.host or "-",
        worker.name,
        _when(worker.started_at),
        "-" if ago is None else f"{ago:.1f} s ago",
        "-" if worker.in_flight is None else str(worker.in_flight),
        "yes" if worker.stale else "no",
    )


def _when(moment: datetime | None) -> str:
    return "-" if moment is None else moment.strftime("%Y-%m-%d %H:%M:%SZ")
