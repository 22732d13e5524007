"""Long-running Relay processes: a pool's task worker, the REST API, the embedded serve."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from relay_pools import task_pools

if TYPE_CHECKING:
    from fastapi import FastAPI

    from relay_settings import RelaySettings

log = logging.getLogger("relay.cli")
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
RELAY_LOGGERS = ("relay", "api", "cli", "deployments", "flows", "store", "tasks")


def _logging() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # Prefect configures logging again once it starts (its root logger at WARNING): Relay's
    # own lines (a worker starting, stopping, its metrics port) keep their level.
    for package in RELAY_LOGGERS:
        logging.getLogger(package).setLevel(logging.INFO)


def worker(
    pool: Annotated[str, typer.Option(help=f"the pool to serve: {', '.join(task_pools())}")],
    limit: Annotated[
        int | None, typer.Option(help="task runs at once in this process (default: registry)")
    ] = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(help="serve /metrics on this port (default RELAY_METRICS_WORKER_PORT; 0: no)"),
    ] = None,
) -> None:
    """Serve one pool's background task (work-pools/pools.yaml) until interrupted; told to
    stop (SIGTERM, Ctrl-C), exit within RELAY_WORKERS_STOP_SECONDS (flows/stopping.py)."""
    from flows.pool_tasks import pool_task, serve_pool_task
    from flows.stopping import stop_within
    from relay_settings import get_settings
    from tasks.metrics import serve_worker_metrics

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
    settings = get_settings()
    metrics = settings.metrics
    port = metrics.worker_port if metrics_port is None else metrics_port
    if port and serve_worker_metrics(port, metrics.worker_host, metrics.token.get_secret_value()):
        log.info("metrics of this worker on http://%s:%d/metrics", metrics.worker_host, port)
    try:
        serve_pool_task(pool, limit)
    except (KeyboardInterrupt, SystemExit) as stop:
        if isinstance(stop, SystemExit) and stop.code not in (0, None):
            raise
        log.info("task worker for %s stopping after %.0f s", pool, time.monotonic() - started)
        stop_within(settings.workers.stop_seconds, pool_task(pool).running.count)


def _exit_on_sigterm(_signum: int, _frame: object) -> None:
    # Only raise here: a handler that logs could meet a lock the interrupted code holds.
    raise SystemExit(0)


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
        workers = settings.api.workers
        app: FastAPI | str = "cli.services:api_app"
        if workers == 1:
            app = create_app(settings, dispatchers())
        else:
            # Each process writes its counters to files that any of them adds up at a
            # scrape. Set before they start (prometheus_client reads it on import), after
            # the embedded task workers started (they serve their own, as elsewhere).
            folder = metrics_folder(settings)
            log.info("%d API processes; their metrics in %s", workers, folder)
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)
        uvicorn.run(
            app,
            factory=workers > 1,
            workers=workers,
            host=settings.api.host,
            port=settings.api.port,
            access_log=settings.api.access_log,
            # uvicorn's supervisor restarts a worker that misses a ping for 5 s; importing
            # Prefect takes a worker about that on a busy host, so it was killed mid-start.
            timeout_worker_healthcheck=30,
        )


def metrics_folder(settings: RelaySettings) -> Path:
    """The API processes' metrics folder, emptied: counters of an earlier run would be
    added to this one's."""
    from api.metrics import multiproc_dir

    folder = multiproc_dir(settings)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def api_app() -> FastAPI:
    """The app of one API process among several (uvicorn's factory)."""
    from api.app import create_app
    from flows.pool_tasks import dispatchers
    from relay_settings import get_settings

    _logging()
    return create_app(get_settings(), dispatchers())


def serve() -> None:
    """Serve every Relay deployment from this process (the embedded mode's flow runner)."""
    from deployments.serve import serve_deployments

    serve_deployments()
