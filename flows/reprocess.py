"""Batch video reprocessing: one flow run per batch, N worker flow runs sharing the catalogue.

``reprocess_videos`` opens a batch over the videos waiting now, starts N workers from the
``reprocess-worker/batch-video`` deployment (so they run wherever the pool has workers), and
follows their progress until every video is done or failed. The CLI::

    python -m flows.reprocess import DIR_OR_LIST    # add videos to the catalogue
    python -m flows.reprocess run [--workers N]     # run a batch and wait for it
    python -m flows.reprocess work BATCH_ID         # one more worker for a running batch
    python -m flows.reprocess status [BATCH_ID]     # progress as JSON
    python -m flows.reprocess force VIDEO_ID ...    # process finished videos again
    python -m flows.reprocess cancel BATCH_ID       # workers stop after their current video
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass
from uuid import UUID

from prefect import flow, get_run_logger, runtime
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.states import Failed, State

from flows.batch_worker import reprocess_worker
from relay_settings import get_settings
from store import batches, videos
from store.batches import BatchProgress, batch_progress
from store.models import BatchStatus, Video, VideoStatus
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
    workers = workers or settings.batch_workers
    logger = get_run_logger()
    if force_ids:
        logger.info("forcing %d video(s) back to pending", videos.force(force_ids))
    batch = batches.start_batch(workers)
    batches.set_batch_flow_run(batch.id, str(runtime.flow_run.get_id() or ""))
    logger.info("batch %s: %d video(s), %d worker(s)", batch.id, batch.videos_total, workers)
    if batch.videos_total == 0:
        batches.finish_batch(batch.id, BatchStatus.COMPLETED)
        _final_artifacts(batch_progress(batch.id))
        return BatchOutcome(batch.id, BatchStatus.COMPLETED, 0, 0, 0, 0)

    parameters = {
        "batch_id": batch.id,
        "claim_size": claim_size,
        "lease_seconds": lease_seconds,
        "max_attempts": max_attempts,
    }
    runs = _start_workers(batch.id, workers, parameters)
    if runs is None:
        logger.warning(
            "deployment %s not found: running one worker in this flow run instead of %d",
            settings.batch_worker_deployment,
            workers,
        )
        reprocess_worker(**parameters)
        runs = []
    status = _follow(batch.id, runs, poll_seconds)
    batches.finish_batch(batch.id, status)
    progress = batch_progress(batch.id)
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


def _start_workers(batch_id: str, count: int, parameters: dict) -> list[UUID] | None:
    """Submit ``count`` worker flow runs to the worker deployment; None if it does not exist."""
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound

    name = get_settings().batch_worker_deployment
    with get_client(sync_client=True) as client:
        try:
            client.read_deployment_by_name(name)
        except ObjectNotFound:
            return None
    return [
        run_deployment(
            name,
            parameters={key: value for key, value in parameters.items() if value is not None},
            flow_run_name=f"batch-{batch_id[:8]}-worker-{number}",
            timeout=0,
            tags=["relay", "batch-video"],
        ).id
        for number in range(1, count + 1)
    ]


def _follow(batch_id: str, runs: list[UUID], poll_seconds: float) -> BatchStatus:
    """Keep the progress artifact current until the batch is drained or its workers are gone."""
    artifact = create_progress_artifact(0.0, description=f"Videos finished, batch {batch_id}")
    logger = get_run_logger()
    last = None
    while True:
        progress = batch_progress(batch_id)
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
        return all(client.read_flow_run(run).state_type.value in FINAL_RUN_STATES for run in runs)


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
    failed = _failed_videos(progress.batch_id, limit=50)
    if failed:
        lines = "\n".join(f"| {v.id} | `{v.name}` | {(v.error or '')[:200]} |" for v in failed)
        create_markdown_artifact(
            key=f"batch-{progress.batch_id}-failures",
            markdown=f"## Failed videos\n\n| id | file | reason |\n|---|---|---|\n{lines}\n",
            description=f"Videos that failed in batch {progress.batch_id}",
        )


def _failed_videos(batch_id: str, limit: int) -> list[Video]:
    from sqlmodel import select

    from store.db import session_scope

    with session_scope() as session:
        return list(
            session.exec(
                select(Video)
                .where(Video.batch_id == batch_id, Video.status == VideoStatus.FAILED)
                .order_by(Video.id)
                .limit(limit)
            )
        )


def _announce(progress: BatchProgress) -> None:
    """Post the batch's end to Discord; a delivery problem is only logged."""
    completed = progress.status == BatchStatus.COMPLETED
    summary = (
        f"{progress.done} done, {progress.failed} failed of {progress.videos_total} videos "
        f"by {len(progress.workers)} worker(s), {progress.rate_per_minute:.1f} videos/min"
    )
    notify_job(
        get_settings().discord_block,
        JobEvent(
            "completed" if completed else "failed",
            progress.batch_id,
            f"{progress.videos_total} videos",
            subject="Video batch",
            summary=summary,
            error=None if completed else f"batch {progress.status}: {summary}",
        ),
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m flows.reprocess", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    add = commands.add_parser("import", help="add videos: a folder, a .csv or a .json list")
    add.add_argument("target")
    run = commands.add_parser("run", help="run a batch over the waiting videos and wait")
    run.add_argument("--workers", type=int, help="worker flow runs (default RELAY_BATCH_WORKERS)")
    run.add_argument("--force", type=int, nargs="*", default=[], help="video ids to redo")
    work = commands.add_parser("work", help="run one more worker for a batch, in this process")
    work.add_argument("batch_id")
    status = commands.add_parser("status", help="progress of a batch (default: the newest)")
    status.add_argument("batch_id", nargs="?")
    again = commands.add_parser("force", help="make finished videos pending again")
    again.add_argument("video_ids", type=int, nargs="+")
    cancel = commands.add_parser("cancel", help="stop a batch: workers finish their video")
    cancel.add_argument("batch_id")
    return parser


def main(argv: list[str] | None = None) -> int:
    """The batch CLI; one line on stderr and exit 1 on bad input."""
    args = _parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (ValueError, LookupError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


def _import(args: argparse.Namespace) -> int:
    from flows.catalogue import describe, read_sources

    sources = read_sources(args.target)
    added, known = videos.import_videos(describe(source) for source in sources)
    print(f"{added} video(s) added, {known} already in the catalogue ({len(sources)} listed)")
    return 0


def _run(args: argparse.Namespace) -> int:
    from deployments.serve import served_flows
    from flows.runtime import prefect_api

    embedded = not os.environ.get("PREFECT_API_URL")
    with prefect_api(), ExitStack() as stack:
        if embedded:  # workers need a process to run in: serve the deployments locally
            stack.enter_context(served_flows(get_settings().batch_worker_deployment))
        state = reprocess_videos(workers=args.workers, force_ids=args.force, return_state=True)
    outcome = state.result(raise_on_failure=False)
    if isinstance(outcome, BatchOutcome):
        print(json.dumps(outcome.__dict__))
    if not state.is_completed():
        print(f"error: {state.message}", file=sys.stderr)
        return 1
    return 0


def _work(args: argparse.Namespace) -> int:
    from flows.runtime import prefect_api

    if batches.get_batch(args.batch_id) is None:
        raise LookupError(f"no batch {args.batch_id}")
    with prefect_api():
        summary = reprocess_worker(args.batch_id)
    print(json.dumps(summary.__dict__))
    return 0


def _status(args: argparse.Namespace) -> int:
    batch_id = args.batch_id or batches.newest_batch_id()
    progress = batch_progress(batch_id) if batch_id else None
    if progress is None:
        raise LookupError(f"no batch {args.batch_id}" if args.batch_id else "no batch yet")
    print(json.dumps(progress.as_dict(), default=str, indent=2))
    return 0


def _force(args: argparse.Namespace) -> int:
    count = videos.force(args.video_ids)
    print(f"{count} video(s) pending again; the next batch processes them")
    return 0


def _cancel(args: argparse.Namespace) -> int:
    if not batches.finish_batch(args.batch_id, BatchStatus.CANCELLED):
        raise LookupError(f"no running batch {args.batch_id}")
    print(f"batch {args.batch_id} cancelled; its workers stop after their current video")
    return 0


COMMANDS = {
    "import": _import,
    "run": _run,
    "work": _work,
    "status": _status,
    "force": _force,
    "cancel": _cancel,
}

if __name__ == "__main__":
    sys.exit(main())
