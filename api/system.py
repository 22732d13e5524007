"""``/api/health`` and ``/api/queue``."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from api.auth import require_token
from api.errors import error_responses
from store import status
from tasks.health_checks import run_checks

router = APIRouter(prefix="/api", tags=["system"])


class Health(BaseModel):
    status: str = Field(description="ok or degraded")
    database: str = Field(description="ok, or why it is not")
    prefect: str = Field(description="ok, or why it is not")


class PoolQueue(BaseModel):
    queued: int
    running: int


class Queue(BaseModel):
    queued: int
    running: int
    pools: dict[str, PoolQueue]


@router.get(
    "/health",
    operation_id="getHealth",
    summary="Database and Prefect API reachable? (kept; /api/health/ready says more)",
    responses={
        200: {"model": Health, "description": "every dependency answers"},
        503: {"model": Health, "description": "a dependency is down"},
    },
)
async def health(request: Request) -> JSONResponse:
    found = await run_checks(request.app.state.settings, with_dask=False)
    database, prefect = found["store"], found["prefect"]
    checks = {"database": database.error or "ok", "prefect": prefect.error or "ok"}
    healthy = all(value == "ok" for value in checks.values())
    body = {"status": "ok" if healthy else "degraded", **checks}
    return JSONResponse(body, status_code=200 if healthy else 503)


@router.get(
    "/queue",
    operation_id="getQueue",
    summary="Jobs waiting and running, per work pool",
    dependencies=[Depends(require_token)],
    response_model=Queue,
    responses=error_responses(401),
)
def queue() -> Queue:
    pools = status.queue_counts()
    return Queue(
        queued=sum(p["queued"] for p in pools.values()),
        running=sum(p["running"] for p in pools.values()),
        pools={name: PoolQueue(**counts) for name, counts in pools.items()},
    )
