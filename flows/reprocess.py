"""Batch video reprocessing: one flow run per batch, N worker flow runs sharing the catalogue.

``reprocess_videos`` opens a batch over the videos waiting now, starts N workers from the
``reprocess-worker/batch-video`` deployment (so they run wherever the pool has workers), and
follows their progress until every video is done or failed. People drive it with
``python -m cli batch ...`` (cli/batch.py), the ``batch-video`` deployment's schedule, or
``prefect deployment run 'reprocess-videos/batch-video'``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TypedDict
from uuid import UUID

from prefect import flow, get_run_logger, runtime
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.client.schemas.objects import StateType
from prefect.states import Failed, State

from blocks.prefect_sync import settled
from flows.batch_worker import reprocess_worker
from relay_settings import get_settings
from store import batches, videos
from store.batches import BatchProgress, batch_progress
from store.models import BatchStatus
from tasks.notify import JobEvent, notify_job

FINAL_RUN_STATES = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


@dataclass(frozen=True)
class BatchOutcome:
    """How a batch ended."""

    batch_id: str
    status: str
    videos_total: int
    done: int
    failed: int
    left: int


class WorkerParameters(TypedDict):
    """What each worker flow run of a batch is given (None: the worker's default)."""

    batch_id: str
    claim_size: int | None
    lease_seconds: float | None
    max_attempts: int | None


@flow(name="reprocess-videos", log_prints=True, persist_result=False)
def reprocess_videos(
    workers: int | None = None,
    claim_size: int | None = None,
    lease_seconds: float | None = None,
    max_attempts: int | None = None,
    force_ids: list[int] | None = None,
    poll_seconds: float = 5.0,
) -> BatchOutcome | State:
    """Process every waiting video with ``workers`` workers; returns when none are left."""
    settings = get_settings()
    workers = workers or settings.batch.workers
    logger = get_run_logger()
    if force_ids:
        logger.info("forcing %d video(s) back to pending", videos.force(force_ids))
    batch = batches.start_batch(workers)
    batches.set_batch_flow_run(batch.id, str(runtime.flow_run.get_id() or ""))
    logger.info("batch %s: %d video(s), %d worker(s)", batch.id, batch.videos_total, workers)
    if batch.videos_total == 0:
        batches.finish_batch(batch.id, BatchStatus.COMPLETED)
        _final_artifacts(_progress(batch.id))
        return BatchOutcome(batch.id, BatchStatus.COMPLETED, 0, 0, 0, 0)

    parameters: WorkerParameters = {
        "batch_id": batch.id,
        "claim_size": claim_size,
        "lease_seconds": lease_seconds,
        "max_attempts": max_attempts,
    }
    runs = _start_workers(batch.id, workers, parameters)
    if runs is None:
        logger.warning(
            "deployment %s not found: running one worker in this flow run instead of %d",
            settings.batch.worker_deployment,
            workers,
        )
        reprocess_worker(**parameters)
        runs = []
    status = _follow(batch.id, runs, poll_seconds)
    batches.finish_batch(batch.id, status)
    progress = _progress(batch.id)
    _final_artifacts(progress)
    _announce(progress)
    outcome = BatchOutcome(
        batch.id,
        status,
        progress.videos_total,
        progress.done,
        progress.failed,
        progress.pending + progress.in_flight,
    )
    if status != BatchStatus.COMPLETED:
        return Failed(
            message=f"batch {batch.id} stopped with {outcome.left} video(s) left: every "
            "worker ended (they stay pending for the next batch)"
        )
    return outcome


def _progress(batch_id: str) -> BatchProgress:
    """The progress of a batch this flow run opened (its row is never deleted)."""
    progress = batch_progress(batch_id)
    if progress is None:
        raise LookupError(f"batch {batch_id} is no longer in the store")
    return progress


def _start_workers(batch_id: str, count: int, parameters: WorkerParameters) -> list[UUID] | None:
    """Submit ``count`` worker flow runs to the worker deployment; None if it does not exist."""
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound

    name = get_settings().batch.worker_deployment
    with get_client(sync_client=True) as client:
        try:
            client.read_deployment_by_name(name)
        except ObjectNotFound:
            return None
    return [
        settled(
            run_deployment(
                name,
                parameters={key: value for key, value in parameters.items() if value is not None},
                flow_run_name=f"batch-{batch_id[:8]}-worker-{number}",
                timeout=0,
                tags=["relay", "batch-video"],
            )
        ).id
        for number in range(1, count + 1)
    ]


def _follow(batch_id: str, runs: list[UUID], poll_seconds: float) -> BatchStatus:
    """Keep the progress artifact current until the batch is drained or its workers are gone."""
    artifact = settled(
        create_progress_artifact(0.0, description=f"Videos finished, batch {batch_id}")
    )
    logger = get_run_logger()
    last = None
    while True:
        progress = _progress(batch_id)
        update_progress_artifact(artifact, progress.percent)
        if (progress.done, progress.failed) != last:
            last = (progress.done, progress.failed)
            logger.info(
                "batch %s: %d done, %d failed, %d in flight, %d waiting; %.1f/min; ETA %s",
                *(batch_id, progress.done, progress.failed, progress.in_flight, progress.pending),
                progress.rate_per_minute,
                f"{progress.eta_seconds:.0f} s" if progress.eta_seconds is not None else "-",
            )
        if progress.status == BatchStatus.CANCELLED:
            return BatchStatus.CANCELLED
        if progress.pending + progress.in_flight == 0:
            return BatchStatus.COMPLETED
        if runs and _all_final(runs):
            return BatchStatus.INCOMPLETE
        time.sleep(poll_seconds)


def _all_final(runs: list[UUID]) -> bool:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return all(_is_final(client.read_flow_run(run).state_type) for run in runs)


def _is_final(state: StateType | None) -> bool:
    return state is not None and state.value in FINAL_RUN_STATES


def _final_artifacts(progress: BatchProgress) -> None:
    """A table of what each worker did, and the failed videos with their reasons."""
    rows = [
        {
            "worker": w.worker,
            "done": w.done,
            "failed": w.failed,
            "retried": w.retried,
            "lost leases": w.lost,
            "videos/min": w.rate_per_minute,
        }
        for w in progress.workers
    ]
    rows.append(
        {
            "worker": "all",
            "done": progress.done,
            "failed": progress.failed,
            "retried": sum(w.retried for w in progress.workers),
            "lost leases": sum(w.lost for w in progress.workers),
            "videos/min": progress.rate_per_minute,
        }
    )
    create_table_artifact(
        key=f"batch-{progress.batch_id}",
        table=rows,
        description=f"Batch {progress.batch_id}: {progress.status}, "
        f"{progress.done} done, {progress.failed} failed of {progress.videos_total}",
    )
    failed = batches.failed_videos(progress.batch_id, limit=50)
    if failed:
        lines = "\n".join(f"| {v.id} | `{v.name}` | {(v.error or '')[:200]} |" for v in failed)
        create_markdown_artifact(
            key=f"batch-{progress.batch_id}-failures",
            markdown=f"## Failed videos\n\n| id | file | reason |\n|---|---|---|\n{lines}\n",
            description=f"Videos that failed in batch {progress.batch_id}",
        )


def _announce(progress: BatchProgress) -> None:
    """Post the batch's end to Discord; a delivery problem is only logged."""
    completed = progress.status == BatchStatus.COMPLETED
    summary = (
        f"{progress.done} done, {progress.failed} failed of {progress.videos_total} videos "
        f"by {len(progress.workers)} worker(s), {progress.rate_per_minute:.1f} videos/min"
    )
    notify_job(
        get_settings().discord.block,
        JobEvent(
            "completed" if completed else "failed",
            progress.batch_id,
            f"{progress.videos_total} videos",
            subject="Video batch",
            summary=summary,
            error=None if completed else f"batch {progress.status}: {summary}",
        ),
    )
