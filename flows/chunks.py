"""The chunk map: every chunk transcribed on the Dask cluster, progress recorded as they land."""

from __future__ import annotations

import concurrent.futures
import math
import time
from contextlib import closing
from dataclasses import dataclass
from typing import Any, cast

from distributed import Client
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.context import TagsContext
from prefect.futures import PrefectConcurrentFuture, as_completed
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner
from prefect_dask import DaskTaskRunner

from blocks.prefect_sync import settled
from relay_settings import get_settings
from store import job_chunks, jobs
from tasks.asr import AsrOptions, ChunkResult
from tasks.chunk_run import cancel_decodes, transcribe_chunk
from tasks.media import MediaError
from tasks.split import Chunk, SplitOptions, SplitPlan, split_while_decoding

# Above any job's own priority: each job's first chunk goes before every other waiting chunk.
FIRST_CHUNK_PRIORITY = 1_000_000
# How long a pass of stopping a job's decodes waits for its task runs to end before it
# cancels again (a task run hands its decode to Dask a few milliseconds after it starts).
STOP_PASS_SECONDS = 0.5
# A chunk's task run, on a thread of the flow's process.
ChunkRun = PrefectConcurrentFuture[ChunkResult]


def job_priority(duration: float) -> int:
    """Dask priority of a job's chunks: minus its length in seconds (shorter runs first)."""
    return -round(duration)


def chunk_priority(duration: float, index: int) -> int:
    """A job's first chunk before anything else waiting (every user sees text early), then
    shorter jobs before longer ones (short work is never stuck behind a long file)."""
    return FIRST_CHUNK_PRIORITY if index == 0 else job_priority(duration)


@dataclass(frozen=True)
class ChunkMap:
    """What the chunk map did: the chunks as split, their results, the failures; a split
    that failed (a truncated file) says why in ``split_error``."""

    chunks: list[Chunk]
    results: list[ChunkResult]
    failures: list[str]
    split_error: str | None = None
    split_seconds: float = 0.0


def transcribe_chunks(
    runner: TaskRunner[Any],
    job_id: str,
    chunks: list[Chunk],
    options: AsrOptions,
    split: SplitPlan | None = None,
) -> ChunkMap:
    """Transcribe ``chunks`` on the cluster of ``runner`` (a started ``DaskTaskRunner``), or
    the chunks of ``split`` as they are cut while the file decodes (the first ones are
    transcribed before its end is decoded).

    Each chunk is a ``transcribe-chunk`` task run of the flow run this is called in, on a
    thread of this process that waits while a Dask worker decodes it: a worker spends its
    time on the model alone (tasks/chunk_run.py). Every chunk ends done or failed with its
    reason, in the store as it finishes.
    """
    settings = get_settings()
    task = transcribe_chunk.with_options(retries=settings.chunk.retries)
    limit = settings.chunk.timeout_seconds
    duration = split.info.duration if split else (chunks[-1].end if chunks else 0.0)
    client = cast(DaskTaskRunner, runner).client
    # One thread per chunk, all waiting at once: no chunk waits for a thread to reach Dask.
    threads: ThreadPoolTaskRunner[ChunkResult] = ThreadPoolTaskRunner(
        max_workers=len(chunks) or most_chunks(duration)
    )
    started = time.perf_counter()
    futures: dict[ChunkRun, Chunk] = {}
    cut: list[Chunk] = []

    def submit(chunk: Chunk) -> ChunkRun:
        # On a shared cluster, a shorter job's chunks go first: short work is never stuck
        # behind a long file (Dask runs higher priorities first). Without the job's tags
        # (its flow run has them; the chunk is its child): a tagged task run first takes a
        # slot of each tag's concurrency limit on the Prefect server (docs/benchmarks.md).
        # The task run finds the client as its default_client(): copied into its thread.
        with TagsContext(), client.as_current():
            parameters = {
                "chunk": chunk,
                "options": options,
                "timeout": limit,
                "job_id": job_id,
                "priority": chunk_priority(duration, chunk.index),
            }
            return threads.submit(task, parameters)

    stream = (chunk for chunk in chunks) if split is None else split_while_decoding(split)
    with threads, closing(stream) as source:  # an abandoned split stops ffmpeg at once
        try:
            try:
                for chunk in source:
                    if split is not None:
                        job_chunks.add_chunk(job_id, chunk.index, chunk.start, chunk.end)
                    cut.append(chunk)
                    futures[submit(chunk)] = chunk
            except Exception as err:  # the stream proved the file truncated, or a write failed
                reason = str(err) if isinstance(err, MediaError) else f"splitting failed: {err!r}"
                for chunk in cut:
                    job_chunks.finish_chunk(job_id, chunk.index, error=reason)
                return ChunkMap(cut, [], [], split_error=reason)
            split_seconds = time.perf_counter() - started
            if split is not None:
                jobs.finish_split(job_id, len(cut), cut[-1].end)
            results, failures = _collect(job_id, futures)
        finally:  # none is left after a normal end; else the workers are freed at once
            _stop_decodes(client, job_id, list(futures))
    return ChunkMap(cut, results, failures, split_seconds=round(split_seconds, 3))


def most_chunks(duration: float) -> int:
    """The most chunks a file of ``duration`` seconds is cut into (none is planned shorter
    than ``SplitOptions.shortest_seconds``)."""
    return math.ceil(duration / SplitOptions.shortest_seconds) + 1


def _stop_decodes(client: Client, job_id: str, runs: list[ChunkRun]) -> None:
    """Cancel the job's decodes still on the cluster until every chunk's task run has ended:
    one that had not yet handed its decode to Dask when first asked does so later, and is
    cancelled on the next pass (at once where all have ended, as after a normal end)."""
    while runs:
        cancel_decodes(client, job_id)
        threads = [run.wrapped_future for run in runs]
        running = concurrent.futures.wait(threads, timeout=STOP_PASS_SECONDS).not_done
        runs = [run for run in runs if run.wrapped_future in running]


def _collect(job_id: str, futures: dict[ChunkRun, Chunk]) -> tuple[list[ChunkResult], list[str]]:
    """Each chunk's result or failure, recorded in the store as it lands."""
    progress = settled(
        create_progress_artifact(0.0, description=f"Chunks transcribed, job {job_id}")
    )
    results: list[ChunkResult] = []
    failures: list[str] = []
    for finished, future in enumerate(as_completed(list(futures)), start=1):
        chunk = futures[cast(ChunkRun, future)]  # as_completed gives back what it was given
        if jobs.is_cancelled(job_id):  # a user cancelled it: its decodes are stopped on return
            failures.append("the job was cancelled")
            return results, failures
        try:
            result = future.result()
        except Exception as err:  # the chunk's final failure, after its retries
            reason = f"chunk {chunk.index} ({chunk.start:.0f}-{chunk.end:.0f} s): {err}"
            failures.append(reason)
            job_chunks.finish_chunk(job_id, chunk.index, error=reason)
        else:
            results.append(result)
            job_chunks.finish_chunk(
                job_id,
                chunk.index,
                asr_seconds=result.asr_seconds,
                worker_pid=result.worker_pid,
                worker_host=result.worker_host,
                segments=len(result.segments),
            )
        update_progress_artifact(progress, 100.0 * finished / len(futures))
    return results, failures
