"""``/api/health`` and ``/api/queue``."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from prefect.client.orchestration import get_client
from pydantic import BaseModel, Field
from sqlalchemy import text

from api.auth import require_token
from api.errors import error_responses
from store import status
from store.db import get_engine

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


def _database_ok() -> None:
    with get_engine().connect() as connection:
        connection.execute(text("SELECT 1"))


@router.get(
    "/health",
    operation_id="getHealth",
    summary="Database and Prefect API reachable?",
    responses={
        200: {"model": Health, "description": "every dependency answers"},
        503: {"model": Health, "description": "a dependency is down"},
    },
)
async def health() -> JSONResponse:
    checks: dict[str, str] = {}
    try:
        await run_in_threadpool(_database_ok)
        checks["database"] = "ok"
    except Exception as err:
        checks["database"] = f"unreachable: {type(err).__name__}"
    try:
        async with get_client() as client:
            problem = await client.api_healthcheck()
        checks["prefect"] = "ok" if problem is None else f"unhealthy: {problem}"
    except Exception as err:
        checks["prefect"] = f"unreachable: {type(err).__name__}"
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
