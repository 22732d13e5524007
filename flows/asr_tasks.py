"""Transcriptions as Prefect background tasks, served by warm task workers per ASR pool.

With ``RELAY_TRANSCRIBE_VIA=task-worker`` the API creates a background task run
(``transcribe-on-asr-cpu`` or ``-gpu``) instead of a flow run. A long-lived task worker of
that pool (``python -m cli worker --pool asr-cpu``) takes it within a few hundred
milliseconds and runs the ``transcribe`` flow in-process, as a subflow of the task run, on
the warm Dask cluster: no flow-run process to start, no imports or model loads per job.
Jobs run side by side; Dask's priorities decide which chunks go first (see flows/chunks.py).
``prefect deployment run 'transcribe/asr-cpu'`` still runs a flow run on the pool's worker.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from functools import partial

from prefect import runtime as prefect_runtime
from prefect import tags

from flows.deferred import serve_warm
from flows.pool_tasks import PoolTask, pool_task
from relay_pools import get_pool
from relay_settings import get_settings, reload_settings
from store import jobs

log = logging.getLogger("relay.asr")

HEARTBEAT_SECONDS = 10.0
STRANDED_AFTER_SECONDS = 60.0
MAINTENANCE_SECONDS = 15.0


def run_job(
    pool: str, job_id: str, source: str, options: dict[str, object], token: str | None = None
) -> str:
    """Run the ``transcribe`` flow for an accepted job on ``pool``'s task worker (the pool's
    background task, ``transcribe-on-<pool>``); returns the job's final status.

    While it runs, a heartbeat in the store says this process is alive; if it dies, another
    task worker of the pool runs the job again (``recover_stranded``) under a new dispatch
    token, and a late run with an older token does nothing.
    """
    from flows.runtime import without_prefect_heartbeat
    from flows.transcribe import transcribe

    job = jobs.get_job(job_id)
    if job is None or job.status in jobs.FINAL_STATES:
        return str(job.status) if job else "missing"
    if job.dispatch_token != token:
        log.info("job %s was dispatched again since this run was; leaving it", job_id)
        return "superseded"
    stop = threading.Event()
    jobs.beat(job_id)
    threading.Thread(target=_beat_until, args=(job_id, stop), daemon=True).start()
    # Prefect links no parent to a flow started in a background task: tags tie them together.
    task_run_id = prefect_runtime.task_run.id
    try:
        # The job's heartbeat above says this run is alive: no Prefect heartbeat, whose
        # thread would hold the end of every run by up to a second (flows/runtime.py).
        with (
            tags(f"relay-job:{job_id}", f"relay-task-run:{task_run_id}"),
            without_prefect_heartbeat(),
        ):
            state = transcribe(
                source, job_id=job_id, **{**get_pool(pool).options, **options}, return_state=True
            )
    finally:
        stop.set()
    job = jobs.get_job(job_id)
    log.info("job %s ended %s: %s", job_id, job.status if job else "?", state.message or "")
    return str(job.status) if job else state.type.value.lower()


def _beat_until(job_id: str, stop: threading.Event) -> None:
    while not stop.wait(HEARTBEAT_SECONDS):
        try:
            jobs.beat(job_id)
        except Exception:
            log.warning("could not record job %s's heartbeat", job_id, exc_info=True)


def recover_stranded(pool: str, older_than: float = STRANDED_AFTER_SECONDS) -> list[str]:
    """Run again the pool's jobs whose task worker died (no heartbeat for ``older_than`` s).
    Several workers may look at once; each job is taken by one. Returns the jobs taken."""
    taken = []
    for job in jobs.stranded(pool, older_than):
        if token := jobs.take_stranded(job.id, older_than):
            log.warning("job %s lost its task worker; running it again", job.id)
            pool_task(pool).dispatch(
                job_id=job.id,
                source=job.source_path,
                options=json.loads(job.options or "{}"),
                token=token,
            )
            taken.append(job.id)
    return taken


def warm_local_cluster(workers: int):  # -> distributed.LocalCluster
    """No RELAY_DASK_ADDRESS: one LocalCluster for the worker's life, its model preloaded,
    so that every job of this process finds it warm (a laptop without a Dask cluster)."""
    import dask
    from distributed import LocalCluster

    from flows.runtime import SCHEDULER_SATURATION, local_cluster_kwargs

    saturation = {"distributed.scheduler.worker-saturation": SCHEDULER_SATURATION}
    with dask.config.set(saturation):
        cluster = LocalCluster(
            **local_cluster_kwargs(workers), preload=["deployments.dask_preload"]
        )
    os.environ["RELAY_DASK_ADDRESS"] = cluster.scheduler_address
    reload_settings()
    return cluster


def serve_pool(served: PoolTask, limit: int) -> None:
    """Serve the pool's transcriptions until interrupted (``python -m cli worker --pool``)."""
    import flows.transcribe  # noqa: F401 (imported once now, not by the first job)

    pool = served.pool
    os.environ.setdefault("RELAY_WORK_POOL", pool)
    cluster = None
    if not get_settings().dask_address:
        from flows.runtime import local_worker_count

        cluster = warm_local_cluster(local_worker_count(64))
        log.info(
            "no RELAY_DASK_ADDRESS: started a warm LocalCluster at %s", cluster.scheduler_address
        )
    try:
        serve_warm(served.served, limit, partial(recover_stranded, pool), MAINTENANCE_SECONDS)
    finally:
        if cluster is not None:
            cluster.close()
