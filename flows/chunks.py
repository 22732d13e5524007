"""The chunk map: every chunk transcribed on the Dask runner, progress recorded as they land."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from typing import Any

import dask
from distributed.client import FutureCancelledError
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.context import TagsContext
from prefect.futures import PrefectFuture, as_completed
from prefect.task_runners import TaskRunner

from blocks.prefect_sync import settled
from relay_settings import get_settings
from store import job_chunks, jobs
from tasks.asr import AsrOptions, ChunkResult, transcribe_chunk
from tasks.media import MediaError
from tasks.split import Chunk, SplitPlan, split_while_decoding

# Above any job's own priority: each job's first chunk goes before every other waiting chunk.
FIRST_CHUNK_PRIORITY = 1_000_000
# Why Dask cancels a client's futures when it loses its scheduler (distributed.Client).
SCHEDULER_LOST = "scheduler-connection-lost"
RESUBMITS = 2  # times one chunk is submitted again after an outage
# What a chunk's task run raises when the Prefect server does not answer: its new client's
# first request, or the slots of its tags' concurrency limits (prefect/concurrency).
PREFECT_AWAY = ("Failed to reach API at", "Unable to acquire concurrency slots on")
PREFECT_WAIT_SECONDS = 60.0  # how long a chunk lost to a Prefect outage waits for it
log = logging.getLogger("relay.asr")


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
    """Map ``transcribe_chunk`` on ``runner`` (a started Dask task runner) over ``chunks``,
    or over the chunks of ``split`` as they are cut while the file decodes (the first ones
    are transcribed before its end is decoded). The task runs are children of the flow run
    this is called in: a subflow of its own would cost each job about 0.2 s of flow-run
    bookkeeping before its first chunk (docs/benchmarks.md).

    Every chunk ends done or failed with its reason, in the store as it finishes.
    """
    settings = get_settings()
    task = transcribe_chunk.with_options(retries=settings.chunk.retries)
    limit = settings.chunk.timeout_seconds
    duration = split.info.duration if split else (chunks[-1].end if chunks else 0.0)
    started = time.perf_counter()
    futures: dict = {}
    cut: list[Chunk] = []

    def submit(chunk: Chunk) -> PrefectFuture[ChunkResult]:
        # On a shared cluster, a shorter job's chunks go first: short work is never stuck
        # behind a long file (Dask runs higher priorities first).
        # Without the job's tags (its flow run has them; the chunk is its child): a tagged
        # task run first takes a slot of each tag's concurrency limit on the Prefect server,
        # an API call per chunk on the worker, where it delays the decode (docs/benchmarks.md).
        with dask.annotate(priority=chunk_priority(duration, chunk.index)), TagsContext():
            parameters = {"chunk": chunk, "options": options, "timeout": limit, "job_id": job_id}
            return runner.submit(task, parameters)

    stream = (chunk for chunk in chunks) if split is None else split_while_decoding(split)
    with closing(stream) as source:  # an abandoned split stops ffmpeg at once
        try:
            for chunk in source:
                if split is not None:
                    job_chunks.add_chunk(job_id, chunk.index, chunk.start, chunk.end)
                cut.append(chunk)
                futures[submit(chunk)] = chunk
        except Exception as err:  # the stream proved the file truncated, or a write failed
            reason = str(err) if isinstance(err, MediaError) else f"splitting failed: {err!r}"
            _abandon(job_id, futures, cut, reason)
            return ChunkMap(cut, [], [], split_error=reason)
    split_seconds = time.perf_counter() - started
    if split is not None:
        jobs.finish_split(job_id, len(cut), cut[-1].end)
    results, failures = _collect(job_id, futures, submit)
    return ChunkMap(cut, results, failures, split_seconds=round(split_seconds, 3))


def _lost_with_the_scheduler(err: BaseException) -> bool:
    """Dask cancels every future of a client that lost its scheduler (it died, or the
    network did): the chunk was not at fault, its work is just gone."""
    return isinstance(err, FutureCancelledError) and err.reason == SCHEDULER_LOST


def _prefect_was_away(err: BaseException) -> bool:
    """A chunk's task run could not start because the Prefect API did not answer (a
    server restart): the client a Dask worker opens for it checks the server first and
    fails at once (Prefect retries only clients that have connected before), and so does
    taking its tags' concurrency slots."""
    return str(err).startswith(PREFECT_AWAY)


def _wait_for_prefect(limit: float = PREFECT_WAIT_SECONDS) -> bool:
    """Whether the Prefect API answers again within ``limit`` seconds."""
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + limit
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            if client.api_healthcheck() is None:
                return True
            time.sleep(1.0)  # an outage's pace: the server takes seconds to come back
    return False


def _collect(
    job_id: str, futures: dict, submit: Callable[[Chunk], PrefectFuture[ChunkResult]]
) -> tuple[list[ChunkResult], list[str]]:
    """Each chunk's result or failure, recorded in the store as it lands. A chunk lost to an
    outage (the Dask scheduler gone, the Prefect API away) is submitted again, up to
    RESUBMITS times: the client reconnects to the scheduler once it is back, and the chunk
    runs there; for Prefect, once its API answers again."""
    progress = settled(
        create_progress_artifact(0.0, description=f"Chunks transcribed, job {job_id}")
    )
    results: list[ChunkResult] = []
    failures: list[str] = []
    resubmitted: Counter[int] = Counter()
    waiting, finished, total = dict(futures), 0, len(futures)
    while waiting:
        batch, waiting = waiting, {}
        for future in as_completed(list(batch)):
            chunk = batch[future]
            if jobs.is_cancelled(job_id):  # a user cancelled it: free the workers for others
                _cancel_waiting({**batch, **waiting})
                failures.append("the job was cancelled")
                return results, failures
            try:
                result = future.result()
            except Exception as err:  # the chunk's final failure, after its retries
                # The budget first: a chunk that may not be submitted again waits for no one.
                may = resubmitted[chunk.index] < RESUBMITS
                lost = _lost_with_the_scheduler(err) or (
                    may and _prefect_was_away(err) and _wait_for_prefect()
                )
                if may and lost:
                    resubmitted[chunk.index] += 1
                    log.warning("job %s: chunk %d lost to an outage (%s); submitted again",
                                job_id, chunk.index, err)  # fmt: skip
                    waiting[submit(chunk)] = chunk
                    continue
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
            finished += 1
            update_progress_artifact(progress, 100.0 * finished / total)
    return results, failures


def _abandon(job_id: str, futures: dict, cut: list[Chunk], reason: str) -> None:
    """The split failed: no chunk of this attempt is waited for, and each ends failed."""
    _cancel_waiting(futures)
    for chunk in cut:
        job_chunks.finish_chunk(job_id, chunk.index, error=reason)


def _cancel_waiting(futures: dict) -> None:
    """Cancel the chunks still waiting on the cluster (a running one finishes its segment)."""
    for future in futures:
        wrapped = getattr(future, "wrapped_future", None)
        if wrapped is not None and not wrapped.done():
            wrapped.cancel()
