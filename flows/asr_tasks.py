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

import logging
import os
from functools import partial

from prefect import runtime as prefect_runtime
from prefect import tags

from flows.dead_runs import crash_silent_runs
from flows.deferred import serve_warm
from flows.pool_tasks import PoolTask, pool_task
from relay_pools import get_pool
from relay_settings import get_settings, reload_settings
from store import jobs
from store.leases import LeaseOutcome, process_owner, renewal_interval, renewing
from tasks.asr import JobOptions
from tasks.callbacks import deliver_due

log = logging.getLogger("relay.asr")

MAINTENANCE_SECONDS = 15.0  # at most; a shorter job lease is looked at three times a lease
LEASE_RAN_OUT = "its lease ran out: the process running it is presumed dead; taken over"


def run_job(
    pool: str,
    job_id: str,
    source: str,
    options: JobOptions | dict[str, object],
    token: str | None = None,
) -> str:
    """Run the ``transcribe`` flow for an accepted job on ``pool``'s task worker (the pool's
    background task, ``transcribe-on-<pool>``); returns the job's final status.

    While it runs, this process holds the job's lease (renewed in the store); if it dies,
    another task worker of the pool runs the job again (``recover_stranded``) under a new
    lease, whose token a late run with an older one does not hold: it does nothing.
    ``options`` are the job's own (a dict from a release before they were typed); the
    pool's (``pools.yaml``) fill in the rest.
    """
    from flows.runtime import without_prefect_heartbeat
    from flows.transcribe import transcribe

    seconds = get_settings().job.lease_seconds
    lease = jobs.start_run(job_id, token, process_owner(), seconds)
    if lease is None:
        job = jobs.get_job(job_id)
        if job is None:
            return LeaseOutcome.MISSING
        if job.status in jobs.FINAL_STATES:
            return job.status
        log.info("job %s was dispatched again since this run was; leaving it", job_id)
        return LeaseOutcome.SUPERSEDED
    # Prefect links no parent to a flow started in a background task: tags tie them together.
    task_run_id = prefect_runtime.task_run.id
    # The job's lease says this run is alive: no Prefect heartbeat, whose thread would hold
    # the end of every run by up to a second (flows/runtime.py).
    with (
        renewing(
            lambda: jobs.renew(job_id, lease, seconds), renewal_interval(seconds), f"job {job_id}"
        ),
        tags(f"relay-job:{job_id}", f"relay-task-run:{task_run_id}"),
        without_prefect_heartbeat(),
    ):
        chosen = JobOptions.model_validate(options).over(pool_options(pool))
        state = transcribe(
            source, job_id=job_id, lease_token=lease.token, **chosen.given(), return_state=True
        )
    job = jobs.get_job(job_id)
    log.info("job %s ended %s: %s", job_id, job.status if job else "?", state.message or "")
    return str(job.status) if job else state.type.value.lower()


def pool_options(pool: str) -> JobOptions:
    """What the pool's flows pass by default (``options`` in ``pools.yaml``)."""
    return JobOptions.model_validate(get_pool(pool).options)


def maintenance_interval(lease_seconds: float) -> float:
    """How often a task worker looks for stranded jobs: every 15 s, or three times a lease
    where the lease is shorter (a dead worker's job then waits at most 4/3 of its lease)."""
    return max(1.0, min(MAINTENANCE_SECONDS, lease_seconds / 3))


def maintain(pool: str) -> None:
    """The pool's maintenance pass: run stranded jobs again, and retry due completion
    callbacks (of any workload; each is taken by one process)."""
    recover_stranded(pool)
    deliver_due()


def recover_stranded(pool: str) -> list[str]:
    """Run again the pool's jobs whose worker died (their lease ran out): a task worker's,
    or a deployment run's flow-run process. Several workers may look at once; each job is
    taken by one. Returns the jobs taken."""
    seconds = get_settings().job.lease_seconds
    taken = []
    for job_id in jobs.expired(pool):
        lease = jobs.take_over(job_id, process_owner(), seconds)
        job = jobs.get_job(job_id) if lease else None
        if lease and job:
            log.warning("job %s lost its worker; running it again", job_id)
            if job.flow_run_id:  # what the dead process left Running in the Prefect UI
                crash_silent_runs(job.flow_run_id, f"job {job_id}: {LEASE_RAN_OUT}")
            pool_task(pool).dispatch(
                job_id=job_id,
                source=job.source_path,
                options=JobOptions.model_validate_json(job.options or "{}"),
                token=lease.token,
            )
            taken.append(job_id)
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
    if not get_settings().dask.address:
        from flows.runtime import local_worker_count

        cluster = warm_local_cluster(local_worker_count(64))
        log.info(
            "no RELAY_DASK_ADDRESS: started a warm LocalCluster at %s", cluster.scheduler_address
        )
    try:
        every = maintenance_interval(get_settings().job.lease_seconds)
        serve_warm(served.served, limit, partial(maintain, pool), every)
    finally:
        if cluster is not None:
            cluster.close()
