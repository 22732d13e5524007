"""Readiness checks of what Relay depends on: the job store, the Prefect API, the Dask
scheduler. Each check is bounded by a timeout and timed, and says what failed in words fit
for an unauthenticated probe: the exception's type or the timeout, never an address, a URL
or a message that could carry one (the full error goes to the log)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy import text
from sqlalchemy.engine import Engine

from relay_settings import RelaySettings
from store.db import engine_for

log = logging.getLogger("relay.health")


class CheckStatus(StrEnum):
    OK = "ok"
    ERROR = "error"


class Check(BaseModel):
    """The outcome of one check."""

    status: CheckStatus
    latency_ms: float = Field(description="how long the check took, in milliseconds")
    error: str | None = Field(
        default=None,
        description="why it failed: the error's type, or the timeout; no addresses or secrets",
    )


async def run_checks(settings: RelaySettings, with_dask: bool = True) -> dict[str, Check]:
    """The store and the Prefect API, and the Dask scheduler when one is configured (and
    ``with_dask``), checked at once, each within the health timeout: name -> outcome."""
    timeout = settings.health.timeout_seconds
    engine = engine_for(settings.database_url)
    address = settings.dask.address
    probes: dict[str, Callable[[], Awaitable[object]]] = {
        "store": lambda: store_answers(engine),
        "prefect": prefect_answers,
    }
    if with_dask and address:
        probes["dask"] = lambda: dask_answers(address)
    done = await asyncio.gather(*(timed(name, probe, timeout) for name, probe in probes.items()))
    return dict(zip(probes, done, strict=True))


async def timed(name: str, probe: Callable[[], Awaitable[object]], timeout: float) -> Check:
    """Run ``probe`` within ``timeout`` seconds and time it; an exception or the timeout is
    a failed check."""
    started = time.perf_counter()
    try:
        await asyncio.wait_for(probe(), timeout)
    except Exception as err:
        log.warning("health check %s failed: %r", name, err)
        failed = reason(err, timeout)
        return Check(status=CheckStatus.ERROR, latency_ms=_since(started), error=failed)
    return Check(status=CheckStatus.OK, latency_ms=_since(started))


def reason(err: BaseException, timeout: float) -> str:
    """A failure in words safe to show anyone: a timeout, or the error's type name."""
    if isinstance(err, TimeoutError):
        return f"timed out after {timeout:g} s"
    return f"unreachable: {type(err).__name__}"


def _since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 2)


async def store_answers(engine: Engine) -> None:
    """``SELECT 1`` on the store, in a thread (the driver blocks)."""

    def select_one() -> None:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))

    await asyncio.to_thread(select_one)


async def prefect_answers() -> None:
    """The Prefect API's own health check (``GET /health``) answers."""
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        problem = await client.api_healthcheck()
    if problem is not None:
        raise problem


async def dask_identity(address: str, workers: bool = True) -> dict[str, Any]:
    """The Dask scheduler's ``identity`` (what ``Client.scheduler_info()`` returns), over one
    comm, without starting a client: ``workers`` False leaves the worker list out."""
    from distributed.core import rpc
    from distributed.security import Security

    # The cluster's TLS settings, if its Dask config has any (as a Client would use them).
    # distributed has no type hints: hence the ignores.
    security = Security()  # type: ignore[no-untyped-call]
    connection_args = security.get_connection_args("client")  # type: ignore[no-untyped-call]
    scheduler = rpc(address, connection_args=connection_args)  # type: ignore[no-untyped-call]
    try:
        identity: dict[str, Any] = await scheduler.identity(n_workers=-1 if workers else 0)
    finally:
        await scheduler.close_rpc()  # type: ignore[no-untyped-call]
    return identity


async def dask_answers(address: str) -> None:
    """The Dask scheduler at ``address`` answers on its comm."""
    await dask_identity(address, workers=False)
