"""The FastAPI application factory."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool

from api import (
    alerts,
    batches,
    bot,
    contract,
    errors,
    health,
    interactions,
    metrics,
    system,
    transcriptions,
)
from api.submit import Dispatchers, close_app_prefect_client
from api.uploads import UploadLimit
from relay_settings import RelaySettings, get_settings
from store import workers as worker_rows
from store.db import get_engine


def create_app(settings: RelaySettings | None, dispatchers: Dispatchers) -> FastAPI:
    """A Relay API app. ``dispatchers`` hand work to each task-served pool (the registry's,
    ``flows.pool_tasks.dispatchers()``); tests pass their own settings."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(get_engine)  # migrations run before the first request
        # Prefect, SQLAlchemy and pydantic leave ~200,000 long-lived objects; a full
        # collection walking them stalled every request in flight for 100-300 ms (the p99 of
        # bench/api.py). Frozen, the collector leaves them out; what requests make is
        # collected as before.
        gc.collect()
        gc.freeze()
        yield
        await close_app_prefect_client(app.state)
        gauges.prefect.close()

    app = FastAPI(
        title="Relay",
        version="0.1.0",
        description="Transcription jobs, video batches and Discord bot requests "
        "submitted to Prefect. Errors are JSON: {error, message, ...}.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.dispatchers = dispatchers
    errors.install(app)
    app.add_middleware(UploadLimit, max_bytes=settings.max_upload_bytes)
    app.include_router(transcriptions.router)
    app.include_router(batches.router)
    app.include_router(bot.router)
    app.include_router(interactions.router)
    app.include_router(system.router)
    app.include_router(health.router)
    app.include_router(alerts.router)
    gauges = metrics.install(
        app,
        settings,
        workers=lambda: (
            (w.kind, w.pool, w.host, w.last_seen_at) for w in worker_rows.list_workers()
        ),
    )
    contract.install(app)
    return app
