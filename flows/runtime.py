"""Where flows run: the Prefect API (embedded or configured) and the Dask task runner."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

# Before distributed is imported: its per-worker INFO lines drown the flow's own log.
os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
# The temporary server's telemetry heartbeat competes for its SQLite file; nothing to report.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

import dask.config
import yaml
from prefect.settings import (
    PREFECT_API_URL,
    PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
    temporary_settings,
)
from prefect.task_runners import TaskRunner
from prefect_dask import DaskTaskRunner

from relay_settings import PROJECT_ROOT, get_settings

# Relay's Dask configuration (why: see the file). Applied here to every cluster this process
# starts; DASK_CONFIG hands it to the Dask processes started from here (`dask worker`).
DASK_CONFIG_FILE = PROJECT_ROOT / "deployments" / "dask.yaml"


def use_relay_dask_config() -> None:
    """Apply ``deployments/dask.yaml`` over Dask's defaults in this process (idempotent)."""
    dask.config.update(
        dask.config.config, yaml.safe_load(DASK_CONFIG_FILE.read_text()), priority="new"
    )
    os.environ.setdefault("DASK_CONFIG", str(DASK_CONFIG_FILE))


use_relay_dask_config()

EMBEDDED_SERVER_TIMEOUT_SECONDS = 120
# Dask's distributed.scheduler.worker-saturation for a cluster shared by jobs: a worker is
# sent only as many chunks as it has threads and the rest wait at the scheduler in priority
# order, so a short job's chunks overtake a long one's (Dask's default, 1.1, sends one more,
# which then runs first whatever arrives after it).
SCHEDULER_SATURATION = 1.0


@contextmanager
def prefect_api() -> Iterator[str]:
    """The configured Prefect API, or a temporary local server started for this process.

    The URL is exported so that every child process (Dask workers above all) reports to
    this same server instead of starting a temporary server of its own.
    """
    url = PREFECT_API_URL.value()
    if url:
        yield url
        return
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()
    # Prefect's default (20 s) is too short on a busy two-core machine; this only waits longer.
    server.start(timeout=EMBEDDED_SERVER_TIMEOUT_SECONDS)
    os.environ["PREFECT_API_URL"] = server.api_url
    try:
        with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
            yield server.api_url
    finally:
        _drain_to(server.api_url)
        os.environ.pop("PREFECT_API_URL", None)
        server.stop()


@contextmanager
def without_prefect_heartbeat() -> Iterator[None]:
    """Flow runs started inside emit no Prefect heartbeat.

    Prefect's engine joins its heartbeat thread when a flow run ends, and that thread sleeps
    in 1 s steps: every flow run ends up to 1 s late (1.5 s of a 12 s job, measured with
    py-spy when its chunks ran in a subflow of their own). Used only where something else
    already says that the run is alive: the warm task workers (Relay's job heartbeat and recovery,
    flows/asr_tasks.py). Deployment runs keep Prefect's.
    """
    if PREFECT_FLOWS_HEARTBEAT_FREQUENCY.value() is None:  # already off: new settings cost 80 ms
        yield
        return
    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield


def _drain_to(api_url: str) -> None:
    """Send queued logs and events while the temporary server is still up to take them."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        for service in (APILogWorker, EventsWorker):
            service.drain_all(timeout=10)


def cluster_threads() -> int:
    """Threads that will decode this job's chunks: the LocalCluster's workers, or the
    configured cluster's threads (asked of its scheduler, at most once every 30 s)."""
    settings = get_settings()
    if not settings.dask.address:
        return settings.dask.workers or os.cpu_count() or 1
    return _scheduler_threads(settings.dask.address, int(time.monotonic() // 30))


@lru_cache(maxsize=4)
def _scheduler_threads(address: str, period: int) -> int:  # noqa: ARG001 (the cache's clock)
    from distributed import Client

    try:
        with Client(address, timeout=5, set_as_default=False) as client:
            workers = client.scheduler_info(n_workers=-1)["workers"].values()
            return max(1, sum(worker["nthreads"] for worker in workers))
    except OSError:  # the chunk map reports an unreachable scheduler with its own error
        return 1


def local_worker_count(chunks: int) -> int:
    """Workers of a LocalCluster: as configured (default one per core), never more than chunks."""
    wanted = get_settings().dask.workers or os.cpu_count() or 1
    return max(1, min(wanted, chunks))


def chunk_task_runner(chunks: int) -> TaskRunner[Any]:
    """Dask for the chunk map: the configured cluster, else a LocalCluster for this run."""
    # Typed as the base: prefect-dask declares DaskTaskRunner over the default future type,
    # which a flow's ``task_runner`` option (invariant in it) does not accept.
    settings = get_settings()
    if settings.dask.address:
        return DaskTaskRunner(address=settings.dask.address)
    return DaskTaskRunner(
        cluster_class="distributed.LocalCluster",
        cluster_kwargs=local_cluster_kwargs(local_worker_count(chunks)),
    )


def local_cluster_kwargs(workers: int) -> dict[str, object]:
    """How Relay starts a LocalCluster: single-threaded worker processes (the model's own
    threads as configured). They need no Prefect API: a chunk's task run stays in the flow's
    process, and its worker only decodes (tasks/chunk_run.py)."""
    threads = get_settings().asr.cpu_threads or 1
    return {
        "n_workers": workers,
        "threads_per_worker": 1,
        "processes": True,
        "dashboard_address": None,
        "env": {
            "OMP_NUM_THREADS": str(threads),
            "DASK_LOGGING__DISTRIBUTED": "warning",
        },
    }
