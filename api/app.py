"""The FastAPI application factory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool

from api import batches, bot, contract, errors, metrics, system, transcriptions
from api.submit import Dispatchers, close_app_prefect_client
from api.uploads import UploadLimit
from relay_settings import RelaySettings, get_settings
from store.db import get_engine


def create_app(settings: RelaySettings | None, dispatchers: Dispatchers) -> FastAPI:
    """A Relay API app. ``dispatchers`` hand work to each task-served pool (the registry's,
    ``flows.pool_tasks.dispatchers()``); tests pass their own settings."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(get_engine)  # migrations run before the first request
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
    app.include_router(system.router)
    # HOOK(store/workers.py, issue 15): give the live workers' heartbeats here for
    # relay_worker_last_seen_seconds, as (kind, pool, host, last_seen_at) rows, e.g.
    # workers=lambda: ((w.kind, w.pool, w.host, w.last_seen_at) for w in workers.live()).
    gauges = metrics.install(app, settings, workers=None)
    contract.install(app)
    return app
