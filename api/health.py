"""``/api/health/live``, ``/api/health/ready`` (open: probes send no token) and
``/api/workers`` (every live worker; token). docs/ops-health.md says how to use them."""

from __future__ import annotations

import asyncio
from enum import StrEnum
from typing import Literal

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from api.auth import require_token
from api.errors import error_responses
from relay_settings import RelaySettings
from store import workers
from store.db import engine_for
from tasks.health_checks import Check, CheckStatus, run_checks
from tasks.worker_census import Census, listening_task_workers, take_census

router = APIRouter(prefix="/api", tags=["system"])


class Liveness(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(StrEnum):
    READY = "ready"
    NOT_READY = "not_ready"


class Checks(BaseModel):
    """Each dependency checked, with how long it took."""

    store: Check = Field(description="the job store answers SELECT 1")
    prefect: Check = Field(description="the Prefect API's health check answers")
    dask: Check | None = Field(
        description="the Dask scheduler answers on its comm; null: RELAY_DASK_ADDRESS not set"
    )


class Ready(BaseModel):
    status: Readiness = Field(description="ready, or not_ready when a check failed")
    checks: Checks
    task_workers: dict[str, int] | None = Field(
        description="task workers beating now, per task-served pool (null: the store could "
        "not be read). Never a reason for 503: a pool scaled to zero is not an outage."
    )


@router.get(
    "/health/live",
    operation_id="getLiveness",
    summary="The API process serves (no dependency is checked)",
    response_model=Liveness,
)
async def live() -> Liveness:
    return Liveness()


@router.get(
    "/health/ready",
    operation_id="getReadiness",
    summary="Store, Prefect API and Dask scheduler (when configured) answer",
    responses={
        200: {"model": Ready, "description": "every check passed"},
        503: {"model": Ready, "description": "a check failed; its entry says which and why"},
    },
)
async def ready(request: Request) -> JSONResponse:
    settings: RelaySettings = request.app.state.settings
    timeout = settings.health.timeout_seconds
    engine = engine_for(settings.database_url)
    found = await run_checks(settings)
    store, prefect, dask = found["store"], found["prefect"], found.get("dask")
    checks = Checks(store=store, prefect=prefect, dask=dask)
    task_workers = None
    if store.status is CheckStatus.OK:
        try:
            rows = await asyncio.wait_for(asyncio.to_thread(workers.list_workers, engine), timeout)
            task_workers = listening_task_workers(rows)
        except Exception:  # reported as null: the workers are information, not a check
            task_workers = None
    failed = any(check.status is CheckStatus.ERROR for check in found.values())
    body = Ready(
        status=Readiness.NOT_READY if failed else Readiness.READY,
        checks=checks,
        task_workers=task_workers,
    )
    return JSONResponse(body.model_dump(mode="json"), status_code=503 if failed else 200)


@router.get(
    "/workers",
    operation_id="listWorkers",
    summary="Every live worker: task, batch, Prefect and Dask workers",
    dependencies=[Depends(require_token)],
    response_model=Census,
    responses=error_responses(401),
)
async def list_workers(request: Request) -> Census:
    settings: RelaySettings = request.app.state.settings
    return await take_census(settings, engine_for(settings.database_url))
