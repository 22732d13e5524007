"""``/api/batches``: progress of video reprocessing batches, overall and per worker."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from api.auth import require_token
from api.errors import ApiError, error_responses
from store import batches
from store.batches import batch_progress
from store.models import UtcDatetime

_BATCH_LINKS = {
    "batch": {"operationId": "getBatch", "parameters": {"batch_id": "$response.body#/batch_id"}}
}
router = APIRouter(prefix="/api/batches", tags=["batches"], dependencies=[Depends(require_token)])


class WorkerView(BaseModel):
    worker: str = Field(description="host:pid:tag of the worker process")
    done: int
    failed: int
    retried: int = Field(description="attempts that failed and put the video back to pending")
    lost: int = Field(description="videos it held whose lease ran out (taken over by others)")
    in_flight: int
    first_started_at: UtcDatetime | None
    last_finished_at: UtcDatetime | None
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
    created_at: UtcDatetime
    finished_at: UtcDatetime | None
    workers: list[WorkerView]


@router.get(
    "/latest",
    response_model=BatchView,
    operation_id="getLatestBatch",
    summary="Progress of the newest batch",
    responses={
        200: {"links": _BATCH_LINKS},
        **error_responses(401, 404, _404="no batch has run yet"),
    },
)
async def latest() -> BatchView:
    batch_id = await run_in_threadpool(batches.newest_batch_id)
    if batch_id is None:
        raise ApiError(404, "not_found", "no video batch has run yet")
    return await _view(batch_id)


@router.get(
    "/{batch_id}",
    response_model=BatchView,
    operation_id="getBatch",
    summary="Progress of a video batch, overall and per worker",
    responses=error_responses(401, 404, _404="unknown batch"),
)
async def get_batch(batch_id: str) -> BatchView:
    return await _view(batch_id)


async def _view(batch_id: str) -> BatchView:
    progress = await run_in_threadpool(batch_progress, batch_id)
    if progress is None:
        raise ApiError(404, "not_found", f"no batch {batch_id}", batch_id=batch_id)
    return BatchView.model_validate(progress.as_dict())
