"""The chunk map: every chunk transcribed on the Dask runner, progress recorded as they land."""

from __future__ import annotations

import dask
from prefect import flow
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.futures import as_completed

from relay_settings import get_settings
from store import jobs
from tasks.asr import AsrOptions, ChunkResult, transcribe_chunk
from tasks.split import Chunk

# Above any job's own priority: each job's first chunk goes before every other waiting chunk.
FIRST_CHUNK_PRIORITY = 1_000_000


def job_priority(chunks: list[Chunk]) -> int:
    """Dask priority of a job's chunks: minus its length in seconds (shorter runs first)."""
    return -round(chunks[-1].end) if chunks else 0


def chunk_priority(chunks: list[Chunk], chunk: Chunk) -> int:
    """A job's first chunk before anything else waiting (every user sees text early), then
    shorter jobs before longer ones (short work is never stuck behind a long file)."""
    return FIRST_CHUNK_PRIORITY if chunk.index == chunks[0].index else job_priority(chunks)


@flow(name="transcribe-chunks", persist_result=False)
def transcribe_chunks(
    job_id: str, chunks: list[Chunk], options: AsrOptions
) -> tuple[list[ChunkResult], list[str]]:
    """Map ``transcribe_chunk`` over the chunks; returns results and failure reasons.

    Every chunk ends done or failed with its reason, in the store as it finishes.
    """
    settings = get_settings()
    task = transcribe_chunk.with_options(retries=settings.chunk_retries)
    limit = settings.chunk_timeout_seconds
    # On a shared cluster, a shorter job's chunks go first: short work is never stuck
    # behind a long file (Dask runs higher priorities first; a LocalCluster is ours alone).
    futures = {}
    for chunk in chunks:
        with dask.annotate(priority=chunk_priority(chunks, chunk)):
            futures[task.submit(chunk, options, limit, job_id)] = chunk
    progress = create_progress_artifact(0.0, description=f"Chunks transcribed, job {job_id}")
    results: list[ChunkResult] = []
    failures: list[str] = []
    for finished, future in enumerate(as_completed(list(futures)), start=1):
        chunk = futures[future]
        if jobs.is_cancelled(job_id):  # a user cancelled it: free the workers for others
            _cancel_waiting(futures)
            failures.append("the job was cancelled")
            break
        try:
            result = future.result()
        except Exception as err:  # the chunk's final failure, after its retries
            reason = f"chunk {chunk.index} ({chunk.start:.0f}-{chunk.end:.0f} s): {err}"
            failures.append(reason)
            jobs.finish_chunk(job_id, chunk.index, error=reason)
        else:
            results.append(result)
            jobs.finish_chunk(
                job_id,
                chunk.index,
                asr_seconds=result.asr_seconds,
                worker_pid=result.worker_pid,
                segments=len(result.segments),
            )
        update_progress_artifact(progress, 100.0 * finished / len(chunks))
    return results, failures


def _cancel_waiting(futures: dict) -> None:
    """Cancel the chunks still waiting on the cluster (a running one finishes its segment)."""
    for future in futures:
        wrapped = getattr(future, "wrapped_future", None)
        if wrapped is not None and not wrapped.done():
            wrapped.cancel()
