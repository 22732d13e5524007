"""``/api/batches``: progress of video reprocessing batches, overall and per worker."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Depends
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from api.auth import require_token
from api.errors import ApiError
from store import batches
from store.batches import batch_progress

router = APIRouter(prefix="/api/batches", tags=["batches"], dependencies=[Depends(require_token)])


class WorkerView(BaseModel):
    worker: str = Field(description="host:pid:tag of the worker process")
    done: int
    failed: int
    retried: int = Field(description="attempts that failed and put the video back to pending")
    lost: int = Field(description="videos it held whose lease ran out (taken over by others)")
    in_flight: int
    first_started_at: datetime | None
    last_finished_at: datetime | None
    rate_per_minute: float


class BatchView(BaseModel):
    batch_id: str
    status: str = Field(description="running, completed, incomplete or cancelled")
    videos_total: int
    done: int
    failed: int
    pending: int
    in_flight: int
    percent: float
    rate_per_minute: float = Field(description="videos finished per minute since the start")
    eta_seconds: float | None = Field(description="at the current rate; null before any rate")
    workers_requested: int
    flow_run_id: str | None
    created_at: datetime
    finished_at: datetime | None
    workers: list[WorkerView]


@router.get(
    "/latest",
    response_model=BatchView,
    summary="Progress of the newest batch",
    responses={404: {"description": "no batch has run yet"}},
)
async def latest() -> BatchView:
    batch_id = await run_in_threadpool(batches.newest_batch_id)
    if batch_id is None:
        raise ApiError(404, "not_found", "no video batch has run yet")
    return await _view(batch_id)


@router.get(
    "/{batch_id}",
    response_model=BatchView,
    summary="Progress of a video batch, overall and per worker",
    responses={404: {"description": "unknown batch"}},
)
async def get_batch(batch_id: str) -> BatchView:
    return await _view(batch_id)


async def _view(batch_id: str) -> BatchView:
    progress = await run_in_threadpool(batch_progress, batch_id)
    if progress is None:
        raise ApiError(404, "not_found", f"no batch {batch_id}", batch_id=batch_id)
    return BatchView.model_validate(progress.as_dict())
