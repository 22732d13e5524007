"""Long-running Relay processes: a pool's task worker, the REST API, the embedded serve."""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from contextlib import ExitStack
from typing import TYPE_CHECKING, Annotated

import typer

from relay_pools import task_pools

if TYPE_CHECKING:
    from fastapi import FastAPI

log = logging.getLogger("relay.cli")
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def _logging() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


def worker(
    pool: Annotated[str, typer.Option(help=f"the pool to serve: {', '.join(task_pools())}")],
    limit: Annotated[
        int | None, typer.Option(help="task runs at once in this process (default: registry)")
    ] = None,
) -> None:
    """Serve one pool's background task (work-pools/pools.yaml) until interrupted."""
    from flows.pool_tasks import serve_pool_task

    if pool not in task_pools():
        print(
            f"error: pool {pool!r} has no task workers; expected one of {', '.join(task_pools())}",
            file=sys.stderr,
        )
        raise typer.Exit(2)
    _logging()
    started = time.monotonic()
    log.info("task worker for %s starting", pool)
    # Prefect's task worker registers its SIGTERM handler only from the main thread, and
    # serve() runs it in Prefect's loop thread: without this, SIGTERM (docker stop, a pod's
    # deletion) killed the process outright. Now it stops like Ctrl-C, and the worker
    # leaves the list of workers on its way out.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    serve_pool_task(pool, limit)
    log.info("task worker for %s stopped after %.0f s", pool, time.monotonic() - started)


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    log.info("signal %d received: stopping", signum)
    sys.exit(0)


def api() -> None:
    """The REST API on RELAY_API_HOST:RELAY_API_PORT; with no PREFECT_API_URL also a
    temporary Prefect server, a serve process for the flows and the task workers."""
    import uvicorn

    from api.app import create_app
    from deployments.serve import served_flows, served_task_workers
    from flows.pool_tasks import dispatchers
    from flows.runtime import prefect_api
    from relay_pools import Workload, pools_serving
    from relay_settings import get_settings

    _logging()
    settings = get_settings()
    if not settings.api.token.get_secret_value() and settings.api.host not in LOOPBACK:
        print(
            f"error: RELAY_API_TOKEN is not set, so the API may only bind to 127.0.0.1, "
            f"not {settings.api.host}",
            file=sys.stderr,
        )
        raise typer.Exit(2)
    if not settings.api.token.get_secret_value():
        log.warning(
            "RELAY_API_TOKEN is not set: the API accepts anyone on this machine and "
            "listens on %s only",
            settings.api.host,
        )
    embedded = not os.environ.get("PREFECT_API_URL")
    if embedded and settings.api.workers > 1:
        print(
            f"error: RELAY_API_WORKERS={settings.api.workers} needs a Prefect server "
            "(PREFECT_API_URL): the embedded mode runs its temporary Prefect server and task "
            "workers inside the one API process",
            file=sys.stderr,
        )
        raise typer.Exit(2)
    with prefect_api() as api_url, ExitStack() as stack:
        if embedded:
            log.info("embedded mode: Prefect at %s, serving the flows locally", api_url)
            stack.enter_context(served_flows(settings.transcribe.deployment))
            pools = list(pools_serving(Workload.BOT))
            if settings.transcribe.via == "task-worker":  # submissions need the pool's worker
                pools.append(settings.transcribe.deployment.split("/")[-1])
            stack.enter_context(served_task_workers(tuple(pools)))
        if settings.api.workers > 1:  # each worker process builds its own app
            uvicorn.run(
                "cli.services:api_app",
                factory=True,
                workers=settings.api.workers,
                host=settings.api.host,
                port=settings.api.port,
                access_log=settings.api.access_log,
            )
            return
        uvicorn.run(
            create_app(settings, dispatchers()),
            host=settings.api.host,
            port=settings.api.port,
            access_log=settings.api.access_log,
        )


def api_app() -> FastAPI:
    """The app one of several API worker processes serves (uvicorn's factory)."""
    from api.app import create_app
    from flows.pool_tasks import dispatchers
    from relay_settings import get_settings

    _logging()
    return create_app(get_settings(), dispatchers())


def serve() -> None:
    """Serve every Relay deployment from this process (the embedded mode's flow runner)."""
    from deployments.serve import serve_deployments

    serve_deployments()
